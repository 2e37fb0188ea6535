//! Writes: the duplicate checks, the read barrier for state-dependent
//! commands, the stamp, proposals and re-proposals.

use super::*;

impl Driver {
    pub(super) fn start_write(&mut self, request: WriteRequest) {
        if self.writes.len() >= self.cfg.max_pending_requests {
            let _ = request.reply.send(Err(DriverError::Busy));
            return;
        }
        if self.writes.contains_key(&request.id) {
            let _ = request.reply.send(Err(DriverError::InFlight(request.id)));
            return;
        }
        if let Some(why) = self.not_a_member() {
            let _ = request.reply.send(Err(DriverError::unavailable(why)));
            return;
        }
        // The stamp: this replica's applied round when it first took the
        // request. Any earlier execution of the same request lies at or
        // after it, so the store can tell a retry whose session expired
        // from a new request (and refuses the former: it never runs twice).
        let since = self.kv.applied_upto();
        // A retry of a request applied here already: answer from the dedup
        // table instead of taking another round.
        if let Some(output) = self.kv.precheck(request.id, since) {
            let _ = request.reply.send(Ok(output));
            return;
        }
        // A command that can fail depending on the state is checked against
        // a state that includes every write acknowledged before it arrived
        // (a linearizable barrier), so a sequential client never sees a
        // spurious error from a replica that lags.
        if request.command.depends_on_state() {
            let read_id = self.new_read_id();
            self.timeouts
                .push(Reverse((request.deadline, TimeoutKey::Read(read_id))));
            self.request_read_index(read_id, PendingRead::Write(request, since));
            return;
        }
        self.check_and_propose(request, since);
    }

    /// Refuses what cannot succeed against the current state, so a type or
    /// name error never reaches the log (it can still fail at apply time if
    /// a concurrent write changes the state in between); proposes the rest.
    pub(super) fn check_and_propose(&mut self, request: WriteRequest, since: Slot) {
        if self.writes.contains_key(&request.id) {
            let _ = request.reply.send(Err(DriverError::InFlight(request.id)));
            return;
        }
        // Again after the barrier: an earlier attempt of this very request
        // may have been applied while we waited, and the dry run below would
        // then fail against the state it produced ("400, nothing written"
        // for a command that did execute).
        if let Some(output) = self
            .kv
            .precheck(request.id, since)
            .filter(|_| !self.bugs.skip_duplicate_check_after_barrier)
        {
            let _ = request.reply.send(Ok(output));
            return;
        }
        if let Err(ApplyResult::Error { kind, message }) = self.kv.check(&request.command) {
            let _ = request
                .reply
                .send(Err(DriverError::Rejected { kind, message }));
            return;
        }
        let id = request.id;
        self.metrics.proposals.inc();
        self.writes.insert(
            id,
            PendingWrite {
                // Re-proposals reuse this payload, stamp included.
                payload: KvRequest::new(since, request.command).encode(),
                reply: request.reply,
                deadline: request.deadline,
            },
        );
        self.timeouts
            .push(Reverse((request.deadline, TimeoutKey::Write(id))));
        self.propose(id);
    }

    pub(super) fn propose(&mut self, id: RequestId) {
        let Some(write) = self.writes.get(&id) else {
            return;
        };
        let proposal = Proposal {
            id,
            payload: write.payload.clone(),
        };
        match self.replica.propose(proposal) {
            Ok(_) => {
                self.reproposals
                    .push_back((self.clock.now() + self.reproposal_interval, id));
            }
            Err(ProposeError::NoLeader) | Err(ProposeError::Overloaded) => {
                self.write_retries
                    .push_back((self.clock.now() + RETRY_INTERVAL, id));
            }
        }
    }
}
