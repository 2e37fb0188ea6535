//! The one loop that owns a replica: its consensus core, write-ahead log,
//! snapshots and key-value state. It runs on its own OS thread; HTTP
//! handlers and the peer transport talk to it through one bounded channel.
//!
//! Each turn: take every queued input (up to a bound), feed the core, then
//! hand the core's `Ready` to storage (one fsync for the whole batch: group
//! commit), and only then to the network, then apply. While an fsync runs,
//! new inputs queue up and form the next batch.

use crate::config::NodeConfig;
use crate::metrics::{gauge_value, Metrics};
use crate::wire::Wire;
use bytes::Bytes;
use paxlog_core::{
    DropReason, Entry, Event, Message, NodeId, Proposal, ProposeError, Replica, RequestId, Role,
    Slot, StateMachine, StatusReport,
};
use paxlog_kv::{ApplyOutput, ApplyResult, KvCommand, KvRequest, KvStore};
use paxlog_storage::{SnapshotReceiver, SnapshotStore, Wal};
use paxlog_transport::{Inbound, PeerStatus, TransportHandle};
use serde::Serialize;
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Inputs taken per turn before the batch is persisted.
const MAX_INPUTS_PER_TURN: usize = 4096;
/// Snapshot bytes per transfer chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
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

/// An HTTP-level failure: status code and a message naming the problem.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// For "not applied yet" answers: how far this replica is.
    pub current_round: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            current_round: None,
        }
    }
}

pub enum DriverInput {
    Write(WriteRequest),
    Read(ReadRequest),
    Shutdown,
}

pub struct WriteRequest {
    pub command: KvCommand,
    pub id: RequestId,
    pub reply: oneshot::Sender<Result<ApplyOutput, ApiError>>,
    pub deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed through the leader with a quorum round (read index).
    Linearizable,
    /// This replica's state as it is, possibly stale.
    Local,
    /// Wait until this replica has applied the given round.
    MinRound(u64),
}

pub enum Query {
    Get(String),
    Scan {
        prefix: String,
        limit: usize,
    },
    Db,
    Current,
    Fetch(u64),
    Status,
    /// Chosen entries from `from` (default: the last `limit` chosen rounds).
    Log {
        from: Option<u64>,
        limit: usize,
    },
}

pub struct ReadRequest {
    pub query: Query,
    pub consistency: Consistency,
    pub reply: oneshot::Sender<Result<Answer, ApiError>>,
    pub deadline: Instant,
}

pub enum Answer {
    Value {
        value: Option<Value>,
        current_round: u64,
    },
    Items {
        items: Vec<(String, Value)>,
        current_round: u64,
    },
    Db {
        current_round: u64,
        db: Value,
    },
    Current(u64),
    Fetched(Fetched),
    Status(Box<NodeStatus>),
    Log(LogPage),
}

#[derive(Serialize)]
pub struct LogEntry {
    pub round: u64,
    /// The command as text; `None` for a no-op.
    pub command: Option<String>,
}

#[derive(Serialize)]
pub struct LogPage {
    pub log_start: u64,
    pub chosen_round: u64,
    pub current_round: u64,
    pub entries: Vec<LogEntry>,
}

pub enum Fetched {
    Value {
        round_id: u64,
        value: Option<String>,
    },
    NotYet {
        current_round: u64,
    },
    Compacted {
        log_start: u64,
    },
}

#[derive(Serialize)]
pub struct PeerInfo {
    pub id: u32,
    pub address: String,
    pub reachable: bool,
    pub last_heard_ms_ago: Option<u64>,
    pub chosen_round: u64,
    pub last_error: Option<String>,
}

#[derive(Serialize)]
pub struct NodeStatus {
    pub id: u32,
    pub role: Role,
    pub leader: Option<u32>,
    pub promised_ballot: String,
    pub leader_ballot: Option<String>,
    pub current_round: u64,
    pub applied_round: u64,
    pub chosen_round: u64,
    pub log_start: u64,
    pub next_round: Option<u64>,
    pub pending_writes: usize,
    pub last_snapshot_round: u64,
    pub peers: Vec<PeerInfo>,
}

struct PendingWrite {
    payload: Bytes,
    reply: oneshot::Sender<Result<ApplyOutput, ApiError>>,
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

/// A catch-up in progress, for its one log line when done.
struct CatchUp {
    from_round: u64,
    started: Instant,
    snapshot_installed: bool,
}

/// Marks the driver alive in the published health state while it exists
/// (so a panic or an error return also reads as "driver stopped").
struct AliveGuard(Arc<Metrics>);

impl AliveGuard {
    fn new(metrics: Arc<Metrics>) -> AliveGuard {
        metrics.published.set_driver_alive(true);
        AliveGuard(metrics)
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.published.set_driver_alive(false);
    }
}

struct IncomingSnapshot {
    from: NodeId,
    log_start: Option<Slot>,
    receiver: Option<SnapshotReceiver>,
    last_progress: Instant,
}

pub struct Driver {
    cfg: NodeConfig,
    replica: Replica,
    kv: KvStore,
    wal: Wal,
    snapshots: SnapshotStore,
    transport: TransportHandle<Wire>,
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
}

/// How a turn began (see `run_turns`).
enum TurnStart {
    Client(DriverInput),
    Peer(Inbound<Wire>),
    Tick,
}

/// Fault hooks for real-process tests, off unless the environment asks.
/// `PAXLOG_TEST_FSYNC_STALL_FILE=PATH` (relative to the data folder): when
/// PATH exists at an fsync, the driver reads `STALL_MS [DEAF_MS]` from it,
/// deletes it and blocks `STALL_MS` before syncing (a slow disk, without
/// signals); then, for `DEAF_MS` more, it drops every peer message, those
/// that queued during the stall included (as if cut off from the others
/// since the stall began).
struct TestHooks {
    fsync_stall_file: Option<std::path::PathBuf>,
    deaf_until: Option<Instant>,
}

impl TestHooks {
    fn from_env(data_dir: &std::path::Path) -> TestHooks {
        TestHooks {
            fsync_stall_file: std::env::var_os("PAXLOG_TEST_FSYNC_STALL_FILE")
                .map(|path| data_dir.join(path)),
            deaf_until: None,
        }
    }

    fn take_fsync_stall(&mut self) -> Option<Duration> {
        let path = self.fsync_stall_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        let _ = std::fs::remove_file(path);
        let mut numbers = text.split_whitespace().map(str::parse::<u64>);
        let stall_ms = numbers.next()?.ok()?;
        let deaf_ms = numbers.next().and_then(Result::ok).unwrap_or(0);
        tracing::warn!(stall_ms, deaf_ms, "test hook: stalling this fsync");
        let stall = Duration::from_millis(stall_ms);
        self.deaf_until = Some(Instant::now() + stall + Duration::from_millis(deaf_ms));
        Some(stall)
    }

    fn deaf_to_peers(&mut self) -> bool {
        match self.deaf_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.deaf_until = None;
                false
            }
            None => false,
        }
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: NodeConfig,
        replica: Replica,
        kv: KvStore,
        wal: Wal,
        snapshots: SnapshotStore,
        transport: TransportHandle<Wire>,
        last_snapshot_round: u64,
        metrics: Arc<Metrics>,
    ) -> Driver {
        let reproposal_interval = Duration::from_millis(2 * cfg.tick_ms * cfg.election_ticks);
        let test_hooks = TestHooks::from_env(&cfg.data_dir);
        Driver {
            reproposals: VecDeque::new(),
            reproposal_interval,
            cfg,
            replica,
            kv,
            wal,
            snapshots,
            transport,
            writes: HashMap::new(),
            write_retries: VecDeque::new(),
            reads_awaiting_index: HashMap::new(),
            reads_awaiting_apply: BTreeMap::new(),
            read_retries: VecDeque::new(),
            reads_to_retry: HashMap::new(),
            next_read_id: random_u64(),
            timeouts: BinaryHeap::new(),
            last_snapshot_round,
            incoming_snapshot: None,
            started: Instant::now(),
            ticks_done: 0,
            metrics,
            heard_chosen: 0,
            last_leader: None,
            next_slow_publish: Instant::now(),
            catch_up: None,
            test_hooks,
        }
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
        // Re-apply what the log holds beyond the snapshot.
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
            self.advance_clock();
            match first {
                TurnStart::Client(input) => {
                    if !self.handle(input)? {
                        break 'outer;
                    }
                }
                TurnStart::Peer(inbound) => self.on_peer(inbound.from, inbound.message)?,
                TurnStart::Tick => self.on_timers(),
            }
            // Take whatever else is queued into the same turn (one fsync).
            for _ in 0..MAX_INPUTS_PER_TURN {
                let mut progressed = false;
                if let Ok(input) = inputs.try_recv() {
                    progressed = true;
                    if !self.handle(input)? {
                        break 'outer;
                    }
                }
                if let Ok(inbound) = peers.try_recv() {
                    progressed = true;
                    self.on_peer(inbound.from, inbound.message)?;
                }
                if !progressed {
                    break;
                }
            }
            self.process_ready()?;
            self.publish();
        }
        self.fail_everything("the replica is shutting down");
        tracing::info!(node = self.cfg.id, "replica stopped");
        Ok(())
    }

    /// Returns false on shutdown.
    fn handle(&mut self, input: DriverInput) -> Result<bool, String> {
        match input {
            DriverInput::Write(request) => self.start_write(request),
            DriverInput::Read(request) => self.start_read(request),
            DriverInput::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    // ----- the Ready hand-off ----------------------------------------------

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
            // Chosen entries are facts (a quorum made them durable), so with
            // more than one replica they are applied and answered before
            // this turn's fsync, which covers only newer records.
            let mut apply = Some(ready.apply);
            if self.replica.config().cluster_size > 1 {
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
            // 3. A single replica's own vote is the quorum: apply only now.
            for (slot, entry) in apply.into_iter().flatten() {
                self.apply(slot, &entry);
            }
            // 4. Events.
            for event in ready.events {
                self.on_event(event);
            }
        }
        self.maybe_snapshot()?;
        Ok(())
    }

    fn apply(&mut self, slot: Slot, entry: &Entry) {
        let output = self.kv.apply(slot, entry);
        self.metrics.commits.inc();
        if let Some(id) = entry.request_id() {
            if let Some(write) = self.writes.remove(&id) {
                let _ = write.reply.send(Ok(output));
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::LeaderChanged { leader, ballot } => {
                if leader != self.last_leader {
                    self.metrics.leader_changes.inc();
                }
                let previous = self.last_leader.map(|l| l.0);
                self.last_leader = leader;
                let role = self.replica.role();
                let message = if leader == Some(NodeId(self.cfg.id)) {
                    "elected leader"
                } else if leader.is_none() {
                    "leader lost: no leader known"
                } else {
                    "leader changed"
                };
                tracing::info!(
                    node = self.cfg.id,
                    leader = leader.map(|l| l.0),
                    previous_leader = previous,
                    %ballot,
                    role = ?role,
                    current_round = self.kv.applied_upto().0,
                    "{message}"
                );
            }
            Event::ProposalDropped { id, reason } => {
                if self.writes.contains_key(&id) {
                    let delay = match reason {
                        DropReason::NotLeader | DropReason::Lost => Duration::ZERO,
                        DropReason::Overloaded => RETRY_INTERVAL,
                    };
                    self.write_retries.push_back((Instant::now() + delay, id));
                }
            }
            Event::ReadReady {
                read_id,
                read_index,
            } => {
                if let Some(read) = self.reads_awaiting_index.remove(&read_id) {
                    self.reads_awaiting_apply
                        .insert((read_index.0, read_id), read);
                }
            }
            Event::ReadFailed { read_id, .. } => {
                if let Some(read) = self.reads_awaiting_index.remove(&read_id) {
                    self.reads_to_retry.insert(read_id, read);
                    self.read_retries
                        .push_back((Instant::now() + RETRY_INTERVAL, read_id));
                }
            }
            Event::SnapshotNeeded { from, log_start } => {
                self.request_snapshot(from, log_start);
            }
        }
    }

    // ----- writes ----------------------------------------------------------

    fn start_write(&mut self, request: WriteRequest) {
        if self.writes.len() >= self.cfg.max_pending_requests {
            let _ = request.reply.send(Err(ApiError::new(
                503,
                "too many requests are waiting at this replica; retry later",
            )));
            return;
        }
        if self.writes.contains_key(&request.id) {
            let _ = request.reply.send(Err(ApiError::new(
                409,
                format!("request {} is already in flight", request.id),
            )));
            return;
        }
        // The stamp: this replica's applied round when it first took the
        // request. Any earlier execution of the same request lies at or
        // after it, so the store can tell a retry whose session expired
        // from a new request (and refuses the former: it never runs twice).
        let since = self.kv.applied_upto();
        // A retry of a request applied here already: answer from the dedup
        // table instead of taking another round.
        if let Some(output) = self.kv.precheck(request.id, since) {
            let _ = request.reply.send(Ok(output));
            return;
        }
        // A command that can fail depending on the state is checked against
        // a state that includes every write acknowledged before it arrived
        // (a linearizable barrier), so a sequential client never sees a
        // spurious error from a replica that lags.
        if request.command.depends_on_state() {
            let read_id = self.new_read_id();
            self.timeouts
                .push(Reverse((request.deadline, TimeoutKey::Read(read_id))));
            self.request_read_index(read_id, PendingRead::Write(request, since));
            return;
        }
        self.check_and_propose(request, since);
    }

    /// Refuses what cannot succeed against the current state, so a type or
    /// name error never reaches the log (it can still fail at apply time if
    /// a concurrent write changes the state in between); proposes the rest.
    fn check_and_propose(&mut self, request: WriteRequest, since: Slot) {
        if self.writes.contains_key(&request.id) {
            let _ = request.reply.send(Err(ApiError::new(
                409,
                format!("request {} is already in flight", request.id),
            )));
            return;
        }
        // Again after the barrier: an earlier attempt of this very request
        // may have been applied while we waited, and the dry run below would
        // then fail against the state it produced ("400, nothing written"
        // for a command that did execute).
        if let Some(output) = self.kv.precheck(request.id, since) {
            let _ = request.reply.send(Ok(output));
            return;
        }
        if let Err(ApplyResult::Error { kind, message }) = self.kv.check(&request.command) {
            let _ = request.reply.send(Err(ApiError::new(
                400,
                format!("{}: {message}", kind_name(&kind)),
            )));
            return;
        }
        let id = request.id;
        self.metrics.proposals.inc();
        self.writes.insert(
            id,
            PendingWrite {
                // Re-proposals reuse this payload, stamp included.
                payload: KvRequest::new(since, request.command).encode(),
                reply: request.reply,
                deadline: request.deadline,
            },
        );
        self.timeouts
            .push(Reverse((request.deadline, TimeoutKey::Write(id))));
        self.propose(id);
    }

    fn propose(&mut self, id: RequestId) {
        let Some(write) = self.writes.get(&id) else {
            return;
        };
        let proposal = Proposal {
            id,
            payload: write.payload.clone(),
        };
        match self.replica.propose(proposal) {
            Ok(_) => {
                self.reproposals
                    .push_back((Instant::now() + self.reproposal_interval, id));
            }
            Err(ProposeError::NoLeader) | Err(ProposeError::Overloaded) => {
                self.write_retries
                    .push_back((Instant::now() + RETRY_INTERVAL, id));
            }
        }
    }

    // ----- reads -----------------------------------------------------------

    fn start_read(&mut self, request: ReadRequest) {
        let needs_state = matches!(
            request.query,
            Query::Get(_) | Query::Scan { .. } | Query::Db
        );
        if !needs_state {
            let answer = self.answer(&request.query);
            let _ = request.reply.send(answer);
            return;
        }
        match request.consistency {
            Consistency::Local => {
                let answer = self.answer(&request.query);
                let _ = request.reply.send(answer);
            }
            Consistency::MinRound(round) => {
                let read_id = self.new_read_id();
                self.timeouts
                    .push(Reverse((request.deadline, TimeoutKey::Read(read_id))));
                // Round N is applied once current_round > N.
                self.reads_awaiting_apply
                    .insert((round + 1, read_id), PendingRead::Read(request));
                self.serve_applied_reads();
            }
            Consistency::Linearizable => {
                let read_id = self.new_read_id();
                self.timeouts
                    .push(Reverse((request.deadline, TimeoutKey::Read(read_id))));
                self.request_read_index(read_id, PendingRead::Read(request));
            }
        }
    }

    fn new_read_id(&mut self) -> u64 {
        self.next_read_id = self.next_read_id.wrapping_add(1);
        self.next_read_id
    }

    fn request_read_index(&mut self, read_id: u64, read: PendingRead) {
        match self.replica.read_index(read_id) {
            Ok(()) => {
                self.reads_awaiting_index.insert(read_id, read);
            }
            Err(_) => {
                self.reads_to_retry.insert(read_id, read);
                self.read_retries
                    .push_back((Instant::now() + RETRY_INTERVAL, read_id));
            }
        }
    }

    fn serve_applied_reads(&mut self) {
        let applied = self.kv.applied_upto().0;
        while let Some(entry) = self.reads_awaiting_apply.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            match entry.remove() {
                PendingRead::Read(request) => {
                    let answer = self.answer(&request.query);
                    let _ = request.reply.send(answer);
                }
                PendingRead::Write(request, since) => self.check_and_propose(request, since),
            }
        }
    }

    fn answer(&self, query: &Query) -> Result<Answer, ApiError> {
        let current_round = self.kv.applied_upto().0;
        Ok(match query {
            Query::Get(key) => Answer::Value {
                value: self.kv.get(key).cloned(),
                current_round,
            },
            Query::Scan { prefix, limit } => Answer::Items {
                items: self.kv.scan(prefix, *limit),
                current_round,
            },
            Query::Db => Answer::Db {
                current_round,
                db: self.kv.db_json(),
            },
            Query::Current => Answer::Current(current_round),
            Query::Fetch(round) => Answer::Fetched(self.fetch(*round)),
            Query::Status => Answer::Status(Box::new(self.status())),
            Query::Log { from, limit } => Answer::Log(self.log_page(*from, *limit)),
        })
    }

    fn log_page(&self, from: Option<u64>, limit: usize) -> LogPage {
        let limit = limit.clamp(1, MAX_LOG_PAGE) as u64;
        let chosen = self.replica.chosen_upto().0;
        let log_start = self.replica.log_start().0;
        let start = from
            .unwrap_or_else(|| chosen.saturating_sub(limit))
            .max(log_start);
        let end = chosen.min(start.saturating_add(limit));
        let entries = (start..end)
            .filter_map(|round| {
                let entry = self.replica.chosen_entry(Slot(round))?;
                Some(LogEntry {
                    round,
                    command: describe_entry(entry),
                })
            })
            .collect();
        LogPage {
            log_start,
            chosen_round: chosen,
            current_round: self.kv.applied_upto().0,
            entries,
        }
    }

    fn fetch(&self, round: u64) -> Fetched {
        let slot = Slot(round);
        if slot < self.replica.log_start() {
            return Fetched::Compacted {
                log_start: self.replica.log_start().0,
            };
        }
        match self.replica.chosen_entry(slot) {
            Some(entry) => Fetched::Value {
                round_id: round,
                value: describe_entry(entry),
            },
            None => Fetched::NotYet {
                current_round: self.kv.applied_upto().0,
            },
        }
    }

    fn status(&self) -> NodeStatus {
        let report: StatusReport = self.replica.status();
        let tick_ms = self.cfg.tick_ms;
        let transport: HashMap<u32, PeerStatus> = self
            .transport
            .peer_status()
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let peers = report
            .peers
            .iter()
            .map(|p| {
                let t = transport.get(&p.id.0);
                PeerInfo {
                    id: p.id.0,
                    address: self
                        .cfg
                        .peers
                        .get(p.id.0 as usize)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    reachable: t.is_some_and(|t| t.connected),
                    last_heard_ms_ago: p.last_heard_ticks_ago.map(|t| t * tick_ms),
                    chosen_round: p.chosen_upto.0,
                    last_error: t
                        .filter(|t| !t.connected)
                        .and_then(|t| t.last_error.clone()),
                }
            })
            .collect();
        NodeStatus {
            id: self.cfg.id,
            role: report.role,
            leader: report.leader.map(|l| l.0),
            promised_ballot: report.promised.to_string(),
            leader_ballot: report.leader_ballot.map(|b| b.to_string()),
            current_round: self.kv.applied_upto().0,
            applied_round: report.applied_upto.0,
            chosen_round: report.chosen_upto.0,
            log_start: report.log_start.0,
            next_round: report.next_slot.map(|s| s.0),
            pending_writes: self.writes.len(),
            last_snapshot_round: self.last_snapshot_round,
            peers,
        }
    }

    // ----- observability ---------------------------------------------------

    /// Publishes this turn's state to the metrics and health atomics: a few
    /// atomic stores per turn, plus peer reachability every 100 ms.
    fn publish(&mut self) {
        let m = &self.metrics;
        let applied = self.kv.applied_upto().0;
        let chosen = self.replica.chosen_upto().0;
        let role = self.replica.role();
        let leader = self.replica.leader();
        m.applied_round.set(gauge_value(applied));
        m.chosen_round.set(gauge_value(chosen));
        m.is_leader.set(i64::from(role == Role::Leader));
        m.promised_ballot
            .set(gauge_value(self.replica.promised().counter));
        let known_chosen = chosen.max(self.heard_chosen);
        m.published
            .set_state(role, leader.map(|l| l.0), applied, chosen, known_chosen);
        self.track_catch_up(applied, known_chosen, leader);
        let now = Instant::now();
        if now < self.next_slow_publish {
            return;
        }
        self.next_slow_publish = now + SLOW_PUBLISH_INTERVAL;
        for peer in self.transport.peer_status() {
            self.metrics.set_peer_reachable(peer.id, peer.connected);
        }
    }

    /// A peer told of a higher chosen round: if we are far behind, a
    /// catch-up starts (logged once it ends).
    fn note_lag(&mut self, from: u32) {
        if self.catch_up.is_some() {
            return;
        }
        let applied = self.kv.applied_upto().0;
        let lag = self.heard_chosen.saturating_sub(applied);
        if lag > CATCH_UP_LAG {
            tracing::debug!(
                node = self.cfg.id,
                current_round = applied,
                known_chosen_round = self.heard_chosen,
                peer = from,
                "catching up: {lag} rounds behind"
            );
            self.catch_up = Some(CatchUp {
                from_round: applied,
                started: Instant::now(),
                snapshot_installed: false,
            });
        }
    }

    /// One comparison per turn; logs once when a catch-up ends.
    fn track_catch_up(&mut self, applied: u64, known_chosen: u64, leader: Option<NodeId>) {
        let lag = known_chosen.saturating_sub(applied);
        match &self.catch_up {
            Some(catch_up) if lag <= CATCH_UP_LAG / 8 => {
                let rounds = applied.saturating_sub(catch_up.from_round);
                tracing::info!(
                    node = self.cfg.id,
                    rounds,
                    from_round = catch_up.from_round,
                    to_round = applied,
                    peer = leader.map(|l| l.0),
                    via_snapshot = catch_up.snapshot_installed,
                    ms = catch_up.started.elapsed().as_millis() as u64,
                    "caught up {rounds} rounds from peer"
                );
                self.catch_up = None;
            }
            _ => {}
        }
    }

    // ----- time ------------------------------------------------------------

    /// Brings the core's clock up to the monotonic clock. It follows real
    /// time, not the number of timer wake-ups: after a stall the replica
    /// catches up, so its timeouts never run slow. A long stall is capped:
    /// by then every lease and election timer has expired.
    fn advance_clock(&mut self) {
        let due = (self.started.elapsed().as_millis() as u64) / self.cfg.tick_ms.max(1);
        let behind = due.saturating_sub(self.ticks_done);
        let cap = 4 * self.cfg.election_ticks.max(1);
        for _ in 0..behind.min(cap) {
            self.replica.tick();
        }
        self.ticks_done = due.max(self.ticks_done);
    }

    /// Retries, re-proposals, deadlines and snapshot-transfer stalls.
    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.write_retries.front() {
            if at > now {
                break;
            }
            self.write_retries.pop_front();
            self.propose(id);
        }
        while let Some(&(at, id)) = self.reproposals.front() {
            if at > now {
                break;
            }
            self.reproposals.pop_front();
            if self.writes.contains_key(&id) {
                self.propose(id);
            }
        }
        while let Some(&(at, read_id)) = self.read_retries.front() {
            if at > now {
                break;
            }
            self.read_retries.pop_front();
            if let Some(read) = self.reads_to_retry.remove(&read_id) {
                self.request_read_index(read_id, read);
            }
        }
        while let Some(Reverse((at, key))) = self.timeouts.peek().copied() {
            if at > now {
                break;
            }
            self.timeouts.pop();
            self.expire(key);
        }
        self.check_snapshot_transfer(now);
    }

    fn expire(&mut self, key: TimeoutKey) {
        let current_round = self.kv.applied_upto().0;
        match key {
            TimeoutKey::Write(id) => {
                if let Some(write) = self.writes.get(&id) {
                    if write.deadline > Instant::now() {
                        return;
                    }
                }
                if let Some(write) = self.writes.remove(&id) {
                    let reason = if self.replica.leader().is_none() {
                        "no leader: a majority of replicas is not reachable"
                    } else {
                        "timed out waiting for consensus"
                    };
                    let _ = write.reply.send(Err(ApiError::new(
                        503,
                        format!(
                            "{reason}; the command may still be applied later. A retry with the same \
                             x-paxlog-client-id and x-paxlog-request-seq never runs it twice: it is \
                             answered with the first execution's outcome, or 409 request_expired if \
                             this client's session has expired (request {id})"
                        ),
                    )));
                }
            }
            TimeoutKey::Read(read_id) => {
                let read = self
                    .reads_awaiting_index
                    .remove(&read_id)
                    .or_else(|| self.reads_to_retry.remove(&read_id))
                    .or_else(|| {
                        let key = self
                            .reads_awaiting_apply
                            .keys()
                            .find(|(_, r)| *r == read_id)
                            .copied()?;
                        self.reads_awaiting_apply.remove(&key)
                    });
                match read {
                    Some(PendingRead::Read(request)) => {
                        let message = match request.consistency {
                            Consistency::MinRound(round) => format!(
                                "this replica has not applied round {round} yet (current round {current_round}); \
                                 retry later or ask another replica"
                            ),
                            _ => "could not confirm a linearizable read: no leader reachable with a quorum"
                                .to_string(),
                        };
                        let _ = request.reply.send(Err(ApiError {
                            status: 503,
                            message,
                            current_round: Some(current_round),
                        }));
                    }
                    Some(PendingRead::Write(request, _)) => {
                        let _ = request.reply.send(Err(ApiError::new(
                            503,
                            "no leader reachable with a quorum: the command was not written",
                        )));
                    }
                    None => {}
                }
            }
        }
    }

    fn fail_everything(&mut self, reason: &str) {
        for (_, write) in self.writes.drain() {
            let _ = write.reply.send(Err(ApiError::new(503, reason)));
        }
        let reads = self
            .reads_awaiting_index
            .drain()
            .map(|(_, r)| r)
            .chain(self.reads_to_retry.drain().map(|(_, r)| r))
            .chain(std::mem::take(&mut self.reads_awaiting_apply).into_values())
            .collect::<Vec<_>>();
        for read in reads {
            match read {
                PendingRead::Read(request) => {
                    let _ = request.reply.send(Err(ApiError::new(503, reason)));
                }
                PendingRead::Write(request, _) => {
                    let _ = request.reply.send(Err(ApiError::new(503, reason)));
                }
            }
        }
    }

    // ----- snapshots -------------------------------------------------------

    fn maybe_snapshot(&mut self) -> Result<(), String> {
        let applied = self.kv.applied_upto().0;
        if applied < self.last_snapshot_round + self.cfg.snapshot_every_rounds {
            return Ok(());
        }
        let started = Instant::now();
        let image = self.kv.snapshot();
        self.snapshots
            .save(Slot(applied), &image)
            .map_err(|e| format!("snapshot failed: {e}"))?;
        // Read back and verified before anything older goes, and before
        // the log it replaces is dropped.
        self.snapshots
            .retire_older(Slot(applied))
            .map_err(|e| format!("snapshot {applied} failed read-back verification: {e}"))?;
        self.replica.compact(Slot(applied));
        let removed = self.compact_wal_to_oldest_snapshot()?;
        self.last_snapshot_round = applied;
        let elapsed = started.elapsed();
        self.metrics.snapshots.inc();
        self.metrics.snapshot_seconds.observe(elapsed.as_secs_f64());
        self.metrics
            .snapshot_bytes
            .set(gauge_value(image.len() as u64));
        tracing::info!(
            node = self.cfg.id,
            round = applied,
            bytes = image.len(),
            segments_removed = removed.len(),
            ms = elapsed.as_millis() as u64,
            "snapshot taken, log compacted"
        );
        Ok(())
    }

    /// Drops WAL segments below the OLDEST snapshot kept, not the newest:
    /// if the newest turns out unreadable at a restart, recovery falls back
    /// to the older one and replays the log from there, with every promise
    /// and accept this replica made since still on disk (nothing forgotten).
    fn compact_wal_to_oldest_snapshot(&mut self) -> Result<Vec<std::path::PathBuf>, String> {
        let oldest = self
            .snapshots
            .list()
            .map_err(|e| format!("cannot list snapshots: {e}"))?
            .first()
            .map(|(slot, _)| *slot);
        match oldest {
            Some(slot) => self
                .wal
                .compact(slot)
                .map_err(|e| format!("log compaction failed: {e}")),
            None => Ok(Vec::new()),
        }
    }

    fn request_snapshot(&mut self, from: NodeId, log_start: Slot) {
        if self.incoming_snapshot.is_some() {
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            from = from.0,
            log_start = log_start.0,
            "fetching a snapshot: the rounds we need were compacted"
        );
        self.incoming_snapshot = Some(IncomingSnapshot {
            from,
            log_start: None,
            receiver: None,
            last_progress: Instant::now(),
        });
        self.transport.send(
            from.0,
            Wire::SnapshotRequest {
                log_start: None,
                offset: 0,
            },
        );
    }

    fn check_snapshot_transfer(&mut self, now: Instant) {
        let Some(incoming) = &mut self.incoming_snapshot else {
            return;
        };
        if now.duration_since(incoming.last_progress) < SNAPSHOT_STALL {
            return;
        }
        // Resume where we are (or give up if the peer has nothing newer).
        incoming.last_progress = now;
        let offset = incoming.receiver.as_ref().map_or(0, |r| r.received());
        let (from, log_start) = (incoming.from, incoming.log_start);
        self.transport
            .send(from.0, Wire::SnapshotRequest { log_start, offset });
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
                    match self
                        .snapshots
                        .read_chunk(slot, offset, SNAPSHOT_CHUNK_BYTES)
                    {
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

    /// Drops the snapshot transfer in progress and its partial file.
    fn abandon_snapshot_transfer(&mut self) {
        if let Some(incoming) = self.incoming_snapshot.take() {
            if let Some(receiver) = incoming.receiver {
                let _ = receiver.abort();
            }
        }
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

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot_chunk(
        &mut self,
        from: u32,
        log_start: Slot,
        offset: u64,
        data: Vec<u8>,
        total_len: u64,
        total_crc: u32,
        chunk_crc: u32,
    ) -> Result<(), String> {
        let Some(incoming) = &mut self.incoming_snapshot else {
            return Ok(());
        };
        if incoming.from.0 != from {
            return Ok(());
        }
        if log_start <= self.kv.applied_upto() {
            // Nothing newer than what we have: stop.
            self.abandon_snapshot_transfer();
            return Ok(());
        }
        if incoming.log_start != Some(log_start) || incoming.receiver.is_none() {
            let receiver = match self.snapshots.receiver(log_start, total_len, total_crc) {
                Ok(receiver) => receiver,
                Err(e) => {
                    // E.g. a size over max_snapshot_bytes: refuse this
                    // transfer, keep serving (a later one may fit).
                    tracing::warn!(node = self.cfg.id, peer = from, error = %e, "cannot receive snapshot");
                    self.abandon_snapshot_transfer();
                    return Ok(());
                }
            };
            incoming.log_start = Some(log_start);
            incoming.receiver = Some(receiver);
        }
        incoming.last_progress = Instant::now();
        let Some(receiver) = incoming.receiver.as_mut() else {
            return Ok(());
        };
        // A chunk out of order (a resend) is skipped: we ask again below.
        if offset == receiver.received() {
            if let Err(e) = receiver.write_chunk(offset, &data, chunk_crc) {
                tracing::warn!(node = self.cfg.id, peer = from, error = %e, "bad snapshot chunk; restarting transfer");
                self.abandon_snapshot_transfer();
                return Ok(());
            }
        }
        if !receiver.is_complete() {
            let next = receiver.received();
            self.transport.send(
                from,
                Wire::SnapshotRequest {
                    log_start: Some(log_start),
                    offset: next,
                },
            );
            return Ok(());
        }
        let Some(incoming) = self.incoming_snapshot.take() else {
            return Ok(());
        };
        let Some(receiver) = incoming.receiver else {
            return Ok(());
        };
        let (slot, path) = match receiver.finalize() {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(node = self.cfg.id, error = %e, "received snapshot failed verification");
                return Ok(());
            }
        };
        let image = self
            .snapshots
            .load(slot)
            .map_err(|e| format!("cannot read received snapshot {}: {e}", path.display()))?;
        let mut restored = KvStore::new(self.kv.options());
        let refused = match restored.restore(&image) {
            Err(e) => Some(format!("it does not restore: {e}")),
            Ok(()) if restored.applied_upto() != slot => {
                Some("it covers another round than announced".to_string())
            }
            Ok(()) => None,
        };
        if let Some(reason) = refused {
            tracing::warn!(
                node = self.cfg.id,
                round = slot.0,
                "received snapshot refused: {reason}"
            );
            // Not left as the newest snapshot for a restart to trip on.
            if let Err(e) = self.snapshots.discard(slot) {
                tracing::warn!(node = self.cfg.id, error = %e, "cannot delete the refused snapshot");
            }
            return Ok(());
        }
        let previous_round = self.kv.applied_upto().0;
        // The core first: it refuses a snapshot that is not ahead of what it
        // has handed out, and drops the applies the snapshot covers, so the
        // store is swapped only when the two agree.
        if !self.replica.install_snapshot(slot) {
            tracing::info!(
                node = self.cfg.id,
                round = slot.0,
                "received snapshot is not ahead of this replica: not installed"
            );
            return Ok(());
        }
        self.kv = restored;
        // Restored: now the older snapshots may go (keeping one fallback).
        if let Err(e) = self.snapshots.retire_older(slot) {
            tracing::warn!(node = self.cfg.id, error = %e, "cannot retire older snapshots");
        }
        self.compact_wal_to_oldest_snapshot()?;
        self.last_snapshot_round = slot.0;
        self.metrics.snapshot_installs.inc();
        self.metrics
            .snapshot_bytes
            .set(gauge_value(image.len() as u64));
        if let Some(catch_up) = &mut self.catch_up {
            catch_up.snapshot_installed = true;
        }
        let rounds = slot.0.saturating_sub(previous_round);
        tracing::info!(
            node = self.cfg.id,
            round = slot.0,
            from,
            rounds,
            bytes = image.len(),
            "installed snapshot from peer: skipped {rounds} rounds"
        );
        Ok(())
    }

    /// Uptime, for status pages.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A random 64-bit value from the OS-seeded hasher keys. Read ids start
/// here, so a leader's reply meant for this replica's previous incarnation
/// (still in flight after a restart) matches no read of this one.
fn random_u64() -> u64 {
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

/// A chosen entry as text: the command, or `None` for a no-op.
fn describe_entry(entry: &Entry) -> Option<String> {
    match entry {
        Entry::Noop => None,
        Entry::Command { payload, .. } => Some(match KvCommand::decode(payload) {
            Ok(command) => command.describe(),
            Err(e) => format!("<undecodable command: {e}>"),
        }),
    }
}

pub fn kind_name(kind: &paxlog_kv::ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}
