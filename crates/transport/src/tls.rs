//! Optional TLS under the peer protocol: every replica presents a
//! certificate signed by the cluster's CA and requires one from its peer
//! (mutual TLS), so a process without such a certificate cannot even start
//! the paxlog handshake. The handshake (cluster id, node id, optional HMAC
//! proof) then runs inside the encrypted stream.

use crate::TransportError;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Any byte stream a peer connection can run over (plain TCP or TLS).
pub(crate) trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}
pub(crate) type PeerStream = Box<dyn PeerIo>;

/// Mutual TLS settings for peer connections.
#[derive(Clone)]
pub struct PeerTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::InvalidConfig(format!("TLS {what}: {e}"))
}

/// Parses the certificates in a PEM file.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("certificate PEM", e))?;
    if certs.is_empty() {
        return Err(tls_error("certificate PEM", "no certificate found"));
    }
    Ok(certs)
}

/// Parses the private key in a PEM file.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| tls_error("private key PEM", e))
}

impl PeerTls {
    /// `cert_chain_pem` and `key_pem`: this replica's certificate (chain) and
    /// key; `ca_pem`: the CA that signs every replica's certificate;
    /// `server_name`: the name every replica's certificate carries (a DNS
    /// subject alternative name), checked by the dialer.
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
        server_name: &str,
    ) -> Result<PeerTls, TransportError> {
        let provider = Arc::new(default_provider());
        let certs = certificates_from_pem(cert_chain_pem)?;
        let key = private_key_from_pem(key_pem)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates_from_pem(ca_pem)? {
            roots.add(ca).map_err(|e| tls_error("CA certificate", e))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_error("client verifier", e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| tls_error("certificate and key", e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_error("client certificate and key", e))?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| tls_error("server name", e))?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }
}
