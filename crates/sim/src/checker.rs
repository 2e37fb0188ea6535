//! Checkers named after the properties they guard.

use crate::state_machine::{SimOutput, SimStateMachine};
use paxlog_core::{Ballot, Entry, NodeId, Proposal, RequestId, Slot};
use std::collections::HashMap;

const MAX_VIOLATIONS: usize = 50;

pub struct Checker {
    violations: Vec<String>,
    /// Agreement: the one value each slot may hold, across replicas and time.
    chosen: HashMap<Slot, (Entry, NodeId)>,
    /// Applied-prefix equality: the prefix hash after applying each slot.
    prefix_hash: HashMap<Slot, u64>,
    /// Whether applying the slot was a dedup hit (must agree everywhere).
    duplicate_at: HashMap<Slot, bool>,
    /// Validity: what clients proposed.
    issued: HashMap<RequestId, bytes::Bytes>,
    /// Durability: what clients were told succeeded.
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
            prefix_hash: HashMap::new(),
            duplicate_at: HashMap::new(),
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

    pub fn acked(&mut self, id: RequestId, slot: Slot) {
        self.acked.entry(id).or_insert(slot);
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

    pub fn applied(&mut self, node: NodeId, slot: Slot, entry: &Entry, output: &SimOutput) {
        self.applied_floor = self.applied_floor.max(slot.next());
        self.chosen_seen(node, slot, entry);
        match self.prefix_hash.get(&slot) {
            Some(hash) if *hash != output.hash => {
                self.violation(format!(
                    "applied prefix: {node}'s state after slot {slot} differs from another replica's"
                ));
            }
            Some(_) => {}
            None => {
                self.prefix_hash.insert(slot, output.hash);
            }
        }
        match self.duplicate_at.get(&slot) {
            Some(dup) if *dup != output.duplicate => {
                self.violation(format!(
                    "exactly once: {node} and another replica disagree on whether slot {slot} is a retry"
                ));
            }
            Some(_) => {}
            None => {
                self.duplicate_at.insert(slot, output.duplicate);
            }
        }
    }

    pub fn snapshot_installed(&mut self, node: NodeId, slot: Slot, sm: &SimStateMachine) {
        if slot == Slot::ZERO {
            return;
        }
        let last = Slot(slot.0 - 1);
        if let Some(hash) = self.prefix_hash.get(&last) {
            if *hash != sm.hash() {
                self.violation(format!(
                    "applied prefix: snapshot installed on {node} at {slot} differs from the applied prefix"
                ));
            }
        }
    }

    /// Durability and exactly-once over the final log.
    pub fn final_checks(&mut self) {
        let mut applied_count: HashMap<RequestId, u32> = HashMap::new();
        for (slot, (entry, _)) in &self.chosen {
            if let Some(id) = entry.request_id() {
                if self.duplicate_at.get(slot) == Some(&false) {
                    *applied_count.entry(id).or_default() += 1;
                }
            }
        }
        let mut problems = Vec::new();
        for (id, slot) in &self.acked {
            match applied_count.get(id).copied().unwrap_or(0) {
                1 => {}
                0 => problems.push(format!(
                    "durability: request {id}, acknowledged at slot {slot}, is not in the final log"
                )),
                n => problems.push(format!("exactly once: request {id} applied {n} times")),
            }
        }
        for (id, n) in &applied_count {
            if *n > 1 && !self.acked.contains_key(id) {
                problems.push(format!("exactly once: request {id} applied {n} times"));
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
        Entry::Command { id, payload } => {
            format!("{id} {:?}", String::from_utf8_lossy(payload))
        }
    }
}
