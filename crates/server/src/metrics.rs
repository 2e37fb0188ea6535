//! Observability: Prometheus metrics and the cheap health signals the
//! driver publishes each turn.
//!
//! One [`Metrics`] per replica, shared through an `Arc` by the driver thread
//! (which updates it directly: every metric is atomic-based) and the HTTP
//! handlers (which encode it for `GET /metrics` and read the published
//! atomics for `/health` and `/ready`, never going through the driver).

use paxlog_core::Role;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// `leader` value meaning "no leader known".
const NO_LEADER: u64 = u64::MAX;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, e.g. `/v1/kv/{*key}` (never the raw path).
    pub endpoint: String,
    pub method: &'static str,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

type RequestFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Every metric of one replica.
pub struct Metrics {
    registry: Registry,
    pub proposals: Counter,
    pub commits: Counter,
    pub applied_round: Gauge,
    pub chosen_round: Gauge,
    pub leader_changes: Counter,
    pub is_leader: Gauge,
    pub promised_ballot: Gauge,
    pub peer_reachable: Family<PeerLabels, Gauge>,
    pub wal_fsync_seconds: Histogram,
    pub wal_batch_records: Histogram,
    pub http_requests: RequestFamily,
    pub snapshot_bytes: Gauge,
    pub snapshot_seconds: Histogram,
    pub snapshots: Counter,
    pub snapshot_installs: Counter,
    /// Snapshots passed over on start because they were unusable (corrupt,
    /// unreadable, too large, or not restorable): one per skipped file.
    pub snapshot_fallbacks: Counter,
    /// 1 while this replica recovers forgotten state and does not vote.
    pub recovering: Gauge,
    pub membership_epoch: Gauge,
    /// Watches open at this replica.
    pub watchers: Gauge,
    /// Peers found reporting another value for a chosen round (an alarm).
    pub peer_conflicts: Counter,
    /// What `/health`, `/ready` and the dashboard read.
    pub published: Published,
}

/// Plain atomics the driver sets each turn (and the HTTP layer for write
/// latency). Reading them costs nothing and needs no driver round trip.
#[derive(Default)]
pub struct Published {
    driver_alive: AtomicBool,
    driver_started: AtomicBool,
    role: AtomicU8,
    leader: AtomicU64,
    /// This replica's current round (every round below it is applied).
    applied: AtomicU64,
    /// This replica's chosen prefix.
    chosen: AtomicU64,
    /// The highest chosen round this replica knows of (its own or a peer's).
    known_chosen: AtomicU64,
    /// Successful client writes and their summed latency, for the dashboard.
    writes: AtomicU64,
    write_micros: AtomicU64,
    /// Recovering forgotten state (not voting).
    recovering: AtomicBool,
    /// The count of the highest ballot promised (the etcd API's term).
    term: AtomicU64,
}

/// A copy of [`Published`] at one moment.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Snapshot {
    pub driver_alive: bool,
    pub recovering: bool,
    pub role: Role,
    pub leader: Option<u32>,
    pub applied_round: u64,
    pub chosen_round: u64,
    pub known_chosen_round: u64,
    pub writes: u64,
    pub write_latency_sum_ms: f64,
    pub term: u64,
}

impl Published {
    pub fn set_driver_alive(&self, alive: bool) {
        if alive {
            self.driver_started.store(true, Ordering::Relaxed);
        }
        self.driver_alive.store(alive, Ordering::Release);
    }

    pub fn set_state(
        &self,
        role: Role,
        leader: Option<u32>,
        applied: u64,
        chosen: u64,
        known_chosen: u64,
    ) {
        let role = match role {
            Role::Follower => 0,
            Role::Candidate => 1,
            Role::Leader => 2,
        };
        self.role.store(role, Ordering::Relaxed);
        self.leader
            .store(leader.map_or(NO_LEADER, u64::from), Ordering::Relaxed);
        self.applied.store(applied, Ordering::Relaxed);
        self.chosen.store(chosen, Ordering::Relaxed);
        self.known_chosen
            .store(known_chosen.max(chosen), Ordering::Relaxed);
    }

    pub fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::Relaxed);
    }

    pub fn set_recovering(&self, recovering: bool) {
        self.recovering.store(recovering, Ordering::Relaxed);
    }

    pub fn record_write(&self, latency: Duration) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.write_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> Snapshot {
        let role = match self.role.load(Ordering::Relaxed) {
            2 => Role::Leader,
            1 => Role::Candidate,
            _ => Role::Follower,
        };
        let leader = match self.leader.load(Ordering::Relaxed) {
            NO_LEADER => None,
            l => u32::try_from(l).ok(),
        };
        Snapshot {
            driver_alive: self.driver_alive.load(Ordering::Acquire),
            recovering: self.recovering.load(Ordering::Relaxed),
            role,
            leader,
            applied_round: self.applied.load(Ordering::Relaxed),
            chosen_round: self.chosen.load(Ordering::Relaxed),
            known_chosen_round: self.known_chosen.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            write_latency_sum_ms: self.write_micros.load(Ordering::Relaxed) as f64 / 1000.0,
            term: self.term.load(Ordering::Relaxed),
        }
    }

    /// True once the driver ran and until it stops.
    pub fn driver_alive(&self) -> bool {
        self.driver_alive.load(Ordering::Acquire)
    }
}

impl Snapshot {
    /// `Ok` when this replica should get traffic: it knows a leader (or is
    /// one) and has applied up to within `max_lag` rounds of the highest
    /// chosen round it knows of; else the reason it is not ready.
    pub fn readiness(&self, max_lag: u64) -> Result<(), String> {
        if !self.driver_alive {
            return Err("the replica's driver is not running".into());
        }
        if self.recovering {
            return Err(
                "recovering: this replica may have forgotten promises and accepts (a lost or \
                 damaged disk) and votes in nothing until a majority of the others told it what \
                 they promised and accepted; /status says what it waits for"
                    .into(),
            );
        }
        if self.role != Role::Leader && self.leader.is_none() {
            return Err("no leader known".into());
        }
        let lag = self.known_chosen_round.saturating_sub(self.applied_round);
        if lag > max_lag {
            return Err(format!(
                "applied round {} is {lag} rounds behind the highest chosen round {} (bound {max_lag})",
                self.applied_round, self.known_chosen_round
            ));
        }
        Ok(())
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A method label from a small fixed set (no unbounded cardinality).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

impl Metrics {
    pub fn new(node: u32) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "paxlog",
            [("node".into(), node.to_string().into())].into_iter(),
        );
        let proposals = Counter::default();
        registry.register(
            "proposals",
            "Client writes submitted to this replica",
            proposals.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "commits",
            "Log entries applied to the state machine (commands and no-ops)",
            commits.clone(),
        );
        let applied_round = Gauge::default();
        registry.register(
            "applied_round",
            "Current round: every round below it is applied here",
            applied_round.clone(),
        );
        let chosen_round = Gauge::default();
        registry.register(
            "chosen_round",
            "Every round below this is chosen and known here",
            chosen_round.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "leader_changes",
            "Times the leader this replica knows of changed",
            leader_changes.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "is_leader",
            "1 while this replica is the leader",
            is_leader.clone(),
        );
        let promised_ballot = Gauge::default();
        registry.register(
            "promised_ballot",
            "Counter of the highest ballot this acceptor promised",
            promised_ballot.clone(),
        );
        let peer_reachable = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_reachable",
            "1 while the connection to the peer is established",
            peer_reachable.clone(),
        );
        let wal_fsync_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register_with_unit(
            "wal_fsync",
            "Write-ahead log append + fsync latency, per batch",
            Unit::Seconds,
            wal_fsync_seconds.clone(),
        );
        let wal_batch_records = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "wal_batch_records",
            "Records made durable per fsync (group commit batch size)",
            wal_batch_records.clone(),
        );
        let http_requests: RequestFamily = Family::new_with_constructor(http_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Client request latency by route template, method and status class",
            Unit::Seconds,
            http_requests.clone(),
        );
        let snapshot_bytes = Gauge::default();
        registry.register_with_unit(
            "snapshot_size",
            "Size of the last snapshot taken or installed",
            Unit::Bytes,
            snapshot_bytes.clone(),
        );
        let snapshot_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "snapshot_duration",
            "Time to take a snapshot and compact the log",
            Unit::Seconds,
            snapshot_seconds.clone(),
        );
        let snapshots = Counter::default();
        registry.register("snapshots", "Snapshots taken", snapshots.clone());
        let snapshot_installs = Counter::default();
        registry.register(
            "snapshot_installs",
            "Snapshots received from a peer and installed",
            snapshot_installs.clone(),
        );
        let snapshot_fallbacks = Counter::default();
        registry.register(
            "snapshot_fallbacks",
            "Unusable snapshots skipped on start (recovery fell back to an older one)",
            snapshot_fallbacks.clone(),
        );
        let recovering = Gauge::default();
        registry.register(
            "recovering",
            "1 while this replica may have forgotten promises and accepts and recovers them from a majority (it votes in nothing meanwhile)",
            recovering.clone(),
        );
        let membership_epoch = Gauge::default();
        registry.register(
            "membership_epoch",
            "Membership changes chosen so far (0: the bootstrap membership); equal on every member once they caught up",
            membership_epoch.clone(),
        );
        let watchers = Gauge::default();
        registry.register(
            "watchers",
            "Watches open at this replica (GET /v1/watch)",
            watchers.clone(),
        );
        let peer_conflicts = Counter::default();
        registry.register(
            "peer_conflicts",
            "Peers that reported another value for a round chosen here (they lost or corrupted their state; their messages are refused): an alarm",
            peer_conflicts.clone(),
        );
        Metrics {
            registry,
            recovering,
            membership_epoch,
            watchers,
            peer_conflicts,
            proposals,
            commits,
            applied_round,
            chosen_round,
            leader_changes,
            is_leader,
            promised_ballot,
            peer_reachable,
            wal_fsync_seconds,
            wal_batch_records,
            http_requests,
            snapshot_bytes,
            snapshot_seconds,
            snapshots,
            snapshot_installs,
            snapshot_fallbacks,
            published: Published::default(),
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn observe_request(
        &self,
        endpoint: &str,
        method: &'static str,
        status: u16,
        latency: Duration,
    ) {
        let labels = RequestLabels {
            endpoint: endpoint.to_string(),
            method,
            status: status_class(status),
        };
        self.http_requests
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    pub fn set_peer_reachable(&self, peer: u32, reachable: bool) {
        self.peer_reachable
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(i64::from(reachable));
    }
}

/// Saturating u64 → i64 for gauges.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(role: Role, leader: Option<u32>, applied: u64, known: u64) -> Snapshot {
        Snapshot {
            driver_alive: true,
            recovering: false,
            role,
            leader,
            applied_round: applied,
            chosen_round: applied,
            known_chosen_round: known,
            writes: 0,
            write_latency_sum_ms: 0.0,
            term: 0,
        }
    }

    #[test]
    fn readiness_needs_a_leader_and_a_small_lag() {
        assert!(snap(Role::Leader, Some(0), 5, 5).readiness(10).is_ok());
        assert!(snap(Role::Follower, Some(2), 5, 15).readiness(10).is_ok());
        let no_leader = snap(Role::Candidate, None, 5, 5).readiness(10);
        assert!(no_leader.expect_err("no leader").contains("no leader"));
        let lagging = snap(Role::Follower, Some(2), 5, 16).readiness(10);
        assert!(lagging.expect_err("lagging").contains("11 rounds behind"));
        let mut dead = snap(Role::Leader, Some(0), 5, 5);
        dead.driver_alive = false;
        assert!(dead.readiness(10).is_err());
    }

    #[test]
    fn published_round_trips() {
        let p = Published::default();
        p.set_driver_alive(true);
        p.set_state(Role::Leader, Some(1), 7, 9, 8);
        p.record_write(Duration::from_millis(3));
        let s = p.snapshot();
        assert_eq!(s.role, Role::Leader);
        assert_eq!(s.leader, Some(1));
        assert_eq!((s.applied_round, s.chosen_round), (7, 9));
        assert_eq!(s.known_chosen_round, 9);
        assert_eq!(s.writes, 1);
        assert!((s.write_latency_sum_ms - 3.0).abs() < 1e-9);
        p.set_state(Role::Follower, None, 7, 9, 9);
        assert_eq!(p.snapshot().leader, None);
    }

    #[test]
    fn encodes_every_metric_name() {
        let m = Metrics::new(3);
        m.proposals.inc();
        m.wal_fsync_seconds.observe(0.001);
        m.set_peer_reachable(1, true);
        m.observe_request("/v1/kv/{*key}", "PUT", 200, Duration::from_millis(2));
        let text = m.encode().expect("encodes");
        for name in [
            "paxlog_proposals_total",
            "paxlog_commits_total",
            "paxlog_applied_round",
            "paxlog_chosen_round",
            "paxlog_leader_changes_total",
            "paxlog_is_leader",
            "paxlog_promised_ballot",
            "paxlog_peer_reachable{",
            "paxlog_wal_fsync_seconds_bucket",
            "paxlog_wal_batch_records_bucket",
            "paxlog_http_request_duration_seconds_bucket",
            "paxlog_snapshot_size_bytes",
            "paxlog_snapshot_duration_seconds_bucket",
            "paxlog_snapshots_total",
            "paxlog_snapshot_installs_total",
            "paxlog_snapshot_fallbacks_total",
            "paxlog_recovering",
            "paxlog_membership_epoch",
            "paxlog_watchers",
            "paxlog_peer_conflicts_total",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.contains(r#"endpoint="/v1/kv/{*key}",method="PUT",status="2xx""#));
        assert!(text.contains(r#"node="3""#));
    }
}
