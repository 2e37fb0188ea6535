//! Checkers named after the properties they guard.

use crate::workload::counter_of;
use paxlog_core::{Ballot, Entry, NodeId, RequestId, Slot};
use paxlog_kv::{ApplyOutput, KvCommand, KvRequest};
use serde_json::Value;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};

const MAX_VIOLATIONS: usize = 50;

pub struct Checker {
    violations: Vec<String>,
    /// Agreement: the one value each slot may hold, across replicas and time.
    chosen: HashMap<Slot, (Entry, NodeId)>,
    /// Applied-prefix equality: what applying each slot answered (the same
    /// on every replica, duplicate flag included).
    outputs: HashMap<Slot, ApplyOutput>,
    /// Applied-prefix equality: a digest of the store's state at an applied
    /// round (sampled, at snapshots, and at the end), the same everywhere.
    states: HashMap<Slot, (u64, NodeId)>,
    /// Exactly once: where each request ran (`duplicate == false`).
    executed: HashMap<RequestId, Slot>,
    /// Executions of a successful `ctrN += 1`, by counter.
    increments: HashMap<&'static str, HashSet<(RequestId, Slot)>>,
    /// Re-runs of the documented residual case (see `applied`).
    residual_reruns: u64,
    /// Validity: what clients asked for (each replica stamps it).
    issued: HashMap<RequestId, KvCommand>,
    /// Durability: the slot each request was acknowledged as executed at.
    acked: HashMap<RequestId, Slot>,
    /// One past the highest slot any replica has applied.
    applied_floor: Slot,
    /// Every value sent in an Accept, by (ballot, slot): there is one.
    sent_values: HashMap<(Ballot, Slot), Entry>,
    /// Per key, its value after each slot that changed it (in log order).
    history: HashMap<String, BTreeMap<Slot, Option<Value>>>,
    /// Per key, the highest slot of a write to it acknowledged so far.
    acked_writes: HashMap<String, Slot>,
    /// Reads answered at a round no replica has reported applying yet.
    deferred_reads: Vec<DeferredRead>,
}

type DeferredRead = (NodeId, String, Option<Slot>, Option<Value>, Slot);

impl Checker {
    pub fn new(_nodes: u32) -> Checker {
        Checker {
            violations: Vec::new(),
            chosen: HashMap::new(),
            outputs: HashMap::new(),
            states: HashMap::new(),
            executed: HashMap::new(),
            increments: HashMap::new(),
            residual_reruns: 0,
            issued: HashMap::new(),
            acked: HashMap::new(),
            applied_floor: Slot::ZERO,
            sent_values: HashMap::new(),
            history: HashMap::new(),
            acked_writes: HashMap::new(),
            deferred_reads: Vec::new(),
        }
    }

    /// One past the highest slot applied anywhere so far: a read that begins
    /// now must get a read index at least this high.
    pub fn applied_floor(&self) -> Slot {
        self.applied_floor
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn violation(&mut self, message: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(message);
        }
    }

    pub fn acked_count(&self) -> u64 {
        self.acked.len() as u64
    }

    /// Slots known chosen anywhere (the log's length if it has no holes).
    pub fn slot_count(&self) -> u64 {
        self.chosen.keys().map(|s| s.0 + 1).max().unwrap_or(0)
    }

    /// Re-executions of a client's first request after its session expired,
    /// retried at a replica that stamped it afresh: the store's documented
    /// residual assumption (docs/design.md), not told apart from a new client.
    pub fn residual_reruns(&self) -> u64 {
        self.residual_reruns
    }

    /// How many executions successfully incremented `counter`.
    pub fn increments(&self, counter: &str) -> u64 {
        self.increments
            .get(counter)
            .map_or(0, |ids| ids.len() as u64)
    }

    /// One value per (ballot, slot), ever: `learn_commit`, a new leader's
    /// value pick and the acceptance count all rely on it.
    pub fn value_sent(&mut self, ballot: Ballot, slot: Slot, entry: &Entry) {
        match self.sent_values.get(&(ballot, slot)) {
            Some(existing) if existing != entry => {
                let message = format!(
                    "one value per ballot and slot: {} and {} both sent at ({ballot}, {slot})",
                    describe(existing),
                    describe(entry)
                );
                self.violation(message);
            }
            Some(_) => {}
            None => {
                self.sent_values.insert((ballot, slot), entry.clone());
            }
        }
    }

    pub fn issued(&mut self, id: RequestId, command: &KvCommand) {
        self.issued.insert(id, command.clone());
    }

    /// Where request `id` ran (not as a duplicate), on any replica so far.
    pub fn executed_at(&self, id: RequestId) -> Option<Slot> {
        self.executed.get(&id).copied()
    }

    /// The value agreed for `slot`, if any replica has reported it.
    pub fn chosen_entry(&self, slot: Slot) -> Option<&Entry> {
        self.chosen.get(&slot).map(|(entry, _)| entry)
    }

    /// The first application of `slot` anywhere changed `key` to `value`.
    pub fn key_changed(&mut self, key: &str, slot: Slot, value: Option<Value>) {
        self.history
            .entry(key.to_string())
            .or_default()
            .insert(slot, value);
    }

    /// A write to `key` was acknowledged as executed at `slot`.
    pub fn write_acked(&mut self, key: &str, slot: Slot) {
        let floor = self.acked_writes.entry(key.to_string()).or_insert(slot);
        *floor = (*floor).max(slot);
    }

    /// The highest slot of an acknowledged write to `key` (a read that
    /// begins now must see it).
    pub fn read_floor(&self, key: &str) -> Option<Slot> {
        self.acked_writes.get(key).copied()
    }

    /// `key`'s value in the state at `round` (every slot below it applied).
    fn value_at(&self, key: &str, round: Slot) -> Option<Value> {
        self.history
            .get(key)
            .and_then(|h| h.range(..round).next_back())
            .and_then(|(_, v)| v.clone())
    }

    /// A linearizable read of `key` that began when `floor` was the slot of
    /// the last acknowledged write to it returned `value`, from `node`'s
    /// state at `round`.
    pub fn read_returned(
        &mut self,
        node: NodeId,
        key: &str,
        floor: Option<Slot>,
        value: &Option<Value>,
        round: Slot,
    ) {
        if round > self.applied_floor {
            // Served by a replica whose turn then failed (a crash after its
            // applies): the history of those rounds is known once another
            // replica applies them.
            self.deferred_reads
                .push((node, key.to_string(), floor, value.clone(), round));
            return;
        }
        self.check_read(node, key, floor, value, round);
    }

    /// Checks the deferred reads whose rounds are now applied somewhere
    /// (all of them at the end).
    pub fn recheck_deferred_reads(&mut self, all: bool) {
        let floor = self.applied_floor;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred_reads)
            .into_iter()
            .partition(|read| all || read.4 <= floor);
        self.deferred_reads = waiting;
        for (node, key, floor, value, round) in ready {
            self.check_read(node, &key, floor, &value, round);
        }
    }

    fn check_read(
        &mut self,
        node: NodeId,
        key: &str,
        floor: Option<Slot>,
        value: &Option<Value>,
        round: Slot,
    ) {
        let at_round = self.value_at(key, round);
        if *value != at_round {
            self.violation(format!(
                "linearizable read: {node} returned {value:?} for {key} at round {round}, where \
                 the log says {at_round:?}"
            ));
            return;
        }
        let Some(floor) = floor else {
            return;
        };
        // Values the key held at or after the state that includes `floor`.
        let mut allowed = vec![self.value_at(key, floor.next())];
        if let Some(h) = self.history.get(key) {
            allowed.extend(h.range(floor.next()..).map(|(_, v)| v.clone()));
        }
        if !allowed.contains(value) {
            self.violation(format!(
                "linearizable read: {node} returned {value:?} for {key} (its state at round \
                 {round}), older than the write to it acknowledged at slot {floor} before the \
                 read began"
            ));
        }
    }

    /// A client was told that request `id` was executed at `slot` (by a
    /// replica applying it there, or from its session's record of where it
    /// ran). A client is answered once per request.
    pub fn acked(&mut self, id: RequestId, slot: Slot) {
        self.acked.insert(id, slot);
    }

    /// Agreement and validity for a value some replica holds as chosen.
    pub fn chosen_seen(&mut self, node: NodeId, slot: Slot, entry: &Entry) {
        match self.chosen.get(&slot) {
            Some((existing, by)) if existing != entry => {
                let message = format!(
                    "agreement: slot {slot} is {} on {by} but {} on {node}",
                    describe(existing),
                    describe(entry)
                );
                self.violation(message);
            }
            Some(_) => {}
            None => {
                if let Entry::Command { id, payload } = entry {
                    let command = KvRequest::decode(payload).ok().map(|r| r.command);
                    // A leader renews and expires leases itself, under a
                    // client id of its own (the top bit set); the lease
                    // checker judges when.
                    let leaders_revoke = id.client_id & (1 << 63) != 0
                        && matches!(
                            command,
                            Some(KvCommand::LeaseExpire { .. } | KvCommand::LeasesRenewed { .. })
                        );
                    if !leaders_revoke
                        && (command.is_none() || self.issued.get(id) != command.as_ref())
                    {
                        self.violation(format!(
                            "validity: slot {slot} on {node} holds {}, which no client proposed",
                            describe(entry)
                        ));
                    }
                }
                self.chosen.insert(slot, (entry.clone(), node));
            }
        }
    }

    /// `node` applied `entry` at `slot` and got `output`. Returns whether
    /// this is the first application of `slot` anywhere.
    pub fn applied(
        &mut self,
        node: NodeId,
        slot: Slot,
        entry: &Entry,
        output: &ApplyOutput,
    ) -> bool {
        self.applied_floor = self.applied_floor.max(slot.next());
        self.chosen_seen(node, slot, entry);
        let first = match self.outputs.get(&slot) {
            // All checked when the slot was first applied.
            Some(earlier) if earlier == output => return false,
            Some(earlier) => {
                let message = format!(
                    "applied prefix: {node} answered {output:?} at slot {slot}, another replica {earlier:?}"
                );
                self.violation(message);
                false
            }
            None => {
                self.outputs.insert(slot, output.clone());
                true
            }
        };
        let Some(id) = entry.request_id().filter(|_| !output.duplicate) else {
            return first;
        };
        // The exactly-once checker proper: a request id runs at one slot at
        // most, on every replica, whatever its retries, stamps and session
        // expiries.
        match self.executed.entry(id) {
            MapEntry::Occupied(earlier)
                if *earlier.get() != slot && residual_rerun(id, entry, *earlier.get()) =>
            {
                self.residual_reruns += 1;
            }
            MapEntry::Occupied(earlier) if *earlier.get() != slot => {
                let message = format!(
                    "exactly once: request {id} ({}) executed at slot {} and again at slot {slot} (on {node})",
                    describe(entry),
                    earlier.get()
                );
                self.violation(message);
            }
            MapEntry::Occupied(_) => {}
            MapEntry::Vacant(v) => {
                v.insert(slot);
            }
        }
        if let Some(counter) = counter_of(entry).filter(|_| output.is_ok()) {
            self.increments
                .entry(counter)
                .or_default()
                .insert((id, slot));
        }
        first
    }

    /// A digest of `node`'s whole state at applied round `round` (every slot
    /// below it applied): equal on every replica at the same round.
    pub fn state_at(&mut self, node: NodeId, round: Slot, digest: u64) {
        match self.states.get(&round) {
            Some((first, by)) if *first != digest => {
                let message =
                    format!("applied prefix: {node}'s state at round {round} differs from {by}'s");
                self.violation(message);
            }
            Some(_) => {}
            None => {
                self.states.insert(round, (digest, node));
            }
        }
    }

    /// Durability over the final log: every request acknowledged as executed
    /// ran at the slot it was acknowledged at.
    pub fn final_checks(&mut self) {
        self.recheck_deferred_reads(true);
        let mut problems = Vec::new();
        for (id, slot) in &self.acked {
            let holds = self.chosen.get(slot).map(|(e, _)| e);
            let ran_here = holds.is_some_and(|e| e.request_id() == Some(*id))
                && self.outputs.get(slot).is_some_and(|o| !o.duplicate);
            if !ran_here {
                problems.push(format!(
                    "durability: request {id}, acknowledged as executed at slot {slot}, did not \
                     run there in the final log (it holds {}{})",
                    holds.map_or("nothing".to_string(), describe),
                    match self.outputs.get(slot) {
                        Some(o) if o.duplicate => ", answered as a duplicate",
                        Some(_) => "",
                        None => ", never applied",
                    }
                ));
            }
        }
        problems.sort();
        for problem in problems {
            self.violation(problem);
        }
    }
}

/// A client's first request (seq 1) running again with a stamp past its
/// earlier execution: a retry that reached a replica which stamped it afresh
/// after the session expired. The design documents this as the residual
/// assumption of the session table (a fresh stamp is not told apart from a
/// new client); every other re-run is a violation.
fn residual_rerun(id: RequestId, entry: &Entry, earlier: Slot) -> bool {
    let Entry::Command { payload, .. } = entry else {
        return false;
    };
    id.seq == 1 && KvRequest::decode(payload).is_ok_and(|r| r.since > earlier)
}

fn describe(entry: &Entry) -> String {
    match entry {
        Entry::Noop => "no-op".to_string(),
        Entry::Config { id, membership } => format!(
            "{id} membership epoch {} voters {:#x} learners {:#x}",
            membership.epoch, membership.voters, membership.learners
        ),
        Entry::Command { id, payload } => match paxlog_kv::KvRequest::decode(payload) {
            Ok(request) => format!(
                "{id} {:?} stamped {}",
                request.command.describe(),
                request.since
            ),
            Err(_) => format!("{id} {:?}", String::from_utf8_lossy(payload)),
        },
    }
}
