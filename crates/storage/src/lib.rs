//! paxlog-storage: durable storage for a paxlog replica.
//!
//! * [`DataDir`]: the data directory, its metadata and exclusive lock;
//! * [`Wal`]: segmented write-ahead log of `PersistRecord`s with group
//!   commit, torn-tail repair and corruption detection;
//! * [`SnapshotStore`]: atomic snapshots and chunked transfer;
//! * [`inspect`]: read-only report of a data directory;
//! * [`bench`]: storage micro-benchmarks.
//!
//! All I/O is synchronous `std::fs`; call it from a blocking thread. The
//! on-disk format and durability assumptions are in `docs/storage.md`.

pub mod bench;
mod datadir;
mod error;
mod format;
mod inspect;
mod snapshot;
mod wal;

pub use datadir::{
    clear_recovering, mark_recovering, read_metadata, recovering_reason, DataDir, JoinedCluster,
    JoinedMember, Metadata, OnEmpty, Recovery, LOCK_FILE, META_FILE, META_FORMAT_VERSION,
    RECOVERING_FILE,
};
pub use error::{Result, StorageError};
pub use format::{
    MAX_RECORD_BYTES, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, WAL_FORMAT_VERSION, WAL_MAGIC,
};
pub use inspect::{inspect, InspectReport, Problem, SegmentReport, SnapshotReport};
pub use snapshot::{
    LatestSnapshot, SkippedSnapshot, SnapshotChunk, SnapshotMeta, SnapshotReader, SnapshotReceiver,
    SnapshotStore, DEFAULT_MAX_SNAPSHOT_BYTES, SNAPSHOTS_KEPT, SNAPSHOT_FORMAT_VERSION,
    SNAPSHOT_HEADER_LEN, SNAPSHOT_MAGIC,
};
pub use wal::{
    read_wal_floor, Recovered, RepairAction, Wal, WalOptions, MIN_SEGMENT_BYTES, WAL_FLOOR_FILE,
};
