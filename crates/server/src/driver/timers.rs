//! Time: the core's clock, retries, re-proposals and deadlines.

use super::*;

impl Driver {
    /// Brings the core's clock up to the monotonic clock. It follows real
    /// time, not the number of timer wake-ups: after a stall the replica
    /// catches up, so its timeouts never run slow. A long stall is capped:
    /// by then every lease and election timer has expired.
    pub(super) fn advance_clock(&mut self) {
        let due = (self
            .clock
            .now()
            .saturating_duration_since(self.started)
            .as_millis() as u64)
            / self.cfg.tick_ms.max(1);
        let behind = due.saturating_sub(self.ticks_done);
        let cap = 4 * self.cfg.election_ticks.max(1);
        for _ in 0..behind.min(cap) {
            self.replica.tick();
        }
        self.ticks_done = due.max(self.ticks_done);
    }

    /// Retries, re-proposals, deadlines and snapshot-transfer stalls.
    pub(super) fn on_timers(&mut self) {
        self.membership_timeouts();
        let now = self.clock.now();
        while let Some(&(at, id)) = self.write_retries.front() {
            if at > now {
                break;
            }
            self.write_retries.pop_front();
            self.propose(id);
        }
        while let Some(&(at, id)) = self.reproposals.front() {
            if at > now {
                break;
            }
            self.reproposals.pop_front();
            if self.writes.contains_key(&id) {
                self.propose(id);
            }
        }
        while let Some(&(at, read_id)) = self.read_retries.front() {
            if at > now {
                break;
            }
            self.read_retries.pop_front();
            if let Some(read) = self.reads_to_retry.remove(&read_id) {
                self.request_read_index(read_id, read);
            }
        }
        while let Some(Reverse((at, key))) = self.timeouts.peek().copied() {
            if at > now {
                break;
            }
            self.timeouts.pop();
            self.expire(key);
        }
        self.check_snapshot_transfer(now);
        self.lease_timers();
        self.serve_keep_alives_awaiting_term();
    }

    pub(super) fn expire(&mut self, key: TimeoutKey) {
        let current_round = self.kv.applied_upto().0;
        match key {
            TimeoutKey::Write(id) => {
                if let Some(write) = self.writes.get(&id) {
                    if write.deadline > self.clock.now() {
                        return;
                    }
                }
                if let Some(write) = self.writes.remove(&id) {
                    let reason = if self.replica.leader().is_none() {
                        "no leader: a majority of replicas is not reachable"
                    } else {
                        "timed out waiting for consensus"
                    };
                    let _ = write.reply.send(Err(DriverError::unavailable(
                        format!(
                            "{reason}; the command may still be applied later. A retry with the same \
                             x-paxlog-client-id and x-paxlog-request-seq never runs it twice: it is \
                             answered with the first execution's outcome, or 409 request_expired if \
                             this client's session has expired (request {id})"
                        ),
                    )));
                }
            }
            TimeoutKey::Read(read_id) => {
                let read = self
                    .reads_awaiting_index
                    .remove(&read_id)
                    .or_else(|| self.reads_to_retry.remove(&read_id))
                    .or_else(|| {
                        let key = self
                            .reads_awaiting_apply
                            .keys()
                            .find(|(_, r)| *r == read_id)
                            .copied()?;
                        self.reads_awaiting_apply.remove(&key)
                    });
                match read {
                    Some(PendingRead::Read(request)) => {
                        let message = match request.consistency {
                            Consistency::MinRound(round) => format!(
                                "this replica has not applied round {round} yet (current round {current_round}); \
                                 retry later or ask another replica"
                            ),
                            _ => "could not confirm a linearizable read: no leader reachable with a quorum"
                                .to_string(),
                        };
                        request.query.fail(DriverError::Unavailable {
                            message,
                            current_round: Some(current_round),
                        });
                    }
                    Some(PendingRead::Write(request, _)) => {
                        let _ = request.reply.send(Err(DriverError::unavailable(
                            "no leader reachable with a quorum: the command was not written",
                        )));
                    }
                    None => {}
                }
            }
        }
    }

    pub(super) fn fail_everything(&mut self, reason: &str) {
        if let Some(pending) = self.pending_change.take() {
            let _ = pending.reply.send(Err(DriverError::unavailable(reason)));
        }
        for (_, write) in self.writes.drain() {
            let _ = write.reply.send(Err(DriverError::unavailable(reason)));
        }
        let reads = self
            .reads_awaiting_index
            .drain()
            .map(|(_, r)| r)
            .chain(self.reads_to_retry.drain().map(|(_, r)| r))
            .chain(std::mem::take(&mut self.reads_awaiting_apply).into_values())
            .collect::<Vec<_>>();
        for read in reads {
            match read {
                PendingRead::Read(request) => request.query.fail(DriverError::unavailable(reason)),
                PendingRead::Write(request, _) => {
                    let _ = request.reply.send(Err(DriverError::unavailable(reason)));
                }
            }
        }
    }
}
