//! Lease expiry. Which leases exist and which keys they hold is replicated
//! state (the store); when one expires is the leader's call, carried
//! through the log as a `LeaseRevoke`, so every replica deletes the same
//! keys at the same round. Keep-alives go to the leader and refresh its
//! deadline in memory only (no log write per keep-alive).
//!
//! Never early: a deadline is the lease's TTL stretched by the clock drift
//! bound after the last keep-alive this leader answered, measured on its
//! monotonic clock; a new leader gives every lease a whole stretched TTL
//! from the moment it leads (it cannot know when the old leader last saw a
//! keep-alive, and one that came just before the change must still count).

use super::*;

/// The clock drift the lease deadlines allow for, as the core's leases do.
const LEASE_DRIFT_PERCENT: u64 = 10;
/// Keep-alives waiting for a new leader's lease term, at most.
const MAX_KEEP_ALIVES_AWAITING_TERM: usize = 4096;

pub enum LeaseAction {
    /// Refresh a lease's deadline (the leader only).
    KeepAlive(u64),
    /// A lease's lifetime and what is left of it.
    Get(u64),
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseInfo {
    pub lease: u64,
    pub ttl_ms: u64,
    /// Until the leader expires it, if this replica leads (else unknown).
    pub remaining_ms: Option<u64>,
    pub keys: Vec<String>,
}

/// The leader's deadlines, for the leases the store holds.
#[derive(Default)]
pub(super) struct LeaseClock {
    /// The ballot these deadlines were set under (a new leader starts over).
    leading_since: Option<String>,
    deadlines: HashMap<u64, Instant>,
    /// Leases whose revoke this leader has placed.
    revoking: HashMap<u64, Instant>,
    /// When this leader last placed its `LeasesRenewed`.
    renewal_placed: Option<Instant>,
}

fn stretched(ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms.saturating_mul(100 + LEASE_DRIFT_PERCENT) / 100)
}

impl Driver {
    /// How long after a keep-alive (or its start as leader) this leader
    /// lets a lease of `ttl_ms` live.
    fn lease_lifetime(&self, ttl_ms: u64) -> Duration {
        if self.bugs.early_lease_expiry {
            return Duration::from_millis(ttl_ms / 2);
        }
        stretched(ttl_ms)
    }
}

impl Driver {
    /// Once per turn: as the leader, give every lease a deadline and revoke
    /// the ones that passed it; as anyone else, forget the deadlines.
    pub(super) fn lease_timers(&mut self) {
        if self.kv.leases().is_empty() && self.lease_clock.deadlines.is_empty() {
            return;
        }
        let leading =
            (self.replica.role() == Role::Leader).then(|| self.replica.promised().to_string());
        if leading.is_none() {
            self.lease_clock = LeaseClock::default();
            return;
        }
        let now = self.clock.now();
        if self.lease_clock.leading_since != leading {
            self.lease_clock = LeaseClock {
                leading_since: leading,
                ..LeaseClock::default()
            };
        }
        let clock = &mut self.lease_clock;
        clock
            .deadlines
            .retain(|id, _| self.kv.leases().contains_key(id));
        clock
            .revoking
            .retain(|id, _| self.kv.leases().contains_key(id));
        for (id, lease) in self.kv.leases() {
            let lifetime = self.lease_lifetime(lease.ttl_ms);
            self.lease_clock
                .deadlines
                .entry(*id)
                .or_insert_with(|| now + lifetime);
        }
        // A leader that does not hold its lease may have been replaced:
        // keep-alives may be going to the new one, so its deadlines may be
        // stale; it revokes nothing.
        if !self.replica.lease_active() {
            return;
        }
        // A revoke an earlier leader placed can still be chosen later
        // (re-proposed, or found by a Phase 1), after this leader took
        // keep-alives. So a leader first gives the leases a new term in the
        // log; the store voids every expiry decided under a lower ballot
        // once it is applied, and this leader takes keep-alives and expires
        // leases only after that.
        let ballot = self.replica.promised();
        if self.kv.lease_ballot() < ballot {
            let due = self
                .lease_clock
                .renewal_placed
                .is_none_or(|placed| now.duration_since(placed) > self.reproposal_interval);
            if due {
                self.lease_clock.renewal_placed = Some(now);
                self.place_leader_write(KvCommand::LeasesRenewed { ballot }, now);
            }
            return;
        }
        let clock = &mut self.lease_clock;
        let due: Vec<u64> = clock
            .deadlines
            .iter()
            .filter(|(id, at)| {
                **at <= now
                    && clock
                        .revoking
                        .get(id)
                        .is_none_or(|placed| now.duration_since(*placed) > self.reproposal_interval)
            })
            .map(|(id, _)| *id)
            .collect();
        for lease in due {
            self.lease_clock.revoking.insert(lease, now);
            tracing::info!(node = self.cfg.id, lease, "lease expired: revoking it");
            self.place_leader_write(KvCommand::LeaseExpire { lease, ballot }, now);
        }
    }

    /// Proposes a command of the leader's own (no client waits for it),
    /// under a client id with the top bit set, which no client uses.
    fn place_leader_write(&mut self, command: KvCommand, now: Instant) {
        let (reply, _) = oneshot::channel();
        let id = RequestId {
            client_id: self.new_read_id() | (1 << 63),
            seq: 1,
        };
        self.start_write(WriteRequest {
            command,
            id,
            reply,
            deadline: now + Duration::from_millis(self.cfg.request_timeout_ms),
        });
    }

    /// Answers a lease query. A keep-alive that reaches a leader whose
    /// `LeasesRenewed` is not applied yet waits for it (placing it if need
    /// be), up to the request timeout, so a client's first keep-alive
    /// after an election (or its first lease) is not refused.
    pub(super) fn answer_lease(&mut self, action: LeaseAction, reply: Reply<LeaseInfo>) {
        if let LeaseAction::KeepAlive(id) = action {
            let leads = self.replica.role() == Role::Leader && self.replica.lease_active();
            if leads && self.kv.lease_ballot() < self.replica.promised() {
                self.lease_timers();
                if self.keep_alives_awaiting_term.len() >= MAX_KEEP_ALIVES_AWAITING_TERM {
                    let _ = reply.send(Err(DriverError::Busy));
                    return;
                }
                let until = self.clock.now() + Duration::from_millis(self.cfg.request_timeout_ms);
                self.keep_alives_awaiting_term.push((until, id, reply));
                return;
            }
        }
        let _ = reply.send(self.lease_request(action));
    }

    /// Once per turn: the keep-alives that wait for this leader's lease
    /// term are answered once it is applied (or the leader is no more),
    /// or refused when their time is up.
    pub(super) fn serve_keep_alives_awaiting_term(&mut self) {
        if self.keep_alives_awaiting_term.is_empty() {
            return;
        }
        let now = self.clock.now();
        let waiting = std::mem::take(&mut self.keep_alives_awaiting_term);
        for (until, id, reply) in waiting {
            let leads = self.replica.role() == Role::Leader && self.replica.lease_active();
            if !leads || self.kv.lease_ballot() >= self.replica.promised() {
                let _ = reply.send(self.lease_request(LeaseAction::KeepAlive(id)));
            } else if until <= now {
                let _ = reply.send(Err(DriverError::unavailable(
                    "this leader could not give the leases its term in time; retry the keep-alive",
                )));
            } else {
                self.keep_alives_awaiting_term.push((until, id, reply));
            }
        }
    }

    /// Answers a lease query (after its read barrier: every round the
    /// leader inherited is applied, so a revoke placed by an earlier leader
    /// is seen). A keep-alive is taken only by a leader that holds its
    /// lease: no other leader can exist meanwhile, so no other replica's
    /// deadline for it can be running out of date.
    pub(super) fn lease_request(&mut self, action: LeaseAction) -> Result<LeaseInfo, DriverError> {
        let (id, keep_alive) = match action {
            LeaseAction::KeepAlive(id) => (id, true),
            LeaseAction::Get(id) => (id, false),
        };
        let Some(lease) = self.kv.leases().get(&id) else {
            return Err(DriverError::Rejected {
                kind: ErrorKind::LeaseNotFound,
                message: format!("lease {id} does not exist (never granted, revoked, or expired)"),
            });
        };
        let ttl_ms = lease.ttl_ms;
        let keys = lease.keys.iter().cloned().collect();
        let leads = self.replica.role() == Role::Leader;
        if keep_alive && !(leads && self.replica.lease_active()) {
            return Err(DriverError::NotLeader {
                leader: self.replica.leader().map(|n| n.0),
            });
        }
        if keep_alive && self.kv.lease_ballot() != self.replica.promised() {
            // Its `LeasesRenewed` is not applied (`answer_lease` waits for
            // it), or a later leader's is: not a leader to keep alive with.
            return Err(DriverError::unavailable(
                "this leader has not given the leases its term; retry the keep-alive shortly",
            ));
        }
        // Deadlines exist only once this turn's timers ran as leader.
        self.lease_timers();
        let now = self.clock.now();
        if keep_alive {
            if self.lease_clock.revoking.contains_key(&id) {
                return Err(DriverError::Rejected {
                    kind: ErrorKind::LeaseNotFound,
                    message: format!("lease {id} expired"),
                });
            }
            let lifetime = self.lease_lifetime(ttl_ms);
            self.lease_clock.deadlines.insert(id, now + lifetime);
        }
        let remaining_ms = leads
            .then(|| self.lease_clock.deadlines.get(&id))
            .flatten()
            .map(|at| at.saturating_duration_since(now).as_millis() as u64);
        Ok(LeaseInfo {
            lease: id,
            ttl_ms,
            remaining_ms,
            keys,
        })
    }
}
