//! A small HTTP/1.1 client over hyper, with keep-alive, for the client
//! subcommands and the load generator.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn new_client(max_idle_per_host: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .build(connector)
}

pub struct HttpResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

pub async fn request(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Bytes>,
) -> Result<HttpResponse> {
    let mut builder = Request::builder().method(method).uri(url);
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let request = builder
        .body(Full::new(body.unwrap_or_default()))
        .with_context(|| format!("bad request URL {url}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| anyhow!("{url}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("{url}: reading the response: {e}"))?
        .to_bytes();
    Ok(HttpResponse { status, body })
}
