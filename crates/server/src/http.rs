//! The client HTTP API: the seed's endpoints with the seed's JSON shapes,
//! plus a key-value API. Every error is a JSON body naming the problem.

// Handlers return `Result<_, Response>` so `?` turns any failure into its
// JSON error response; the error path is cold, so its size does not matter.
#![allow(clippy::result_large_err)]

use crate::driver::{
    Consistency, DbImage, DriverError, DriverInput, Fetched, Items, KeyValue, Query, ReadRequest,
    Reply, WriteRequest, MAX_LOG_PAGE,
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
    /// Every replica's HTTP address in id order; empty when unknown.
    pub http_peers: Vec<SocketAddr>,
    /// `/ready` bound: rounds the applied round may trail the chosen one.
    pub ready_max_lag_rounds: u64,
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

    fn fresh_request_id(&self) -> RequestId {
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
         /metrics, /health, /ready, /cluster, /log?from=N&limit=M, and the dashboard at /",
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

// ----- the seed's endpoints ----------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    command: String,
}

async fn post_command(
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

fn round_of(output: &ApplyOutput) -> u64 {
    output.original_slot.unwrap_or(output.slot).0
}

/// The HTTP status of a command that failed at apply time: 409 when its
/// client's session expired (retrying cannot help: the client must go on
/// under a new id), 400 otherwise.
fn kind_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::RequestExpired => 409,
        _ => 400,
    }
}

fn command_response(command: &str, output: ApplyOutput) -> Response {
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

async fn get_current(State(state): State<AppState>) -> Response {
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
struct FetchParams {
    round_id: Option<String>,
}

async fn get_fetch(
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

async fn get_db(
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

async fn get_status(State(state): State<AppState>) -> Response {
    match status_json(&state).await {
        Ok(status) => Json(status).into_response(),
        Err(response) => response,
    }
}

/// The driver's status plus counters the HTTP layer keeps (write count and
/// summed latency, for the dashboard's charts) and the HTTP addresses.
async fn status_json(state: &AppState) -> Result<Value, Response> {
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

// ----- observability -----------------------------------------------------------

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_html() -> Response {
    asset("text/html; charset=utf-8", DASHBOARD_HTML)
}

async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// Prometheus scrape: encoded from the shared registry, never through the
/// driver, so it answers while the driver is busy.
async fn get_metrics(State(state): State<AppState>) -> Response {
    match state.inner.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => error_response(500, "cannot encode metrics"),
    }
}

/// Liveness: the process answers and its driver thread runs.
async fn get_health(State(state): State<AppState>) -> Response {
    if state.inner.metrics.published.driver_alive() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        error_response(503, "the replica's driver thread stopped")
    }
}

/// Readiness: a leader is known and this replica is not far behind.
async fn get_ready(State(state): State<AppState>) -> Response {
    let snapshot = state.inner.metrics.published.snapshot();
    let body = |status: &str| {
        json!({
            "status": status,
            "role": snapshot.role,
            "leader": snapshot.leader,
            "current_round": snapshot.applied_round,
            "chosen_round": snapshot.chosen_round,
            "known_chosen_round": snapshot.known_chosen_round,
        })
    };
    match snapshot.readiness(state.inner.node.ready_max_lag_rounds) {
        Ok(()) => Json(body("ready")).into_response(),
        Err(reason) => {
            let mut value = body("not_ready");
            if let Value::Object(map) = &mut value {
                map.insert("reason".into(), json!(reason));
            }
            (StatusCode::SERVICE_UNAVAILABLE, Json(value)).into_response()
        }
    }
}

/// This replica's status plus every replica's HTTP address (if known), so
/// the dashboard can poll them all.
async fn get_cluster(State(state): State<AppState>) -> Response {
    let node = &state.inner.node;
    let status = match status_json(&state).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    let http_peers: Vec<String> = node.http_peers.iter().map(|a| a.to_string()).collect();
    Json(json!({
        "id": node.id,
        "http": node.http.to_string(),
        "http_peers": http_peers,
        "status": status,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    from: Option<u64>,
    limit: Option<usize>,
}

/// Chosen entries: `from` (default: the last `limit` chosen rounds), at
/// most `limit` (default 50, at most 200).
async fn get_log(
    State(state): State<AppState>,
    params: Result<QueryParams<LogParams>, QueryRejection>,
) -> Response {
    let run = async {
        let params = query_or_error(params)?;
        let limit = page_limit(params.limit, 50, MAX_LOG_PAGE)?;
        let from = params.from;
        let page = state
            .read(Consistency::Local, |reply| Query::Log {
                from,
                limit,
                reply,
            })
            .await?;
        Ok(Json(page).into_response())
    };
    run.await.unwrap_or_else(|r: Response| r)
}

// ----- the key-value API -------------------------------------------------------

async fn kv_get(
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

fn write_response(key: &str, output: ApplyOutput) -> Response {
    let round_id = round_of(&output);
    match output.result {
        ApplyResult::Ok { value } => {
            let mut body =
                json!({ "key": key, "round_id": round_id, "duplicate": output.duplicate });
            if let (Value::Object(map), Some(Value::Object(extra))) = (&mut body, value) {
                map.extend(extra);
            }
            Json(body).into_response()
        }
        ApplyResult::Error { kind, message } => error_with(
            kind_status(kind),
            format!("{}: {message}", kind_name(&kind)),
            json!({ "key": key, "round_id": round_id, "kind": kind }),
        ),
    }
}

async fn kv_put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_or_error(body)?;
        let value: Value = parse_json(&body)?;
        let command =
            KvCommand::put(key.clone(), &value).map_err(|e| error_response(400, e.to_string()))?;
        let id = state.request_id(&headers)?;
        let output = state.write(command, id).await?;
        Ok::<_, Response>(write_response(&key, output))
    };
    run.await.unwrap_or_else(|r| r)
}

async fn kv_delete(
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
struct CasBody {
    /// The value the key must hold; omitted: the key must be absent.
    #[serde(default, deserialize_with = "present")]
    expected: Option<Value>,
    value: Value,
}

/// Distinguishes `"expected": null` (must hold null) from no field (absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

async fn kv_cas(
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
struct ScanParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    consistency: Option<String>,
    min_round: Option<u64>,
}

async fn scan(
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
