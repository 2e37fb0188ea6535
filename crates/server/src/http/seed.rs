//! The seed's endpoints, with the seed's JSON shapes: `POST /command`,
//! `GET /current`, `/fetch?round_id=N`, `/db`, `/status`.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandBody {
    command: String,
}

pub(super) async fn post_command(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_or_error(body)?;
        let CommandBody { command } = parse_json(&body)?;
        let parsed = KvCommand::exec(command.clone())
            .map_err(|e| error_response(400, format!("cannot parse command: {e}")))?;
        let id = state.request_id(&headers)?;
        let output = state.write(parsed, id).await?;
        Ok::<_, Response>(command_response(&command, output))
    };
    run.await.unwrap_or_else(|r| r)
}

pub(super) fn round_of(output: &ApplyOutput) -> u64 {
    output.original_slot.unwrap_or(output.slot).0
}

/// The HTTP status of a command that failed at apply time: 409 when its
/// client's session expired (retrying cannot help: the client must go on
/// under a new id), 400 otherwise.
pub(super) fn kind_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::RequestExpired => 409,
        ErrorKind::LeaseNotFound => 404,
        _ => 400,
    }
}

pub(super) fn command_response(command: &str, output: ApplyOutput) -> Response {
    let round_id = round_of(&output);
    match output.result {
        ApplyResult::Ok { .. } => Json(json!({
            "status": "success",
            "round_id": round_id,
            "command": command,
            "duplicate": output.duplicate,
        }))
        .into_response(),
        ApplyResult::Error { kind, message } => error_with(
            kind_status(kind),
            format!("{}: {message}", kind_name(&kind)),
            json!({ "round_id": round_id, "command": command, "kind": kind }),
        ),
    }
}

pub(super) async fn get_current(State(state): State<AppState>) -> Response {
    match state
        .read(Consistency::Local, |reply| Query::Current { reply })
        .await
    {
        Ok(round) => Json(json!({ "round_id": round })).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchParams {
    round_id: Option<String>,
}

pub(super) async fn get_fetch(
    State(state): State<AppState>,
    params: Result<QueryParams<FetchParams>, QueryRejection>,
) -> Response {
    let fetch_error = |status: u16, message: String| {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Json(json!({ "success": false, "error": message })),
        )
            .into_response()
    };
    let params = match params {
        Ok(QueryParams(p)) => p,
        Err(e) => return fetch_error(400, format!("bad query string: {}", e.body_text())),
    };
    let Some(raw) = params.round_id else {
        return fetch_error(400, "missing round_id: use /fetch?round_id=N".into());
    };
    let Ok(round) = raw.trim().parse::<u64>() else {
        return fetch_error(
            400,
            format!("round_id must be a non-negative integer, got '{raw}'"),
        );
    };
    let fetched = state
        .read(Consistency::Local, |reply| Query::Fetch { round, reply })
        .await;
    match fetched {
        Ok(Fetched::Value { round_id, value }) => Json(json!({
            "success": true,
            "round_id": round_id,
            "value": value,
            "noop": value.is_none(),
        }))
        .into_response(),
        Ok(Fetched::NotYet { current_round }) => fetch_error(
            404,
            format!("round {round} is not chosen yet here (current round {current_round})"),
        ),
        Ok(Fetched::Compacted { log_start }) => fetch_error(
            410,
            format!(
                "round {round} was compacted into a snapshot; this replica keeps rounds from {log_start} on (GET /db shows the state)"
            ),
        ),
        Err(response) => response,
    }
}

pub(super) async fn get_db(
    State(state): State<AppState>,
    params: Result<QueryParams<ReadParams>, QueryRejection>,
) -> Response {
    let run = async {
        let params = query_or_error(params)?;
        let consistency = consistency(&params, Consistency::Local)?;
        let DbImage { current_round, db } =
            state.read(consistency, |reply| Query::Db { reply }).await?;
        Ok(Json(json!({ "current_round": current_round, "db": db })).into_response())
    };
    run.await.unwrap_or_else(|r: Response| r)
}

pub(super) async fn get_status(State(state): State<AppState>) -> Response {
    match status_json(&state).await {
        Ok(status) => Json(status).into_response(),
        Err(response) => response,
    }
}

/// The driver's status plus counters the HTTP layer keeps (write count and
/// summed latency, for the dashboard's charts) and the HTTP addresses.
pub(super) async fn status_json(state: &AppState) -> Result<Value, Response> {
    let status = state
        .read(Consistency::Local, |reply| Query::Status { reply })
        .await?;
    {
        {
            let mut value = serde_json::to_value(&*status)
                .map_err(|e| error_response(500, format!("cannot encode status: {e}")))?;
            let published = state.inner.metrics.published.snapshot();
            if let Value::Object(map) = &mut value {
                map.insert("http".into(), json!(state.inner.node.http.to_string()));
                map.insert(
                    "known_chosen_round".into(),
                    json!(published.known_chosen_round),
                );
                map.insert(
                    "stats".into(),
                    json!({
                        "writes": published.writes,
                        "write_latency_sum_ms": published.write_latency_sum_ms,
                        "proposals": state.inner.metrics.proposals.get(),
                        "commits": state.inner.metrics.commits.get(),
                    }),
                );
            }
            Ok(value)
        }
    }
}
