//! Leases on real processes: keys on a lease that is kept alive survive
//! the loss of the leader (the new leader gives every lease a whole TTL);
//! once the keep-alives stop, the leader revokes the lease through the
//! log, and every replica (the restarted one too) deletes the lease's keys
//! at that same round, and only those.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// The round of the first entry whose command starts with `prefix`, in
/// replica `port`'s log.
fn round_of_command(port: u16, prefix: &str) -> Option<u64> {
    let log = get(port, "/log?from=0&limit=200").ok()?.body;
    log["entries"].as_array()?.iter().find_map(|e| {
        e["command"]
            .as_str()
            .filter(|c| c.starts_with(prefix))
            .and_then(|_| e["round"].as_u64())
    })
}

#[test]
fn a_kept_lease_survives_a_leader_change_and_an_expired_one_goes_everywhere_at_one_round() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader();
    let granted = wait_for(LONG, "a lease", || {
        post_json(c.port(leader), "/v1/leases", &json!({"ttl_ms": 2000}))
            .ok()
            .filter(|r| r.status == 200)
    });
    let lease = granted.body["lease"].as_u64().unwrap();
    for key in ["s/a", "s/b"] {
        let r = request(
            c.port(leader),
            "PUT",
            &format!("/v1/kv/{key}?lease={lease}"),
            &[],
            Some(b"1"),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    assert_eq!(
        put(c.port(leader), "s/plain", &json!(1)).unwrap().status,
        200
    );
    // A lease that does not exist is refused, and writes nothing.
    let r = request(
        c.port(leader),
        "PUT",
        "/v1/kv/s/z?lease=999",
        &[],
        Some(b"1"),
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.raw);

    // Keep-alives every 300 ms to whichever replica leads.
    let keeping = Arc::new(AtomicBool::new(true));
    let ports: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    let keeper = {
        let keeping = keeping.clone();
        std::thread::spawn(move || {
            while keeping.load(Ordering::Relaxed) {
                for &port in &ports {
                    let path = format!("/v1/leases/{lease}/keepalive");
                    if post_json(port, &path, &Value::Null).is_ok_and(|r| r.status == 200) {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    c.kill(leader);
    let new_leader = wait_for(LONG, "a new leader", || c.leader().filter(|l| *l != leader));
    // Well past two TTLs under the new leader: the keys stay.
    std::thread::sleep(Duration::from_millis(5000));
    for i in (0..3).filter(|i| *i != leader) {
        let r = get(c.port(i), "/v1/kv/s/a?consistency=local").unwrap();
        assert_eq!(r.status, 200, "replica {i} lost a kept key: {}", r.raw);
    }
    assert!(
        round_of_command(c.port(new_leader), "LEASE EXPIRE").is_none(),
        "revoked while kept alive"
    );

    // The keep-alives stop: the lease expires and goes through the log.
    keeping.store(false, Ordering::Relaxed);
    keeper.join().unwrap();
    let stopped = Instant::now();
    let revoked = wait_for(LONG, "the revoke", || {
        round_of_command(c.port(new_leader), "LEASE EXPIRE")
    });
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "expired {:?} after the last keep-alive, before its 2 s TTL",
        stopped.elapsed()
    );
    c.start(leader);
    for i in 0..3 {
        assert_eq!(
            wait_for(LONG, &format!("the revoke on replica {i}"), || {
                round_of_command(c.port(i), "LEASE EXPIRE")
            }),
            revoked,
            "replica {i}"
        );
        let min_round = format!("min_round={revoked}");
        let a = get(c.port(i), &format!("/v1/kv/s/a?{min_round}")).unwrap();
        assert_eq!(a.status, 404, "replica {i}: {}", a.raw);
        let plain = get(c.port(i), &format!("/v1/kv/s/plain?{min_round}")).unwrap();
        assert_eq!(plain.status, 200, "replica {i}: {}", plain.raw);
    }
    let r = post_json(
        c.port(c.wait_leader()),
        &format!("/v1/leases/{lease}/keepalive"),
        &Value::Null,
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.raw);
}
