//! Transport configuration.

use std::collections::HashSet;
use std::net::{Ipv6Addr, SocketAddr};
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
    /// The other replicas at start, as `(node id, "host:port")` (must not
    /// contain `node_id`). Addresses are names, not socket addresses, because
    /// in Docker compose or Kubernetes a peer keeps its name while its IP
    /// changes whenever its container is re-created; the name is resolved
    /// again at every connect attempt (see [`validate_peer_addr`] for the
    /// accepted shapes). Peers added or removed later through
    /// [`crate::TransportHandle::set_peer`] and
    /// [`crate::TransportHandle::remove_peer`] are not reflected here.
    pub peers: Vec<(u32, String)>,
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
    ///
    /// `peers` takes anything printable as `host:port`: `SocketAddr`s (the
    /// historical form), `&str` or `String` host names. It is a `Vec` rather
    /// than any iterator so that a caller's untyped `.collect()` still infers.
    /// The shape of the addresses is checked by [`TransportConfig::validate`]
    /// (called by [`crate::Transport::start`]), not here.
    pub fn new<A: ToString>(
        node_id: u32,
        cluster_id: impl Into<String>,
        listen_addr: SocketAddr,
        peers: Vec<(u32, A)>,
    ) -> Self {
        TransportConfig {
            node_id,
            cluster_id: cluster_id.into(),
            listen_addr,
            peers: peers
                .into_iter()
                .map(|(id, addr)| (id, addr.to_string()))
                .collect(),
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

    /// Enables mutual TLS for peer connections.
    pub fn with_tls(mut self, tls: crate::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the shared cluster secret.
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
        for (id, addr) in &self.peers {
            if *id == self.node_id {
                return bad(format!("peer list contains this node's id {id}"));
            }
            if !seen.insert(*id) {
                return bad(format!("duplicate peer id {id}"));
            }
            if let Err(e) = check_addr(addr) {
                return bad(format!("peer {id} address {addr:?}: {e}"));
            }
        }
        Ok(())
    }
}

/// Longest host name DNS allows (RFC 1035), also a bound on what we log.
const MAX_HOST_LEN: usize = 253;

/// Checks that `addr` has the shape of a peer address: `host:port`, where
/// host is a DNS name (letters, digits, `-`, `_`, `.`), an IPv4 literal or a
/// bracketed IPv6 literal (`[::1]:6000`), and port is a number in 1-65535.
///
/// Only the shape is checked: whether the name resolves is learnt at every
/// connect attempt, because a peer's name may legitimately not resolve yet
/// (its container is not up) and must not prevent this node from starting.
/// Catching typos here, rather than as an endless series of connect
/// failures, is the point.
pub fn validate_peer_addr(addr: &str) -> Result<(), TransportError> {
    check_addr(addr)
        .map_err(|e| TransportError::InvalidConfig(format!("peer address {addr:?}: {e}")))
}

fn check_addr(addr: &str) -> Result<(), String> {
    let port = if let Some(rest) = addr.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("missing ']' after an IPv6 address")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected host:port (the port is missing)")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        port
    } else {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or("expected host:port (the port is missing)")?;
        if host.contains(':') {
            return Err("an IPv6 address must be written in brackets, as [addr]:port".into());
        }
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        if host.len() > MAX_HOST_LEN {
            return Err(format!("the host is longer than {MAX_HOST_LEN} bytes"));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!("the host contains {c:?}"));
        }
        port
    };
    // `u16::from_str` would also take "+80"; insist on plain digits.
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u16>(), Ok(p) if p != 0);
    if !port_ok {
        return Err(format!("port {port:?} is not a number in 1-65535"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_address_shapes() {
        for ok in [
            "localhost:6000",
            "paxlog-0.paxlog.default.svc.cluster.local:6000",
            "node_1:1",
            "fqdn.example.:65535",
            "10.0.0.7:6000",
            "[::1]:6000",
            "[fe80::1:2]:80",
        ] {
            assert!(validate_peer_addr(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "localhost",
            ":6000",
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "localhost:+80",
            "localhost:http",
            "::1:6000",
            "[::1]",
            "[::1]6000",
            "[not-ip]:6000",
            "[::1:6000",
            "local host:6000",
            "http://a:6000",
            " localhost:6000",
        ] {
            match validate_peer_addr(bad) {
                Err(TransportError::InvalidConfig(m)) => assert!(m.contains("peer address"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = format!("{}:80", "a".repeat(MAX_HOST_LEN + 1));
        assert!(validate_peer_addr(&long).is_err());
    }

    #[test]
    fn config_validates_peer_addresses() {
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let ok = TransportConfig::new(1, "c", listen, vec![(2, "node-2:6000")]);
        assert!(ok.validate().is_ok());
        let old_style = TransportConfig::new(1, "c", listen, vec![(2, listen)]);
        assert_eq!(old_style.peers, vec![(2, "127.0.0.1:0".to_string())]);
        let bad = TransportConfig::new(1, "c", listen, vec![(2, "node-2")]);
        match bad.validate() {
            Err(TransportError::InvalidConfig(m)) => {
                assert!(m.contains("peer 2") && m.contains("node-2"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
