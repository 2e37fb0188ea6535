//! A deterministic cluster simulator for paxlog.
//!
//! It runs whole clusters of the real replica runtime (`paxlog_server`'s
//! [`Driver`], with the real [`Replica`] and [`KvStore`] inside) over
//! simulated I/O: a seeded network (delay, drop, duplicate, reorder,
//! partitions, late copies from a previous incarnation), a simulated disk
//! (unsynced writes are lost; a crash can tear a batch; fsync can fail),
//! per-replica clocks (skew, stalls), and clients that retry. Checkers named after the protocol's properties run as
//! it goes and at the end. One seed replays one run exactly.

mod checker;
mod disk;
mod io;
mod leases;
mod network;
mod workload;

pub use checker::Checker;
use io::{
    lock, CrashKind, NodeIo, SharedIo, SimClock, SimLog, SimNetwork, SimSnapshots, SyncFaults,
};
use network::{Network, Partition};
use paxlog_core::rng::SplitMix64;
use paxlog_core::{
    Bugs, Config, Entry, Message, NodeId, PersistRecord, Replica, RequestId, Slot, StateMachine,
};
use paxlog_kv::{ApplyOutput, ApplyResult, ErrorKind, KvCommand, KvOptions, KvStore};
use paxlog_server::driver::{
    Consistency, Driver, DriverBugs, DriverError, DriverInput, DriverIo, KeyValue, LeaseAction,
    Query, ReadRequest, WriteRequest,
};
use paxlog_server::metrics::Metrics;
use paxlog_server::wire::Wire;
use paxlog_server::NodeConfig;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use workload::{digest, key_of, new_store, COUNTERS};

/// Fault rates for one run. Drawn per seed (swarm testing): some seeds are
/// calm, some brutal.
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub max_delay_ticks: u64,
    /// Chance per tick (per 100k) that a partition starts.
    pub partition_per_100k: u64,
    /// Chance per tick (per 100k) that a replica crashes.
    pub crash_per_100k: u64,
    /// Chance (per mille) that a crash happens in the middle of a write.
    pub torn_write_per_mille: u64,
    /// A replica snapshots and compacts every this many applied slots.
    pub snapshot_every_slots: u64,
    /// Per-mille of client operations that are linearizable reads.
    pub read_per_mille: u64,
    /// Each replica's clock rate error, per mille (negative: slow, skips
    /// ticks; positive: fast, double ticks). Within the lease's drift bound.
    pub max_clock_skew_per_mille: u64,
    /// Chance (per mille) that a replica dies in the turn that made it
    /// leader: its early messages are out, its records are not synced, and
    /// it restarts within a few ticks.
    pub crash_after_win_per_mille: u64,
    /// Chance (per mille) that a crash also loses the replica's disk, or
    /// the synced tail of its log (half each), when no other replica is
    /// recovering: it restarts marked recovering.
    pub disk_loss_per_mille: u64,
    /// Chance per tick (per 100k) that a replica's driver stalls for longer
    /// than the election timeout while its inputs queue.
    pub stall_per_100k: u64,
    /// Chance per sync (per 10k) that fsync fails: the replica stops.
    pub fsync_error_per_10k: u64,
    /// Per-mille of the puts a client turns into `del KEY` (state
    /// dependent: a retry of one that already ran is refused by the dry
    /// run unless the driver finds it in the session table first).
    pub delete_per_mille: u64,
    /// Per replica (by index), a snapshot interval of its own that replaces
    /// `snapshot_every_slots` when set: replicas compact at different
    /// rounds, so a lagging one can learn the same rounds from a peer's log
    /// and from another's snapshot at once.
    pub snapshot_every_slots_by_node: Option<Vec<u64>>,
    /// Per-mille of write answers lost on the way to the client (a dropped
    /// connection): it retries at once, at a replica of its choice.
    pub lost_reply_per_mille: u64,
    /// Per replica (by index), when set: its driver runs a turn only every
    /// this many ticks (a slow disk or a busy machine: each group commit
    /// takes longer, so more inputs queue and share one turn).
    pub turn_every_ticks_by_node: Option<Vec<u64>>,
    /// The transport's bounded send queue, per directed link: a message
    /// sent while this many are in flight on its link is dropped (0: no
    /// bound).
    pub link_queue_cap: usize,
    /// Chance per tick (per 100k) that one link's connection fails: every
    /// message in flight on it is lost at once (a whole written batch) and
    /// the link drops what is sent until it reconnects.
    pub connection_reset_per_100k: u64,
    /// The transport's frame limit: a message that encodes larger is
    /// dropped at the sender, as `paxlog-transport` does (0: the
    /// production limit, 32 MiB).
    pub max_frame_bytes: usize,
    /// Chance per tick (per 100k) that one replica's monotonic clock jumps
    /// forward (a suspended VM, a migrated container): beyond any drift
    /// bound, so seeds with jumps run without leader leases.
    pub clock_jump_per_100k: u64,
}

impl Faults {
    pub fn calm() -> Faults {
        Faults {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            max_delay_ticks: 1,
            partition_per_100k: 0,
            crash_per_100k: 0,
            torn_write_per_mille: 0,
            snapshot_every_slots: 1_000_000,
            read_per_mille: 0,
            max_clock_skew_per_mille: 0,
            crash_after_win_per_mille: 0,
            disk_loss_per_mille: 0,
            stall_per_100k: 0,
            fsync_error_per_10k: 0,
            delete_per_mille: 0,
            snapshot_every_slots_by_node: None,
            lost_reply_per_mille: 0,
            turn_every_ticks_by_node: None,
            link_queue_cap: 0,
            connection_reset_per_100k: 0,
            max_frame_bytes: 0,
            clock_jump_per_100k: 0,
        }
    }

    pub fn draw(rng: &mut SplitMix64) -> Faults {
        let pick = |rng: &mut SplitMix64, options: &[u64]| {
            options[rng.range(0, options.len() as u64) as usize]
        };
        Faults {
            drop_per_mille: pick(rng, &[0, 0, 5, 20, 100, 250]),
            duplicate_per_mille: pick(rng, &[0, 0, 10, 50, 200]),
            max_delay_ticks: pick(rng, &[1, 2, 5, 10, 30]),
            partition_per_100k: pick(rng, &[0, 50, 200, 1000]),
            crash_per_100k: pick(rng, &[0, 50, 200, 600]),
            torn_write_per_mille: pick(rng, &[0, 100, 500]),
            snapshot_every_slots: pick(rng, &[10, 25, 100, 1_000_000]),
            read_per_mille: pick(rng, &[0, 200, 500]),
            max_clock_skew_per_mille: pick(rng, &[0, 10, 50]),
            crash_after_win_per_mille: pick(rng, &[0, 0, 100, 500]),
            // Drawn in `from_seed` from a stream of its own (so adding it
            // changed no other seed's run).
            disk_loss_per_mille: 0,
            stall_per_100k: 0,
            fsync_error_per_10k: 0,
            delete_per_mille: 0,
            snapshot_every_slots_by_node: None,
            lost_reply_per_mille: 0,
            turn_every_ticks_by_node: None,
            link_queue_cap: 0,
            connection_reset_per_100k: 0,
            max_frame_bytes: 0,
            clock_jump_per_100k: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u32,
    pub clients: usize,
    /// Ticks with faults and new client commands.
    pub fault_ticks: u64,
    /// After faults stop, everything must converge within this many ticks.
    pub liveness_ticks: u64,
    pub faults: Faults,
    /// The store's options, identical on every replica of the run.
    pub kv: KvOptions,
    /// Chance (per mille) that a client, once created, waits several client
    /// timeouts before retrying a request it got no answer for (instead of
    /// retrying at once): its retry then meets a log, and sessions, that
    /// moved on long ago.
    pub slow_client_per_mille: u64,
    pub bugs: Bugs,
    /// Simulator-level bug: a restarted replica forgets its promise.
    pub forget_promise_on_restart: bool,
    /// Simulator-level bug: a restarted replica loses its whole log.
    pub lose_log_on_restart: bool,
    /// Store-level bug: a client without a session always runs, whatever its
    /// request's stamp (the table before stamps existed).
    pub ignore_request_stamps: bool,
    /// Simulator-level bug: the first turn after a stall does not bring
    /// the driver's clock up to date (`begin_turn` skipped), so a lease
    /// that ran out during the stall still looks valid.
    pub skip_catch_up_after_stall: bool,
    /// Driver-level planted bugs (`Driver::set_test_bugs`).
    pub driver_bugs: DriverBugs,
    /// Production timing and window (election timeout 50 ticks, heartbeat
    /// 5, 512 slots in flight, 1024 entries per message) instead of the
    /// small ones that make a run busy.
    pub production_timing: bool,
    /// The 3- or 5-replica size the seed drew before any override: the
    /// planted-bug seeds were found on those.
    pub nodes_drawn: u32,
    /// Replicas started empty beside the cluster, not members: membership
    /// changes add them (as learners first), promote, demote and remove
    /// replicas. Ids are never reused: a removed replica is not added again.
    pub spares: u32,
    /// Chance per tick (per 100k) that the operator asks the leader for a
    /// membership change (0: the membership never changes).
    pub membership_change_per_100k: u64,
    /// A client keeps leases alive, then lets them go; the never-early
    /// checker judges every expiry (`paxlog-sim --leases`). The replicas'
    /// clocks then do not jump (outside the drift bound a lease assumes).
    pub leases: bool,
}

impl SimOptions {
    /// The options a seed stands for: cluster size and faults drawn from it.
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_FA17);
        let nodes = if rng.chance(1, 3) { 5 } else { 3 };
        let clients = rng.range(1, 6) as usize;
        let faults = Faults::draw(&mut rng);
        let (kv, clients) = workload::draw_kv_options(&mut rng, clients);
        let slow_client_per_mille = [0, 0, 200, 500][rng.range(0, 4) as usize];
        let mut faults = faults;
        let mut disk_rng = SplitMix64::new(seed ^ 0xD15C_0055);
        faults.disk_loss_per_mille = [0, 0, 100, 300][disk_rng.range(0, 4) as usize];
        let mut runtime_rng = SplitMix64::new(seed ^ 0x57A1_10F5);
        faults.stall_per_100k = [0, 0, 100, 400][runtime_rng.range(0, 4) as usize];
        faults.fsync_error_per_10k = [0, 0, 5, 20][runtime_rng.range(0, 4) as usize];
        // Deletes: a stream of their own (added later; no other draw moved).
        let mut delete_rng = SplitMix64::new(seed ^ 0xDE1E_7E5E);
        faults.delete_per_mille = [0, 0, 100, 300][delete_rng.range(0, 4) as usize];
        faults.lost_reply_per_mille = [0, 0, 20, 100][delete_rng.range(0, 4) as usize];
        let mut turn_rng = SplitMix64::new(seed ^ 0x7E42_0B47);
        if turn_rng.chance(1, 4) {
            faults.turn_every_ticks_by_node = Some(
                (0..MAX_NODES)
                    .map(|_| [1, 1, 2, 3, 5][turn_rng.range(0, 5) as usize])
                    .collect(),
            );
        }
        // Also 4 replicas, 1 and 2 replicas, and production timing, each on
        // a stream of its own (no other draw moved).
        let nodes_drawn = nodes;
        let mut size_rng = SplitMix64::new(seed ^ 0x512E_C0DE);
        let nodes = if size_rng.chance(1, 4) { 4 } else { nodes };
        let mut small_rng = SplitMix64::new(seed ^ 0x0005_3A11);
        let nodes = if nodes != 4 && small_rng.chance(1, 8) {
            [1, 2][small_rng.range(0, 2) as usize]
        } else {
            nodes
        };
        let mut timing_rng = SplitMix64::new(seed ^ 0x713E_0A11);
        let production_timing = timing_rng.chance(1, 5);
        // The transport's load-driven drops and clock jumps: a stream of
        // their own (no other draw moved).
        let mut load_rng = SplitMix64::new(seed ^ 0x10AD_D209);
        faults.link_queue_cap = [0, 0, 8, 64][load_rng.range(0, 4) as usize];
        faults.connection_reset_per_100k = [0, 0, 100, 500][load_rng.range(0, 4) as usize];
        faults.max_frame_bytes = [0, 0, 0, 512, 2048][load_rng.range(0, 5) as usize];
        faults.clock_jump_per_100k = [0, 0, 0, 100, 400][load_rng.range(0, 5) as usize];
        // Membership changes: a stream of their own (no other draw moved).
        let mut member_rng = SplitMix64::new(seed ^ 0x3E3B_E125);
        let (spares, membership_change_per_100k) = if member_rng.chance(1, 4) {
            (
                member_rng.range(1, 3) as u32,
                [300, 1000][member_rng.range(0, 2) as usize],
            )
        } else {
            (0, 0)
        };
        let mut snapshot_rng = SplitMix64::new(seed ^ 0x5AA9_5407);
        if snapshot_rng.chance(1, 3) {
            faults.snapshot_every_slots_by_node = Some(
                (0..MAX_NODES)
                    .map(|_| [5, 10, 25, 100, 1_000_000][snapshot_rng.range(0, 5) as usize])
                    .collect(),
            );
        }
        SimOptions {
            seed,
            nodes,
            clients,
            fault_ticks: 1500,
            liveness_ticks: 4000,
            faults,
            kv,
            slow_client_per_mille,
            bugs: Bugs::default(),
            forget_promise_on_restart: false,
            lose_log_on_restart: false,
            ignore_request_stamps: false,
            production_timing,
            nodes_drawn,
            skip_catch_up_after_stall: false,
            driver_bugs: DriverBugs::default(),
            spares,
            membership_change_per_100k,
            leases: false,
        }
    }

    /// The same seed with a lease keeper (see `leases`).
    pub fn with_leases(mut self, leases: bool) -> SimOptions {
        self.leases = leases;
        if leases {
            self.faults.clock_jump_per_100k = 0;
        }
        self
    }

    /// Every replica the run starts: the cluster and the spares.
    pub fn total_nodes(&self) -> u32 {
        self.nodes + self.spares
    }
}

#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    pub dropped: u64,
    pub duplicated: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub torn_writes: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub crashes_after_win: u64,
    pub disks_lost: u64,
    pub synced_tails_cut: u64,
    pub recoveries: u64,
    pub stalls: u64,
    pub fsync_errors: u64,
    /// Late copies of messages from or to a previous incarnation.
    pub stale_deliveries: u64,
    /// Dropped because the link's send queue was full.
    pub queue_full_drops: u64,
    /// Connections that failed, and the messages lost with them.
    pub connection_resets: u64,
    pub reset_drops: u64,
    /// Dropped at the sender for encoding over the frame limit.
    pub oversized_drops: u64,
    pub clock_jumps: u64,
    /// Membership changes the leader accepted to place, and the epoch the
    /// run ended at (the changes chosen).
    pub membership_changes_placed: u64,
    pub membership_epoch: u64,
    /// With a lease keeper: keep-alives answered, and expiries it checked
    /// against the last of them.
    pub lease_keep_alives: u64,
    pub lease_expiries_checked: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub nodes: u32,
    pub ticks: u64,
    pub steps: u64,
    /// Requests acknowledged to their client as executed.
    pub committed: u64,
    pub slots: u64,
    pub leader_changes: u64,
    pub reads: u64,
    /// `request_expired` answers clients received (each then moved on to a
    /// new client id).
    pub request_expired: u64,
    /// Client sessions the store expired (counted once per slot).
    pub sessions_expired: u64,
    /// First requests re-run after their session expired, retried at a
    /// replica that stamped them afresh (the documented residual case).
    pub residual_reruns: u64,
    pub faults: FaultCounts,
    pub violations: Vec<String>,
    /// The run had a lease keeper (`--leases`).
    pub leases: bool,
}

impl SimReport {
    pub fn replay_command(&self) -> String {
        let leases = if self.leases { " --leases" } else { "" };
        format!(
            "cargo run --release -p paxlog-sim -- --seed {}{leases}",
            self.seed
        )
    }
}

struct SimNode {
    /// The disk, the outbox and the clock: shared with the driver's I/O.
    io: SharedIo,
    /// The real replica runtime, while it is up.
    driver: Option<Driver>,
    /// The chosen log replayed into a store of our own: every slot the
    /// driver applies is checked against it (and gives its output).
    shadow: KvStore,
    down_until: u64,
    /// The driver does not run before this tick (its inputs queue).
    stalled_until: u64,
    /// The next turn is the first after a stall.
    resumed: bool,
    incarnation: u64,
    /// The highest promise this replica has reported in memory since boot.
    last_promised_seen: paxlog_core::Ballot,
    was_leader: bool,
    /// Clock rate error in per mille (see `Faults::max_clock_skew_per_mille`).
    clock_skew_per_mille: i64,
    client_inbox: VecDeque<DriverInput>,
    peer_inbox: VecDeque<(u32, Wire)>,
}

type WriteReply = oneshot::Receiver<Result<ApplyOutput, DriverError>>;
type ReadReply = oneshot::Receiver<Result<KeyValue, DriverError>>;

enum ClientState {
    Idle {
        next_tick: u64,
    },
    Waiting {
        node: NodeId,
        deadline_tick: u64,
        reply: WriteReply,
        /// Where the request had run (anywhere) when this attempt was
        /// sent: the replica's barrier covers that slot, so it must answer
        /// from the session table, not refuse it.
        ran_before: Option<Slot>,
    },
    /// A linearizable read of `key`: it must see the last write to it
    /// acknowledged before it began (`floor`).
    Reading {
        node: NodeId,
        key: &'static str,
        floor: Option<Slot>,
        deadline_tick: u64,
        reply: ReadReply,
    },
}

/// A request a client works on until it is answered.
struct ClientRequest {
    id: RequestId,
    command: KvCommand,
    issued: bool,
}

struct SimClient {
    client_id: u64,
    seq: u64,
    current: Option<ClientRequest>,
    state: ClientState,
    /// Waits several client timeouts before retrying (see
    /// `SimOptions::slow_client_per_mille`).
    slow: bool,
}

/// What an answer tells a client about its request.
enum Answer {
    /// It ran, at this slot: applied there, or a retry answered with the
    /// slot where it first ran.
    Executed(Slot),
    /// Not executed now; whether an earlier attempt ran cannot be told any
    /// more. The client gives the request up and continues under a new
    /// client id, as the error tells a real client to.
    Expired,
    /// Anything else (a `stale` refusal): wrong, since a client sends its
    /// next seq only once this one was answered.
    Wrong,
}

impl Answer {
    fn of(output: &ApplyOutput) -> Answer {
        match (output.duplicate, output.original_slot) {
            (false, _) => Answer::Executed(output.slot),
            (true, Some(original)) => Answer::Executed(original),
            (true, None) if output.result.error_kind() == Some(ErrorKind::RequestExpired) => {
                Answer::Expired
            }
            (true, None) => Answer::Wrong,
        }
    }
}

pub struct Simulation {
    options: SimOptions,
    rng: SplitMix64,
    /// The lease keeper (`SimOptions::leases`).
    lease_keeper: Option<leases::LeaseKeeper>,
    /// Workload draws added later (deletes), on a stream of their own.
    workload_rng: SplitMix64,
    now_tick: u64,
    nodes: Vec<SimNode>,
    network: Network,
    clients: Vec<SimClient>,
    checker: Checker,
    faults: FaultCounts,
    steps: u64,
    leader_changes: u64,
    partition_until: u64,
    reads_served: u64,
    /// Client ids are never reused (the store's residual assumption).
    next_client_id: u64,
    request_expired: u64,
    sessions_expired: u64,
    /// Replicas that were ever members (ids are not reused).
    ever_members: u64,

    next_change_seq: u64,
    /// Send-time checks report once per replica and kind, so that one early
    /// send per election does not end the run before its consequences.
    send_violations_reported: std::collections::BTreeSet<(usize, &'static str)>,
}

const CLIENT_TIMEOUT_TICKS: u64 = 150;

/// Simulated milliseconds per tick (the driver's `tick_ms`).
const TICK_MS: u64 = 10;

/// Replicas' states are compared after every this many slots (besides
/// snapshots and the end), for the applied-prefix checker.
const STATE_SAMPLE_EVERY_SLOTS: u64 = 16;

/// The first client id; ids count up from here.
const FIRST_CLIENT_ID: u64 = 1000;
/// The lease keeper's client id (below the clients').
const LEASE_CLIENT_ID: u64 = 999;

/// Peer messages queued at a stalled replica at most (the transport's
/// queue: beyond it, messages are dropped).
const MAX_QUEUED_PEER_MESSAGES: usize = 4096;

/// The largest cluster a seed draws.
pub const MAX_NODES: u32 = 5;

/// Largest snapshot a replica accepts.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 20;

impl Simulation {
    pub fn new(options: SimOptions) -> Simulation {
        let mut rng = SplitMix64::new(options.seed);
        // Only an anchor: every decision depends on simulated time alone.
        let base = std::time::Instant::now();
        let nodes = (0..options.total_nodes())
            .map(|i| {
                let skew = {
                    let max = options.faults.max_clock_skew_per_mille;
                    rng.range(0, 2 * max + 1) as i64 - max as i64
                };
                let mut io = NodeIo::new(NodeId(i), base, rng.next_u64(), MAX_SNAPSHOT_BYTES);
                // With one voter (which membership changes can also leave),
                // a chosen mark in a failed batch chose nothing.
                io.quorum_is_self = options.nodes == 1 || options.spares > 0;
                SimNode {
                    io: Arc::new(Mutex::new(io)),
                    driver: None,
                    shadow: new_store(options.kv, options.ignore_request_stamps),
                    down_until: 0,
                    stalled_until: 0,
                    resumed: false,
                    incarnation: 0,
                    last_promised_seen: paxlog_core::Ballot::ZERO,
                    was_leader: false,
                    clock_skew_per_mille: skew,
                    client_inbox: VecDeque::new(),
                    peer_inbox: VecDeque::new(),
                }
            })
            .collect();
        let clients: Vec<SimClient> = (0..options.clients)
            .map(|i| SimClient {
                client_id: FIRST_CLIENT_ID + i as u64,
                seq: 0,
                current: None,
                state: ClientState::Idle { next_tick: 1 },
                slow: rng.chance(options.slow_client_per_mille, 1000),
            })
            .collect();
        Simulation {
            network: Network::new(options.total_nodes(), &options.faults),
            checker: Checker::new(options.nodes),
            rng,
            workload_rng: SplitMix64::new(options.seed ^ 0x0DE1_E7ED),
            now_tick: 0,
            nodes,
            faults: FaultCounts::default(),
            steps: 0,
            leader_changes: 0,
            partition_until: 0,
            reads_served: 0,
            next_client_id: FIRST_CLIENT_ID + clients.len() as u64,
            request_expired: 0,
            sessions_expired: 0,
            ever_members: paxlog_core::Membership::initial(options.nodes).members_mask(),
            next_change_seq: 0,
            send_violations_reported: Default::default(),
            lease_keeper: options
                .leases
                .then(|| leases::LeaseKeeper::new(options.seed, LEASE_CLIENT_ID)),
            clients,
            options,
        }
    }

    pub fn run(mut self) -> SimReport {
        let total = self.options.fault_ticks + self.options.liveness_ticks;
        let mut converged = false;
        while self.now_tick < total {
            self.now_tick += 1;
            let faulty = self.now_tick <= self.options.fault_ticks;
            if self.now_tick == self.options.fault_ticks + 1 {
                self.heal_everything();
            }
            if faulty {
                self.inject_faults();
            }
            self.advance_clocks(faulty);
            self.restart_due_nodes();
            self.drive_clients(faulty);
            if faulty {
                // Like the clients: nothing new once the faults stop (the
                // leases it let go still expire then, and are checked).
                self.drive_lease_keeper();
            }
            self.deliver_messages();
            for i in 0..self.nodes.len() {
                self.run_turn(i);
            }
            self.poll_clients();
            self.poll_lease_keeper();
            self.checker.recheck_deferred_reads(false);
            self.check_promises();
            if !faulty && self.converged() {
                converged = true;
                break;
            }
            if self.checker.violations().len() > 20 {
                break;
            }
        }
        if !converged {
            let detail = self.convergence_detail();
            self.checker.violation(format!(
                "liveness: not converged {} ticks after faults stopped ({detail})",
                self.options.liveness_ticks
            ));
        }
        self.final_checks(converged);
        let mut violations = self.checker.violations().to_vec();
        for node in &self.nodes {
            if let Some(driver) = &node.driver {
                violations.extend(driver.replica().violations().iter().cloned());
            }
            self.faults.recoveries += lock(&node.io).recoveries;
        }
        self.faults.membership_epoch = self.newest_membership().epoch;
        if let Some(keeper) = &self.lease_keeper {
            self.faults.lease_keep_alives = keeper.keep_alives_answered;
            self.faults.lease_expiries_checked = keeper.expiries_checked;
        }
        let load = self.network.load_counts();
        self.faults.queue_full_drops = load.queue_full;
        self.faults.connection_resets = load.resets;
        self.faults.reset_drops = load.reset_drops;
        self.faults.oversized_drops = load.oversized;
        SimReport {
            seed: self.options.seed,
            nodes: self.options.nodes,
            ticks: self.now_tick,
            steps: self.steps,
            committed: self.checker.acked_count(),
            slots: self.checker.slot_count(),
            leader_changes: self.leader_changes,
            reads: self.reads_served,
            request_expired: self.request_expired,
            sessions_expired: self.sessions_expired,
            residual_reruns: self.checker.residual_reruns(),
            faults: self.faults,
            violations,
            leases: self.options.leases,
        }
    }

    // ----- faults ----------------------------------------------------------

    fn inject_faults(&mut self) {
        let f = self.options.faults.clone();
        let n = self.options.total_nodes();
        if self.now_tick >= self.partition_until && self.network.is_partitioned() {
            self.network.heal();
        }
        if !self.network.is_partitioned() && self.rng.chance(f.partition_per_100k, 100_000) {
            let leader = self.current_leader();
            let partition = Partition::draw(&mut self.rng, n, leader);
            self.network.apply(&partition);
            self.partition_until = self.now_tick + self.rng.range(20, 400);
            self.faults.partitions += 1;
        }
        if self.rng.chance(f.crash_per_100k, 100_000) {
            let victim = self.pick_victim();
            if self.nodes[victim].driver.is_some() {
                let down = self.rng.range(5, 300);
                self.crash(victim, down);
            }
        }
        if f.connection_reset_per_100k > 0 && self.rng.chance(f.connection_reset_per_100k, 100_000)
        {
            let from = self.rng.range(0, u64::from(n)) as usize;
            let to = self.rng.range(0, u64::from(n)) as usize;
            let reconnect_ticks = self.rng.range(1, 30);
            if from != to {
                self.network
                    .reset_link(from, to, self.now_tick + reconnect_ticks);
            }
        }
        if f.clock_jump_per_100k > 0 && self.rng.chance(f.clock_jump_per_100k, 100_000) {
            let victim = self.pick_victim();
            let jump_ticks = self.rng.range(10, 300);
            lock(&self.nodes[victim].io).elapsed += Duration::from_millis(jump_ticks * TICK_MS);
            self.faults.clock_jumps += 1;
        }
        if self.options.membership_change_per_100k > 0
            && self
                .rng
                .chance(self.options.membership_change_per_100k, 100_000)
        {
            self.change_membership();
        }
        if f.stall_per_100k > 0 && self.rng.chance(f.stall_per_100k, 100_000) {
            let victim = self.pick_victim();
            let node = &mut self.nodes[victim];
            if node.driver.is_some() && node.stalled_until <= self.now_tick {
                // Longer than the election timeout: leases and leadership
                // run out while it does not look.
                node.stalled_until = self.now_tick + self.rng.range(25, 80);
                self.faults.stalls += 1;
            }
        }
    }

    /// The operator asks the leader for one membership change, drawn among
    /// those that may follow its current membership: add a spare as a
    /// learner, promote or demote one, remove a learner or a voter (never
    /// the last). The leader may refuse (a change in flight): nothing then.
    fn change_membership(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let index = leader.0 as usize;
        let Some(driver) = self.nodes[index].driver.as_ref() else {
            return;
        };
        let current = driver.replica().membership().clone();
        let total = self.options.total_nodes();
        let mut options: Vec<paxlog_core::Membership> = Vec::new();
        let next = |voters: u64, learners: u64| paxlog_core::Membership {
            epoch: current.epoch + 1,
            voters,
            learners,
        };
        for i in 0..total {
            let b = 1u64 << i;
            if self.ever_members & b == 0 {
                options.push(next(current.voters, current.learners | b));
            } else if current.learners & b != 0 {
                options.push(next(current.voters | b, current.learners & !b));
                options.push(next(current.voters, current.learners & !b));
            } else if current.voters & b != 0 && current.voter_count() > 1 {
                options.push(next(current.voters & !b, current.learners | b));
                options.push(next(current.voters & !b, current.learners));
            }
        }
        if options.is_empty() {
            return;
        }
        let pick = options.swap_remove(self.rng.range(0, options.len() as u64) as usize);
        self.next_change_seq += 1;
        let id = RequestId {
            client_id: u64::MAX - 1,
            seq: self.next_change_seq,
        };
        let added = pick.members_mask();
        let mut placed = false;
        self.step(index, |driver, _| {
            driver.begin_turn();
            placed = driver.propose_membership(id, pick).is_ok();
            driver.end_turn()
        });
        if placed {
            self.ever_members |= added;
            self.faults.membership_changes_placed += 1;
        }
    }

    /// Where a client sends a request: a member of the cluster as it
    /// knows it (the newest membership), now and then any replica (a
    /// removed one, or one not added yet, refuses at once).
    fn client_target(&mut self) -> usize {
        let total = self.options.total_nodes();
        if self.options.spares == 0 || self.rng.chance(1, 10) {
            return self.rng.range(0, u64::from(total)) as usize;
        }
        let members: Vec<usize> = paxlog_core::ids_of(self.newest_membership().members_mask())
            .map(|n| n.0 as usize)
            .filter(|i| *i < total as usize)
            .collect();
        members[self.rng.range(0, members.len() as u64) as usize]
    }

    /// The newest membership any running replica knows of.
    fn newest_membership(&self) -> paxlog_core::Membership {
        self.nodes
            .iter()
            .filter_map(|n| n.driver.as_ref())
            .map(|d| d.replica().membership().clone())
            .max_by_key(|m| m.epoch)
            .unwrap_or_else(|| paxlog_core::Membership::initial(self.options.nodes))
    }

    /// The leader half the time, else anyone.
    fn pick_victim(&mut self) -> usize {
        match self.current_leader() {
            Some(leader) if self.rng.chance(1, 2) => leader.0 as usize,
            _ => self.rng.range(0, u64::from(self.options.total_nodes())) as usize,
        }
    }

    fn heal_everything(&mut self) {
        self.network.heal();
        self.network.calm();
        for node in &mut self.nodes {
            node.down_until = node.down_until.min(self.now_tick);
            node.stalled_until = node.stalled_until.min(self.now_tick);
        }
    }

    /// Time passes on every machine, at its own rate.
    fn advance_clocks(&mut self, faulty: bool) {
        let sync_faults = SyncFaults {
            torn_per_mille: self.options.faults.torn_write_per_mille,
            crash_after_win_per_mille: self.options.faults.crash_after_win_per_mille,
            fsync_error_per_10k: self.options.faults.fsync_error_per_10k,
        };
        for node in &mut self.nodes {
            let micros = (TICK_MS * 1000) as i64 * (1000 + node.clock_skew_per_mille) / 1000;
            let mut io = lock(&node.io);
            io.elapsed += Duration::from_micros(micros as u64);
            io.faulty = faulty;
            io.faults = sync_faults;
        }
    }

    fn crash(&mut self, index: usize, down_ticks: u64) {
        let newest = self.newest_membership();
        // At most one replica recovers at a time, whatever the memberships:
        // two recovering voters of three wait for each other forever (the
        // honest outcome of two lost disks), and a replica removed, or not
        // added yet, is no exception. One that does not know it was removed
        // (or added) votes under an older membership, where its vote and
        // its recovery replies count; a member that lags behind the change
        // may need its answer (a sweep that let a removed replica recover
        // beside a member ended with the two waiting for each other).
        let others_recovering = self
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != index && lock(&n.io).disk.recovering);
        // No draw at all when the fault is off.
        let disk_loss = self.options.faults.disk_loss_per_mille;
        // A single replica that lost its disk lost the cluster's state:
        // there is nobody to recover from (it waits for the operator). With
        // membership changes, the replica restarts knowing only the
        // bootstrap membership (its snapshot held the newest) and learns
        // the newest while it catches up, before it judges its replies.
        let lose = disk_loss > 0
            && newest.voter_count() > 1
            && !self.sole_holder_of_chosen_slots(index, &newest)
            && self.now_tick <= self.options.fault_ticks
            && !others_recovering
            && self.rng.chance(disk_loss, 1000);
        let (tail, cut) = if lose {
            (self.rng.chance(1, 2), self.rng.range(1, 6) as usize)
        } else {
            (false, 0)
        };
        let node = &mut self.nodes[index];
        if let Some(mut driver) = node.driver.take() {
            driver.stop("the replica crashed");
        }
        node.client_inbox.clear();
        node.peer_inbox.clear();
        node.stalled_until = 0;
        node.resumed = false;
        let mut io = lock(&node.io);
        io.crash();
        if lose {
            if tail {
                io.disk.cut_synced_tail(cut);
                self.faults.synced_tails_cut += 1;
            } else {
                io.disk.lose_everything();
                self.faults.disks_lost += 1;
            }
            node.last_promised_seen = io.disk.durable.promised;
        }
        drop(io);
        node.down_until = self.now_tick + down_ticks;
        self.faults.crashes += 1;
    }

    /// Was replica `index` the only voter of a membership that governed
    /// slots some other voter of `newest` has not learned are chosen? Those
    /// slots were chosen by its vote alone (seed 1709: the only voter
    /// promoted a learner, by its own vote, and lost its disk before the
    /// learner had the change); losing its disk loses them, as losing a
    /// single replica's disk loses the cluster's state.
    fn sole_holder_of_chosen_slots(&self, index: usize, newest: &paxlog_core::Membership) -> bool {
        let Some(driver) = self.nodes[index].driver.as_ref() else {
            return false;
        };
        let me = NodeId(index as u32);
        let replica = driver.replica();
        let memberships: Vec<(Slot, &paxlog_core::Membership)> = replica.memberships().collect();
        // The slots a single-voter membership governed end where the next
        // one starts (the change there was chosen by that voter too).
        let Some(end) = memberships
            .windows(2)
            .filter(|w| w[0].1.voter_count() == 1 && w[0].1.is_voter(me))
            .map(|w| w[1].0)
            .max()
        else {
            return false;
        };
        paxlog_core::ids_of(newest.voters)
            .filter(|v| *v != me)
            .any(|v| {
                self.nodes[v.0 as usize]
                    .driver
                    .as_ref()
                    .is_none_or(|d| d.replica().chosen_upto() < end)
            })
    }

    fn node_config(&self, index: usize) -> NodeConfig {
        let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let peers = (0..self.options.total_nodes())
            .map(|i| addr(7000 + i as u16))
            .collect();
        let mut cfg = NodeConfig::new(
            index as u32,
            peers,
            addr(8000 + index as u16),
            std::path::PathBuf::from(format!("/nonexistent/paxlog-sim/n{index}")),
        );
        let core = config_for(&self.options, NodeId(index as u32));
        cfg.tick_ms = TICK_MS;
        cfg.heartbeat_ticks = core.heartbeat_interval_ticks;
        cfg.election_ticks = core.election_timeout_ticks;
        cfg.snapshot_every_rounds = match &self.options.faults.snapshot_every_slots_by_node {
            Some(by_node) => by_node[index % by_node.len()],
            None => self.options.faults.snapshot_every_slots,
        };
        cfg.max_snapshot_bytes = MAX_SNAPSHOT_BYTES;
        if self.options.faults.max_frame_bytes > 0 {
            // Sized to the small frame limit as production's 1 MiB is to
            // its 32 MiB; transfers then take many chunks and resume.
            cfg.snapshot_chunk_bytes = self.options.faults.max_frame_bytes / 4;
        }
        cfg.request_timeout_ms = CLIENT_TIMEOUT_TICKS * TICK_MS;
        cfg
    }

    fn restart_due_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].driver.is_some() || self.nodes[i].down_until > self.now_tick {
                continue;
            }
            let replica_seed = self.rng.next_u64();
            let io_seed = self.rng.next_u64();
            let read_seed = self.rng.next_u64();
            let me = NodeId(i as u32);
            let cfg = self.node_config(i);
            let node = &mut self.nodes[i];
            node.incarnation += 1;
            let mut io = lock(&node.io);
            if self.options.lose_log_on_restart {
                io.disk.lose_log();
            }
            if self.options.forget_promise_on_restart {
                io.disk.forget_promise();
            }
            // Recovery: the newest snapshot restores the store; the log is
            // replayed from it.
            let mut kv = new_store(self.options.kv, self.options.ignore_request_stamps);
            let mut shadow = new_store(self.options.kv, self.options.ignore_request_stamps);
            let mut snapshot_round = Slot::ZERO;
            if let Some((slot, image)) = io.disk.newest_snapshot() {
                snapshot_round = slot;
                match kv.restore(image) {
                    Ok(()) => {
                        check_restored(&mut self.checker, me, slot, image, &kv);
                        let _ = shadow.restore(image);
                    }
                    Err(error) => self
                        .checker
                        .violation(format!("{me}: snapshot failed to restore: {error}")),
                }
            }
            let mut durable = io.disk.durable.clone();
            durable.compact(snapshot_round);
            durable.recovering = io.disk.recovering;
            let durable_promise = io.disk.durable_promise_high_water;
            io.restart(durable.clone(), io_seed);
            drop(io);
            let mut core_cfg = config_for(&self.options, me);
            core_cfg.membership = kv.membership().cloned();
            let replica = Replica::new(core_cfg, durable, replica_seed);
            if replica.promised() < durable_promise {
                self.checker.violation(format!(
                    "promise monotonicity: {me} restarted with promise {} below the {} it made durable",
                    replica.promised(),
                    durable_promise
                ));
            }
            node.last_promised_seen = replica.promised();
            node.was_leader = false;
            node.shadow = shadow;
            let io = DriverIo {
                log: Box::new(SimLog(node.io.clone())),
                snapshots: Box::new(SimSnapshots(node.io.clone())),
                network: Box::new(SimNetwork(node.io.clone())),
                clock: Box::new(SimClock(node.io.clone())),
                seed: read_seed,
            };
            let mut driver = Driver::new(
                cfg,
                replica,
                kv,
                io,
                snapshot_round.0,
                Arc::new(Metrics::new(i as u32)),
            );
            driver.set_test_bugs(self.options.driver_bugs);
            node.driver = Some(driver);
            if node.incarnation > 1 {
                self.faults.stale_deliveries +=
                    self.network
                        .redeliver_stale(i, self.now_tick, &mut self.rng);
            }
            self.step(i, |driver, _| driver.start());
        }
    }

    // ----- the real driver -------------------------------------------------

    /// One turn of replica `index`'s driver, as its loop runs one: time
    /// first, then what queued (client and peer inputs alternately), the
    /// timers, and the `Ready` hand-off.
    fn run_turn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.driver.is_none() {
            return;
        }
        if node.stalled_until > self.now_tick {
            node.resumed = true;
            return;
        }
        if let Some(every) = &self.options.faults.turn_every_ticks_by_node {
            // A slow machine: its inputs queue between turns.
            let every = every[index % every.len()].max(1);
            if !(self.now_tick + index as u64).is_multiple_of(every) {
                return;
            }
        }
        // The planted bug: the first turn after a stall skips the clock
        // catch-up, so what queued meanwhile is judged at the old time.
        let skip_catch_up = node.resumed && self.options.skip_catch_up_after_stall;
        node.resumed = false;
        let clients: Vec<DriverInput> = node.client_inbox.drain(..).collect();
        let peers: Vec<(u32, Wire)> = node.peer_inbox.drain(..).collect();
        self.step(index, move |driver, steps| {
            if !skip_catch_up {
                driver.begin_turn();
            }
            let mut clients = clients.into_iter();
            let mut peers = peers.into_iter();
            loop {
                let mut progressed = false;
                if let Some(input) = clients.next() {
                    progressed = true;
                    *steps += 1;
                    driver.client_input(input)?;
                }
                if let Some((from, wire)) = peers.next() {
                    progressed = true;
                    *steps += 1;
                    driver.peer_input(from, wire)?;
                }
                if !progressed {
                    break;
                }
            }
            driver.timers();
            driver.end_turn()
        });
    }

    /// Runs `f` on replica `index`'s driver; then routes what it sent and
    /// checks what it applied. A failed step (a planted fsync failure) or a
    /// panic takes the replica down, as the process would go.
    fn step<F>(&mut self, index: usize, f: F)
    where
        F: FnOnce(&mut Driver, &mut u64) -> Result<(), String>,
    {
        let Some(driver) = self.nodes[index].driver.as_mut() else {
            return;
        };
        let mut steps = 1;
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(driver, &mut steps)));
        self.steps += steps;
        let crash = lock(&self.nodes[index].io).crash.take();
        let failed = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => {
                if crash.is_none() {
                    self.checker
                        .violation(format!("n{index}: the driver failed unprompted: {error}"));
                }
                Some(crash.unwrap_or(CrashKind::FsyncError))
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let kind = if message.contains("applied in order") {
                    "applied prefix"
                } else {
                    "panic"
                };
                self.checker
                    .violation(format!("{kind}: n{index}'s driver panicked: {message}"));
                Some(CrashKind::FsyncError)
            }
        };
        self.route_outbox(index, failed);
        self.report_chosen(index);
        if failed.is_none() {
            self.observe(index);
        }
        match failed {
            None => {}
            Some(CrashKind::AfterWin) => {
                self.faults.crashes_after_win += 1;
                let down = self.rng.range(1, 4);
                self.crash(index, down);
            }
            Some(CrashKind::Torn) => {
                self.faults.torn_writes += 1;
                let down = self.rng.range(5, 200);
                self.crash(index, down);
            }
            Some(CrashKind::FsyncError) => {
                self.faults.fsync_errors += 1;
                let down = self.rng.range(1, 30);
                self.crash(index, down);
            }
        }
    }

    /// What replica `index` sent goes into the network. A replica that died
    /// right after winning got its messages since its last sync out to one
    /// peer only.
    fn route_outbox(&mut self, index: usize, failed: Option<CrashKind>) {
        let (outbox, before_sync, send_violations, violations) = {
            let mut io = lock(&self.nodes[index].io);
            let before = io.outbox_before_sync;
            io.outbox_before_sync = 0;
            (
                std::mem::take(&mut io.outbox),
                before,
                std::mem::take(&mut io.send_violations),
                std::mem::take(&mut io.violations),
            )
        };
        for (kind, message) in send_violations {
            if kind == "persist" || self.send_violations_reported.insert((index, kind)) {
                self.checker.violation(message);
            }
        }
        for message in violations {
            self.checker.violation(message);
        }
        let lucky = self.rng.range(0, u64::from(self.options.total_nodes())) as u32;
        for (n, (to, wire)) in outbox.into_iter().enumerate() {
            if failed == Some(CrashKind::AfterWin) && n >= before_sync && to != lucky {
                continue;
            }
            if let Wire::Core(Message::Accept {
                ballot,
                first_slot,
                entries,
                ..
            }) = &wire
            {
                for (offset, entry) in entries.iter().enumerate() {
                    let slot = Slot(first_slot.0 + offset as u64);
                    self.checker.value_sent(*ballot, slot, entry);
                }
            }
            let (dropped, duplicated) = self.network.send(
                index,
                to as usize,
                wire,
                self.now_tick,
                &self.options.faults,
                &mut self.rng,
            );
            self.faults.dropped += dropped;
            self.faults.duplicated += duplicated;
        }
        for kind in std::mem::take(&mut self.network.oversized_kinds) {
            if self.send_violations_reported.insert((index, "frame")) {
                self.checker.violation(format!(
                    "frame limit: n{index} sent a {kind} message over the transport's {} byte frame limit (the transport drops it; resent, it never arrives)",
                    self.options.faults.max_frame_bytes
                ));
            }
        }
    }

    /// After a driver step: the chosen values it wrote, its snapshots, and
    /// every slot it applied, replayed into the shadow store and checked.
    fn report_chosen(&mut self, index: usize) {
        let chosen = std::mem::take(&mut lock(&self.nodes[index].io).chosen_out);
        for (slot, entry) in &chosen {
            self.checker.chosen_seen(NodeId(index as u32), *slot, entry);
        }
    }

    fn observe(&mut self, index: usize) {
        let me = NodeId(index as u32);
        let (saved, received) = {
            let mut io = lock(&self.nodes[index].io);
            (
                std::mem::take(&mut io.saved),
                std::mem::take(&mut io.received),
            )
        };
        let Some(driver) = self.nodes[index].driver.as_ref() else {
            return;
        };
        let real = driver.kv().applied_upto();
        let is_leader = driver.replica().role() == paxlog_core::Role::Leader;
        if is_leader && !self.nodes[index].was_leader {
            self.leader_changes += 1;
        }
        self.nodes[index].was_leader = is_leader;
        let before = self.nodes[index].shadow.applied_upto();
        // A snapshot installed from a peer: the shadow takes it too.
        for slot in received {
            let shadow_at = self.nodes[index].shadow.applied_upto();
            if shadow_at >= slot || slot > real {
                continue;
            }
            let image = lock(&self.nodes[index].io)
                .disk
                .snapshots
                .get(&slot)
                .map(|(image, _)| image.clone());
            let Some(image) = image else {
                continue;
            };
            let mut shadow = new_store(self.options.kv, self.options.ignore_request_stamps);
            if let Err(error) = shadow.restore(&image) {
                self.checker.violation(format!(
                    "{me}: received snapshot failed to restore: {error}"
                ));
                continue;
            }
            check_restored(&mut self.checker, me, slot, &image, &shadow);
            self.nodes[index].shadow = shadow;
            self.faults.snapshots_installed += 1;
        }
        while self.nodes[index].shadow.applied_upto() < real {
            let slot = self.nodes[index].shadow.applied_upto();
            let Some(entry) = self.checker.chosen_entry(slot).cloned() else {
                self.checker.violation(format!(
                    "applied prefix: {me} applied slot {slot}, which no replica wrote as chosen"
                ));
                // Follow the store from here, to report this once.
                let mut shadow = new_store(self.options.kv, self.options.ignore_request_stamps);
                if let Some(driver) = self.nodes[index].driver.as_ref() {
                    let _ = shadow.restore(&driver.kv().snapshot());
                }
                self.nodes[index].shadow = shadow;
                break;
            };
            self.apply_shadow(index, slot, &entry);
        }
        let Some(driver) = self.nodes[index].driver.as_ref() else {
            return;
        };
        let after = self.nodes[index].shadow.applied_upto();
        let sample = after.0 / STATE_SAMPLE_EVERY_SLOTS != before.0 / STATE_SAMPLE_EVERY_SLOTS;
        if after == real && (sample || !saved.is_empty()) {
            let state = digest(&driver.kv().snapshot());
            if state != digest(&self.nodes[index].shadow.snapshot()) {
                self.checker.violation(format!(
                    "applied prefix: {me}'s store at round {real} is not the chosen log applied in order"
                ));
            }
            self.checker.state_at(me, real, state);
        }
        for slot in saved {
            self.faults.snapshots_taken += 1;
            let image = lock(&self.nodes[index].io)
                .disk
                .snapshots
                .get(&slot)
                .map(|(image, _)| digest(image));
            if let Some(state) = image {
                self.checker.state_at(me, slot, state);
            }
        }
    }

    /// Applies one chosen entry to node `index`'s shadow store and reports
    /// it to the checkers.
    fn apply_shadow(&mut self, index: usize, slot: Slot, entry: &Entry) {
        let me = NodeId(index as u32);
        let kv = &mut self.nodes[index].shadow;
        let key = match entry {
            Entry::Command { payload, .. } => KvCommand::decode(payload)
                .ok()
                .and_then(|c| key_of(&c).map(str::to_string)),
            Entry::Noop | Entry::Config { .. } => None,
        };
        let value_before = key.as_ref().and_then(|k| kv.get(k).cloned());
        let sessions_before = kv.session_count();
        let had_session = entry
            .request_id()
            .is_some_and(|id| kv.last_seq(id.client_id).is_some());
        let output = kv.apply(slot, entry);
        let opened = entry.request_id().is_some() && !had_session && !output.duplicate;
        let expired = (sessions_before + usize::from(opened)).saturating_sub(kv.session_count());
        let value_after = key.as_ref().and_then(|k| kv.get(k).cloned());
        if self.checker.applied(me, slot, entry, &output) {
            self.check_lease_expiry(entry, &output);
            self.sessions_expired += expired as u64;
            if let Some(key) = key {
                if value_after != value_before {
                    self.checker.key_changed(&key, slot, value_after);
                }
            }
        }
    }

    // ----- the lease keeper ----------------------------------------------------

    fn now_ms(&self) -> u64 {
        self.now_tick * TICK_MS
    }

    /// Sends the keeper's next request, to the leader it was told of or a
    /// replica of its own stream's choosing.
    fn drive_lease_keeper(&mut self) {
        let (now_tick, now_ms) = (self.now_tick, self.now_ms());
        let total = self.options.total_nodes();
        let Some(keeper) = self.lease_keeper.as_mut() else {
            return;
        };
        let Some(ask) = keeper.next_ask(now_tick, now_ms) else {
            return;
        };
        let target = match keeper.target {
            Some(node) if node.0 < total => node.0 as usize,
            _ => keeper.rng.range(0, u64::from(total)) as usize,
        };
        if self.nodes[target].driver.is_none() {
            keeper.target = None;
            return;
        }
        let deadline = self.deadline_at(target);
        let deadline_tick = now_tick + leases::REQUEST_TIMEOUT_TICKS;
        let Some(keeper) = self.lease_keeper.as_mut() else {
            return;
        };
        match ask {
            leases::Ask::Write { id, command } => {
                self.checker.issued(id, &command);
                let (reply, rx) = oneshot::channel();
                self.nodes[target]
                    .client_inbox
                    .push_back(DriverInput::Write(WriteRequest {
                        command,
                        id,
                        reply,
                        deadline,
                    }));
                keeper.pending = Some(leases::Pending::Write {
                    reply: rx,
                    sent_ms: now_ms,
                    deadline_tick,
                });
            }
            leases::Ask::KeepAlive(lease) => {
                let (reply, rx) = oneshot::channel();
                self.nodes[target]
                    .client_inbox
                    .push_back(DriverInput::Read(ReadRequest {
                        query: Query::Lease {
                            action: LeaseAction::KeepAlive(lease),
                            reply,
                        },
                        consistency: Consistency::Linearizable,
                        deadline,
                    }));
                keeper.pending = Some(leases::Pending::KeepAlive {
                    lease,
                    reply: rx,
                    sent_ms: now_ms,
                    deadline_tick,
                });
            }
        }
    }

    fn poll_lease_keeper(&mut self) {
        let now = self.now_tick;
        let Some(keeper) = self.lease_keeper.as_mut() else {
            return;
        };
        match keeper.pending.as_mut() {
            None => {}
            Some(leases::Pending::Write {
                reply,
                sent_ms,
                deadline_tick,
            }) => {
                let sent_ms = *sent_ms;
                match reply.try_recv() {
                    Ok(Ok(output)) => {
                        keeper.pending = None;
                        keeper.write_answered(Some(&output), sent_ms, now);
                    }
                    Err(oneshot::error::TryRecvError::Empty) if *deadline_tick > now => {}
                    Ok(Err(DriverError::Rejected { .. })) => {
                        keeper.pending = None;
                        keeper.refused(now);
                    }
                    _ => {
                        keeper.pending = None;
                        keeper.write_answered(None, sent_ms, now);
                    }
                }
            }
            Some(leases::Pending::KeepAlive {
                lease,
                reply,
                sent_ms,
                deadline_tick,
            }) => {
                let (lease, sent_ms) = (*lease, *sent_ms);
                let answer = match reply.try_recv() {
                    Ok(answer) => Some(answer),
                    Err(oneshot::error::TryRecvError::Empty) if *deadline_tick > now => return,
                    Err(_) => None,
                };
                keeper.pending = None;
                keeper.keep_alive_answered(lease, answer, sent_ms, now);
            }
        }
    }

    /// An entry was applied for the first time: a revoke the leader placed
    /// because a lease expired is checked against the keeper's keep-alives.
    fn check_lease_expiry(&mut self, entry: &Entry, output: &ApplyOutput) {
        let now_ms = self.now_ms();
        let Some(keeper) = self.lease_keeper.as_mut() else {
            return;
        };
        let Entry::Command { id, payload } = entry else {
            return;
        };
        // The leader's own expiries carry a client id with the top bit set;
        // one a later leader voided changes nothing and is not judged.
        let superseded = matches!(&output.result, ApplyResult::Ok { value: Some(v) } if v.get("superseded").is_some());
        if id.client_id & (1 << 63) == 0 || !output.is_ok() || superseded {
            return;
        }
        if let Ok(KvCommand::LeaseExpire { lease, .. }) = KvCommand::decode(payload) {
            if let Some(violation) = keeper.revoked(lease, now_ms) {
                self.checker.violation(violation);
            }
        }
    }

    // ----- clients ---------------------------------------------------------

    fn drive_clients(&mut self, issue_new: bool) {
        for c in 0..self.clients.len() {
            let due = match &self.clients[c].state {
                ClientState::Idle { next_tick } => *next_tick <= self.now_tick,
                _ => false,
            };
            if !due {
                continue;
            }
            if self.clients[c].current.is_none() {
                if !issue_new {
                    continue;
                }
                if self.rng.chance(self.options.faults.read_per_mille, 1000) {
                    self.start_read(c);
                    continue;
                }
                let mut command = workload::draw_command(&mut self.rng);
                let deletes = self.options.faults.delete_per_mille;
                if deletes > 0 {
                    if let KvCommand::Put { key, .. } = &command {
                        if self.workload_rng.chance(deletes, 1000) {
                            command = KvCommand::Exec {
                                source: format!("del {key}"),
                            };
                        }
                    }
                }
                let client = &mut self.clients[c];
                client.seq += 1;
                client.current = Some(ClientRequest {
                    id: RequestId {
                        client_id: client.client_id,
                        seq: client.seq,
                    },
                    command,
                    issued: false,
                });
            }
            self.submit(c);
        }
    }

    /// The deadline a request handed to node `index` now carries.
    fn deadline_at(&self, index: usize) -> std::time::Instant {
        let io = lock(&self.nodes[index].io);
        io.base + io.elapsed + Duration::from_millis(CLIENT_TIMEOUT_TICKS * TICK_MS)
    }

    fn start_read(&mut self, c: usize) {
        let target = self.client_target();
        let key = workload::draw_read_key(&mut self.rng);
        if self.nodes[target].driver.is_none() {
            self.clients[c].state = ClientState::Idle {
                next_tick: self.now_tick + self.rng.range(1, 20),
            };
            return;
        }
        let floor = self.checker.read_floor(key);
        let (tx, rx) = oneshot::channel();
        let deadline = self.deadline_at(target);
        self.nodes[target]
            .client_inbox
            .push_back(DriverInput::Read(ReadRequest {
                query: Query::Get {
                    key: key.to_string(),
                    reply: tx,
                },
                consistency: Consistency::Linearizable,
                deadline,
            }));
        self.clients[c].state = ClientState::Reading {
            node: NodeId(target as u32),
            key,
            floor,
            deadline_tick: self.now_tick + CLIENT_TIMEOUT_TICKS + 10,
            reply: rx,
        };
    }

    /// Hands the client's request to a random replica, as an HTTP handler
    /// would: the driver stamps it, answers it from the session table or
    /// proposes it.
    fn submit(&mut self, c: usize) {
        let target = self.client_target();
        let retry_tick = self.now_tick + self.rng.range(1, 20);
        if self.nodes[target].driver.is_none() {
            self.clients[c].state = ClientState::Idle {
                next_tick: retry_tick,
            };
            return;
        }
        let deadline = self.deadline_at(target);
        let Some(request) = self.clients[c].current.as_mut() else {
            return;
        };
        if !request.issued {
            request.issued = true;
            self.checker.issued(request.id, &request.command);
        }
        let (tx, rx) = oneshot::channel();
        let ran_before = self.checker.executed_at(request.id);
        self.nodes[target]
            .client_inbox
            .push_back(DriverInput::Write(WriteRequest {
                command: request.command.clone(),
                id: request.id,
                reply: tx,
                deadline,
            }));
        self.clients[c].state = ClientState::Waiting {
            node: NodeId(target as u32),
            deadline_tick: self.now_tick + CLIENT_TIMEOUT_TICKS + 10,
            reply: rx,
            ran_before,
        };
    }

    /// Answers that arrived, and clients that gave up waiting.
    fn poll_clients(&mut self) {
        for c in 0..self.clients.len() {
            let now = self.now_tick;
            match &mut self.clients[c].state {
                ClientState::Idle { .. } => {}
                ClientState::Waiting {
                    node,
                    deadline_tick,
                    reply,
                    ran_before,
                } => {
                    let (node, ran_before) = (*node, *ran_before);
                    match reply.try_recv() {
                        Ok(Ok(_))
                            if self.options.faults.lost_reply_per_mille > 0
                                && self
                                    .workload_rng
                                    .chance(self.options.faults.lost_reply_per_mille, 1000) =>
                        {
                            // The answer is lost with the connection: the
                            // client retries at once (same id).
                            self.clients[c].state = ClientState::Idle { next_tick: now + 1 };
                        }
                        Ok(Ok(output)) => self.answer_client(c, node, &output),
                        Ok(Err(DriverError::Rejected { kind, message })) => {
                            // Refused against the state: nothing written.
                            // True only if no earlier attempt had run when
                            // this one was sent (one that runs later is
                            // ordered after the refusal), or if its session
                            // is gone from the refusing replica's state (an
                            // expired session cannot tell: the residual).
                            let request = self.clients[c].current.as_ref();
                            let remembered = request.is_some_and(|r| {
                                self.nodes[node.0 as usize]
                                    .shadow
                                    .last_seq(r.id.client_id)
                                    .is_some_and(|seq| seq >= r.id.seq)
                            });
                            if let (Some(slot), Some(request), true) =
                                (ran_before, request, remembered)
                            {
                                self.checker.violation(format!(
                                    "rejected but executed: {node} refused request {} \
                                     ({kind:?}: {message}, nothing written), which had run at \
                                     slot {slot} before this attempt was sent (its session \
                                     holds it)",
                                    request.id
                                ));
                            }
                            self.clients[c].current = None;
                            self.clients[c].state = ClientState::Idle { next_tick: now + 1 };
                        }
                        Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                            self.retry_later(c)
                        }
                        Err(oneshot::error::TryRecvError::Empty) => {
                            if *deadline_tick <= now {
                                self.retry_later(c);
                            }
                        }
                    }
                }
                ClientState::Reading {
                    node,
                    key,
                    floor,
                    deadline_tick,
                    reply,
                } => {
                    let (node, key, floor) = (*node, *key, *floor);
                    let done = match reply.try_recv() {
                        Ok(Ok(answer)) => {
                            self.reads_served += 1;
                            self.checker.read_returned(
                                node,
                                key,
                                floor,
                                &answer.value,
                                Slot(answer.current_round),
                            );
                            true
                        }
                        Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => true,
                        Err(oneshot::error::TryRecvError::Empty) => *deadline_tick <= now,
                    };
                    if done {
                        self.clients[c].state = ClientState::Idle { next_tick: now + 1 };
                    }
                }
            }
        }
    }

    /// No answer: retry elsewhere with the same id (the store's sessions
    /// make that safe), at once or, for a slow client, much later.
    fn retry_later(&mut self, c: usize) {
        let wait = if self.clients[c].slow {
            self.rng.range(2, 7) * CLIENT_TIMEOUT_TICKS
        } else {
            1
        };
        self.clients[c].state = ClientState::Idle {
            next_tick: self.now_tick + wait,
        };
    }

    fn answer_client(&mut self, c: usize, node: NodeId, output: &ApplyOutput) {
        let Some(request) = self.clients[c].current.take() else {
            return;
        };
        self.clients[c].state = ClientState::Idle {
            next_tick: self.now_tick + 1,
        };
        match Answer::of(output) {
            Answer::Executed(slot) => {
                self.checker.acked(request.id, slot);
                if let Some(key) = key_of(&request.command) {
                    self.checker.write_acked(key, slot);
                }
            }
            answer => {
                if matches!(answer, Answer::Wrong) {
                    self.checker.violation(format!(
                        "exactly once: {node} answered request {} {output:?}, but that client \
                         never sent a later request",
                        request.id
                    ));
                } else {
                    self.request_expired += 1;
                }
                // A session that may have run this request is gone: later
                // seqs under this id would be refused too.
                self.clients[c].client_id = self.next_client_id;
                self.clients[c].seq = 0;
                self.next_client_id += 1;
            }
        }
    }

    // ----- network ---------------------------------------------------------

    fn deliver_messages(&mut self) {
        for (from, to, wire) in self.network.take_due(self.now_tick) {
            let node = &mut self.nodes[to];
            if node.driver.is_some() && node.peer_inbox.len() < MAX_QUEUED_PEER_MESSAGES {
                node.peer_inbox.push_back((from as u32, wire));
            }
        }
    }

    // ----- checks ----------------------------------------------------------

    fn check_promises(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(driver) = &node.driver {
                let promised = driver.replica().promised();
                if promised < node.last_promised_seen {
                    self.checker.violation(format!(
                        "promise monotonicity: n{i} promise went from {} to {promised}",
                        node.last_promised_seen,
                    ));
                }
                node.last_promised_seen = promised;
            }
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.driver.as_ref())
            .find(|d| d.replica().role() == paxlog_core::Role::Leader)
            .map(|d| d.replica().id())
    }

    fn converged(&self) -> bool {
        let busy =
            |c: &SimClient| c.current.is_some() || matches!(c.state, ClientState::Reading { .. });
        if self.clients.iter().any(busy) {
            return false;
        }
        let mut applied = None;
        let members = self.newest_membership().members_mask();
        for (i, node) in self.nodes.iter().enumerate() {
            if members & (1 << i) == 0 {
                // Removed, or never added: it stops learning.
                continue;
            }
            let Some(driver) = &node.driver else {
                return false;
            };
            if node.stalled_until > self.now_tick {
                return false;
            }
            let at = driver.kv().applied_upto();
            if driver.replica().chosen_upto() != at {
                return false;
            }
            match applied {
                None => applied = Some(at),
                Some(a) if a != at => return false,
                _ => {}
            }
        }
        applied.is_some_and(|a| a.0 >= self.checker.slot_count())
    }

    fn convergence_detail(&self) -> String {
        let pending = self.clients.iter().filter(|c| c.current.is_some()).count();
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.driver {
                Some(d) => format!(
                    "n{i} {:?} chosen {} applied {} promised {:?} leader {:?} recovering {:?} distrusts {:?}",
                    d.replica().role(),
                    d.replica().chosen_upto(),
                    d.kv().applied_upto(),
                    d.replica().promised(),
                    d.replica().leader(),
                    d.replica().status().recovering,
                    (
                        d.replica().distrusted_peers(),
                        d.replica().membership(),
                        d.replica().status().next_slot,
                        d.replica().status().pending_proposals,
                        d.replica().status().inflight_slots,
                    ),
                ),
                None => format!("n{i} down"),
            })
            .collect();
        let states: Vec<String> = self
            .clients
            .iter()
            .filter(|c| c.current.is_some())
            .map(|c| match &c.state {
                ClientState::Idle { next_tick } => format!("idle until {next_tick}"),
                ClientState::Waiting {
                    node,
                    deadline_tick,
                    ..
                } => {
                    format!("waiting on {node} until {deadline_tick}")
                }
                ClientState::Reading { node, .. } => format!("reading at {node}"),
            })
            .collect();
        format!(
            "{pending} client requests pending ({}); {}",
            states.join(", "),
            nodes.join(", ")
        )
    }

    fn final_checks(&mut self, converged: bool) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(driver) = &node.driver {
                for (slot, entry) in driver.replica().chosen_entries() {
                    self.checker.chosen_seen(NodeId(i as u32), slot, entry);
                }
            }
        }
        if converged {
            // Every member is up and has applied the same rounds: the same
            // state, and counters that grew once per increment that ran.
            let members = self.newest_membership().members_mask();
            for (i, node) in self.nodes.iter().enumerate() {
                let me = NodeId(i as u32);
                let Some(driver) = &node.driver else {
                    continue;
                };
                if members & (1 << i) == 0 {
                    continue;
                }
                let kv = driver.kv();
                self.checker
                    .state_at(me, kv.applied_upto(), digest(&kv.snapshot()));
                for counter in COUNTERS {
                    let ran = self.checker.increments(counter);
                    let value = kv.get(counter);
                    let holds = match value {
                        None => 0,
                        Some(v) => v.as_u64().unwrap_or(u64::MAX),
                    };
                    if holds != ran {
                        self.checker.violation(format!(
                            "exactly once: {counter} is {value:?} on {me}, but {ran} \
                             executions incremented it"
                        ));
                    }
                }
            }
        }
        self.checker.final_checks();
    }
}

/// A restored store must be the state it was saved from: the image
/// round-trips, covers the round it was saved at, and matches every other
/// replica's state at that round.
fn check_restored(checker: &mut Checker, node: NodeId, slot: Slot, image: &[u8], kv: &KvStore) {
    if kv.applied_upto() != slot || kv.snapshot() != image {
        checker.violation(format!(
            "applied prefix: {node} restored a snapshot of round {slot} to a different state \
             (at round {})",
            kv.applied_upto()
        ));
    }
    checker.state_at(node, slot, digest(image));
}

fn config_for(options: &SimOptions, id: NodeId) -> Config {
    let mut cfg = Config::new(id, options.nodes);
    if options.production_timing {
        // `paxlog node`'s defaults (Config::new and NodeConfig).
        cfg.heartbeat_interval_ticks = 5;
        cfg.election_timeout_ticks = 50;
        cfg.max_inflight_slots = 512;
        cfg.max_entries_per_message = 1024;
    } else {
        cfg.heartbeat_interval_ticks = 3;
        cfg.election_timeout_ticks = 20;
        cfg.max_inflight_slots = 64;
        cfg.max_entries_per_message = 16;
    }
    cfg.bugs = options.bugs.clone();
    if options.faults.max_frame_bytes > 0 {
        // The byte budget per message sized to the frame limit, as
        // production's 4 MiB is to its 32 MiB.
        cfg.max_bytes_per_message = options.faults.max_frame_bytes / 8;
    }
    if options.faults.clock_jump_per_100k > 0 {
        // A jump is beyond the drift bound leases rely on; reads then go
        // through the read index (as `paxlog node --no-leases`).
        cfg.leases = false;
    }
    cfg
}

/// The deliberately broken variants, one per checker they should trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// Phase 1 and 2 with a quorum of one (agreement).
    QuorumOfOne,
    /// A new leader ignores accepted values (agreement, durability).
    IgnorePromisedValues,
    /// A new leader invents values for holes (validity).
    InventValues,
    /// One replica never applies slot 3 (applied prefix).
    SkipApply,
    /// A restarted replica forgets its promise (promise monotonicity).
    ForgetPromise,
    /// A restarted replica loses its log (durability).
    LoseLog,
    /// A replica on a lost disk (or a cut synced tail) votes at once instead
    /// of recovering first (agreement, durability).
    SkipRecovery,
    /// A new leader's accepts leave before its promise is durable (one
    /// value per ballot and slot; leader ballot durable).
    BallotReuse,
    /// No catch-up (liveness).
    NoCatchUp,
    /// Replicas answer linearizable reads from their own state
    /// (linearizable reads).
    LocalReads,
    /// The session table ignores request stamps: a request whose session
    /// expired runs again (exactly once).
    DedupExpiry,
    /// The first turn after a stall skips the driver's clock catch-up: a
    /// deposed leader's lease still looks valid (linearizable reads).
    StaleLeaseRead,
    /// The driver skips its second duplicate check after a write's read
    /// barrier: a retried `del` whose first attempt ran meanwhile is
    /// refused as if nothing were written (rejected but executed).
    RetryAfterBarrier,
    /// The driver swaps in a received snapshot before asking the core, and
    /// ignores its refusal: applies handed out below the snapshot land on
    /// it (applied prefix).
    SnapshotInstallRace,
    /// A candidate counts a majority of the membership at its chosen
    /// prefix only, not of the changes it re-proposes (agreement).
    OldConfigQuorum,
    /// Lease deadlines are half the TTL (lease never early).
    EarlyLeaseExpiry,
}

impl SimOptions {
    pub fn with_bug(mut self, bug: Option<Bug>) -> SimOptions {
        if bug.is_some() {
            // The planted-bug seeds were found on 3- and 5-replica clusters
            // with the small timing; a broken variant needs a quorum to break.
            self.nodes = self.nodes_drawn;
            self.production_timing = false;
            // Nor the transport's load drops and clock jumps, drawn later.
            self.faults.link_queue_cap = 0;
            self.faults.connection_reset_per_100k = 0;
            self.faults.max_frame_bytes = 0;
            self.faults.clock_jump_per_100k = 0;
            self.spares = 0;
            self.membership_change_per_100k = 0;
        }
        match bug {
            None => {}
            Some(Bug::QuorumOfOne) => self.bugs.quorum_of_one = true,
            Some(Bug::IgnorePromisedValues) => self.bugs.ignore_promised_values = true,
            Some(Bug::InventValues) => self.bugs.invent_values = true,
            Some(Bug::SkipApply) => self.bugs.skip_apply_slot = Some(3),
            Some(Bug::ForgetPromise) => self.forget_promise_on_restart = true,
            Some(Bug::LoseLog) => self.lose_log_on_restart = true,
            Some(Bug::SkipRecovery) => {
                self.bugs.skip_recovery = true;
                self.faults.disk_loss_per_mille = self.faults.disk_loss_per_mille.max(500);
                self.faults.crash_per_100k = self.faults.crash_per_100k.max(200);
            }
            Some(Bug::BallotReuse) => {
                self.bugs.early_send_at_new_ballot = true;
                self.faults.crash_after_win_per_mille =
                    self.faults.crash_after_win_per_mille.max(500);
            }
            Some(Bug::NoCatchUp) => self.bugs.no_catch_up = true,
            Some(Bug::LocalReads) => {
                self.bugs.local_reads = true;
                self.faults.read_per_mille = self.faults.read_per_mille.max(300);
            }
            Some(Bug::DedupExpiry) => {
                self.ignore_request_stamps = true;
                // Its seeds were found before disks could be lost; keep
                // those runs as they were.
                self.faults.disk_loss_per_mille = 0;
            }
            Some(Bug::StaleLeaseRead) => {
                self.skip_catch_up_after_stall = true;
                self.faults.stall_per_100k = self.faults.stall_per_100k.max(400);
                self.faults.read_per_mille = self.faults.read_per_mille.max(300);
            }
            Some(Bug::RetryAfterBarrier) => {
                self.driver_bugs.skip_duplicate_check_after_barrier = true;
                self.faults.delete_per_mille = self.faults.delete_per_mille.max(300);
            }
            Some(Bug::SnapshotInstallRace) => {
                self.driver_bugs.install_snapshot_unchecked = true;
            }
            Some(Bug::EarlyLeaseExpiry) => {
                self.driver_bugs.early_lease_expiry = true;
                self.leases = true;
            }
            Some(Bug::OldConfigQuorum) => {
                self.bugs.old_config_quorum_only = true;
                self.spares = 2;
                self.membership_change_per_100k = 5000;
                // Its seeds were found before disks could be lost in seeds
                // with membership changes; keep those runs as they were.
                self.faults.disk_loss_per_mille = 0;
                self.faults.crash_per_100k = self.faults.crash_per_100k.max(600);
                self.faults.partition_per_100k = self.faults.partition_per_100k.max(1000);
            }
        }
        self.bugs.record_violations = bug.is_some();
        self
    }
}

/// Runs one seed with the options it stands for.
pub fn run_seed(seed: u64) -> SimReport {
    Simulation::new(SimOptions::from_seed(seed)).run()
}

/// The persisted record kinds, counted, for reports.
pub fn record_kind(record: &PersistRecord) -> &'static str {
    match record {
        PersistRecord::Promised(_) => "promised",
        PersistRecord::Campaigned(_) => "campaigned",
        PersistRecord::Accepted { .. } => "accepted",
        PersistRecord::Chosen { .. } => "chosen",
    }
}

impl SimOptions {
    /// Forces the cluster size (`None` keeps the seed's).
    pub fn with_nodes(mut self, nodes: Option<u32>) -> SimOptions {
        if let Some(n) = nodes {
            self.nodes = n;
        }
        self
    }
}
