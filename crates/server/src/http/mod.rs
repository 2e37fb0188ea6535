//! The client HTTP API: the seed's endpoints with the seed's JSON shapes,
//! plus a key-value API. Every error is a JSON body naming the problem.

// Handlers return `Result<_, Response>` so `?` turns any failure into its
// JSON error response; the error path is cold, so its size does not matter.
#![allow(clippy::result_large_err)]

use crate::driver::{
    Consistency, DbImage, DriverError, DriverInput, Fetched, Items, KeyValue, MemberAction,
    MembersReport, MembershipRequest, Query, ReadRequest, Reply, WriteRequest, MAX_LOG_PAGE,
};
use crate::metrics::{method_label, Metrics};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query as QueryParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paxlog_core::RequestId;
use paxlog_kv::{ApplyOutput, ApplyResult, ErrorKind, KvCommand};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod kv;
mod leases;
mod members;
mod observe;
mod seed;
mod watch;

use kv::*;
use leases::*;
use members::*;
use observe::*;
use seed::*;
use watch::*;

pub const CLIENT_ID_HEADER: &str = "x-paxlog-client-id";
pub const REQUEST_SEQ_HEADER: &str = "x-paxlog-request-seq";
/// Largest `limit` a scan may ask for.
pub const MAX_SCAN_LIMIT: usize = 10_000;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    driver: mpsc::Sender<DriverInput>,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    node: NodeInfo,
    /// Request ids for clients that bring none: a random base per process
    /// plus a counter, so ids never repeat across restarts.
    id_base: u64,
    id_counter: AtomicU64,
}

/// What the observability endpoints say about this replica.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: u32,
    pub http: SocketAddr,
    /// Whether clients reach this replica over TLS.
    pub tls: bool,
    /// Every replica's HTTP address in id order; empty when unknown.
    pub http_peers: Vec<SocketAddr>,
    /// `/ready` bound: rounds the applied round may trail the chosen one.
    pub ready_max_lag_rounds: u64,
    pub cluster_id: String,
    /// A replica heard from within this long is running.
    pub election_timeout_ms: u64,
    /// No replica that joins gets an id below this: the bootstrap replicas'
    /// ids and this replica's own are below it (ids are given in order).
    pub min_new_id: u32,
}

impl AppState {
    pub fn new(
        driver: mpsc::Sender<DriverInput>,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
        node: NodeInfo,
    ) -> AppState {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        AppState {
            inner: Arc::new(Inner {
                driver,
                request_timeout,
                metrics,
                node,
                id_base: hasher.finish(),
                id_counter: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn fresh_request_id(&self) -> RequestId {
        let n = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
        RequestId {
            client_id: self
                .inner
                .id_base
                .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            seq: 1,
        }
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(dashboard_html))
        .route("/assets/dashboard.js", get(dashboard_js))
        .route("/assets/dashboard.css", get(dashboard_css))
        .route("/metrics", get(get_metrics))
        .route("/health", get(get_health))
        .route("/ready", get(get_ready))
        .route("/cluster", get(get_cluster))
        .route("/log", get(get_log))
        .route("/command", post(post_command))
        .route("/current", get(get_current))
        .route("/fetch", get(get_fetch))
        .route("/db", get(get_db))
        .route("/status", get(get_status))
        .route("/v1/kv", get(scan))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/cas/{*key}", post(kv_cas))
        .route("/v1/members", get(members_get).post(members_post))
        .route("/v1/watch", get(watch))
        .route("/v1/leases", post(lease_grant))
        .route("/v1/leases/{lease}", get(lease_get).delete(lease_revoke))
        .route("/v1/leases/{lease}/keepalive", post(lease_keepalive))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Times every request into the latency histogram (by route template, so
/// keys in paths add no label values) and lets any page read GET answers
/// (CORS), so the dashboard served by one replica can poll the others.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let metrics = &state.inner.metrics;
    let endpoint = endpoint.as_deref().unwrap_or("unmatched");
    metrics.observe_request(endpoint, method_label(&method), status.as_u16(), elapsed);
    let is_write = matches!(
        (&method, endpoint),
        (&Method::POST, "/command" | "/v1/cas/{*key}")
            | (&Method::PUT | &Method::DELETE, "/v1/kv/{*key}")
    );
    if is_write && status.is_success() {
        metrics.published.record_write(elapsed);
    }
    if method == Method::GET || method == Method::HEAD {
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    response
}

// ----- errors --------------------------------------------------------------

fn error_response(status: u16, message: impl Into<String>) -> Response {
    error_with(status, message.into(), json!({}))
}

fn error_with(status: u16, message: String, mut extra: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Value::Object(map) = &mut extra {
        map.insert("status".into(), json!("error"));
        map.insert("error".into(), json!(message));
    }
    (code, Json(extra)).into_response()
}

/// The HTTP answer to each way the driver can fail: the one place where
/// driver outcomes become status codes.
impl IntoResponse for DriverError {
    fn into_response(self) -> Response {
        match self {
            DriverError::Busy => error_response(
                503,
                "too many requests are waiting at this replica; retry later",
            ),
            DriverError::InFlight(id) => {
                error_response(409, format!("request {id} is already in flight"))
            }
            DriverError::Rejected { kind, message } => error_with(
                kind_status(kind),
                format!("{}: {message}", kind_name(&kind)),
                json!({}),
            ),
            DriverError::Unavailable {
                message,
                current_round,
            } => {
                let extra = match current_round {
                    Some(round) => json!({ "current_round": round }),
                    None => json!({}),
                };
                error_with(503, message, extra)
            }
            DriverError::NotLeader { leader } => error_with(
                503,
                match leader {
                    Some(l) => format!("not the leader: send this to the leader, replica {l}"),
                    None => "no leader is known; retry shortly".to_string(),
                },
                json!({ "leader": leader }),
            ),
            DriverError::Invalid(message) => error_response(400, message),
            DriverError::Conflict(message) => error_response(409, message),
            DriverError::Gone(message) => error_response(410, message),
        }
    }
}

/// An error kind's name as it appears in JSON (`name_error`).
pub fn kind_name(kind: &ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

async fn not_found() -> Response {
    error_response(
        404,
        "no such endpoint; see /status, /db, /current, /fetch?round_id=N, POST /command, /v1/kv/KEY, \
         /v1/members, /metrics, /health, /ready, /cluster, /log?from=N&limit=M, and the dashboard at /",
    )
}

async fn method_not_allowed() -> Response {
    error_response(405, "method not allowed on this endpoint")
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|rejection| {
        let status = rejection.status().as_u16();
        let message = if status == 413 {
            "request body is too large".to_string()
        } else {
            format!("cannot read request body: {}", rejection.body_text())
        };
        error_response(status, message)
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| error_response(400, format!("invalid JSON body: {e}")))
}

// ----- talking to the driver -------------------------------------------------

impl AppState {
    async fn write(&self, command: KvCommand, id: RequestId) -> Result<ApplyOutput, Response> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.inner.request_timeout;
        let input = DriverInput::Write(WriteRequest {
            command,
            id,
            reply,
            deadline,
        });
        self.ask(input, answer).await
    }

    /// A read of type `T`: `query` builds the request around its reply channel.
    async fn read<T>(
        &self,
        consistency: Consistency,
        query: impl FnOnce(Reply<T>) -> Query,
    ) -> Result<T, Response> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.inner.request_timeout;
        let input = DriverInput::Read(ReadRequest {
            query: query(reply),
            consistency,
            deadline,
        });
        self.ask(input, answer).await
    }

    /// Hands `input` to the driver and waits for its answer.
    async fn ask<T>(
        &self,
        input: DriverInput,
        answer: oneshot::Receiver<Result<T, DriverError>>,
    ) -> Result<T, Response> {
        self.submit(input).await?;
        match answer.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.into_response()),
            Err(_) => Err(error_response(503, "the replica stopped before answering")),
        }
    }

    /// [`AppState::ask`] for other front ends (the etcd gRPC API): the
    /// driver's own error, whatever went wrong.
    pub(crate) async fn call<T>(
        &self,
        input: DriverInput,
        answer: oneshot::Receiver<Result<T, DriverError>>,
    ) -> Result<T, DriverError> {
        match self.inner.driver.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(DriverError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(DriverError::unavailable("the replica is shutting down"))
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(DriverError::unavailable(
                "the replica stopped before answering",
            ))
        })
    }

    /// When a request given to the driver now times out.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.request_timeout
    }

    pub(crate) fn node(&self) -> &NodeInfo {
        &self.inner.node
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn metrics_handle(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    async fn submit(&self, input: DriverInput) -> Result<(), Response> {
        match self.inner.driver.try_send(input) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(error_response(
                503,
                "the replica is overloaded; retry later",
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(error_response(503, "the replica is shutting down"))
            }
        }
    }

    /// The client's own id from headers (exactly-once across retries), or a
    /// fresh one.
    fn request_id(&self, headers: &HeaderMap) -> Result<RequestId, Response> {
        let header = |name: &str| -> Result<Option<u64>, Response> {
            match headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Some)
                    .ok_or_else(|| {
                        error_response(400, format!("header {name} must be an unsigned integer"))
                    }),
            }
        };
        match (header(CLIENT_ID_HEADER)?, header(REQUEST_SEQ_HEADER)?) {
            (Some(client_id), Some(seq)) if seq > 0 => Ok(RequestId { client_id, seq }),
            (None, None) => Ok(self.fresh_request_id()),
            _ => Err(error_response(
                400,
                format!(
                    "give both {CLIENT_ID_HEADER} and {REQUEST_SEQ_HEADER} (seq > 0), or neither"
                ),
            )),
        }
    }
}

// ----- read options ----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
    min_round: Option<u64>,
}

fn consistency(params: &ReadParams, default: Consistency) -> Result<Consistency, Response> {
    match (params.consistency.as_deref(), params.min_round) {
        (_, Some(round)) => Ok(Consistency::MinRound(round)),
        (None, None) => Ok(default),
        (Some("linearizable"), None) => Ok(Consistency::Linearizable),
        (Some("local"), None) => Ok(Consistency::Local),
        (Some(other), None) => Err(error_response(
            400,
            format!("unknown consistency '{other}': use linearizable, local, or min_round=N"),
        )),
    }
}

/// A `limit` query parameter: `default` when absent, else within 1..=max.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Response> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(error_response(400, format!("limit must be 1..={max}")));
    }
    Ok(limit)
}

fn query_or_error<T>(params: Result<QueryParams<T>, QueryRejection>) -> Result<T, Response> {
    params
        .map(|QueryParams(p)| p)
        .map_err(|e| error_response(400, format!("bad query string: {}", e.body_text())))
}
