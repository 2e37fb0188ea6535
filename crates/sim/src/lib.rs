//! A deterministic cluster simulator for paxlog-core.
//!
//! It runs whole clusters of the real [`Replica`], each applying to the real
//! [`KvStore`] (with its exactly-once session table), with a seeded network
//! (delay, drop, duplicate, reorder, partitions), crashes and restarts over a
//! simulated disk (unsynced writes are lost; a crash can tear a batch), and
//! clients that retry. Checkers named after the protocol's properties run as
//! it goes and at the end. One seed replays one run exactly.

mod checker;
mod disk;
mod network;
mod workload;

pub use checker::Checker;
use disk::SimDisk;
use network::{Network, Partition};
use paxlog_core::rng::SplitMix64;
use paxlog_core::{
    Bugs, Config, DurableState, Entry, Envelope, Event, Message, NodeId, PersistRecord, Proposal,
    Replica, RequestId, Slot, StateMachine,
};
use paxlog_kv::{ApplyOutput, ErrorKind, KvCommand, KvOptions, KvRequest, KvStore};
use workload::{digest, new_store, COUNTERS};

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
        }
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
    pub faults: FaultCounts,
    pub violations: Vec<String>,
}

impl SimReport {
    pub fn replay_command(&self) -> String {
        format!("cargo run --release -p paxlog-sim -- --seed {}", self.seed)
    }
}

struct SimNode {
    replica: Option<Replica>,
    disk: SimDisk,
    /// Meaningful while the replica is up (restored again at restart).
    kv: KvStore,
    down_until: u64,
    incarnation: u64,
    /// The highest promise this replica has reported in memory since boot.
    last_promised_seen: paxlog_core::Ballot,
    last_snapshot_slot: Slot,
    /// Clock rate error in per mille (see `Faults::max_clock_skew_per_mille`).
    clock_skew_per_mille: i64,
}

#[derive(Clone, Debug)]
enum ClientState {
    Idle {
        next_tick: u64,
    },
    Waiting {
        node: NodeId,
        deadline_tick: u64,
    },
    /// A linearizable read: every slot applied anywhere before it began
    /// (`floor` and below) must be inside the read index it gets.
    Reading {
        node: NodeId,
        read_id: u64,
        floor: Slot,
        deadline_tick: u64,
    },
}

/// A request a client works on until it is answered.
struct ClientRequest {
    id: RequestId,
    command: KvCommand,
    /// The stamp (the applied round of the first replica the client handed
    /// the request to) and the payload carrying it; every retry sends these
    /// same bytes, as a server re-proposing a write does.
    stamped: Option<(Slot, bytes::Bytes)>,
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
    now_tick: u64,
    nodes: Vec<SimNode>,
    network: Network,
    clients: Vec<SimClient>,
    checker: Checker,
    faults: FaultCounts,
    steps: u64,
    leader_changes: u64,
    partition_until: u64,
    next_read_id: u64,
    reads_served: u64,
    /// Client ids are never reused (the store's residual assumption).
    next_client_id: u64,
    request_expired: u64,
    sessions_expired: u64,
    /// Send-time checks report once per replica and kind, so that one early
    /// send per election does not end the run before its consequences.
    send_violations_reported: std::collections::BTreeSet<(usize, &'static str)>,
}

const CLIENT_TIMEOUT_TICKS: u64 = 150;

/// Replicas report a digest of their state after every this many slots
/// (besides snapshots and the end), for the applied-prefix checker.
const STATE_SAMPLE_EVERY_SLOTS: u64 = 16;

/// The first client id; ids count up from here.
const FIRST_CLIENT_ID: u64 = 1000;

impl Simulation {
    pub fn new(options: SimOptions) -> Simulation {
        let mut rng = SplitMix64::new(options.seed);
        let nodes = (0..options.nodes)
            .map(|i| {
                let mut node = SimNode {
                    replica: None,
                    disk: SimDisk::default(),
                    kv: new_store(options.kv, options.ignore_request_stamps),
                    down_until: 0,
                    incarnation: 0,
                    last_promised_seen: paxlog_core::Ballot::ZERO,
                    last_snapshot_slot: Slot::ZERO,
                    clock_skew_per_mille: {
                        let max = options.faults.max_clock_skew_per_mille;
                        rng.range(0, 2 * max + 1) as i64 - max as i64
                    },
                };
                node.replica = Some(Replica::new(
                    config_for(&options, NodeId(i)),
                    DurableState::default(),
                    rng.next_u64(),
                ));
                node
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
            network: Network::new(options.nodes),
            checker: Checker::new(options.nodes),
            rng,
            now_tick: 0,
            nodes,
            faults: FaultCounts::default(),
            steps: 0,
            leader_changes: 0,
            partition_until: 0,
            next_read_id: 0,
            reads_served: 0,
            next_client_id: FIRST_CLIENT_ID + clients.len() as u64,
            request_expired: 0,
            sessions_expired: 0,
            send_violations_reported: Default::default(),
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
            self.restart_due_nodes();
            self.drive_clients(faulty);
            self.deliver_messages();
            for i in 0..self.nodes.len() {
                let skew = self.nodes[i].clock_skew_per_mille;
                let ticks = if skew < 0 && self.rng.chance(skew.unsigned_abs(), 1000) {
                    0
                } else if skew > 0 && self.rng.chance(skew as u64, 1000) {
                    2
                } else {
                    1
                };
                if let Some(replica) = self.nodes[i].replica.as_mut() {
                    for _ in 0..ticks {
                        replica.tick();
                    }
                    self.steps += 1;
                }
                self.process_ready(i);
            }
            self.check_promises();
            if !faulty && self.converged() {
                converged = true;
                break;
            }
            if !self.checker.violations().is_empty() && self.checker.violations().len() > 20 {
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
            if let Some(replica) = &node.replica {
                violations.extend(replica.violations().iter().cloned());
            }
        }
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
            faults: self.faults,
            violations,
        }
    }

    // ----- faults ----------------------------------------------------------

    fn inject_faults(&mut self) {
        let f = self.options.faults.clone();
        let n = self.options.nodes;
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
            let victim = match self.current_leader() {
                Some(leader) if self.rng.chance(1, 2) => leader.0 as usize,
                _ => self.rng.range(0, u64::from(n)) as usize,
            };
            if self.nodes[victim].replica.is_some() {
                let down = self.rng.range(5, 300);
                self.crash(victim, down);
            }
        }
    }

    fn heal_everything(&mut self) {
        self.network.heal();
        self.network.calm();
        for node in &mut self.nodes {
            node.down_until = node.down_until.min(self.now_tick);
        }
    }

    fn crash(&mut self, index: usize, down_ticks: u64) {
        let others_recovering = self
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != index && n.disk.recovering);
        // No draw at all when the fault is off, so seeds without it replay
        // as they did before it existed.
        let disk_loss = self.options.faults.disk_loss_per_mille;
        let lose = disk_loss > 0
            && self.now_tick <= self.options.fault_ticks
            && !others_recovering
            && self.rng.chance(disk_loss, 1000);
        let (tail, cut) = if lose {
            (self.rng.chance(1, 2), self.rng.range(1, 6) as usize)
        } else {
            (false, 0)
        };
        let node = &mut self.nodes[index];
        node.replica = None;
        node.disk.crash();
        if lose {
            if tail {
                node.disk.cut_synced_tail(cut);
                self.faults.synced_tails_cut += 1;
            } else {
                node.disk.lose_everything();
                self.faults.disks_lost += 1;
            }
            node.last_promised_seen = node.disk.durable.promised;
            node.last_snapshot_slot = node.disk.snapshot.as_ref().map_or(Slot::ZERO, |(s, _)| *s);
        }
        node.down_until = self.now_tick + down_ticks;
        self.faults.crashes += 1;
    }

    fn restart_due_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_some() || self.nodes[i].down_until > self.now_tick {
                continue;
            }
            let seed = self.rng.next_u64();
            let node = &mut self.nodes[i];
            node.incarnation += 1;
            if self.options.lose_log_on_restart {
                node.disk.lose_log();
            }
            if self.options.forget_promise_on_restart {
                node.disk.forget_promise();
            }
            // Restore the store from the durable snapshot, then let the
            // replica re-apply the chosen log after it.
            node.kv = new_store(self.options.kv, self.options.ignore_request_stamps);
            if let Some((slot, image)) = &node.disk.snapshot {
                match node.kv.restore(image) {
                    Ok(()) => {
                        check_restored(&mut self.checker, NodeId(i as u32), *slot, image, &node.kv)
                    }
                    Err(error) => self
                        .checker
                        .violation(format!("n{i}: snapshot failed to restore: {error}")),
                }
            }
            let mut durable = node.disk.durable.clone();
            durable.recovering = node.disk.recovering;
            let replica = Replica::new(config_for(&self.options, NodeId(i as u32)), durable, seed);
            let durable_promise = node.disk.durable_promise_high_water;
            if replica.promised() < durable_promise {
                self.checker.violation(format!(
                    "promise monotonicity: n{i} restarted with promise {} below the {} it made durable",
                    replica.promised(),
                    durable_promise
                ));
            }
            node.last_promised_seen = replica.promised();
            node.replica = Some(replica);
            self.process_ready(i);
        }
    }

    // ----- clients ---------------------------------------------------------

    fn drive_clients(&mut self, issue_new: bool) {
        for c in 0..self.clients.len() {
            match self.clients[c].state.clone() {
                ClientState::Idle { next_tick } if next_tick <= self.now_tick => {
                    if self.clients[c].current.is_none() {
                        if !issue_new {
                            continue;
                        }
                        if self.rng.chance(self.options.faults.read_per_mille, 1000) {
                            self.start_read(c);
                            continue;
                        }
                        let command = workload::draw_command(&mut self.rng);
                        let client = &mut self.clients[c];
                        client.seq += 1;
                        client.current = Some(ClientRequest {
                            id: RequestId {
                                client_id: client.client_id,
                                seq: client.seq,
                            },
                            command,
                            stamped: None,
                        });
                    }
                    self.submit(c);
                }
                ClientState::Reading { deadline_tick, .. } if deadline_tick <= self.now_tick => {
                    self.clients[c].state = ClientState::Idle {
                        next_tick: self.now_tick + 1,
                    };
                }
                ClientState::Waiting { deadline_tick, .. } if deadline_tick <= self.now_tick => {
                    // No answer: retry elsewhere with the same id and payload
                    // (the store's sessions make that safe), at once or, for
                    // a slow client, much later.
                    if self.clients[c].slow {
                        let wait = self.rng.range(2, 7) * CLIENT_TIMEOUT_TICKS;
                        self.clients[c].state = ClientState::Idle {
                            next_tick: self.now_tick + wait,
                        };
                    } else {
                        self.submit(c);
                    }
                }
                _ => {}
            }
        }
    }

    fn start_read(&mut self, c: usize) {
        let target = self.rng.range(0, u64::from(self.options.nodes)) as usize;
        self.next_read_id += 1;
        let read_id = self.next_read_id;
        let floor = self.checker.applied_floor();
        let now = self.now_tick;
        let retry = now + self.rng.range(1, 20);
        let started = self.nodes[target]
            .replica
            .as_mut()
            .is_some_and(|replica| replica.read_index(read_id).is_ok());
        let state = if started {
            ClientState::Reading {
                node: NodeId(target as u32),
                read_id,
                floor,
                deadline_tick: now + CLIENT_TIMEOUT_TICKS,
            }
        } else {
            ClientState::Idle { next_tick: retry }
        };
        self.clients[c].state = state;
    }

    fn on_read_result(&mut self, node: NodeId, read_id: u64, read_index: Option<Slot>) {
        for client in &mut self.clients {
            let ClientState::Reading {
                node: n,
                read_id: r,
                floor,
                ..
            } = client.state
            else {
                continue;
            };
            if n != node || r != read_id {
                continue;
            }
            client.state = ClientState::Idle {
                next_tick: self.now_tick + 1,
            };
            if let Some(read_index) = read_index {
                self.reads_served += 1;
                if read_index < floor {
                    self.checker.violation(format!(
                        "linearizable read: {node} answered read {read_id} at index {read_index}, \
                         but slot {} was applied before the read began",
                        floor.0 - 1
                    ));
                }
            }
        }
    }

    /// Hands the client's request to a random replica, as a server would
    /// take it: stamped there on the first hand-off, answered from the
    /// session table if that already decides it, else proposed.
    fn submit(&mut self, c: usize) {
        let target = self.rng.range(0, u64::from(self.options.nodes)) as usize;
        let now = self.now_tick;
        let retry_tick = now + self.rng.range(1, 20);
        let node = &mut self.nodes[target];
        let (Some(replica), Some(request)) = (node.replica.as_mut(), &mut self.clients[c].current)
        else {
            self.clients[c].state = ClientState::Idle {
                next_tick: retry_tick,
            };
            return;
        };
        let (since, payload) = match &request.stamped {
            Some(stamped) => stamped.clone(),
            None => {
                let since = node.kv.applied_upto();
                let payload = KvRequest::new(since, request.command.clone()).encode();
                request.stamped = Some((since, payload.clone()));
                self.checker.issued(&Proposal {
                    id: request.id,
                    payload: payload.clone(),
                });
                (since, payload)
            }
        };
        let id = request.id;
        if let Some(output) = node.kv.precheck(id, since) {
            self.answer_client(c, NodeId(target as u32), &output);
            return;
        }
        let state = match replica.propose(Proposal { id, payload }) {
            Ok(_) => ClientState::Waiting {
                node: NodeId(target as u32),
                deadline_tick: now + CLIENT_TIMEOUT_TICKS,
            },
            Err(_) => ClientState::Idle {
                next_tick: retry_tick,
            },
        };
        self.clients[c].state = state;
    }

    /// Node `node` applied request `id` with `output`: a client waiting on
    /// that node for that request is answered.
    fn on_client_result(&mut self, node: NodeId, id: RequestId, output: &ApplyOutput) {
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            let waiting_here =
                matches!(client.state, ClientState::Waiting { node: n, .. } if n == node);
            if waiting_here && client.current.as_ref().is_some_and(|r| r.id == id) {
                self.answer_client(c, node, output);
            }
        }
    }

    fn answer_client(&mut self, c: usize, node: NodeId, output: &ApplyOutput) {
        let Some(request) = self.clients[c].current.take() else {
            return;
        };
        self.clients[c].state = ClientState::Idle {
            next_tick: self.now_tick + 1,
        };
        match Answer::of(output) {
            Answer::Executed(slot) => self.checker.acked(request.id, slot),
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

    fn on_client_dropped(&mut self, node: NodeId, id: RequestId) {
        for client in &mut self.clients {
            let waiting_here =
                matches!(client.state, ClientState::Waiting { node: n, .. } if n == node);
            if waiting_here && client.current.as_ref().is_some_and(|r| r.id == id) {
                client.state = ClientState::Idle {
                    next_tick: self.now_tick + 1,
                };
            }
        }
    }

    // ----- network ---------------------------------------------------------

    fn deliver_messages(&mut self) {
        let due = self.network.take_due(self.now_tick, &mut self.rng);
        for envelope in due {
            let to = envelope.to.0 as usize;
            if let Some(replica) = self.nodes[to].replica.as_mut() {
                replica.step(envelope.from, envelope.message);
                self.steps += 1;
            }
        }
    }

    // ----- the driver: persist, then send, then apply ----------------------

    fn process_ready(&mut self, index: usize) {
        let Some(replica) = self.nodes[index].replica.as_mut() else {
            return;
        };
        let mut ready = replica.ready();
        if ready.is_empty() {
            return;
        }
        let me = NodeId(index as u32);
        // 0. Messages that need no durability may leave before the fsync
        // (a crash below then has sent them: the simulator covers that).
        let messages = std::mem::take(&mut ready.messages);
        let (early, durable_only): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|e| ready.may_send_before_sync(&e.message));
        let just_won = self.nodes[index]
            .replica
            .as_ref()
            .is_some_and(|r| r.role() == paxlog_core::Role::Leader)
            && ready
                .persist
                .iter()
                .any(|r| matches!(r, PersistRecord::Promised(_)));
        if just_won
            && self.now_tick <= self.options.fault_ticks
            && self
                .rng
                .chance(self.options.faults.crash_after_win_per_mille, 1000)
        {
            // Dies while sending, before the fsync: the early messages to
            // one peer are out, nothing of this turn is durable, and it is
            // back within a few ticks (the case where another quorum can
            // then see the same ballot with other values).
            let lucky = NodeId(self.rng.range(0, u64::from(self.options.nodes)) as u32);
            for envelope in early {
                if envelope.to == lucky {
                    self.send(envelope);
                }
            }
            self.faults.crashes_after_win += 1;
            let down = self.rng.range(1, 4);
            self.crash(index, down);
            return;
        }
        for envelope in early {
            self.send(envelope);
        }
        // 1. Persist. A crash in the middle keeps a prefix of the batch (the
        // rest was never synced) and sends nothing more.
        let torn = !ready.persist.is_empty()
            && self.now_tick <= self.options.fault_ticks
            && self
                .rng
                .chance(self.options.faults.torn_write_per_mille, 1000)
            && self.rng.chance(1, 20);
        if torn {
            let keep = self.rng.range(0, ready.persist.len() as u64) as usize;
            self.nodes[index]
                .disk
                .write(&ready.persist[..keep], &mut self.checker, me);
            self.faults.torn_writes += 1;
            let down = self.rng.range(5, 200);
            self.crash(index, down);
            return;
        }
        self.nodes[index]
            .disk
            .write(&ready.persist, &mut self.checker, me);
        // 2. Send, asserting each promise/accept is durable first.
        for envelope in durable_only {
            self.check_durable_before_send(index, &envelope);
            self.send(envelope);
        }
        // 3. Apply in order.
        for (slot, entry) in ready.apply {
            let Some(output) = self.apply_entry(index, slot, &entry) else {
                continue;
            };
            if let Some(id) = entry.request_id() {
                self.on_client_result(me, id, &output);
            }
        }
        self.maybe_snapshot(index);
        // 4. Events.
        for event in ready.events {
            match event {
                Event::ProposalDropped { id, .. } => self.on_client_dropped(me, id),
                Event::Recovered { .. } => {
                    // After this turn's records were written: the mark goes.
                    self.nodes[index].disk.recovering = false;
                    self.faults.recoveries += 1;
                }
                Event::ReadReady {
                    read_id,
                    read_index,
                } => self.on_read_result(me, read_id, Some(read_index)),
                Event::ReadFailed { read_id, .. } => self.on_read_result(me, read_id, None),
                Event::SnapshotNeeded { from, .. } => {
                    self.transfer_snapshot(from.0 as usize, index)
                }
                Event::LeaderChanged {
                    leader: Some(l), ..
                } if l == me => self.leader_changes += 1,
                _ => {}
            }
        }
    }

    /// Applies one chosen entry to node `index`'s store and reports it to
    /// the checkers; `None` if it could not be applied in order.
    fn apply_entry(&mut self, index: usize, slot: Slot, entry: &Entry) -> Option<ApplyOutput> {
        let me = NodeId(index as u32);
        let kv = &mut self.nodes[index].kv;
        let at = kv.applied_upto();
        if slot != at {
            self.checker.violation(format!(
                "applied prefix: n{index} applied slot {slot} while at {at}"
            ));
            if slot < at {
                // Applied already: the store would refuse it (it panics).
                return None;
            }
            // The store only applies in order: fill the gap with no-ops so
            // the run goes on and the checker reports this once.
            for missing in at.until(slot) {
                kv.apply(missing, &Entry::Noop);
            }
        }
        let sessions_before = kv.session_count();
        let had_session = entry
            .request_id()
            .is_some_and(|id| kv.last_seq(id.client_id).is_some());
        let output = kv.apply(slot, entry);
        let opened = entry.request_id().is_some() && !had_session && !output.duplicate;
        let expired = (sessions_before + usize::from(opened)).saturating_sub(kv.session_count());
        let sample = slot.next().0 % STATE_SAMPLE_EVERY_SLOTS == 0;
        let state = sample.then(|| digest(&kv.snapshot()));
        if self.checker.applied(me, slot, entry, &output) {
            self.sessions_expired += expired as u64;
        }
        if let Some(state) = state {
            self.checker.state_at(me, slot.next(), state);
        }
        Some(output)
    }

    fn send(&mut self, envelope: Envelope) {
        self.check_sent(&envelope);
        let (dropped, duplicated) =
            self.network
                .send(envelope, self.now_tick, &self.options.faults, &mut self.rng);
        self.faults.dropped += dropped;
        self.faults.duplicated += duplicated;
    }

    /// Invariants on what leaves a replica, at the moment it leaves.
    fn check_sent(&mut self, envelope: &Envelope) {
        let from = envelope.from.0 as usize;
        if let Message::Prepare { ballot, .. } = &envelope.message {
            // A campaign's ballot is durable before its Prepares leave:
            // else a restarted replica campaigns with it again, and
            // promises that answered the first campaign count for the second.
            let campaigned = self.nodes[from].disk.durable.campaigned;
            if campaigned < *ballot && self.send_violations_reported.insert((from, "campaign")) {
                self.checker.violation(format!(
                    "campaign ballot durable: n{from} sent prepare at {ballot} with campaign {campaigned} on disk"
                ));
            }
            return;
        }
        let ballot = match &envelope.message {
            Message::Accept { ballot, .. } | Message::Heartbeat { ballot, .. } => *ballot,
            _ => return,
        };
        // A leader's ballot is durable before its Phase 2 messages: else a
        // crash lets it campaign with the same ballot again.
        let durable = self.nodes[from].disk.durable.promised;
        if ballot.node == envelope.from
            && durable < ballot
            && self.send_violations_reported.insert((from, "leader"))
        {
            self.checker.violation(format!(
                "leader ballot durable: n{from} sent {} at ballot {ballot} with promise {durable} on disk",
                envelope.message.kind()
            ));
        }
        if let Message::Accept {
            ballot,
            first_slot,
            entries,
            ..
        } = &envelope.message
        {
            for (offset, entry) in entries.iter().enumerate() {
                let slot = Slot(first_slot.0 + offset as u64);
                self.checker.value_sent(*ballot, slot, entry);
            }
        }
    }

    fn check_durable_before_send(&mut self, index: usize, envelope: &Envelope) {
        let disk = &self.nodes[index].disk.durable;
        match &envelope.message {
            Message::Promise { ballot, .. } if disk.promised < *ballot => {
                self.checker.violation(format!(
                    "persist before send: n{index} sent promise {ballot} before it was durable"
                ));
            }
            Message::Accepted {
                ballot,
                first_slot,
                end_slot,
                ..
            } => {
                for slot in first_slot.until(*end_slot) {
                    if slot < disk.log_start || disk.chosen.contains_key(&slot) {
                        continue;
                    }
                    let durable = disk.accepted.get(&slot).is_some_and(|(b, _)| b >= ballot);
                    if !durable {
                        self.checker.violation(format!(
                            "persist before send: n{index} acknowledged slot {slot} at {ballot} before it was durable"
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn maybe_snapshot(&mut self, index: usize) {
        let every = self.options.faults.snapshot_every_slots;
        let node = &mut self.nodes[index];
        let applied = node.kv.applied_upto();
        if applied.0 < node.last_snapshot_slot.0 + every {
            return;
        }
        let image = node.kv.snapshot();
        self.checker
            .state_at(NodeId(index as u32), applied, digest(&image));
        node.disk.save_snapshot(applied, image);
        node.last_snapshot_slot = applied;
        if let Some(replica) = node.replica.as_mut() {
            replica.compact(applied);
        }
        self.faults.snapshots_taken += 1;
    }

    /// Ships `from`'s durable snapshot to `to` (instantly, if they can talk).
    fn transfer_snapshot(&mut self, from: usize, to: usize) {
        if self.nodes[from].replica.is_none() || !self.network.connected(from, to) {
            return;
        }
        let Some((slot, image)) = self.nodes[from].disk.snapshot.clone() else {
            return;
        };
        // As the server does: restore into a fresh store and check it, let
        // the core install it (it refuses one not ahead of what it handed
        // out), and only then swap the store.
        let mut kv = new_store(self.options.kv, self.options.ignore_request_stamps);
        if let Err(error) = kv.restore(&image) {
            self.checker.violation(format!(
                "n{to}: received snapshot failed to restore: {error}"
            ));
            return;
        }
        check_restored(&mut self.checker, NodeId(to as u32), slot, &image, &kv);
        let node = &mut self.nodes[to];
        let installed = node
            .replica
            .as_mut()
            .is_some_and(|replica| replica.install_snapshot(slot));
        if !installed {
            return;
        }
        node.kv = kv;
        node.disk.save_snapshot(slot, image);
        node.last_snapshot_slot = slot;
        self.faults.snapshots_installed += 1;
        self.process_ready(to);
    }

    // ----- checks ----------------------------------------------------------

    fn check_promises(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(replica) = &node.replica {
                if replica.promised() < node.last_promised_seen {
                    self.checker.violation(format!(
                        "promise monotonicity: n{i} promise went from {} to {}",
                        node.last_promised_seen,
                        replica.promised()
                    ));
                }
                node.last_promised_seen = replica.promised();
            }
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .find(|r| r.role() == paxlog_core::Role::Leader)
            .map(|r| r.id())
    }

    fn converged(&self) -> bool {
        let busy =
            |c: &SimClient| c.current.is_some() || matches!(c.state, ClientState::Reading { .. });
        if self.clients.iter().any(busy) {
            return false;
        }
        let mut applied = None;
        for node in &self.nodes {
            let Some(replica) = &node.replica else {
                return false;
            };
            if replica.chosen_upto() != replica.applied_upto() {
                return false;
            }
            match applied {
                None => applied = Some(replica.applied_upto()),
                Some(a) if a != replica.applied_upto() => return false,
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
            .map(|(i, n)| match &n.replica {
                Some(r) => format!(
                    "n{i} {:?} chosen {} applied {}",
                    r.role(),
                    r.chosen_upto(),
                    r.applied_upto()
                ),
                None => format!("n{i} down"),
            })
            .collect();
        format!("{pending} client requests pending; {}", nodes.join(", "))
    }

    fn final_checks(&mut self, converged: bool) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(replica) = &node.replica {
                for (slot, entry) in replica.chosen_entries() {
                    self.checker.chosen_seen(NodeId(i as u32), slot, entry);
                }
            }
        }
        if converged {
            // Every replica is up and has applied the same rounds: the same
            // state, and counters that grew once per increment that ran.
            for (i, node) in self.nodes.iter().enumerate() {
                let me = NodeId(i as u32);
                let kv = &node.kv;
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
                            "exactly once: {counter} is {value:?} on {me}, but {ran} distinct \
                             requests incremented it"
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
    cfg.heartbeat_interval_ticks = 3;
    cfg.election_timeout_ticks = 20;
    cfg.max_inflight_slots = 64;
    cfg.max_entries_per_message = 16;
    cfg.bugs = options.bugs.clone();
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
}

impl SimOptions {
    pub fn with_bug(mut self, bug: Option<Bug>) -> SimOptions {
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
