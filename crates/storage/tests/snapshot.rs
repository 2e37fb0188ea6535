#![allow(clippy::unwrap_used)]

mod common;

use common::flip_bit;
use paxlog_core::Slot;
use paxlog_storage::{
    LatestSnapshot, SnapshotStore, StorageError, DEFAULT_MAX_SNAPSHOT_BYTES, SNAPSHOT_HEADER_LEN,
};

fn slots(store: &SnapshotStore) -> Vec<Slot> {
    store.list().unwrap().into_iter().map(|(s, _)| s).collect()
}

fn image(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn save_and_load_keep_every_snapshot_until_retired() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(store.load_latest().unwrap(), LatestSnapshot::default());
    store.save(Slot(10), &image(1000, 1)).unwrap();
    assert_eq!(
        store.load_latest().unwrap().snapshot,
        Some((Slot(10), image(1000, 1)))
    );
    store.save(Slot(20), &image(2000, 2)).unwrap();
    store.save(Slot(30), &[]).unwrap();
    // `save` deletes nothing: retention waits for the explicit call.
    assert_eq!(slots(&store), vec![Slot(10), Slot(20), Slot(30)]);
    assert_eq!(
        store.load_latest().unwrap(),
        LatestSnapshot {
            snapshot: Some((Slot(30), vec![])),
            skipped: vec![],
        }
    );
    let deleted = store.retire_older(Slot(30)).unwrap();
    assert_eq!(deleted, vec![store.path_for(Slot(10))]);
    assert_eq!(slots(&store), vec![Slot(20), Slot(30)]);
    assert_eq!(store.load(Slot(20)).unwrap(), image(2000, 2));
    assert!(matches!(
        store.load(Slot(10)),
        Err(StorageError::SnapshotNotFound { .. })
    ));
    // Nothing more to retire.
    assert!(store.retire_older(Slot(30)).unwrap().is_empty());
    // An older snapshot than a valid newest one is refused.
    assert!(store.save(Slot(5), b"old").is_err());
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let old = store.save(Slot(1), &image(500, 3)).unwrap();
    let path = store.save(Slot(7), &image(500, 4)).unwrap();
    for (offset, what) in [
        (SNAPSHOT_HEADER_LEN as u64 + 100, "body checksum"),
        (14, "header checksum"),
    ] {
        flip_bit(&path, offset, 2);
        let err = store.load(Slot(7)).unwrap_err();
        match &err {
            StorageError::CorruptSnapshot { path: p, .. } => assert_eq!(p, &path),
            other => panic!("expected CorruptSnapshot, got {other:?}"),
        }
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(store.open_reader(Slot(7)).is_err());
        let latest = store.load_latest().unwrap();
        assert_eq!(latest.snapshot, Some((Slot(1), image(500, 3))));
        assert_eq!(latest.skipped.len(), 1);
        assert_eq!(latest.skipped[0].log_start, Slot(7));
        assert_eq!(latest.skipped[0].path, path);
        assert!(latest.skipped[0].reason.contains(what), "{latest:?}");
        flip_bit(&path, offset, 2);
        let latest = store.load_latest().unwrap();
        assert_eq!(latest.snapshot, Some((Slot(7), image(500, 4))));
        assert!(latest.skipped.is_empty());
    }
    // Truncated newest snapshot: the same fallback.
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() - 1]).unwrap();
    let latest = store.load_latest().unwrap();
    assert_eq!(latest.snapshot.as_ref().unwrap().0, Slot(1));
    assert!(latest.skipped[0].reason.contains("bytes"), "{latest:?}");
    // Every snapshot bad: an error naming each file, never "no snapshot".
    flip_bit(&old, SNAPSHOT_HEADER_LEN as u64, 0);
    let err = store.load_latest().unwrap_err();
    assert!(
        matches!(err, StorageError::NoUsableSnapshot { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&old.display().to_string()), "{text}");
}

#[test]
fn finalize_keeps_older_snapshots_until_retired() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.save(Slot(10), b"ten").unwrap();
    store.save(Slot(20), b"twenty").unwrap();
    let img = image(5000, 5);
    let crc = crc32c::crc32c(&img);
    let mut rx = store.receiver(Slot(30), img.len() as u64, crc).unwrap();
    rx.write_chunk(0, &img, crc).unwrap();
    let (slot, _) = rx.finalize().unwrap();
    assert_eq!(slot, Slot(30));
    // Not restored yet: both older snapshots are still there.
    assert_eq!(slots(&store), vec![Slot(10), Slot(20), Slot(30)]);
    assert_eq!(
        store.retire_older(Slot(30)).unwrap(),
        vec![store.path_for(Slot(10))]
    );
    assert_eq!(slots(&store), vec![Slot(20), Slot(30)]);
}

#[test]
fn retire_older_checks_what_it_keeps_and_never_touches_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    for n in [10, 20, 30] {
        store.save(Slot(n), &image(300, n as u8)).unwrap();
    }
    // Retiring below an older one deletes nothing newer.
    assert!(store.retire_older(Slot(10)).unwrap().is_empty());
    assert!(store.retire_older(Slot(20)).unwrap().is_empty());
    assert_eq!(slots(&store), vec![Slot(10), Slot(20), Slot(30)]);
    // An unknown or unverifiable `verified` deletes nothing.
    assert!(matches!(
        store.retire_older(Slot(25)),
        Err(StorageError::SnapshotNotFound { .. })
    ));
    flip_bit(&store.path_for(Slot(30)), SNAPSHOT_HEADER_LEN as u64 + 7, 1);
    assert!(matches!(
        store.retire_older(Slot(30)),
        Err(StorageError::CorruptSnapshot { .. })
    ));
    assert_eq!(slots(&store), vec![Slot(10), Slot(20), Slot(30)]);
    flip_bit(&store.path_for(Slot(30)), SNAPSHOT_HEADER_LEN as u64 + 7, 1);
    // A rotten older snapshot is no fallback: the valid one below it is
    // kept instead, and the rotten one goes.
    flip_bit(&store.path_for(Slot(20)), SNAPSHOT_HEADER_LEN as u64 + 7, 1);
    assert_eq!(
        store.retire_older(Slot(30)).unwrap(),
        vec![store.path_for(Slot(20))]
    );
    assert_eq!(slots(&store), vec![Slot(10), Slot(30)]);
    assert_eq!(store.verify(Slot(10)).unwrap().len, 300);
}

#[test]
fn save_is_not_blocked_by_a_corrupt_newer_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.save(Slot(10), b"ten").unwrap();
    let bad = store.save(Slot(30), b"thirty").unwrap();
    flip_bit(&bad, SNAPSHOT_HEADER_LEN as u64, 0);
    // After recovery fell back to 10, the replica takes a snapshot at 20.
    store.save(Slot(20), b"twenty").unwrap();
    let latest = store.load_latest().unwrap();
    assert_eq!(latest.snapshot, Some((Slot(20), b"twenty".to_vec())));
    assert_eq!(latest.skipped[0].path, bad);
    // `discard` removes a snapshot that must not be used.
    assert_eq!(store.discard(Slot(30)).unwrap(), bad);
    assert!(!bad.exists());
    assert!(matches!(
        store.discard(Slot(30)),
        Err(StorageError::SnapshotNotFound { .. })
    ));
}

#[test]
fn oversized_transfer_is_refused_before_any_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let huge = DEFAULT_MAX_SNAPSHOT_BYTES + 1;
    let err = store.receiver(Slot(5), huge, 0).unwrap_err();
    match &err {
        StorageError::SnapshotTooLarge {
            len_bytes,
            max_bytes,
            ..
        } => assert_eq!((*len_bytes, *max_bytes), (huge, DEFAULT_MAX_SNAPSHOT_BYTES)),
        other => panic!("expected SnapshotTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&huge.to_string()), "{text}");
    assert!(
        text.contains(&DEFAULT_MAX_SNAPSHOT_BYTES.to_string()),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // A configured limit: exactly the limit is fine, one more is not.
    let store = SnapshotStore::open_with_limit(dir.path(), 1000).unwrap();
    assert!(matches!(
        store.receiver(Slot(5), 1001, 0),
        Err(StorageError::SnapshotTooLarge { .. })
    ));
    let img = image(1000, 7);
    let crc = crc32c::crc32c(&img);
    let mut rx = store.receiver(Slot(5), 1000, crc).unwrap();
    // A chunk running past the announced total is refused.
    let too_long = [img.as_slice(), b"x"].concat();
    assert!(matches!(
        rx.write_chunk(0, &too_long, crc32c::crc32c(&too_long)),
        Err(StorageError::Transfer { .. })
    ));
    rx.write_chunk(0, &img, crc).unwrap();
    rx.finalize().unwrap();
    assert!(SnapshotStore::open_with_limit(dir.path(), 0).is_err());
}

/// Rewrites `path`'s header to announce a body of `len` bytes (with a valid
/// header checksum) and makes the file that long, sparsely.
fn announce_len(path: &std::path::Path, len: u64) {
    let mut h = std::fs::read(path).unwrap();
    h[20..28].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, &h[..SNAPSHOT_HEADER_LEN]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(SNAPSHOT_HEADER_LEN as u64 + len)
        .unwrap();
}

#[test]
fn header_claiming_a_huge_body_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.save(Slot(3), b"older").unwrap();
    let path = store.save(Slot(9), b"").unwrap();
    // 64 GiB, consistent with the file size: before the limit existed,
    // `load` tried to allocate all of it (and aborted the process).
    let claimed: u64 = 64 << 30;
    announce_len(&path, claimed);
    match store.load(Slot(9)).unwrap_err() {
        StorageError::SnapshotTooLarge {
            path: p, len_bytes, ..
        } => assert_eq!((p, len_bytes), (path.clone(), claimed)),
        other => panic!("expected SnapshotTooLarge, got {other:?}"),
    }
    assert!(store.open_reader(Slot(9)).is_err());
    let latest = store.load_latest().unwrap();
    assert_eq!(latest.snapshot, Some((Slot(3), b"older".to_vec())));
    assert!(
        latest.skipped[0].reason.contains("max_snapshot_bytes"),
        "{latest:?}"
    );

    // A small limit applies to save and load alike.
    let small = SnapshotStore::open_with_limit(dir.path(), 100).unwrap();
    assert!(matches!(
        small.save(Slot(20), &image(101, 0)),
        Err(StorageError::SnapshotTooLarge { .. })
    ));
    let roomy = SnapshotStore::open(dir.path()).unwrap();
    roomy.save(Slot(20), &image(101, 0)).unwrap();
    assert!(matches!(
        small.load(Slot(20)),
        Err(StorageError::SnapshotTooLarge { .. })
    ));
}

#[test]
fn chunked_transfer_roundtrip_with_resume() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let sender = SnapshotStore::open(src.path()).unwrap();
    let receiver_store = SnapshotStore::open(dst.path()).unwrap();
    let img = image(100_000, 9);
    sender.save(Slot(42), &img).unwrap();
    let mut reader = sender.open_reader(Slot(42)).unwrap();
    let meta = reader.meta();
    assert_eq!(meta.len, img.len() as u64);

    // First attempt: three chunks, then the receiver "crashes".
    {
        let mut rx = receiver_store
            .receiver(Slot(42), meta.len, meta.crc)
            .unwrap();
        assert_eq!(rx.received(), 0);
        for i in 0..3 {
            let chunk = reader.read_chunk(i * 16_384, 16_384).unwrap();
            rx.write(&chunk).unwrap();
        }
        assert_eq!(rx.received(), 3 * 16_384);
        // A chunk with a bad checksum and a chunk leaving a gap are refused.
        let mut bad = reader.read_chunk(rx.received(), 100).unwrap();
        bad.data[0] ^= 1;
        assert!(matches!(rx.write(&bad), Err(StorageError::Transfer { .. })));
        let gap = reader.read_chunk(rx.received() + 1, 100).unwrap();
        assert!(matches!(rx.write(&gap), Err(StorageError::Transfer { .. })));
        assert_eq!(rx.received(), 3 * 16_384);
    }
    // Resume from where it stopped, using the one-shot read_chunk API.
    let mut rx = receiver_store
        .receiver(Slot(42), meta.len, meta.crc)
        .unwrap();
    assert_eq!(rx.received(), 3 * 16_384);
    while !rx.is_complete() {
        let chunk = sender.read_chunk(Slot(42), rx.received(), 10_000).unwrap();
        assert_eq!(chunk.chunk_crc, crc32c::crc32c(&chunk.data));
        rx.write(&chunk).unwrap();
    }
    let (slot, path) = rx.finalize().unwrap();
    assert_eq!(slot, Slot(42));
    assert!(path.exists());
    assert_eq!(
        receiver_store.load_latest().unwrap().snapshot,
        Some((Slot(42), img.clone()))
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(sender.path_for(Slot(42))).unwrap()
    );
}

#[test]
fn receiver_detects_wrong_total_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let img = image(1000, 1);
    let wrong_crc = crc32c::crc32c(&img) ^ 1;
    let mut rx = store
        .receiver(Slot(3), img.len() as u64, wrong_crc)
        .unwrap();
    rx.write_chunk(0, &img, crc32c::crc32c(&img)).unwrap();
    assert!(matches!(rx.finalize(), Err(StorageError::Transfer { .. })));
    assert!(store.load_latest().unwrap().snapshot.is_none());
    // A mismatching partial file is not resumed.
    let rx = store
        .receiver(Slot(3), img.len() as u64, crc32c::crc32c(&img))
        .unwrap();
    assert_eq!(rx.received(), 0);
    rx.abort().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
