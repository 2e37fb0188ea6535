//! Segmented write-ahead log of [`PersistRecord`]s with group commit.

use crate::error::{io_err, Result, StorageError};
use crate::format::{
    classify_wal_name, encode_record, encode_segment_header, read_file_into, scan_segment,
    segment_file_name, segment_temp_name, sync_dir, Tail, WalName,
};
use paxlog_core::{Ballot, DurableState, PersistRecord, ReplayError, Slot};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Roll over to a new segment once the active one holds this many bytes
    /// (checked before each record, so a segment may exceed it by one record).
    pub segment_bytes: u64,
    /// Appended bytes are handed to the OS once this much is buffered (and
    /// always in `sync`).
    pub write_buffer_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            write_buffer_bytes: 1 << 20,
        }
    }
}

/// A repair made while opening the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepairAction {
    /// A torn or corrupt record at the end of the last segment (never
    /// followed by a valid record) was cut off: the file now ends at `offset`.
    TruncatedTail {
        path: PathBuf,
        offset: u64,
        original_len: u64,
        reason: String,
    },
    /// A half-created segment (`*.log.tmp`) was removed.
    RemovedTempFile { path: PathBuf },
}

impl fmt::Display for RepairAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairAction::TruncatedTail {
                path,
                offset,
                original_len,
                reason,
            } => write!(
                f,
                "truncated {} from {original_len} to {offset} bytes ({reason})",
                path.display()
            ),
            RepairAction::RemovedTempFile { path } => {
                write!(f, "removed unfinished segment {}", path.display())
            }
        }
    }
}

/// What `Wal::open` rebuilt.
#[derive(Debug)]
pub struct Recovered {
    /// Built with `DurableState::from_snapshot(log_start)` + `replay` of
    /// every record, in write order.
    pub state: DurableState,
    pub repairs: Vec<RepairAction>,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Value-less `Chosen` marks below the floor whose `Accepted` record had
    /// been compacted away (see [`Wal::open_with_floor`]); not replayed.
    pub orphan_chosen_marks: u64,
}

/// Replays `rec` into `state`, except a value-less `Chosen` mark for a slot
/// below `floor` whose `Accepted` record is not in `state`: below the floor
/// the segment holding that record may have been compacted away, so the
/// mark is skipped (returns `Ok(false)`) instead of being corruption.
pub(crate) fn replay_above_floor(
    state: &mut DurableState,
    rec: &PersistRecord,
    floor: Slot,
) -> Result<bool, ReplayError> {
    if let PersistRecord::Chosen { slot, entry: None } = rec {
        if *slot >= state.log_start && *slot < floor && !state.accepted.contains_key(slot) {
            return Ok(false);
        }
    }
    state.replay(rec).map(|()| true)
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    max_slot: Option<Slot>,
}

/// The write-ahead log. Not thread-safe by design: one owner (the server's
/// storage thread) calls `append` and `sync`.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// Oldest first; the last one is active.
    segments: Vec<Segment>,
    active: File,
    /// Bytes in the active segment including `buf`.
    active_len: u64,
    buf: Vec<u8>,
    /// Appended since the last successful sync.
    dirty: bool,
    promised: Ballot,
    /// Highest campaign ballot appended (repeated at each segment's start).
    campaigned: Ballot,
    poisoned: Option<String>,
    #[cfg(test)]
    fail_next_sync: bool,
}

fn max_slot(a: Option<Slot>, b: Option<Slot>) -> Option<Slot> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Lists `wal-*.log` segments (sorted) and unfinished `*.log.tmp` files.
/// `(seq, path)` of each segment, sorted.
pub(crate) type SegmentList = Vec<(u64, PathBuf)>;

pub(crate) fn list_segments(dir: &Path) -> Result<(SegmentList, Vec<PathBuf>)> {
    let mut segs = Vec::new();
    let mut temps = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy().into_owned();
        match classify_wal_name(&name) {
            WalName::Segment(seq) => segs.push((seq, entry.path())),
            WalName::Temp => temps.push(entry.path()),
            WalName::Malformed => {
                return Err(StorageError::CorruptWal {
                    path: entry.path(),
                    offset: 0,
                    reason: "unrecognised WAL file name (expected wal-<16 hex digits>.log)".into(),
                })
            }
            WalName::Other => {}
        }
    }
    segs.sort();
    temps.sort();
    Ok((segs, temps))
}

/// Errors unless `segs` (sorted) is a contiguous run of sequence numbers.
pub(crate) fn check_contiguous(dir: &Path, segs: &[(u64, PathBuf)]) -> Result<()> {
    for w in segs.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(StorageError::MissingSegment {
                dir: dir.to_path_buf(),
                missing: w[0].0 + 1,
            });
        }
    }
    Ok(())
}

/// Holds the highest round below which WAL segments were ever deleted.
pub const WAL_FLOOR_FILE: &str = "wal.floor";

/// The durable compaction floor of the WAL in `dir`, if it was ever compacted
/// (by a version that records it).
pub fn read_wal_floor(dir: &Path) -> Result<Option<Slot>> {
    let path = dir.join(WAL_FLOOR_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(|n| Some(Slot(n)))
            .map_err(|e| StorageError::CorruptMetadata {
                path: path.clone(),
                reason: format!("not a round number ({e})"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Io { path, source: e }),
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` and replays it on top of a
    /// snapshot covering every slot below `log_start` (`Slot::ZERO` when
    /// there is no snapshot). Truncates a torn tail of the last segment;
    /// any other damage is an error naming the file and offset.
    pub fn open(
        dir: impl AsRef<Path>,
        log_start: Slot,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered)> {
        Self::open_with_floor(dir, log_start, log_start, opts)
    }

    /// [`open`](Self::open) after falling back to an older snapshot: the log
    /// may have been compacted up to `floor` (> `log_start`: the newest
    /// snapshot this replica had), so the records of slots in
    /// `log_start..floor` may be partly gone. What remains is replayed; a
    /// value-less `Chosen` mark in that range whose `Accepted` record is gone
    /// is skipped and counted in [`Recovered::orphan_chosen_marks`]. The
    /// missing rounds are chosen; the replica relearns them from its peers.
    pub fn open_with_floor(
        dir: impl AsRef<Path>,
        log_start: Slot,
        floor: Slot,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered)> {
        let dir = dir.as_ref().to_path_buf();
        if opts.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(StorageError::InvalidArgument(format!(
                "segment_bytes {} is below the minimum {MIN_SEGMENT_BYTES}",
                opts.segment_bytes
            )));
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let (found, temps) = list_segments(&dir)?;
        let mut repairs = Vec::new();
        for path in temps {
            fs::remove_file(&path).map_err(io_err(&path))?;
            tracing::warn!(file = %path.display(), "removed unfinished WAL segment");
            repairs.push(RepairAction::RemovedTempFile { path });
        }
        check_contiguous(&dir, &found)?;

        let mut state = DurableState::from_snapshot(log_start);
        let mut segments = Vec::with_capacity(found.len());
        let mut records = 0u64;
        let mut orphan_chosen_marks = 0u64;
        let mut bytes = 0u64;
        let n = found.len();
        let mut data = Vec::new();
        for (i, (seq, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == n;
            read_file_into(&path, &mut data)?;
            let mut seg_max = None;
            let scan = scan_segment(&path, &data, seq, |offset, rec| {
                seg_max = max_slot(seg_max, rec.slot());
                records += 1;
                let replayed = replay_above_floor(&mut state, &rec, floor).map_err(|source| {
                    StorageError::Replay {
                        path: path.clone(),
                        offset,
                        source,
                    }
                })?;
                if !replayed {
                    orphan_chosen_marks += 1;
                }
                Ok(())
            })?;
            match scan.tail {
                Tail::Clean => bytes += scan.len,
                Tail::Bad {
                    offset,
                    reason,
                    valid_after,
                } => {
                    if let Some(after) = valid_after {
                        return Err(StorageError::CorruptWal {
                            path,
                            offset,
                            reason: format!(
                                "{reason}; a valid record follows at offset {after}, so this is not a torn write"
                            ),
                        });
                    }
                    if !is_last {
                        return Err(StorageError::CorruptWal {
                            path,
                            offset,
                            reason: format!("{reason} (in a segment that is not the last one)"),
                        });
                    }
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(offset).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    tracing::warn!(
                        file = %path.display(),
                        offset,
                        original_len = scan.len,
                        %reason,
                        "truncated torn tail of the WAL"
                    );
                    repairs.push(RepairAction::TruncatedTail {
                        path: path.clone(),
                        offset,
                        original_len: scan.len,
                        reason,
                    });
                    bytes += offset;
                }
            }
            segments.push(Segment {
                seq,
                path,
                max_slot: seg_max,
            });
        }

        let promised = state.promised;
        let campaigned = state.campaigned;
        let recovered_segments = segments.len();
        let (active, active_len) = match segments.last() {
            Some(seg) => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                let len = f.seek(SeekFrom::End(0)).map_err(io_err(&seg.path))?;
                (f, len)
            }
            None => {
                let (seg, f, len) = create_segment(&dir, 1, promised, campaigned)?;
                segments.push(seg);
                (f, len)
            }
        };
        let wal = Wal {
            dir,
            opts,
            segments,
            active,
            active_len,
            buf: Vec::new(),
            dirty: false,
            promised,
            campaigned,
            poisoned: None,
            #[cfg(test)]
            fail_next_sync: false,
        };
        Ok((
            wal,
            Recovered {
                state,
                repairs,
                segments: recovered_segments,
                records,
                bytes,
                orphan_chosen_marks,
            },
        ))
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, err: StorageError) -> StorageError {
        tracing::error!(error = %err, "WAL poisoned; the process must restart and recover");
        self.poisoned = Some(err.to_string());
        err
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map_or_else(|| self.dir.clone(), |s| s.path.clone())
    }

    /// Buffers `records` for the active segment (rolling over to a new
    /// segment when it is full). Nothing is durable until [`Wal::sync`].
    pub fn append(&mut self, records: &[PersistRecord]) -> Result<()> {
        self.check_poisoned()?;
        for rec in records {
            if self.active_len >= self.opts.segment_bytes {
                self.rollover()?;
            }
            let n = encode_record(rec, &mut self.buf)?;
            self.active_len += n as u64;
            self.dirty = true;
            match rec {
                PersistRecord::Promised(b) => self.promised = self.promised.max(*b),
                PersistRecord::Campaigned(b) => self.campaigned = self.campaigned.max(*b),
                _ => {}
            }
            if let Some(seg) = self.segments.last_mut() {
                seg.max_slot = max_slot(seg.max_slot, rec.slot());
            }
            if self.buf.len() >= self.opts.write_buffer_bytes {
                self.write_buffer()?;
            }
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.active.write_all(&self.buf) {
            let err = StorageError::Io {
                path: self.active_path(),
                source: e,
            };
            return Err(self.poison(err));
        }
        self.buf.clear();
        Ok(())
    }

    /// Hands everything appended so far to the operating system without
    /// waiting for the disk: it survives the process dying, not a power
    /// loss. For records that need no durability (chosen marks).
    pub fn flush(&mut self) -> Result<()> {
        self.check_poisoned()?;
        self.write_buffer()
    }

    /// Makes everything appended so far durable with one `fdatasync` (group
    /// commit). After an error the WAL is poisoned.
    pub fn sync(&mut self) -> Result<()> {
        self.check_poisoned()?;
        if !self.dirty {
            return Ok(());
        }
        self.write_buffer()?;
        #[cfg(test)]
        if self.fail_next_sync {
            let err = StorageError::Io {
                path: self.active_path(),
                source: std::io::Error::other("injected fsync failure"),
            };
            return Err(self.poison(err));
        }
        if let Err(e) = self.active.sync_data() {
            let err = StorageError::Io {
                path: self.active_path(),
                source: e,
            };
            return Err(self.poison(err));
        }
        self.dirty = false;
        Ok(())
    }

    fn rollover(&mut self) -> Result<()> {
        // The old segment must be durable before the new one exists: recovery
        // treats only the last segment's tail as possibly torn.
        self.sync()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        match create_segment(&self.dir, seq, self.promised, self.campaigned) {
            Ok((seg, file, len)) => {
                self.segments.push(seg);
                self.active = file;
                self.active_len = len;
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Deletes the oldest non-active segments whose records all have slots
    /// below `log_start` (a segment with no slotted records counts as such;
    /// the newest promise is repeated at the start of every segment).
    /// Call only once a snapshot covering every slot below `log_start` is
    /// durable. Returns the deleted files.
    pub fn compact(&mut self, log_start: Slot) -> Result<Vec<PathBuf>> {
        self.check_poisoned()?;
        let deletes_any =
            self.segments.len() > 1 && self.segments[0].max_slot.is_none_or(|m| m < log_start);
        if deletes_any {
            // Durably noted first: recovery must know how far the log was
            // cut, to tell a fallback to an older snapshot that the log still
            // covers from one that would forget this replica's accepts.
            crate::datadir::write_atomically(
                &self.dir,
                WAL_FLOOR_FILE,
                log_start.0.to_string().as_bytes(),
            )
            .map_err(|e| self.poison(e))?;
        }
        let mut deleted = Vec::new();
        while self.segments.len() > 1 {
            let seg = &self.segments[0];
            if seg.max_slot.is_some_and(|m| m >= log_start) {
                break;
            }
            let path = seg.path.clone();
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.remove(0);
            deleted.push(path);
        }
        if !deleted.is_empty() {
            if let Err(e) = sync_dir(&self.dir) {
                let err = StorageError::Io {
                    path: self.dir.clone(),
                    source: e,
                };
                return Err(self.poison(err));
            }
        }
        Ok(deleted)
    }

    /// Highest promise appended (durable only after `sync`).
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Paths of the live segments, oldest first (the last one is active).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// Bytes in the active segment, including unsynced ones.
    pub fn active_segment_len(&self) -> u64 {
        self.active_len
    }

    #[cfg(test)]
    pub(crate) fn inject_sync_failure(&mut self) {
        self.fail_next_sync = true;
    }
}

/// Creates segment `seq` durably: temp file with header + `Promised` +
/// `Campaigned` (so compaction never drops the newest of either), fsync,
/// rename, fsync directory. Returns it opened for appending.
fn create_segment(
    dir: &Path,
    seq: u64,
    promised: Ballot,
    campaigned: Ballot,
) -> Result<(Segment, File, u64)> {
    let tmp = dir.join(segment_temp_name(seq));
    let path = dir.join(segment_file_name(seq));
    let mut bytes = encode_segment_header(seq).to_vec();
    encode_record(&PersistRecord::Promised(promised), &mut bytes)?;
    encode_record(&PersistRecord::Campaigned(campaigned), &mut bytes)?;
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let len = f.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
    Ok((
        Segment {
            seq,
            path,
            max_slot: None,
        },
        f,
        len,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use paxlog_core::NodeId;

    #[test]
    fn failed_sync_poisons_every_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), Slot::ZERO, WalOptions::default()).unwrap();
        let b = Ballot {
            counter: 3,
            node: NodeId(1),
        };
        wal.append(&[PersistRecord::Promised(b)]).unwrap();
        wal.sync().unwrap();
        wal.append(&[PersistRecord::Promised(b)]).unwrap();
        wal.inject_sync_failure();
        assert!(matches!(wal.sync(), Err(StorageError::Io { .. })));
        assert!(wal.is_poisoned());
        assert!(matches!(
            wal.append(&[PersistRecord::Promised(b)]),
            Err(StorageError::Poisoned { .. })
        ));
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned { .. })));
        assert!(matches!(
            wal.compact(Slot(5)),
            Err(StorageError::Poisoned { .. })
        ));
        drop(wal);
        // A restart recovers what was synced before the failure (at least).
        let (_, rec) = Wal::open(dir.path(), Slot::ZERO, WalOptions::default()).unwrap();
        assert_eq!(rec.state.promised, b);
    }
}
