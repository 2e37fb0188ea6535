//! Simulator runs inside `cargo test`: a sweep of seeds must find no
//! violation, and each deliberately broken variant must be caught.

use paxlog_sim::{Bug, SimOptions, Simulation};

fn violations_over(seeds: std::ops::Range<u64>, bug: Option<Bug>) -> (u64, Vec<String>) {
    let mut committed = 0;
    let mut found = Vec::new();
    for seed in seeds {
        let report = Simulation::new(SimOptions::from_seed(seed).with_bug(bug)).run();
        committed += report.committed;
        found.extend(
            report
                .violations
                .iter()
                .map(|v| format!("seed {seed}: {v}")),
        );
    }
    (committed, found)
}

#[test]
fn correct_protocol_has_no_violations_over_300_seeds() {
    let (committed, found) = violations_over(0..300, None);
    assert!(found.is_empty(), "violations: {found:#?}");
    assert!(committed > 10_000, "too little work was done: {committed}");
}

fn assert_caught(bug: Bug, expected_prefix: &str) {
    let (_, found) = violations_over(0..200, Some(bug));
    assert!(
        found.iter().any(|v| v.contains(expected_prefix)),
        "{bug:?} was not caught by the {expected_prefix} checker; found: {found:#?}"
    );
}

#[test]
fn agreement_checker_catches_a_quorum_of_one() {
    assert_caught(Bug::QuorumOfOne, "agreement");
}

#[test]
fn agreement_checker_catches_a_leader_ignoring_accepted_values() {
    assert_caught(Bug::IgnorePromisedValues, "agreement");
}

#[test]
fn validity_checker_catches_invented_values() {
    assert_caught(Bug::InventValues, "validity");
}

#[test]
fn applied_prefix_checker_catches_a_skipped_slot() {
    assert_caught(Bug::SkipApply, "applied prefix");
}

#[test]
fn promise_monotonicity_checker_catches_a_forgotten_promise() {
    assert_caught(Bug::ForgetPromise, "promise monotonicity");
}

#[test]
fn durability_checker_catches_a_lost_log() {
    assert_caught(Bug::LoseLog, "durability");
}

#[test]
fn liveness_checker_catches_missing_catch_up() {
    assert_caught(Bug::NoCatchUp, "liveness");
}

#[test]
fn read_checker_catches_local_reads_passed_off_as_linearizable() {
    assert_caught(Bug::LocalReads, "linearizable read");
}

#[test]
fn leader_ballot_checker_catches_accepts_sent_before_the_promise_is_durable() {
    assert_caught(Bug::BallotReuse, "leader ballot durable");
}

/// The consequence, not just the early send: a replica that died right
/// after winning (its accepts to one peer out, its promise not synced)
/// campaigns again with the same ballot, wins with another quorum and sends
/// a second value for a slot at it. Rare (7 of the first 8,000 seeds:
/// 27, 44, 833, ...); the first 50 seeds have it.
#[test]
fn one_value_per_ballot_checker_catches_a_reused_ballot() {
    let (_, found) = violations_over(0..50, Some(Bug::BallotReuse));
    assert!(
        found
            .iter()
            .any(|v| v.contains("one value per ballot and slot")),
        "found: {found:#?}"
    );
}

/// The session table with stamps ignored (as before stamps existed): a copy
/// or a late retry of a request whose session expired runs again. 323 of
/// the first 2,000 seeds catch it, all with a tiny session table or short
/// session expiry; seed 2 (3 sessions for 5 clients) is the first; seed 62
/// (sessions expire after 71 idle rounds) the first with a default-sized
/// table: a slow client's retry, sent 600 ticks after its first attempt,
/// ran again 189 slots after the first execution.
#[test]
fn exactly_once_checker_catches_a_request_run_again_after_its_session_expired() {
    let (_, found) = violations_over(0..4, Some(Bug::DedupExpiry));
    assert!(
        found
            .iter()
            .any(|v| v.contains("exactly once: request") && v.contains("and again at slot")),
        "found: {found:#?}"
    );
    let (_, found) = violations_over(62..63, Some(Bug::DedupExpiry));
    assert!(
        found.iter().any(|v| v.contains("exactly once: request")),
        "found: {found:#?}"
    );
}

/// The same seeds run clean with the stamps honoured, and they do exercise
/// session expiry and `request_expired` answers (so the test above is about
/// the stamps, not a run that never expires anything).
#[test]
fn sessions_expire_without_violations_when_stamps_are_honoured() {
    let mut expired = 0;
    for seed in (0..4).chain(62..63) {
        let report = Simulation::new(SimOptions::from_seed(seed)).run();
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}",
            report.violations
        );
        expired += report.request_expired;
    }
    assert!(expired > 0, "no request_expired answer in these seeds");
}

/// Losing a replica's disk, or the synced tail of its log, is a fault the
/// swarm draws; with the recovery rule switched off the replica votes with
/// what it forgot and two values get chosen for a slot (seeds 41 and 49).
#[test]
fn agreement_checker_catches_a_replica_voting_with_a_lost_disk() {
    assert_caught(Bug::SkipRecovery, "agreement");
}

#[test]
fn a_seed_replays_exactly() {
    let a = Simulation::new(SimOptions::from_seed(77)).run();
    let b = Simulation::new(SimOptions::from_seed(77)).run();
    assert_eq!(
        (a.steps, a.committed, a.slots),
        (b.steps, b.committed, b.slots)
    );
}
