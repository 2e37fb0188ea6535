#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use paxlog_core::{PersistRecord, Slot};
use paxlog_storage::{inspect, DataDir, WalOptions};

#[test]
fn report_of_a_healthy_directory() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let dd = DataDir::open_or_init(tmp.path(), "c9", 4).unwrap();
        let mut r = dd
            .recover(WalOptions {
                segment_bytes: 1024,
                ..WalOptions::default()
            })
            .unwrap();
        let mut recs = workload(30, 40);
        // A hole at 31: chosen_upto stops at 31.
        recs.push(accepted(32, ballot(1, 0), 4));
        recs.push(chosen(32));
        recs.push(PersistRecord::Promised(ballot(7, 4)));
        r.wal.append(&recs).unwrap();
        r.wal.sync().unwrap();
        r.snapshots.save(Slot(3), b"img").unwrap();
    }
    let listing = |p: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(tmp.path());
    let report = inspect(tmp.path()).unwrap();
    assert_eq!(
        listing(tmp.path()),
        before,
        "inspect must not modify anything"
    );
    assert!(report.is_healthy(), "{report}");
    assert_eq!(report.metadata.as_ref().unwrap().cluster_id, "c9");
    assert_eq!(report.snapshots.len(), 1);
    assert!(report.snapshots[0].checksum_ok);
    assert_eq!(report.log_start, Slot(3));
    assert_eq!(report.chosen_upto, Slot(30));
    assert_eq!(report.last_promised, Some(ballot(7, 4)));
    assert!(report.segments.len() > 2);
    let accepted: u64 = report.segments.iter().map(|s| s.accepted_records).sum();
    let chosen_n: u64 = report.segments.iter().map(|s| s.chosen_records).sum();
    assert_eq!((accepted, chosen_n), (31, 31));
    assert_eq!(report.segments[0].min_slot, Some(Slot(0)));
    assert!(report.first_corruption.is_none() && report.torn_tail.is_none());
    let text = report.to_string();
    assert!(text.contains("chosen_upto: 30"), "{text}");
    assert!(text.contains("first corruption: none"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["chosen_upto"], 30);
}

#[test]
fn corrupt_snapshot_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = DataDir::open_or_init(tmp.path(), "c9", 4).unwrap();
    let path = dd
        .snapshots()
        .unwrap()
        .save(Slot(3), b"image bytes")
        .unwrap();
    flip_bit(&path, 40, 0);
    let report = inspect(tmp.path()).unwrap();
    assert!(!report.snapshots[0].checksum_ok);
    assert_eq!(report.first_corruption.unwrap().file, path);
}
