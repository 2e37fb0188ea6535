#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use paxlog_core::{DurableState, Entry, PersistRecord, Slot};
use paxlog_storage::{Wal, WalOptions};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = PersistRecord> {
    prop_oneof![
        (0u64..6, 0u32..3).prop_map(|(c, n)| PersistRecord::Promised(ballot(c, n))),
        (0u64..20, 0u64..6, 0u32..3, 0usize..300).prop_map(|(s, c, n, len)| {
            PersistRecord::Accepted {
                slot: Slot(s),
                ballot: ballot(c, n),
                entry: if len == 0 { Entry::Noop } else { entry(s, len) },
            }
        }),
        (0u64..20, proptest::option::of(0usize..50)).prop_map(|(s, len)| PersistRecord::Chosen {
            slot: Slot(s),
            entry: len.map(|l| entry(s, l)),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_record_sequences_roundtrip(
        raw in proptest::collection::vec(record(), 0..120),
        batches in proptest::collection::vec(1usize..10, 1..20),
        small in any::<bool>(),
    ) {
        // Keep only records a real replica could have written (the ones that
        // replay cleanly in order).
        let mut model = DurableState::default();
        let mut records = Vec::new();
        for r in raw {
            let mut next = model.clone();
            if next.replay(&r).is_ok() {
                model = next;
                records.push(r);
            }
        }
        let o = WalOptions {
            segment_bytes: if small { 1024 } else { 64 << 20 },
            ..WalOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), Slot::ZERO, o.clone()).unwrap();
            let mut rest = &records[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = batches[i % batches.len()].min(rest.len());
                wal.append(&rest[..n]).unwrap();
                wal.sync().unwrap();
                rest = &rest[n..];
                i += 1;
            }
        }
        let (_, rec) = Wal::open(dir.path(), Slot::ZERO, o).unwrap();
        prop_assert!(rec.repairs.is_empty());
        prop_assert_eq!(rec.state, model);
    }
}
