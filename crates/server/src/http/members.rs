//! `/v1/members`: the membership (GET) and one change to it (POST
//! `{"action": "add" | "promote" | "demote" | "remove", "id": N}`), placed
//! by the leader and answered once applied.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberChange {
    action: MemberAction,
    id: u32,
}

/// The membership with each member's addresses where known.
fn members_json(state: &AppState, report: &MembersReport) -> Value {
    let http_of = |id: u32| {
        state
            .inner
            .node
            .http_peers
            .get(id as usize)
            .map(|a| a.to_string())
    };
    let member = |id: &u32, role: &str| json!({ "id": id, "role": role, "http": http_of(*id) });
    let members: Vec<Value> = report
        .voters
        .iter()
        .map(|id| member(id, "voter"))
        .chain(report.learners.iter().map(|id| member(id, "learner")))
        .collect();
    json!({
        "epoch": report.epoch,
        "round_id": report.round,
        "leader": report.leader,
        "leader_http": report.leader.and_then(http_of),
        "members": members,
        "voters": report.voters,
        "learners": report.learners,
    })
}

pub(super) async fn members_get(State(state): State<AppState>) -> Response {
    let run = async {
        let status = state
            .read(Consistency::Local, |reply| Query::Status { reply })
            .await?;
        Ok::<_, Response>(Json(members_json(&state, &status.membership)).into_response())
    };
    run.await.unwrap_or_else(|r| r)
}

pub(super) async fn members_post(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_or_error(body)?;
        let change: MemberChange = parse_json(&body)?;
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + state.inner.request_timeout;
        let input = DriverInput::ChangeMembership(MembershipRequest {
            action: change.action,
            id: change.id,
            reply,
            deadline,
        });
        let report = state.ask(input, answer).await?;
        Ok::<_, Response>(Json(members_json(&state, &report)).into_response())
    };
    run.await.unwrap_or_else(|r| r)
}
