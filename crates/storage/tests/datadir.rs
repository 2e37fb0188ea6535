#![allow(clippy::unwrap_used)]

mod common;

use paxlog_core::Slot;
use paxlog_storage::{DataDir, StorageError, WalOptions, META_FILE};

#[test]
fn init_then_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("node0");
    {
        let dd = DataDir::open_or_init(&path, "c1", 0).unwrap();
        assert_eq!(dd.metadata().cluster_id, "c1");
        assert_eq!(dd.metadata().node_id, 0);
    }
    let dd = DataDir::open_or_init(&path, "c1", 0).unwrap();
    assert_eq!(dd.path(), path);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join(META_FILE)).unwrap()).unwrap();
    assert_eq!(meta["cluster_id"], "c1");
    assert_eq!(meta["format_version"], 1);
}

#[test]
fn other_cluster_or_node_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open_or_init(tmp.path(), "c1", 2).unwrap());
    let err = DataDir::open_or_init(tmp.path(), "c2", 2).unwrap_err();
    assert!(
        matches!(err, StorageError::ClusterMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("c1"));
    let err = DataDir::open_or_init(tmp.path(), "c1", 3).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NodeMismatch {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn second_open_is_locked_out_until_the_first_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
    let err = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    drop(first);
    DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
}

#[test]
fn corrupt_or_missing_metadata_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open_or_init(tmp.path(), "c1", 0).unwrap());
    std::fs::write(tmp.path().join(META_FILE), b"{\"format_version\": 1, \"clu").unwrap();
    let err = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap_err();
    assert!(
        matches!(err, StorageError::CorruptMetadata { .. }),
        "{err:?}"
    );

    std::fs::write(
        tmp.path().join(META_FILE),
        br#"{"format_version": 9, "cluster_id": "c1", "node_id": 0}"#,
    )
    .unwrap();
    let err = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap_err();
    assert!(
        matches!(err, StorageError::UnsupportedVersion { found: 9, .. }),
        "{err:?}"
    );

    // WAL files without metadata: not silently adopted.
    let tmp2 = tempfile::tempdir().unwrap();
    {
        let dd = DataDir::open_or_init(tmp2.path(), "c1", 0).unwrap();
        dd.open_wal(Slot::ZERO, WalOptions::default()).unwrap();
    }
    std::fs::remove_file(tmp2.path().join(META_FILE)).unwrap();
    let err = DataDir::open_or_init(tmp2.path(), "c1", 0).unwrap_err();
    assert!(
        matches!(err, StorageError::CorruptMetadata { .. }),
        "{err:?}"
    );
}

#[test]
fn unwritable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    // The second half: this same test, run again as an unprivileged user.
    if let Ok(path) = std::env::var("PAXLOG_TEST_UNWRITABLE_DIR") {
        let err = DataDir::open_or_init(&path, "c1", 0).unwrap_err();
        assert!(matches!(err, StorageError::NotWritable { .. }), "{err:?}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = tmp.path().join("ro");
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(path.join("probe"), b"x").is_err() {
        let err = DataDir::open_or_init(&path, "c1", 0).unwrap_err();
        assert!(matches!(err, StorageError::NotWritable { .. }), "{err:?}");
        return;
    }
    // Root ignores permissions: run this test again as user nobody.
    std::fs::remove_file(path.join("probe")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "unwritable_directory_is_refused",
            "--test-threads=1",
        ])
        .env("PAXLOG_TEST_UNWRITABLE_DIR", &path)
        .output()
        .expect("setpriv (util-linux) runs the test as an unprivileged user");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "as nobody: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn recover_uses_snapshot_log_start() {
    use paxlog_core::{Ballot, Entry, NodeId, PersistRecord};
    let tmp = tempfile::tempdir().unwrap();
    let b = Ballot {
        counter: 1,
        node: NodeId(0),
    };
    {
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        let mut r = dd.recover(WalOptions::default()).unwrap();
        assert!(r.snapshot.is_none());
        for s in 0..10 {
            r.wal
                .append(&[
                    PersistRecord::Accepted {
                        slot: Slot(s),
                        ballot: b,
                        entry: Entry::Noop,
                    },
                    PersistRecord::Chosen {
                        slot: Slot(s),
                        entry: None,
                    },
                ])
                .unwrap();
        }
        r.wal.sync().unwrap();
        r.snapshots.save(Slot(6), b"state below 6").unwrap();
    }
    let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
    let r = dd.recover(WalOptions::default()).unwrap();
    assert_eq!(r.snapshot, Some((Slot(6), b"state below 6".to_vec())));
    assert_eq!(r.recovered.state.log_start, Slot(6));
    assert_eq!(
        r.recovered.state.chosen.keys().copied().collect::<Vec<_>>(),
        vec![Slot(6), Slot(7), Slot(8), Slot(9)]
    );
}

mod fallback {
    use super::*;
    use crate::common::{accepted, ballot, chosen, flip_bit};
    use paxlog_core::PersistRecord;
    use paxlog_storage::{inspect, Wal, SNAPSHOT_HEADER_LEN};
    use std::path::{Path, PathBuf};

    fn small_segments() -> WalOptions {
        WalOptions {
            segment_bytes: 1024,
            ..WalOptions::default()
        }
    }

    /// Rounds 0..30 accepted and chosen, with ~1 KiB entries so that each
    /// segment after the first starts with the chosen mark of the slot
    /// accepted at the end of the previous one; snapshots at 10 and 20; the
    /// log compacted at 20. Returns the two snapshot files.
    fn build(dir: &Path, compact: bool) -> (PathBuf, PathBuf) {
        let dd = DataDir::open_or_init(dir, "c1", 0).unwrap();
        let (mut wal, _) = dd.open_wal(Slot::ZERO, small_segments()).unwrap();
        let b = ballot(1, 0);
        wal.append(&[PersistRecord::Promised(b)]).unwrap();
        for s in 0..30 {
            wal.append(&[accepted(s, b, 1100), chosen(s)]).unwrap();
        }
        wal.sync().unwrap();
        let store = dd.snapshots().unwrap();
        let ten = store.save(Slot(10), b"ten").unwrap();
        let twenty = store.save(Slot(20), b"twenty").unwrap();
        if compact {
            assert!(!wal.compact(Slot(20)).unwrap().is_empty());
        }
        (ten, twenty)
    }

    #[test]
    fn corrupt_newest_snapshot_falls_back_over_a_compacted_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, twenty) = build(tmp.path(), true);
        flip_bit(&twenty, SNAPSHOT_HEADER_LEN as u64 + 1, 0);
        {
            let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
            let mut r = dd.recover(small_segments()).unwrap();
            assert_eq!(r.snapshot, Some((Slot(10), b"ten".to_vec())));
            assert_eq!(r.skipped.len(), 1);
            assert_eq!(r.skipped[0].log_start, Slot(20));
            assert_eq!(r.skipped[0].path, twenty);
            assert!(r.skipped[0].reason.contains("checksum"), "{:?}", r.skipped);
            assert_eq!(r.wal_may_lack_below, Some(Slot(20)));
            let state = &r.recovered.state;
            assert_eq!(state.log_start, Slot(10));
            // Rounds 10..19 were compacted away; the mark of 19 survived
            // without its accepted value and is skipped, not fatal.
            assert_eq!(r.recovered.orphan_chosen_marks, 1);
            assert_eq!(
                state.chosen.keys().copied().collect::<Vec<_>>(),
                (20..30).map(Slot).collect::<Vec<_>>()
            );
            assert_eq!(state.promised, ballot(1, 0));
            // The recovered WAL takes new records.
            r.wal.append(&[accepted(30, ballot(1, 0), 10)]).unwrap();
            r.wal.sync().unwrap();
        }
        // `inspect` agrees with recovery: a bad snapshot, no fatal damage.
        let report = inspect(tmp.path()).unwrap();
        assert_eq!(report.log_start, Slot(10));
        assert!(report.first_corruption.is_none(), "{report}");
        assert!(!report.is_healthy());
        // And a second restart is just as good.
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        let r = dd.recover(small_segments()).unwrap();
        assert_eq!(r.snapshot.unwrap().0, Slot(10));
        assert!(r.recovered.state.accepted.contains_key(&Slot(30)));
    }

    /// The server compacts the log only below the OLDEST snapshot it keeps
    /// and the WAL records that floor, so falling back from the newest
    /// snapshot to the older one finds the log complete from there.
    #[test]
    fn fallback_to_the_snapshot_the_log_was_compacted_to_forgets_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, twenty) = build(tmp.path(), false);
        {
            let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
            let mut r = dd.recover(small_segments()).unwrap();
            assert!(!r.wal.compact(Slot(10)).unwrap().is_empty());
        }
        assert_eq!(
            paxlog_storage::read_wal_floor(tmp.path()).unwrap(),
            Some(Slot(10))
        );
        flip_bit(&twenty, SNAPSHOT_HEADER_LEN as u64 + 1, 0);
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        let r = dd.recover(small_segments()).unwrap();
        assert_eq!(r.snapshot.unwrap().0, Slot(10));
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.wal_may_lack_below, None);
        assert_eq!(r.recovered.orphan_chosen_marks, 0);
        let state = &r.recovered.state;
        for s in 10..30 {
            assert!(state.accepted.contains_key(&Slot(s)), "round {s} accepted");
            assert!(state.chosen.contains_key(&Slot(s)), "round {s} chosen");
        }
    }

    #[test]
    fn wal_replays_from_below_its_first_record_only_with_a_floor() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), true);
        // Strict replay from 10 still treats the orphaned mark as damage...
        assert!(matches!(
            Wal::open(tmp.path(), Slot(10), small_segments()),
            Err(StorageError::Replay { .. })
        ));
        // ...but knowing the log was compacted up to 20, it is tolerated.
        let (_, rec) =
            Wal::open_with_floor(tmp.path(), Slot(10), Slot(20), small_segments()).unwrap();
        assert_eq!(rec.orphan_chosen_marks, 1);
        assert_eq!(rec.state.chosen.len(), 10);
        // A value-less mark at or above the floor is still damage.
        assert!(matches!(
            Wal::open_with_floor(tmp.path(), Slot(10), Slot(19), small_segments()),
            Err(StorageError::Replay { .. })
        ));
    }

    #[test]
    fn every_snapshot_corrupt_over_a_compacted_wal_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (ten, twenty) = build(tmp.path(), true);
        flip_bit(&ten, SNAPSHOT_HEADER_LEN as u64, 0);
        flip_bit(&twenty, 3, 0);
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        let err = dd.recover(small_segments()).unwrap_err();
        assert!(
            matches!(err, StorageError::NoUsableSnapshot { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        for file in [&ten, &twenty] {
            assert!(text.contains(&file.display().to_string()), "{text}");
        }
        assert!(text.contains("round 0"), "{text}");
        let report = inspect(tmp.path()).unwrap();
        assert!(report.first_corruption.is_some());
    }

    #[test]
    fn every_snapshot_corrupt_over_a_complete_wal_replays_from_round_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let (ten, twenty) = build(tmp.path(), false);
        flip_bit(&ten, SNAPSHOT_HEADER_LEN as u64, 0);
        flip_bit(&twenty, SNAPSHOT_HEADER_LEN as u64, 0);
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        let r = dd.recover(small_segments()).unwrap();
        assert!(r.snapshot.is_none());
        assert_eq!(r.skipped.len(), 2);
        assert_eq!(r.skipped[0].path, twenty);
        assert_eq!(r.skipped[1].path, ten);
        assert_eq!(r.wal_may_lack_below, None);
        assert_eq!(r.recovered.state.log_start, Slot::ZERO);
        assert_eq!(r.recovered.state.chosen.len(), 30);
    }

    #[test]
    fn an_image_the_caller_rejects_falls_back_too() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), true);
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        let mut offered = Vec::new();
        let r = dd
            .recover_with(small_segments(), 1 << 20, |slot, image| {
                offered.push(slot);
                if image == b"twenty" {
                    Err("does not restore".to_string())
                } else {
                    Ok(())
                }
            })
            .unwrap();
        assert_eq!(offered, vec![Slot(20), Slot(10)]);
        assert_eq!(r.snapshot.unwrap().0, Slot(10));
        assert_eq!(r.skipped[0].reason, "does not restore");
        assert_eq!(r.snapshots.max_snapshot_bytes(), 1 << 20);
        assert_eq!(r.wal_may_lack_below, Some(Slot(20)));
    }

    #[test]
    fn recovery_applies_the_size_limit() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), true);
        let dd = DataDir::open_or_init(tmp.path(), "c1", 0).unwrap();
        // "twenty" is 6 bytes, "ten" 3: a 4-byte limit skips the newest.
        let r = dd.recover_with(small_segments(), 4, |_, _| Ok(())).unwrap();
        assert_eq!(r.snapshot.unwrap().0, Slot(10));
        assert!(
            r.skipped[0].reason.contains("max_snapshot_bytes"),
            "{:?}",
            r.skipped
        );
    }
}
