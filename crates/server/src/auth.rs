//! Optional bearer tokens for the client API: a read-write token allows
//! everything, a read-only token allows reads. Probes (`/health`, `/ready`)
//! and the dashboard page itself stay open so load balancers and browsers
//! can reach them; everything the page fetches needs a token.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub read_write: Option<String>,
    pub read_only: Option<String>,
}

impl Tokens {
    pub fn enabled(&self) -> bool {
        self.read_write.is_some() || self.read_only.is_some()
    }
}

/// What a request may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or an unknown one.
    Unauthorized,
    /// A read-only token on a write.
    Forbidden,
}

/// Paths anyone may call: liveness and readiness probes, the dashboard page.
fn is_open(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/" | "/index.html")
}

/// `GET` and `HEAD` read; every other method writes.
fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn authorize(
    tokens: &Tokens,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
) -> Result<(), Denied> {
    if !tokens.enabled() || is_open(path) {
        return Ok(());
    }
    let presented = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    check(tokens, presented, is_read(method))
}

/// May the holder of `presented` do this (a read or not)?
pub fn check(tokens: &Tokens, presented: Option<&str>, read: bool) -> Result<(), Denied> {
    if !tokens.enabled() {
        return Ok(());
    }
    let presented = presented.ok_or(Denied::Unauthorized)?;
    let matches = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| constant_time_eq(t.as_bytes(), presented.as_bytes()))
    };
    if matches(&tokens.read_write) {
        return Ok(());
    }
    if matches(&tokens.read_only) {
        return if read { Ok(()) } else { Err(Denied::Forbidden) };
    }
    Err(Denied::Unauthorized)
}

/// axum middleware: `axum::middleware::from_fn_with_state(tokens, require_token)`.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match authorize(
        &tokens,
        request.method(),
        request.uri().path(),
        authorization,
    ) {
        Ok(()) => next.run(request).await,
        Err(Denied::Unauthorized) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({
                "status": "error",
                "error": "missing or invalid bearer token (send `Authorization: Bearer TOKEN`)"
            })),
        )
            .into_response(),
        Err(Denied::Forbidden) => (
            StatusCode::FORBIDDEN,
            Json(json!({ "status": "error", "error": "this token may only read" })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            read_write: Some("rw-secret".into()),
            read_only: Some("ro-secret".into()),
        }
    }

    #[test]
    fn no_tokens_configured_allows_everything() {
        let none = Tokens::default();
        assert_eq!(authorize(&none, &Method::PUT, "/v1/kv/a", None), Ok(()));
    }

    #[test]
    fn tokens_decide_reads_and_writes() {
        let t = tokens();
        let rw = Some("Bearer rw-secret");
        let ro = Some("Bearer ro-secret");
        assert_eq!(authorize(&t, &Method::PUT, "/v1/kv/a", rw), Ok(()));
        assert_eq!(authorize(&t, &Method::GET, "/v1/kv/a", ro), Ok(()));
        assert_eq!(
            authorize(&t, &Method::POST, "/command", ro),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            authorize(&t, &Method::GET, "/db", None),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize(&t, &Method::GET, "/db", Some("Bearer rw-secreT")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize(&t, &Method::GET, "/db", Some("rw-secret")),
            Err(Denied::Unauthorized),
            "the Bearer scheme is required"
        );
    }

    #[test]
    fn probes_and_the_dashboard_page_stay_open() {
        let t = tokens();
        for path in ["/health", "/ready", "/"] {
            assert_eq!(authorize(&t, &Method::GET, path, None), Ok(()));
        }
    }
}
