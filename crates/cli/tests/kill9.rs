//! Durability under SIGKILL, torn WAL tails and WAL corruption.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::fs::OpenOptions;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn inspect(dir: &std::path::Path) -> (std::process::ExitStatus, String, String) {
    run_paxlog(&["inspect", "--json", dir.to_str().unwrap()])
}

#[test]
fn sigkill_random_nodes_under_load_loses_nothing() {
    let mut c = Cluster::new(3, &["--snapshot-every", "50"]);
    c.start_all();
    c.wait_leader();
    let ports: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    let load = Load::start(ports, 3, "k9");
    load.wait_progress(20, LONG, "first writes");

    let mut rng = Rng::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.range(100, 1200)));
        // Every other time the leader, else a random replica.
        let victim = if round % 2 == 0 {
            c.leader().unwrap_or(0)
        } else {
            rng.range(0, 3) as usize
        };
        c.kill(victim);
        std::thread::sleep(Duration::from_millis(rng.range(0, 600)));
        c.start(victim);
        load.wait_progress(
            15,
            LONG,
            &format!("writes after SIGKILL #{round} of node {victim}"),
        );
    }
    // All three at once: every acknowledged write was durable on a majority.
    for i in 0..3 {
        c.kill(i);
    }
    let acked_before_total_crash = load.acked.lock().unwrap().clone();
    c.start_all();
    load.wait_progress(15, LONG, "writes after SIGKILL of all replicas");
    let (acked, errors) = load.finish();
    assert!(errors.is_empty(), "unexpected non-503 errors: {errors:?}");
    assert!(acked_before_total_crash
        .iter()
        .all(|(k, _)| acked.contains_key(k)));

    let converged = c.wait_converged(LONG);
    for i in 0..3 {
        assert_all_acked_present(
            &acked,
            &common::db(c.port(i)).unwrap(),
            &format!("node {i}"),
        );
    }
    let round = converged["current_round"].as_u64().unwrap();
    assert!(round >= 100, "snapshots were taken: round {round}");
    for i in 0..3 {
        let s = status(c.port(i)).unwrap();
        assert!(
            s["last_snapshot_round"].as_u64().unwrap() > 0,
            "node {i} took a snapshot: {s}"
        );
    }

    // Clean stops; every folder inspects healthy.
    for i in 0..3 {
        let exit = c.stop(i).expect("stops on SIGTERM");
        assert!(exit.success(), "node {i} clean stop: {exit}");
    }
    for i in 0..3 {
        let (status, stdout, stderr) = inspect(&c.data_dir(i));
        assert!(
            status.success(),
            "inspect node {i}: {status}\n{stdout}\n{stderr}"
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(report["first_corruption"].is_null(), "{report}");
    }
    // And they all restart into the same state.
    c.start_all();
    let again = c.wait_converged(LONG);
    assert_eq!(again, converged);
    eprintln!(
        "kill9: {} acknowledged writes, converged at round {round}",
        acked.len()
    );
}

/// Writes `n` keys through node 0 with request ids from `client`.
fn write_keys(c: &Cluster, client: u64, from: u64, n: u64) {
    for k in from..from + n {
        let r = command_retrying(c.port(0), &format!("w{k} = {k}"), client, k + 1);
        assert_eq!(r.status, 200, "{}", r.raw);
    }
}

#[test]
fn torn_wal_tail_is_truncated_and_node_catches_up() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    write_keys(&c, 11_000_001, 0, 20);
    c.wait_converged(LONG);
    let exit = c.stop(2).expect("stops on SIGTERM");
    assert!(exit.success());

    let segments = wal_segments(&c.data_dir(2));
    let newest = segments.last().expect("node 2 has a WAL segment").clone();
    let len = std::fs::metadata(&newest).unwrap().len();
    assert!(
        len > 200,
        "{} holds records ({len} bytes)",
        newest.display()
    );
    let f = OpenOptions::new().write(true).open(&newest).unwrap();
    f.set_len(len - 3).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // inspect sees a torn tail (not corruption) and exits 0.
    let (status, stdout, stderr) = inspect(&c.data_dir(2));
    assert!(status.success(), "inspect: {status}\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        !report["torn_tail"].is_null(),
        "torn tail reported: {report}"
    );
    assert!(report["first_corruption"].is_null(), "{report}");

    // More rounds while node 2 is away, then it restarts and catches up.
    write_keys(&c, 11_000_001, 20, 5);
    c.start(2);
    let db = c.wait_converged(LONG);
    // (A retried write may take an extra slot on a slow machine.)
    assert!(db["current_round"].as_u64().unwrap() >= 25, "{db}");
    for k in 0..25u64 {
        assert_eq!(db["db"][format!("w{k}")], json!(k), "{db}");
    }
    let log = tail_of(&c.log_path(2), 20_000);
    assert!(log.contains("torn"), "node 2 logs the repair:\n{log}");
    // The repaired folder inspects clean.
    c.stop(2);
    let (status, stdout, _) = inspect(&c.data_dir(2));
    assert!(status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["torn_tail"].is_null(), "{report}");
}

#[test]
fn corrupt_wal_byte_refuses_start_and_inspect_reports_it() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    write_keys(&c, 12_000_001, 0, 30);
    c.wait_converged(LONG);
    let exit = c.stop(1).expect("stops on SIGTERM");
    assert!(exit.success());

    let segments = wal_segments(&c.data_dir(1));
    let victim = segments.last().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    assert!(bytes.len() > 500, "{} bytes", bytes.len());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&victim, &bytes).unwrap();
    let file_name = victim.file_name().unwrap().to_string_lossy().into_owned();

    // The node refuses to start, naming the file.
    let (status, _, stderr) = output_with_timeout(c.node_command(1));
    assert!(
        !status.success(),
        "node started on a corrupt WAL:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&file_name),
        "error names {file_name}:\n{stderr}"
    );
    // The corrupt file was not "repaired" away.
    assert_eq!(std::fs::read(&victim).unwrap(), bytes);

    let (status, stdout, stderr) = inspect(&c.data_dir(1));
    assert!(
        !status.success(),
        "inspect exits non-zero: {stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problem = &report["first_corruption"];
    assert!(!problem.is_null(), "corruption reported: {report}");
    assert!(
        problem["file"].as_str().unwrap().ends_with(&file_name),
        "{problem}"
    );
    // The text report says so too.
    let (_, text, _) = run_paxlog(&["inspect", c.data_dir(1).to_str().unwrap()]);
    assert!(text.contains(&file_name), "{text}");

    // The other two keep serving.
    let r = command_retrying(c.port(0), "after = 1", 12_000_001, 100);
    assert_eq!(r.status, 200, "{}", r.raw);
}

/// A replica that was never started catches up after the others compacted
/// their logs into snapshots (so it needs a snapshot transfer), and compacted
/// rounds answer 410 on /fetch.
#[test]
fn fresh_node_catches_up_after_compaction() {
    let mut c = Cluster::new(3, &["--snapshot-every", "20"]);
    c.spawn(0);
    c.spawn(1);
    c.wait_serving(0);
    c.wait_serving(1);
    write_keys(&c, 13_000_001, 0, 70);
    wait_until(LONG, "node 0 compacted its log", || {
        status(c.port(0)).is_some_and(|s| s["log_start"].as_u64().unwrap_or(0) > 0)
    });
    let r = get(c.port(0), "/fetch?round_id=0").unwrap();
    assert_eq!(r.status, 410, "{}", r.raw);
    assert_eq!(r.body["success"], false, "{}", r.raw);
    assert!(r.body["error"].is_string(), "{}", r.raw);

    c.start(2);
    let db = c.wait_converged(LONG);
    assert!(db["current_round"].as_u64().unwrap() >= 70, "{db}");
    for k in 0..70u64 {
        assert_eq!(db["db"][format!("w{k}")], json!(k), "{db}");
    }
    // Node 2 can take part in a quorum: without node 0, writes still commit.
    c.kill(0);
    let r = command_retrying(c.port(2), "after = 1", 13_000_001, 1000);
    assert_eq!(r.status, 200, "{}", r.raw);
    let round = r.body["round_id"].as_u64().unwrap();
    assert!(round >= 70, "{}", r.raw);
    // And it restarts from its own folder (snapshot + WAL) with that state.
    wait_until(LONG, "node 2 applied `after = 1`", || {
        common::db(c.port(2)).is_some_and(|d| d["current_round"] == round + 1)
    });
    let before = common::db(c.port(2)).unwrap();
    c.stop(2);
    c.spawn(2);
    c.wait_serving(2);
    wait_until(LONG, "node 2 is back at the same state", || {
        common::db(c.port(2)).as_ref() == Some(&before)
    });
}

/// The exactly-once table survives snapshots and restarts: a retry of an
/// old request after every replica restarted from a snapshot is still
/// answered as a duplicate, not applied twice.
#[test]
fn dedup_survives_snapshot_and_restart() {
    let mut c = Cluster::new(3, &["--snapshot-every", "5"]);
    c.start_all();
    let client = 14_000_001u64;
    let r = command_retrying(c.port(0), "n = 0", client, 1);
    assert_eq!(r.status, 200, "{}", r.raw);
    let first = command_retrying(c.port(0), "n += 1", client, 2);
    assert_eq!(first.status, 200, "{}", first.raw);
    write_keys(&c, 14_000_002, 0, 12);
    c.wait_converged(LONG);
    for i in 0..3 {
        wait_until(LONG, &format!("node {i} took a snapshot"), || {
            status(c.port(i)).is_some_and(|s| s["last_snapshot_round"].as_u64().unwrap_or(0) >= 10)
        });
    }
    for i in 0..3 {
        c.kill(i);
    }
    c.start_all();
    for port in [c.port(1), c.port(2)] {
        let retry = command_retrying(port, "n += 1", client, 2);
        assert_eq!(retry.status, 200, "{}", retry.raw);
        assert_eq!(retry.body["duplicate"], true, "{}", retry.raw);
        assert_eq!(
            retry.body["round_id"], first.body["round_id"],
            "{}",
            retry.raw
        );
    }
    let db = c.wait_converged(LONG);
    assert_eq!(db["db"]["n"], 1, "{db}");
    // (A retry may take a log slot of its own; it is deduplicated at apply.)
    assert!(db["current_round"].as_u64().unwrap() >= 14, "{db}");
}
