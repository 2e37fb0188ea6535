//! A client that keeps leases alive, then lets them go (`SimOptions::leases`),
//! and the checker of the leases' one promise: **never early**. A lease is
//! not revoked by expiry before its TTL has passed, in simulated real time,
//! since the last keep-alive the client sent and got an answer to (or since
//! its grant was sent). The leader decides expiry on its own clock, which
//! runs up to `max_clock_skew_per_mille` fast: within the drift bound the
//! leader's deadlines allow for, so the promise must hold.
//!
//! The keeper draws from a stream of its own, so the rest of a seed's
//! schedule is as without it (its log entries still change the run).

use paxlog_core::rng::SplitMix64;
use paxlog_core::{NodeId, RequestId};
use paxlog_kv::{ApplyOutput, ApplyResult, KvCommand};
use paxlog_server::driver::{DriverError, LeaseInfo};
use std::collections::HashMap;
use tokio::sync::oneshot;

/// A lease's TTL, in ms of simulated time (the tick is 10 ms).
pub const LEASE_TTL_MS: u64 = 1_000;
/// Keep-alives go out this often, in ticks (a third of the TTL).
const KEEP_ALIVE_EVERY_TICKS: u64 = 30;
/// A request not answered in this many ticks is given up.
pub const REQUEST_TIMEOUT_TICKS: u64 = 100;
/// Leases the keeper grants, one after the other.
const LEASES: u32 = 3;

enum Phase {
    /// Asking for a lease.
    Grant,
    /// Putting a key on it.
    Attach(u64),
    /// Keeping it alive until the given tick, then letting it go.
    Keep {
        lease: u64,
        until_tick: u64,
    },
    /// Done with this lease; the next one starts at the given tick.
    Rest {
        next_tick: u64,
    },
    Done,
}

pub enum Pending {
    Write {
        reply: oneshot::Receiver<Result<ApplyOutput, DriverError>>,
        sent_ms: u64,
        deadline_tick: u64,
    },
    KeepAlive {
        lease: u64,
        reply: oneshot::Receiver<Result<LeaseInfo, DriverError>>,
        sent_ms: u64,
        deadline_tick: u64,
    },
}

/// What the keeper asks of a replica next.
pub enum Ask {
    Write { id: RequestId, command: KvCommand },
    KeepAlive(u64),
}

pub struct LeaseKeeper {
    pub rng: SplitMix64,
    client_id: u64,
    seq: u64,
    phase: Phase,
    granted: u32,
    next_tick: u64,
    /// The replica keep-alives go to (the leader, once one says who it is).
    pub target: Option<NodeId>,
    pub pending: Option<Pending>,
    /// Per lease: the send time (ms) of the latest answered keep-alive, or
    /// of its grant.
    kept_since_ms: HashMap<u64, u64>,
    /// The send time of the grant request being retried.
    grant_sent_ms: Option<u64>,
    pub keep_alives_answered: u64,
    pub expiries_checked: u64,
}

impl LeaseKeeper {
    pub fn new(seed: u64, client_id: u64) -> LeaseKeeper {
        LeaseKeeper {
            rng: SplitMix64::new(seed ^ 0x1EA5_E5EE),
            client_id,
            seq: 0,
            phase: Phase::Grant,
            granted: 0,
            next_tick: 20,
            target: None,
            pending: None,
            kept_since_ms: HashMap::new(),
            grant_sent_ms: None,
            keep_alives_answered: 0,
            expiries_checked: 0,
        }
    }

    /// The request to send now, if any (`now_tick`, `now_ms`: simulated
    /// real time). Only one is in flight at a time.
    pub fn next_ask(&mut self, now_tick: u64, now_ms: u64) -> Option<Ask> {
        if self.pending.is_some() || now_tick < self.next_tick {
            return None;
        }
        match self.phase {
            Phase::Grant => {
                // A retry keeps its id (and its first send time: the TTL
                // may start from the first attempt that ran).
                let first = self.grant_sent_ms.is_none();
                self.grant_sent_ms.get_or_insert(now_ms);
                if first {
                    self.seq += 1;
                }
                Some(Ask::Write {
                    id: self.id(),
                    command: KvCommand::LeaseGrant {
                        ttl_ms: LEASE_TTL_MS,
                    },
                })
            }
            Phase::Attach(lease) => Some(Ask::Write {
                id: self.id(),
                command: KvCommand::PutLeased {
                    key: format!("lease{lease}"),
                    value_json: "1".into(),
                    lease,
                },
            }),
            Phase::Keep { lease, until_tick } => {
                if now_tick >= until_tick {
                    self.phase = Phase::Rest {
                        next_tick: now_tick + self.rng.range(50, 300),
                    };
                    return None;
                }
                Some(Ask::KeepAlive(lease))
            }
            Phase::Rest { next_tick } => {
                if now_tick >= next_tick {
                    self.phase = if self.granted < LEASES {
                        Phase::Grant
                    } else {
                        Phase::Done
                    };
                }
                None
            }
            Phase::Done => None,
        }
    }

    fn id(&self) -> RequestId {
        RequestId {
            client_id: self.client_id,
            seq: self.seq,
        }
    }

    /// A write was answered (`None`: no answer in time, or refused).
    pub fn write_answered(&mut self, output: Option<&ApplyOutput>, sent_ms: u64, now_tick: u64) {
        self.next_tick = now_tick + 1;
        let Some(output) = output else {
            return;
        };
        match self.phase {
            Phase::Grant => {
                let lease = match &output.result {
                    ApplyResult::Ok { value: Some(v) } => v.get("lease").and_then(|l| l.as_u64()),
                    _ => None,
                };
                match lease {
                    Some(lease) => {
                        let since = self.grant_sent_ms.take().unwrap_or(sent_ms);
                        self.kept_since_ms.insert(lease, since);
                        self.granted += 1;
                        self.seq += 1;
                        self.phase = Phase::Attach(lease);
                    }
                    // A retry answered from the session table: the id is
                    // not there. Start over with a new grant.
                    None => {
                        self.grant_sent_ms = None;
                        self.phase = Phase::Grant;
                    }
                }
            }
            Phase::Attach(lease) => {
                let keep_ticks = self.rng.range(100, 600);
                self.phase = Phase::Keep {
                    lease,
                    until_tick: now_tick + keep_ticks,
                };
            }
            _ => {}
        }
    }

    /// A write was refused against the state (a lease that is gone): the
    /// next lease.
    pub fn refused(&mut self, now_tick: u64) {
        self.seq += 1;
        self.grant_sent_ms = None;
        self.phase = Phase::Rest {
            next_tick: now_tick + 10,
        };
    }

    /// A keep-alive was answered.
    pub fn keep_alive_answered(
        &mut self,
        lease: u64,
        answer: Option<Result<LeaseInfo, DriverError>>,
        sent_ms: u64,
        now_tick: u64,
    ) {
        self.next_tick = now_tick + 1;
        match answer {
            Some(Ok(_)) => {
                self.keep_alives_answered += 1;
                let since = self.kept_since_ms.entry(lease).or_insert(sent_ms);
                *since = (*since).max(sent_ms);
                self.next_tick = now_tick + KEEP_ALIVE_EVERY_TICKS;
            }
            Some(Err(DriverError::NotLeader { leader: Some(l) })) => {
                self.target = Some(NodeId(l));
            }
            Some(Err(DriverError::Rejected { .. })) => {
                // Gone (expired while the keeper could not reach a leader,
                // or revoked): the next lease.
                self.phase = Phase::Rest {
                    next_tick: now_tick + 10,
                };
            }
            _ => self.target = None,
        }
    }

    /// The leader revoked `lease` by expiry, first applied at `now_ms`:
    /// the violation, if it was early.
    pub fn revoked(&mut self, lease: u64, now_ms: u64) -> Option<String> {
        let since = *self.kept_since_ms.get(&lease)?;
        self.expiries_checked += 1;
        (now_ms < since + LEASE_TTL_MS).then(|| {
            format!(
                "lease never early: lease {lease} was revoked by expiry at t={now_ms} ms, \
                 {} ms after a keep-alive sent at t={since} ms was answered (TTL {LEASE_TTL_MS} ms)",
                now_ms - since
            )
        })
    }
}
