//! The durable part of a replica, rebuilt on restart by replaying
//! `PersistRecord`s in the order they were written.

use crate::ready::PersistRecord;
use crate::types::{Ballot, Entry, Slot};
use std::collections::BTreeMap;

/// Acceptor and learner state that survives a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// Highest ballot promised.
    pub promised: Ballot,
    /// Highest ballot this replica campaigned with (never used again).
    pub campaigned: Ballot,
    /// Every slot below this is covered by the snapshot the state machine
    /// was restored from; records for those slots are ignored.
    pub log_start: Slot,
    /// Per slot: the last accepted `(ballot, entry)`.
    pub accepted: BTreeMap<Slot, (Ballot, Entry)>,
    /// Slots known chosen, with their values.
    pub chosen: BTreeMap<Slot, Entry>,
    /// This state may lack promises and accepts the replica once made (a
    /// lost folder, a log cut at its tail): it must recover before it votes.
    /// Kept by the driver beside the log (not a log record), until the
    /// core reports `Event::Recovered`.
    pub recovering: bool,
}

/// A record that contradicts what was replayed before it: the log is not one
/// this replica could have written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError {
    pub reason: String,
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inconsistent log record: {}", self.reason)
    }
}

impl std::error::Error for ReplayError {}

impl DurableState {
    /// Starts from a snapshot that covers every slot below `log_start`.
    pub fn from_snapshot(log_start: Slot) -> Self {
        DurableState {
            log_start,
            ..DurableState::default()
        }
    }

    /// Replays one record. Records must be replayed in write order.
    pub fn replay(&mut self, record: &PersistRecord) -> Result<(), ReplayError> {
        match record {
            PersistRecord::Promised(ballot) => {
                // A replica writes promises in increasing order; a lower one
                // after a higher one means the log is corrupt or misordered.
                if *ballot < self.promised {
                    return Err(ReplayError {
                        reason: format!("promise {ballot} after promise {}", self.promised),
                    });
                }
                self.promised = *ballot;
            }
            PersistRecord::Campaigned(ballot) => {
                self.campaigned = self.campaigned.max(*ballot);
            }
            PersistRecord::Accepted {
                slot,
                ballot,
                entry,
            } => {
                if *slot < self.log_start {
                    return Ok(());
                }
                self.accepted.insert(*slot, (*ballot, entry.clone()));
            }
            PersistRecord::Chosen { slot, entry } => {
                if *slot < self.log_start {
                    return Ok(());
                }
                let value = match entry {
                    Some(entry) => entry.clone(),
                    None => match self.accepted.get(slot) {
                        Some((_, entry)) => entry.clone(),
                        None => {
                            return Err(ReplayError {
                                reason: format!("slot {slot} marked chosen but nothing accepted"),
                            })
                        }
                    },
                };
                if let Some(previous) = self.chosen.get(slot) {
                    if *previous != value {
                        return Err(ReplayError {
                            reason: format!("slot {slot} chosen twice with different values"),
                        });
                    }
                }
                self.chosen.insert(*slot, value);
            }
        }
        Ok(())
    }

    /// Drops everything below `log_start` (after a snapshot covering it).
    pub fn compact(&mut self, log_start: Slot) {
        if log_start <= self.log_start {
            return;
        }
        self.log_start = log_start;
        self.accepted = self.accepted.split_off(&log_start);
        self.chosen = self.chosen.split_off(&log_start);
    }

    /// The records that reproduce this state, for rewriting a compacted log.
    pub fn to_records(&self) -> Vec<PersistRecord> {
        let mut records = vec![
            PersistRecord::Promised(self.promised),
            PersistRecord::Campaigned(self.campaigned),
        ];
        for (slot, (ballot, entry)) in &self.accepted {
            records.push(PersistRecord::Accepted {
                slot: *slot,
                ballot: *ballot,
                entry: entry.clone(),
            });
        }
        for (slot, entry) in &self.chosen {
            let same_as_accepted = self.accepted.get(slot).is_some_and(|(_, e)| e == entry);
            records.push(PersistRecord::Chosen {
                slot: *slot,
                entry: (!same_as_accepted).then(|| entry.clone()),
            });
        }
        records
    }
}
