//! Reads: consistency levels, read indexes, and the answers from this
//! replica's state.

use super::*;

impl Driver {
    pub(super) fn start_read(&mut self, request: ReadRequest) {
        if !request.query.reads_state() {
            self.answer(request.query);
            return;
        }
        if let Query::Lease {
            action: LeaseAction::KeepAlive(_),
            ..
        } = &request.query
        {
            // Only the leader takes keep-alives: a follower says who leads
            // at once instead of waiting out a read barrier first.
            if self.replica.role() != Role::Leader {
                request.query.fail(DriverError::NotLeader {
                    leader: self.replica.leader().map(|n| n.0),
                });
                return;
            }
        }
        if request.consistency == Consistency::Linearizable {
            if let Some(why) = self.not_a_member() {
                request.query.fail(DriverError::unavailable(why));
                return;
            }
        }
        match request.consistency {
            Consistency::Local => self.answer(request.query),
            Consistency::MinRound(round) => {
                let read_id = self.new_read_id();
                self.timeouts
                    .push(Reverse((request.deadline, TimeoutKey::Read(read_id))));
                // Round N is applied once current_round > N.
                self.reads_awaiting_apply
                    .insert((round + 1, read_id), PendingRead::Read(request));
                self.serve_applied_reads();
            }
            Consistency::Linearizable => {
                let read_id = self.new_read_id();
                self.timeouts
                    .push(Reverse((request.deadline, TimeoutKey::Read(read_id))));
                self.request_read_index(read_id, PendingRead::Read(request));
            }
        }
    }

    pub(super) fn new_read_id(&mut self) -> u64 {
        self.next_read_id = self.next_read_id.wrapping_add(1);
        self.next_read_id
    }

    pub(super) fn request_read_index(&mut self, read_id: u64, read: PendingRead) {
        match self.replica.read_index(read_id) {
            Ok(()) => {
                self.reads_awaiting_index.insert(read_id, read);
            }
            Err(_) => {
                self.reads_to_retry.insert(read_id, read);
                self.read_retries
                    .push_back((self.clock.now() + RETRY_INTERVAL, read_id));
            }
        }
    }

    pub(super) fn serve_applied_reads(&mut self) {
        let applied = self.kv.applied_upto().0;
        while let Some(entry) = self.reads_awaiting_apply.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            match entry.remove() {
                PendingRead::Read(request) => self.answer(request.query),
                PendingRead::Write(request, since) => self.check_and_propose(request, since),
            }
        }
    }

    /// Answers `query` from this replica's state as it is now.
    pub(super) fn answer(&mut self, query: Query) {
        let current_round = self.kv.applied_upto().0;
        match query {
            Query::Get { key, reply } => {
                let value = self.kv.get(&key).cloned();
                let _ = reply.send(Ok(KeyValue {
                    value,
                    current_round,
                }));
            }
            Query::Scan {
                prefix,
                limit,
                reply,
            } => {
                let items = self.kv.scan(&prefix, limit);
                let _ = reply.send(Ok(Items {
                    items,
                    current_round,
                }));
            }
            Query::Db { reply } => {
                let db = self.kv.db_json();
                let _ = reply.send(Ok(DbImage { current_round, db }));
            }
            Query::Current { reply } => drop(reply.send(Ok(current_round))),
            Query::Fetch { round, reply } => drop(reply.send(Ok(self.fetch(round)))),
            Query::Status { reply } => drop(reply.send(Ok(Box::new(self.status())))),
            Query::Log { from, limit, reply } => drop(reply.send(Ok(self.log_page(from, limit)))),
            Query::Lease { action, reply } => self.answer_lease(action, reply),
            Query::Inspect { run } => run(Ok(StoreView {
                kv: &self.kv,
                history: &mut self.watch,
                promised: self.replica.promised(),
            })),
        }
    }

    pub(super) fn log_page(&self, from: Option<u64>, limit: usize) -> LogPage {
        let limit = limit.clamp(1, MAX_LOG_PAGE) as u64;
        let chosen = self.replica.chosen_upto().0;
        let log_start = self.replica.log_start().0;
        let start = from
            .unwrap_or_else(|| chosen.saturating_sub(limit))
            .max(log_start);
        let end = chosen.min(start.saturating_add(limit));
        let entries = (start..end)
            .filter_map(|round| {
                let entry = self.replica.chosen_entry(Slot(round))?;
                Some(LogEntry {
                    round,
                    command: describe_entry(entry),
                })
            })
            .collect();
        LogPage {
            log_start,
            chosen_round: chosen,
            current_round: self.kv.applied_upto().0,
            entries,
        }
    }

    pub(super) fn fetch(&self, round: u64) -> Fetched {
        let slot = Slot(round);
        if slot < self.replica.log_start() {
            return Fetched::Compacted {
                log_start: self.replica.log_start().0,
            };
        }
        match self.replica.chosen_entry(slot) {
            Some(entry) => Fetched::Value {
                round_id: round,
                value: describe_entry(entry),
            },
            None => Fetched::NotYet {
                current_round: self.kv.applied_upto().0,
            },
        }
    }

    pub(super) fn status(&self) -> NodeStatus {
        let report: StatusReport = self.replica.status();
        let tick_ms = self.cfg.tick_ms;
        let transport: HashMap<u32, PeerStatus> = self
            .transport
            .peer_status()
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let peers = report
            .peers
            .iter()
            .map(|p| {
                let t = transport.get(&p.id.0);
                PeerInfo {
                    id: p.id.0,
                    address: self
                        .cfg
                        .peers
                        .get(p.id.0 as usize)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    reachable: t.is_some_and(|t| t.connected),
                    last_heard_ms_ago: p.last_heard_ticks_ago.map(|t| t * tick_ms),
                    chosen_round: p.chosen_upto.0,
                    last_error: t
                        .filter(|t| !t.connected)
                        .and_then(|t| t.last_error.clone()),
                }
            })
            .collect();
        NodeStatus {
            id: self.cfg.id,
            role: report.role,
            leader: report.leader.map(|l| l.0),
            promised_ballot: report.promised.to_string(),
            leader_ballot: report.leader_ballot.map(|b| b.to_string()),
            current_round: self.kv.applied_upto().0,
            applied_round: report.applied_upto.0,
            chosen_round: report.chosen_upto.0,
            log_start: report.log_start.0,
            next_round: report.next_slot.map(|s| s.0),
            pending_writes: self.writes.len(),
            last_snapshot_round: self.last_snapshot_round,
            recovering: report.recovering.clone(),
            peer_conflicts: self.peer_conflicts.clone(),
            peers,
            membership: self.members_report(),
        }
    }
}

/// A chosen entry as text: the command, or `None` for a no-op.
pub(super) fn describe_entry(entry: &Entry) -> Option<String> {
    match entry {
        Entry::Noop => None,
        Entry::Command { payload, .. } => Some(match KvCommand::decode(payload) {
            Ok(command) => command.describe(),
            Err(e) => format!("<undecodable command: {e}>"),
        }),
        Entry::Config { membership, .. } => Some(format!(
            "membership epoch {}: voters {:?}, learners {:?}",
            membership.epoch,
            membership.voter_ids().map(|n| n.0).collect::<Vec<_>>(),
            membership.learner_ids().map(|n| n.0).collect::<Vec<_>>()
        )),
    }
}
