//! The seed's "Sample execution", step by step, against real processes.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn seed_sample_execution() {
    let mut c = Cluster::new(3, &[]);
    // Nodes 0 and 1 come up empty; node 2 is not started.
    c.spawn(0);
    c.spawn(1);
    c.wait_serving(0);
    c.wait_serving(1);
    for i in 0..2 {
        assert_eq!(
            db(c.port(i)).unwrap(),
            json!({"current_round": 0, "db": {}}),
            "node {i} starts empty"
        );
    }

    let client = 7_000_001u64;
    let commands = ["li = []", "li += [1, 2]", "li += [3, 4]", "i = 0"];
    for (n, command) in commands.iter().enumerate() {
        let r = command_retrying(c.port(0), command, client, n as u64 + 1);
        assert_eq!(r.status, 200, "{command}: {}", r.raw);
        assert_eq!(r.body["status"], "success", "{command}: {}", r.raw);
        assert_eq!(r.body["round_id"], json!(n), "{command}: {}", r.raw);
    }

    let after_four = json!({"current_round": 4, "db": {"i": 0, "li": [1, 2, 3, 4]}});
    assert_eq!(db(c.port(0)).unwrap(), after_four, "node 0 after 4 rounds");
    wait_until(LONG, "node 1 /db after 4 rounds", || {
        db(c.port(1)).as_ref() == Some(&after_four)
    });

    // /fetch and /current on node 0 (the seed's shapes).
    let f = get(c.port(0), "/fetch?round_id=1").unwrap();
    assert_eq!(f.status, 200, "{}", f.raw);
    assert_eq!(f.body["success"], true, "{}", f.raw);
    assert_eq!(f.body["round_id"], 1, "{}", f.raw);
    assert_eq!(f.body["value"], "li += [1, 2]", "{}", f.raw);

    // Node 0 goes offline; node 2 comes up for the first time and catches
    // up from node 1 alone (no majority is reachable).
    c.kill(0);
    c.start(2);
    wait_until(LONG, "node 2 catches up from node 1", || {
        db(c.port(2)).as_ref() == Some(&after_four)
    });
    assert_eq!(db(c.port(1)).unwrap(), after_four);

    // `i = 42` to node 2 becomes round 4.
    let r = command_retrying(c.port(2), "i = 42", client, 5);
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["status"], "success", "{}", r.raw);
    assert_eq!(r.body["round_id"], 4, "{}", r.raw);

    // Node 0 comes back with stale state and converges.
    c.start(0);
    let final_db = json!({"current_round": 5, "db": {"i": 42, "li": [1, 2, 3, 4]}});
    for i in 0..3 {
        wait_until(LONG, &format!("node {i} /db after round 4"), || {
            db(c.port(i)).as_ref() == Some(&final_db)
        });
    }
    for i in 0..3 {
        let cur = get(c.port(i), "/current").unwrap();
        assert_eq!(cur.status, 200, "{}", cur.raw);
        assert_eq!(cur.body, json!({"round_id": 5}), "node {i} /current");
        let f = get(c.port(i), "/fetch?round_id=1").unwrap();
        assert_eq!(f.status, 200, "node {i}: {}", f.raw);
        assert_eq!(f.body["success"], true);
        assert_eq!(f.body["round_id"], 1);
        assert_eq!(f.body["value"], "li += [1, 2]");
        let f = get(c.port(i), "/fetch?round_id=4").unwrap();
        assert_eq!(f.body["value"], "i = 42", "node {i}: {}", f.raw);
    }
}

/// Retrying a command with the same client id and seq is exactly-once:
/// the retry is answered from the dedup table with the original round.
#[test]
fn retry_with_same_request_id_is_exactly_once() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let client = 7_000_002u64;
    let first = command_retrying(c.port(0), "n = 1", client, 1);
    assert_eq!(first.status, 200, "{}", first.raw);
    let second = command_retrying(c.port(0), "n += 1", client, 2);
    assert_eq!(second.status, 200, "{}", second.raw);
    // Retry seq 2 through another replica: a duplicate, not a second `+= 1`.
    let retry = command_retrying(c.port(1), "n += 1", client, 2);
    assert_eq!(retry.status, 200, "{}", retry.raw);
    assert_eq!(retry.body["duplicate"], true, "{}", retry.raw);
    assert_eq!(
        retry.body["round_id"], second.body["round_id"],
        "{}",
        retry.raw
    );
    let db = c.wait_converged(LONG);
    assert_eq!(db["db"]["n"], 2, "{db}");
}

/// A client that writes through one replica and then through another must
/// never see its second command rejected because the second replica had not
/// applied the first yet: a `+=` is checked against an up-to-date state. The
/// second replica is made to lag by restarting it just before.
#[test]
fn a_lagging_replica_checks_commands_against_an_up_to_date_state() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let client = 9_000_001u64;
    for round in 0..3u64 {
        c.kill(2);
        let r = command_retrying(c.port(0), &format!("m{round} = 0"), client, 2 * round + 1);
        assert_eq!(r.status, 200, "{}", r.raw);
        // Replica 2 comes back without m{round} and must catch up before it
        // can judge `m{round} += 1`.
        c.start(2);
        let r = command_retrying(c.port(2), &format!("m{round} += 1"), client, 2 * round + 2);
        assert_eq!(
            r.status, 200,
            "m{round} += 1 through the lagging replica: {}",
            r.raw
        );
    }
    // Replica 0 answers /db from its own state: it may apply the last
    // command a moment after replica 2 answered it.
    let expected = json!({"m0": 1, "m1": 1, "m2": 1});
    let db = wait_for(LONG, "replica 0 to apply every command", || {
        db(c.port(0)).filter(|d| d["db"] == expected)
    });
    assert_eq!(db["db"], expected);
}
