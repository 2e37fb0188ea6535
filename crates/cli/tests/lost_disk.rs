//! Issue 12 on real processes: a replica whose disk was replaced (or whose
//! log lost synced records at its tail) votes in nothing until it has
//! learned from a majority of the others what it may have forgotten.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// A GET whose body is not JSON (`/metrics`): the whole response as text.
fn raw_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn local_value(port: u16, key: &str) -> Option<Value> {
    match get(port, &format!("/v1/kv/{key}?consistency=local")) {
        Ok(r) if r.status == 200 => Some(r.body["value"].clone()),
        _ => None,
    }
}

/// Steps 1-2 of the trace: replica 2 down, five writes acknowledged
/// by 0 and 1, then 0 and 1 killed. Returns the cluster with nothing running.
fn acknowledge_with_two_then_kill(c: &mut Cluster) {
    c.start_all();
    c.wait_leader();
    c.kill(2);
    let leader = wait_for(LONG, "a leader among 0 and 1", || {
        c.leader().filter(|l| *l != 2)
    });
    for k in 1..=5 {
        let resp = wait_for(LONG, "an acknowledged write", || {
            put(c.port(leader), &format!("acked{k}"), &json!(k))
                .ok()
                .filter(|r| r.status == 200)
        });
        assert_eq!(resp.body["duplicate"], json!(false), "{}", resp.raw);
    }
    c.kill(0);
    c.kill(1);
}

/// Step 3 with replica 1 recovering: 1 and 2 alone must not serve writes
/// that could overwrite a lost one, and must say why; step 4: replica 0
/// returns, 1 recovers, and all three hold every acknowledged write.
fn recover_with_the_third(c: &mut Cluster) {
    c.start(2);
    // Nothing can be chosen without replica 1's vote, which it withholds.
    std::thread::sleep(Duration::from_secs(4));
    let status1 = status(c.port(1)).expect("replica 1 answers /status");
    assert!(
        !status1["recovering"].is_null(),
        "replica 1 says it is recovering: {status1}"
    );
    let ready = get(c.port(1), "/ready").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.raw);
    assert!(ready.raw.contains("recovering"), "{}", ready.raw);
    let metrics = raw_get(c.port(1), "/metrics");
    assert!(
        metrics.contains("paxlog_recovering{node=\"1\"} 1"),
        "metric: {metrics}"
    );
    let attempt = request(
        c.port(2),
        "PUT",
        "/v1/kv/acked1",
        &[],
        Some(json!("overwritten").to_string().as_bytes()),
    )
    .unwrap();
    assert_ne!(attempt.status, 200, "a write went through: {}", attempt.raw);

    c.start(0);
    wait_until(LONG, "replica 1 recovers", || {
        status(c.port(1)).is_some_and(|s| s["recovering"].is_null())
    });
    let leader = c.wait_leader();
    let resp = wait_for(LONG, "a write after recovery", || {
        put(c.port(leader), "after", &json!("ok"))
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(resp.body["duplicate"], json!(false));
    for i in 0..3 {
        wait_until(LONG, &format!("replica {i} holds every write"), || {
            (1..=5).all(|k| local_value(c.port(i), &format!("acked{k}")) == Some(json!(k)))
                && local_value(c.port(i), "after") == Some(json!("ok"))
        });
    }
    c.wait_converged(LONG);
    for i in 0..3 {
        let log = tail_of(&c.log_path(i), 200_000);
        assert!(!log.contains("panicked"), "replica {i} panicked:\n{log}");
    }
}

#[test]
fn a_replaced_disk_recovers_from_a_majority_before_it_votes() {
    let mut c = Cluster::new(3, &[]);
    acknowledge_with_two_then_kill(&mut c);
    std::fs::remove_dir_all(c.data_dir(1)).unwrap();
    c.spawn_existing(1);
    c.wait_serving(1);
    recover_with_the_third(&mut c);
}

#[test]
fn a_log_cut_at_its_tail_recovers_from_a_majority_before_it_votes() {
    let mut c = Cluster::new(3, &[]);
    acknowledge_with_two_then_kill(&mut c);
    // The last synced records of replica 1's log are damaged and cut off
    // as if torn: its accepts of the last writes are gone.
    let segments = wal_segments(&c.data_dir(1));
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    // Records follow a 24-byte segment header: length (4), CRC (4), payload.
    let mut offset = 24;
    let mut last_record = None;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        if offset + 8 + len > bytes.len() {
            break;
        }
        last_record = Some(offset);
        offset += 8 + len;
    }
    let at = last_record.expect("the log holds records") + 8;
    bytes[at] ^= 0xff;
    std::fs::write(last, &bytes).unwrap();
    c.start(1);
    recover_with_the_third(&mut c);
    let log = tail_of(&c.log_path(1), 200_000);
    assert!(
        log.contains("may have forgotten"),
        "replica 1 says why it recovers:\n{log}"
    );
}

#[test]
fn an_empty_folder_is_refused_without_an_explicit_cluster_state() {
    let c = Cluster::new(3, &[]);
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "node",
        "--id",
        "0",
        "--peers",
        &c.peers_arg(),
        "--http",
        &format!("127.0.0.1:{}", c.port(0)),
        "--data-dir",
    ])
    .arg(c.data_dir(0))
    .env_remove("PAXLOG_INITIAL_CLUSTER_STATE");
    let (status, _, stderr) = output_with_timeout(cmd);
    assert!(!status.success(), "started on an empty folder: {stderr}");
    assert!(
        stderr.contains("--initial-cluster-state"),
        "names the flag: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
