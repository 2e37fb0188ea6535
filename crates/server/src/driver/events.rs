//! What the core reports back to the driver after a turn: leader changes,
//! dropped proposals, read indexes, snapshots needed, recovery, and peers
//! found with bad state.

use super::*;

impl Driver {
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::LeaderChanged { leader, ballot } => {
                if leader != self.last_leader {
                    self.metrics.leader_changes.inc();
                }
                let previous = self.last_leader.map(|l| l.0);
                self.last_leader = leader;
                let role = self.replica.role();
                let message = if leader == Some(NodeId(self.cfg.id)) {
                    "elected leader"
                } else if leader.is_none() {
                    "leader lost: no leader known"
                } else {
                    "leader changed"
                };
                tracing::info!(
                    node = self.cfg.id,
                    leader = leader.map(|l| l.0),
                    previous_leader = previous,
                    %ballot,
                    role = ?role,
                    current_round = self.kv.applied_upto().0,
                    "{message}"
                );
            }
            Event::ProposalDropped { id, reason } => {
                if self.membership_dropped(id) {
                    return;
                }
                if self.writes.contains_key(&id) {
                    let delay = match reason {
                        DropReason::NotLeader | DropReason::Lost => Duration::ZERO,
                        DropReason::Overloaded => RETRY_INTERVAL,
                    };
                    self.write_retries.push_back((self.clock.now() + delay, id));
                }
            }
            Event::ReadReady {
                read_id,
                read_index,
            } => {
                if let Some(read) = self.reads_awaiting_index.remove(&read_id) {
                    self.reads_awaiting_apply
                        .insert((read_index.0, read_id), read);
                }
            }
            Event::ReadFailed { read_id, .. } => {
                if let Some(read) = self.reads_awaiting_index.remove(&read_id) {
                    self.reads_to_retry.insert(read_id, read);
                    self.read_retries
                        .push_back((self.clock.now() + RETRY_INTERVAL, read_id));
                }
            }
            Event::MembershipChanged { slot, membership } => {
                let me = NodeId(self.cfg.id);
                tracing::info!(
                    node = self.cfg.id,
                    round = slot.0,
                    epoch = membership.epoch,
                    voters = ?membership.voter_ids().map(|n| n.0).collect::<Vec<_>>(),
                    learners = ?membership.learner_ids().map(|n| n.0).collect::<Vec<_>>(),
                    removed = !membership.is_member(me),
                    "membership changed"
                );
            }
            Event::SnapshotNeeded { from, log_start } => {
                self.request_snapshot(from, log_start);
            }
            Event::PeerConflict {
                peer,
                slot,
                ours,
                theirs,
            } => {
                let conflict = PeerConflictInfo {
                    peer: peer.0,
                    round: slot.0,
                    ours: describe_entry(&ours),
                    theirs: describe_entry(&theirs),
                };
                tracing::error!(
                    node = self.cfg.id,
                    peer = peer.0,
                    round = slot.0,
                    ours = ?conflict.ours,
                    theirs = ?conflict.theirs,
                    "peer reports another value for a chosen round: it lost or corrupted its state; \
                     its messages are refused from now on (see the README, 'A peer with bad state')"
                );
                self.metrics.peer_conflicts.inc();
                self.peer_conflicts.push(conflict);
            }
            Event::Recovered { promised } => {
                // Events come after this turn's fsync: the new promise is
                // durable, so the mark may go.
                if let Err(e) = self.wal.clear_recovering() {
                    tracing::warn!(node = self.cfg.id, error = %e, "cannot clear the recovering mark (it recovers again at its next start)");
                }
                self.metrics.recovering.set(0);
                self.metrics.published.set_recovering(false);
                tracing::info!(
                    node = self.cfg.id,
                    %promised,
                    current_round = self.kv.applied_upto().0,
                    "recovered: learned from a majority what it may have forgotten; it votes again"
                );
            }
        }
    }
}
