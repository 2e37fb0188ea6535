//! The key-value API: `/v1/kv/KEY` (get, put, delete), `/v1/cas/KEY`,
//! `/v1/kv?prefix=` (scan).

use super::*;

pub(super) async fn kv_get(
    State(state): State<AppState>,
    Path(key): Path<String>,
    params: Result<QueryParams<ReadParams>, QueryRejection>,
) -> Response {
    let run = async {
        paxlog_kv::validate_key(&key).map_err(|e| error_response(400, e.to_string()))?;
        let params = query_or_error(params)?;
        let consistency = consistency(&params, Consistency::Linearizable)?;
        let wanted = key.clone();
        let found = state
            .read(consistency, |reply| Query::Get { key: wanted, reply })
            .await?;
        match found {
            KeyValue {
                value: Some(value),
                current_round,
            } => Ok(
                Json(json!({ "key": key, "value": value, "current_round": current_round }))
                    .into_response(),
            ),
            KeyValue {
                value: None,
                current_round,
            } => Err(error_with(
                404,
                format!("key '{key}' not found"),
                json!({ "key": key, "current_round": current_round }),
            )),
        }
    };
    run.await.unwrap_or_else(|r: Response| r)
}

pub(super) fn write_response(key: &str, output: ApplyOutput) -> Response {
    write_answer(json!({ "key": key }), output)
}

/// A write's answer: `fields` plus its round (and, on success, whether it
/// was a retry and what the command reported; on failure, the kind).
pub(super) fn write_answer(mut fields: Value, output: ApplyOutput) -> Response {
    let round_id = round_of(&output);
    fields["round_id"] = json!(round_id);
    match output.result {
        ApplyResult::Ok { value } => {
            fields["duplicate"] = json!(output.duplicate);
            if let (Value::Object(map), Some(Value::Object(extra))) = (&mut fields, value) {
                map.extend(extra);
            }
            Json(fields).into_response()
        }
        ApplyResult::Error { kind, message } => {
            fields["kind"] = json!(kind);
            error_with(
                kind_status(kind),
                format!("{}: {message}", kind_name(&kind)),
                fields,
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutParams {
    /// Attach the key to this lease (it goes when the lease does).
    lease: Option<u64>,
}

pub(super) async fn kv_put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    params: Result<QueryParams<PutParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let QueryParams(params) =
            params.map_err(|e| error_response(400, format!("bad query: {e}")))?;
        let body = body_or_error(body)?;
        let value: Value = parse_json(&body)?;
        let mut command =
            KvCommand::put(key.clone(), &value).map_err(|e| error_response(400, e.to_string()))?;
        if let (Some(lease), KvCommand::Put { key, value_json }) = (params.lease, &command) {
            command = KvCommand::PutLeased {
                key: key.clone(),
                value_json: value_json.clone(),
                lease,
            };
        }
        let id = state.request_id(&headers)?;
        let output = state.write(command, id).await?;
        Ok::<_, Response>(write_response(&key, output))
    };
    run.await.unwrap_or_else(|r| r)
}

pub(super) async fn kv_delete(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let command =
            KvCommand::delete(key.clone()).map_err(|e| error_response(400, e.to_string()))?;
        let id = state.request_id(&headers)?;
        let output = state.write(command, id).await?;
        Ok::<_, Response>(write_response(&key, output))
    };
    run.await.unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CasBody {
    /// The value the key must hold; omitted: the key must be absent.
    #[serde(default, deserialize_with = "present")]
    expected: Option<Value>,
    value: Value,
}

/// Distinguishes `"expected": null` (must hold null) from no field (absent).
pub(super) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

pub(super) async fn kv_cas(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_or_error(body)?;
        let CasBody { expected, value } = parse_json(&body)?;
        let command = KvCommand::cas(key.clone(), expected.as_ref(), &value)
            .map_err(|e| error_response(400, e.to_string()))?;
        let id = state.request_id(&headers)?;
        let output = state.write(command, id).await?;
        Ok::<_, Response>(write_response(&key, output))
    };
    run.await.unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScanParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    consistency: Option<String>,
    min_round: Option<u64>,
}

pub(super) async fn scan(
    State(state): State<AppState>,
    params: Result<QueryParams<ScanParams>, QueryRejection>,
) -> Response {
    let run = async {
        let params = query_or_error(params)?;
        let limit = page_limit(params.limit, 100, MAX_SCAN_LIMIT)?;
        let read = ReadParams {
            consistency: params.consistency,
            min_round: params.min_round,
        };
        let consistency = consistency(&read, Consistency::Linearizable)?;
        let prefix = params.prefix;
        let Items {
            items,
            current_round,
        } = state
            .read(consistency, |reply| Query::Scan {
                prefix,
                limit,
                reply,
            })
            .await?;
        let items: Vec<Value> = items
            .into_iter()
            .map(|(key, value)| json!({ "key": key, "value": value }))
            .collect();
        Ok(Json(json!({ "items": items, "current_round": current_round })).into_response())
    };
    run.await.unwrap_or_else(|r: Response| r)
}
