//! Fault injection on a schedule drawn from the seed. One fault at a time:
//! apply, hold, heal, pause, repeat.

use crate::cluster::{Cluster, Started};
use crate::history::{Connectivity, FaultRec};
use crate::Rng;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kill,
    Pause,
    Partition,
    Clock,
    Disk,
    Fsync,
    /// SIGSTOP the leader for several election timeouts (a random replica
    /// only if no leader shows up within 5 s).
    PauseLeader,
    /// Demote a voter other than the leader to a learner (through the
    /// leader's `POST /v1/members`), hold 1-3 s, promote it back.
    Membership,
}

/// How long `pause-leader` keeps the leader stopped, ms: several election
/// timeouts (a replica's default election timeout is 0.5..1 s), so that the
/// others elect a leader and acknowledge writes meanwhile. Clients must wait
/// longer than this (`--timeout-ms`) for the reads queued at the stopped
/// leader to be answered, and so checked, once it resumes.
pub const PAUSE_LEADER_MS: (u64, u64) = (2000, 4000);

/// How long the `membership` nemesis keeps asking for a demoted replica's
/// promotion (503: leadership moved or not applied in time; 409: another
/// change in progress or the learner has not caught up).
const PROMOTE_RETRY: Duration = Duration::from_secs(20);

/// How long healing keeps promoting learners so that every replica is a
/// voter again at the end of a run.
const RESTORE_VOTERS: Duration = Duration::from_secs(30);

/// Before a fault, how long the harness tries to promote a replica left a
/// learner by an earlier membership fault.
const REPAIR_VOTERS: Duration = Duration::from_secs(10);

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Clock => "clock",
            Kind::Disk => "disk",
            Kind::Fsync => "fsync",
            Kind::PauseLeader => "pause-leader",
            Kind::Membership => "membership",
        }
    }
}

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub rng: Rng,
    pub t0: Instant,
    pub faults: Vec<FaultRec>,
    pub timeline: Vec<Connectivity>,
    /// Problems that fail the run (e.g. a replica that would not restart).
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    /// Replicas allowed to stop on their own right now (fsync fault).
    expect_exit: Vec<bool>,
    /// A membership step ran: every replica must be a voter
    /// again before the next fault and after healing.
    membership_touched: bool,
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

impl<'a> Nemesis<'a> {
    pub fn new(cluster: &'a mut Cluster, seed: u64, t0: Instant) -> Self {
        let expect_exit = vec![false; cluster.n];
        let mut n = Nemesis {
            cluster,
            rng: Rng::new(seed ^ 0xFA17),
            t0,
            faults: Vec::new(),
            timeline: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
            expect_exit,
            membership_touched: false,
        };
        n.mark();
        n
    }

    /// Records the connectivity now.
    pub fn mark(&mut self) {
        let majority = self.cluster.majority_component();
        if self.timeline.last().map(|c| &c.majority) != Some(&majority) {
            self.timeline.push(Connectivity {
                at_ms: ms(self.t0),
                majority,
            });
        }
    }

    async fn sleep_ms(&mut self, lo: u64, hi: u64, until: Instant) {
        let d = Duration::from_millis(self.rng.range(lo, hi));
        let now = Instant::now();
        let end = (now + d).min(until.max(now));
        self.idle_until(end).await;
    }

    /// Waits until `end`, watching for replicas that stop on their own.
    pub async fn idle_until(&mut self, end: Instant) {
        loop {
            self.check_exits().await;
            let now = Instant::now();
            if now >= end {
                return;
            }
            let step = (now + Duration::from_millis(100)).min(end);
            tokio::time::sleep_until(step.into()).await;
        }
    }

    /// A replica the harness believes running that has exited although no
    /// fault expected it to (a crash, or a signal from outside the harness:
    /// e.g. someone's `pkill -f "paxlog node"` on a shared machine). Fails
    /// the run, is recorded as a "crash" fault (so that its refused
    /// connections are not blamed on a replica "untouched" by the harness
    /// and the connectivity timeline shows it down), and is restarted.
    pub async fn check_exits(&mut self) {
        for i in 0..self.cluster.n {
            if self.expect_exit[i] {
                continue;
            }
            if let Some(exit) = self.cluster.reap(i) {
                self.unexpected_exit(i, &exit, true).await;
            }
        }
    }

    async fn unexpected_exit(&mut self, i: usize, exit: &str, restart: bool) {
        let at = ms(self.t0);
        self.failures.push(format!(
            "replica {i} exited unexpectedly ({exit}), noticed at t={:.1} s: the harness did not stop it",
            at / 1e3
        ));
        self.mark();
        let mut rec = FaultRec {
            kind: "crash".into(),
            detail: format!("replica exited on its own or was killed from outside: {exit}"),
            nodes: vec![i],
            leader_targeted: false,
            start_ms: at,
            end_ms: at,
            note: Some("not injected by the harness; noticed at start_ms".into()),
        };
        if restart {
            match self.cluster.start(i, &[]).await {
                Ok(Started::Serving) => {}
                s => {
                    self.failures.push(format!(
                        "replica {i} did not restart after exiting unexpectedly: {s:?}"
                    ));
                }
            }
            rec.end_ms = ms(self.t0);
            self.mark();
        }
        self.faults.push(rec);
    }

    /// SIGKILLs replica i for a fault, noticing whether it was already gone.
    async fn kill_replica(&mut self, i: usize) {
        if let Some(exit) = self.cluster.kill(i) {
            if !self.expect_exit[i] {
                self.unexpected_exit(i, &exit, false).await;
            }
        }
    }

    fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        for _ in 0..k.min(n) {
            let i = self.rng.below(all.len() as u64) as usize;
            out.push(all.swap_remove(i));
        }
        out.sort_unstable();
        out
    }

    async fn leader_or_random(&mut self) -> (usize, bool) {
        match self.cluster.leader().await {
            Some(l) => (l, true),
            None => (self.rng.below(self.cluster.n as u64) as usize, false),
        }
    }

    async fn restart(&mut self, i: usize, env: &[(&str, String)]) -> Started {
        self.kill_replica(i).await;
        match self.cluster.start(i, env).await {
            Ok(s) => s,
            Err(e) => Started::Exited(format!("{e:#}")),
        }
    }

    /// Runs faults until `until`, then heals everything.
    pub async fn run(
        &mut self,
        kinds: &[Kind],
        start_after: Duration,
        until: Instant,
    ) -> Result<()> {
        tokio::time::sleep(start_after).await;
        while Instant::now() + Duration::from_millis(1500) < until {
            self.repair_voters().await;
            let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
            let start = ms(self.t0);
            let mut rec = FaultRec {
                kind: kind.name().into(),
                detail: String::new(),
                nodes: Vec::new(),
                leader_targeted: false,
                start_ms: start,
                end_ms: start,
                note: None,
            };
            match kind {
                Kind::Kill => self.kill(&mut rec, until).await,
                Kind::Pause => self.pause(&mut rec, until).await?,
                Kind::Partition => self.partition(&mut rec, until).await,
                Kind::Clock => self.clock(&mut rec, until).await,
                Kind::Disk => self.disk(&mut rec).await?,
                Kind::Fsync => self.fsync(&mut rec, until).await,
                Kind::PauseLeader => self.pause_leader(&mut rec, until).await?,
                Kind::Membership => self.membership(&mut rec, until).await,
            }
            rec.end_ms = ms(self.t0);
            self.faults.push(rec);
            self.mark();
            self.sleep_ms(1000, 3000, until).await;
        }
        self.heal_all().await;
        Ok(())
    }

    pub async fn heal_all(&mut self) {
        self.cluster.net.heal_all();
        self.expect_exit.iter_mut().for_each(|e| *e = false);
        for i in 0..self.cluster.n {
            let _ = self.cluster.resume(i);
            if let Some(exit) = self.cluster.reap(i) {
                self.unexpected_exit(i, &exit, false).await;
            }
            if !self.cluster.is_running(i) {
                let s = self.restart(i, &[]).await;
                if s != Started::Serving {
                    self.failures.push(format!(
                        "replica {i} did not come back after healing: {s:?}"
                    ));
                }
            }
        }
        self.mark();
        if self.membership_touched {
            match self.restore_voters(RESTORE_VOTERS).await {
                Ok(promoted) if promoted.is_empty() => {}
                Ok(promoted) => self.notes.push(format!(
                    "membership: replicas {promoted:?} were learners at healing and were promoted back"
                )),
                Err(why) => {
                    self.failures.push(format!(
                        "membership: not every replica is a voter again after healing (tried for up to {} s): {why}",
                        RESTORE_VOTERS.as_secs()
                    ));
                    // Failed loudly once: a second healing (after the
                    // workload) does not wait again.
                    self.membership_touched = false;
                }
            }
        }
    }

    /// The leader, waiting (bounded by `limit` and `until`) for one.
    async fn wait_leader(&mut self, limit: Duration, until: Instant) -> Option<usize> {
        let wait_until = (Instant::now() + limit).min(until);
        loop {
            if let Some(l) = self.cluster.leader().await {
                return Some(l);
            }
            if Instant::now() >= wait_until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Demotes a random voter other than the leader to a learner through
    /// the leader's `POST /v1/members`, holds 1-3 s (the replica keeps
    /// receiving the log and serving clients as a learner), then promotes
    /// it back, retrying for up to PROMOTE_RETRY while leadership moves or
    /// the learner catches up. Demotes only when at least 3 replicas vote,
    /// so that a quorum of the remaining voters survives; never removes a
    /// replica (ids are never reused: a removed replica could not come
    /// back).
    async fn membership(&mut self, rec: &mut FaultRec, until: Instant) {
        // From now on every replica must be a voter before each fault and
        // after healing, whoever changed the membership.
        self.membership_touched = true;
        let Some(leader) = self.wait_leader(Duration::from_secs(5), until).await else {
            rec.detail = "skipped: no leader".into();
            rec.note = Some("no leader within 5 s".into());
            return;
        };
        let Some(m) = crate::cluster::members(self.cluster.http[leader]).await else {
            rec.detail = "skipped".into();
            rec.note = Some(format!("leader {leader} did not answer GET /v1/members"));
            return;
        };
        let n = self.cluster.n;
        if m.voters.len() < 3 {
            rec.detail = "skipped".into();
            rec.note = Some(format!(
                "{} voter(s) {:?}: at least 3 are needed to demote one and keep a quorum",
                m.voters.len(),
                m.voters
            ));
            return;
        }
        let candidates: Vec<usize> = m
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader && v < n)
            .collect();
        if candidates.is_empty() {
            rec.detail = "skipped".into();
            rec.note = Some(format!("no voter but leader {leader} in {:?}", m.voters));
            return;
        }
        let v = candidates[self.rng.below(candidates.len() as u64) as usize];
        rec.nodes = vec![v];
        rec.detail = format!("demote {v} then promote {v}");
        let mut notes = Vec::new();
        match crate::cluster::change_members(self.cluster.http[leader], "demote", v).await {
            Ok(r) if r.status == 200 => {
                let m = crate::cluster::Members::parse(&r.body);
                if !m.as_ref().is_some_and(|m| m.learners.contains(&v)) {
                    notes.push(format!(
                        "demote answered 200 but replica {v} is not listed a learner: {}",
                        r.body
                    ));
                }
            }
            Ok(r) if r.status == 400 || r.status == 409 => {
                // Refused: nothing was placed in the log.
                rec.detail = format!("demote {v} (refused)");
                rec.note = Some(format!(
                    "demote refused by leader {leader}: {} {}",
                    r.status,
                    error_text(&r.body)
                ));
                return;
            }
            Ok(r) => notes.push(format!(
                "demote answered {} by replica {leader}: {} (outcome unknown; promoting back anyway)",
                r.status,
                error_text(&r.body)
            )),
            Err(e) => notes.push(format!(
                "demote sent to replica {leader}: {e} (outcome unknown; promoting back anyway)"
            )),
        }
        let hold = self.rng.range(1000, 3001);
        rec.detail =
            format!("demote {v} then promote {v} (learner for {hold} ms; leader {leader})");
        self.sleep_ms(hold, hold + 1, until).await;
        match self.ensure_voter(v, PROMOTE_RETRY).await {
            Ok(p) => {
                if let Some(refused) = p.last_refusal {
                    notes.push(format!(
                        "promote took {} tries (last refusal: {refused})",
                        p.tries
                    ));
                }
            }
            Err(why) => notes.push(format!(
                "promote TIMED OUT after {} s ({why}): replica {v} is left a learner; promoted before the next fault or at healing",
                PROMOTE_RETRY.as_secs()
            )),
        }
        rec.note = (!notes.is_empty()).then(|| notes.join("; "));
    }

    /// Promotes replica v (through whichever replica leads, found again on
    /// every try) until the leader reports it a voter, for up to `limit`.
    /// A voter already (e.g. a demotion that was not applied) counts as
    /// done.
    async fn ensure_voter(&mut self, v: usize, limit: Duration) -> Result<Promoted, String> {
        let deadline = Instant::now() + limit;
        let n = self.cluster.n;
        let mut hint: Option<usize> = None;
        let mut tries = 0u32;
        let mut last_refusal: Option<String> = None;
        let mut last_error = String::from("no leader");
        loop {
            self.check_exits().await;
            let leader = match self.cluster.leader().await {
                Some(l) => Some(l),
                None => hint.take(),
            };
            if let Some(l) = leader {
                let addr = self.cluster.http[l];
                if crate::cluster::members(addr)
                    .await
                    .is_some_and(|m| m.leader == Some(l) && m.voters.contains(&v))
                {
                    return Ok(Promoted {
                        tries,
                        last_refusal,
                    });
                }
                tries += 1;
                match crate::cluster::change_members(addr, "promote", v).await {
                    Ok(r) if r.status == 200 => {
                        let m = crate::cluster::Members::parse(&r.body);
                        if m.as_ref().is_some_and(|m| m.voters.contains(&v)) {
                            return Ok(Promoted {
                                tries,
                                last_refusal,
                            });
                        }
                        last_error = format!("promote answered 200 by {l} but: {}", r.body);
                    }
                    Ok(r) => {
                        if r.status == 400 {
                            // Not a learner: a voter already (checked on the
                            // next try) or not a member at all, which no
                            // retry can mend (ids are never reused).
                            if let Some(m) = crate::cluster::members(addr)
                                .await
                                .filter(|m| m.leader == Some(l))
                            {
                                if !m.voters.contains(&v) && !m.learners.contains(&v) {
                                    return Err(format!(
                                        "replica {v} is not a member (voters {:?}, learners {:?}): it cannot be promoted",
                                        m.voters, m.learners
                                    ));
                                }
                            }
                        }
                        hint = r.body["leader"]
                            .as_u64()
                            .map(|x| x as usize)
                            .filter(|&x| x < n);
                        last_error =
                            format!("{} from replica {l}: {}", r.status, error_text(&r.body));
                        last_refusal = Some(last_error.clone());
                    }
                    Err(e) => last_error = format!("replica {l}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(last_error);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Promotes every replica that is not a voter (as the leader reports
    /// it), for up to `limit` in all.
    async fn restore_voters(&mut self, limit: Duration) -> Result<Vec<usize>, String> {
        let deadline = Instant::now() + limit;
        let n = self.cluster.n;
        let mut promoted = Vec::new();
        let mut last = String::from("no leader reported the membership");
        loop {
            let view = match self.cluster.leader().await {
                Some(l) => crate::cluster::members(self.cluster.http[l])
                    .await
                    .filter(|m| m.leader == Some(l)),
                None => None,
            };
            if let Some(m) = view {
                let missing: Vec<usize> = (0..n).filter(|i| !m.voters.contains(i)).collect();
                if missing.is_empty() {
                    return Ok(promoted);
                }
                for v in missing {
                    // Fails only at the deadline or for good (not a member).
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.ensure_voter(v, left).await {
                        Ok(_) => promoted.push(v),
                        Err(why) => return Err(format!("replica {v}: {why}")),
                    }
                }
                // All promoted: confirmed by the leader on the next pass.
                last = format!(
                    "promoted {promoted:?} but the leader did not report every replica a voter"
                );
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Before a fault: a replica left a learner by an earlier membership
    /// fault (a promotion that timed out, or a demotion applied after its
    /// answer timed out) is promoted, so that the next fault meets the
    /// full voter set (e.g. a kill of one of only two voters would stop
    /// the cluster).
    async fn repair_voters(&mut self) {
        if !self.membership_touched {
            return;
        }
        let at = ms(self.t0) / 1e3;
        match self.restore_voters(REPAIR_VOTERS).await {
            Ok(promoted) if promoted.is_empty() => {}
            Ok(promoted) => self.notes.push(format!(
                "membership: replicas {promoted:?} were still learners before the fault at t={at:.1} s and were promoted back"
            )),
            Err(why) => self.notes.push(format!(
                "membership: could not make every replica a voter before the fault at t={at:.1} s ({why}); retried later"
            )),
        }
    }

    async fn kill(&mut self, rec: &mut FaultRec, until: Instant) {
        let n = self.cluster.n;
        let victims = match self.rng.below(3) {
            0 => {
                rec.detail = "one".into();
                self.pick(n, 1)
            }
            1 => {
                rec.detail = "minority".into();
                self.pick(n, (n - 1) / 2)
            }
            _ => {
                let (l, found) = self.leader_or_random().await;
                rec.detail = if found { "leader" } else { "one (no leader)" }.into();
                rec.leader_targeted = found;
                vec![l]
            }
        };
        for &v in &victims {
            self.kill_replica(v).await;
        }
        rec.nodes = victims.clone();
        self.mark();
        self.sleep_ms(1000, 5000, until).await;
        for &v in &victims {
            let s = self.restart(v, &[]).await;
            if s != Started::Serving {
                self.failures
                    .push(format!("replica {v} did not restart after SIGKILL: {s:?}"));
            }
        }
    }

    async fn pause(&mut self, rec: &mut FaultRec, until: Instant) -> Result<()> {
        let v = if self.rng.below(2) == 0 {
            rec.detail = "one".into();
            self.rng.below(self.cluster.n as u64) as usize
        } else {
            let (l, found) = self.leader_or_random().await;
            rec.detail = if found { "leader" } else { "one (no leader)" }.into();
            rec.leader_targeted = found;
            l
        };
        rec.nodes = vec![v];
        self.cluster.pause(v)?;
        self.mark();
        self.sleep_ms(1500, 6000, until).await;
        self.cluster.resume(v)?;
        Ok(())
    }

    /// Stops the leader (waiting up to 5 s for one) for PAUSE_LEADER_MS:
    /// its lease expires in real time, the others elect a leader and take
    /// writes, and clients' requests queue in the stopped leader's sockets
    /// until it resumes and answers them. In about half the faults its links
    /// are also cut while it is stopped (healed just before it resumes), as
    /// in a network blip: its peers' connections to it are then new when it
    /// resumes, and nothing they sent during the pause is waiting for it, so
    /// that it may answer the queued reads before it hears of the new leader.
    async fn pause_leader(&mut self, rec: &mut FaultRec, until: Instant) -> Result<()> {
        let wait_until = (Instant::now() + Duration::from_secs(5)).min(until);
        let mut leader = self.cluster.leader().await;
        while leader.is_none() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            leader = self.cluster.leader().await;
        }
        let v = match leader {
            Some(l) => {
                rec.leader_targeted = true;
                l
            }
            None => self.rng.below(self.cluster.n as u64) as usize,
        };
        rec.nodes = vec![v];
        let (lo, hi) = PAUSE_LEADER_MS;
        let hold = self.rng.range(lo, hi + 1);
        let cut = self.rng.below(2) == 0;
        rec.detail = format!(
            "{} for {hold} ms{}",
            if leader.is_some() {
                "leader"
            } else {
                "one (no leader)"
            },
            if cut { ", its links cut meanwhile" } else { "" }
        );
        self.cluster.pause(v)?;
        let others: Vec<usize> = (0..self.cluster.n).filter(|&j| j != v).collect();
        if cut {
            self.cluster.net.split(&[v], &others);
        }
        self.mark();
        self.sleep_ms(hold, hold + 1, until).await;
        if cut {
            self.cluster.net.heal_all();
        }
        self.cluster.resume(v)?;
        Ok(())
    }

    async fn partition(&mut self, rec: &mut FaultRec, until: Instant) {
        let n = self.cluster.n;
        let all: Vec<usize> = (0..n).collect();
        let rest = |g: &[usize]| -> Vec<usize> {
            all.iter().copied().filter(|x| !g.contains(x)).collect()
        };
        match self.rng.below(5) {
            0 => {
                let g = self.pick(n, 1);
                rec.detail = format!("isolate {g:?}");
                self.cluster.net.split(&g, &rest(&g));
                rec.nodes = g;
            }
            1 => {
                let g = self.pick(n, (n - 1) / 2);
                rec.detail = format!("majority/minority: minority {g:?}");
                self.cluster.net.split(&g, &rest(&g));
                rec.nodes = g;
            }
            2 => {
                let (l, found) = self.leader_or_random().await;
                rec.leader_targeted = found;
                rec.detail = format!("isolate leader {l}");
                self.cluster.net.split(&[l], &rest(&[l]));
                rec.nodes = vec![l];
            }
            3 => {
                // Bridge: two halves that only one replica connects.
                let order = self.pick(n, n);
                let mut order = order;
                for i in (1..order.len()).rev() {
                    let j = self.rng.below(i as u64 + 1) as usize;
                    order.swap(i, j);
                }
                let bridge = order[0];
                let half = (n - 1) / 2;
                let a: Vec<usize> = order[1..1 + half].to_vec();
                let b: Vec<usize> = order[1 + half..].to_vec();
                rec.detail = format!("bridge {bridge} between {a:?} and {b:?}");
                self.cluster.net.split(&a, &b);
                rec.nodes = vec![bridge];
            }
            _ => {
                // One way: the leader can hear the others but not reach them.
                let (l, found) = self.leader_or_random().await;
                rec.leader_targeted = found;
                rec.detail = format!("one-way: {l} cannot send to the others");
                for j in 0..n {
                    if j != l {
                        self.cluster.net.set_blocked(l, j, true);
                    }
                }
                rec.nodes = vec![l];
            }
        }
        self.mark();
        self.sleep_ms(2000, 8000, until).await;
        self.cluster.net.heal_all();
    }

    async fn clock(&mut self, rec: &mut FaultRec, until: Instant) {
        const SPECS: [&str; 4] = ["+1h x2", "-1h x0.5", "+10m x4", "-5m x0.25"];
        let v = self.rng.below(self.cluster.n as u64) as usize;
        let spec = SPECS[self.rng.below(SPECS.len() as u64) as usize];
        rec.nodes = vec![v];
        rec.detail = format!("restart under faketime -f '{spec}'");
        let Some(lib) = crate::cluster::faketime_lib() else {
            rec.note = Some("libfaketime not installed".into());
            return;
        };
        let env = [
            ("LD_PRELOAD", lib.display().to_string()),
            ("FAKETIME", spec.to_string()),
        ];
        let s = self.restart(v, &env).await;
        if s != Started::Serving {
            rec.note = Some(format!("did not serve under faketime: {s:?}"));
        }
        self.mark();
        self.sleep_ms(3000, 8000, until).await;
        let s = self.restart(v, &[]).await;
        if s != Started::Serving {
            self.failures.push(format!(
                "replica {v} did not restart after the clock fault: {s:?}"
            ));
        }
    }

    /// Restarts a replica with libfiu failing a share of its fsync and
    /// fdatasync calls (EIO); paxlog must fail-stop (poisoned WAL), never
    /// acknowledge what it could not make durable.
    async fn fsync(&mut self, rec: &mut FaultRec, until: Instant) {
        let Some(libs) = crate::cluster::fiu_libs() else {
            rec.note = Some("libfiu not installed".into());
            return;
        };
        let v = self.rng.below(self.cluster.n as u64) as usize;
        let prob = [0.01, 0.05, 0.2][self.rng.below(3) as usize];
        rec.nodes = vec![v];
        rec.detail = format!("restart with fsync/fdatasync failing with p={prob} (libfiu)");
        let env = [
            ("LD_PRELOAD", libs),
            (
                "FIU_ENABLE",
                format!("enable_random name=posix/io/sync/*,probability={prob}"),
            ),
        ];
        let s = self.restart(v, &env).await;
        self.expect_exit[v] = true;
        self.mark();
        self.sleep_ms(3000, 8000, until).await;
        self.expect_exit[v] = false;
        rec.note = Some(match (s, self.cluster.reap(v)) {
            (Started::Serving, None) => "still running at the end".to_string(),
            (Started::Serving, Some(exit)) => format!("replica stopped itself ({exit})"),
            (other, _) => format!("did not serve: {other:?}"),
        });
        let s = self.restart(v, &[]).await;
        if s != Started::Serving {
            self.failures.push(format!(
                "replica {v} did not restart after the fsync fault: {s:?}"
            ));
        }
    }

    /// Replicas that say they are recovering forgotten state (`/status`).
    async fn recovering_replicas(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.cluster.n {
            if !self.cluster.is_running(i) {
                continue;
            }
            if let Some(s) = crate::cluster::status(self.cluster.http[i]).await {
                if !s["recovering"].is_null() {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Waits (bounded) until no running replica is recovering.
    async fn wait_recovered(&self, limit: Duration) -> Vec<usize> {
        let started = Instant::now();
        loop {
            let recovering = self.recovering_replicas().await;
            if recovering.is_empty() || started.elapsed() >= limit {
                return recovering;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn disk(&mut self, rec: &mut FaultRec) -> Result<()> {
        // One damaged disk at a time, as in the fault model: a replica that
        // lost state recovers from a majority of the others, so damaging a
        // second one before the first has recovered exceeds what any
        // replication can survive (and would only measure that).
        let still = self.wait_recovered(Duration::from_secs(30)).await;
        if !still.is_empty() {
            rec.detail = format!("skipped: replicas {still:?} are still recovering");
            return Ok(());
        }
        let v = self.rng.below(self.cluster.n as u64) as usize;
        rec.nodes = vec![v];
        self.kill_replica(v).await;
        self.mark();
        let dir = self.cluster.data_dir(v);
        let mode = self.rng.below(10);
        let damage = match newest_wal(&dir) {
            None => None,
            Some(path) => damage_wal(&path, mode, &mut self.rng)?,
        };
        let Some((what, must_refuse)) = damage else {
            rec.detail = "no WAL record to damage; plain restart".into();
            let s = self.restart(v, &[]).await;
            if s != Started::Serving {
                self.failures
                    .push(format!("replica {v} did not restart: {s:?}"));
            }
            return Ok(());
        };
        rec.detail = what.clone();
        self.cluster.spawn(v, &[])?;
        let s = self.cluster.wait_serving(v, Duration::from_secs(20)).await;
        match (must_refuse, s) {
            (false, Started::Serving) => rec.note = Some("recovered (torn tail truncated)".into()),
            (true, Started::Exited(e)) => {
                rec.note = Some(format!(
                    "corruption detected (refused to start: {e}); data wiped, rejoined empty"
                ));
                let _ = std::fs::remove_dir_all(&dir);
                let s = self.restart(v, &[]).await;
                if s != Started::Serving {
                    self.failures.push(format!(
                        "replica {v} did not start with a wiped data folder: {s:?}"
                    ));
                }
            }
            (true, Started::Serving) => {
                self.failures.push(format!(
                    "replica {v} started despite mid-log corruption ({what})"
                ));
                rec.note = Some("UNDETECTED corruption".into());
            }
            (true, Started::TimedOut) => {
                self.failures.push(format!(
                    "replica {v} neither served nor exited within 20 s after mid-log corruption ({what})"
                ));
                rec.note = Some("hung after corruption".into());
                let _ = self.cluster.kill(v);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = self.restart(v, &[]).await;
            }
            (false, other) => {
                self.failures.push(format!(
                    "replica {v} did not recover from a torn tail ({what}): {other:?}; log: {}",
                    self.cluster.log_path(v).display()
                ));
                rec.note = Some("did not recover from a torn tail".into());
                let _ = self.cluster.kill(v);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = self.restart(v, &[]).await;
            }
        }
        // The damaged replica recovers before the next fault; one that
        // cannot within a minute is a finding.
        let still = self.wait_recovered(Duration::from_secs(60)).await;
        if !still.is_empty() {
            self.failures.push(format!(
                "replicas {still:?} still recovering 60 s after a disk fault on replica {v}"
            ));
        }
        Ok(())
    }
}

/// The outcome of `ensure_voter`.
struct Promoted {
    /// Promote requests sent.
    tries: u32,
    /// The last refusal (409/503/400) before it was done.
    last_refusal: Option<String>,
}

/// The `error` of a replica's JSON error answer, or the whole body.
fn error_text(body: &serde_json::Value) -> String {
    body["error"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_string)
}

fn newest_wal(dir: &Path) -> Option<PathBuf> {
    let mut wals: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    wals.sort();
    wals.pop()
}

const SEGMENT_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 8;

/// Record spans (start, end) of a WAL segment, parsed from the length fields.
fn records(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off + RECORD_HEADER_LEN <= data.len() {
        let len =
            u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
        let end = off + RECORD_HEADER_LEN + len;
        if len == 0 || end > data.len() {
            break;
        }
        out.push((off, end));
        off = end;
    }
    out
}

/// Damages a WAL: mode 0..3 truncate the tail, 4..6 flip a bit in the last
/// record, 7..9 flip a bit in a record in the middle. Returns what was done
/// and whether the replica must refuse to start.
fn damage_wal(path: &Path, mode: u64, rng: &mut Rng) -> Result<Option<(String, bool)>> {
    let mut data = std::fs::read(path)?;
    let recs = records(&data);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string();
    let Some(&(last_start, last_end)) = recs.last() else {
        return Ok(None);
    };
    let (what, refuse) = if mode < 4 || (mode >= 7 && recs.len() < 3) {
        let cut = rng.range(1, (last_end - last_start) as u64) as usize;
        data.truncate(data.len() - cut);
        (
            format!("truncated {cut} bytes off the tail of {name}"),
            false,
        )
    } else if mode < 7 {
        let at = rng.range((last_start + RECORD_HEADER_LEN) as u64, last_end as u64) as usize;
        let bit = rng.below(8);
        data[at] ^= 1 << bit;
        (
            format!("flipped bit {bit} of byte {at} in the last record of {name}"),
            false,
        )
    } else {
        let r = rng.below(recs.len() as u64 - 1) as usize;
        let (s, e) = recs[r];
        let at = rng.range((s + RECORD_HEADER_LEN) as u64, e as u64) as usize;
        let bit = rng.below(8);
        data[at] ^= 1 << bit;
        (
            format!(
                "flipped bit {bit} of byte {at} in record {r} of {} in {name}",
                recs.len()
            ),
            true,
        )
    };
    std::fs::write(path, &data)?;
    Ok(Some((what, refuse)))
}
