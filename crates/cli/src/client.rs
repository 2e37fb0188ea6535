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
    let request = build_request(method, url, url, None, headers, body)?;
    let response = client
        .request(request)
        .await
        .map_err(|e| anyhow!("{url}: {e}"))?;
    collect(url, response).await
}

/// A request with a JSON body (if any), the given headers and, for a bare
/// connection, an explicit Host header.
fn build_request(
    method: Method,
    url: &str,
    target: &str,
    host: Option<String>,
    headers: &[(&str, String)],
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder().method(method).uri(target);
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(body.unwrap_or_default()))
        .with_context(|| format!("bad request URL {url}"))
}

async fn collect(
    url: &str,
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<HttpResponse> {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("{url}: reading the response: {e}"))?
        .to_bytes();
    Ok(HttpResponse { status, body })
}

/// One-shot HTTPS requests for the client verbs (rustls; trusts the given
/// CA only, optionally presenting a client certificate).
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl TlsClient {
    pub fn new(ca_pem: &[u8], client_identity: Option<(&[u8], &[u8])>) -> Result<TlsClient> {
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in paxlog_transport::certificates_from_pem(ca_pem)? {
            roots.add(cert).context("bad CA certificate")?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let config = match client_identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    paxlog_transport::certificates_from_pem(cert)?,
                    paxlog_transport::private_key_from_pem(key)?,
                )
                .context("bad client certificate or key")?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        })
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<HttpResponse> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("no host in {url}"))?
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| anyhow!("{url}: {e}"))?;
        tcp.set_nodelay(true)?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| anyhow!("{url}: bad server name: {e}"))?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| anyhow!("{url}: TLS handshake failed: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| anyhow!("{url}: {e}"))?;
        tokio::spawn(connection);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = build_request(
            method,
            url,
            path,
            Some(format!("{host}:{port}")),
            headers,
            body,
        )?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| anyhow!("{url}: {e}"))?;
        collect(url, response).await
    }
}
