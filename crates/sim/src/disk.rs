//! A simulated disk. Only what reached a sync survives a crash; the
//! simulator decides where a crash cuts a batch.

use paxlog_core::{Ballot, DurableState, NodeId, PersistRecord, Slot};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct SimDisk {
    /// The replayed image of every synced record.
    pub durable: DurableState,
    /// The highest promise ever made durable (for the monotonicity check,
    /// which must survive the forget-promise bug).
    pub durable_promise_high_water: Ballot,
    /// Durable snapshots by the round they start the log at, each with
    /// the crc32c written beside it.
    pub snapshots: BTreeMap<Slot, (Vec<u8>, u32)>,
    /// Records written without an fsync (chosen marks): durable only once a
    /// later batch is synced, lost if the replica crashes first.
    pub unsynced: Vec<PersistRecord>,
    /// The synced records since the snapshot, in order (for a cut tail).
    pub records: Vec<PersistRecord>,
    /// The driver's "recovering" mark beside the log: set when the disk
    /// was lost or its synced tail cut, cleared on `Event::Recovered`.
    pub recovering: bool,
}

impl SimDisk {
    /// A crash: what was never synced is gone.
    pub fn crash(&mut self) {
        self.unsynced.clear();
    }

    /// Records handed to the OS without an fsync (lost at a crash).
    pub fn write_lazy(&mut self, records: &[PersistRecord]) {
        self.unsynced.extend_from_slice(records);
    }

    /// Writes and syncs the lazy records, then `records`, in order.
    pub fn write_synced(
        &mut self,
        records: &[PersistRecord],
        violations: &mut Vec<String>,
        node: NodeId,
    ) {
        let lazy = std::mem::take(&mut self.unsynced);
        for record in lazy.iter().chain(records) {
            if let Err(error) = self.durable.replay(record) {
                violations.push(format!("{node}: disk replay rejected a record: {error}"));
            }
            self.records.push(record.clone());
        }
        self.durable_promise_high_water =
            self.durable_promise_high_water.max(self.durable.promised);
    }

    /// Drops the log wholly below `slot` (durably, as deleting segments
    /// is); returns whether anything went.
    pub fn compact_log(&mut self, slot: Slot) -> bool {
        if slot <= self.durable.log_start {
            return false;
        }
        self.unsynced.retain(|r| r.slot().is_none_or(|s| s >= slot));
        self.durable.compact(slot);
        self.records = self.durable.to_records();
        true
    }

    /// The newest snapshot, if any.
    pub fn newest_snapshot(&self) -> Option<(Slot, &[u8])> {
        self.snapshots
            .iter()
            .next_back()
            .map(|(slot, (image, _))| (*slot, image.as_slice()))
    }

    /// A fault: the folder is gone (a replaced disk). The replica starts
    /// empty and marked recovering, as `--initial-cluster-state existing`.
    pub fn lose_everything(&mut self) {
        *self = SimDisk {
            recovering: true,
            ..SimDisk::default()
        };
    }

    /// A fault: the last `count` synced records are damaged and cut off at
    /// restart (a torn write and a damaged synced record look alike), so the
    /// replica is marked recovering.
    pub fn cut_synced_tail(&mut self, count: usize) {
        let keep = self.records.len().saturating_sub(count);
        self.records.truncate(keep);
        let mut durable = DurableState::from_snapshot(self.durable.log_start);
        for record in &self.records {
            // These replayed before, in the same order.
            let _ = durable.replay(record);
        }
        self.durable = durable;
        self.durable_promise_high_water = self.durable.promised;
        self.unsynced.clear();
        self.recovering = true;
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
