//! Transport configuration.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::TransportError;

/// Default maximum frame size (length field value: version byte + payload): 32 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;
/// Default per-peer outbound queue capacity, in messages.
pub const DEFAULT_SEND_QUEUE_CAPACITY: usize = 4096;
/// Default capacity of the inbound channel, in messages.
pub const DEFAULT_INBOUND_CAPACITY: usize = 8192;

/// Configuration of one node's transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id.
    pub node_id: u32,
    /// Cluster id; connections from another cluster are refused.
    pub cluster_id: String,
    /// Address to listen on (port 0 picks an ephemeral port, see
    /// [`crate::TransportHandle::local_addr`]).
    pub listen_addr: SocketAddr,
    /// The other replicas (must not contain `node_id`).
    pub peers: Vec<(u32, SocketAddr)>,
    /// Largest accepted frame length (version byte + payload), both directions.
    pub max_frame_bytes: usize,
    /// Capacity of each peer's outbound queue, in messages.
    pub send_queue_capacity: usize,
    /// Capacity of the inbound channel, in messages.
    pub inbound_capacity: usize,
    /// First reconnect delay.
    pub connect_backoff_min: Duration,
    /// Largest reconnect delay.
    pub connect_backoff_max: Duration,
    /// Timeout for TCP connect and for the whole handshake (each side).
    pub handshake_timeout: Duration,
    /// Optional shared secret; when set, dialers must prove knowledge of it
    /// (HMAC-SHA256 over the listener's nonce, the cluster id and node id).
    pub cluster_secret: Option<Vec<u8>>,
    /// Optional mutual TLS (see [`crate::PeerTls`]).
    pub tls: Option<crate::PeerTls>,
}

impl TransportConfig {
    /// A configuration with default limits and timeouts.
    pub fn new(
        node_id: u32,
        cluster_id: impl Into<String>,
        listen_addr: SocketAddr,
        peers: Vec<(u32, SocketAddr)>,
    ) -> Self {
        TransportConfig {
            node_id,
            cluster_id: cluster_id.into(),
            listen_addr,
            peers,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            send_queue_capacity: DEFAULT_SEND_QUEUE_CAPACITY,
            inbound_capacity: DEFAULT_INBOUND_CAPACITY,
            connect_backoff_min: Duration::from_millis(20),
            connect_backoff_max: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            cluster_secret: None,
            tls: None,
        }
    }

    /// Sets the shared cluster secret.
    /// Enables mutual TLS for peer connections.
    pub fn with_tls(mut self, tls: crate::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.cluster_secret = Some(secret.into());
        self
    }

    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |m: String| Err(TransportError::InvalidConfig(m));
        if self.cluster_id.len() > 1024 {
            return bad("cluster_id longer than 1024 bytes".into());
        }
        if self.max_frame_bytes < 2 || self.max_frame_bytes > u32::MAX as usize {
            return bad(format!(
                "max_frame_bytes {} out of range",
                self.max_frame_bytes
            ));
        }
        if self.send_queue_capacity == 0 {
            return bad("send_queue_capacity must be > 0".into());
        }
        if self.inbound_capacity == 0 {
            return bad("inbound_capacity must be > 0".into());
        }
        if self.connect_backoff_min.is_zero() || self.connect_backoff_min > self.connect_backoff_max
        {
            return bad("need 0 < connect_backoff_min <= connect_backoff_max".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout must be > 0".into());
        }
        if matches!(&self.cluster_secret, Some(s) if s.is_empty()) {
            return bad("cluster_secret must not be empty".into());
        }
        let mut seen = HashSet::new();
        for (id, _) in &self.peers {
            if *id == self.node_id {
                return bad(format!("peer list contains this node's id {id}"));
            }
            if !seen.insert(*id) {
                return bad(format!("duplicate peer id {id}"));
            }
        }
        Ok(())
    }
}
