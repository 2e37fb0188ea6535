//! The leader is SIGKILLed under write load: writes go on through a new
//! leader, and no acknowledged write is lost.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn leader_killed_under_load() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader();

    let ports: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    let load = Load::start_opts(ports, 4, "fo", true);
    load.wait_progress(40, LONG, "40 writes before the kill");

    let leader_now = c.leader().unwrap_or(leader);
    c.kill(leader_now);
    let acked_at_kill = load.acked_count();
    load.wait_progress(40, LONG, "40 writes after the leader was killed");
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader_now, "a new leader among the survivors");
    assert!(load.acked_count() > acked_at_kill);

    // The old leader comes back and catches up while writes continue.
    c.start(leader_now);
    load.wait_progress(30, LONG, "30 writes after the old leader returned");
    let (acked, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "unexpected errors (non-503 writes or stale reads): {errors:?}"
    );

    let db = c.wait_converged(LONG);
    for i in 0..3 {
        let d = common::db(c.port(i)).unwrap();
        assert_eq!(d, db, "node {i}");
        assert_all_acked_present(&acked, &d, &format!("node {i}"));
    }
    // Every acknowledged key also reads back linearizably.
    for (key, value) in acked.iter().take(20) {
        let r = get(c.port(leader_now), &format!("/v1/kv/{key}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(&r.body["value"], value);
    }
    eprintln!(
        "failover: {} acknowledged writes, {} after the kill, converged at round {}",
        acked.len(),
        acked.len() - acked_at_kill,
        db["current_round"]
    );
}
