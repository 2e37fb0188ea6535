//! Watches on real processes: `paxlog watch` follows a prefix from round 0
//! while writes go on; the replica it watches is killed, and it resumes at
//! another replica from the round after the last it printed. Every
//! acknowledged write under the prefix is reported exactly once, in round
//! order, with nothing from outside the prefix.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Writes `w/{i}` = i (and an unwatched key beside each) through any
/// replica that takes it; returns the round each watched write got.
fn write_until_acked(c: &Cluster, skip: Option<usize>, i: u64) -> u64 {
    wait_for(LONG, &format!("write {i}"), || {
        (0..c.size()).filter(|n| Some(*n) != skip).find_map(|n| {
            // The same request id on every attempt: a retry runs once.
            let r = request(
                c.port(n),
                "PUT",
                &format!("/v1/kv/w/{i}"),
                &id_headers(77, i + 1),
                Some(json!(i).to_string().as_bytes()),
            )
            .ok()?;
            let _ = put(c.port(n), &format!("other/{i}"), &json!(i));
            (r.status == 200).then(|| r.body["round_id"].as_u64().unwrap())
        })
    })
}

#[test]
fn a_watch_survives_the_loss_of_its_replica_without_gaps_or_repeats() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    c.wait_leader();
    let mut rounds = Vec::new();
    for i in 0..20 {
        rounds.push(write_until_acked(&c, None, i));
    }
    // The watch follows replica `watched` first, then the others.
    let watched = (c.wait_leader() + 1) % 3;
    let endpoints: Vec<String> = [watched, (watched + 1) % 3, (watched + 2) % 3]
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", c.port(*n)))
        .collect();
    let mut child = Command::new(BIN)
        .args([
            "watch",
            "w/",
            "--from-round",
            "0",
            "--count",
            "40",
            "--endpoints",
        ])
        .arg(endpoints.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen: Vec<Value> = Vec::new();
    for _ in 0..20 {
        seen.push(serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap());
    }
    c.kill(watched);
    for i in 20..40 {
        rounds.push(write_until_acked(&c, Some(watched), i));
    }
    for _ in 20..40 {
        seen.push(serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap());
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let seen_rounds: Vec<u64> = seen.iter().map(|e| e["round"].as_u64().unwrap()).collect();
    assert_eq!(
        seen_rounds, rounds,
        "every acknowledged write, once, in order"
    );
    for (i, event) in seen.iter().enumerate() {
        assert_eq!(event["key"], json!(format!("w/{i}")));
        assert_eq!(event["value"], json!(i));
    }
}

#[test]
fn bad_watch_queries_are_refused_with_400() {
    let mut c = Cluster::new(1, &[]);
    c.start_all();
    c.wait_leader();
    let r = get(c.port(0), "/v1/watch?from_round=abc").unwrap();
    assert_eq!(r.status, 400, "{}", r.raw);
    let r = get(c.port(0), "/v1/watch?nonsense=1").unwrap();
    assert_eq!(r.status, 400, "{}", r.raw);
}
