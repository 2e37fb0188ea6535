//! The one error type of this crate.

use paxlog_core::ReplayError;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in storage. Variants that concern a file
/// name it; variants that concern a position in a file give the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("data directory {} is locked by another process (lock file {})", .dir.display(), .lock_file.display())]
    Locked { dir: PathBuf, lock_file: PathBuf },
    #[error("data directory {} is not writable: {source}", .path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("metadata file {} is corrupt: {reason}", .path.display())]
    CorruptMetadata { path: PathBuf, reason: String },
    #[error("data directory {} belongs to cluster {found:?}, not {expected:?}", .path.display())]
    ClusterMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("data directory {} belongs to node {found}, not node {expected}", .path.display())]
    NodeMismatch {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{}: unsupported format version {found} (this build reads version {supported})", .path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("corrupt WAL file {} at byte offset {offset}: {reason}", .path.display())]
    CorruptWal {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("WAL segment {missing:016x} is missing from {} (the segment sequence must be contiguous)", .dir.display())]
    MissingSegment { dir: PathBuf, missing: u64 },
    #[error("WAL file {} at byte offset {offset}: {source}", .path.display())]
    Replay {
        path: PathBuf,
        offset: u64,
        #[source]
        source: ReplayError,
    },
    #[error("record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("encoding a record: {0}")]
    Encode(#[from] postcard::Error),
    #[error(
        "the WAL is poisoned by an earlier failure ({reason}); restart the process and recover"
    )]
    Poisoned { reason: String },
    #[error("corrupt snapshot {}: {reason}", .path.display())]
    CorruptSnapshot { path: PathBuf, reason: String },
    #[error("no snapshot with log_start {log_start} in {}", .dir.display())]
    SnapshotNotFound { dir: PathBuf, log_start: u64 },
    #[error("snapshot {}: a body of {len_bytes} bytes exceeds max_snapshot_bytes ({max_bytes} bytes)", .path.display())]
    SnapshotTooLarge {
        path: PathBuf,
        len_bytes: u64,
        max_bytes: u64,
    },
    #[error("no usable snapshot in {}: {skipped}; {consequence}", .dir.display())]
    NoUsableSnapshot {
        dir: PathBuf,
        /// Every snapshot file tried, newest first, with why it was unusable.
        skipped: String,
        consequence: String,
    },
    #[error("snapshot transfer into {}: {reason}", .path.display())]
    Transfer { path: PathBuf, reason: String },
    #[error(
        "data folder {} is empty: pass --initial-cluster-state new to bootstrap a new cluster, \
         or existing to join a running one (also to replace a lost disk: the replica then \
         recovers from the others before it votes)", .dir.display()
    )]
    EmptyDataDir { dir: PathBuf },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, source }
}
