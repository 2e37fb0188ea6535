//! Membership changes asked for by an operator: the next membership is
//! built from the current one, checked, and placed in the log by the core;
//! the answer waits until it is applied here.

use super::*;
use paxlog_core::{ConfigChangeError, Membership, MAX_NODE_ID};
use paxlog_kv::MemberAddress;

/// Where each replica this one knows of can be reached, this one included:
/// the bootstrap replicas (`--peers`, `http_peers`), the members a joined
/// replica was told of when it joined, then the replicated address book
/// (which wins: it is newer). Retired ids are left out.
pub fn peer_addresses(
    cfg: &NodeConfig,
    kv: &KvStore,
    heard_http: &BTreeMap<u32, String>,
) -> BTreeMap<u32, MemberAddress> {
    let mut book = BTreeMap::new();
    for (i, peer_addr) in cfg.peers.iter().enumerate() {
        book.insert(
            i as u32,
            MemberAddress {
                peer_addr: peer_addr.clone(),
                http_addr: cfg.http_peers.get(i).map(|a| a.to_string()),
            },
        );
    }
    if let Some(joined) = &cfg.joined {
        for m in &joined.members {
            book.insert(
                m.id,
                MemberAddress {
                    peer_addr: m.peer_addr.clone(),
                    http_addr: m.http_addr.clone(),
                },
            );
        }
    }
    for (id, address) in kv.member_addresses() {
        book.insert(*id, address.clone());
    }
    book.retain(|id, _| !kv.is_retired(*id));
    for (id, address) in book.iter_mut() {
        if address.http_addr.is_none() {
            address.http_addr = heard_http.get(id).cloned();
        }
    }
    if let Some(own) = cfg.own_peer_addr() {
        book.insert(
            cfg.id,
            MemberAddress {
                peer_addr: own.to_string(),
                http_addr: Some(cfg.own_http_addr()),
            },
        );
    }
    book
}

/// A learner is promoted only within this many rounds of the leader (etcd
/// refuses to promote a learner that is not in sync, for the same reason:
/// a voter that lags makes the quorum wait for it).
pub const PROMOTE_MAX_LAG_ROUNDS: u64 = 1000;

/// The one membership change this replica placed and waits for.
pub(super) struct PendingChange {
    pub id: RequestId,
    pub reply: Reply<MembersReport>,
    pub deadline: Instant,
}

impl Driver {
    pub(super) fn members_report(&self) -> MembersReport {
        let membership = self.replica.membership();
        MembersReport {
            epoch: membership.epoch,
            round: self.membership_round,
            voters: membership.voter_ids().map(|n| n.0).collect(),
            learners: membership.learner_ids().map(|n| n.0).collect(),
            leader: self.replica.leader().map(|n| n.0),
            addresses: peer_addresses(&self.cfg, &self.kv, &self.heard_http),
            grpc_addresses: self
                .heard_grpc
                .iter()
                .map(|(id, a)| (*id, a.clone()))
                .chain(self.cfg.own_grpc_addr().map(|a| (self.cfg.id, a)))
                .collect(),
        }
    }

    /// Points the transport at every replica the address book names (a
    /// replica that joined, or moved) and away from retired ones. Cheap
    /// when nothing changed: the store says when it may have.
    pub(super) fn sync_peer_addresses(&mut self) {
        if self.kv.book_version() == self.book_version_dialed {
            return;
        }
        self.book_version_dialed = self.kv.book_version();
        let wanted: BTreeMap<u32, String> = peer_addresses(&self.cfg, &self.kv, &self.heard_http)
            .into_iter()
            .filter(|(id, _)| *id != self.cfg.id)
            .map(|(id, a)| (id, a.peer_addr))
            .collect();
        for (id, addr) in &wanted {
            if self.dialed.get(id) != Some(addr) {
                tracing::info!(node = self.cfg.id, peer = id, addr = %addr, "peer address");
                self.transport.set_peer(*id, addr);
            }
        }
        for id in self.dialed.keys() {
            if !wanted.contains_key(id) {
                tracing::info!(
                    node = self.cfg.id,
                    peer = id,
                    "peer retired: no longer dialed"
                );
                self.transport.remove_peer(*id);
            }
        }
        self.dialed = wanted;
    }

    pub(super) fn start_membership_change(&mut self, request: MembershipRequest) {
        let outcome = self.place_membership_change(request.action, request.id);
        match outcome {
            Ok(id) => {
                if let Some(old) = self.pending_change.replace(PendingChange {
                    id,
                    reply: request.reply,
                    deadline: request.deadline,
                }) {
                    let _ = old.reply.send(Err(DriverError::unavailable(
                        "superseded by another membership change",
                    )));
                }
            }
            Err(error) => {
                let _ = request.reply.send(Err(error));
            }
        }
    }

    fn place_membership_change(
        &mut self,
        action: MemberAction,
        id: u32,
    ) -> Result<RequestId, DriverError> {
        if self.pending_change.is_some() {
            return Err(DriverError::Conflict(
                "another membership change is in progress here".into(),
            ));
        }
        if id > MAX_NODE_ID {
            return Err(DriverError::Invalid(format!(
                "replica ids are 0 to {MAX_NODE_ID}, not {id}"
            )));
        }
        if self.kv.is_retired(id) {
            return Err(DriverError::Invalid(format!(
                "replica {id} was removed, and ids are never reused: a new replica joins with a new id"
            )));
        }
        if action == MemberAction::Add
            && !peer_addresses(&self.cfg, &self.kv, &self.heard_http).contains_key(&id)
        {
            return Err(DriverError::Invalid(format!(
                "replica {id} has no address: give its address (\"peer_addr\") to add it, or start it with --join"
            )));
        }
        let current = self.replica.membership().clone();
        let bit = 1u64 << id;
        let mut next = Membership {
            epoch: current.epoch + 1,
            ..current.clone()
        };
        match action {
            MemberAction::Add if current.is_member(NodeId(id)) => {
                return Err(DriverError::Invalid(format!(
                    "replica {id} is a member already"
                )))
            }
            MemberAction::Add => next.learners |= bit,
            MemberAction::Promote if !current.is_learner(NodeId(id)) => {
                return Err(DriverError::Invalid(format!(
                    "replica {id} is not a learner (add it first)"
                )))
            }
            MemberAction::Promote => {
                next.learners &= !bit;
                next.voters |= bit;
            }
            MemberAction::Demote if !current.is_voter(NodeId(id)) => {
                return Err(DriverError::Invalid(format!("replica {id} is not a voter")))
            }
            MemberAction::Demote => {
                next.voters &= !bit;
                next.learners |= bit;
            }
            MemberAction::Remove if !current.is_member(NodeId(id)) => {
                return Err(DriverError::Invalid(format!(
                    "replica {id} is not a member"
                )))
            }
            MemberAction::Remove => {
                next.voters &= !bit;
                next.learners &= !bit;
            }
        }
        if self.replica.role() != Role::Leader {
            return Err(DriverError::NotLeader {
                leader: self.replica.leader().map(|n| n.0),
            });
        }
        if action == MemberAction::Promote {
            // Checked first: a learner just added may not have answered yet
            // (retry), which the quorum check below would call final.
            match self.peer_lag_rounds(id) {
                None => {
                    return Err(DriverError::Conflict(format!(
                        "learner {id} has not been heard from recently: is it running? retry once it is"
                    )))
                }
                Some(lag) if lag > PROMOTE_MAX_LAG_ROUNDS => {
                    return Err(DriverError::Conflict(format!(
                        "learner {id} is {lag} rounds behind the leader (at most {PROMOTE_MAX_LAG_ROUNDS} to be promoted): wait for it to catch up"
                    )))
                }
                Some(_) => {}
            }
        }
        self.check_reachable_quorum(&next)?;
        let request_id = RequestId {
            client_id: MEMBERSHIP_CLIENT_ID,
            seq: self.new_read_id(),
        };
        self.replica
            .propose_config(request_id, next)
            .map_err(|e| match e {
                ConfigChangeError::NotLeader(leader) => DriverError::NotLeader {
                    leader: leader.map(|n| n.0),
                },
                ConfigChangeError::InProgress => DriverError::Conflict(e.to_string()),
                ConfigChangeError::Overloaded => DriverError::Busy,
                ConfigChangeError::Invalid(why) => DriverError::Invalid(why),
            })?;
        Ok(request_id)
    }

    /// A change that leaves fewer voters reachable from here than its
    /// quorum would stop the cluster: refused with the numbers.
    fn check_reachable_quorum(&self, next: &Membership) -> Result<(), DriverError> {
        let report = self.replica.status();
        let window = self.cfg.election_ticks;
        let mut reachable = 1u64 << self.cfg.id;
        for peer in &report.peers {
            if peer.last_heard_ticks_ago.is_some_and(|t| t < window) {
                reachable |= 1 << peer.id.0;
            }
        }
        let up = next.votes_in(reachable);
        if up < next.quorum() {
            return Err(DriverError::Invalid(format!(
                "after this change {up} of its {} voters would be reachable from the leader, fewer than a quorum of {}",
                next.voter_count(),
                next.quorum()
            )));
        }
        Ok(())
    }

    /// How far `id` trails this leader, if it was heard from within an
    /// election timeout.
    fn peer_lag_rounds(&self, id: u32) -> Option<u64> {
        let chosen = self.replica.chosen_upto().0;
        let window = self.cfg.election_ticks;
        self.replica
            .status()
            .peers
            .iter()
            .find(|p| p.id.0 == id && p.last_heard_ticks_ago.is_some_and(|t| t < window))
            .map(|p| chosen.saturating_sub(p.chosen_upto.0))
    }

    /// A chosen change was applied: answer its proposer if it waits here.
    pub(super) fn membership_applied(&mut self, slot: Slot, id: RequestId) {
        self.membership_round = Some(slot.0);
        self.metrics
            .membership_epoch
            .set(self.replica.membership().epoch as i64);
        if self.pending_change.as_ref().is_some_and(|p| p.id == id) {
            let report = self.members_report();
            if let Some(pending) = self.pending_change.take() {
                let _ = pending.reply.send(Ok(report));
            }
        }
    }

    /// The change will not be chosen through this replica (another value
    /// took its slot, or leadership moved).
    pub(super) fn membership_dropped(&mut self, id: RequestId) -> bool {
        if self.pending_change.as_ref().is_none_or(|p| p.id != id) {
            return false;
        }
        if let Some(pending) = self.pending_change.take() {
            let _ = pending.reply.send(Err(DriverError::unavailable(
                "the membership change was not chosen (leadership moved); see GET /v1/members and retry",
            )));
        }
        true
    }

    pub(super) fn membership_timeouts(&mut self) {
        let now = self.clock.now();
        if self
            .pending_change
            .as_ref()
            .is_some_and(|p| p.deadline <= now)
        {
            if let Some(pending) = self.pending_change.take() {
                let _ = pending.reply.send(Err(DriverError::unavailable(
                    "the membership change was not applied in time; its outcome is unknown: see GET /v1/members",
                )));
            }
        }
    }
}

/// The client id of membership changes' request ids (no session: the
/// store does not deduplicate them; the core reports their fate).
pub const MEMBERSHIP_CLIENT_ID: u64 = u64::MAX - 1;
