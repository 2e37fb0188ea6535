//! Issue 10, paths 2 and 4, on real processes.
//!
//! Path 2: a leader whose driver stalls (here a slow fsync, through the
//! test-only hook `PAXLOG_TEST_FSYNC_STALL_FILE`) for longer than the
//! election timeout must not answer the linearizable reads that queued
//! during the stall from its expired lease, once another leader has
//! acknowledged a newer write. The hook also keeps the old leader deaf to
//! its peers for a while after the stall; otherwise the messages that
//! queued during the stall teach it the new value in the same turn and
//! hide the stale lease.
//!
//! Path 4: a retried state-dependent command whose first attempt is applied
//! while the retry waits for its read barrier is answered as a duplicate,
//! not refused with "400, nothing written".

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const STALL_FILE: &str = "stall-next-fsync";

/// The value of `key` in a linearizable read's answer, or the error.
fn read_value(port: u16, key: &str) -> Result<Value, String> {
    match get(port, &format!("/v1/kv/{key}")) {
        Ok(r) if r.status == 200 => Ok(r.body["value"].clone()),
        Ok(r) => Err(format!("{} {}", r.status, r.raw)),
        Err(e) => Err(e),
    }
}

#[test]
fn reads_queued_at_a_stalled_leader_do_not_see_its_expired_lease() {
    // The hook's file name, relative to each replica's data folder; every
    // child process inherits it.
    std::env::set_var("PAXLOG_TEST_FSYNC_STALL_FILE", STALL_FILE);
    let mut cluster = Cluster::new(3, &["--request-timeout-ms", "20000"]);
    cluster.start_all();
    for round in 0..3 {
        let old = json!(format!("old-{round}"));
        let new = json!(format!("new-{round}"));
        let leader = cluster.wait_leader();
        let resp = put(cluster.port(leader), "k", &old).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.raw);
        // Every replica has it (so a later read of "old" is unambiguous).
        cluster.wait_converged(Duration::from_secs(30));

        // The leader's next fsync blocks for 4 s (the election timeout is
        // 0.5-1 s), and it hears no peer from then until 3 s after; a write
        // makes it fsync.
        let stall_ms = 4000;
        std::fs::write(
            cluster.data_dir(leader).join(STALL_FILE),
            format!("{stall_ms} 3000"),
        )
        .unwrap();
        let stalled_at = Instant::now();
        let leader_port = cluster.port(leader);
        let trigger = std::thread::spawn(move || put(leader_port, "trigger", &json!(round)));

        // Another replica takes over and acknowledges the new value.
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let new_leader = wait_for(Duration::from_secs(20), "a new leader", || {
            others.iter().copied().find(|i| {
                status(cluster.port(*i))
                    .is_some_and(|s| s["role"] == "leader" || s["role"] == "Leader")
            })
        });
        wait_for(
            Duration::from_secs(20),
            "the new value acknowledged",
            || match put(cluster.port(new_leader), "k", &new) {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            },
        );
        assert!(
            stalled_at.elapsed() < Duration::from_millis(stall_ms - 500),
            "the new leader took too long; the stall is over (machine too slow?)"
        );
        // Reads that begin now, at the stalled old leader, queue behind its
        // fsync; each must see the new value (or fail), never the old one.
        let readers: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || read_value(leader_port, "k")))
            .collect();
        let answers: Vec<Result<Value, String>> =
            readers.into_iter().map(|r| r.join().unwrap()).collect();
        let _ = trigger.join();
        for answer in &answers {
            assert_ne!(
                answer.as_ref().ok(),
                Some(&old),
                "round {round}: a linearizable read begun after {new} was acknowledged returned {old} \
                 from the stalled old leader n{leader}; answers: {answers:?}"
            );
        }
        assert!(
            answers.iter().any(|a| a.as_ref().ok() == Some(&new)),
            "round {round}: no read succeeded: {answers:?}"
        );
    }
}

fn command(port: u16, command: &str, client_id: u64, seq: u64) -> Result<Response, String> {
    let body = json!({ "command": command }).to_string();
    request(
        port,
        "POST",
        "/command",
        &id_headers(client_id, seq),
        Some(body.as_bytes()),
    )
}

#[test]
fn a_retry_applied_during_its_read_barrier_is_a_duplicate_not_an_error() {
    std::env::set_var("PAXLOG_TEST_FSYNC_STALL_FILE", STALL_FILE);
    let mut cluster = Cluster::new(3, &["--request-timeout-ms", "20000"]);
    cluster.start_all();
    for round in 0..3u64 {
        let leader = cluster.wait_leader();
        let lagging = (leader + 1) % 3;
        let name = format!("x{round}");
        let resp = command_retrying(cluster.port(leader), &format!("{name} = 1"), 900 + round, 1);
        assert_eq!(resp.status, 200, "{}", resp.raw);
        cluster.wait_converged(Duration::from_secs(30));

        // The lagging replica's next fsync (for the next write it accepts)
        // blocks for 2 s: what reaches it meanwhile queues.
        std::fs::write(cluster.data_dir(lagging).join(STALL_FILE), "2000").unwrap();
        let resp = command_retrying(
            cluster.port(leader),
            &format!("y{round} = 1"),
            800 + round,
            1,
        );
        assert_eq!(resp.status, 200, "{}", resp.raw);
        // The client's `del`, applied through the leader...
        let client = 700 + round;
        let delete = format!("del {name}");
        let first = command(cluster.port(leader), &delete, client, 1).unwrap();
        assert_eq!(first.status, 200, "{}", first.raw);
        // ...and its retry at the stalled replica: checked before the
        // barrier (not applied there yet), then after it (applied by then).
        let retry = command(cluster.port(lagging), &delete, client, 1).unwrap();
        assert_eq!(
            retry.status, 200,
            "round {round}: the retry of an applied `{delete}` was refused: {}",
            retry.raw
        );
        assert_eq!(retry.body["duplicate"], json!(true), "{}", retry.raw);
        assert_eq!(
            retry.body["round_id"], first.body["round_id"],
            "{}",
            retry.raw
        );
    }
}
