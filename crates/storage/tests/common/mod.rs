#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use paxlog_core::{Ballot, DurableState, Entry, NodeId, PersistRecord, RequestId, Slot};
use std::path::{Path, PathBuf};

pub fn ballot(counter: u64, node: u32) -> Ballot {
    Ballot {
        counter,
        node: NodeId(node),
    }
}

pub fn entry(seq: u64, len: usize) -> Entry {
    Entry::Command {
        id: RequestId { client_id: 9, seq },
        payload: Bytes::from(
            (0..len)
                .map(|i| (i as u64 + seq) as u8)
                .collect::<Vec<u8>>(),
        ),
    }
}

pub fn accepted(slot: u64, b: Ballot, len: usize) -> PersistRecord {
    PersistRecord::Accepted {
        slot: Slot(slot),
        ballot: b,
        entry: entry(slot, len),
    }
}

pub fn chosen(slot: u64) -> PersistRecord {
    PersistRecord::Chosen {
        slot: Slot(slot),
        entry: None,
    }
}

pub fn replay_all(log_start: Slot, records: &[PersistRecord]) -> DurableState {
    let mut s = DurableState::from_snapshot(log_start);
    for r in records {
        s.replay(r).unwrap();
    }
    s
}

/// A realistic sequence: promise, then accept + choose slots 0..n.
pub fn workload(n: u64, payload: usize) -> Vec<PersistRecord> {
    let b = ballot(1, 0);
    let mut v = vec![PersistRecord::Promised(b)];
    for s in 0..n {
        v.push(accepted(s, b, payload));
        v.push(chosen(s));
    }
    v
}

pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("wal-") && n.ends_with(".log")
        })
        .collect();
    v.sort();
    v
}

pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut data = std::fs::read(path).unwrap();
    data[offset as usize] ^= 1 << bit;
    std::fs::write(path, data).unwrap();
}
