//! Snapshots: taking them, retention and log compaction, and transfer
//! between replicas (serving chunks, receiving, installing).

use super::*;

pub(super) struct IncomingSnapshot {
    pub(super) from: NodeId,
    pub(super) log_start: Option<Slot>,
    pub(super) receiver: Option<Box<dyn SnapshotReceiving>>,
    pub(super) last_progress: Instant,
}

impl Driver {
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), String> {
        let applied = self.kv.applied_upto().0;
        if applied < self.last_snapshot_round + self.cfg.snapshot_every_rounds {
            return Ok(());
        }
        let started = Instant::now();
        let image = self.kv.snapshot();
        self.snapshots
            .save(Slot(applied), &image)
            .map_err(|e| format!("snapshot failed: {e}"))?;
        // Read back and verified before anything older goes, and before
        // the log it replaces is dropped.
        self.snapshots
            .retire_older(Slot(applied))
            .map_err(|e| format!("snapshot {applied} failed read-back verification: {e}"))?;
        self.replica.compact(Slot(applied));
        let removed = self.compact_wal_to_oldest_snapshot()?;
        self.last_snapshot_round = applied;
        let elapsed = started.elapsed();
        self.metrics.snapshots.inc();
        self.metrics.snapshot_seconds.observe(elapsed.as_secs_f64());
        self.metrics
            .snapshot_bytes
            .set(gauge_value(image.len() as u64));
        tracing::info!(
            node = self.cfg.id,
            round = applied,
            bytes = image.len(),
            segments_removed = removed,
            ms = elapsed.as_millis() as u64,
            "snapshot taken, log compacted"
        );
        Ok(())
    }

    /// Drops WAL segments below the OLDEST snapshot kept, not the newest:
    /// if the newest turns out unreadable at a restart, recovery falls back
    /// to the older one and replays the log from there, with every promise
    /// and accept this replica made since still on disk (nothing forgotten).
    pub(super) fn compact_wal_to_oldest_snapshot(&mut self) -> Result<usize, String> {
        let oldest = self
            .snapshots
            .oldest()
            .map_err(|e| format!("cannot list snapshots: {e}"))?;
        match oldest {
            Some(slot) => self
                .wal
                .compact(slot)
                .map_err(|e| format!("log compaction failed: {e}")),
            None => Ok(0),
        }
    }

    pub(super) fn request_snapshot(&mut self, from: NodeId, log_start: Slot) {
        if self.incoming_snapshot.is_some() {
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            from = from.0,
            log_start = log_start.0,
            "fetching a snapshot: the rounds we need were compacted"
        );
        self.incoming_snapshot = Some(IncomingSnapshot {
            from,
            log_start: None,
            receiver: None,
            last_progress: self.clock.now(),
        });
        self.transport.send(
            from.0,
            Wire::SnapshotRequest {
                log_start: None,
                offset: 0,
            },
        );
    }

    pub(super) fn check_snapshot_transfer(&mut self, now: Instant) {
        let Some(incoming) = &mut self.incoming_snapshot else {
            return;
        };
        if now.duration_since(incoming.last_progress) < SNAPSHOT_STALL {
            return;
        }
        // Resume where we are (or give up if the peer has nothing newer).
        incoming.last_progress = now;
        let offset = incoming.receiver.as_ref().map_or(0, |r| r.received());
        let (from, log_start) = (incoming.from, incoming.log_start);
        self.transport
            .send(from.0, Wire::SnapshotRequest { log_start, offset });
    }

    /// Drops the snapshot transfer in progress and its partial file.
    pub(super) fn abandon_snapshot_transfer(&mut self) {
        if let Some(incoming) = self.incoming_snapshot.take() {
            if let Some(receiver) = incoming.receiver {
                let _ = receiver.abort();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_snapshot_chunk(
        &mut self,
        from: u32,
        log_start: Slot,
        offset: u64,
        data: Vec<u8>,
        total_len: u64,
        total_crc: u32,
        chunk_crc: u32,
    ) -> Result<(), String> {
        let Some(incoming) = &mut self.incoming_snapshot else {
            return Ok(());
        };
        if incoming.from.0 != from {
            return Ok(());
        }
        if log_start <= self.kv.applied_upto() {
            // Nothing newer than what we have: stop.
            self.abandon_snapshot_transfer();
            return Ok(());
        }
        if incoming.log_start != Some(log_start) || incoming.receiver.is_none() {
            let receiver = match self.snapshots.receive(log_start, total_len, total_crc) {
                Ok(receiver) => receiver,
                Err(e) => {
                    // E.g. a size over max_snapshot_bytes: refuse this
                    // transfer, keep serving (a later one may fit).
                    tracing::warn!(node = self.cfg.id, peer = from, error = %e, "cannot receive snapshot");
                    self.abandon_snapshot_transfer();
                    return Ok(());
                }
            };
            incoming.log_start = Some(log_start);
            incoming.receiver = Some(receiver);
        }
        incoming.last_progress = self.clock.now();
        let Some(receiver) = incoming.receiver.as_mut() else {
            return Ok(());
        };
        // A chunk out of order (a resend) is skipped: we ask again below.
        if offset == receiver.received() {
            if let Err(e) = receiver.write_chunk(offset, &data, chunk_crc) {
                tracing::warn!(node = self.cfg.id, peer = from, error = %e, "bad snapshot chunk; restarting transfer");
                self.abandon_snapshot_transfer();
                return Ok(());
            }
        }
        if !receiver.is_complete() {
            let next = receiver.received();
            self.transport.send(
                from,
                Wire::SnapshotRequest {
                    log_start: Some(log_start),
                    offset: next,
                },
            );
            return Ok(());
        }
        let Some(incoming) = self.incoming_snapshot.take() else {
            return Ok(());
        };
        let Some(receiver) = incoming.receiver else {
            return Ok(());
        };
        let slot = match receiver.finalize() {
            Ok(slot) => slot,
            Err(e) => {
                tracing::warn!(node = self.cfg.id, error = %e, "received snapshot failed verification");
                return Ok(());
            }
        };
        let mut restored = KvStore::new(self.kv.options());
        let mut image_len = 0;
        let refused = match self.snapshots.load(slot) {
            Err(e) => Some(format!("it cannot be read back: {e}")),
            Ok(image) => {
                image_len = image.len();
                restored
                    .restore(&image)
                    .err()
                    .map(|e| format!("it does not restore: {e}"))
            }
        };
        let refused = match refused {
            Some(reason) => Some(reason),
            None if restored.applied_upto() != slot => {
                Some("it covers another round than announced".to_string())
            }
            None => None,
        };
        if let Some(reason) = refused {
            tracing::warn!(
                node = self.cfg.id,
                round = slot.0,
                "received snapshot refused: {reason}"
            );
            // Not left as the newest snapshot for a restart to trip on.
            if let Err(e) = self.snapshots.discard(slot) {
                tracing::warn!(node = self.cfg.id, error = %e, "cannot delete the refused snapshot");
            }
            return Ok(());
        }
        let previous_round = self.kv.applied_upto().0;
        // The core first: it refuses a snapshot that is not ahead of what it
        // has handed out, and drops the applies the snapshot covers, so the
        // store is swapped only when the two agree.
        if self.bugs.install_snapshot_unchecked {
            // Planted bug: the store first, the core's answer ignored.
            self.kv = restored;
            // Another store: its book may differ whatever its version says.
            self.book_version_dialed = u64::MAX;
            let _ = self.replica.install_snapshot(slot);
            return self.snapshot_installed(from, slot, previous_round, image_len);
        }
        // The membership in force where the snapshot ends travels in it.
        if !self
            .replica
            .install_snapshot_with(slot, restored.membership().cloned())
        {
            tracing::info!(
                node = self.cfg.id,
                round = slot.0,
                "received snapshot is not ahead of this replica: not installed"
            );
            return Ok(());
        }
        self.kv = restored;
        // Another store: its book may differ whatever its version says.
        self.book_version_dialed = u64::MAX;
        self.snapshot_installed(from, slot, previous_round, image_len)
    }

    /// The bookkeeping after a received snapshot replaced the store.
    fn snapshot_installed(
        &mut self,
        from: u32,
        slot: Slot,
        previous_round: u64,
        image_len: usize,
    ) -> Result<(), String> {
        // The rounds the snapshot jumped over changed keys nobody saw here.
        self.watch.reset(self.kv.applied_upto().0);
        // Restored: now the older snapshots may go (keeping one fallback).
        if let Err(e) = self.snapshots.retire_older(slot) {
            tracing::warn!(node = self.cfg.id, error = %e, "cannot retire older snapshots");
        }
        self.compact_wal_to_oldest_snapshot()?;
        self.last_snapshot_round = slot.0;
        self.metrics.snapshot_installs.inc();
        self.metrics
            .snapshot_bytes
            .set(gauge_value(image_len as u64));
        if let Some(catch_up) = &mut self.catch_up {
            catch_up.snapshot_installed = true;
        }
        let rounds = slot.0.saturating_sub(previous_round);
        tracing::info!(
            node = self.cfg.id,
            round = slot.0,
            from,
            rounds,
            bytes = image_len,
            "installed snapshot from peer: skipped {rounds} rounds"
        );
        Ok(())
    }
}
