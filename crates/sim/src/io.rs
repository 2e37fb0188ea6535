//! The simulated world behind the real driver's I/O traits: a log over the
//! simulated disk, snapshots in memory, an outbox the simulator routes
//! through its network model, and a per-replica simulated clock.
//!
//! Each replica's pieces share one `NodeIo` (the driver owns boxed handles,
//! the simulator keeps its own to inspect and inject faults). The disk part
//! survives crashes; the rest is per incarnation.

use crate::disk::SimDisk;
use paxlog_core::rng::SplitMix64;
use paxlog_core::{Ballot, DurableState, Entry, Message, NodeId, PersistRecord, Slot};
use paxlog_server::driver::io::{
    Clock, LogStorage, PeerNetwork, SnapshotReceiving, SnapshotStorage,
};
use paxlog_server::wire::Wire;
use paxlog_storage::{SnapshotChunk, StorageError};
use paxlog_transport::PeerStatus;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Why a sync failed (a fault the simulator planted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// The machine died in the middle of the write: a prefix is on disk.
    Torn,
    /// It died in the turn that made it leader: its early messages to one
    /// peer are out, nothing of the turn is durable.
    AfterWin,
    /// fsync reported an error: whatever reached the disk is unknown (any
    /// prefix, all of it included); the replica must stop.
    FsyncError,
}

/// Per-sync fault rates and whether faults are on now.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncFaults {
    pub torn_per_mille: u64,
    pub crash_after_win_per_mille: u64,
    pub fsync_error_per_10k: u64,
}

pub struct NodeIo {
    pub me: NodeId,
    pub disk: SimDisk,
    /// Appended, not yet handed to the OS.
    pub pending: Vec<PersistRecord>,
    /// Everything this incarnation wrote (synced or not) replayed over what
    /// it started from: resolves chosen marks without their entry.
    pub written: DurableState,
    /// Chosen entries written since the simulator last looked.
    pub chosen_out: Vec<(Slot, Entry)>,
    /// Messages sent since the simulator last looked.
    pub outbox: Vec<(u32, Wire)>,
    /// How much of the outbox left before the last successful sync.
    pub outbox_before_sync: usize,
    /// Send-time invariant violations: (kind, message).
    pub send_violations: Vec<(&'static str, String)>,
    /// Disk replay problems and similar.
    pub violations: Vec<String>,
    /// Simulated time since the run began (this machine's clock).
    pub elapsed: Duration,
    pub base: Instant,
    pub faulty: bool,
    pub faults: SyncFaults,
    pub rng: SplitMix64,
    /// Set when a sync failed on purpose.
    pub crash: Option<CrashKind>,
    /// Snapshots saved by the driver since the simulator last looked.
    pub saved: Vec<Slot>,
    /// Snapshots received and finalized since the simulator last looked.
    pub received: Vec<Slot>,
    pub recoveries: u64,
    pub max_snapshot_bytes: u64,
    /// A single-replica cluster: its own durable accept is the quorum, so
    /// a chosen mark written in a batch whose sync failed chose nothing.
    pub quorum_is_self: bool,
}

pub type SharedIo = Arc<Mutex<NodeIo>>;

pub fn lock(io: &SharedIo) -> MutexGuard<'_, NodeIo> {
    io.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sim_error(what: &str) -> StorageError {
    StorageError::Transfer {
        path: PathBuf::from("sim"),
        reason: what.to_string(),
    }
}

impl NodeIo {
    pub fn new(me: NodeId, base: Instant, seed: u64, max_snapshot_bytes: u64) -> NodeIo {
        NodeIo {
            me,
            disk: SimDisk::default(),
            pending: Vec::new(),
            written: DurableState::default(),
            chosen_out: Vec::new(),
            outbox: Vec::new(),
            outbox_before_sync: 0,
            send_violations: Vec::new(),
            violations: Vec::new(),
            elapsed: Duration::ZERO,
            base,
            faulty: false,
            faults: SyncFaults::default(),
            rng: SplitMix64::new(seed),
            crash: None,
            saved: Vec::new(),
            received: Vec::new(),
            recoveries: 0,
            max_snapshot_bytes,
            quorum_is_self: false,
        }
    }

    /// A crash (or the driver stopped): what the incarnation held in
    /// memory is gone, and so is what never reached a sync.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.disk.crash();
        self.outbox.clear();
        self.outbox_before_sync = 0;
        self.crash = None;
    }

    /// A new incarnation starts from `durable` (the disk as recovery sees it).
    pub fn restart(&mut self, durable: DurableState, seed: u64) {
        self.written = durable;
        self.rng = SplitMix64::new(seed);
        self.chosen_out.clear();
        self.saved.clear();
        self.received.clear();
    }

    fn note_written(&mut self, records: &[PersistRecord]) {
        for record in records {
            let _ = self.written.replay(record);
            if let PersistRecord::Chosen { slot, .. } = record {
                if let Some(entry) = self.written.chosen.get(slot) {
                    self.chosen_out.push((*slot, entry.clone()));
                }
            }
        }
    }

    /// Invariants on what leaves a replica, at the moment it leaves.
    fn check_sent(&mut self, message: &Message) {
        let me = self.me;
        let disk = &self.disk.durable;
        let mut found = Vec::new();
        match message {
            // A campaign's ballot is durable before its Prepares leave.
            Message::Prepare { ballot, .. } if disk.campaigned < *ballot => {
                found.push((
                        "campaign",
                        format!(
                            "campaign ballot durable: {me} sent prepare at {ballot} with campaign {} on disk",
                            disk.campaigned
                        ),
                    ));
            }
            // A leader's ballot is durable before its Phase 2 messages.
            Message::Accept { ballot, .. } | Message::Heartbeat { ballot, .. }
                if ballot.node == me && disk.promised < *ballot =>
            {
                found.push((
                        "leader",
                        format!(
                            "leader ballot durable: {me} sent {} at ballot {ballot} with promise {} on disk",
                            message.kind(),
                            disk.promised
                        ),
                    ));
            }
            Message::Promise { ballot, .. } if disk.promised < *ballot => {
                found.push((
                    "persist",
                    format!(
                        "persist before send: {me} sent promise {ballot} before it was durable"
                    ),
                ));
            }
            Message::Accepted {
                ballot,
                first_slot,
                end_slot,
                ..
            } => {
                // Below the newest snapshot the replica votes from its
                // snapshot (the log there is kept only as a fallback).
                let newest = self.disk.newest_snapshot().map_or(Slot::ZERO, |(s, _)| s);
                let floor = disk.log_start.max(newest);
                for slot in first_slot.until(*end_slot) {
                    if slot < floor || disk.chosen.contains_key(&slot) {
                        continue;
                    }
                    let durable = disk
                        .accepted
                        .get(&slot)
                        .is_some_and(|(b, _): &(Ballot, Entry)| b >= ballot);
                    if !durable {
                        found.push((
                            "persist",
                            format!(
                                "persist before send: {me} acknowledged slot {slot} at {ballot} before it was durable"
                            ),
                        ));
                        break;
                    }
                }
            }
            _ => {}
        }
        self.send_violations.extend(found);
    }

    fn sync_fault(&mut self, pending: &[PersistRecord]) -> Option<CrashKind> {
        if !self.faulty {
            return None;
        }
        let me = self.me;
        let won = pending
            .iter()
            .any(|r| matches!(r, PersistRecord::Promised(b) if b.node == me));
        let f = self.faults;
        if won && self.rng.chance(f.crash_after_win_per_mille, 1000) {
            return Some(CrashKind::AfterWin);
        }
        if self.rng.chance(f.torn_per_mille, 1000) && self.rng.chance(1, 20) {
            return Some(CrashKind::Torn);
        }
        if self.rng.chance(f.fsync_error_per_10k, 10_000) {
            return Some(CrashKind::FsyncError);
        }
        None
    }
}

fn chosen_slot(record: &PersistRecord) -> Option<Slot> {
    match record {
        PersistRecord::Chosen { slot, .. } => Some(*slot),
        _ => None,
    }
}

/// The log over the simulated disk.
pub struct SimLog(pub SharedIo);

impl LogStorage for SimLog {
    fn append(&mut self, records: &[PersistRecord]) -> Result<(), StorageError> {
        let mut io = lock(&self.0);
        io.pending.extend_from_slice(records);
        io.note_written(records);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let mut io = lock(&self.0);
        let io = &mut *io;
        let pending = std::mem::take(&mut io.pending);
        let me = io.me;
        if let Some(kind) = io.sync_fault(&pending) {
            let keep = match kind {
                CrashKind::AfterWin => 0,
                CrashKind::Torn => io.rng.range(0, pending.len() as u64) as usize,
                CrashKind::FsyncError => io.rng.range(0, pending.len() as u64 + 1) as usize,
            };
            io.disk
                .write_synced(&pending[..keep], &mut io.violations, me);
            if io.quorum_is_self {
                // In a larger cluster a chosen mark is a fact a quorum made
                // durable elsewhere; here it was only a hope of this batch.
                let lost: Vec<Slot> = pending[keep..].iter().filter_map(chosen_slot).collect();
                io.chosen_out.retain(|(slot, _)| !lost.contains(slot));
            }
            io.crash = Some(kind);
            return Err(sim_error("simulated fsync failure"));
        }
        io.disk.write_synced(&pending, &mut io.violations, me);
        io.outbox_before_sync = io.outbox.len();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        let mut io = lock(&self.0);
        let pending = std::mem::take(&mut io.pending);
        io.disk.write_lazy(&pending);
        Ok(())
    }

    fn compact(&mut self, log_start: Slot) -> Result<usize, StorageError> {
        let mut io = lock(&self.0);
        Ok(usize::from(io.disk.compact_log(log_start)))
    }

    fn clear_recovering(&mut self) -> Result<(), StorageError> {
        let mut io = lock(&self.0);
        if io.disk.recovering {
            io.disk.recovering = false;
            io.recoveries += 1;
        }
        Ok(())
    }
}

/// Snapshots in memory (durable: they survive a crash with the disk).
pub struct SimSnapshots(pub SharedIo);

impl SnapshotStorage for SimSnapshots {
    fn save(&mut self, log_start: Slot, image: &[u8]) -> Result<(), StorageError> {
        let mut io = lock(&self.0);
        if image.len() as u64 > io.max_snapshot_bytes {
            return Err(StorageError::SnapshotTooLarge {
                path: PathBuf::from("sim"),
                len_bytes: image.len() as u64,
                max_bytes: io.max_snapshot_bytes,
            });
        }
        let crc = crc32c::crc32c(image);
        io.disk.snapshots.insert(log_start, (image.to_vec(), crc));
        io.saved.push(log_start);
        Ok(())
    }

    fn retire_older(&mut self, verified: Slot) -> Result<(), StorageError> {
        let mut io = lock(&self.0);
        match io.disk.snapshots.get(&verified) {
            Some((image, crc)) if crc32c::crc32c(image) == *crc => {}
            _ => return Err(sim_error("snapshot failed read-back verification")),
        }
        // Keep one fallback: the newest older one.
        let older: Vec<Slot> = io
            .disk
            .snapshots
            .range(..verified)
            .map(|(s, _)| *s)
            .collect();
        for slot in older.iter().rev().skip(1) {
            io.disk.snapshots.remove(slot);
        }
        Ok(())
    }

    fn oldest(&self) -> Result<Option<Slot>, StorageError> {
        Ok(lock(&self.0).disk.snapshots.keys().next().copied())
    }

    fn read_chunk(
        &self,
        log_start: Slot,
        offset: u64,
        max_len: usize,
    ) -> Result<SnapshotChunk, StorageError> {
        let io = lock(&self.0);
        let Some((image, crc)) = io.disk.snapshots.get(&log_start) else {
            return Err(StorageError::SnapshotNotFound {
                dir: PathBuf::from("sim"),
                log_start: log_start.0,
            });
        };
        let start = (offset as usize).min(image.len());
        let end = start.saturating_add(max_len).min(image.len());
        let data = image[start..end].to_vec();
        Ok(SnapshotChunk {
            log_start,
            offset: start as u64,
            chunk_crc: crc32c::crc32c(&data),
            data,
            total_len: image.len() as u64,
            total_crc: *crc,
        })
    }

    fn receive(
        &mut self,
        log_start: Slot,
        total_len: u64,
        total_crc: u32,
    ) -> Result<Box<dyn SnapshotReceiving>, StorageError> {
        let max = lock(&self.0).max_snapshot_bytes;
        if total_len > max {
            return Err(StorageError::SnapshotTooLarge {
                path: PathBuf::from("sim"),
                len_bytes: total_len,
                max_bytes: max,
            });
        }
        Ok(Box::new(SimReceiver {
            io: self.0.clone(),
            log_start,
            total_len,
            total_crc,
            body: Vec::new(),
        }))
    }

    fn load(&self, log_start: Slot) -> Result<Vec<u8>, StorageError> {
        let io = lock(&self.0);
        match io.disk.snapshots.get(&log_start) {
            Some((image, crc)) if crc32c::crc32c(image) == *crc => Ok(image.clone()),
            Some(_) => Err(sim_error("snapshot checksum mismatch")),
            None => Err(StorageError::SnapshotNotFound {
                dir: PathBuf::from("sim"),
                log_start: log_start.0,
            }),
        }
    }

    fn discard(&mut self, log_start: Slot) -> Result<(), StorageError> {
        lock(&self.0).disk.snapshots.remove(&log_start);
        Ok(())
    }
}

struct SimReceiver {
    io: SharedIo,
    log_start: Slot,
    total_len: u64,
    total_crc: u32,
    body: Vec<u8>,
}

impl SnapshotReceiving for SimReceiver {
    fn received(&self) -> u64 {
        self.body.len() as u64
    }

    fn is_complete(&self) -> bool {
        self.body.len() as u64 >= self.total_len
    }

    fn write_chunk(
        &mut self,
        offset: u64,
        data: &[u8],
        chunk_crc: u32,
    ) -> Result<(), StorageError> {
        if offset != self.body.len() as u64 {
            return Err(sim_error("chunk out of order"));
        }
        if crc32c::crc32c(data) != chunk_crc {
            return Err(sim_error("chunk checksum mismatch"));
        }
        if self.body.len() as u64 + data.len() as u64 > self.total_len {
            return Err(sim_error("chunk beyond the announced length"));
        }
        self.body.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self: Box<Self>) -> Result<Slot, StorageError> {
        if self.body.len() as u64 != self.total_len || crc32c::crc32c(&self.body) != self.total_crc
        {
            return Err(sim_error("snapshot body checksum mismatch"));
        }
        let mut io = lock(&self.io);
        io.disk
            .snapshots
            .insert(self.log_start, (self.body, self.total_crc));
        io.received.push(self.log_start);
        Ok(self.log_start)
    }

    fn abort(self: Box<Self>) -> Result<(), StorageError> {
        Ok(())
    }
}

/// The outbox the simulator routes through its network model.
pub struct SimNetwork(pub SharedIo);

impl PeerNetwork for SimNetwork {
    fn send(&mut self, to: u32, wire: Wire) {
        let mut io = lock(&self.0);
        if let Wire::Core(message) = &wire {
            io.check_sent(message);
        }
        io.outbox.push((to, wire));
    }

    fn peer_status(&self) -> Vec<PeerStatus> {
        Vec::new()
    }
}

/// This replica's clock: the run's base instant plus its simulated time.
pub struct SimClock(pub SharedIo);

impl Clock for SimClock {
    fn now(&self) -> Instant {
        let io = lock(&self.0);
        io.base + io.elapsed
    }
}
