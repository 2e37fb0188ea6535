//! Checkers named after the properties they guard.

use crate::workload::counter_of;
use paxlog_core::{Ballot, Entry, NodeId, Proposal, RequestId, Slot};
use paxlog_kv::ApplyOutput;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};

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
    /// Distinct requests that ran a successful `ctrN += 1`, by counter.
    increments: HashMap<&'static str, HashSet<RequestId>>,
    /// Validity: what clients proposed.
    issued: HashMap<RequestId, bytes::Bytes>,
    /// Durability: the slot each request was acknowledged as executed at.
    acked: HashMap<RequestId, Slot>,
    /// One past the highest slot any replica has applied.
    applied_floor: Slot,
    /// Every value sent in an Accept, by (ballot, slot): there is one.
    sent_values: HashMap<(Ballot, Slot), Entry>,
}

impl Checker {
    pub fn new(_nodes: u32) -> Checker {
        Checker {
            violations: Vec::new(),
            chosen: HashMap::new(),
            outputs: HashMap::new(),
            states: HashMap::new(),
            executed: HashMap::new(),
            increments: HashMap::new(),
            issued: HashMap::new(),
            acked: HashMap::new(),
            applied_floor: Slot::ZERO,
            sent_values: HashMap::new(),
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

    /// How many distinct requests successfully incremented `counter`.
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

    pub fn issued(&mut self, proposal: &Proposal) {
        self.issued.insert(proposal.id, proposal.payload.clone());
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
                    if self.issued.get(id) != Some(payload) {
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
            self.increments.entry(counter).or_default().insert(id);
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

fn describe(entry: &Entry) -> String {
    match entry {
        Entry::Noop => "no-op".to_string(),
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
