//! `GET /v1/watch?prefix=P&from_round=N`: the changes to keys under `P` as
//! Server-Sent Events, one per round (`id:` the round, `event:` put or
//! delete, `data:` `{"round", "key", "value"}`). A client that reconnects
//! sends `Last-Event-ID` (or `from_round` = last round + 1) to any replica
//! and misses nothing; a round no longer kept answers 410.

use super::*;
use crate::driver::{WatchEvent, WatchRequest};
use axum::response::sse::{Event, KeepAlive, Sse};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatchParams {
    #[serde(default)]
    prefix: String,
    from_round: Option<u64>,
}

pub(super) async fn watch(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<QueryParams<WatchParams>, QueryRejection>,
) -> Response {
    let run = async {
        let QueryParams(params) =
            params.map_err(|e| error_response(400, format!("bad query: {e}")))?;
        paxlog_kv::validate_key(&params.prefix)
            .or_else(|e| {
                if params.prefix.is_empty() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| error_response(400, format!("bad prefix: {e}")))?;
        let resume = match headers.get("last-event-id") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| error_response(400, "Last-Event-ID must be a round number"))?
                    + 1,
            ),
        };
        let from_round = resume.or(params.from_round);
        let (reply, answer) = oneshot::channel();
        let input = DriverInput::Watch(WatchRequest {
            range: paxlog_kv::KeyRange::prefix(&params.prefix),
            from_round,
            reply,
        });
        let events = state.ask(input, answer).await?;
        let stream = futures_util::stream::unfold(events, |mut events| async move {
            let event = events.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(sse_event(&event)), events))
        });
        Ok::<_, Response>(
            Sse::new(stream)
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|r| r)
}

fn sse_event(event: &WatchEvent) -> Event {
    let kind = if event.value.is_some() {
        "put"
    } else {
        "delete"
    };
    let data = json!({ "round": event.round, "key": event.key, "value": event.value });
    let sse = Event::default().event(kind).data(data.to_string());
    // Only a round's last change carries the id a client resumes after.
    if event.last_in_round {
        sse.id(event.round.to_string())
    } else {
        sse
    }
}
