//! The data directory: metadata, exclusive lock, and where the WAL and
//! snapshots live.

use crate::error::{io_err, Result, StorageError};
use crate::format::{classify_wal_name, sync_dir, WalName};
use crate::snapshot::{
    describe_skipped, SkippedSnapshot, SnapshotStore, DEFAULT_MAX_SNAPSHOT_BYTES,
};
use crate::wal::{list_segments, Recovered, Wal, WalOptions};
use paxlog_core::Slot;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const META_FILE: &str = "paxlog.meta";
pub const LOCK_FILE: &str = "paxlog.lock";
pub const META_FORMAT_VERSION: u32 = 1;

/// Contents of `paxlog.meta` (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub format_version: u32,
    pub cluster_id: String,
    pub node_id: u32,
    /// For a replica that joined a running cluster: what the cluster told
    /// it when it joined (absent for the bootstrap replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<JoinedCluster>,
}

/// What a replica that joined learned from the cluster at that moment: the
/// membership then (the log it receives starts under it, or under a
/// snapshot's) and where the members were. Kept in `paxlog.meta` so a
/// restart finds its peers before it has applied anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedCluster {
    pub membership: paxlog_core::Membership,
    pub members: Vec<JoinedMember>,
}

/// One member as a joining replica heard of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedMember {
    pub id: u32,
    pub peer_addr: String,
    #[serde(default)]
    pub http_addr: Option<String>,
}

/// An opened, locked data directory. The lock is held until this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    meta: Metadata,
    /// The folder was empty and this open created it.
    created: bool,
    _lock: File,
}

/// Beside the log while the replica may have forgotten promises and
/// accepts (it holds the reason); deleted once it recovered them.
pub const RECOVERING_FILE: &str = "recovering";

/// What to do when the data folder is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEmpty {
    /// Refuse: a folder comes into being only by an explicit act.
    Refuse,
    /// Bootstrap a new cluster: an empty acceptor forgot nothing.
    Bootstrap,
    /// Join an existing cluster (or replace a lost disk): this replica may
    /// have promised and accepted before, so it starts recovering.
    Join,
}

/// How far the WAL in `dir` may lack records, replaying from `log_start`:
/// the recorded compaction floor, or, for a folder compacted before that was
/// recorded, the newest snapshot file (compaction then followed the newest
/// snapshot), unless the log still starts at its first segment. Recovery
/// and `inspect` both use this, so they judge a folder alike.
pub(crate) fn compaction_floor(
    dir: &Path,
    log_start: Slot,
    newest_snapshot_file: Option<Slot>,
    wal_complete: bool,
) -> Result<Slot> {
    Ok(match crate::wal::read_wal_floor(dir)? {
        Some(recorded) => recorded.max(log_start),
        None => match newest_snapshot_file {
            Some(newest) if !wal_complete && newest > log_start => newest,
            _ => log_start,
        },
    })
}

/// Marks `dir` as holding state that may lack promises and accepts the
/// replica made (durably, before anything else happens).
pub fn mark_recovering(dir: &Path, reason: &str) -> Result<()> {
    write_atomically(dir, RECOVERING_FILE, reason.as_bytes())
}

/// The reason `dir` is marked recovering, if it is.
pub fn recovering_reason(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(RECOVERING_FILE);
    match fs::read_to_string(&path) {
        Ok(reason) => Ok(Some(reason.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Io { path, source: e }),
    }
}

/// The replica recovered: remove the mark (durably).
pub fn clear_recovering(dir: &Path) -> Result<()> {
    let path = dir.join(RECOVERING_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir).map_err(io_err(dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::Io { path, source: e }),
    }
}

/// Everything `DataDir::recover` restores.
#[derive(Debug)]
pub struct Recovery {
    pub wal: Wal,
    pub snapshots: SnapshotStore,
    /// The newest usable snapshot `(log_start, image)`, if any. Restore the
    /// state machine from it before applying `recovered.state.chosen`.
    pub snapshot: Option<(Slot, Vec<u8>)>,
    pub recovered: Recovered,
    /// Newer snapshots that were unusable (corrupt, unreadable, too large,
    /// or refused by the caller's check), newest first: recovery fell back
    /// past them. Log each one.
    pub skipped: Vec<SkippedSnapshot>,
    /// `Some(floor)` after a fallback past a compacted log: rounds from
    /// `snapshot`'s `log_start` up to `floor` may be missing from the WAL.
    /// They are chosen; the replica relearns them from its peers.
    pub wal_may_lack_below: Option<Slot>,
}

fn classify_open_error(path: &Path, e: io::Error) -> StorageError {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StorageError::NotWritable {
                path: path.to_path_buf(),
                source: e,
            }
        }
        _ => StorageError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Reads and validates `paxlog.meta`; `Ok(None)` if it does not exist.
pub fn read_metadata(dir: &Path) -> Result<Option<Metadata>> {
    let path = dir.join(META_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::Io { path, source: e }),
    };
    let meta: Metadata =
        serde_json::from_slice(&bytes).map_err(|e| StorageError::CorruptMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if meta.format_version != META_FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion {
            path,
            found: meta.format_version,
            supported: META_FORMAT_VERSION,
        });
    }
    Ok(Some(meta))
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| classify_open_error(&tmp, e))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(())
}

fn has_data_files(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if matches!(classify_wal_name(&name), WalName::Segment(_))
            || (name.starts_with("snapshot-") && name.ends_with(".snap"))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl DataDir {
    /// Opens `path` (creating it and its metadata if needed), checks it
    /// belongs to `cluster_id` / `node_id`, and takes the exclusive lock.
    /// [`open`](Self::open) that bootstraps an empty folder.
    pub fn open_or_init(path: impl AsRef<Path>, cluster_id: &str, node_id: u32) -> Result<DataDir> {
        Self::open(path, cluster_id, node_id, OnEmpty::Bootstrap)
    }

    /// Opens (and locks) a data folder; `on_empty` says what an empty one
    /// becomes.
    pub fn open(
        path: impl AsRef<Path>,
        cluster_id: &str,
        node_id: u32,
        on_empty: OnEmpty,
    ) -> Result<DataDir> {
        Self::open_joined(path, cluster_id, node_id, on_empty, None)
    }

    /// [`open`](Self::open) for a replica that joined: an empty folder
    /// records `joined` in its metadata (a folder with data keeps its own).
    pub fn open_joined(
        path: impl AsRef<Path>,
        cluster_id: &str,
        node_id: u32,
        on_empty: OnEmpty,
        joined: Option<&JoinedCluster>,
    ) -> Result<DataDir> {
        let path = path.as_ref().to_path_buf();
        if cluster_id.is_empty() {
            return Err(StorageError::InvalidArgument("cluster id is empty".into()));
        }
        fs::create_dir_all(&path).map_err(|e| classify_open_error(&path, e))?;

        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| classify_open_error(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    dir: path,
                    lock_file: lock_path,
                })
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(StorageError::Io {
                    path: lock_path,
                    source: e,
                })
            }
        }
        // Diagnostics only: who holds the lock.
        lock.set_len(0)
            .map_err(|e| classify_open_error(&lock_path, e))?;
        writeln!(lock, "{}", std::process::id()).map_err(|e| classify_open_error(&lock_path, e))?;

        let mut created = false;
        let meta = match read_metadata(&path)? {
            Some(meta) => {
                if meta.cluster_id != cluster_id {
                    return Err(StorageError::ClusterMismatch {
                        path,
                        expected: cluster_id.to_string(),
                        found: meta.cluster_id,
                    });
                }
                if meta.node_id != node_id {
                    return Err(StorageError::NodeMismatch {
                        path,
                        expected: node_id,
                        found: meta.node_id,
                    });
                }
                meta
            }
            None => {
                if has_data_files(&path)? {
                    return Err(StorageError::CorruptMetadata {
                        path: path.join(META_FILE),
                        reason: "missing, but the directory holds WAL or snapshot files".into(),
                    });
                }
                match on_empty {
                    OnEmpty::Refuse => return Err(StorageError::EmptyDataDir { dir: path }),
                    OnEmpty::Bootstrap => {}
                    // The mark first: a crash before the metadata leaves an
                    // empty folder, which starts this way again.
                    OnEmpty::Join => mark_recovering(
                        &path,
                        "started on an empty data folder to join an existing cluster",
                    )?,
                }
                created = true;
                let meta = Metadata {
                    format_version: META_FORMAT_VERSION,
                    cluster_id: cluster_id.to_string(),
                    node_id,
                    joined: joined.cloned(),
                };
                let mut json = serde_json::to_vec_pretty(&meta).map_err(|e| {
                    StorageError::InvalidArgument(format!("encoding metadata: {e}"))
                })?;
                json.push(b'\n');
                write_atomically(&path, META_FILE, &json)?;
                meta
            }
        };
        Ok(DataDir {
            path,
            meta,
            created,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Was the folder empty, and created by this open?
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// The snapshot store (same directory), with the default size limit.
    pub fn snapshots(&self) -> Result<SnapshotStore> {
        SnapshotStore::open(&self.path)
    }

    /// Opens the WAL (same directory), replaying from `log_start`.
    pub fn open_wal(&self, log_start: Slot, opts: WalOptions) -> Result<(Wal, Recovered)> {
        Wal::open(&self.path, log_start, opts)
    }

    /// [`recover_with`](Self::recover_with) with the default snapshot size
    /// limit and no check of the image beyond its checksum.
    pub fn recover(&self, opts: WalOptions) -> Result<Recovery> {
        self.recover_with(opts, DEFAULT_MAX_SNAPSHOT_BYTES, |_, _| Ok(()))
    }

    /// The whole restart sequence: load the newest usable snapshot, then
    /// open the WAL replaying from the snapshot's `log_start`.
    ///
    /// Snapshots are tried newest first; one that is corrupt, unreadable,
    /// larger than `max_snapshot_bytes` or refused by `accept(log_start,
    /// image)` (e.g. the state machine cannot restore it) is skipped and
    /// listed in [`Recovery::skipped`]. If snapshots exist but none is
    /// usable, recovery starts from round 0 only if the WAL still holds
    /// everything ever written (its first segment was never compacted);
    /// otherwise it fails naming every file.
    pub fn recover_with(
        &self,
        opts: WalOptions,
        max_snapshot_bytes: u64,
        accept: impl FnMut(Slot, &[u8]) -> std::result::Result<(), String>,
    ) -> Result<Recovery> {
        let snapshots = SnapshotStore::open_with_limit(&self.path, max_snapshot_bytes)?;
        // The newest snapshot file, usable or not, bounds how far the WAL
        // may have been compacted (compaction follows a durable snapshot, and
        // retention never deletes a snapshot newer than a verified one).
        let newest_file = snapshots.list()?.last().map(|(s, _)| *s);
        let latest = snapshots.load_newest_usable(accept)?;
        let (segments, _) = list_segments(&self.path)?;
        // Segment 1 still present: nothing was ever compacted away.
        let wal_complete = segments.first().is_some_and(|(seq, _)| *seq == 1);
        let log_start = latest.snapshot.as_ref().map_or(Slot::ZERO, |(s, _)| *s);
        if latest.snapshot.is_none() && !latest.skipped.is_empty() && !wal_complete {
            let wal_start = match segments.first() {
                Some((_, path)) => format!(
                    "the WAL starts at {} (older segments were compacted away)",
                    path.display()
                ),
                None => "there is no WAL".to_string(),
            };
            return Err(StorageError::NoUsableSnapshot {
                dir: self.path.clone(),
                skipped: describe_skipped(&latest.skipped),
                consequence: format!(
                    "{wal_start}, so it does not reach back to round 0 and starting empty would \
                     lose chosen rounds; restore the snapshot or rebuild this replica from its peers"
                ),
            });
        }
        let floor = compaction_floor(&self.path, log_start, newest_file, wal_complete)?;
        let (wal, recovered) = Wal::open_with_floor(&self.path, log_start, floor, opts)?;
        Ok(Recovery {
            wal,
            snapshots,
            snapshot: latest.snapshot,
            recovered,
            skipped: latest.skipped,
            wal_may_lack_below: (floor > log_start).then_some(floor),
        })
    }
}
