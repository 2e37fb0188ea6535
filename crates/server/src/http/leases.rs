//! Leases: `POST /v1/leases {"ttl_ms": N}` grants one, `PUT
//! /v1/kv/{key}?lease=ID` attaches a key, `POST /v1/leases/{id}/keepalive`
//! (at the leader) keeps it, `DELETE /v1/leases/{id}` revokes it and its
//! keys, `GET /v1/leases[/{id}]` lists them. An expired lease is revoked
//! by the leader through the log.

use super::*;
use crate::driver::{LeaseAction, LeaseInfo};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Grant {
    ttl_ms: u64,
}

fn lease_answer(output: ApplyOutput) -> Response {
    write_answer(json!({}), output)
}

pub(super) async fn lease_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_or_error(body)?;
        let grant: Grant = parse_json(&body)?;
        paxlog_kv::check_lease_ttl(grant.ttl_ms).map_err(|e| error_response(400, e.to_string()))?;
        let id = state.request_id(&headers)?;
        let output = state
            .write(
                KvCommand::LeaseGrant {
                    ttl_ms: grant.ttl_ms,
                },
                id,
            )
            .await?;
        Ok::<_, Response>(lease_answer(output))
    };
    run.await.unwrap_or_else(|r| r)
}

pub(super) async fn lease_revoke(
    State(state): State<AppState>,
    Path(lease): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let id = state.request_id(&headers)?;
        let output = state.write(KvCommand::LeaseRevoke { lease }, id).await?;
        Ok::<_, Response>(lease_answer(output))
    };
    run.await.unwrap_or_else(|r| r)
}

async fn lease_call(state: &AppState, action: LeaseAction) -> Result<LeaseInfo, Response> {
    state
        .read(Consistency::Linearizable, |reply| Query::Lease {
            action,
            reply,
        })
        .await
}

pub(super) async fn lease_keepalive(
    State(state): State<AppState>,
    Path(lease): Path<u64>,
) -> Response {
    match lease_call(&state, LeaseAction::KeepAlive(lease)).await {
        Ok(info) => Json(info).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn lease_get(State(state): State<AppState>, Path(lease): Path<u64>) -> Response {
    match lease_call(&state, LeaseAction::Get(lease)).await {
        Ok(info) => Json(info).into_response(),
        Err(r) => r,
    }
}
