//! `paxlog watch PREFIX`: prints the changes to keys under PREFIX, one JSON
//! line per round, following `GET /v1/watch` (Server-Sent Events). When a
//! replica goes away it resumes at the next endpoint from the round after
//! the last one printed, so nothing is missed or printed twice.

use crate::client;
use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// Follows the changes under `prefix` from `from_round` (or from now),
/// through `endpoints` in turn, until `count` events were printed (or
/// forever). Plain HTTP (with a token if given).
pub async fn watch(
    endpoints: &[String],
    token: Option<&str>,
    prefix: &str,
    mut from_round: Option<u64>,
    count: Option<u64>,
) -> Result<()> {
    let http = client::new_client(1);
    let mut printed = 0u64;
    let mut failures = 0u32;
    let mut index = 0usize;
    loop {
        let endpoint = &endpoints[index % endpoints.len()];
        index += 1;
        let mut url = format!(
            "{}/v1/watch?prefix={}",
            endpoint.trim_end_matches('/'),
            encode(prefix)
        );
        if let Some(round) = from_round {
            url.push_str(&format!("&from_round={round}"));
        }
        let mut request = Request::builder().method(Method::GET).uri(&url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| anyhow!("bad URL {url}: {e}"))?;
        match http.request(request).await {
            Ok(response) if response.status().is_success() => {
                failures = 0;
                let mut body = response.into_body();
                let mut pending = String::new();
                let mut data = String::new();
                let mut id: Option<u64> = None;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    pending.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = pending.find('\n') {
                        let line = pending[..end].trim_end_matches('\r').to_string();
                        pending.drain(..=end);
                        if let Some(rest) = line.strip_prefix("data:") {
                            data.push_str(rest.trim_start());
                        } else if let Some(rest) = line.strip_prefix("id:") {
                            // Only a round's last change carries an id: the
                            // round to resume after.
                            id = rest.trim().parse::<u64>().ok();
                        } else if line.is_empty() && !data.is_empty() {
                            let event: Value = serde_json::from_str(&data)?;
                            data.clear();
                            event["round"]
                                .as_u64()
                                .ok_or_else(|| anyhow!("event without a round: {event}"))?;
                            if let Some(round) = id.take() {
                                from_round = Some(round + 1);
                            }
                            let mut out = std::io::stdout().lock();
                            if writeln!(out, "{event}").and_then(|()| out.flush()).is_err() {
                                return Ok(()); // the reader went away
                            }
                            printed += 1;
                            if count.is_some_and(|c| printed >= c) {
                                return Ok(());
                            }
                        }
                    }
                }
                eprintln!(
                    "watch: {endpoint} closed the stream; resuming from round {}",
                    from_round.unwrap_or(0)
                );
            }
            Ok(response) => {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&body).into_owned();
                if status.as_u16() == 410 || status.is_client_error() {
                    bail!("{endpoint}: {status}: {text}");
                }
                eprintln!("watch: {endpoint}: {status}: {text}");
                failures += 1;
            }
            Err(e) => {
                eprintln!("watch: {endpoint}: {e}");
                failures += 1;
            }
        }
        if failures as usize >= 10 * endpoints.len() {
            bail!("no endpoint serves the watch (tried {failures} times)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
