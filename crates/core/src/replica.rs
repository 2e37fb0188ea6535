//! One replica of the Multi-Paxos log: acceptor, learner and (when elected)
//! the stable leader, as a pure state machine.
//!
//! Inputs: [`Replica::step`] (a peer message), [`Replica::tick`] (time),
//! [`Replica::propose`] and [`Replica::read_index`] (clients). Output: the
//! [`Ready`] returned by [`Replica::ready`], which the driver must persist,
//! then send, then apply (see `ready.rs`).

use crate::durable::DurableState;
use crate::message::{AcceptedValue, Envelope, Message};
use crate::ready::{DropReason, Event, PersistRecord, ReadFailure, Ready};
use crate::rng::SplitMix64;
use crate::types::{
    ids_of, Ballot, Entry, Membership, NodeId, Proposal, RequestId, Slot, MAX_NODE_ID,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tunables. Times are in ticks; the driver decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Number of replicas a new cluster is bootstrapped with; their ids are
    /// `0..cluster_size` and all vote. At most 64. Ignored when
    /// `membership` is set.
    pub cluster_size: u32,
    /// The membership in force at the start of the log (`log_start`), as the
    /// snapshot the replica starts from recorded it. `None`: the bootstrap
    /// membership, `Membership::initial(cluster_size)`.
    pub membership: Option<Membership>,
    /// A leader sends a heartbeat (carrying the commit index) this often.
    pub heartbeat_interval_ticks: u64,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` runs Phase 1.
    pub election_timeout_ticks: u64,
    /// At most this many slots past the chosen prefix may be in flight.
    pub max_inflight_slots: u64,
    /// Client proposals queued at the leader, waiting for a slot.
    pub max_pending_proposals: usize,
    /// Entries per Accept or CatchUpReply message.
    pub max_entries_per_message: usize,
    /// Bytes of entries per Accept or CatchUpReply message (soft bound).
    pub max_bytes_per_message: usize,
    /// Linearizable reads waiting for a leadership confirmation round.
    pub max_pending_reads: usize,
    /// Leader leases: a leader that a quorum acknowledged recently answers
    /// linearizable reads without a confirmation round. Safe while clocks
    /// run at rates that differ by at most `max_clock_drift_percent`.
    pub leases: bool,
    pub max_clock_drift_percent: u64,
    /// Deliberately broken variants, for proving the simulator's checkers.
    pub bugs: Bugs,
}

impl Config {
    pub fn new(id: NodeId, cluster_size: u32) -> Config {
        Config {
            id,
            cluster_size,
            membership: None,
            heartbeat_interval_ticks: 5,
            election_timeout_ticks: 50,
            max_inflight_slots: 512,
            max_pending_proposals: 50_000,
            max_entries_per_message: 1024,
            max_bytes_per_message: 4 << 20,
            max_pending_reads: 50_000,
            leases: true,
            max_clock_drift_percent: 10,
            bugs: Bugs::default(),
        }
    }

    /// How long a lease lasts after the heartbeat that anchors it was sent:
    /// a follower that acknowledged it will not promise another candidate
    /// for `election_timeout_ticks` of its own clock after receiving it, so
    /// the leader keeps a margin for drift plus a tick of rounding either side.
    pub fn lease_ticks(&self) -> u64 {
        if !self.leases {
            return 0;
        }
        let drift = self.max_clock_drift_percent.min(90);
        (self.election_timeout_ticks * (100 - drift) / 100).saturating_sub(2)
    }
}

/// Test-only switches that break the protocol on purpose. Every field off is
/// the correct protocol; the simulator's tests turn one on and assert that a
/// checker reports a violation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Phase 1 and Phase 2 succeed with a single vote.
    pub quorum_of_one: bool,
    /// A new leader ignores values its peers accepted and fills with no-ops.
    pub ignore_promised_values: bool,
    /// A new leader fills holes with an invented command instead of a no-op.
    pub invent_values: bool,
    /// Never emit this slot for application.
    pub skip_apply_slot: Option<u64>,
    /// No catch-up, neither pulled nor pushed.
    pub no_catch_up: bool,
    /// Any replica answers a linearizable read at once from its own chosen
    /// prefix (a local read passed off as linearizable).
    pub local_reads: bool,
    /// A `Ready` that raises this replica's own promise may still send its
    /// accepts and heartbeats before the fsync (the ballot-reuse bug).
    pub early_send_at_new_ballot: bool,
    /// A replica that may have forgotten its promises and accepts votes at
    /// once instead of recovering first.
    pub skip_recovery: bool,
    /// A candidate counts only a majority of the membership governing its
    /// chosen prefix, ignoring membership changes it will re-propose (their
    /// voters may form a majority that shares nobody with it).
    pub old_config_quorum_only: bool,
    /// Record local invariant violations instead of panicking (set whenever
    /// a bug is injected, also from outside the core, e.g. a lossy disk).
    pub record_violations: bool,
}

impl Bugs {
    fn any(&self) -> bool {
        *self != Bugs::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader is known; retry later or elsewhere.
    NoLeader,
    /// Too much work queued; retry later.
    Overloaded,
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NoLeader => write!(f, "no leader is known"),
            ProposeError::Overloaded => write!(f, "too many requests are queued"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a membership change was not placed in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChangeError {
    /// Only the leader places changes; retry there.
    NotLeader(Option<NodeId>),
    /// Another change is not chosen yet, or this leader has not yet chosen
    /// the slots it inherited (it may not know the latest membership).
    InProgress,
    /// The in-flight window is full; retry shortly.
    Overloaded,
    /// Not a change that may follow the current membership.
    Invalid(String),
}

impl std::fmt::Display for ConfigChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigChangeError::NotLeader(Some(leader)) => {
                write!(f, "not the leader; the leader is {leader}")
            }
            ConfigChangeError::NotLeader(None) => write!(f, "no leader is known"),
            ConfigChangeError::InProgress => {
                write!(f, "another membership change is in progress")
            }
            ConfigChangeError::Overloaded => write!(f, "too many requests are in flight"),
            ConfigChangeError::Invalid(why) => write!(f, "invalid membership change: {why}"),
        }
    }
}

impl std::error::Error for ConfigChangeError {}

/// Where a proposal went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued at this replica, which leads.
    Queued,
    /// Forwarded to the leader.
    Forwarded(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerReport {
    pub id: NodeId,
    /// Ticks since this leader last heard the peer (leader only).
    pub last_heard_ticks_ago: Option<u64>,
    /// The peer's chosen prefix as last reported to this replica.
    pub chosen_upto: Slot,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusReport {
    pub id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub promised: Ballot,
    pub leader_ballot: Option<Ballot>,
    pub log_start: Slot,
    pub chosen_upto: Slot,
    pub applied_upto: Slot,
    pub next_slot: Option<Slot>,
    pub pending_proposals: usize,
    pub inflight_slots: usize,
    pub peers: Vec<PeerReport>,
    /// Set while this replica recovers forgotten state and does not vote.
    pub recovering: Option<RecoveryStatus>,
}

#[derive(Clone, Debug)]
struct LogSlot {
    /// Ballot of the last accept (meaningless once chosen through catch-up).
    ballot: Ballot,
    entry: Entry,
    chosen: bool,
}

#[derive(Clone, Debug)]
struct PromiseInfo {
    log_start: Slot,
    accepted: Vec<AcceptedValue>,
}

#[derive(Debug)]
struct Candidate {
    ballot: Ballot,
    granted: BTreeMap<NodeId, PromiseInfo>,
    /// Promises still coming in pages, with the slot the next one starts
    /// at (see `Message::Promise::complete`).
    pages: BTreeMap<NodeId, (PromiseInfo, Slot)>,
    refused: BTreeSet<NodeId>,
    last_prepare_tick: u64,
    /// Voters of memberships this candidate found in the promises (values
    /// it will re-propose), asked as well: each such membership needs a
    /// majority of its own (see `election_quorums_met`).
    also_asked: u64,
}

#[derive(Debug)]
struct Inflight {
    /// Bit i set: replica i accepted this slot at the leader's ballot.
    acks: u64,
    sent_tick: u64,
}

#[derive(Debug, Default, Clone)]
struct PeerProgress {
    last_heard_tick: Option<u64>,
    chosen_upto: Slot,
    last_push_tick: Option<u64>,
    acked_read_round: u64,
}

#[derive(Debug)]
struct PendingRead {
    read_id: u64,
    /// `None`: a read at this replica; `Some(n)`: forwarded by follower n.
    origin: Option<NodeId>,
    read_index: Slot,
    round: u64,
}

#[derive(Debug)]
struct Leader {
    ballot: Ballot,
    next_slot: Slot,
    /// Every slot below this was inherited from Phase 1; reads must wait for it.
    inherited_upto: Slot,
    /// The slot of a membership change not yet chosen: no slot after it is
    /// given a new value, nor counted as chosen, until it is (its quorum
    /// depends on it).
    config_barrier: Option<Slot>,
    /// Proposals waiting for a slot, with the replica that forwarded them.
    pending: VecDeque<(Proposal, Option<NodeId>)>,
    inflight: BTreeMap<Slot, Inflight>,
    peers: Vec<PeerProgress>,
    elected_tick: u64,
    last_heartbeat_tick: u64,
    commit_sent: Slot,
    /// Every heartbeat broadcast starts a new round; reads wait for a quorum
    /// to acknowledge a round that started after them.
    read_round_started: u64,
    /// When recent rounds were sent, for the lease.
    round_sent_tick: VecDeque<(u64, u64)>,
    reads: VecDeque<PendingRead>,
}

/// A replica that may have forgotten promises and accepts, until it has
/// learned them back from a majority of the others (see `recovery_tick`).
#[derive(Debug)]
struct Recovery {
    /// No query before this tick: by then every Phase 1 that could have
    /// used a promise this replica forgot has completed or been abandoned.
    quiet_until_tick: u64,
    nonce: u64,
    /// Complete replies from the others, for `nonce`.
    replies: BTreeMap<NodeId, RecoveryReport>,
    /// Replies still coming in pages (a peer's accepted values beyond its
    /// chosen prefix can exceed one message), and the slot the next page
    /// starts at. Without pages, a recovering replica whose vote is needed
    /// to choose anything (a 2-replica cluster) would ask from the same
    /// slot forever.
    pages: BTreeMap<NodeId, (RecoveryReport, Slot)>,
    last_query_tick: Option<u64>,
    /// Voters of memberships found among the values it will adopt
    /// (changes it has not learned are chosen), asked as well: each such
    /// membership needs a majority of its own (see `recovery_quorums_met`).
    also_asked: u64,
}

#[derive(Debug, Clone)]
struct RecoveryReport {
    promised: Ballot,
    chosen_upto: Slot,
    accepted: Vec<AcceptedValue>,
}

/// What `/status` shows of a recovery in progress.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecoveryStatus {
    /// Why it cannot vote yet, in words.
    pub waiting_for: String,
    /// Replies from other replicas so far, and how many it needs.
    pub replies: usize,
    pub replies_needed: usize,
    /// The chosen prefix it must reach before it votes again.
    pub target_chosen_upto: Option<Slot>,
}

/// Rounds remembered for lease anchoring.
const LEASE_ROUNDS_KEPT: usize = 256;

#[derive(Debug)]
enum RoleState {
    Follower,
    Candidate(Candidate),
    Leader(Leader),
}

pub struct Replica {
    cfg: Config,
    rng: SplitMix64,
    now_tick: u64,

    // Acceptor (durable).
    promised: Ballot,
    /// Highest ballot seen anywhere; a new candidacy goes above it.
    highest_seen: Ballot,
    log: BTreeMap<Slot, LogSlot>,

    // Learner.
    log_start: Slot,
    chosen_upto: Slot,
    applied_upto: Slot,
    /// Memberships by the first slot they govern: one at `log_start`, and
    /// one after every chosen `Entry::Config` in the chosen prefix.
    memberships: BTreeMap<Slot, Membership>,

    // Leadership as seen from here.
    role: RoleState,
    leader: Option<(NodeId, Ballot)>,
    last_leader_contact_tick: u64,
    election_deadline_tick: u64,

    // Catch-up: the best-known peer ahead of us, and when we last asked.
    catch_up_source: Option<(NodeId, Slot)>,
    catch_up_asked_tick: Option<u64>,
    snapshot_asked_tick: Option<u64>,

    /// Proposals this replica placed in slots as leader (with the replica
    /// that forwarded them), until those slots are chosen: if another value
    /// wins, whoever waits for the proposal is told.
    placed: BTreeMap<Slot, (RequestId, Option<NodeId>)>,
    forward_buffer: Vec<Proposal>,
    recovery: Option<Recovery>,
    /// Peers whose messages showed a chosen slot with another value than
    /// ours (a peer that lost or corrupted its state): their messages are
    /// refused from then on.
    distrusted: u64,
    /// Invariant violations seen locally (only with `bugs` on; otherwise a
    /// violation panics).
    violations: Vec<String>,
    /// Slots this replica accepted in the `Ready` being built (not durable
    /// yet): a slot chosen with one of these votes counted was chosen by a
    /// vote that may still be lost (see `Ready::apply_waits_for_sync`).
    unsynced_accepts: BTreeSet<Slot>,
    out: Ready,
}

fn bit(node: NodeId) -> u64 {
    1u64 << node.0
}

impl Replica {
    /// Builds a replica from its durable state (empty for a new replica).
    /// The driver must already have restored the state machine from the
    /// snapshot covering every slot below `durable.log_start`; the first
    /// `ready()` re-applies the chosen entries after it.
    pub fn new(cfg: Config, durable: DurableState, seed: u64) -> Replica {
        assert!(
            (1..=64).contains(&cfg.cluster_size),
            "cluster size must be 1..=64"
        );
        assert!(cfg.id.0 <= MAX_NODE_ID, "node id above {MAX_NODE_ID}");
        let base_membership = cfg
            .membership
            .clone()
            .unwrap_or_else(|| Membership::initial(cfg.cluster_size));
        assert!(cfg.heartbeat_interval_ticks >= 1 && cfg.election_timeout_ticks >= 2);
        let mut log = BTreeMap::new();
        for (slot, (ballot, entry)) in durable.accepted {
            log.insert(
                slot,
                LogSlot {
                    ballot,
                    entry,
                    chosen: false,
                },
            );
        }
        for (slot, entry) in durable.chosen {
            let ballot = log.get(&slot).map_or(Ballot::ZERO, |s: &LogSlot| s.ballot);
            log.insert(
                slot,
                LogSlot {
                    ballot,
                    entry,
                    chosen: true,
                },
            );
        }
        let recovering = durable.recovering && !cfg.bugs.skip_recovery;
        let mut replica = Replica {
            rng: SplitMix64::new(seed ^ (u64::from(cfg.id.0) << 32)),
            now_tick: 0,
            promised: durable.promised,
            highest_seen: durable.promised.max(durable.campaigned),
            log,
            log_start: durable.log_start,
            chosen_upto: durable.log_start,
            applied_upto: durable.log_start,
            memberships: BTreeMap::from([(durable.log_start, base_membership)]),
            role: RoleState::Follower,
            leader: None,
            last_leader_contact_tick: 0,
            election_deadline_tick: 0,
            catch_up_source: None,
            catch_up_asked_tick: None,
            snapshot_asked_tick: None,
            placed: BTreeMap::new(),
            forward_buffer: Vec::new(),
            recovery: None,
            distrusted: 0,
            violations: Vec::new(),
            unsynced_accepts: BTreeSet::new(),
            out: Ready::default(),
            cfg,
        };
        if recovering {
            // Twice the longest election timeout, stretched by the drift
            // bound: a candidate abandons a Phase 1 by then.
            let t = replica.cfg.election_timeout_ticks;
            let drift = replica.cfg.max_clock_drift_percent.min(90);
            let quiet = 2 * (2 * t) * (100 + drift) / 100;
            let nonce = replica.rng.next_u64();
            replica.recovery = Some(Recovery {
                quiet_until_tick: quiet,
                nonce,
                replies: BTreeMap::new(),
                pages: BTreeMap::new(),
                last_query_tick: None,
                also_asked: 0,
            });
        }
        replica.reset_election_timer(0);
        replica.advance_chosen();
        replica
    }

    // ----- accessors -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn promised(&self) -> Ballot {
        self.promised
    }

    pub fn log_start(&self) -> Slot {
        self.log_start
    }

    /// Every slot below this is chosen and known here.
    pub fn chosen_upto(&self) -> Slot {
        self.chosen_upto
    }

    /// Every slot below this has been handed out for application.
    pub fn applied_upto(&self) -> Slot {
        self.applied_upto
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader.map(|(node, _)| node)
    }

    /// The membership in force after the chosen prefix (the newest chosen).
    pub fn membership(&self) -> &Membership {
        self.memberships
            .values()
            .next_back()
            .expect("a membership governs log_start")
    }

    /// The membership governing `slot`, as far as the chosen prefix tells.
    pub fn membership_at(&self, slot: Slot) -> &Membership {
        self.memberships
            .range(..=slot)
            .next_back()
            .or_else(|| self.memberships.iter().next())
            .map(|(_, m)| m)
            .expect("a membership governs log_start")
    }

    /// The memberships this replica knows, by the first slot each governs:
    /// the one in force at `log_start`, then one after every chosen change.
    pub fn memberships(&self) -> impl Iterator<Item = (Slot, &Membership)> {
        self.memberships.iter().map(|(slot, m)| (*slot, m))
    }

    /// May this replica vote (and so campaign) under the newest membership?
    pub fn is_voter(&self) -> bool {
        self.membership().is_voter(self.cfg.id)
    }

    /// The chosen value of `slot`, if known and not compacted.
    pub fn chosen_entry(&self, slot: Slot) -> Option<&Entry> {
        self.log.get(&slot).filter(|s| s.chosen).map(|s| &s.entry)
    }

    /// Chosen slots known here (including any beyond the contiguous prefix).
    pub fn chosen_entries(&self) -> impl Iterator<Item = (Slot, &Entry)> {
        self.log
            .iter()
            .filter(|(_, s)| s.chosen)
            .map(|(slot, s)| (*slot, &s.entry))
    }

    /// Does this replica still recover forgotten state (and not vote)?
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn status(&self) -> StatusReport {
        let (next_slot, pending, inflight, leader_ballot) = match &self.role {
            RoleState::Leader(l) => (
                Some(l.next_slot),
                l.pending.len(),
                l.inflight.len(),
                Some(l.ballot),
            ),
            _ => (None, 0, 0, self.leader.map(|(_, b)| b)),
        };
        let peers = self
            .peer_ids()
            .map(|id| {
                let progress = match &self.role {
                    RoleState::Leader(l) => l.peers[id.0 as usize].clone(),
                    _ => PeerProgress::default(),
                };
                PeerReport {
                    id,
                    last_heard_ticks_ago: progress.last_heard_tick.map(|t| self.now_tick - t),
                    chosen_upto: progress.chosen_upto,
                }
            })
            .collect();
        StatusReport {
            id: self.cfg.id,
            role: self.role(),
            leader: self.leader(),
            promised: self.promised,
            leader_ballot,
            log_start: self.log_start,
            chosen_upto: self.chosen_upto,
            applied_upto: self.applied_upto,
            next_slot,
            pending_proposals: pending,
            inflight_slots: inflight,
            peers,
            recovering: self.recovery_status(),
        }
    }

    // ----- inputs ----------------------------------------------------------

    /// Hands over everything produced since the last call. Batches queued
    /// proposals into slots first, so many client commands share one Accept
    /// message and one fsync.
    pub fn ready(&mut self) -> Ready {
        self.refresh_config_barrier();
        self.flush_proposals();
        self.flush_forwards();
        self.flush_reads();
        self.flush_commit();
        // Checked in release builds too (the simulator runs in release):
        // application never runs ahead of what is chosen, and nothing below
        // the snapshot point is handed out.
        assert!(
            self.applied_upto <= self.chosen_upto,
            "{}: applied {} ahead of chosen {}",
            self.cfg.id,
            self.applied_upto,
            self.chosen_upto
        );
        assert!(
            self.log_start <= self.applied_upto,
            "{}: log start {} ahead of applied {}",
            self.cfg.id,
            self.log_start,
            self.applied_upto
        );
        let mut ready = std::mem::take(&mut self.out);
        self.unsynced_accepts.clear();
        ready.messages_wait_for_sync |= !self.cfg.bugs.early_send_at_new_ballot
            && ready
                .persist
                .iter()
                .any(|r| matches!(r, PersistRecord::Promised(_) | PersistRecord::Campaigned(_)));
        ready
    }

    /// Submits a client command. As leader it is queued for the next slot;
    /// as a follower that knows the leader it is forwarded there. Either way
    /// the outcome arrives as the entry being applied, or as a
    /// `ProposalDropped` event here (or, for a forward lost in transit,
    /// never: the driver needs a timeout and may retry with the same id).
    pub fn propose(&mut self, proposal: Proposal) -> Result<Submitted, ProposeError> {
        let me = self.cfg.id;
        let max_pending = self.cfg.max_pending_proposals;
        match &mut self.role {
            RoleState::Leader(l) => {
                if l.pending.len() >= max_pending {
                    return Err(ProposeError::Overloaded);
                }
                l.pending.push_back((proposal, None));
                Ok(Submitted::Queued)
            }
            _ => match self.leader {
                Some((leader, _)) if leader != me => {
                    if self.forward_buffer.len() >= max_pending {
                        return Err(ProposeError::Overloaded);
                    }
                    self.forward_buffer.push(proposal);
                    Ok(Submitted::Forwarded(leader))
                }
                _ => Err(ProposeError::NoLeader),
            },
        }
    }

    /// Starts a linearizable read. `Event::ReadReady { read_id, read_index }`
    /// follows once a quorum confirmed the leader; the read may then be served
    /// from the local state machine as soon as `read_index` is applied here.
    /// Places a membership change in the log (leader only). It governs the
    /// slots after the one it gets once chosen; until then this leader
    /// gives no later slot a value. The proposer learns the outcome like any
    /// proposal's: the slot is applied with this `id`, or the id is reported
    /// dropped.
    pub fn propose_config(
        &mut self,
        id: RequestId,
        membership: Membership,
    ) -> Result<Slot, ConfigChangeError> {
        let window_end = Slot(self.chosen_upto.0 + self.cfg.max_inflight_slots);
        let current = self.membership().clone();
        let chosen_upto = self.chosen_upto;
        let me = self.cfg.id;
        let now = self.now_tick;
        let RoleState::Leader(l) = &mut self.role else {
            return Err(ConfigChangeError::NotLeader(self.leader()));
        };
        // A leader knows the newest membership only once the slots it
        // inherited from Phase 1 are chosen (Raft's rule: a leader commits
        // an entry of its own term before it changes the configuration).
        if l.config_barrier.is_some() || chosen_upto < l.inherited_upto {
            return Err(ConfigChangeError::InProgress);
        }
        current
            .check_next(&membership)
            .map_err(ConfigChangeError::Invalid)?;
        if l.next_slot >= window_end {
            return Err(ConfigChangeError::Overloaded);
        }
        let slot = l.next_slot;
        l.next_slot = slot.next();
        l.config_barrier = Some(slot);
        l.commit_sent = chosen_upto;
        let ballot = l.ballot;
        l.inflight.insert(
            slot,
            Inflight {
                acks: bit(me),
                sent_tick: now,
            },
        );
        self.placed.insert(slot, (id, None));
        self.record_accept(slot, ballot, Entry::Config { id, membership });
        for peer in self.peer_ids().collect::<Vec<_>>() {
            self.send_accepts(peer, slot, slot.next());
        }
        self.choose_inflight();
        Ok(slot)
    }

    pub fn read_index(&mut self, read_id: u64) -> Result<(), ProposeError> {
        if self.cfg.bugs.local_reads {
            let read_index = self.chosen_upto;
            self.out.events.push(Event::ReadReady {
                read_id,
                read_index,
            });
            return Ok(());
        }
        let max_reads = self.cfg.max_pending_reads;
        let lease = self.holds_lease();
        match &mut self.role {
            RoleState::Leader(l) => {
                if l.reads.len() >= max_reads {
                    return Err(ProposeError::Overloaded);
                }
                let read_index = self.chosen_upto.max(l.inherited_upto);
                if lease {
                    self.out.events.push(Event::ReadReady {
                        read_id,
                        read_index,
                    });
                    return Ok(());
                }
                l.reads.push_back(PendingRead {
                    read_id,
                    origin: None,
                    read_index,
                    round: l.read_round_started + 1,
                });
                Ok(())
            }
            _ => match self.leader {
                Some((leader, _)) if leader != self.cfg.id => {
                    self.send(leader, Message::ReadIndexRequest { read_id });
                    Ok(())
                }
                _ => Err(ProposeError::NoLeader),
            },
        }
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        let now = self.now_tick;
        let hb = self.cfg.heartbeat_interval_ticks;
        if self.recovery.is_some() {
            // It may not vote, not even for itself.
            self.recovery_tick();
            self.maybe_pull_catch_up();
            return;
        }
        let voters_now = self.membership().voters;
        match &mut self.role {
            RoleState::Follower => {
                // Learners and removed replicas never campaign.
                if now >= self.election_deadline_tick {
                    if self.is_voter() {
                        self.start_election();
                    } else {
                        // Also when it is no member as far as it knows: it
                        // may have been added, even made the only voter, by
                        // changes it has not learned are chosen (seed 1416
                        // of the old-config-quorum options). A removed
                        // replica keeps asking too, once per timeout.
                        self.ask_members_for_chosen();
                    }
                }
            }
            RoleState::Candidate(c) => {
                if now >= self.election_deadline_tick {
                    self.start_election();
                } else if now - c.last_prepare_tick >= hb {
                    // Prepares or promises may have been lost: ask again.
                    c.last_prepare_tick = now;
                    let ballot = c.ballot;
                    let me = self.cfg.id;
                    let asked = voters_now | c.also_asked;
                    let silent: Vec<NodeId> = ids_of(asked)
                        .filter(|p| {
                            *p != me && !c.granted.contains_key(p) && !c.refused.contains(p)
                        })
                        .collect();
                    // A promise coming in pages is asked on from its next page.
                    let next_page: BTreeMap<NodeId, Slot> =
                        c.pages.iter().map(|(p, (_, next))| (*p, *next)).collect();
                    for peer in silent {
                        let from_slot = next_page
                            .get(&peer)
                            .copied()
                            .unwrap_or(Slot::ZERO)
                            .max(self.chosen_upto);
                        self.send(
                            peer,
                            Message::Prepare {
                                ballot,
                                from_slot,
                                chosen_upto: self.chosen_upto,
                            },
                        );
                    }
                }
            }
            RoleState::Leader(_) => self.leader_tick(),
        }
        self.maybe_pull_catch_up();
    }

    /// Processes one message from a peer.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if from == self.cfg.id || from.0 > MAX_NODE_ID {
            return;
        }
        if self.distrusted & bit(from) != 0 {
            return;
        }
        match message {
            Message::Prepare {
                ballot,
                from_slot,
                chosen_upto,
            } => {
                self.note_peer_progress(from, chosen_upto);
                self.on_prepare(from, ballot, from_slot);
            }
            Message::Promise {
                ballot,
                log_start,
                chosen_upto,
                accepted,
                complete,
            } => {
                self.note_peer_progress(from, chosen_upto);
                self.on_promise(from, ballot, log_start, accepted, complete);
            }
            Message::Accept {
                ballot,
                first_slot,
                entries,
                commit_upto,
            } => self.on_accept(from, ballot, first_slot, entries, commit_upto),
            Message::Accepted {
                ballot,
                first_slot,
                end_slot,
                chosen_upto,
            } => self.on_accepted(from, ballot, first_slot, end_slot, chosen_upto),
            Message::Reject {
                ballot,
                promised,
                chosen_upto,
            } => {
                self.note_peer_progress(from, chosen_upto);
                self.on_reject(from, ballot, promised);
            }
            Message::Heartbeat {
                ballot,
                commit_upto,
                read_round,
            } => self.on_heartbeat(from, ballot, commit_upto, read_round),
            Message::HeartbeatAck {
                ballot,
                chosen_upto,
                heard_commit_upto,
                read_round,
            } => self.on_heartbeat_ack(from, ballot, chosen_upto, heard_commit_upto, read_round),
            Message::CatchUpRequest {
                from_slot,
                max_entries,
            } => self.on_catch_up_request(from, from_slot, max_entries),
            Message::CatchUpReply {
                first_slot,
                entries,
                chosen_upto,
            } => self.on_catch_up_reply(from, first_slot, entries, chosen_upto),
            Message::SnapshotRequired { log_start } => self.on_snapshot_required(from, log_start),
            Message::Forward { proposals } => {
                // A forward that arrives after leadership moved goes back to
                // its origin rather than on (re-forwarding could loop).
                // The reason goes back with the ids, so the origin backs off
                // from an overloaded leader instead of re-forwarding at once.
                let mut not_leader = Vec::new();
                let mut overloaded = Vec::new();
                for proposal in proposals {
                    let id = proposal.id;
                    match self.propose_here_only(proposal, Some(from)) {
                        Ok(()) => {}
                        Err(ProposeError::Overloaded) => overloaded.push(id),
                        Err(ProposeError::NoLeader) => not_leader.push(id),
                    }
                }
                for (ids, reason) in [
                    (not_leader, DropReason::NotLeader),
                    (overloaded, DropReason::Overloaded),
                ] {
                    if !ids.is_empty() {
                        self.send(from, Message::ForwardDropped { ids, reason });
                    }
                }
            }
            Message::ForwardDropped { ids, reason } => {
                for id in ids {
                    self.out.events.push(Event::ProposalDropped { id, reason });
                }
            }
            Message::ReadIndexRequest { read_id } => self.on_read_index_request(from, read_id),
            Message::ReadIndexReply {
                read_id,
                read_index,
            } => {
                let event = match read_index {
                    Some(read_index) => Event::ReadReady {
                        read_id,
                        read_index,
                    },
                    None => Event::ReadFailed {
                        read_id,
                        reason: ReadFailure::NotLeader,
                    },
                };
                self.out.events.push(event);
            }
            Message::RecoveryQuery { nonce, from_slot } => {
                self.on_recovery_query(from, nonce, from_slot)
            }
            Message::RecoveryReply {
                nonce,
                promised,
                chosen_upto,
                accepted,
                complete,
            } => self.on_recovery_reply(from, nonce, promised, chosen_upto, accepted, complete),
        }
    }

    /// The driver took a snapshot of the state machine covering every slot
    /// below `upto` and made it durable: forget the log below it.
    pub fn compact(&mut self, upto: Slot) {
        let upto = upto.min(self.applied_upto);
        if upto <= self.log_start {
            return;
        }
        self.log = self.log.split_off(&upto);
        self.log_start = upto;
        self.compact_memberships(upto, None);
    }

    /// Forgets memberships that govern only slots below `upto`; the one in
    /// force at `upto` is kept (or `at_upto`, when a snapshot says it).
    fn compact_memberships(&mut self, upto: Slot, at_upto: Option<Membership>) {
        let governing = at_upto.unwrap_or_else(|| self.membership_at(upto).clone());
        let later = self.memberships.split_off(&upto.next());
        self.memberships = later;
        self.memberships.insert(upto, governing);
    }

    /// The driver installed (durably) a snapshot from a peer covering every
    /// slot below `upto`, and restored the state machine from it. Returns
    /// false (and changes nothing) if the snapshot is not ahead of us.
    pub fn install_snapshot(&mut self, upto: Slot) -> bool {
        self.install_snapshot_with(upto, None)
    }

    /// `install_snapshot`, with the membership the snapshot recorded as in
    /// force at `upto` (`None`: the newest this replica knows; right only
    /// if no change was chosen between its chosen prefix and `upto`).
    pub fn install_snapshot_with(&mut self, upto: Slot, membership: Option<Membership>) -> bool {
        self.snapshot_asked_tick = None;
        if upto <= self.applied_upto {
            return false;
        }
        let membership = membership.unwrap_or_else(|| self.membership().clone());
        self.compact_memberships(upto, Some(membership));
        self.log = self.log.split_off(&upto);
        // Entries handed out earlier in this turn and not yet applied lie
        // below the snapshot, which already contains them: applying them on
        // top of it would apply them twice (or out of order).
        self.out.apply.retain(|(slot, _)| *slot >= upto);
        for (slot, (id, origin)) in std::mem::take(&mut self.placed) {
            if slot < upto {
                // Its outcome is inside the snapshot: let the client retry
                // with the same id; the dedup table answers.
                self.report_dropped(id, origin, DropReason::Lost);
            } else {
                self.placed.insert(slot, (id, origin));
            }
        }
        self.log_start = upto;
        self.chosen_upto = self.chosen_upto.max(upto);
        self.applied_upto = upto;
        self.advance_chosen();
        true
    }

    // ----- acceptor --------------------------------------------------------

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        self.highest_seen = self.highest_seen.max(ballot);
        if self.recovery.is_some() {
            // No vote with state it may have forgotten: no promise, and no
            // refusal either (it knows nothing worth reporting).
            return;
        }
        if ballot < self.promised || (ballot > self.promised && self.hears_live_leader(from)) {
            // Below our promise, or we still hear a live leader and will not
            // help depose it (leader stickiness).
            self.reject(from, ballot);
            return;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
            // A candidate we promised to: stand down and give it time.
            self.become_follower(None);
        } else if matches!(self.role, RoleState::Follower) {
            // The candidate we promised asks for the next page of our
            // promise: its Phase 1 is progressing, so do not depose it.
            self.reset_election_timer(0);
        }
        let start = from_slot.max(self.log_start);
        let (accepted, complete) = self.accepted_page(start);
        self.send(
            from,
            Message::Promise {
                ballot,
                log_start: self.log_start,
                chosen_upto: self.chosen_upto,
                accepted,
                complete,
            },
        );
    }

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        entries: Vec<Entry>,
        commit_upto: Slot,
    ) {
        if self.recovery.is_some() {
            self.highest_seen = self.highest_seen.max(ballot);
            self.note_peer_progress(from, commit_upto);
            return;
        }
        if !self.admit_leader(from, ballot) {
            return;
        }
        let count = entries.len() as u64;
        for (offset, entry) in entries.into_iter().enumerate() {
            let slot = Slot(first_slot.0 + offset as u64);
            if slot < self.log_start {
                continue;
            }
            match self.log.get_mut(&slot) {
                Some(existing) if existing.chosen => {
                    if existing.entry != entry {
                        let ours = existing.entry.clone();
                        self.peer_conflict(from, slot, ours, entry);
                        return;
                    } else if existing.ballot != ballot {
                        // Our acknowledgement says "accepted at `ballot`": make
                        // it true on disk too (the chosen mark may not be
                        // durable yet).
                        self.record_accept(slot, ballot, entry);
                    }
                }
                Some(existing) if existing.ballot == ballot && existing.entry == entry => {}
                _ => self.record_accept(slot, ballot, entry),
            }
        }
        self.learn_commit(from, ballot, commit_upto);
        self.send(
            from,
            Message::Accepted {
                ballot,
                first_slot,
                end_slot: Slot(first_slot.0 + count),
                chosen_upto: self.chosen_upto,
            },
        );
    }

    fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, commit_upto: Slot, read_round: u64) {
        if self.recovery.is_some() {
            // No acknowledgement: it would count toward the leader's lease
            // and read quorums.
            self.highest_seen = self.highest_seen.max(ballot);
            self.note_peer_progress(from, commit_upto);
            return;
        }
        if !self.admit_leader(from, ballot) {
            return;
        }
        self.learn_commit(from, ballot, commit_upto);
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                chosen_upto: self.chosen_upto,
                heard_commit_upto: commit_upto,
                read_round,
            },
        );
    }

    /// An Accept or Heartbeat at `ballot` arrived from `from`: refuse it if
    /// we promised higher; otherwise adopt the ballot (only a proposer that
    /// won Phase 1 at it sends these) and follow its sender.
    fn admit_leader(&mut self, from: NodeId, ballot: Ballot) -> bool {
        self.highest_seen = self.highest_seen.max(ballot);
        if ballot < self.promised {
            self.reject(from, ballot);
            return false;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
        }
        self.follow(from, ballot);
        true
    }

    /// Our acceptor accepts `entry` for `slot` at `ballot`: into the log (a
    /// chosen slot keeps its value; only its ballot moves) and onto disk.
    fn record_accept(&mut self, slot: Slot, ballot: Ballot, entry: Entry) {
        match self.log.get_mut(&slot) {
            Some(existing) => {
                existing.ballot = ballot;
                if !existing.chosen {
                    existing.entry = entry.clone();
                }
            }
            None => {
                self.log.insert(
                    slot,
                    LogSlot {
                        ballot,
                        entry: entry.clone(),
                        chosen: false,
                    },
                );
            }
        }
        self.unsynced_accepts.insert(slot);
        self.out.persist.push(PersistRecord::Accepted {
            slot,
            ballot,
            entry,
        });
    }

    fn reject(&mut self, to: NodeId, ballot: Ballot) {
        self.send(
            to,
            Message::Reject {
                ballot,
                promised: self.promised,
                chosen_upto: self.chosen_upto,
            },
        );
    }

    fn raise_promise(&mut self, ballot: Ballot) {
        assert!(ballot > self.promised, "promises never go down");
        self.promised = ballot;
        self.out.persist.push(PersistRecord::Promised(ballot));
    }

    /// Do we hear a leader other than `candidate` recently enough that a
    /// prepare from `candidate` would only disrupt it?
    fn hears_live_leader(&self, candidate: NodeId) -> bool {
        let recent = self.now_tick.saturating_sub(self.last_leader_contact_tick)
            < self.cfg.election_timeout_ticks;
        // Just restarted: we may have acknowledged a leader's lease before
        // the crash and forgotten it, so promise nobody for a timeout.
        if self.cfg.leases && self.now_tick < self.cfg.election_timeout_ticks {
            return true;
        }
        match &self.role {
            RoleState::Leader(l) => self.leader_hears_quorum(l),
            _ => matches!(self.leader, Some((leader, _)) if leader != candidate) && recent,
        }
    }

    // ----- learner ---------------------------------------------------------

    /// The leader at `ballot` says every slot below `commit_upto` is chosen.
    /// Any slot we accepted at that same ballot holds the chosen value.
    fn learn_commit(&mut self, leader: NodeId, ballot: Ballot, commit_upto: Slot) {
        if commit_upto <= self.chosen_upto {
            return;
        }
        let newly: Vec<Slot> = self
            .log
            .range(self.chosen_upto..commit_upto)
            .filter(|(_, s)| !s.chosen && s.ballot == ballot)
            .map(|(slot, _)| *slot)
            .collect();
        for slot in newly {
            self.mark_chosen(slot, None);
        }
        self.advance_chosen();
        self.note_peer_progress(leader, commit_upto);
    }

    /// Records that `slot` is chosen. `value` is `None` when the chosen value
    /// is the one in our log (we accepted it at the choosing ballot).
    fn mark_chosen(&mut self, slot: Slot, value: Option<Entry>) {
        self.mark_chosen_from(None, slot, value);
    }

    /// `mark_chosen`, with the peer whose message says so (if any): a peer
    /// that reports another value for a slot we know chosen has lost or
    /// corrupted its state, and is refused rather than crashing us.
    fn mark_chosen_from(&mut self, source: Option<NodeId>, slot: Slot, value: Option<Entry>) {
        if slot < self.log_start {
            return;
        }
        let me = self.cfg.id;
        let record = match (self.log.get_mut(&slot), value) {
            (Some(existing), value) if existing.chosen => {
                if let Some(value) = value {
                    if value != existing.entry {
                        let ours = existing.entry.clone();
                        match source {
                            Some(peer) => self.peer_conflict(peer, slot, ours, value),
                            None => {
                                let msg =
                                    format!("{me}: slot {slot} chosen with two different values");
                                self.violation(msg);
                            }
                        }
                    }
                }
                return;
            }
            (Some(existing), None) => {
                existing.chosen = true;
                PersistRecord::Chosen { slot, entry: None }
            }
            (Some(existing), Some(value)) => {
                existing.chosen = true;
                if existing.entry == value {
                    PersistRecord::Chosen { slot, entry: None }
                } else {
                    existing.entry = value.clone();
                    PersistRecord::Chosen {
                        slot,
                        entry: Some(value),
                    }
                }
            }
            (None, Some(value)) => {
                self.log.insert(
                    slot,
                    LogSlot {
                        ballot: Ballot::ZERO,
                        entry: value.clone(),
                        chosen: true,
                    },
                );
                PersistRecord::Chosen {
                    slot,
                    entry: Some(value),
                }
            }
            (None, None) => {
                let msg = format!("{me}: slot {slot} marked chosen without a value");
                self.violation(msg);
                return;
            }
        };
        self.out.persist.push(record);
        if let Some((id, origin)) = self.placed.remove(&slot) {
            let chosen_id = self.log.get(&slot).and_then(|s| s.entry.request_id());
            if chosen_id != Some(id) {
                self.report_dropped(id, origin, DropReason::Lost);
            }
        }
    }

    /// Extends the contiguous chosen prefix and hands new entries out for
    /// application, strictly in slot order.
    fn advance_chosen(&mut self) {
        while let Some(s) = self.log.get(&self.chosen_upto).filter(|s| s.chosen) {
            let slot = self.chosen_upto;
            if let Entry::Config { membership, .. } = &s.entry {
                let membership = membership.clone();
                self.chosen_upto = slot.next();
                self.on_membership_chosen(slot, membership);
                continue;
            }
            self.chosen_upto = slot.next();
        }
        while self.applied_upto < self.chosen_upto {
            let slot = self.applied_upto;
            if let Some(s) = self.log.get(&slot) {
                if self.cfg.bugs.skip_apply_slot != Some(slot.0) {
                    self.out.apply.push((slot, s.entry.clone()));
                }
            }
            self.applied_upto = slot.next();
        }
    }

    /// The chosen prefix passed a membership change at `slot`.
    fn on_membership_chosen(&mut self, slot: Slot, membership: Membership) {
        self.memberships.insert(slot.next(), membership.clone());
        self.out.events.push(Event::MembershipChanged {
            slot,
            membership: membership.clone(),
        });
        let me = self.cfg.id;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let _ = l;
        self.refresh_config_barrier();
        if !membership.is_voter(me) {
            // Removed, or made a learner: lead no more. The voters elect a
            // leader among themselves (this replica does not campaign).
            self.become_follower(None);
        }
    }

    /// `peer` showed `slot` chosen (or accepted at a committed position)
    /// with `theirs` where we know `ours` is chosen: it lost or corrupted its
    /// state. Refuse its messages from now on, report it once, keep serving.
    fn peer_conflict(&mut self, peer: NodeId, slot: Slot, ours: Entry, theirs: Entry) {
        if self.distrusted & bit(peer) != 0 {
            return;
        }
        self.distrusted |= bit(peer);
        if self.cfg.bugs.any() && self.violations.len() < 100 {
            // Under a planted bug, keep the simulator's record of it.
            self.violations.push(format!(
                "{}: {peer} reports slot {slot} chosen with another value",
                self.cfg.id
            ));
        }
        self.out.events.push(Event::PeerConflict {
            peer,
            slot,
            ours,
            theirs,
        });
    }

    /// Peers refused for reporting another value for a chosen slot.
    pub fn distrusted_peers(&self) -> Vec<NodeId> {
        self.peer_ids()
            .filter(|p| self.distrusted & bit(*p) != 0)
            .collect()
    }

    fn violation(&mut self, message: String) {
        if self.cfg.bugs.any() {
            if self.violations.len() < 100 {
                self.violations.push(message);
            }
        } else {
            panic!("invariant violated: {message}");
        }
    }

    // ----- catch-up --------------------------------------------------------

    fn note_peer_progress(&mut self, peer: NodeId, their_chosen_upto: Slot) {
        if their_chosen_upto <= self.chosen_upto {
            return;
        }
        let better = match self.catch_up_source {
            Some((_, best)) => their_chosen_upto > best || best <= self.chosen_upto,
            None => true,
        };
        if better {
            self.catch_up_source = Some((peer, their_chosen_upto));
        }
    }

    /// A peer knows more chosen slots than we do and nothing came in for a
    /// while: ask it (any single peer suffices: what is chosen is final).
    fn maybe_pull_catch_up(&mut self) {
        if self.cfg.bugs.no_catch_up {
            return;
        }
        let Some((peer, their_upto)) = self.catch_up_source else {
            return;
        };
        if their_upto <= self.chosen_upto {
            self.catch_up_source = None;
            return;
        }
        let wait = 2 * self.cfg.heartbeat_interval_ticks;
        if self
            .catch_up_asked_tick
            .is_some_and(|t| self.now_tick - t < wait)
        {
            return;
        }
        self.request_catch_up(peer);
    }

    fn request_catch_up(&mut self, peer: NodeId) {
        self.catch_up_asked_tick = Some(self.now_tick);
        let max_entries = self.cfg.max_entries_per_message as u32;
        self.send(
            peer,
            Message::CatchUpRequest {
                from_slot: self.chosen_upto,
                max_entries,
            },
        );
    }

    fn on_catch_up_request(&mut self, from: NodeId, from_slot: Slot, max_entries: u32) {
        if self.cfg.bugs.no_catch_up {
            return;
        }
        self.send_chosen_from(from, from_slot, max_entries as usize);
    }

    /// Sends `to` the chosen values from `from_slot` on (or tells it to fetch
    /// a snapshot if they were compacted).
    fn send_chosen_from(&mut self, to: NodeId, from_slot: Slot, max_entries: usize) {
        if from_slot < self.log_start {
            self.send(
                to,
                Message::SnapshotRequired {
                    log_start: self.log_start,
                },
            );
            return;
        }
        let max_entries = max_entries.min(self.cfg.max_entries_per_message);
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut slot = from_slot;
        while slot < self.chosen_upto && entries.len() < max_entries {
            let Some(s) = self.log.get(&slot) else { break };
            bytes += s.entry.size_bytes();
            entries.push(s.entry.clone());
            slot = slot.next();
            if bytes >= self.cfg.max_bytes_per_message {
                break;
            }
        }
        if entries.is_empty() {
            return;
        }
        self.send(
            to,
            Message::CatchUpReply {
                first_slot: from_slot,
                entries,
                chosen_upto: self.chosen_upto,
            },
        );
    }

    fn on_catch_up_reply(
        &mut self,
        from: NodeId,
        first_slot: Slot,
        entries: Vec<Entry>,
        their_chosen_upto: Slot,
    ) {
        let before = self.chosen_upto;
        for (offset, entry) in entries.into_iter().enumerate() {
            let slot = Slot(first_slot.0 + offset as u64);
            if self.distrusted & bit(from) != 0 {
                return;
            }
            if slot >= self.chosen_upto || self.log.get(&slot).is_some_and(|s| s.chosen) {
                self.mark_chosen_from(Some(from), slot, Some(entry));
            }
        }
        self.advance_chosen();
        self.note_peer_progress(from, their_chosen_upto);
        if self.chosen_upto > before {
            self.catch_up_asked_tick = None;
            if their_chosen_upto > self.chosen_upto && !self.cfg.bugs.no_catch_up {
                // More to come: keep the pipe full.
                self.request_catch_up(from);
            }
        }
    }

    fn on_snapshot_required(&mut self, from: NodeId, log_start: Slot) {
        if log_start <= self.chosen_upto {
            return;
        }
        let wait = 4 * self.cfg.election_timeout_ticks;
        if self
            .snapshot_asked_tick
            .is_some_and(|t| self.now_tick - t < wait)
        {
            return;
        }
        self.snapshot_asked_tick = Some(self.now_tick);
        self.out
            .events
            .push(Event::SnapshotNeeded { from, log_start });
    }

    // ----- recovery of forgotten state -------------------------------------
    //
    // A replica whose folder was lost or whose log lost synced records is a
    // new, unknown acceptor: counted in a quorum with empty state it could
    // help choose a second value for a round already chosen. So it votes in
    // nothing (no promise, no accept, no heartbeat acknowledgement, no
    // candidacy) until:
    // 1. a quiet period has passed (twice the longest election timeout,
    //    stretched by the drift bound), so every Phase 1 that may have
    //    counted a promise it forgot has completed or been abandoned;
    // 2. it has learned every slot the replies so far report chosen
    //    (catch-up, or a snapshot), and so the newest membership they know
    //    of: a replica whose disk is gone restarts knowing only the
    //    bootstrap membership, and one that installed a snapshot only the
    //    membership it records. It asks every replica it knows of, also
    //    those it learns of while catching up;
    // 3. complete replies (promise, and the values accepted beyond the
    //    replier's chosen prefix) came from a majority, not counting itself,
    //    of the voters of that newest membership; of every membership change
    //    among the values it will adopt (chosen perhaps, but not known to be:
    //    they govern the slots after them, as for a candidate in
    //    `election_quorums_met`). Only replies from those voters count: a
    //    removed replica, a learner or a spare answers too, but its promise
    //    covers nothing (the simulator found a replica that counted a
    //    removed one's reply vote for a second value in a slot).
    //    Why that is enough: a completed Phase 1 that counted a forgotten
    //    promise at ballot b counted a majority of the membership governing
    //    the slots it covers (and of each change it re-proposed). If the
    //    newest membership was chosen before that Phase 1, the Phase 1
    //    counted a majority of it too, and two majorities of it, one without
    //    this replica, share another member. If it was chosen after, at a
    //    ballot of at least b, a majority of the membership before it
    //    accepted it and so promised at least b; any majority of the new
    //    voters without this replica shares a member with that one (one
    //    voter changes at a time). The one exception: the new membership has
    //    two voters, this replica and one other, the old one had three, and
    //    the other was not among those acceptors. Then b's Phase 2 could not
    //    choose a slot after the change without the other's vote (which
    //    would have raised its promise to b), and the slots up to the change
    //    are in the chosen prefix this replica caught up to; the owner of b
    //    was the removed voter (it steps down once the change is chosen and
    //    gave no later slot a value) or this replica itself, whose Phase 2
    //    messages died with it: as with the promises it forgot, the quiet
    //    period outlasts them (a message is delivered within it or lost).
    //    A value chosen with its forgotten vote was accepted by a majority of
    //    the membership governing its slot, which is the newest one or one of
    //    the changes it adopts, so one of the repliers reports it (or the
    //    slot is in the chosen prefix it caught up to);
    // 4. it adopts, per slot beyond its chosen prefix, the value with the
    //    highest ballot reported.
    // It then promises the highest ballot reported (only its owner sends
    // Phase 2 at a ballot, with one value per slot, so equal is enough) and
    // votes again. A single voter that lost its state lost the cluster's:
    // it stays out (the operator must decide).

    fn recovery_tick(&mut self) {
        let now = self.now_tick;
        let hb = self.cfg.heartbeat_interval_ticks;
        let from_slot = self.chosen_upto;
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if now < r.quiet_until_tick {
            return;
        }
        if r.last_query_tick.is_some_and(|t| now - t < 2 * hb) {
            self.maybe_finish_recovery();
            return;
        }
        r.last_query_tick = Some(now);
        let nonce = r.nonce;
        let replied: BTreeSet<NodeId> = r.replies.keys().copied().collect();
        let next_page: BTreeMap<NodeId, Slot> =
            r.pages.iter().map(|(p, (_, next))| (*p, *next)).collect();
        let silent: Vec<NodeId> = self.peer_ids().filter(|p| !replied.contains(p)).collect();
        for peer in silent {
            let from_slot = next_page.get(&peer).copied().unwrap_or(from_slot);
            self.send(peer, Message::RecoveryQuery { nonce, from_slot });
        }
        self.maybe_finish_recovery();
    }

    /// The values this acceptor holds from `start` on, within one message's
    /// budget, and whether that is all of them (promises and recovery
    /// replies come in pages: unbounded, they could exceed the frame limit).
    fn accepted_page(&self, start: Slot) -> (Vec<AcceptedValue>, bool) {
        let mut accepted = Vec::new();
        let mut bytes = 0;
        for (slot, s) in self.log.range(start..) {
            if accepted.len() >= self.cfg.max_entries_per_message
                || bytes >= self.cfg.max_bytes_per_message
            {
                return (accepted, false);
            }
            bytes += s.entry.size_bytes();
            accepted.push(AcceptedValue {
                slot: *slot,
                ballot: s.ballot,
                entry: s.entry.clone(),
                chosen: s.chosen,
            });
        }
        (accepted, true)
    }

    fn on_recovery_query(&mut self, from: NodeId, nonce: u64, from_slot: Slot) {
        if self.recovery.is_some() {
            // What it would report may be forgotten too.
            return;
        }
        let start = from_slot.max(self.chosen_upto).max(self.log_start);
        let (accepted, complete) = self.accepted_page(start);
        self.send(
            from,
            Message::RecoveryReply {
                nonce,
                promised: self.promised,
                chosen_upto: self.chosen_upto,
                accepted,
                complete,
            },
        );
    }

    fn on_recovery_reply(
        &mut self,
        from: NodeId,
        nonce: u64,
        promised: Ballot,
        chosen_upto: Slot,
        accepted: Vec<AcceptedValue>,
        complete: bool,
    ) {
        self.highest_seen = self.highest_seen.max(promised);
        self.note_peer_progress(from, chosen_upto);
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if nonce != r.nonce || r.replies.contains_key(&from) {
            return;
        }
        // Pages are taken in any order and merged (a late duplicate adds
        // nothing new): per slot, the highest ballot wins at the end.
        let last = accepted.last().map(|v| v.slot);
        let (report, next) = r.pages.entry(from).or_insert_with(|| {
            (
                RecoveryReport {
                    promised: Ballot::ZERO,
                    chosen_upto: Slot::ZERO,
                    accepted: Vec::new(),
                },
                Slot::ZERO,
            )
        });
        report.promised = report.promised.max(promised);
        report.chosen_upto = report.chosen_upto.max(chosen_upto);
        report.accepted.extend(accepted);
        if !complete {
            // Only a page that moved on asks for the next one.
            let moved = last.is_some_and(|last| Slot(last.0 + 1) > *next);
            if !moved {
                return;
            }
            if let Some(last) = last {
                *next = Slot(last.0 + 1);
            }
            // The next page at once, not at the next retry.
            let from_slot = (*next).max(self.chosen_upto);
            self.send(from, Message::RecoveryQuery { nonce, from_slot });
            return;
        }
        if let Some((report, _)) = r.pages.remove(&from) {
            r.replies.insert(from, report);
        }
        self.maybe_finish_recovery();
    }

    /// The replies needed from the voters of `membership` other than this
    /// replica: a majority of its voters, not counting this replica (all of
    /// the others when they are fewer, as in a membership of two voters).
    fn recovery_replies_needed_of(&self, membership: &Membership) -> usize {
        let others = membership.voters & !bit(self.cfg.id);
        membership.quorum().min(others.count_ones() as usize)
    }

    /// The others' replies needed from the newest membership known.
    fn recovery_replies_needed(&self) -> usize {
        self.recovery_replies_needed_of(self.membership())
    }

    /// Complete replies so far from voters of the newest membership known.
    fn recovery_replies_counted(&self, r: &Recovery) -> usize {
        let mut replied = 0u64;
        for peer in r.replies.keys() {
            replied |= bit(*peer);
        }
        self.membership().votes_in(replied & !bit(self.cfg.id))
    }

    /// Per slot beyond the chosen prefix, the value with the highest ballot
    /// among the replies and this replica's own log, and whether it came
    /// from a reply (to be adopted) rather than from the own log.
    fn recovery_best_values(&self, r: &Recovery) -> BTreeMap<Slot, (Ballot, Entry, bool)> {
        let floor = self.chosen_upto.max(self.log_start);
        let mut best: BTreeMap<Slot, (Ballot, Entry, bool)> = BTreeMap::new();
        for (slot, s) in self.log.range(floor..) {
            if !s.chosen {
                best.insert(*slot, (s.ballot, s.entry.clone(), false));
            }
        }
        for report in r.replies.values() {
            for v in &report.accepted {
                if v.slot < floor || self.log.get(&v.slot).is_some_and(|s| s.chosen) {
                    continue;
                }
                match best.get(&v.slot) {
                    Some((b, _, _)) if *b >= v.ballot => {}
                    _ => {
                        best.insert(v.slot, (v.ballot, v.entry.clone(), true));
                    }
                }
            }
        }
        best
    }

    /// Do the complete replies cover a majority (not counting this replica)
    /// of every membership they must (see the comment at the top of this
    /// section)? Otherwise, the voters still to hear from.
    fn recovery_quorums_met(&self, r: &Recovery) -> Result<(), u64> {
        let me = bit(self.cfg.id);
        let mut replied = 0u64;
        for peer in r.replies.keys() {
            replied |= bit(*peer);
        }
        let mut required: Vec<Membership> = vec![self.membership().clone()];
        for (_, entry, _) in self.recovery_best_values(r).into_values() {
            if let Entry::Config { membership, .. } = entry {
                required.push(membership);
            }
        }
        let mut missing = 0u64;
        for membership in &required {
            let others = membership.voters & !me;
            let needed = self.recovery_replies_needed_of(membership);
            if ((replied & others).count_ones() as usize) < needed {
                missing |= others & !replied;
            }
        }
        if missing == 0 {
            Ok(())
        } else {
            Err(missing)
        }
    }

    fn recovery_status(&self) -> Option<RecoveryStatus> {
        let r = self.recovery.as_ref()?;
        let needed = self.recovery_replies_needed();
        let counted = self.recovery_replies_counted(r);
        let target = r.replies.values().map(|p| p.chosen_upto).max();
        let waiting_for = if self.now_tick < r.quiet_until_tick {
            format!(
                "a quiet period ({} more ticks) before asking the others",
                r.quiet_until_tick - self.now_tick
            )
        } else if self.membership().voters & !bit(self.cfg.id) == 0 {
            "the operator: it is the only voter it knows of, and it lost its state".to_string()
        } else if target.is_some_and(|t| self.chosen_upto < t) {
            format!(
                "catching up to round {} (at {}) to learn the newest membership",
                target.map_or(0, |t| t.0),
                self.chosen_upto
            )
        } else if counted < needed {
            format!(
                "answers from {needed} voters of the newest membership other than this one (a majority of its voters without this one); {counted} so far"
            )
        } else {
            format!(
                "answers from voters of membership changes among the values it will adopt ({counted} of the newest membership's voters so far)"
            )
        };
        Some(RecoveryStatus {
            waiting_for,
            replies: counted,
            replies_needed: needed,
            target_chosen_upto: target,
        })
    }

    fn maybe_finish_recovery(&mut self) {
        let Some(r) = self.recovery.as_ref() else {
            return;
        };
        if self.membership().voters & !bit(self.cfg.id) == 0 {
            // Nobody to ask: a single voter that lost its state lost the
            // cluster's. It stays out (the operator must decide).
            return;
        }
        if r.replies.is_empty() {
            return;
        }
        let target = r
            .replies
            .values()
            .map(|p| p.chosen_upto)
            .max()
            .unwrap_or(Slot::ZERO);
        if self.chosen_upto < target {
            // Catching up first: the slots it learns may change the
            // membership whose voters it must hear from.
            return;
        }
        if let Err(missing) = self.recovery_quorums_met(r) {
            // Voters it may not know of yet (of a change it will adopt):
            // ask them now, and on every retry.
            let new = missing & !self.known_members_mask();
            let nonce = r.nonce;
            if let Some(r) = self.recovery.as_mut() {
                r.also_asked |= missing;
            }
            let from_slot = self.chosen_upto;
            for peer in ids_of(new & !bit(self.cfg.id)) {
                self.send(peer, Message::RecoveryQuery { nonce, from_slot });
            }
            return;
        }
        // Per slot beyond the chosen prefix, the value with the highest
        // ballot reported (ours included).
        let best = self.recovery_best_values(r);
        let Some(r) = self.recovery.take() else {
            return;
        };
        let promise = r
            .replies
            .values()
            .map(|p| p.promised)
            .max()
            .unwrap_or(Ballot::ZERO);
        for (slot, (ballot, entry, reported)) in best {
            if reported {
                self.record_accept(slot, ballot, entry);
            }
        }
        if promise > self.promised {
            self.raise_promise(promise);
        }
        self.highest_seen = self.highest_seen.max(promise);
        self.reset_election_timer(0);
        self.out.events.push(Event::Recovered {
            promised: self.promised,
        });
    }

    // ----- election --------------------------------------------------------

    fn reset_election_timer(&mut self, extra_backoff_ticks: u64) {
        let t = self.cfg.election_timeout_ticks;
        self.election_deadline_tick =
            self.now_tick + self.rng.range(t, 2 * t) + extra_backoff_ticks;
    }

    fn start_election(&mut self) {
        let ballot = self
            .promised
            .max(self.highest_seen)
            .successor_for(self.cfg.id);
        self.highest_seen = ballot;
        // Durable before the Prepares leave (they wait for this Ready's
        // fsync): a restarted replica campaigns above it.
        if !self.cfg.bugs.early_send_at_new_ballot {
            self.out.persist.push(PersistRecord::Campaigned(ballot));
        }
        if self.leader.is_some() {
            self.leader = None;
            self.out.events.push(Event::LeaderChanged {
                leader: None,
                ballot: self.promised,
            });
        }
        self.role = RoleState::Candidate(Candidate {
            ballot,
            granted: BTreeMap::new(),
            pages: BTreeMap::new(),
            refused: BTreeSet::new(),
            last_prepare_tick: self.now_tick,
            also_asked: 0,
        });
        self.reset_election_timer(0);
        // The candidate promises itself only once a quorum of peers granted:
        // a node that merely lost touch with a live leader must not raise its
        // own promise and then refuse that leader's accepts.
        for peer in self.peer_ids().collect::<Vec<_>>() {
            self.send(
                peer,
                Message::Prepare {
                    ballot,
                    from_slot: self.chosen_upto,
                    chosen_upto: self.chosen_upto,
                },
            );
        }
        self.maybe_win_election();
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        log_start: Slot,
        accepted: Vec<AcceptedValue>,
        complete: bool,
    ) {
        let chosen_upto = self.chosen_upto;
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || c.granted.contains_key(&from) {
            return;
        }
        // Pages merge in any order (a repeated one adds nothing): per slot
        // the leader takes the highest ballot reported anyway.
        let last = accepted.last().map(|v| v.slot);
        let (info, next) = c.pages.entry(from).or_insert_with(|| {
            (
                PromiseInfo {
                    log_start,
                    accepted: Vec::new(),
                },
                Slot::ZERO,
            )
        });
        info.log_start = info.log_start.max(log_start);
        info.accepted.extend(accepted);
        if !complete {
            // Only a page that moved on asks for the next one: a duplicated
            // or late page must not multiply the requests.
            let moved = last.is_some_and(|last| Slot(last.0 + 1) > *next);
            if !moved {
                return;
            }
            if let Some(last) = last {
                *next = Slot(last.0 + 1);
            }
            let from_slot = (*next).max(chosen_upto);
            self.send(
                from,
                Message::Prepare {
                    ballot,
                    from_slot,
                    chosen_upto,
                },
            );
            // Phase 1 is progressing: do not abandon it for a new ballot
            // (which would start the pages over).
            self.reset_election_timer(0);
            return;
        }
        if let Some((info, _)) = c.pages.remove(&from) {
            c.granted.insert(from, info);
        }
        self.maybe_win_election();
    }

    /// Votes needed under the newest membership.
    fn quorum(&self) -> usize {
        self.quorum_of(self.membership())
    }

    fn quorum_of(&self, membership: &Membership) -> usize {
        if self.cfg.bugs.quorum_of_one {
            1
        } else {
            membership.quorum()
        }
    }

    /// Has the candidacy the votes it needs? A majority of the voters of
    /// the membership governing its chosen prefix, and also of every
    /// membership change it would re-propose beyond it (those govern the
    /// slots after them, which this Phase 1 covers too). Returns the voters
    /// still to be asked when a membership found in the promises lacks a
    /// majority.
    fn election_quorums_met(&self, c: &Candidate) -> Result<(), u64> {
        let me = self.cfg.id;
        let mut granted = bit(me);
        for peer in c.granted.keys() {
            granted |= bit(*peer);
        }
        let base = self.membership();
        if base.votes_in(granted) < self.quorum_of(base) {
            return Err(0);
        }
        if c.granted.values().any(|p| p.log_start > self.chosen_upto) {
            // A voter compacted slots this replica has not learned: the
            // memberships chosen there are in its snapshot only. Not
            // without them (the caller abandons this candidacy).
            return Err(u64::MAX);
        }
        if self.cfg.bugs.old_config_quorum_only {
            return Ok(());
        }
        // The values it will re-propose: per slot the highest ballot among
        // the promises and its own log (as `become_leader` picks them).
        let mut best: BTreeMap<Slot, (Ballot, &Entry)> = BTreeMap::new();
        for (slot, s) in self.log.range(self.chosen_upto..) {
            best.insert(*slot, (s.ballot, &s.entry));
        }
        for info in c.granted.values() {
            for value in &info.accepted {
                if value.slot < self.chosen_upto {
                    continue;
                }
                let known_chosen = self.log.get(&value.slot).is_some_and(|s| s.chosen);
                let newer = best.get(&value.slot).is_none_or(|(b, _)| value.ballot > *b);
                if newer && !known_chosen {
                    best.insert(value.slot, (value.ballot, &value.entry));
                }
            }
        }
        let mut missing = 0u64;
        for (_, entry) in best.values() {
            if let Entry::Config { membership, .. } = entry {
                if membership.votes_in(granted) < self.quorum_of(membership) {
                    missing |= membership.voters & !granted;
                }
            }
        }
        if missing == 0 {
            Ok(())
        } else {
            Err(missing)
        }
    }

    fn maybe_win_election(&mut self) {
        let RoleState::Candidate(c) = &self.role else {
            return;
        };
        if let Err(missing) = self.election_quorums_met(c) {
            if missing == u64::MAX {
                // Behind a peer's snapshot: catch up first (the snapshot
                // carries the membership), then campaign again.
                let from = c
                    .granted
                    .iter()
                    .max_by_key(|(_, p)| p.log_start)
                    .map(|(peer, p)| (*peer, p.log_start));
                let t = self.cfg.election_timeout_ticks;
                let backoff = self.rng.range(0, t);
                self.become_follower(None);
                self.reset_election_timer(backoff);
                if let Some((from, log_start)) = from {
                    self.out
                        .events
                        .push(Event::SnapshotNeeded { from, log_start });
                    self.snapshot_asked_tick = Some(self.now_tick);
                }
                return;
            }
            // Ask the voters of a newer membership it found, once.
            let new = missing & !c.also_asked;
            let (ballot, chosen_upto) = (c.ballot, self.chosen_upto);
            if new != 0 {
                if let RoleState::Candidate(c) = &mut self.role {
                    c.also_asked |= new;
                }
                for peer in ids_of(new)
                    .filter(|p| *p != self.cfg.id)
                    .collect::<Vec<_>>()
                {
                    self.send(
                        peer,
                        Message::Prepare {
                            ballot,
                            from_slot: chosen_upto,
                            chosen_upto,
                        },
                    );
                }
            }
            return;
        }
        let ballot = c.ballot;
        if self.promised > ballot {
            // We promised someone higher meanwhile: this candidacy is dead.
            self.become_follower(None);
            return;
        }
        if self.promised < ballot {
            self.raise_promise(ballot);
        }
        let RoleState::Candidate(c) = std::mem::replace(&mut self.role, RoleState::Follower) else {
            return;
        };
        self.become_leader(ballot, c.granted);
    }

    fn become_leader(&mut self, ballot: Ballot, promises: BTreeMap<NodeId, PromiseInfo>) {
        // Learn what peers already know is chosen.
        for (peer, info) in &promises {
            for value in &info.accepted {
                if value.chosen && value.slot >= self.chosen_upto {
                    self.mark_chosen_from(Some(*peer), value.slot, Some(value.entry.clone()));
                }
            }
        }
        self.advance_chosen();
        // Slots below a peer's log_start are chosen and compacted there; we
        // learn them from its snapshot and do not propose in them.
        let mut start = self.chosen_upto;
        for (peer, info) in &promises {
            if info.log_start > start {
                start = info.log_start;
                if info.log_start > self.chosen_upto {
                    self.out.events.push(Event::SnapshotNeeded {
                        from: *peer,
                        log_start: info.log_start,
                    });
                    self.snapshot_asked_tick = Some(self.now_tick);
                }
            }
        }
        // For each slot from `start`, the value with the highest accepted
        // ballot among the quorum (our own log included); holes get no-ops.
        let mut best: BTreeMap<Slot, (Ballot, Entry)> = BTreeMap::new();
        for (slot, s) in self.log.range(start..) {
            best.insert(*slot, (s.ballot, s.entry.clone()));
        }
        if !self.cfg.bugs.ignore_promised_values {
            for info in promises.values() {
                for value in &info.accepted {
                    if value.slot < start {
                        continue;
                    }
                    let newer = best.get(&value.slot).is_none_or(|(b, _)| value.ballot > *b);
                    let known_chosen = self.log.get(&value.slot).is_some_and(|s| s.chosen);
                    if newer && !known_chosen {
                        best.insert(value.slot, (value.ballot, value.entry.clone()));
                    }
                }
            }
        }
        let end = best
            .keys()
            .next_back()
            .map_or(start, |s| s.next())
            .max(start);
        let me = self.cfg.id;
        let mut leader = Leader {
            ballot,
            next_slot: end,
            inherited_upto: end,
            config_barrier: None,
            pending: VecDeque::new(),
            inflight: BTreeMap::new(),
            peers: vec![PeerProgress::default(); MAX_NODE_ID as usize + 1],
            elected_tick: self.now_tick,
            last_heartbeat_tick: self.now_tick,
            commit_sent: Slot::ZERO,
            read_round_started: 0,
            round_sent_tick: VecDeque::new(),
            reads: VecDeque::new(),
        };
        for peer in promises.keys() {
            leader.peers[peer.0 as usize].last_heard_tick = Some(self.now_tick);
        }
        for slot in start.until(end) {
            let already_chosen = self.log.get(&slot).is_some_and(|s| s.chosen);
            let entry = if already_chosen {
                self.log
                    .get(&slot)
                    .map(|s| s.entry.clone())
                    .unwrap_or(Entry::Noop)
            } else {
                match best.remove(&slot) {
                    Some((_, entry)) => entry,
                    None if self.cfg.bugs.invent_values => Entry::Command {
                        id: RequestId {
                            client_id: u64::MAX,
                            seq: slot.0,
                        },
                        payload: bytes::Bytes::from_static(b"invented"),
                    },
                    None => Entry::Noop,
                }
            };
            // Re-propose at our ballot (chosen values too, so followers can
            // learn them from the commit index).
            let unchanged = self
                .log
                .get(&slot)
                .is_some_and(|s| s.ballot == ballot && s.entry == entry);
            if !unchanged {
                self.record_accept(slot, ballot, entry);
            }
            if !already_chosen {
                leader.inflight.insert(
                    slot,
                    Inflight {
                        acks: bit(me),
                        sent_tick: self.now_tick,
                    },
                );
            }
        }
        // An inherited membership change not yet chosen: nothing after it
        // counts as chosen before it is (the slots after it are governed by
        // it).
        // (Chosen or not: until the chosen prefix passes it, the slots after
        // it are counted under a membership this replica does not have.)
        leader.config_barrier = self
            .log
            .range(self.chosen_upto..end)
            .find(|(_, x)| is_config(&x.entry))
            .map(|(s, _)| *s);
        self.role = RoleState::Leader(leader);
        self.leader = Some((me, ballot));
        self.out.events.push(Event::LeaderChanged {
            leader: Some(me),
            ballot,
        });
        for peer in self.peer_ids().collect::<Vec<_>>() {
            self.send_accepts(peer, start, end);
            self.send_heartbeat(peer, ballot, 0);
        }
        self.choose_inflight();
    }

    fn on_reject(&mut self, from: NodeId, ballot: Ballot, promised: Ballot) {
        self.highest_seen = self.highest_seen.max(promised);
        let membership = self.membership().clone();
        let quorum = self.quorum_of(&membership);
        let size = membership.voter_count();
        let t = self.cfg.election_timeout_ticks;
        match &mut self.role {
            RoleState::Candidate(c) if c.ballot == ballot => {
                c.refused.insert(from);
                let refused_voters = c
                    .refused
                    .iter()
                    .filter(|r| membership.is_voter(**r))
                    .count();
                let cannot_win = promised > ballot || refused_voters > size.saturating_sub(quorum);
                if cannot_win {
                    // Preempted or refused: back off a random while so
                    // dueling proposers do not livelock.
                    let backoff = self.rng.range(0, t);
                    self.become_follower(None);
                    self.reset_election_timer(backoff);
                }
            }
            RoleState::Leader(l) if l.ballot == ballot && promised > ballot => {
                let backoff = self.rng.range(0, t);
                self.become_follower(None);
                self.reset_election_timer(backoff);
            }
            _ => {}
        }
    }

    /// A leader at `ballot` spoke to us: follow it.
    fn follow(&mut self, leader: NodeId, ballot: Ballot) {
        self.last_leader_contact_tick = self.now_tick;
        if self.leader != Some((leader, ballot)) || !matches!(self.role, RoleState::Follower) {
            self.become_follower(Some((leader, ballot)));
        }
        self.reset_election_timer(0);
    }

    fn become_follower(&mut self, leader: Option<(NodeId, Ballot)>) {
        let old = std::mem::replace(&mut self.role, RoleState::Follower);
        if let RoleState::Leader(l) = old {
            for (proposal, origin) in l.pending {
                self.report_dropped(proposal.id, origin, DropReason::NotLeader);
            }
            for read in l.reads {
                match read.origin {
                    None => self.out.events.push(Event::ReadFailed {
                        read_id: read.read_id,
                        reason: ReadFailure::NotLeader,
                    }),
                    Some(origin) => self.send(
                        origin,
                        Message::ReadIndexReply {
                            read_id: read.read_id,
                            read_index: None,
                        },
                    ),
                }
            }
        }
        if self.leader != leader {
            self.leader = leader;
            self.out.events.push(Event::LeaderChanged {
                leader: leader.map(|(n, _)| n),
                ballot: leader.map_or(self.promised, |(_, b)| b),
            });
        }
        if leader.is_none() {
            self.reset_election_timer(0);
        }
    }

    // ----- leader ----------------------------------------------------------

    fn leader_hears_quorum(&self, l: &Leader) -> bool {
        let t = self.cfg.election_timeout_ticks;
        if self.now_tick - l.elected_tick < t {
            return true;
        }
        let membership = self.membership();
        let mut heard = bit(self.cfg.id);
        for (i, p) in l.peers.iter().enumerate() {
            if p.last_heard_tick.is_some_and(|h| self.now_tick - h < t) {
                heard |= 1 << i;
            }
        }
        membership.votes_in(heard) >= self.quorum_of(membership)
    }

    /// Does this leader hold a lease now? Anchored at the send time of the
    /// newest heartbeat round a quorum (ourselves included) acknowledged.
    fn holds_lease(&self) -> bool {
        let RoleState::Leader(l) = &self.role else {
            return false;
        };
        let lease = self.cfg.lease_ticks();
        if lease == 0 {
            return false;
        }
        let membership = self.membership();
        let mut rounds: Vec<u64> = l
            .peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != self.cfg.id.0 && membership.is_voter(NodeId(*i as u32)))
            .map(|(_, p)| p.acked_read_round)
            .collect();
        if membership.is_voter(self.cfg.id) {
            rounds.push(l.read_round_started);
        }
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&anchor) = rounds.get(self.quorum() - 1) else {
            return false;
        };
        if anchor == 0 {
            return false;
        }
        l.round_sent_tick
            .iter()
            .find(|(round, _)| *round == anchor)
            .is_some_and(|(_, sent)| self.now_tick < sent + lease)
    }

    /// Ticks left on this leader's lease (for status pages).
    pub fn lease_active(&self) -> bool {
        self.holds_lease()
    }

    fn leader_tick(&mut self) {
        let members = self.known_members_mask() & !bit(self.cfg.id);
        let now = self.now_tick;
        let hb = self.cfg.heartbeat_interval_ticks;
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if !self.leader_hears_quorum(l) {
            // Cut off from a majority: stop pretending to lead.
            self.become_follower(None);
            return;
        }
        if now - l.last_heartbeat_tick >= hb {
            self.broadcast_heartbeat();
        }
        // Retransmit accepts a peer has not acknowledged in a while.
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let mut resend: Vec<(NodeId, Slot)> = Vec::new();
        for (slot, inflight) in l.inflight.iter_mut() {
            if now - inflight.sent_tick >= 2 * hb {
                inflight.sent_tick = now;
                for peer in ids_of(members & !inflight.acks) {
                    resend.push((peer, *slot));
                }
            }
        }
        resend.sort();
        let mut i = 0;
        while i < resend.len() {
            let (peer, first) = resend[i];
            let mut end = first.next();
            i += 1;
            while i < resend.len() && resend[i] == (peer, end) {
                end = end.next();
                i += 1;
            }
            self.send_accepts(peer, first, end);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        l.last_heartbeat_tick = self.now_tick;
        l.commit_sent = self.chosen_upto;
        l.read_round_started += 1;
        l.round_sent_tick
            .push_back((l.read_round_started, self.now_tick));
        if l.round_sent_tick.len() > LEASE_ROUNDS_KEPT {
            l.round_sent_tick.pop_front();
        }
        let (ballot, round) = (l.ballot, l.read_round_started);
        for peer in self.peer_ids().collect::<Vec<_>>() {
            self.send_heartbeat(peer, ballot, round);
        }
    }

    fn send_heartbeat(&mut self, peer: NodeId, ballot: Ballot, read_round: u64) {
        self.send(
            peer,
            Message::Heartbeat {
                ballot,
                commit_upto: self.chosen_upto,
                read_round,
            },
        );
    }

    /// Sends Accept messages for `first..end` of our log to `peer`, in runs
    /// bounded by the message limits.
    fn send_accepts(&mut self, peer: NodeId, first: Slot, end: Slot) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let ballot = l.ballot;
        let mut slot = first;
        while slot < end {
            let run_first = slot;
            let mut entries = Vec::new();
            let mut bytes = 0;
            while slot < end
                && entries.len() < self.cfg.max_entries_per_message
                && bytes < self.cfg.max_bytes_per_message
            {
                let Some(s) = self.log.get(&slot) else { break };
                bytes += s.entry.size_bytes();
                entries.push(s.entry.clone());
                slot = slot.next();
            }
            if entries.is_empty() {
                // Compacted or missing: the peer will catch up instead.
                slot = slot.next();
                continue;
            }
            self.send(
                peer,
                Message::Accept {
                    ballot,
                    first_slot: run_first,
                    entries,
                    commit_upto: self.chosen_upto,
                },
            );
        }
    }

    /// Assigns queued proposals to slots, within the in-flight window.
    fn flush_proposals(&mut self) {
        let me = self.cfg.id;
        let window_end = Slot(self.chosen_upto.0 + self.cfg.max_inflight_slots);
        let now = self.now_tick;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let first = l.next_slot;
        let ballot = l.ballot;
        let mut accepted = Vec::new();
        // Behind a membership change not yet chosen, no new slots: their
        // quorum depends on it.
        while l.next_slot < window_end && l.config_barrier.is_none() {
            let Some((proposal, origin)) = l.pending.pop_front() else {
                break;
            };
            let slot = l.next_slot;
            l.next_slot = slot.next();
            self.placed.insert(slot, (proposal.id, origin));
            accepted.push((slot, proposal.into_entry()));
            l.inflight.insert(
                slot,
                Inflight {
                    acks: bit(me),
                    sent_tick: now,
                },
            );
        }
        let end = l.next_slot;
        if end > first {
            l.commit_sent = self.chosen_upto;
        }
        // Into our log before the Accept messages are built from it.
        for (slot, entry) in accepted {
            self.record_accept(slot, ballot, entry);
        }
        if end > first {
            for peer in self.peer_ids().collect::<Vec<_>>() {
                self.send_accepts(peer, first, end);
            }
            self.choose_inflight();
        }
    }

    /// A replica that may not vote heard no leader for an election timeout:
    /// it may have been made a voter by a change it has not learned is
    /// chosen (a leader that removed itself stops telling anyone), so it
    /// asks every member it knows for the chosen slots it lacks. The
    /// simulator found a cluster whose only voter never learned it was one.
    fn ask_members_for_chosen(&mut self) {
        self.reset_election_timer(0);
        if self.cfg.bugs.no_catch_up {
            return;
        }
        let from_slot = self.chosen_upto;
        let max_entries = self.cfg.max_entries_per_message as u32;
        for peer in self.peer_ids().collect::<Vec<_>>() {
            self.send(
                peer,
                Message::CatchUpRequest {
                    from_slot,
                    max_entries,
                },
            );
        }
    }

    /// A leader's barrier is the first membership change at or after the
    /// chosen prefix among the slots it gave values to. Once the prefix
    /// passed it (chosen in order, or jumped by a snapshot), the next one.
    fn refresh_config_barrier(&mut self) {
        let chosen_upto = self.chosen_upto;
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let Some(barrier) = l.config_barrier else {
            return;
        };
        if barrier >= chosen_upto {
            return;
        }
        let next = self
            .log
            .range(chosen_upto..l.next_slot)
            .find(|(_, x)| is_config(&x.entry))
            .map(|(s, _)| *s);
        if let RoleState::Leader(l) = &mut self.role {
            l.config_barrier = next;
        }
    }

    /// Marks chosen every slot in flight that a majority of the voters of
    /// its membership accepted at our ballot (with a single voter, our own
    /// accept). Slots after an unchosen membership change wait for it.
    fn choose_inflight(&mut self) {
        self.refresh_config_barrier();
        loop {
            let RoleState::Leader(l) = &self.role else {
                return;
            };
            let mut newly = Vec::new();
            for (slot, inflight) in &l.inflight {
                if l.config_barrier.is_some_and(|b| *slot > b) {
                    break;
                }
                let membership = self.membership_at(*slot);
                if membership.votes_in(inflight.acks) >= self.quorum_of(membership) {
                    newly.push(*slot);
                }
            }
            if newly.is_empty() {
                return;
            }
            if newly.iter().any(|s| self.unsynced_accepts.contains(s)) {
                // Chosen with our own vote of this very Ready (a single
                // voter, say): not a fact until it is durable. Nothing may
                // tell anyone (a learner would apply it from the commit
                // index) and nothing is applied before the fsync.
                self.out.apply_waits_for_sync = true;
                self.out.messages_wait_for_sync = true;
            }
            if let RoleState::Leader(l) = &mut self.role {
                for slot in &newly {
                    l.inflight.remove(slot);
                }
            }
            for slot in newly {
                self.mark_chosen(slot, None);
            }
            // May pass a membership change, which lifts its barrier.
            self.advance_chosen();
        }
    }

    /// Tells followers promptly when the chosen prefix moved and no Accept
    /// carried it, so they apply without waiting for the next heartbeat.
    fn flush_commit(&mut self) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if l.commit_sent < self.chosen_upto {
            self.broadcast_heartbeat();
        }
    }

    fn on_accepted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        end_slot: Slot,
        their_chosen_upto: Slot,
    ) {
        self.note_peer_progress(from, their_chosen_upto);
        let now = self.now_tick;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        let progress = &mut l.peers[from.0 as usize];
        progress.last_heard_tick = Some(now);
        progress.chosen_upto = progress.chosen_upto.max(their_chosen_upto);
        for (_, inflight) in l.inflight.range_mut(first_slot..end_slot) {
            inflight.acks |= bit(from);
        }
        self.choose_inflight();
        self.check_reads();
    }

    fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        their_chosen_upto: Slot,
        heard_commit_upto: Slot,
        read_round: u64,
    ) {
        let now = self.now_tick;
        let hb = self.cfg.heartbeat_interval_ticks;
        let no_catch_up = self.cfg.bugs.no_catch_up;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        let progress = &mut l.peers[from.0 as usize];
        progress.last_heard_tick = Some(now);
        progress.chosen_upto = progress.chosen_upto.max(their_chosen_upto);
        progress.acked_read_round = progress.acked_read_round.max(read_round);
        // The follower heard our commit index but could not advance to it: it
        // lacks values. Push them (at most once per heartbeat interval).
        let lagging = their_chosen_upto < heard_commit_upto;
        let may_push = progress.last_push_tick.is_none_or(|t| now - t >= hb);
        if lagging && may_push && !no_catch_up {
            progress.last_push_tick = Some(now);
            self.send_chosen_from(from, their_chosen_upto, self.cfg.max_entries_per_message);
        }
        self.check_reads();
    }

    // ----- reads -----------------------------------------------------------

    fn on_read_index_request(&mut self, from: NodeId, read_id: u64) {
        let max_reads = self.cfg.max_pending_reads;
        let lease = self.holds_lease();
        match &mut self.role {
            RoleState::Leader(l) if l.reads.len() < max_reads => {
                let read_index = self.chosen_upto.max(l.inherited_upto);
                if lease {
                    self.send(
                        from,
                        Message::ReadIndexReply {
                            read_id,
                            read_index: Some(read_index),
                        },
                    );
                    return;
                }
                let RoleState::Leader(l) = &mut self.role else {
                    return;
                };
                l.reads.push_back(PendingRead {
                    read_id,
                    origin: Some(from),
                    read_index,
                    round: l.read_round_started + 1,
                });
            }
            _ => self.send(
                from,
                Message::ReadIndexReply {
                    read_id,
                    read_index: None,
                },
            ),
        }
    }

    /// Starts a confirmation round if reads wait for one.
    fn flush_reads(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let waiting = l
            .reads
            .back()
            .is_some_and(|r| r.round > l.read_round_started);
        if waiting {
            self.broadcast_heartbeat();
        }
        self.check_reads();
    }

    /// Releases reads whose round a quorum acknowledged at our ballot.
    fn check_reads(&mut self) {
        let membership = self.membership().clone();
        let quorum = self.quorum_of(&membership);
        let me = self.cfg.id;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let mut released = Vec::new();
        while let Some(read) = l.reads.front() {
            let mut acked = bit(me);
            for (i, p) in l.peers.iter().enumerate() {
                if i as u32 != me.0 && p.acked_read_round >= read.round {
                    acked |= 1 << i;
                }
            }
            if membership.votes_in(acked) < quorum || read.round > l.read_round_started {
                break;
            }
            if let Some(read) = l.reads.pop_front() {
                released.push(read);
            }
        }
        for read in released {
            match read.origin {
                None => self.out.events.push(Event::ReadReady {
                    read_id: read.read_id,
                    read_index: read.read_index,
                }),
                Some(origin) => self.send(
                    origin,
                    Message::ReadIndexReply {
                        read_id: read.read_id,
                        read_index: Some(read.read_index),
                    },
                ),
            }
        }
    }

    // ----- plumbing --------------------------------------------------------

    /// Like `propose`, but never forwards (for proposals that were forwarded
    /// to us already).
    fn propose_here_only(
        &mut self,
        proposal: Proposal,
        origin: Option<NodeId>,
    ) -> Result<(), ProposeError> {
        let max_pending = self.cfg.max_pending_proposals;
        match &mut self.role {
            RoleState::Leader(l) if l.pending.len() < max_pending => {
                l.pending.push_back((proposal, origin));
                Ok(())
            }
            RoleState::Leader(_) => Err(ProposeError::Overloaded),
            _ => Err(ProposeError::NoLeader),
        }
    }

    fn flush_forwards(&mut self) {
        if self.forward_buffer.is_empty() {
            return;
        }
        let proposals = std::mem::take(&mut self.forward_buffer);
        match self.leader {
            Some((leader, _)) if leader != self.cfg.id => {
                let mut batch = Vec::new();
                let mut bytes = 0;
                for proposal in proposals {
                    bytes += proposal.payload.len() + 16;
                    batch.push(proposal);
                    if batch.len() >= self.cfg.max_entries_per_message
                        || bytes >= self.cfg.max_bytes_per_message
                    {
                        self.send(
                            leader,
                            Message::Forward {
                                proposals: std::mem::take(&mut batch),
                            },
                        );
                        bytes = 0;
                    }
                }
                if !batch.is_empty() {
                    self.send(leader, Message::Forward { proposals: batch });
                }
            }
            Some(_) => {
                // We became leader meanwhile: queue them here.
                for proposal in proposals {
                    let id = proposal.id;
                    if self.propose_here_only(proposal, None).is_err() {
                        self.out.events.push(Event::ProposalDropped {
                            id,
                            reason: DropReason::Overloaded,
                        });
                    }
                }
            }
            None => {
                for proposal in proposals {
                    self.out.events.push(Event::ProposalDropped {
                        id: proposal.id,
                        reason: DropReason::NotLeader,
                    });
                }
            }
        }
    }

    /// Tells whoever waits for a proposal that it will not be chosen here:
    /// our own client (an event) or the replica that forwarded it.
    fn report_dropped(&mut self, id: RequestId, origin: Option<NodeId>, reason: DropReason) {
        match origin {
            Some(origin) if origin != self.cfg.id => {
                self.send(
                    origin,
                    Message::ForwardDropped {
                        ids: vec![id],
                        reason,
                    },
                );
            }
            _ => self.out.events.push(Event::ProposalDropped { id, reason }),
        }
    }

    /// Every replica this one talks to: the members of every membership it
    /// knows of (the newest chosen, older ones still in the log, a change
    /// in flight at the leader, voters a candidate also asked), but itself.
    fn peer_ids(&self) -> impl Iterator<Item = NodeId> + 'static {
        ids_of(self.known_members_mask() & !bit(self.cfg.id))
    }

    fn known_members_mask(&self) -> u64 {
        let mut mask = 0;
        for membership in self.memberships.values() {
            mask |= membership.members_mask();
        }
        match &self.role {
            RoleState::Leader(l) => {
                if let Some(Entry::Config { membership, .. }) = l
                    .config_barrier
                    .and_then(|b| self.log.get(&b))
                    .map(|s| &s.entry)
                {
                    mask |= membership.members_mask();
                }
            }
            RoleState::Candidate(c) => mask |= c.also_asked,
            RoleState::Follower => {}
        }
        if let Some(r) = &self.recovery {
            mask |= r.also_asked;
        }
        mask
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.out.messages.push(Envelope {
            from: self.cfg.id,
            to,
            message,
        });
    }
}

fn is_config(entry: &Entry) -> bool {
    matches!(entry, Entry::Config { .. })
}
