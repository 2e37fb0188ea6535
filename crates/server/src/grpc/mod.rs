//! etcd's v3 gRPC API over paxlog, so `etcdctl` and etcd's client
//! libraries work unchanged. It is one more front end to the same driver as
//! the HTTP API: writes become log commands (`KvCommand::Txn`, leases),
//! reads run against the store through `Query::Inspect`, watches follow the
//! same watch hub.
//!
//! Revisions are rounds: the write applied at round `r` has revision
//! `r + 1` (etcd reserves revision 0 for "no such key"), and a replica
//! whose current round is `c` (every round below it applied) is at
//! revision `c`. Member ids are replica ids plus one (etcd reserves 0 for
//! "no leader"); the term is the count of the highest promised ballot.

// The service methods' error type is tonic's `Status`, a large value on
// a cold path.
#![allow(clippy::result_large_err)]

mod cluster;
mod kv;
mod lease;
mod watch;

use crate::driver::{Consistency, WriteRequest};
use crate::driver::{DriverError, DriverInput, Inspector, Query, ReadRequest, StoreView};
use crate::http::AppState;
use paxlog_core::StateMachine;
use paxlog_etcd_proto::etcdserverpb as pb;
use paxlog_etcd_proto::mvccpb;
use paxlog_kv::{ApplyOutput, ApplyResult, ErrorKind, KeyMeta, KvCommand};
use serde_json::Value;
use std::hash::{Hash, Hasher};
use tokio::sync::oneshot;
use tonic::{Code, Status};

pub use cluster::{ClusterApi, MaintenanceApi};
pub use kv::KvApi;
pub use lease::LeaseApi;
pub use watch::WatchApi;

/// The largest gRPC message taken or sent (etcd's default request limit
/// is 1.5 MiB; responses may be larger).
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Keys one Range returns at most when it must sort or has no limit: a
/// larger answer is refused (ask with a limit) instead of built on the
/// driver's thread.
pub const MAX_RANGE_KEYS: usize = 100_000;

/// What every service shares: the way to the driver and who this is.
#[derive(Clone)]
pub struct EtcdApi {
    state: AppState,
    cluster_id: u64,
    member_id: u64,
    /// The token a follower shows the leader when it passes a client's
    /// request on (the read-write one, when tokens are set).
    forward_token: Option<String>,
    /// How it reaches the leader when clients use TLS.
    forward_tls: Option<crate::tls::GrpcDialer>,
}

impl EtcdApi {
    pub fn new(
        state: AppState,
        forward_token: Option<String>,
        forward_tls: Option<crate::tls::GrpcDialer>,
    ) -> EtcdApi {
        let node = state.node();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        node.cluster_id.hash(&mut hasher);
        let cluster_id = hasher.finish();
        let member_id = member_id(node.id);
        EtcdApi {
            state,
            cluster_id,
            member_id,
            forward_token,
            forward_tls,
        }
    }

    /// A response header at `revision`, with the latest term this replica
    /// published.
    fn header(&self, revision: u64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision_i64(revision),
            raft_term: self.state.metrics().published.snapshot().term,
        }
    }

    /// Proposes `command` and waits until it is applied.
    async fn write(&self, command: KvCommand) -> Result<ApplyOutput, Status> {
        let (reply, answer) = oneshot::channel();
        let input = DriverInput::Write(WriteRequest {
            command,
            id: self.state.fresh_request_id(),
            reply,
            deadline: self.state.deadline(),
        });
        let output = self.state.call(input, answer).await.map_err(status_of)?;
        match &output.result {
            ApplyResult::Ok { .. } => Ok(output),
            ApplyResult::Error { kind, message } => Err(rejected(*kind, message)),
        }
    }

    /// Runs `read` on the store once `consistency` is met and returns what
    /// it answered.
    async fn inspect<T: Send + 'static>(
        &self,
        consistency: Consistency,
        read: impl FnOnce(StoreView<'_>) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel::<Result<Result<T, Status>, DriverError>>();
        let run: Inspector = Box::new(move |view| {
            let _ = reply.send(view.map(read));
        });
        let input = DriverInput::Read(ReadRequest {
            query: Query::Inspect { run },
            consistency,
            deadline: self.state.deadline(),
        });
        self.state.call(input, answer).await.map_err(status_of)?
    }

    /// A query of the driver's own (leases, members, status).
    async fn query<T>(
        &self,
        consistency: Consistency,
        query: impl FnOnce(crate::driver::Reply<T>) -> Query,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        let input = DriverInput::Read(ReadRequest {
            query: query(reply),
            consistency,
            deadline: self.state.deadline(),
        });
        self.state.call(input, answer).await.map_err(status_of)
    }
}

/// The etcd member id of replica `id`.
pub fn member_id(id: u32) -> u64 {
    u64::from(id) + 1
}

/// The replica id of etcd member `member`, if it can be one.
fn replica_of(member: u64) -> Result<u32, Status> {
    member
        .checked_sub(1)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| {
            Status::not_found(format!(
                "etcdserver: member not found (member ids are replica ids plus one; {member:x} is none)"
            ))
        })
}

fn revision_i64(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// The revision of the write applied at `round`.
fn revision_of_round(round: u64) -> u64 {
    round.saturating_add(1)
}

/// etcd's `KeyValue` for a key, its value and its metadata.
fn key_value(
    key: &str,
    value: Option<&Value>,
    meta: KeyMeta,
    lease: Option<u64>,
) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision: revision_i64(meta.create_revision),
        mod_revision: revision_i64(meta.mod_revision),
        version: revision_i64(meta.version),
        value: value.map(paxlog_kv::value_to_bytes).unwrap_or_default(),
        lease: lease.map_or(0, revision_i64),
    }
}

/// The gRPC status for a failed driver request, with etcd's messages where
/// its clients look at them.
pub fn status_of(error: DriverError) -> Status {
    match error {
        DriverError::Busy => Status::resource_exhausted("etcdserver: too many requests"),
        DriverError::InFlight(id) => Status::aborted(format!("request {id} is already in flight")),
        DriverError::Rejected { kind, message } => rejected(kind, &message),
        DriverError::Unavailable { message, .. } => Status::unavailable(message),
        DriverError::NotLeader { leader } => Status::unavailable(match leader {
            Some(l) => format!(
                "etcdserver: not the leader (the leader is member {:x})",
                member_id(l)
            ),
            None => "etcdserver: no leader".to_string(),
        }),
        DriverError::Invalid(message) => Status::invalid_argument(message),
        DriverError::Conflict(message) => Status::failed_precondition(message),
        DriverError::Gone(_) => compacted(),
    }
}

fn rejected(kind: ErrorKind, message: &str) -> Status {
    match kind {
        ErrorKind::LeaseNotFound => Status::not_found("etcdserver: requested lease not found"),
        ErrorKind::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        ErrorKind::TooLarge if message.contains("operations") => {
            Status::invalid_argument("etcdserver: too many operations in txn request")
        }
        ErrorKind::TooLarge => {
            Status::invalid_argument(format!("etcdserver: request is too large: {message}"))
        }
        _ => Status::invalid_argument(message.to_string()),
    }
}

fn compacted() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
}

fn future_revision() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
}

fn key_missing() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// gRPC's answer to a caller without a valid token.
fn unauthenticated() -> Status {
    Status::new(Code::Unauthenticated, "etcdserver: invalid auth token")
}

/// The consistency an etcd read asks for.
fn consistency(serializable: bool) -> Consistency {
    if serializable {
        Consistency::Local
    } else {
        Consistency::Linearizable
    }
}

// ----- serving ---------------------------------------------------------------

/// The gRPC services as one router (served over HTTP/2 by `tls::serve`),
/// behind the token check when tokens are set.
pub fn router(api: EtcdApi, tokens: std::sync::Arc<crate::auth::Tokens>) -> axum::Router {
    use paxlog_etcd_proto::etcdserverpb::{
        auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
        lease_server::LeaseServer, maintenance_server::MaintenanceServer,
        watch_server::WatchServer,
    };
    macro_rules! limited {
        ($server:expr) => {
            $server
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES)
        };
    }
    let routes = tonic::service::Routes::new(limited!(KvServer::new(KvApi(api.clone()))))
        .add_service(limited!(WatchServer::new(WatchApi(api.clone()))))
        .add_service(limited!(LeaseServer::new(LeaseApi(api.clone()))))
        .add_service(limited!(ClusterServer::new(ClusterApi(api.clone()))))
        .add_service(limited!(MaintenanceServer::new(MaintenanceApi(
            api.clone()
        ))))
        .add_service(limited!(AuthServer::new(cluster::AuthApi {
            tokens: tokens.clone()
        })));
    let metrics = api.state.metrics_handle();
    let router = routes.into_axum_router();
    let router = if tokens.enabled() {
        router.layer(axum::middleware::from_fn_with_state(tokens, require_token))
    } else {
        router
    };
    router.layer(axum::middleware::from_fn_with_state(metrics, observe))
}

/// The methods served, as gRPC paths (the metric's label values).
const SERVED_METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Auth/Authenticate",
];

/// Times each call into the request histogram, by method (the served
/// paths; anything else counts as `unmatched`). A stream counts until its
/// response starts.
async fn observe(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<crate::metrics::Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let path = request.uri().path();
    let endpoint = SERVED_METHODS
        .iter()
        .find(|m| **m == path)
        .copied()
        .unwrap_or("unmatched");
    let response = next.run(request).await;
    metrics.observe_request(
        endpoint,
        "GRPC",
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The methods a read-only token may call.
fn is_read_method(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.KV/Range"
            | "/etcdserverpb.Watch/Watch"
            | "/etcdserverpb.Lease/LeaseTimeToLive"
            | "/etcdserverpb.Lease/LeaseLeases"
            | "/etcdserverpb.Cluster/MemberList"
            | "/etcdserverpb.Maintenance/Status"
            | "/etcdserverpb.Maintenance/Alarm"
            | "/etcdserverpb.Maintenance/Hash"
            | "/etcdserverpb.Maintenance/HashKV"
    )
}

/// Takes the token as etcd's clients send it (`token` metadata, after
/// `Authenticate`) or as a bearer token (`authorization: Bearer ...`).
async fn require_token(
    axum::extract::State(tokens): axum::extract::State<std::sync::Arc<crate::auth::Tokens>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if path == "/etcdserverpb.Auth/Authenticate" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let presented = headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
        })
        .map(str::trim);
    match crate::auth::check(&tokens, presented, is_read_method(path)) {
        Ok(()) => next.run(request).await,
        Err(crate::auth::Denied::Unauthorized) => unauthenticated().into_http(),
        Err(crate::auth::Denied::Forbidden) => {
            Status::permission_denied("etcdserver: permission denied").into_http()
        }
    }
}
