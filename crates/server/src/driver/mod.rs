//! The one loop that owns a replica: its consensus core, write-ahead log,
//! snapshots and key-value state. It runs on its own OS thread; HTTP
//! handlers and the peer transport talk to it through one bounded channel.
//!
//! Each turn: take every queued input (up to a bound), feed the core, then
//! hand the core's `Ready` to storage (one fsync for the whole batch: group
//! commit), and only then to the network, then apply. While an fsync runs,
//! new inputs queue up and form the next batch.
//!
//! This file holds the turn loop and the `Ready` hand-off; the rest is split
//! by responsibility: `api` (requests, typed replies, `DriverError`),
//! `writes`, `reads`, `timers` (clock, retries, deadlines), `snapshots`
//! (taking, retention, transfer), `observe` (metrics, health, catch-up
//! lines) and `test_hooks`.

use crate::config::NodeConfig;
use crate::metrics::{gauge_value, Metrics};
use crate::wire::Wire;
use bytes::Bytes;
use paxlog_core::{
    Ballot, DropReason, Entry, Event, Message, NodeId, Proposal, ProposeError, Replica, RequestId,
    Role, Slot, StateMachine, StatusReport,
};
use paxlog_kv::{ApplyOutput, ApplyResult, ErrorKind, KvCommand, KvRequest, KvStore};
use paxlog_transport::{Inbound, PeerStatus};
use serde::Serialize;
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod api;
mod events;
pub mod io;
mod leases;
mod members;
mod observe;
mod reads;
mod snapshots;
mod test_hooks;
mod timers;
mod watch;
mod writes;

pub use api::*;
use io::{Clock, LogStorage, PeerNetwork, SnapshotReceiving, SnapshotStorage};
pub use leases::{LeaseAction, LeaseInfo};
pub use members::{peer_addresses, MEMBERSHIP_CLIENT_ID, PROMOTE_MAX_LAG_ROUNDS};
use observe::{AliveGuard, CatchUp};
use reads::describe_entry;
use snapshots::IncomingSnapshot;
use test_hooks::TestHooks;
pub use watch::{WatchEvent, WatchHub, WatchRequest, MAX_WATCHERS, WATCH_HISTORY_EVENTS};

/// Inputs taken per turn before the batch is persisted.
const MAX_INPUTS_PER_TURN: usize = 4096;

/// A stalled snapshot transfer is re-requested after this long.
const SNAPSHOT_STALL: Duration = Duration::from_secs(2);

/// A write with no leader to go to is retried this often.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Peer reachability and catch-up progress are published this often.
const SLOW_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// A replica this many rounds behind the highest chosen round it knows of
/// is catching up; it logs one line once it is (nearly) level again.
const CATCH_UP_LAG: u64 = 256;

/// Largest page `GET /log` returns.
pub const MAX_LOG_PAGE: usize = 200;

struct PendingWrite {
    payload: Bytes,
    reply: Reply<ApplyOutput>,
    deadline: Instant,
}

/// Waiting for this replica to be up to date: a read, or a write whose
/// pre-check must see every write acknowledged before it arrived.
enum PendingRead {
    Read(ReadRequest),
    /// With its stamp (see `start_write`).
    Write(WriteRequest, Slot),
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimeoutKey {
    Write(RequestId),
    Read(u64),
}

pub struct Driver {
    cfg: NodeConfig,
    replica: Replica,
    kv: KvStore,
    wal: Box<dyn LogStorage>,
    snapshots: Box<dyn SnapshotStorage>,
    transport: Box<dyn PeerNetwork>,
    clock: Box<dyn Clock>,
    writes: HashMap<RequestId, PendingWrite>,
    write_retries: VecDeque<(Instant, RequestId)>,
    /// Writes proposed and not heard of since: a leader that crashed with
    /// our forwarded proposal never reports it, so we propose it again
    /// (same id: the state machine applies it at most once).
    reproposals: VecDeque<(Instant, RequestId)>,
    reproposal_interval: Duration,
    /// Reads waiting for the leader's read index.
    reads_awaiting_index: HashMap<u64, PendingRead>,
    /// Reads waiting for this replica to apply up to a round.
    reads_awaiting_apply: BTreeMap<(u64, u64), PendingRead>,
    read_retries: VecDeque<(Instant, u64)>,
    reads_to_retry: HashMap<u64, PendingRead>,
    next_read_id: u64,
    timeouts: BinaryHeap<Reverse<(Instant, TimeoutKey)>>,
    last_snapshot_round: u64,
    incoming_snapshot: Option<IncomingSnapshot>,
    started: Instant,
    /// The membership change this replica placed and waits to apply.
    pending_change: Option<members::PendingChange>,
    /// The round of the last membership change applied here.
    membership_round: Option<u64>,
    /// The peer addresses the transport was last given, and the store's
    /// `book_version` then.
    dialed: BTreeMap<u32, String>,
    book_version_dialed: u64,
    /// Recent changes and open watches.
    watch: watch::WatchHub,
    /// The leader's lease deadlines.
    lease_clock: leases::LeaseClock,
    /// Keep-alives waiting for this leader's `LeasesRenewed` to apply:
    /// (until, lease, reply).
    keep_alives_awaiting_term: Vec<(Instant, u64, Reply<LeaseInfo>)>,
    /// Client addresses peers announced (`Wire::ClientAddress`).
    heard_http: BTreeMap<u32, String>,
    /// gRPC addresses peers announced with theirs.
    heard_grpc: BTreeMap<u32, String>,
    /// Slow publishes until this replica announces its client address.
    announce_countdown: u32,
    /// Consensus time, counted from the monotonic clock: ticks delivered.
    ticks_done: u64,
    metrics: Arc<Metrics>,
    /// The highest chosen round heard of in peers' messages.
    heard_chosen: u64,
    /// The leader as last seen, to count changes.
    last_leader: Option<NodeId>,
    next_slow_publish: Instant,
    catch_up: Option<CatchUp>,
    test_hooks: TestHooks,
    /// Peers refused for reporting another value for a chosen round (at
    /// most one each).
    peer_conflicts: Vec<PeerConflictInfo>,
    /// Planted bugs (simulator tests only; all off otherwise).
    bugs: DriverBugs,
}

/// Deliberately broken variants of driver fixes, for the simulator's
/// checker tests (`paxlog-sim --bug ...`). All off by default; a server
/// never sets them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverBugs {
    /// `check_and_propose` skips its second duplicate check (after a
    /// state-dependent write's read barrier): a retry whose earlier attempt
    /// was applied while it waited is refused although it executed.
    pub skip_duplicate_check_after_barrier: bool,
    /// A received snapshot replaces the store before the core is asked,
    /// and the core's answer is ignored (the old install order).
    pub install_snapshot_unchecked: bool,
    /// Lease deadlines are half the TTL instead of the TTL stretched by
    /// the drift bound: leases expire early.
    pub early_lease_expiry: bool,
}

/// The driver's outside world (see `io`).
pub struct DriverIo {
    pub log: Box<dyn LogStorage>,
    pub snapshots: Box<dyn SnapshotStorage>,
    pub network: Box<dyn PeerNetwork>,
    pub clock: Box<dyn Clock>,
    /// Where read ids start. Random in a server, so a leader's reply meant
    /// for this replica's previous incarnation (still in flight after a
    /// restart) matches no read of this one; from the seed in the simulator.
    pub seed: u64,
}

/// How a turn began (see `run_turns`).
enum TurnStart {
    Client(DriverInput),
    Peer(Inbound<Wire>),
    Tick,
}

impl Driver {
    pub fn new(
        cfg: NodeConfig,
        replica: Replica,
        kv: KvStore,
        io: DriverIo,
        last_snapshot_round: u64,
        metrics: Arc<Metrics>,
    ) -> Driver {
        let now = io.clock.now();
        let reproposal_interval = Duration::from_millis(2 * cfg.tick_ms * cfg.election_ticks);
        let test_hooks = TestHooks::from_env(&cfg.data_dir);
        // What the transport was started with (see `sync_peer_addresses`).
        let dialed = peer_addresses(&cfg, &kv, &BTreeMap::new())
            .into_iter()
            .filter(|(id, _)| *id != cfg.id)
            .map(|(id, a)| (id, a.peer_addr))
            .collect();
        let book_version_dialed = kv.book_version();
        Driver {
            dialed,
            book_version_dialed,
            heard_http: BTreeMap::new(),
            heard_grpc: BTreeMap::new(),
            watch: watch::WatchHub::new(kv.applied_upto().0),
            lease_clock: Default::default(),
            keep_alives_awaiting_term: Vec::new(),
            announce_countdown: 0,
            reproposals: VecDeque::new(),
            reproposal_interval,
            cfg,
            replica,
            kv,
            wal: io.log,
            snapshots: io.snapshots,
            transport: io.network,
            clock: io.clock,
            writes: HashMap::new(),
            write_retries: VecDeque::new(),
            reads_awaiting_index: HashMap::new(),
            reads_awaiting_apply: BTreeMap::new(),
            read_retries: VecDeque::new(),
            reads_to_retry: HashMap::new(),
            next_read_id: io.seed,
            timeouts: BinaryHeap::new(),
            last_snapshot_round,
            incoming_snapshot: None,
            started: now,
            pending_change: None,
            membership_round: None,
            ticks_done: 0,
            metrics,
            heard_chosen: 0,
            last_leader: None,
            next_slow_publish: now,
            catch_up: None,
            test_hooks,
            peer_conflicts: Vec::new(),
            bugs: DriverBugs::default(),
        }
    }

    /// Switches planted bugs on (simulator tests only).
    #[doc(hidden)]
    pub fn set_test_bugs(&mut self, bugs: DriverBugs) {
        self.bugs = bugs;
    }

    /// Runs until `Shutdown` or every sender is gone. An error here is fatal
    /// for the replica (e.g. a failed fsync: the process must restart and
    /// recover from what is on disk).
    pub fn run(
        self,
        inputs: mpsc::Receiver<DriverInput>,
        peers: mpsc::Receiver<Inbound<Wire>>,
    ) -> Result<(), String> {
        // A runtime of its own: the driver blocks it on fsync, which is what
        // we want (inputs queue up meanwhile and form the next batch).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the driver's runtime: {e}"))?;
        runtime.block_on(self.run_turns(inputs, peers))
    }

    async fn run_turns(
        mut self,
        mut inputs: mpsc::Receiver<DriverInput>,
        mut peers: mpsc::Receiver<Inbound<Wire>>,
    ) -> Result<(), String> {
        let _alive = AliveGuard::new(self.metrics.clone());
        self.start()?;
        let mut ticker = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut peers_open = true;
        'outer: loop {
            let first = tokio::select! {
                biased;
                input = inputs.recv() => match input {
                    Some(input) => TurnStart::Client(input),
                    None => break 'outer,
                },
                inbound = peers.recv(), if peers_open => match inbound {
                    Some(inbound) => TurnStart::Peer(inbound),
                    None => {
                        peers_open = false;
                        continue;
                    }
                },
                _ = ticker.tick() => TurnStart::Tick,
            };
            // Time first: after a stall (a slow fsync, SIGSTOP, a starved
            // thread) the inputs that queued meanwhile must be judged at the
            // real time, or a lease that expired during the stall would
            // still look valid to the reads among them.
            self.begin_turn();
            match first {
                TurnStart::Client(input) => {
                    if !self.client_input(input)? {
                        break 'outer;
                    }
                }
                TurnStart::Peer(inbound) => self.peer_input(inbound.from, inbound.message)?,
                TurnStart::Tick => self.timers(),
            }
            // Take whatever else is queued into the same turn (one fsync).
            for _ in 0..MAX_INPUTS_PER_TURN {
                let mut progressed = false;
                if let Ok(input) = inputs.try_recv() {
                    progressed = true;
                    if !self.client_input(input)? {
                        break 'outer;
                    }
                }
                if let Ok(inbound) = peers.try_recv() {
                    progressed = true;
                    self.peer_input(inbound.from, inbound.message)?;
                }
                if !progressed {
                    break;
                }
            }
            self.end_turn()?;
        }
        self.stop("the replica is shutting down");
        tracing::info!(node = self.cfg.id, "replica stopped");
        Ok(())
    }

    // ----- a turn, step by step: the loop above and the simulator ----------
    //
    // An error from any step is fatal for the replica (a failed fsync, a log
    // that cannot be written): it must stop and restart from its disk.

    /// Re-applies what the log holds beyond the snapshot. Call once, first.
    pub fn start(&mut self) -> Result<(), String> {
        let replay_started = Instant::now();
        self.process_ready()?;
        let current_round = self.kv.applied_upto().0;
        tracing::info!(
            node = self.cfg.id,
            current_round,
            snapshot_round = self.last_snapshot_round,
            replayed_rounds = current_round.saturating_sub(self.last_snapshot_round),
            ms = replay_started.elapsed().as_millis() as u64,
            "replica started: recovery replayed the log beyond the snapshot"
        );
        self.publish();
        Ok(())
    }

    /// Begins a turn: time first. After a stall the inputs that queued
    /// meanwhile are judged at the real time.
    pub fn begin_turn(&mut self) {
        self.advance_clock();
    }

    /// A client request. Returns false on `Shutdown`.
    pub fn client_input(&mut self, input: DriverInput) -> Result<bool, String> {
        match input {
            DriverInput::Write(request) => self.start_write(request),
            DriverInput::Read(request) => self.start_read(request),
            DriverInput::ChangeMembership(request) => self.start_membership_change(request),
            DriverInput::Watch(request) => self.start_watch(request),
            DriverInput::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    /// A message from replica `from`.
    pub fn peer_input(&mut self, from: u32, wire: Wire) -> Result<(), String> {
        self.on_peer(from, wire)
    }

    /// Retries, re-proposals, deadlines, stalled transfers (each tick).
    pub fn timers(&mut self) {
        self.on_timers();
    }

    /// Ends a turn: the core's `Ready` is persisted, sent, applied and
    /// answered; then metrics are published.
    pub fn end_turn(&mut self) -> Result<(), String> {
        self.process_ready()?;
        self.publish();
        Ok(())
    }

    /// Fails every request still waiting here.
    pub fn stop(&mut self, reason: &str) {
        self.fail_everything(reason);
    }

    /// The consensus core, for status and checks.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Why this replica takes no writes or linearizable reads, if it is no
    /// member of the newest membership it knows (removed, or a new replica
    /// not added yet): a client should go to a member at once rather than
    /// wait for a timeout.
    pub(super) fn not_a_member(&self) -> Option<String> {
        let me = NodeId(self.cfg.id);
        let membership = self.replica.membership();
        (!membership.is_member(me)).then(|| {
            format!(
                "replica {} is not a member of the cluster (membership epoch {}): send requests to a member",
                self.cfg.id, membership.epoch
            )
        })
    }

    /// Places a membership change in the log (this replica must lead).
    /// Within a turn: its messages and records go out with the turn's
    /// `Ready`. The change's outcome shows in the applied log.
    pub fn propose_membership(
        &mut self,
        id: paxlog_core::RequestId,
        membership: paxlog_core::Membership,
    ) -> Result<Slot, paxlog_core::ConfigChangeError> {
        self.replica.propose_config(id, membership)
    }

    /// The database, for status and checks.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    fn process_ready(&mut self) -> Result<(), String> {
        // Applying and events can produce more work; a few rounds settle it.
        for _ in 0..8 {
            // Reads, and writes waiting for a barrier, that the previous
            // round made possible (their proposals join this round's Ready).
            self.serve_applied_reads();
            let ready = self.replica.ready();
            if ready.is_empty() {
                break;
            }
            // 1. What needs no durability goes out now, so followers fsync
            // while we do; then our records become durable (one fsync).
            let mut ready = ready;
            let messages = std::mem::take(&mut ready.messages);
            let (early, durable_only): (Vec<_>, Vec<_>) = messages
                .into_iter()
                .partition(|e| ready.may_send_before_sync(&e.message));
            for envelope in early {
                self.transport
                    .send(envelope.to.0, Wire::Core(envelope.message));
            }
            // Chosen entries are facts (a quorum made them durable), so
            // unless our own vote of this turn was needed for one they are
            // applied and answered before this turn's fsync, which covers
            // only newer records.
            let mut apply = Some(ready.apply);
            if !ready.apply_waits_for_sync {
                for (slot, entry) in apply.take().into_iter().flatten() {
                    self.apply(slot, &entry);
                }
            }
            if !ready.persist.is_empty() {
                // Chosen marks alone need no fsync (they can be learned
                // again), which keeps an fsync off the path from a quorum's
                // acknowledgement to the client's answer.
                let needs_sync = ready.persist.iter().any(|r| r.needs_sync());
                let started = Instant::now();
                if needs_sync {
                    if let Some(stall) = self.test_hooks.take_fsync_stall() {
                        // Test hook: a slow fdatasync (the thread blocks).
                        std::thread::sleep(stall);
                    }
                }
                self.wal
                    .append(&ready.persist)
                    .and_then(|()| {
                        if needs_sync {
                            self.wal.sync()
                        } else {
                            self.wal.flush()
                        }
                    })
                    .map_err(|e| format!("write-ahead log failed: {e}"))?;
                if needs_sync {
                    self.metrics
                        .wal_fsync_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics
                        .wal_batch_records
                        .observe(ready.persist.len() as f64);
                }
            }
            // 2. Then promises and acknowledgements.
            for envelope in durable_only {
                self.transport
                    .send(envelope.to.0, Wire::Core(envelope.message));
            }
            // 3. Our own vote of this turn chose some: apply only now.
            for (slot, entry) in apply.into_iter().flatten() {
                self.apply(slot, &entry);
            }
            // 4. Events.
            for event in ready.events {
                self.on_event(event);
            }
        }
        self.maybe_snapshot()?;
        self.sync_peer_addresses();
        Ok(())
    }

    fn apply(&mut self, slot: Slot, entry: &Entry) {
        let output = self.kv.apply(slot, entry);
        self.metrics.commits.inc();
        self.note_change(slot);
        if let Entry::Config { id, .. } = entry {
            self.membership_applied(slot, *id);
        }
        if let Some(id) = entry.request_id() {
            if let Some(write) = self.writes.remove(&id) {
                let _ = write.reply.send(Ok(output));
            }
        }
    }

    fn on_peer(&mut self, from: u32, wire: Wire) -> Result<(), String> {
        if self.test_hooks.deaf_to_peers() {
            return Ok(());
        }
        match wire {
            Wire::Core(message) => self.on_core_message(from, message),
            Wire::SnapshotRequest { log_start, offset } => {
                let newest = self.last_snapshot_round;
                let slot = log_start.unwrap_or(Slot(newest));
                let reply = if slot.0 == 0 {
                    Wire::SnapshotUnavailable
                } else {
                    match self.snapshots.read_chunk(
                        slot,
                        offset,
                        self.cfg.snapshot_chunk_bytes.max(1),
                    ) {
                        Ok(chunk) => Wire::SnapshotChunk {
                            log_start: chunk.log_start,
                            offset: chunk.offset,
                            data: chunk.data,
                            total_len: chunk.total_len,
                            total_crc: chunk.total_crc,
                            chunk_crc: chunk.chunk_crc,
                        },
                        Err(e) => {
                            tracing::warn!(node = self.cfg.id, peer = from, error = %e, "cannot serve snapshot chunk");
                            Wire::SnapshotUnavailable
                        }
                    }
                };
                self.transport.send(from, reply);
            }
            Wire::SnapshotChunk {
                log_start,
                offset,
                data,
                total_len,
                total_crc,
                chunk_crc,
            } => self.on_snapshot_chunk(
                from, log_start, offset, data, total_len, total_crc, chunk_crc,
            )?,
            Wire::ClientAddress {
                http_addr,
                grpc_addr,
            } => {
                if paxlog_kv::check_member_addr(&http_addr).is_ok()
                    && from <= paxlog_core::MAX_NODE_ID
                {
                    self.heard_http.insert(from, http_addr);
                    match grpc_addr.filter(|a| paxlog_kv::check_member_addr(a).is_ok()) {
                        Some(grpc) => self.heard_grpc.insert(from, grpc),
                        None => self.heard_grpc.remove(&from),
                    };
                }
            }
            Wire::SnapshotUnavailable => {
                if self
                    .incoming_snapshot
                    .as_ref()
                    .is_some_and(|i| i.from.0 == from)
                {
                    self.abandon_snapshot_transfer();
                }
            }
        }
        Ok(())
    }

    fn on_core_message(&mut self, from: u32, message: Message) {
        if let Some(chosen) = chosen_hint(&message) {
            if chosen.0 > self.heard_chosen {
                self.heard_chosen = chosen.0;
                self.note_lag(from);
            }
        }
        self.replica.step(NodeId(from), message);
    }

    /// Uptime, for status pages.
    pub fn uptime(&self) -> Duration {
        // The injected clock, as everything else here (the simulator's
        // replicas report simulated time, not the host's).
        self.clock.now().saturating_duration_since(self.started)
    }
}

/// A random 64-bit value from the OS-seeded hasher keys.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// The highest chosen round a peer's message tells of, if any.
fn chosen_hint(message: &Message) -> Option<Slot> {
    match message {
        Message::Prepare { chosen_upto, .. }
        | Message::Promise { chosen_upto, .. }
        | Message::Accepted { chosen_upto, .. }
        | Message::Reject { chosen_upto, .. }
        | Message::HeartbeatAck { chosen_upto, .. }
        | Message::CatchUpReply { chosen_upto, .. } => Some(*chosen_upto),
        Message::Accept { commit_upto, .. } | Message::Heartbeat { commit_upto, .. } => {
            Some(*commit_upto)
        }
        _ => None,
    }
}
