//! State-machine snapshots: atomic save, checked load, and chunked transfer
//! to a peer with resume.

use crate::error::{io_err, Result, StorageError};
use crate::format::sync_dir;
use paxlog_core::Slot;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"PAXSNAP1";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + log_start (8) + body length (8) + body crc32c (4)
/// + crc32c of the previous 32 bytes (4).
pub const SNAPSHOT_HEADER_LEN: usize = 36;
/// How many snapshots [`SnapshotStore::retire_older`] keeps: the verified
/// one and the newest older one that verifies (the fallback if the newest
/// rots).
pub const SNAPSHOTS_KEPT: usize = 2;
/// Default [`SnapshotStore::max_snapshot_bytes`]. A snapshot is read into
/// memory whole, so this is also the most a load or a transfer allocates.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

pub(crate) fn snapshot_file_name(slot: Slot) -> String {
    format!("snapshot-{:016x}.snap", slot.0)
}

pub(crate) fn parse_snapshot_name(name: &str) -> Option<Slot> {
    let hex = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Slot)
}

/// The header fields of a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub log_start: Slot,
    pub len: u64,
    pub crc: u32,
}

fn encode_header(meta: SnapshotMeta) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&meta.log_start.0.to_le_bytes());
    h[20..28].copy_from_slice(&meta.len.to_le_bytes());
    h[28..32].copy_from_slice(&meta.crc.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

fn decode_header(h: &[u8]) -> Result<SnapshotMeta, String> {
    if h.len() < SNAPSHOT_HEADER_LEN {
        return Err(format!(
            "header incomplete ({} of {SNAPSHOT_HEADER_LEN} bytes)",
            h.len()
        ));
    }
    if &h[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a paxlog snapshot)".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(a)
    };
    if crc32c::crc32c(&h[0..32]) != u32_at(32) {
        return Err("header checksum mismatch".into());
    }
    let version = u32_at(8);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(format!("unsupported snapshot format version {version}"));
    }
    Ok(SnapshotMeta {
        log_start: Slot(u64_at(12)),
        len: u64_at(20),
        crc: u32_at(28),
    })
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and checks a snapshot's header against its file name, `max_bytes`
/// and the file size (before anything is allocated for the body).
fn open_checked_header(path: &Path, slot: Slot, max_bytes: u64) -> Result<(File, SnapshotMeta)> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    let mut got = 0;
    while got < h.len() {
        match f.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(StorageError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    let meta = decode_header(&h[..got]).map_err(|r| corrupt(path, r))?;
    if meta.log_start != slot {
        return Err(corrupt(
            path,
            format!(
                "header says log_start {} but the file name says {slot}",
                meta.log_start
            ),
        ));
    }
    if meta.len > max_bytes {
        return Err(StorageError::SnapshotTooLarge {
            path: path.to_path_buf(),
            len_bytes: meta.len,
            max_bytes,
        });
    }
    if file_len != SNAPSHOT_HEADER_LEN as u64 + meta.len {
        return Err(corrupt(
            path,
            format!(
                "file is {file_len} bytes but the header promises {} + {}",
                SNAPSHOT_HEADER_LEN, meta.len
            ),
        ));
    }
    Ok((f, meta))
}

/// crc32c of `len` bytes read from `f`'s current position.
fn crc_of_stream(path: &Path, f: &mut File, len: u64) -> Result<u32> {
    let mut crc = 0u32;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        f.read_exact(&mut buf[..want]).map_err(io_err(path))?;
        crc = crc32c::crc32c_append(crc, &buf[..want]);
        left -= want as u64;
    }
    Ok(crc)
}

/// One piece of a snapshot in transit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub log_start: Slot,
    pub offset: u64,
    pub data: Vec<u8>,
    /// Length of the whole snapshot body.
    pub total_len: u64,
    /// crc32c of the whole snapshot body.
    pub total_crc: u32,
    /// crc32c of `data`.
    pub chunk_crc: u32,
}

/// A snapshot `load_latest` (or recovery) could not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSnapshot {
    pub log_start: Slot,
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for SkippedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Joins skipped snapshots into one line for an error message.
pub(crate) fn describe_skipped(skipped: &[SkippedSnapshot]) -> String {
    skipped
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The newest usable snapshot, and the newer ones passed over to reach it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LatestSnapshot {
    /// `(log_start, image)`, verified; `None` if there is no usable one.
    pub snapshot: Option<(Slot, Vec<u8>)>,
    /// Snapshots newer than `snapshot` that were unusable, newest first.
    pub skipped: Vec<SkippedSnapshot>,
}

/// Snapshots in a directory, as `snapshot-<log_start:016x>.snap`.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    max_snapshot_bytes: u64,
}

impl SnapshotStore {
    /// Opens the store with [`DEFAULT_MAX_SNAPSHOT_BYTES`], creating `dir`
    /// and removing unfinished `save`s.
    pub fn open(dir: impl AsRef<Path>) -> Result<SnapshotStore> {
        Self::open_with_limit(dir, DEFAULT_MAX_SNAPSHOT_BYTES)
    }

    /// Like [`open`](Self::open), with the largest snapshot body this store
    /// saves, loads or accepts from a peer. Should be the same on every
    /// replica: a snapshot above a replica's limit cannot be installed there.
    pub fn open_with_limit(
        dir: impl AsRef<Path>,
        max_snapshot_bytes: u64,
    ) -> Result<SnapshotStore> {
        if max_snapshot_bytes == 0 {
            return Err(StorageError::InvalidArgument(
                "max_snapshot_bytes must be > 0".into(),
            ));
        }
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snapshot-") && name.ends_with(".snap.tmp") {
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        Ok(SnapshotStore {
            dir,
            max_snapshot_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_snapshot_bytes(&self) -> u64 {
        self.max_snapshot_bytes
    }

    fn not_found(&self, log_start: Slot) -> StorageError {
        StorageError::SnapshotNotFound {
            dir: self.dir.clone(),
            log_start: log_start.0,
        }
    }

    pub fn path_for(&self, log_start: Slot) -> PathBuf {
        self.dir.join(snapshot_file_name(log_start))
    }

    /// Snapshot files present, oldest (lowest `log_start`) first.
    pub fn list(&self) -> Result<Vec<(Slot, PathBuf)>> {
        list_snapshots(&self.dir)
    }

    /// Writes a snapshot covering every slot below `log_start` atomically and
    /// durably. Deletes nothing: once it has been read back and verified,
    /// call [`retire_older`](Self::retire_older).
    ///
    /// Refused if an image is larger than `max_snapshot_bytes` (it could not
    /// be loaded again), or if a newer snapshot exists that verifies (a
    /// newer one that does not is no reason to stop: recovery fell back
    /// past it).
    pub fn save(&self, log_start: Slot, image: &[u8]) -> Result<PathBuf> {
        let path = self.path_for(log_start);
        if image.len() as u64 > self.max_snapshot_bytes {
            return Err(StorageError::SnapshotTooLarge {
                path,
                len_bytes: image.len() as u64,
                max_bytes: self.max_snapshot_bytes,
            });
        }
        for (newer, newer_path) in self.list()?.into_iter().filter(|(s, _)| *s > log_start) {
            if verify_snapshot_file(&newer_path, newer, self.max_snapshot_bytes).is_ok() {
                return Err(StorageError::InvalidArgument(format!(
                    "snapshot at {log_start} is older than the existing snapshot at {newer}"
                )));
            }
        }
        let meta = SnapshotMeta {
            log_start,
            len: image.len() as u64,
            crc: crc32c::crc32c(image),
        };
        let tmp = self
            .dir
            .join(format!("{}.tmp", snapshot_file_name(log_start)));
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&encode_header(meta)).map_err(io_err(&tmp))?;
            f.write_all(image).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(path)
    }

    /// Retention, to call once the snapshot at `verified` is known good:
    /// restored into a state machine (received from a peer) or read back
    /// and verified (taken locally). Checks `verified` once more (header and
    /// body checksum; nothing is deleted if that fails), then deletes the
    /// snapshots older than it except the newest `SNAPSHOTS_KEPT - 1`
    /// that verify. Never touches `verified` or anything newer. Returns the
    /// deleted files, oldest first.
    pub fn retire_older(&self, verified: Slot) -> Result<Vec<PathBuf>> {
        let all = self.list()?;
        let Some((_, verified_path)) = all.iter().find(|(s, _)| *s == verified) else {
            return Err(self.not_found(verified));
        };
        verify_snapshot_file(verified_path, verified, self.max_snapshot_bytes)?;
        let older: Vec<&(Slot, PathBuf)> = all.iter().filter(|(s, _)| *s < verified).collect();
        // Keep the newest older ones that verify: a rotten one is no
        // fallback, so it neither counts nor survives.
        let mut keep_left = SNAPSHOTS_KEPT.saturating_sub(1);
        let mut doomed = Vec::new();
        for (slot, path) in older.into_iter().rev() {
            if keep_left > 0 && verify_snapshot_file(path, *slot, self.max_snapshot_bytes).is_ok() {
                keep_left -= 1;
            } else {
                doomed.push(path.clone());
            }
        }
        doomed.reverse();
        for path in &doomed {
            fs::remove_file(path).map_err(io_err(path))?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(doomed)
    }

    /// Deletes the snapshot at `log_start` (e.g. one received from a peer
    /// whose image does not restore), so it is neither served, loaded, nor in
    /// the way of an older `save`. Returns the deleted file.
    pub fn discard(&self, log_start: Slot) -> Result<PathBuf> {
        let path = self.path_for(log_start);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_found(log_start)),
            Err(e) => return Err(StorageError::Io { path, source: e }),
        }
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(path)
    }

    /// Checks one snapshot completely (header, size, body checksum) without
    /// holding the body in memory.
    pub fn verify(&self, log_start: Slot) -> Result<SnapshotMeta> {
        let path = self.path_for(log_start);
        if !path.exists() {
            return Err(self.not_found(log_start));
        }
        verify_snapshot_file(&path, log_start, self.max_snapshot_bytes)
    }

    /// Reads and verifies one snapshot. A header announcing more than
    /// `max_snapshot_bytes` is refused before the body is allocated.
    pub fn load(&self, log_start: Slot) -> Result<Vec<u8>> {
        let path = self.path_for(log_start);
        if !path.exists() {
            return Err(self.not_found(log_start));
        }
        let (mut f, meta) = open_checked_header(&path, log_start, self.max_snapshot_bytes)?;
        let len = usize::try_from(meta.len)
            .map_err(|_| corrupt(&path, "snapshot too large for this platform"))?;
        let mut body = vec![0u8; len];
        f.read_exact(&mut body).map_err(io_err(&path))?;
        let crc = crc32c::crc32c(&body);
        if crc != meta.crc {
            return Err(corrupt(
                &path,
                format!(
                    "body checksum mismatch (header {:08x}, computed {crc:08x})",
                    meta.crc
                ),
            ));
        }
        Ok(body)
    }

    /// The newest snapshot that verifies. Unusable newer ones (corrupt,
    /// unreadable, too large) are skipped and listed in the result. If there
    /// are snapshots but none is usable, that is an error naming each file.
    pub fn load_latest(&self) -> Result<LatestSnapshot> {
        let latest = self.load_newest_usable(|_, _| Ok(()))?;
        if latest.snapshot.is_none() && !latest.skipped.is_empty() {
            return Err(StorageError::NoUsableSnapshot {
                dir: self.dir.clone(),
                skipped: describe_skipped(&latest.skipped),
                consequence: "every snapshot file failed to load".into(),
            });
        }
        Ok(latest)
    }

    /// Tries the snapshots newest first: the first that loads, verifies and
    /// is accepted by `accept(log_start, image)` (e.g. restores into the
    /// state machine) is returned; the ones before it are listed as skipped
    /// with the reason. `snapshot` is `None` if none qualifies; the caller
    /// decides whether that is fatal. Errors only if the directory cannot
    /// be listed.
    pub fn load_newest_usable(
        &self,
        mut accept: impl FnMut(Slot, &[u8]) -> std::result::Result<(), String>,
    ) -> Result<LatestSnapshot> {
        let mut latest = LatestSnapshot::default();
        for (slot, path) in self.list()?.into_iter().rev() {
            let reason = match self.load(slot) {
                Ok(image) => match accept(slot, &image) {
                    Ok(()) => {
                        latest.snapshot = Some((slot, image));
                        return Ok(latest);
                    }
                    Err(reason) => reason,
                },
                Err(e) => e.to_string(),
            };
            latest.skipped.push(SkippedSnapshot {
                log_start: slot,
                path,
                reason,
            });
        }
        Ok(latest)
    }

    /// Opens a snapshot for sending in chunks; verifies the whole body first
    /// so a corrupt snapshot is never sent.
    pub fn open_reader(&self, log_start: Slot) -> Result<SnapshotReader> {
        let path = self.path_for(log_start);
        if !path.exists() {
            return Err(self.not_found(log_start));
        }
        let (mut f, meta) = open_checked_header(&path, log_start, self.max_snapshot_bytes)?;
        let crc = crc_of_stream(&path, &mut f, meta.len)?;
        if crc != meta.crc {
            return Err(corrupt(
                &path,
                format!(
                    "body checksum mismatch (header {:08x}, computed {crc:08x})",
                    meta.crc
                ),
            ));
        }
        Ok(SnapshotReader {
            path,
            file: f,
            meta,
        })
    }

    /// One-shot chunk read (opens the file, checks the header, reads the
    /// range). The receiver verifies `total_crc` when it finalizes.
    pub fn read_chunk(
        &self,
        log_start: Slot,
        offset: u64,
        max_len: usize,
    ) -> Result<SnapshotChunk> {
        let path = self.path_for(log_start);
        if !path.exists() {
            return Err(self.not_found(log_start));
        }
        let (f, meta) = open_checked_header(&path, log_start, self.max_snapshot_bytes)?;
        let mut reader = SnapshotReader {
            path,
            file: f,
            meta,
        };
        reader.read_chunk(offset, max_len)
    }

    /// Starts (or resumes, if a matching partial file exists) receiving the
    /// snapshot `log_start` of `total_len` bytes with body crc `total_crc`.
    /// A `total_len` above `max_snapshot_bytes` (the peer's word, not yet
    /// checked) is refused before any file is touched.
    pub fn receiver(
        &self,
        log_start: Slot,
        total_len: u64,
        total_crc: u32,
    ) -> Result<SnapshotReceiver> {
        SnapshotReceiver::open(
            &self.dir,
            log_start,
            total_len,
            total_crc,
            self.max_snapshot_bytes,
        )
    }
}

pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<(Slot, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(slot) = parse_snapshot_name(&name.to_string_lossy()) {
            out.push((slot, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Checks a snapshot file completely, streaming the body.
pub(crate) fn verify_snapshot_file(
    path: &Path,
    slot: Slot,
    max_bytes: u64,
) -> Result<SnapshotMeta> {
    let (mut f, meta) = open_checked_header(path, slot, max_bytes)?;
    let crc = crc_of_stream(path, &mut f, meta.len)?;
    if crc != meta.crc {
        return Err(corrupt(
            path,
            format!(
                "body checksum mismatch (header {:08x}, computed {crc:08x})",
                meta.crc
            ),
        ));
    }
    Ok(meta)
}

/// Sends a verified snapshot in chunks.
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    file: File,
    meta: SnapshotMeta,
}

impl SnapshotReader {
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Up to `max_len` bytes of the body from `offset` (empty at the end).
    pub fn read_chunk(&mut self, offset: u64, max_len: usize) -> Result<SnapshotChunk> {
        if offset > self.meta.len {
            return Err(StorageError::InvalidArgument(format!(
                "offset {offset} is past the end of snapshot {} ({} bytes)",
                self.path.display(),
                self.meta.len
            )));
        }
        let n = usize::try_from(self.meta.len - offset)
            .unwrap_or(usize::MAX)
            .min(max_len);
        let mut data = vec![0u8; n];
        self.file
            .seek(SeekFrom::Start(SNAPSHOT_HEADER_LEN as u64 + offset))
            .map_err(io_err(&self.path))?;
        self.file
            .read_exact(&mut data)
            .map_err(io_err(&self.path))?;
        Ok(SnapshotChunk {
            log_start: self.meta.log_start,
            offset,
            chunk_crc: crc32c::crc32c(&data),
            data,
            total_len: self.meta.len,
            total_crc: self.meta.crc,
        })
    }
}

/// Receives a snapshot into `snapshot-<slot>.snap.partial` (the final header
/// is written first, the body at `offset`s), then verifies and renames it.
#[derive(Debug)]
pub struct SnapshotReceiver {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    meta: SnapshotMeta,
    received: u64,
}

impl SnapshotReceiver {
    /// Like [`SnapshotStore::receiver`], with the limit given explicitly.
    pub fn open(
        dir: &Path,
        log_start: Slot,
        total_len: u64,
        total_crc: u32,
        max_snapshot_bytes: u64,
    ) -> Result<SnapshotReceiver> {
        let path = dir.join(format!("{}.partial", snapshot_file_name(log_start)));
        if total_len > max_snapshot_bytes {
            return Err(StorageError::SnapshotTooLarge {
                path,
                len_bytes: total_len,
                max_bytes: max_snapshot_bytes,
            });
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let meta = SnapshotMeta {
            log_start,
            len: total_len,
            crc: total_crc,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let header = encode_header(meta);
        let mut existing = [0u8; SNAPSHOT_HEADER_LEN];
        let resumable = file_len >= SNAPSHOT_HEADER_LEN as u64
            && file.read_exact(&mut existing).is_ok()
            && existing == header;
        let received = if resumable {
            (file_len - SNAPSHOT_HEADER_LEN as u64).min(total_len)
        } else {
            file.set_len(0).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
            file.write_all(&header).map_err(io_err(&path))?;
            0
        };
        Ok(SnapshotReceiver {
            dir: dir.to_path_buf(),
            path,
            file,
            meta,
            received,
        })
    }

    /// Bytes received so far: ask the sender to resume from here.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.meta.len
    }

    fn transfer_err(&self, reason: String) -> StorageError {
        StorageError::Transfer {
            path: self.path.clone(),
            reason,
        }
    }

    /// Writes `data` at `offset` after checking `chunk_crc`. `offset` may not
    /// leave a gap (it must be `<= received()`).
    pub fn write_chunk(&mut self, offset: u64, data: &[u8], chunk_crc: u32) -> Result<()> {
        let crc = crc32c::crc32c(data);
        if crc != chunk_crc {
            return Err(self.transfer_err(format!(
                "chunk at offset {offset} has checksum {crc:08x}, expected {chunk_crc:08x}"
            )));
        }
        if offset > self.received {
            return Err(self.transfer_err(format!(
                "chunk at offset {offset} leaves a gap (received {} bytes so far)",
                self.received
            )));
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > self.meta.len {
            return Err(self.transfer_err(format!(
                "chunk ends at {end}, past the snapshot length {}",
                self.meta.len
            )));
        }
        self.file
            .seek(SeekFrom::Start(SNAPSHOT_HEADER_LEN as u64 + offset))
            .map_err(io_err(&self.path))?;
        self.file.write_all(data).map_err(io_err(&self.path))?;
        self.received = self.received.max(end);
        Ok(())
    }

    /// [`write_chunk`](Self::write_chunk) for a chunk from a [`SnapshotReader`],
    /// checking it belongs to this snapshot.
    pub fn write(&mut self, chunk: &SnapshotChunk) -> Result<()> {
        if chunk.log_start != self.meta.log_start
            || chunk.total_len != self.meta.len
            || chunk.total_crc != self.meta.crc
        {
            return Err(self.transfer_err(format!(
                "chunk belongs to snapshot (log_start {}, {} bytes, crc {:08x}), not this one",
                chunk.log_start, chunk.total_len, chunk.total_crc
            )));
        }
        self.write_chunk(chunk.offset, &chunk.data, chunk.chunk_crc)
    }

    /// Verifies the whole body, then makes the snapshot durable under its
    /// final name (fsync, rename, fsync directory). Older snapshots are kept:
    /// once the image has been restored, call
    /// [`SnapshotStore::retire_older`]. On a checksum mismatch the partial
    /// file is removed and an error returned.
    pub fn finalize(mut self) -> Result<(Slot, PathBuf)> {
        if !self.is_complete() {
            return Err(self.transfer_err(format!(
                "incomplete: {} of {} bytes received",
                self.received, self.meta.len
            )));
        }
        self.file
            .set_len(SNAPSHOT_HEADER_LEN as u64 + self.meta.len)
            .map_err(io_err(&self.path))?;
        self.file
            .seek(SeekFrom::Start(SNAPSHOT_HEADER_LEN as u64))
            .map_err(io_err(&self.path))?;
        let crc = crc_of_stream(&self.path, &mut self.file, self.meta.len)?;
        if crc != self.meta.crc {
            let err = self.transfer_err(format!(
                "received body has checksum {crc:08x}, expected {:08x}; partial file removed",
                self.meta.crc
            ));
            fs::remove_file(&self.path).map_err(io_err(&self.path))?;
            return Err(err);
        }
        self.file.sync_all().map_err(io_err(&self.path))?;
        let dst = self.dir.join(snapshot_file_name(self.meta.log_start));
        fs::rename(&self.path, &dst).map_err(io_err(&dst))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok((self.meta.log_start, dst))
    }

    /// Gives up and removes the partial file.
    pub fn abort(self) -> Result<()> {
        fs::remove_file(&self.path).map_err(io_err(&self.path))
    }
}
