//! A small deterministic cluster harness for scenario tests of the core.
//!
//! Everything is driven explicitly by the test: time (`tick`), the network
//! (a FIFO queue of envelopes the test delivers, drops or reorders, plus a
//! set of cut directed links) and crashes. Each node has a "disk": every
//! `PersistRecord` it produced, written before its messages are queued (the
//! driver contract), both as a raw record log and as an incrementally
//! replayed `DurableState`. A restart rebuilds the replica by replaying that
//! record log, with a fresh seed.
//!
//! An agreement oracle is checked on every output: a slot applied or known
//! chosen anywhere must hold the same value everywhere, forever.
//!
//! This is a thin view of the driver's contract (`crates/server/src/driver`,
//! which the simulator runs): persist, send, apply, events; early messages
//! may leave before the fsync, and a node waiting for its fsync takes no
//! input. It exists for scenarios that deliver single messages by hand.

#![allow(dead_code)]

use bytes::Bytes;
use paxlog_core::rng::SplitMix64;
use paxlog_core::{
    Ballot, Config, DropReason, DurableState, Entry, Envelope, Event, Message, NodeId,
    PersistRecord, Proposal, Ready, Replica, RequestId, Role, Slot,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub struct Node {
    pub cfg: Config,
    /// `None` while crashed.
    pub replica: Option<Replica>,
    /// Every record written, in write order (rewritten on compaction).
    pub records: Vec<PersistRecord>,
    /// The snapshot point the record log starts from.
    pub records_log_start: Slot,
    /// `records` replayed incrementally.
    pub disk: DurableState,
    /// The state machine: every applied entry, in order. Entries below the
    /// snapshot point came from a snapshot.
    pub applied: Vec<(Slot, Entry)>,
    /// Every event this node emitted, across incarnations.
    pub events: Vec<Event>,
    /// While set, `Ready`s are held here instead of being written/sent
    /// (the fsync has not happened yet). A crash loses them.
    pub sync_paused: bool,
    pub unsynced: Vec<Ready>,
    /// Inputs that arrived while a `Ready` waits for its fsync: the driver
    /// takes no input until the sync returns, so they wait here (and a
    /// crash loses them).
    pub inbox: VecDeque<Envelope>,
    pub deferred_ticks: u64,
    /// The driver's "recovering" mark beside the log: set when the disk
    /// was lost, cleared on `Event::Recovered`.
    pub recovering: bool,
    pub incarnation: u32,
}

impl Node {
    pub fn r(&self) -> &Replica {
        self.replica.as_ref().expect("node is crashed")
    }

    pub fn r_mut(&mut self) -> &mut Replica {
        self.replica.as_mut().expect("node is crashed")
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    /// A `Ready` of this node waits for its fsync: no input is taken.
    pub fn in_fsync(&self) -> bool {
        self.sync_paused && !self.unsynced.is_empty()
    }

    pub fn applied_entries(&self) -> Vec<Entry> {
        self.applied.iter().map(|(_, e)| e.clone()).collect()
    }

    pub fn applied_payloads(&self) -> Vec<Option<Vec<u8>>> {
        self.applied.iter().map(|(_, e)| payload_of(e)).collect()
    }

    pub fn dropped(&self) -> Vec<(RequestId, DropReason)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ProposalDropped { id, reason } => Some((*id, *reason)),
                _ => None,
            })
            .collect()
    }

    pub fn has_applied(&self, id: RequestId) -> bool {
        self.applied.iter().any(|(_, e)| e.request_id() == Some(id))
    }
}

pub fn payload_of(entry: &Entry) -> Option<Vec<u8>> {
    match entry {
        Entry::Noop | Entry::Config { .. } => None,
        Entry::Command { payload, .. } => Some(payload.to_vec()),
    }
}

pub fn cmd(payload: &str) -> Option<Vec<u8>> {
    Some(payload.as_bytes().to_vec())
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Messages in the network, oldest first.
    pub queue: VecDeque<Envelope>,
    /// Directed links `(from, to)` that lose every message.
    pub cut: BTreeSet<(u32, u32)>,
    /// Every message ever handed to the network (for protocol assertions).
    pub sent: Vec<Envelope>,
    /// Agreement oracle: the value of every slot seen chosen anywhere.
    pub chosen: BTreeMap<Slot, Entry>,
    seeds: SplitMix64,
    next_seq: u64,
}

impl Cluster {
    pub fn new(n: u32, seed: u64) -> Cluster {
        Cluster::with_config(n, seed, |cfg| {
            cfg.election_timeout_ticks = 10;
            cfg.heartbeat_interval_ticks = 2;
        })
    }

    pub fn with_config(n: u32, seed: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut seeds = SplitMix64::new(seed);
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut cfg = Config::new(NodeId(i), n);
            tweak(&mut cfg);
            let replica = Replica::new(cfg.clone(), DurableState::default(), seeds.next_u64());
            nodes.push(Node {
                cfg,
                replica: Some(replica),
                records: Vec::new(),
                records_log_start: Slot::ZERO,
                disk: DurableState::default(),
                applied: Vec::new(),
                events: Vec::new(),
                sync_paused: false,
                unsynced: Vec::new(),
                inbox: VecDeque::new(),
                deferred_ticks: 0,
                recovering: false,
                incarnation: 0,
            });
        }
        let mut cluster = Cluster {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            sent: Vec::new(),
            chosen: BTreeMap::new(),
            seeds,
            next_seq: 0,
        };
        cluster.collect_all();
        cluster
    }

    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn r(&self, i: usize) -> &Replica {
        self.nodes[i].r()
    }

    pub fn up(&self) -> Vec<usize> {
        (0..self.n()).filter(|i| self.nodes[*i].is_up()).collect()
    }

    // ----- driver contract -------------------------------------------------

    /// Takes node `i`'s `Ready` and handles it: persist, then send, then apply.
    pub fn collect(&mut self, i: usize) {
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return;
        };
        let ready = replica.ready();
        if ready.is_empty() {
            self.check_chosen_of(i);
            return;
        }
        if self.nodes[i].sync_paused {
            // As the driver does: what needs no durability leaves before
            // the fsync; the rest waits for it.
            let mut ready = ready;
            let (early, held): (Vec<Envelope>, Vec<Envelope>) = std::mem::take(&mut ready.messages)
                .into_iter()
                .partition(|e| ready.may_send_before_sync(&e.message));
            ready.messages = held;
            for envelope in early {
                self.sent.push(envelope.clone());
                self.queue.push_back(envelope);
            }
            self.nodes[i].unsynced.push(ready);
            return;
        }
        self.handle_ready(i, ready);
    }

    fn handle_ready(&mut self, i: usize, ready: Ready) {
        let Ready {
            persist,
            messages,
            apply,
            events,
            ..
        } = ready;
        let node = &mut self.nodes[i];
        // 1. persist (and "fsync").
        for record in persist {
            node.disk.replay(&record).unwrap_or_else(|e| {
                panic!("n{i} wrote a record its own disk rejects: {e} ({record:?})")
            });
            node.records.push(record);
        }
        // 2. send.
        for envelope in messages {
            assert_eq!(
                envelope.from,
                NodeId(i as u32),
                "message with a forged sender"
            );
            self.sent.push(envelope.clone());
            self.queue.push_back(envelope);
        }
        // 3. apply, strictly in slot order with no gaps.
        for (slot, entry) in apply {
            let node = &mut self.nodes[i];
            let expected = node.applied.len() as u64;
            assert_eq!(
                slot.0, expected,
                "n{i} applied slot {slot} but its state machine is at {expected}"
            );
            node.applied.push((slot, entry.clone()));
            self.agree(i, slot, &entry);
        }
        // 4. events (after the records are durable).
        if events.iter().any(|e| matches!(e, Event::Recovered { .. })) {
            self.nodes[i].recovering = false;
        }
        self.nodes[i].events.extend(events);
        self.check_chosen_of(i);
    }

    fn agree(&mut self, i: usize, slot: Slot, entry: &Entry) {
        match self.chosen.get(&slot) {
            Some(prev) => assert_eq!(
                prev, entry,
                "AGREEMENT VIOLATED: slot {slot} is {prev:?} elsewhere but {entry:?} at n{i}"
            ),
            None => {
                self.chosen.insert(slot, entry.clone());
            }
        }
    }

    fn check_chosen_of(&mut self, i: usize) {
        let Some(replica) = self.nodes[i].replica.as_ref() else {
            return;
        };
        let known: Vec<(Slot, Entry)> = replica
            .chosen_entries()
            .map(|(s, e)| (s, e.clone()))
            .collect();
        for (slot, entry) in known {
            self.agree(i, slot, &entry);
        }
    }

    pub fn collect_all(&mut self) {
        for i in 0..self.n() {
            self.collect(i);
        }
    }

    // ----- network ---------------------------------------------------------

    fn deliverable(&self, env: &Envelope) -> bool {
        let (from, to) = (env.from.0, env.to.0);
        self.nodes[to as usize].is_up() && !self.cut.contains(&(from, to))
    }

    /// Delivers one envelope now (or loses it, if its link is cut or the
    /// receiver is down).
    pub fn deliver(&mut self, env: Envelope) {
        if !self.deliverable(&env) {
            return;
        }
        let to = env.to.0 as usize;
        if self.nodes[to].in_fsync() {
            self.nodes[to].inbox.push_back(env);
            return;
        }
        self.nodes[to].r_mut().step(env.from, env.message);
        self.collect(to);
    }

    /// Delivers every message queued now (not the ones this produces).
    /// Returns how many were taken off the queue.
    pub fn deliver_all(&mut self) -> usize {
        let batch: Vec<Envelope> = self.queue.drain(..).collect();
        let count = batch.len();
        for env in batch {
            self.deliver(env);
        }
        count
    }

    /// Delivers until the network is empty.
    pub fn run_until_quiet(&mut self) {
        for _ in 0..10_000 {
            if self.deliver_all() == 0 {
                return;
            }
        }
        panic!("the network never went quiet");
    }

    /// Delivers the queued messages matching `pred` (in order); the others
    /// stay queued.
    pub fn deliver_matching(&mut self, pred: impl Fn(&Envelope) -> bool) -> usize {
        let (matching, rest): (Vec<Envelope>, Vec<Envelope>) =
            self.queue.drain(..).partition(|e| pred(e));
        self.queue = rest.into();
        let count = matching.len();
        for env in matching {
            self.deliver(env);
        }
        count
    }

    /// Loses the queued messages matching `pred`.
    pub fn drop_matching(&mut self, pred: impl Fn(&Envelope) -> bool) -> usize {
        let before = self.queue.len();
        self.queue.retain(|e| !pred(e));
        before - self.queue.len()
    }

    pub fn queued(&self, pred: impl Fn(&Envelope) -> bool) -> Vec<Envelope> {
        self.queue.iter().filter(|e| pred(e)).cloned().collect()
    }

    pub fn cut_link(&mut self, from: usize, to: usize) {
        self.cut.insert((from as u32, to as u32));
    }

    pub fn heal_link(&mut self, from: usize, to: usize) {
        self.cut.remove(&(from as u32, to as u32));
    }

    /// Cuts every link into and out of `i`.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.n() {
            if j != i {
                self.cut_link(i, j);
                self.cut_link(j, i);
            }
        }
    }

    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    pub fn sent_kind(&self, kind: &str) -> Vec<Envelope> {
        self.sent
            .iter()
            .filter(|e| e.message.kind() == kind)
            .cloned()
            .collect()
    }

    // ----- time ------------------------------------------------------------

    /// One tick on node `i` only (its output is queued, not delivered).
    pub fn tick(&mut self, i: usize) {
        if self.nodes[i].in_fsync() {
            self.nodes[i].deferred_ticks += 1;
            return;
        }
        if let Some(r) = self.nodes[i].replica.as_mut() {
            r.tick();
            self.collect(i);
        }
    }

    /// `n` rounds of: every live node ticks once, then the network runs
    /// until quiet.
    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            for i in 0..self.n() {
                self.tick(i);
            }
            self.run_until_quiet();
        }
    }

    /// Ticks (with full delivery) until `done` holds; panics after `max` rounds.
    /// Returns the number of rounds it took.
    pub fn tick_until(&mut self, max: u64, what: &str, done: impl Fn(&Cluster) -> bool) -> u64 {
        for round in 0..=max {
            if done(self) {
                return round;
            }
            self.tick_all(1);
        }
        panic!(
            "{what}: not reached within {max} ticks\n{}",
            self.describe()
        );
    }

    /// One line per node, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match node.replica.as_ref() {
                None => out.push_str(&format!("n{i}: down\n")),
                Some(r) => {
                    let s = r.status();
                    out.push_str(&format!(
                        "n{i}: {:?} leader={:?} promised={} chosen_upto={} applied_upto={} \
                         next_slot={:?} pending={} inflight={} applied={:?}\n",
                        s.role,
                        s.leader,
                        s.promised,
                        s.chosen_upto,
                        s.applied_upto,
                        s.next_slot,
                        s.pending_proposals,
                        s.inflight_slots,
                        node.applied_payloads()
                            .iter()
                            .map(|p| p
                                .as_ref()
                                .map_or("noop".to_string(), |p| String::from_utf8_lossy(p).into()))
                            .collect::<Vec<_>>(),
                    ));
                }
            }
        }
        out
    }

    // ----- leadership ------------------------------------------------------

    /// Live nodes in the leader role, highest ballot first.
    pub fn leaders(&self) -> Vec<usize> {
        let mut ls: Vec<(Ballot, usize)> = self
            .up()
            .into_iter()
            .filter(|i| self.r(*i).role() == Role::Leader)
            .map(|i| {
                (
                    self.r(i).status().leader_ballot.expect("leader has ballot"),
                    i,
                )
            })
            .collect();
        ls.sort();
        ls.reverse();
        ls.into_iter().map(|(_, i)| i).collect()
    }

    pub fn leader(&self) -> Option<usize> {
        self.leaders().first().copied()
    }

    pub fn leader_ballot(&self, i: usize) -> Ballot {
        self.r(i)
            .status()
            .leader_ballot
            .expect("node has no leader ballot")
    }

    /// A leader every live, connected node agrees on.
    pub fn stable_leader(&self) -> Option<usize> {
        let l = self.leader()?;
        let all_follow = self
            .up()
            .into_iter()
            .all(|i| self.r(i).leader() == Some(NodeId(l as u32)));
        (self.leaders().len() == 1 && all_follow).then_some(l)
    }

    /// Makes node `i` the leader: every live node keeps ticking (so stale
    /// leaders time out), but Prepares from any other node are lost, so
    /// only `i` can win Phase 1. Then runs until quiet.
    pub fn elect(&mut self, i: usize) {
        for _ in 0..2000 {
            if self.nodes[i].r().role() == Role::Leader {
                self.run_until_quiet();
                // Let everyone learn the new leader through its heartbeats.
                for _ in 0..self.nodes[i].cfg.heartbeat_interval_ticks {
                    self.tick(i);
                    self.run_until_quiet();
                }
                return;
            }
            for j in 0..self.n() {
                self.tick(j);
            }
            let me = NodeId(i as u32);
            self.drop_matching(|e| matches!(e.message, Message::Prepare { .. }) && e.from != me);
            self.run_until_quiet();
        }
        panic!("n{i} could not be elected");
    }

    // ----- clients ---------------------------------------------------------

    pub fn next_id(&mut self, client: usize) -> RequestId {
        self.next_seq += 1;
        RequestId {
            client_id: client as u64,
            seq: self.next_seq,
        }
    }

    /// Proposes at node `i` (which must lead or know the leader), then takes
    /// its Ready (queues the Accept/Forward; delivers nothing).
    pub fn propose(&mut self, i: usize, payload: &str) -> RequestId {
        let id = self.propose_no_flush(i, payload);
        self.collect(i);
        id
    }

    /// Proposes without taking the Ready: several of these share one batch.
    pub fn propose_no_flush(&mut self, i: usize, payload: &str) -> RequestId {
        let id = self.next_id(i);
        let proposal = Proposal {
            id,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        };
        self.nodes[i]
            .r_mut()
            .propose(proposal)
            .unwrap_or_else(|e| panic!("propose at n{i} failed: {e}"));
        id
    }

    // ----- crashes ---------------------------------------------------------

    /// Crashes node `i`: its volatile state, unsynced output and the
    /// messages queued to or from it are lost.
    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.replica = None;
        node.unsynced.clear();
        node.sync_paused = false;
        node.inbox.clear();
        node.deferred_ticks = 0;
        let id = NodeId(i as u32);
        self.queue.retain(|e| e.from != id && e.to != id);
    }

    /// Restarts node `i` from what its disk holds, with a fresh seed. The
    /// state machine restarts from the snapshot (entries below the record
    /// log's start) and the replica re-applies the chosen log after it.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_up(), "n{i} is already up");
        let node = &mut self.nodes[i];
        let mut durable = DurableState::from_snapshot(node.records_log_start);
        for record in &node.records {
            durable.replay(record).expect("disk replays");
        }
        assert_eq!(
            durable, node.disk,
            "n{i}: replaying the record log disagrees with the incremental disk"
        );
        node.applied.truncate(durable.log_start.0 as usize);
        node.incarnation += 1;
        durable.recovering = node.recovering;
        let seed = self.seeds.next_u64();
        let replica = Replica::new(node.cfg.clone(), durable, seed);
        self.nodes[i].replica = Some(replica);
        self.collect(i);
    }

    /// Restarts node `i` as a brand-new replica with an empty disk.
    pub fn restart_empty(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.records.clear();
        node.records_log_start = Slot::ZERO;
        node.disk = DurableState::default();
        node.applied.clear();
        self.restart(i);
    }

    /// Restarts node `i` on a new, empty disk that replaces a lost one: the
    /// driver marks it recovering (it may have promised and accepted before).
    pub fn restart_lost_disk(&mut self, i: usize) {
        self.nodes[i].recovering = true;
        self.restart_empty(i);
    }

    /// From now on node `i`'s output waits for a sync that may never come.
    pub fn pause_sync(&mut self, i: usize) {
        self.nodes[i].sync_paused = true;
    }

    /// The held output is written, then sent, then applied.
    pub fn resume_sync(&mut self, i: usize) {
        self.nodes[i].sync_paused = false;
        let held = std::mem::take(&mut self.nodes[i].unsynced);
        for ready in held {
            self.handle_ready(i, ready);
        }
        // Then the inputs that queued meanwhile, time first.
        for _ in 0..std::mem::take(&mut self.nodes[i].deferred_ticks) {
            self.tick(i);
        }
        let inbox = std::mem::take(&mut self.nodes[i].inbox);
        for env in inbox {
            self.deliver(env);
        }
    }

    // ----- snapshots -------------------------------------------------------

    /// Node `i` snapshots its state machine below `upto` and compacts.
    pub fn compact(&mut self, i: usize, upto: Slot) {
        let node = &mut self.nodes[i];
        let replica = node.replica.as_mut().expect("node is crashed");
        replica.compact(upto);
        let log_start = replica.log_start();
        node.disk.compact(log_start);
        node.records = node.disk.to_records();
        node.records_log_start = log_start;
        self.collect(i);
    }

    /// Node `i` installs node `from`'s snapshot covering slots below `upto`.
    pub fn install_snapshot(&mut self, i: usize, from: usize, upto: Slot) -> bool {
        let image: Vec<(Slot, Entry)> = self.nodes[from]
            .applied
            .iter()
            .filter(|(s, _)| *s < upto)
            .cloned()
            .collect();
        assert_eq!(image.len() as u64, upto.0, "n{from} has not applied {upto}");
        let node = &mut self.nodes[i];
        let installed = node.r_mut().install_snapshot(upto);
        if installed {
            node.applied = image;
            node.disk.compact(upto);
            node.records = node.disk.to_records();
            node.records_log_start = upto;
        }
        self.collect(i);
        installed
    }

    // ----- checks ----------------------------------------------------------

    /// Every live node's applied log is a prefix of the longest one.
    pub fn assert_prefix_consistent(&self) {
        let longest = self
            .nodes
            .iter()
            .map(|n| n.applied.clone())
            .max_by_key(|a| a.len())
            .unwrap_or_default();
        for (i, node) in self.nodes.iter().enumerate() {
            assert_eq!(
                node.applied[..],
                longest[..node.applied.len()],
                "n{i}'s applied log is not a prefix of the longest one"
            );
        }
    }
}
