//! A replica's settings.

use crate::error::ServerError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This replica's id: its index into `peers`, or, for a replica that
    /// joined a running cluster, the id the cluster gave it.
    pub id: u32,
    /// The bootstrap replicas' peer-protocol addresses (`host:port`; host
    /// names are resolved at every connection attempt), in id order.
    pub peers: Vec<String>,
    /// Where the peer listener binds. Default: this replica's own address
    /// (its `peers` entry, or `advertise_peer`) if that is an IP address,
    /// else all interfaces on its port.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// The address other replicas dial for this one, for a replica that is
    /// not in `peers` (it joined).
    #[serde(default)]
    pub advertise_peer: Option<String>,
    /// The client address others are told of for this replica (a joined
    /// replica's, on the dashboard and in `/v1/members`).
    #[serde(default)]
    pub advertise_http: Option<String>,
    /// What the cluster told this replica when it joined (from its data
    /// folder, or from the join itself on an empty folder).
    #[serde(skip)]
    pub joined: Option<paxlog_storage::JoinedCluster>,
    /// The client HTTP API address.
    pub http: SocketAddr,
    /// Where etcd's v3 gRPC API is served (`None`: not served).
    #[serde(default)]
    pub grpc: Option<SocketAddr>,
    /// The gRPC address other replicas tell clients of (default: `grpc`).
    #[serde(default)]
    pub advertise_grpc: Option<String>,
    pub data_dir: PathBuf,
    #[serde(default = "defaults::cluster_id")]
    pub cluster_id: String,
    /// Length of one consensus tick.
    #[serde(default = "defaults::tick_ms")]
    pub tick_ms: u64,
    #[serde(default = "defaults::heartbeat_ticks")]
    pub heartbeat_ticks: u64,
    /// A follower that hears no leader for 1x..2x this runs an election.
    #[serde(default = "defaults::election_ticks")]
    pub election_ticks: u64,
    /// Take a snapshot and compact the log every this many applied rounds.
    #[serde(default = "defaults::snapshot_every_rounds")]
    pub snapshot_every_rounds: u64,
    /// How long a client request may wait for consensus or a read barrier.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Client requests waiting inside the replica at once.
    #[serde(default = "defaults::max_pending_requests")]
    pub max_pending_requests: usize,
    /// Shared secret that peers prove in their handshake (optional).
    #[serde(default)]
    pub cluster_secret: Option<String>,
    /// TLS: this replica's certificate chain and key (PEM) and the cluster
    /// CA. When set, peers use mutual TLS (every replica's certificate must be
    /// signed by `tls_ca` and name `tls_peer_name`), and the client API is
    /// served over HTTPS with the same certificate.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The name (DNS subject alternative name) peers' certificates carry.
    #[serde(default = "defaults::tls_peer_name")]
    pub tls_peer_name: String,
    /// Clients of the HTTP API must present a certificate signed by `tls_ca`.
    #[serde(default)]
    pub tls_client_auth: bool,
    /// Bearer token that may read and write through the client API.
    #[serde(default)]
    pub write_token: Option<String>,
    /// Bearer token that may only read.
    #[serde(default)]
    pub read_token: Option<String>,
    /// Every replica's client HTTP address, in id order (this one's too),
    /// if known: the dashboard polls them. Empty: unknown.
    #[serde(default)]
    pub http_peers: Vec<SocketAddr>,
    /// `/ready` fails while this replica's applied round is more than this
    /// many rounds behind the highest chosen round it knows of.
    #[serde(default = "defaults::ready_max_lag_rounds")]
    pub ready_max_lag_rounds: u64,
    /// Largest snapshot this replica saves, loads or accepts from a peer
    /// (a snapshot is held in memory whole). Use the same value on every
    /// replica: a snapshot above a replica's limit cannot be installed there.
    #[serde(default = "defaults::max_snapshot_bytes")]
    pub max_snapshot_bytes: u64,
    /// What an empty data folder becomes: `new` bootstraps a new cluster,
    /// `existing` joins a running one (the replica recovers before it
    /// votes). Unset: an empty folder is refused. Ignored once the folder
    /// holds data.
    #[serde(default)]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// How many of `peers` (the first N) vote in a new cluster; the rest
    /// are outside it until a membership change adds them. `None`: all.
    /// Ignored once a membership change was chosen (the log says).
    #[serde(default)]
    pub initial_voters: Option<u32>,
    /// Bytes per snapshot chunk sent to a peer; must stay well under the
    /// transport's frame limit. Not a setting: the simulator lowers it to
    /// reach transfers that resume mid-snapshot.
    #[serde(skip, default = "defaults::snapshot_chunk_bytes")]
    pub snapshot_chunk_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    New,
    Existing,
}

mod defaults {
    pub fn tls_peer_name() -> String {
        "paxlog".to_string()
    }
    pub fn cluster_id() -> String {
        "paxlog".to_string()
    }
    pub fn tick_ms() -> u64 {
        10
    }
    pub fn heartbeat_ticks() -> u64 {
        5
    }
    pub fn election_ticks() -> u64 {
        50
    }
    pub fn snapshot_every_rounds() -> u64 {
        50_000
    }
    pub fn request_timeout_ms() -> u64 {
        5_000
    }
    pub fn max_body_bytes() -> usize {
        1 << 20
    }
    pub fn max_pending_requests() -> usize {
        100_000
    }
    pub fn ready_max_lag_rounds() -> u64 {
        1_000
    }
    pub fn max_snapshot_bytes() -> u64 {
        paxlog_storage::DEFAULT_MAX_SNAPSHOT_BYTES
    }
    pub fn snapshot_chunk_bytes() -> usize {
        1 << 20
    }
}

/// Smallest accepted `max_snapshot_bytes` (an empty store's image is a few
/// bytes; below this a config typo would stop every snapshot).
pub const MIN_SNAPSHOT_BYTES: u64 = 4096;

impl NodeConfig {
    /// The address other replicas dial for this one.
    pub fn own_peer_addr(&self) -> Option<&str> {
        self.advertise_peer
            .as_deref()
            .or_else(|| self.peers.get(self.id as usize).map(String::as_str))
    }

    /// The client address other replicas and clients are told of.
    pub fn own_http_addr(&self) -> String {
        match &self.advertise_http {
            Some(a) => a.clone(),
            None => self.http.to_string(),
        }
    }

    /// The gRPC address other replicas and clients are told of, if this
    /// replica serves gRPC at an address they can use.
    pub fn own_grpc_addr(&self) -> Option<String> {
        match (&self.advertise_grpc, self.grpc) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(addr)) if !addr.ip().is_unspecified() => Some(addr.to_string()),
            _ => None,
        }
    }

    /// Where the peer listener binds (see `peer_listen`).
    pub fn peer_listen_addr(&self) -> Result<SocketAddr, ServerError> {
        if let Some(addr) = self.peer_listen {
            return Ok(addr);
        }
        let own = self.own_peer_addr().ok_or_else(|| {
            ServerError::Config(
                "this replica has no peer address (--peers or --advertise-peer)".into(),
            )
        })?;
        if let Ok(addr) = own.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let port = own
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| ServerError::Config(format!("peer address {own:?} has no port")))?;
        Ok(SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// A configuration with every tunable at its default.
    pub fn new<A: ToString>(id: u32, peers: Vec<A>, http: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            peers: peers.into_iter().map(|a| a.to_string()).collect(),
            peer_listen: None,
            advertise_peer: None,
            advertise_http: None,
            joined: None,
            http,
            grpc: None,
            advertise_grpc: None,
            data_dir,
            cluster_id: defaults::cluster_id(),
            tick_ms: defaults::tick_ms(),
            heartbeat_ticks: defaults::heartbeat_ticks(),
            election_ticks: defaults::election_ticks(),
            snapshot_every_rounds: defaults::snapshot_every_rounds(),
            request_timeout_ms: defaults::request_timeout_ms(),
            max_body_bytes: defaults::max_body_bytes(),
            max_pending_requests: defaults::max_pending_requests(),
            cluster_secret: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_peer_name: defaults::tls_peer_name(),
            tls_client_auth: false,
            write_token: None,
            read_token: None,
            http_peers: Vec::new(),
            ready_max_lag_rounds: defaults::ready_max_lag_rounds(),
            initial_cluster_state: None,
            max_snapshot_bytes: defaults::max_snapshot_bytes(),
            snapshot_chunk_bytes: defaults::snapshot_chunk_bytes(),
            initial_voters: None,
        }
    }

    pub fn validate(&self) -> Result<(), ServerError> {
        let fail = |m: String| Err(ServerError::Config(m));
        if let Some(n) = self.initial_voters {
            if n == 0 || n as usize > self.peers.len() {
                return fail(format!(
                    "--initial-voters must be 1 to the {} replicas in --peers, got {n}",
                    self.peers.len()
                ));
            }
        }
        if self.peers.len() > 64 || (self.peers.is_empty() && self.joined.is_none()) {
            return fail(format!(
                "--peers must list 1 to 64 replica addresses, got {}",
                self.peers.len()
            ));
        }
        if self.joined.is_some() {
            if self.id > paxlog_core::MAX_NODE_ID {
                return fail(format!("replica id {} is above 63", self.id));
            }
            if self.advertise_peer.is_none() && (self.id as usize) >= self.peers.len() {
                return fail(
                    "a replica that joined needs --advertise-peer (the address others dial)".into(),
                );
            }
        } else if self.id as usize >= self.peers.len() {
            return fail(format!(
                "--id {} is outside the {} replicas listed in --peers (ids start at 0); a new replica joins with --join",
                self.id,
                self.peers.len()
            ));
        }
        for (i, a) in self.peers.iter().enumerate() {
            if let Err(why) = paxlog_kv::check_member_addr(a) {
                return fail(format!("--peers: {why}"));
            }
            if self.peers[..i].contains(a) {
                return fail(format!("--peers lists {a} twice"));
            }
        }
        for a in [&self.advertise_peer, &self.advertise_http]
            .into_iter()
            .flatten()
        {
            if let Err(why) = paxlog_kv::check_member_addr(a) {
                return fail(format!("advertised address: {why}"));
            }
        }
        if self.peers.contains(&self.http.to_string()) {
            return fail(format!("--http {} is also a peer address", self.http));
        }
        self.peer_listen_addr()?;
        let tls_files = [&self.tls_cert, &self.tls_key, &self.tls_ca];
        let given = tls_files.iter().filter(|f| f.is_some()).count();
        if given != 0 && given != 3 {
            return fail("TLS needs all three of --tls-cert, --tls-key and --tls-ca".into());
        }
        if self.tls_client_auth && given == 0 {
            return fail("--tls-client-auth needs --tls-cert, --tls-key and --tls-ca".into());
        }
        for token in [&self.write_token, &self.read_token].into_iter().flatten() {
            if token.len() < 8 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return fail("a token must be at least 8 characters, without spaces".into());
            }
        }
        if self.read_token.is_some() && self.write_token.is_none() {
            return fail("a read-only token without a write token would leave no way to write; give --write-token too".into());
        }
        if !self.http_peers.is_empty() && self.http_peers.len() != self.peers.len() {
            return fail(format!(
                "http_peers lists {} addresses but there are {} replicas (give one per replica, in id order, or none)",
                self.http_peers.len(),
                self.peers.len()
            ));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 128 {
            return fail("cluster id must be 1 to 128 characters".into());
        }
        if !(1..=10_000).contains(&self.tick_ms) {
            return fail("tick_ms must be 1..=10000".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks < 2 * self.heartbeat_ticks {
            return fail(
                "election_ticks must be at least twice heartbeat_ticks (and both > 0)".into(),
            );
        }
        if self.snapshot_every_rounds == 0 {
            return fail("snapshot_every_rounds must be > 0".into());
        }
        if self.request_timeout_ms == 0
            || self.max_body_bytes < 1024
            || self.max_pending_requests == 0
        {
            return fail("request_timeout_ms, max_body_bytes (>= 1024) and max_pending_requests must be positive".into());
        }
        if self.max_snapshot_bytes < MIN_SNAPSHOT_BYTES
            || usize::try_from(self.max_snapshot_bytes).is_err()
        {
            return fail(format!(
                "max_snapshot_bytes must be {MIN_SNAPSHOT_BYTES}..={} on this platform, got {}",
                usize::MAX,
                self.max_snapshot_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(peers: &[&str]) -> NodeConfig {
        NodeConfig::new(
            0,
            peers.to_vec(),
            "127.0.0.1:5000".parse().unwrap(),
            PathBuf::from("/tmp/x"),
        )
    }

    #[test]
    fn peers_may_be_host_names_and_a_named_replica_listens_on_all_interfaces() {
        let c = cfg(&["paxlog-0.paxlog-peers:6000", "10.0.0.2:6000", "[::1]:6000"]);
        c.validate().unwrap();
        assert_eq!(
            c.peer_listen_addr().unwrap(),
            "0.0.0.0:6000".parse().unwrap()
        );
        let mut c = cfg(&["10.0.0.1:6000", "b:6000"]);
        assert_eq!(
            c.peer_listen_addr().unwrap(),
            "10.0.0.1:6000".parse().unwrap()
        );
        c.peer_listen = Some("0.0.0.0:7000".parse().unwrap());
        assert_eq!(
            c.peer_listen_addr().unwrap(),
            "0.0.0.0:7000".parse().unwrap()
        );
    }

    #[test]
    fn bad_peer_lists_are_refused_with_the_reason() {
        for (peers, why) in [
            (vec!["a:6000", "a:6000"], "twice"),
            (vec!["a:6000", "no-port"], "no port"),
            (vec!["a:6000", "bad host:1"], "not a host name"),
            (vec!["a:6000", "b:0"], "1-65535"),
        ] {
            let err = cfg(&peers).validate().unwrap_err().to_string();
            assert!(err.contains(why), "{peers:?}: {err}");
        }
        let mut outside = cfg(&["a:6000"]);
        outside.id = 3;
        let err = outside.validate().unwrap_err().to_string();
        assert!(err.contains("--join"), "{err}");
    }

    #[test]
    fn a_joined_replica_needs_no_peer_list_but_an_address_of_its_own() {
        let mut c = cfg(&[]);
        c.id = 4;
        c.joined = Some(paxlog_storage::JoinedCluster {
            membership: paxlog_core::Membership::initial(3),
            members: Vec::new(),
        });
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--advertise-peer"), "{err}");
        c.advertise_peer = Some("paxlog-4.paxlog-peers:6000".into());
        c.validate().unwrap();
        assert_eq!(c.own_peer_addr(), Some("paxlog-4.paxlog-peers:6000"));
        assert_eq!(
            c.peer_listen_addr().unwrap(),
            "0.0.0.0:6000".parse().unwrap()
        );
    }
}
