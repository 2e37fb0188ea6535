//! A simulated disk. Only what reached a sync survives a crash; the
//! simulator decides where a crash cuts a batch.

use crate::checker::Checker;
use paxlog_core::{Ballot, DurableState, NodeId, PersistRecord, Slot};

#[derive(Default)]
pub struct SimDisk {
    /// The replayed image of every synced record.
    pub durable: DurableState,
    /// The highest promise ever made durable (for the monotonicity check,
    /// which must survive the forget-promise bug).
    pub durable_promise_high_water: Ballot,
    pub snapshot: Option<(Slot, Vec<u8>)>,
}

impl SimDisk {
    /// Writes and syncs `records` in order.
    pub fn write_synced(&mut self, records: &[PersistRecord], checker: &mut Checker, node: NodeId) {
        for record in records {
            if let Err(error) = self.durable.replay(record) {
                checker.violation(format!("{node}: disk replay rejected a record: {error}"));
            }
        }
        self.durable_promise_high_water =
            self.durable_promise_high_water.max(self.durable.promised);
    }

    pub fn save_snapshot(&mut self, slot: Slot, image: Vec<u8>) {
        self.durable.compact(slot);
        self.snapshot = Some((slot, image));
    }

    /// Bug injection: the promise is lost on restart.
    pub fn forget_promise(&mut self) {
        self.durable.promised = Ballot::ZERO;
    }

    /// Bug injection: every accepted and chosen value is lost on restart.
    pub fn lose_log(&mut self) {
        self.durable.accepted.clear();
        self.durable.chosen.clear();
    }
}
