//! Observability: `/metrics`, `/health`, `/ready`, `/cluster`, `/log` and
//! the dashboard at `/`.

use super::*;

pub(super) const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
pub(super) const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
pub(super) const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn dashboard_html() -> Response {
    asset("text/html; charset=utf-8", DASHBOARD_HTML)
}

pub(super) async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

pub(super) async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// Prometheus scrape: encoded from the shared registry, never through the
/// driver, so it answers while the driver is busy.
pub(super) async fn get_metrics(State(state): State<AppState>) -> Response {
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
pub(super) async fn get_health(State(state): State<AppState>) -> Response {
    if state.inner.metrics.published.driver_alive() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        error_response(503, "the replica's driver thread stopped")
    }
}

/// Readiness: a leader is known and this replica is not far behind.
pub(super) async fn get_ready(State(state): State<AppState>) -> Response {
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
pub(super) async fn get_cluster(State(state): State<AppState>) -> Response {
    let node = &state.inner.node;
    let status = match status_json(&state).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    // In id order; the flags' list, completed from what the replica knows
    // (replicas that joined, announced addresses). Unknown ones are null.
    let mut http_peers: Vec<Value> = node
        .http_peers
        .iter()
        .map(|a| json!(a.to_string()))
        .collect();
    if let Some(known) = status["membership"]["addresses"].as_object() {
        for (id, address) in known {
            let (Ok(id), Some(http)) = (id.parse::<usize>(), address["http_addr"].as_str()) else {
                continue;
            };
            if id > paxlog_core::MAX_NODE_ID as usize {
                continue;
            }
            if http_peers.len() <= id {
                http_peers.resize(id + 1, Value::Null);
            }
            if http_peers[id].is_null() {
                http_peers[id] = json!(http);
            }
        }
    }
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
pub(super) struct LogParams {
    from: Option<u64>,
    limit: Option<usize>,
}

/// Chosen entries: `from` (default: the last `limit` chosen rounds), at
/// most `limit` (default 50, at most 200).
pub(super) async fn get_log(
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
