#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use paxlog_core::{PersistRecord, Slot};
use paxlog_storage::{inspect, RepairAction, StorageError, Wal, WalOptions, MAX_RECORD_BYTES};
use std::path::Path;

fn opts() -> WalOptions {
    WalOptions::default()
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 1024,
        ..WalOptions::default()
    }
}

/// Writes `records` one per append, syncing after each, and returns the
/// active segment length after each record.
fn write_each(dir: &Path, records: &[PersistRecord], o: WalOptions) -> Vec<u64> {
    let (mut wal, _) = Wal::open(dir, Slot::ZERO, o).unwrap();
    let mut ends = Vec::new();
    for r in records {
        wal.append(std::slice::from_ref(r)).unwrap();
        wal.sync().unwrap();
        ends.push(wal.active_segment_len());
    }
    ends
}

#[test]
fn append_sync_reopen_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let records = workload(200, 50);
    {
        let (mut wal, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
        assert_eq!(rec.state, replay_all(Slot::ZERO, &[]));
        for batch in records.chunks(7) {
            wal.append(batch).unwrap();
            wal.sync().unwrap();
        }
    }
    let (mut wal, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    assert!(rec.repairs.is_empty());
    assert_eq!(rec.state, replay_all(Slot::ZERO, &records));
    assert_eq!(rec.state.chosen.len(), 200);
    // Keep appending after a reopen.
    let more = vec![
        PersistRecord::Promised(ballot(5, 2)),
        accepted(200, ballot(5, 2), 10),
    ];
    wal.append(&more).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let all: Vec<_> = records.iter().chain(more.iter()).cloned().collect();
    let (_, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    assert_eq!(rec.state, replay_all(Slot::ZERO, &all));
    assert_eq!(rec.state.promised, ballot(5, 2));
}

#[test]
fn unsynced_appends_are_not_required_but_synced_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let records = workload(10, 20);
    {
        let (mut wal, _) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
        wal.append(&records).unwrap();
        wal.sync().unwrap();
        // Buffered but never synced nor flushed: lost on "crash" (drop).
        wal.append(&[accepted(99, ballot(1, 0), 5)]).unwrap();
    }
    let (_, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    assert_eq!(rec.state, replay_all(Slot::ZERO, &records));
}

#[test]
fn truncation_at_every_offset_of_last_record_recovers_the_prefix() {
    let src = tempfile::tempdir().unwrap();
    let records = workload(3, 40); // 7 records
    let ends = write_each(src.path(), &records, opts());
    let seg = segments(src.path()).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    let (good_end, last_end) = (ends[ends.len() - 2], ends[ends.len() - 1]);
    assert_eq!(full.len() as u64, last_end);
    let prefix = replay_all(Slot::ZERO, &records[..records.len() - 1]);
    let whole = replay_all(Slot::ZERO, &records);
    assert_ne!(prefix, whole);
    for cut in good_end..last_end {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(seg.file_name().unwrap());
        std::fs::write(&path, &full[..cut as usize]).unwrap();
        let (mut wal, rec) = Wal::open(dir.path(), Slot::ZERO, opts())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(rec.state, prefix, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            good_end,
            "cut at {cut}"
        );
        if cut == good_end {
            assert!(rec.repairs.is_empty());
        } else {
            assert_eq!(
                rec.repairs,
                vec![RepairAction::TruncatedTail {
                    path: path.clone(),
                    offset: good_end,
                    original_len: cut,
                    reason: match &rec.repairs[0] {
                        RepairAction::TruncatedTail { reason, .. } => reason.clone(),
                        other => panic!("unexpected repair {other:?}"),
                    },
                }],
                "cut at {cut}"
            );
        }
        // The repaired log accepts new records and recovers them.
        wal.append(&records[records.len() - 1..]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
        assert_eq!(rec.state, whole, "cut at {cut}, after re-append");
    }
}

#[test]
fn bit_flip_in_a_middle_record_is_an_error_naming_file_and_offset() {
    let records = workload(5, 30); // 11 records
    for (field_offset, what) in [(12u64, "payload"), (0, "length"), (5, "crc")] {
        let dir = tempfile::tempdir().unwrap();
        let ends = write_each(dir.path(), &records, opts());
        let seg = segments(dir.path()).pop().unwrap();
        // Record index 5 starts where record 4 ended.
        let bad = ends[4];
        flip_bit(&seg, bad + field_offset, 3);
        let before = std::fs::read(&seg).unwrap();
        let err = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap_err();
        match &err {
            StorageError::CorruptWal { path, offset, .. } => {
                assert_eq!(path, &seg, "{what}");
                assert_eq!(*offset, bad, "{what}");
            }
            other => panic!("{what}: expected CorruptWal, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&seg.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("offset {bad}")), "{msg}");
        // Nothing was repaired or dropped.
        assert_eq!(std::fs::read(&seg).unwrap(), before, "{what}");
        // inspect reports the same place and changes nothing.
        let report = inspect(dir.path()).unwrap();
        let p = report.first_corruption.clone().unwrap();
        assert_eq!((p.file, p.offset), (seg.clone(), bad));
        assert_eq!(std::fs::read(&seg).unwrap(), before);
    }
}

#[test]
fn bit_flip_in_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let records = workload(5, 30);
    let ends = write_each(dir.path(), &records, opts());
    let seg = segments(dir.path()).pop().unwrap();
    let good_end = ends[ends.len() - 2];
    // The last payload byte.
    flip_bit(&seg, ends[ends.len() - 1] - 1, 0);
    let report = inspect(dir.path()).unwrap();
    assert!(report.first_corruption.is_none());
    assert_eq!(report.torn_tail.as_ref().unwrap().offset, good_end);
    let (_, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    assert_eq!(
        rec.state,
        replay_all(Slot::ZERO, &records[..records.len() - 1])
    );
    assert!(matches!(
        &rec.repairs[..],
        [RepairAction::TruncatedTail { offset, .. }] if *offset == good_end
    ));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_end);
}

#[test]
fn bad_segment_header_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_each(dir.path(), &workload(2, 10), opts());
    let seg = segments(dir.path()).pop().unwrap();
    flip_bit(&seg, 2, 1);
    match Wal::open(dir.path(), Slot::ZERO, opts()).unwrap_err() {
        StorageError::CorruptWal { path, offset, .. } => {
            assert_eq!(path, seg);
            assert_eq!(offset, 0);
        }
        other => panic!("expected CorruptWal, got {other:?}"),
    }
}

#[test]
fn torn_tail_in_a_non_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_each(dir.path(), &workload(40, 60), small_segments());
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let first = &segs[0];
    let len = std::fs::metadata(first).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(first).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    match Wal::open(dir.path(), Slot::ZERO, small_segments()).unwrap_err() {
        StorageError::CorruptWal { path, .. } => assert_eq!(&path, first),
        other => panic!("expected CorruptWal, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(first).unwrap().len(), len - 3);
}

#[test]
fn missing_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_each(dir.path(), &workload(40, 60), small_segments());
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();
    match Wal::open(dir.path(), Slot::ZERO, small_segments()).unwrap_err() {
        StorageError::MissingSegment { missing, .. } => assert_eq!(missing, 2),
        other => panic!("expected MissingSegment, got {other:?}"),
    }
}

#[test]
fn replay_error_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let records = vec![accepted(0, ballot(1, 0), 5), chosen(1)];
    let ends = write_each(dir.path(), &records, opts());
    let seg = segments(dir.path()).pop().unwrap();
    match Wal::open(dir.path(), Slot::ZERO, opts()).unwrap_err() {
        StorageError::Replay { path, offset, .. } => {
            assert_eq!(path, seg);
            assert_eq!(offset, ends[0]);
        }
        other => panic!("expected Replay, got {other:?}"),
    }
}

#[test]
fn rollover_and_compact_delete_the_right_segments_and_keep_the_promise() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = ballot(1, 0);
    let p2 = ballot(2, 1);
    let mut records = vec![PersistRecord::Promised(p1), PersistRecord::Promised(p2)];
    for s in 0..100 {
        records.push(accepted(s, p2, 80));
        records.push(chosen(s));
    }
    {
        let (mut wal, _) = Wal::open(dir.path(), Slot::ZERO, small_segments()).unwrap();
        for b in records.chunks(3) {
            wal.append(b).unwrap();
            wal.sync().unwrap();
        }
        let before = inspect(dir.path()).unwrap();
        assert!(before.segments.len() > 10, "{}", before.segments.len());
        // Segments that must go: the longest non-active prefix whose slots
        // are all < 50.
        let n = before.segments.len();
        let expected: Vec<_> = before.segments[..n - 1]
            .iter()
            .take_while(|s| s.max_slot.is_none_or(|m| m < Slot(50)))
            .map(|s| s.file.clone())
            .collect();
        assert!(!expected.is_empty());
        let deleted = wal.compact(Slot(50)).unwrap();
        assert_eq!(deleted, expected);
        let after = inspect(dir.path()).unwrap();
        assert_eq!(after.segments.len(), n - expected.len());
        // The first remaining segment still holds a slot >= 50... and maybe
        // some below it.
        assert!(after.segments[0].max_slot.unwrap() >= Slot(50));
        // Compacting again at the same point deletes nothing.
        assert!(wal.compact(Slot(50)).unwrap().is_empty());
    }
    // The first segment (with both promises) is gone, yet the promise survives.
    assert!(!segments(dir.path())[0].ends_with("wal-0000000000000001.log"));
    let (mut wal, rec) = Wal::open(dir.path(), Slot(50), small_segments()).unwrap();
    let mut expected = replay_all(Slot::ZERO, &records);
    expected.compact(Slot(50));
    assert_eq!(rec.state, expected);
    assert_eq!(rec.state.promised, p2);

    // Compact everything but the active segment.
    let deleted = wal.compact(Slot(u64::MAX)).unwrap();
    assert!(!deleted.is_empty());
    assert_eq!(wal.segment_paths().len(), 1);
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), Slot(100), small_segments()).unwrap();
    assert_eq!(rec.state.promised, p2);
    assert!(rec.state.accepted.is_empty());
}

#[test]
fn unfinished_segment_temp_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_each(dir.path(), &workload(2, 10), opts());
    let tmp = dir.path().join("wal-0000000000000002.log.tmp");
    std::fs::write(&tmp, b"PAXWAL01 half").unwrap();
    let (_, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    assert_eq!(
        rec.repairs,
        vec![RepairAction::RemovedTempFile { path: tmp.clone() }]
    );
    assert!(!tmp.exists());
}

#[test]
fn oversized_record_is_rejected_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    let big = accepted(0, ballot(1, 0), MAX_RECORD_BYTES + 1);
    assert!(matches!(
        wal.append(&[big]),
        Err(StorageError::RecordTooLarge { .. })
    ));
    assert!(!wal.is_poisoned());
    wal.append(&[accepted(0, ballot(1, 0), 10)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), Slot::ZERO, opts()).unwrap();
    assert_eq!(rec.state.accepted.len(), 1);
}
