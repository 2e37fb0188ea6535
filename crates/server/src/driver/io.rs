//! What the driver needs from the world outside the replica, as traits.
//! `paxlog node` implements them with the write-ahead log, snapshot files,
//! the TCP transport and the monotonic clock (below); the simulator with a
//! simulated disk, network and time. The driver itself exists once.

use crate::wire::Wire;
use paxlog_core::{PersistRecord, Slot};
use paxlog_storage::{SnapshotChunk, SnapshotReceiver, SnapshotStore, StorageError, Wal};
use paxlog_transport::{PeerStatus, TransportHandle};
use std::time::Instant;

/// The durable log of `PersistRecord`s.
pub trait LogStorage: Send {
    fn append(&mut self, records: &[PersistRecord]) -> Result<(), StorageError>;
    /// Makes everything appended durable (fsync).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Hands what was appended to the OS, without waiting for the disk.
    fn flush(&mut self) -> Result<(), StorageError>;
    /// Drops what lies wholly below `log_start`; returns how many pieces
    /// (segments) went.
    fn compact(&mut self, log_start: Slot) -> Result<usize, StorageError>;
    /// The replica recovered the promises and accepts it may have forgotten
    /// (its new promise is durable): clear the mark, durably.
    fn clear_recovering(&mut self) -> Result<(), StorageError>;
}

/// Durable snapshots of the state machine, by the round they start the log at.
pub trait SnapshotStorage: Send {
    fn save(&mut self, log_start: Slot, image: &[u8]) -> Result<(), StorageError>;
    /// Reads `verified` back and checks it, then deletes what is older
    /// except one fallback.
    fn retire_older(&mut self, verified: Slot) -> Result<(), StorageError>;
    /// The oldest snapshot kept, if any.
    fn oldest(&self) -> Result<Option<Slot>, StorageError>;
    fn read_chunk(
        &self,
        log_start: Slot,
        offset: u64,
        max_len: usize,
    ) -> Result<SnapshotChunk, StorageError>;
    /// Starts receiving a peer's snapshot (sizes are checked against the
    /// configured bound).
    fn receive(
        &mut self,
        log_start: Slot,
        total_len: u64,
        total_crc: u32,
    ) -> Result<Box<dyn SnapshotReceiving>, StorageError>;
    fn load(&self, log_start: Slot) -> Result<Vec<u8>, StorageError>;
    fn discard(&mut self, log_start: Slot) -> Result<(), StorageError>;
}

/// A snapshot arriving in chunks.
pub trait SnapshotReceiving: Send {
    fn received(&self) -> u64;
    fn is_complete(&self) -> bool;
    fn write_chunk(&mut self, offset: u64, data: &[u8], chunk_crc: u32)
        -> Result<(), StorageError>;
    /// Checks the whole body and makes it a durable snapshot.
    fn finalize(self: Box<Self>) -> Result<Slot, StorageError>;
    fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

/// The other replicas. Sending never blocks: a full queue or a broken
/// connection drops the message (the protocol retries).
pub trait PeerNetwork: Send {
    fn send(&mut self, to: u32, wire: Wire);
    fn peer_status(&self) -> Vec<PeerStatus>;
    /// Reach replica `id` at `addr` from now on (it joined, or moved).
    /// A network that routes by id alone (the simulator's) ignores it.
    fn set_peer(&mut self, _id: u32, _addr: &str) {}
    /// Stop dialing replica `id` (it was removed).
    fn remove_peer(&mut self, _id: u32) {}
}

/// Monotonic time.
pub trait Clock: Send {
    fn now(&self) -> Instant;
}

// ----- the real ones ---------------------------------------------------------

impl LogStorage for Wal {
    fn append(&mut self, records: &[PersistRecord]) -> Result<(), StorageError> {
        Wal::append(self, records)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        Wal::sync(self)
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        Wal::flush(self)
    }
    fn compact(&mut self, log_start: Slot) -> Result<usize, StorageError> {
        Wal::compact(self, log_start).map(|removed| removed.len())
    }
    fn clear_recovering(&mut self) -> Result<(), StorageError> {
        paxlog_storage::clear_recovering(self.dir())
    }
}

impl SnapshotStorage for SnapshotStore {
    fn save(&mut self, log_start: Slot, image: &[u8]) -> Result<(), StorageError> {
        SnapshotStore::save(self, log_start, image).map(drop)
    }
    fn retire_older(&mut self, verified: Slot) -> Result<(), StorageError> {
        SnapshotStore::retire_older(self, verified).map(drop)
    }
    fn oldest(&self) -> Result<Option<Slot>, StorageError> {
        Ok(self.list()?.first().map(|(slot, _)| *slot))
    }
    fn read_chunk(
        &self,
        log_start: Slot,
        offset: u64,
        max_len: usize,
    ) -> Result<SnapshotChunk, StorageError> {
        SnapshotStore::read_chunk(self, log_start, offset, max_len)
    }
    fn receive(
        &mut self,
        log_start: Slot,
        total_len: u64,
        total_crc: u32,
    ) -> Result<Box<dyn SnapshotReceiving>, StorageError> {
        let receiver = self.receiver(log_start, total_len, total_crc)?;
        Ok(Box::new(receiver))
    }
    fn load(&self, log_start: Slot) -> Result<Vec<u8>, StorageError> {
        SnapshotStore::load(self, log_start)
    }
    fn discard(&mut self, log_start: Slot) -> Result<(), StorageError> {
        SnapshotStore::discard(self, log_start).map(drop)
    }
}

impl SnapshotReceiving for SnapshotReceiver {
    fn received(&self) -> u64 {
        SnapshotReceiver::received(self)
    }
    fn is_complete(&self) -> bool {
        SnapshotReceiver::is_complete(self)
    }
    fn write_chunk(
        &mut self,
        offset: u64,
        data: &[u8],
        chunk_crc: u32,
    ) -> Result<(), StorageError> {
        SnapshotReceiver::write_chunk(self, offset, data, chunk_crc)
    }
    fn finalize(self: Box<Self>) -> Result<Slot, StorageError> {
        SnapshotReceiver::finalize(*self).map(|(slot, _)| slot)
    }
    fn abort(self: Box<Self>) -> Result<(), StorageError> {
        SnapshotReceiver::abort(*self)
    }
}

impl PeerNetwork for TransportHandle<Wire> {
    fn send(&mut self, to: u32, wire: Wire) {
        // A false return is a drop the transport already counted.
        let _ = TransportHandle::send(self, to, wire);
    }
    fn peer_status(&self) -> Vec<PeerStatus> {
        TransportHandle::peer_status(self)
    }
    fn set_peer(&mut self, id: u32, addr: &str) {
        if let Err(e) = TransportHandle::set_peer(self, id, addr) {
            tracing::warn!(peer = id, addr, error = %e, "cannot dial the replica at this address");
        }
    }
    fn remove_peer(&mut self, id: u32) {
        TransportHandle::remove_peer(self, id);
    }
}

/// The process's monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
