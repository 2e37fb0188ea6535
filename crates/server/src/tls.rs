//! HTTPS for the client API (rustls). Optionally requires client
//! certificates signed by a given CA.

use crate::error::ServerError;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use paxlog_transport::{certificates_from_pem, private_key_from_pem};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// TLS settings for the client API.
#[derive(Clone)]
pub struct HttpTls {
    acceptor: TlsAcceptor,
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(format!("HTTP TLS {what}: {e}"))
}

impl HttpTls {
    /// `client_ca_pem`: when given, clients must present a certificate
    /// signed by it.
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
    ) -> Result<HttpTls, ServerError> {
        Self::with_alpn(cert_chain_pem, key_pem, client_ca_pem, b"http/1.1")
    }

    /// The same for a server that speaks `alpn` (`h2` for gRPC, which
    /// clients require to be negotiated).
    pub fn with_alpn(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
        alpn: &[u8],
    ) -> Result<HttpTls, ServerError> {
        let provider = Arc::new(default_provider());
        let certs = certificates_from_pem(cert_chain_pem)?;
        let key = private_key_from_pem(key_pem)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates_from_pem(ca)? {
                    roots.add(cert).map_err(|e| tls_error("client CA", e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| tls_error("client verifier", e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| tls_error("certificate and key", e))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(HttpTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// How one replica dials another's gRPC API over TLS (a follower passing
/// keep-alives to the leader): the CA that signs every replica's
/// certificate, this replica's own certificate (for servers that require
/// client certificates), and the name every replica's certificate carries.
#[derive(Clone)]
pub struct GrpcDialer {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl GrpcDialer {
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
        server_name: &str,
    ) -> Result<GrpcDialer, ServerError> {
        let provider = Arc::new(default_provider());
        let mut roots = RootCertStore::empty();
        for cert in certificates_from_pem(ca_pem)? {
            roots.add(cert).map_err(|e| tls_error("CA", e))?;
        }
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                certificates_from_pem(cert_chain_pem)?,
                private_key_from_pem(key_pem)?,
            )
            .map_err(|e| tls_error("client certificate and key", e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| tls_error("server name", e))?;
        Ok(GrpcDialer {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// Serves `app` over TLS (or plain TCP when `tls` is `None`; HTTP/1.1 or
/// HTTP/2, as the client speaks) until `shutdown` resolves. A failed
/// handshake only drops that connection.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<HttpTls>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let app = app.clone();
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let service = TowerToHyperService::new(app);
            let builder = auto::Builder::new(TokioExecutor::new());
            let served = match acceptor {
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Give in-flight requests a moment, then drop the rest.
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}
