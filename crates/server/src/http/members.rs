//! `/v1/members`: the membership (GET) and one change to it (POST
//! `{"action": "add" | "promote" | "demote" | "remove", "id": N}`), placed
//! by the leader and answered once applied. A replica that joins posts
//! `{"action": "add", "peer_addr": "host:port", "http_addr": "host:port"}`
//! without an id: its address goes into the replicated address book, which
//! gives it its id, and it is then added as a learner.

use super::*;
use paxlog_kv::ApplyResult;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberChange {
    action: MemberAction,
    #[serde(default)]
    id: Option<u32>,
    #[serde(default)]
    peer_addr: Option<String>,
    #[serde(default)]
    http_addr: Option<String>,
    /// Sent by a replica joining itself (`paxlog node --join`), not by an
    /// operator adding one: a join at the address of a running member is
    /// a second process claiming its id.
    #[serde(default)]
    join: bool,
}

/// The membership with each member's addresses where known.
fn members_json(state: &AppState, report: &MembersReport) -> Value {
    let address = |id: u32| report.addresses.get(&id);
    let http_of = |id: u32| address(id).and_then(|a| a.http_addr.clone());
    let member = |id: &u32, role: &str| {
        json!({
            "id": id,
            "role": role,
            "http": http_of(*id),
            "peer": address(*id).map(|a| a.peer_addr.clone()),
        })
    };
    let members: Vec<Value> = report
        .voters
        .iter()
        .map(|id| member(id, "voter"))
        .chain(report.learners.iter().map(|id| member(id, "learner")))
        .collect();
    json!({
        "cluster_id": state.inner.node.cluster_id,
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
        let (id, joining) = match (change.id, &change.peer_addr) {
            (Some(_), Some(_)) => return Err(error_response(
                400,
                "give either \"id\" or \"peer_addr\" (a new replica gets its id from the cluster)",
            )),
            (Some(id), None) => (id, false),
            (None, Some(peer_addr)) if change.action == MemberAction::Add => {
                let id = register(&state, peer_addr, change.http_addr.clone()).await?;
                if change.join {
                    refuse_a_second_replica_for_a_running_member(&state, id, peer_addr).await?;
                }
                (id, true)
            }
            (None, _) => {
                return Err(error_response(
                    400,
                    "name the replica: \"id\" (or, to add a new one, \"peer_addr\")",
                ))
            }
        };
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + state.inner.request_timeout;
        let input = DriverInput::ChangeMembership(MembershipRequest {
            action: change.action,
            id,
            reply,
            deadline,
        });
        let report = match state.ask(input, answer).await {
            Ok(report) => report,
            Err(refused) if joining => {
                // A retried join whose replica is a member already: done.
                let status = state
                    .read(Consistency::Local, |reply| Query::Status { reply })
                    .await?;
                let m = &status.membership;
                if m.voters.contains(&id) || m.learners.contains(&id) {
                    status.membership
                } else {
                    return Err(refused);
                }
            }
            Err(refused) => return Err(refused),
        };
        let mut answer = members_json(&state, &report);
        answer["id"] = json!(id);
        Ok::<_, Response>(Json(answer).into_response())
    };
    run.await.unwrap_or_else(|r| r)
}

/// A join at the address of a member that is running would make a second
/// replica with its id (two acceptors voting as one): refused until the
/// member has not been heard from for a while (409: the joiner retries). A
/// member that lost its disk is down, and its replacement at the same
/// address then takes over its id and recovers before it votes.
async fn refuse_a_second_replica_for_a_running_member(
    state: &AppState,
    id: u32,
    peer_addr: &str,
) -> Result<(), Response> {
    let status = state
        .read(Consistency::Local, |reply| Query::Status { reply })
        .await?;
    let m = &status.membership;
    if !(m.voters.contains(&id) || m.learners.contains(&id)) {
        return Ok(());
    }
    let recently = 2 * state.inner.node.election_timeout_ms;
    let heard = status
        .peers
        .iter()
        .find(|p| p.id == id)
        .and_then(|p| p.last_heard_ms_ago)
        .is_some_and(|ms| ms < recently);
    if heard || status.id == id {
        return Err(error_response(
            409,
            format!(
                "replica {id} at {peer_addr} is running (heard from within {recently} ms): a second replica at its address would share its id; stop it first, or join at another address"
            ),
        ));
    }
    Ok(())
}

/// Puts a joining replica's address in the address book: its id.
async fn register(
    state: &AppState,
    peer_addr: &str,
    http_addr: Option<String>,
) -> Result<u32, Response> {
    let command = KvCommand::RegisterMember {
        peer_addr: peer_addr.to_string(),
        http_addr,
        min_id: state.inner.node.min_new_id,
    };
    command
        .validate()
        .map_err(|e| error_response(400, e.to_string()))?;
    let output = state.write(command, state.fresh_request_id()).await?;
    match output.result {
        ApplyResult::Ok { value: Some(v) } => v["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| error_response(500, "the address book answered without an id")),
        ApplyResult::Ok { value: None } => Err(error_response(
            500,
            "the address book answered without an id",
        )),
        ApplyResult::Error { message, .. } => Err(error_response(400, message)),
    }
}
