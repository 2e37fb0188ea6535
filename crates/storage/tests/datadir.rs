#![allow(clippy::unwrap_used)]

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
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ro");
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(path.join("probe"), b"x").is_ok() {
        eprintln!("running with CAP_DAC_OVERRIDE (root?): permission test skipped");
        return;
    }
    let err = DataDir::open_or_init(&path, "c1", 0).unwrap_err();
    assert!(matches!(err, StorageError::NotWritable { .. }), "{err:?}");
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
