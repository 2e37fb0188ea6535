//! Observability: metrics and health published each turn, catch-up
//! progress lines.

use super::*;

/// A catch-up in progress, for its one log line when done.
pub(super) struct CatchUp {
    pub(super) from_round: u64,
    pub(super) started: Instant,
    pub(super) snapshot_installed: bool,
}

/// Marks the driver alive in the published health state while it exists
/// (so a panic or an error return also reads as "driver stopped").
pub(super) struct AliveGuard(Arc<Metrics>);

impl AliveGuard {
    pub(super) fn new(metrics: Arc<Metrics>) -> AliveGuard {
        metrics.published.set_driver_alive(true);
        AliveGuard(metrics)
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.published.set_driver_alive(false);
    }
}

impl Driver {
    /// Publishes this turn's state to the metrics and health atomics: a few
    /// atomic stores per turn, plus peer reachability every 100 ms.
    pub(super) fn publish(&mut self) {
        let m = &self.metrics;
        let applied = self.kv.applied_upto().0;
        let chosen = self.replica.chosen_upto().0;
        let role = self.replica.role();
        let leader = self.replica.leader();
        m.applied_round.set(gauge_value(applied));
        m.chosen_round.set(gauge_value(chosen));
        m.is_leader.set(i64::from(role == Role::Leader));
        m.promised_ballot
            .set(gauge_value(self.replica.promised().counter));
        let known_chosen = chosen.max(self.heard_chosen);
        m.published
            .set_state(role, leader.map(|l| l.0), applied, chosen, known_chosen);
        m.published.set_term(self.replica.promised().counter);
        self.track_catch_up(applied, known_chosen, leader);
        let now = self.clock.now();
        if now < self.next_slow_publish {
            return;
        }
        self.next_slow_publish = now + SLOW_PUBLISH_INTERVAL;
        for peer in self.transport.peer_status() {
            self.metrics.set_peer_reachable(peer.id, peer.connected);
        }
        self.announce_client_address();
    }

    /// Every second, tells the peers where this replica serves clients
    /// (unless it listens on all interfaces and was given no name to
    /// announce: nobody could use that address).
    fn announce_client_address(&mut self) {
        if self.announce_countdown > 0 {
            self.announce_countdown -= 1;
            return;
        }
        self.announce_countdown = 9;
        let http_addr = self.cfg.own_http_addr();
        if http_addr.starts_with("0.0.0.0:") || http_addr.starts_with("[::]:") {
            return;
        }
        let grpc_addr = self.cfg.own_grpc_addr();
        let peers: Vec<u32> = self.dialed.keys().copied().collect();
        for peer in peers {
            self.transport.send(
                peer,
                Wire::ClientAddress {
                    http_addr: http_addr.clone(),
                    grpc_addr: grpc_addr.clone(),
                },
            );
        }
    }

    /// A peer told of a higher chosen round: if we are far behind, a
    /// catch-up starts (logged once it ends).
    pub(super) fn note_lag(&mut self, from: u32) {
        if self.catch_up.is_some() {
            return;
        }
        let applied = self.kv.applied_upto().0;
        let lag = self.heard_chosen.saturating_sub(applied);
        if lag > CATCH_UP_LAG {
            tracing::debug!(
                node = self.cfg.id,
                current_round = applied,
                known_chosen_round = self.heard_chosen,
                peer = from,
                "catching up: {lag} rounds behind"
            );
            self.catch_up = Some(CatchUp {
                from_round: applied,
                started: Instant::now(),
                snapshot_installed: false,
            });
        }
    }

    /// One comparison per turn; logs once when a catch-up ends.
    pub(super) fn track_catch_up(
        &mut self,
        applied: u64,
        known_chosen: u64,
        leader: Option<NodeId>,
    ) {
        let lag = known_chosen.saturating_sub(applied);
        match &self.catch_up {
            Some(catch_up) if lag <= CATCH_UP_LAG / 8 => {
                let rounds = applied.saturating_sub(catch_up.from_round);
                tracing::info!(
                    node = self.cfg.id,
                    rounds,
                    from_round = catch_up.from_round,
                    to_round = applied,
                    peer = leader.map(|l| l.0),
                    via_snapshot = catch_up.snapshot_installed,
                    ms = catch_up.started.elapsed().as_millis() as u64,
                    "caught up {rounds} rounds from peer"
                );
                self.catch_up = None;
            }
            _ => {}
        }
    }
}
