//! The simulator's state machine: a dedup table (exactly-once) and a hash
//! chain over every applied entry (so equal hashes mean equal prefixes).

use paxlog_core::{Entry, RequestId, Slot, StateMachine};
use std::collections::BTreeSet;

#[derive(Default, Clone)]
pub struct SimStateMachine {
    applied_upto: Slot,
    hash: u64,
    seen: BTreeSet<RequestId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOutput {
    pub duplicate: bool,
    /// Hash of the applied prefix after this entry.
    pub hash: u64,
}

#[derive(Debug)]
pub struct SnapshotError(pub &'static str);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for SnapshotError {}

fn mix(hash: u64, value: u64) -> u64 {
    let mut z = (hash ^ value).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimStateMachine {
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// After a detected ordering violation, continue from `slot`.
    pub fn skip_to(&mut self, slot: Slot) {
        self.applied_upto = slot;
    }
}

impl StateMachine for SimStateMachine {
    type Output = SimOutput;
    type Error = SnapshotError;

    fn apply(&mut self, slot: Slot, entry: &Entry) -> SimOutput {
        let mut hash = mix(self.hash, slot.0);
        let mut duplicate = false;
        if let Entry::Command { id, payload } = entry {
            hash = mix(hash, id.client_id);
            hash = mix(hash, id.seq);
            for chunk in payload.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                hash = mix(hash, u64::from_le_bytes(word));
            }
            duplicate = !self.seen.insert(*id);
        }
        self.hash = hash;
        self.applied_upto = slot.next();
        SimOutput { duplicate, hash }
    }

    fn applied_upto(&self) -> Slot {
        self.applied_upto
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 16 * self.seen.len());
        out.extend_from_slice(&self.applied_upto.0.to_le_bytes());
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&(self.seen.len() as u64).to_le_bytes());
        for id in &self.seen {
            out.extend_from_slice(&id.client_id.to_le_bytes());
            out.extend_from_slice(&id.seq.to_le_bytes());
        }
        out
    }

    fn restore(&mut self, image: &[u8]) -> Result<(), SnapshotError> {
        let word = |i: usize| -> Result<u64, SnapshotError> {
            image
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(SnapshotError("snapshot image truncated"))
        };
        let count = word(2)? as usize;
        if image.len() != 24 + 16 * count {
            return Err(SnapshotError("snapshot image has the wrong length"));
        }
        let mut seen = BTreeSet::new();
        for i in 0..count {
            seen.insert(RequestId {
                client_id: word(3 + 2 * i)?,
                seq: word(4 + 2 * i)?,
            });
        }
        self.applied_upto = Slot(word(0)?);
        self.hash = word(1)?;
        self.seen = seen;
        Ok(())
    }
}
