#![allow(clippy::unwrap_used)]

mod common;

use common::flip_bit;
use paxlog_core::Slot;
use paxlog_storage::{SnapshotStore, StorageError, SNAPSHOT_HEADER_LEN};

fn image(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn save_load_and_keep_newest_two() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert!(store.load_latest().unwrap().is_none());
    store.save(Slot(10), &image(1000, 1)).unwrap();
    assert_eq!(
        store.load_latest().unwrap(),
        Some((Slot(10), image(1000, 1)))
    );
    store.save(Slot(20), &image(2000, 2)).unwrap();
    store.save(Slot(30), &[]).unwrap();
    let slots: Vec<_> = store.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(slots, vec![Slot(20), Slot(30)]);
    assert_eq!(store.load_latest().unwrap(), Some((Slot(30), vec![])));
    assert_eq!(store.load(Slot(20)).unwrap(), image(2000, 2));
    assert!(matches!(
        store.load(Slot(10)),
        Err(StorageError::SnapshotNotFound { .. })
    ));
    // An older snapshot than the newest is refused.
    assert!(store.save(Slot(5), b"old").is_err());
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn corrupt_snapshot_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.save(Slot(1), &image(500, 3)).unwrap();
    let path = store.save(Slot(7), &image(500, 4)).unwrap();
    for offset in [SNAPSHOT_HEADER_LEN as u64 + 100, 14] {
        flip_bit(&path, offset, 2);
        let err = store.load_latest().unwrap_err();
        match &err {
            StorageError::CorruptSnapshot { path: p, .. } => assert_eq!(p, &path),
            other => panic!("expected CorruptSnapshot, got {other:?}"),
        }
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(store.open_reader(Slot(7)).is_err());
        flip_bit(&path, offset, 2);
        assert_eq!(store.load_latest().unwrap().unwrap().1, image(500, 4));
    }
    // Truncated snapshot.
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() - 1]).unwrap();
    assert!(matches!(
        store.load_latest(),
        Err(StorageError::CorruptSnapshot { .. })
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
        receiver_store.load_latest().unwrap(),
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
    assert!(store.load_latest().unwrap().is_none());
    // A mismatching partial file is not resumed.
    let rx = store
        .receiver(Slot(3), img.len() as u64, crc32c::crc32c(&img))
        .unwrap();
    assert_eq!(rx.received(), 0);
    rx.abort().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
