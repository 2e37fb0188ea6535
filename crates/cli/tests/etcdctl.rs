//! etcd's own command-line client, `etcdctl` (Debian's `etcd-client`
//! package, which `scripts/deps.sh` installs), against a 3-replica paxlog
//! cluster's etcd v3 gRPC API: put, get with prefixes and ranges, del,
//! txn, leases, member list, endpoint status and health, and a watch that
//! goes on across the loss of the replica it is connected to, with no
//! event missed or repeated.
//!
//! Skips (with a message) when `etcdctl` is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

fn etcdctl_installed() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP: etcdctl is not installed (scripts/deps.sh installs Debian's etcd-client)");
    }
    found
}

fn endpoints(c: &Cluster, order: &[usize]) -> String {
    order
        .iter()
        .map(|i| format!("127.0.0.1:{}", c.grpc_ports[*i]))
        .collect::<Vec<_>>()
        .join(",")
}

/// `etcdctl --endpoints=... ARGS` (stdin from `input`): (success, stdout,
/// stderr).
fn etcdctl_with(endpoints: &str, args: &[&str], input: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--command-timeout=10s", "--dial-timeout=3s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs etcdctl until it succeeds (a replica may be electing), returning
/// its output.
fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    wait_for(LONG, &format!("etcdctl {args:?}"), || {
        let (ok, out, err) = etcdctl_with(endpoints, args, None);
        if !ok {
            eprintln!("etcdctl {args:?}: {err}");
            let transient = ["Unavailable", "deadline", "leader", "connect", "EOF"];
            assert!(
                transient.iter().any(|t| err.contains(t)),
                "etcdctl {args:?} failed: {err}"
            );
        }
        ok.then_some(out)
    })
}

/// A running 3-replica cluster and its gRPC endpoints, if etcdctl is
/// installed.
fn three_replicas() -> Option<(Cluster, String)> {
    if !etcdctl_installed() {
        return None;
    }
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    c.wait_leader();
    let all = endpoints(&c, &[0, 1, 2]);
    Some((c, all))
}

/// A replica's `/metrics` page (text, not JSON).
fn metrics_text(port: u16) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn etcdctl_reads_writes_transacts_and_lists_members() {
    let Some((c, all)) = three_replicas() else {
        return;
    };

    assert_eq!(etcdctl(&all, &["put", "app/a", "1"]).trim(), "OK");
    assert_eq!(etcdctl(&all, &["put", "app/b", "two words"]).trim(), "OK");
    assert_eq!(etcdctl(&all, &["put", "other", "x"]).trim(), "OK");
    // A single key, a prefix, a range, keys only, a count.
    assert_eq!(etcdctl(&all, &["get", "app/a"]), "app/a\n1\n");
    assert_eq!(
        etcdctl(&all, &["get", "--prefix", "app/"]),
        "app/a\n1\napp/b\ntwo words\n"
    );
    assert_eq!(
        etcdctl(&all, &["get", "app/a", "app/z", "--keys-only"]),
        "app/a\n\napp/b\n\n"
    );
    let counted = json_of(&etcdctl(
        &all,
        &["get", "--prefix", "", "--limit", "1", "-w", "json"],
    ));
    assert_eq!(counted["count"], 3, "{counted}");
    assert_eq!(counted["kvs"].as_array().unwrap().len(), 1, "{counted}");
    let limited = json_of(&etcdctl(
        &all,
        &["get", "--prefix", "app/", "--limit", "1", "-w", "json"],
    ));
    assert_eq!(limited["more"], true, "{limited}");
    assert_eq!(limited["kvs"].as_array().unwrap().len(), 1);
    let descending = etcdctl(
        &all,
        &[
            "get",
            "--prefix",
            "app/",
            "--order",
            "DESCEND",
            "--keys-only",
        ],
    );
    assert_eq!(descending, "app/b\n\napp/a\n\n");

    // Revisions: a key's version counts its writes; a read at an older
    // revision sees the older value.
    let first = json_of(&etcdctl(&all, &["get", "app/a", "-w", "json"]));
    let first_mod = first["kvs"][0]["mod_revision"].as_i64().unwrap();
    assert_eq!(first["kvs"][0]["version"], 1);
    etcdctl(&all, &["put", "app/a", "1b"]);
    let second = json_of(&etcdctl(&all, &["get", "app/a", "-w", "json"]));
    assert_eq!(second["kvs"][0]["version"], 2);
    assert_eq!(
        second["kvs"][0]["create_revision"],
        first["kvs"][0]["create_revision"]
    );
    assert!(second["kvs"][0]["mod_revision"].as_i64().unwrap() > first_mod);
    let old = etcdctl(&all, &["get", "app/a", &format!("--rev={first_mod}")]);
    assert_eq!(old, "app/a\n1\n");
    // Compaction (on the replica asked): reads at the compacted revision
    // still work, older ones get etcd's error, and compacting there again
    // is refused.
    let one = endpoints(&c, &[0]);
    let second_mod = second["kvs"][0]["mod_revision"].as_i64().unwrap();
    let compacted = etcdctl(&one, &["compact", &second_mod.to_string()]);
    assert_eq!(compacted.trim(), format!("compacted revision {second_mod}"));
    let at = etcdctl(&one, &["get", "app/a", &format!("--rev={second_mod}")]);
    assert_eq!(at, "app/a\n1b\n");
    let (ok, _, err) = etcdctl_with(&one, &["get", "app/a", &format!("--rev={first_mod}")], None);
    assert!(!ok && err.contains("compacted"), "{err}");
    let (ok, _, err) = etcdctl_with(&one, &["compact", &second_mod.to_string()], None);
    assert!(!ok && err.contains("compacted"), "{err}");

    // Txn: compare on value, then the success branch runs.
    let (ok, out, err) = etcdctl_with(
        &all,
        &["txn"],
        Some("value(\"app/a\") = \"1b\"\n\nput app/t yes\nget app/b\n\nput app/t no\n\n"),
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("SUCCESS\n\nOK\n\napp/b\ntwo words\n"),
        "{out}"
    );
    // A failing compare (create revision 0: the key must not exist) runs
    // the failure branch.
    let (ok, out, err) = etcdctl_with(
        &all,
        &["txn"],
        Some("create(\"app/t\") = \"0\"\n\nput app/t again\n\ndel app/t\n\n"),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("FAILURE\n\n1\n"), "{out}");
    assert_eq!(etcdctl(&all, &["get", "app/t"]), "");

    // Delete by prefix, with the previous values.
    let deleted = etcdctl(&all, &["del", "--prefix", "app/", "--prev-kv"]);
    assert_eq!(deleted, "2\napp/a\n1b\napp/b\ntwo words\n");
    assert_eq!(etcdctl(&all, &["get", "--prefix", "app/"]), "");

    // The members, and each endpoint's status and health.
    let members = etcdctl(&all, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for i in 0..3 {
        assert!(
            members.contains(&format!("paxlog-{i}, http://127.0.0.1:{}", c.peer_ports[i])),
            "{members}"
        );
    }
    let status = json_of(&etcdctl(&all, &["endpoint", "status", "-w", "json"]));
    let status = status.as_array().unwrap();
    assert_eq!(status.len(), 3);
    let leaders: Vec<u64> = status
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{status:?}"
    );
    // (etcdctl prints the health report on stderr.)
    let (ok, out, err) = etcdctl_with(&all, &["endpoint", "health"], None);
    let health = out + &err;
    assert!(ok, "{health}");
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // Each replica's /metrics times the gRPC calls by method.
    let timed = (0..3).any(|i| {
        metrics_text(c.port(i)).contains("endpoint=\"/etcdserverpb.KV/Put\",method=\"GRPC\"")
    });
    assert!(timed, "no replica timed a Put");
    // Bad requests get etcd's errors: a future revision, an empty key.
    let (ok, _, err) = etcdctl_with(&all, &["get", "x", "--rev=999999999"], None);
    assert!(!ok && err.contains("future revision"), "{err}");
    let (ok, _, err) = etcdctl_with(&all, &["put", "", "v"], None);
    assert!(!ok && err.contains("key is not provided"), "{err}");
}

#[test]
fn an_etcdctl_lease_lives_through_a_leader_change_then_expires_everywhere_at_one_revision() {
    let Some((mut c, all)) = three_replicas() else {
        return;
    };
    let granted = etcdctl(&all, &["lease", "grant", "2"]);
    // "lease 1 granted with TTL(2s)"
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    assert!(granted.contains("TTL(2s)"), "{granted}");
    etcdctl(&all, &["put", "--lease", &lease, "l/a", "1"]);
    let put = json_of(&etcdctl(&all, &["get", "l/a", "-w", "json"]));
    let created = put["kvs"][0]["mod_revision"].as_i64().unwrap();
    etcdctl(&all, &["put", "l/plain", "1"]);
    // Keep-alives through every endpoint (followers forward them to the
    // leader) for longer than the TTL: the key stays.
    keep_alive_through(&c, &lease, &[0, 1, 2], 3);
    // The leader goes; keep-alives go on through the others (they wait out
    // the election): the new leader gives the lease a whole TTL, and the
    // key stays.
    let leader = c.wait_leader();
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    keep_alive_through(&c, &lease, &others, 4);
    let survivors = endpoints(&c, &others);
    let ttl = etcdctl(&survivors, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([l/a])"), "{ttl}");
    assert_eq!(etcdctl(&survivors, &["get", "l/a"]), "l/a\n1\n");
    c.start(leader);
    // Then they stop: the lease expires, its key goes on every replica at
    // the same revision, and the other key stays.
    let gone = Instant::now();
    wait_until(LONG, "the lease's key to go", || {
        etcdctl(&all, &["get", "l/a"]).is_empty()
    });
    assert!(gone.elapsed() >= Duration::from_millis(1500));
    // Each replica's history: the key's put, then its delete, at one
    // revision on all three.
    let mut deleted_at = Vec::new();
    for i in 0..3 {
        let one = endpoints(&c, &[i]);
        let events = watch_events(&one, &["l/a", &format!("--rev={created}")], 2);
        assert_eq!(events[0]["kv"]["mod_revision"], created, "{events:?}");
        assert_eq!(events[1]["type"], 1, "a delete: {events:?}");
        deleted_at.push(events[1]["kv"]["mod_revision"].as_i64().unwrap());
    }
    assert!(
        deleted_at.iter().all(|r| *r == deleted_at[0]),
        "{deleted_at:?}"
    );
    let ttl = etcdctl(&all, &["lease", "timetolive", &lease]);
    assert!(ttl.contains("already expired"), "{ttl}");
    assert_eq!(etcdctl(&all, &["get", "l/plain"]), "l/plain\n1\n");
}

/// `etcdctl lease keep-alive --once` through each of `replicas` in turn,
/// for `seconds`.
fn keep_alive_through(c: &Cluster, lease: &str, replicas: &[usize], seconds: u64) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        for i in replicas {
            let one = endpoints(c, &[*i]);
            let out = etcdctl(&one, &["lease", "keep-alive", "--once", lease]);
            assert!(out.contains("keepalived with TTL"), "{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first `n` events `etcdctl watch -w json ARGS` prints (it runs
/// until killed).
fn watch_events(endpoints: &str, args: &[&str], n: usize) -> Vec<Value> {
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["watch", "-w", "json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut events = Vec::new();
    let deadline = Instant::now() + LONG;
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        if let Ok(response) = serde_json::from_str::<Value>(&line) {
            events.extend(response["Events"].as_array().cloned().unwrap_or_default());
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(events.len() >= n, "{events:?}");
    events
}

/// One watch line from `etcdctl watch` output, as (key, value) pairs.
fn read_events(
    lines: &mpsc::Receiver<String>,
    n: usize,
    timeout: Duration,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        pending.push(line);
        // etcdctl prints PUT, the key, the value: one line each.
        if pending.len() == 3 {
            assert_eq!(pending[0], "PUT", "{pending:?}");
            events.push((pending[1].clone(), pending[2].clone()));
            pending.clear();
        }
    }
    events
}

#[test]
fn an_etcdctl_watch_goes_on_across_the_loss_of_its_replica_without_gaps_or_repeats() {
    if !etcdctl_installed() {
        return;
    }
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // The watch dials the leader first (etcdctl pins its first endpoint),
    // so losing the leader also cuts the watch's connection.
    let watch_endpoints = endpoints(&c, &[leader, others[0], others[1]]);
    let writers = endpoints(&c, &others);
    etcdctl(&writers, &["put", "w/0", "0"]);
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={watch_endpoints}"))
        .args(["watch", "--prefix", "w/"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until the watch is live: a write shows up.
    std::thread::sleep(Duration::from_millis(500));
    etcdctl(&writers, &["put", "w/1", "1"]);
    let first = read_events(&lines, 1, LONG);
    assert_eq!(first, vec![("w/1".to_string(), "1".to_string())]);
    for i in 2..10 {
        etcdctl(&writers, &["put", &format!("w/{i}"), &i.to_string()]);
    }
    c.kill(leader);
    for i in 10..20 {
        etcdctl(&writers, &["put", &format!("w/{i}"), &i.to_string()]);
    }
    let rest = read_events(&lines, 18, LONG);
    let _ = watch.kill();
    let _ = watch.wait();
    let expected: Vec<(String, String)> =
        (2..20).map(|i| (format!("w/{i}"), i.to_string())).collect();
    assert_eq!(rest, expected, "every event once, in order");
    // Nothing more (no repeat) arrived.
    assert!(lines.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn etcdctl_over_tls_with_tokens_as_passwords() {
    if !etcdctl_installed() {
        return;
    }
    const RW: &str = "rw-token-for-etcd";
    const RO: &str = "ro-token-for-etcd";
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().join("certs");
    let (status, _, err) = run_paxlog(&["certs", "--out", dir.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    // Every replica may show the same certificate: it names the peer name,
    // localhost and 127.0.0.1.
    let file = |name: &str| dir.join(name).display().to_string();
    let (cert, key, ca) = (file("node-0.pem"), file("node-0-key.pem"), file("ca.pem"));
    let mut c = Cluster::new(
        3,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--write-token",
            RW,
            "--read-token",
            RO,
        ],
    );
    // (The harness's readiness probe speaks plain HTTP: etcdctl waits.)
    for i in 0..3 {
        c.spawn(i);
    }
    let all = (0..3)
        .map(|i| format!("https://127.0.0.1:{}", c.grpc_ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let cacert = format!("--cacert={ca}");
    let writer = format!("--user=root:{RW}");
    let reader = format!("--user=root:{RO}");
    let put = etcdctl(&all, &[&cacert, &writer, "put", "secure", "yes"]);
    assert_eq!(put.trim(), "OK");
    let got = etcdctl(&all, &[&cacert, &reader, "get", "secure"]);
    assert_eq!(got, "secure\nyes\n");
    // A read-only token cannot write, no token cannot read, a wrong one
    // cannot log in.
    let (ok, _, err) = etcdctl_with(&all, &[&cacert, &reader, "put", "secure", "no"], None);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = etcdctl_with(&all, &[&cacert, "get", "secure"], None);
    assert!(!ok && err.contains("invalid auth token"), "{err}");
    let (ok, _, err) = etcdctl_with(&all, &[&cacert, "--user=root:wrong", "get", "secure"], None);
    assert!(!ok && err.contains("authentication failed"), "{err}");
    // Without the CA, the server is not trusted.
    let (ok, _, _) = etcdctl_with(&all, &["--dial-timeout=1s", &writer, "get", "secure"], None);
    assert!(!ok);
    assert_eq!(
        etcdctl(&all, &[&cacert, &reader, "get", "secure"]),
        "secure\nyes\n"
    );
    // Keep-alives through every endpoint: followers pass them to the
    // leader over TLS, with the write token.
    let granted = etcdctl(&all, &[&cacert, &writer, "lease", "grant", "5"]);
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    for i in 0..3 {
        let one = format!("https://127.0.0.1:{}", c.grpc_ports[i]);
        let out = etcdctl(
            &one,
            &[&cacert, &writer, "lease", "keep-alive", "--once", &lease],
        );
        assert!(out.contains("keepalived with TTL(5)"), "replica {i}: {out}");
    }
}

#[test]
fn etcdctl_adds_promotes_and_removes_a_member() {
    let Some((mut c, all)) = three_replicas() else {
        return;
    };
    etcdctl(&all, &["put", "before", "1"]);
    // etcd's way: announce the member, then start it. paxlog adds it as a
    // learner; the replica joins at that address and gets the same id.
    let slot = c.add_slot();
    let peer_url = format!("http://localhost:{}", c.peer_ports[slot]);
    let added = etcdctl(
        &all,
        &[
            "member",
            "add",
            "paxlog-3",
            &format!("--peer-urls={peer_url}"),
        ],
    );
    assert!(
        added.contains("Member") && added.contains("added"),
        "{added}"
    );
    let joiner = c.joiner_command(slot, 0, &[]);
    c.start_with(slot, joiner);
    let listed = etcdctl(&all, &["member", "list"]);
    assert!(
        listed.contains(&format!("4, started, paxlog-3, {peer_url}")) && listed.ends_with("true\n"),
        "a learner: {listed}"
    );
    // Promoted once it has caught up (refused until then).
    wait_until(LONG, "the promotion", || {
        let (ok, _, err) = etcdctl_with(&all, &["member", "promote", "4"], None);
        if !ok {
            eprintln!("promote: {err}");
        }
        ok
    });
    let listed = etcdctl(&all, &["member", "list"]);
    assert_eq!(
        listed.matches(", false").count(),
        4,
        "four voters: {listed}"
    );
    let new_member = endpoints(&c, &[slot]);
    assert_eq!(etcdctl(&new_member, &["get", "before"]), "before\n1\n");
    // And removed again.
    etcdctl(&all, &["member", "remove", "4"]);
    let listed = etcdctl(&all, &["member", "list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let (ok, _, err) = etcdctl_with(&all, &["member", "remove", "4"], None);
    assert!(!ok, "removing it twice: {err}");
}
