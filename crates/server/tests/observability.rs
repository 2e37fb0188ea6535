//! `/metrics`, `/health`, `/ready`, `/cluster`, `/log` and the dashboard
//! assets, against replicas run in-process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paxlog_server::NodeConfig;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<Reply, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    // Bodies here are small; undo chunked encoding if used.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    Ok(Reply {
        status,
        head: head.to_string(),
        body,
    })
}

fn get(port: u16, path: &str) -> Reply {
    request(port, "GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `nodes` (ids) of an `n`-replica cluster in one runtime; returns
/// their HTTP ports and a stopper.
struct Nodes {
    http: Vec<u16>,
    stop: Option<tokio::sync::broadcast::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start(n: usize, run: &[u32]) -> Nodes {
    let ports = free_ports(2 * n);
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let peers: Vec<SocketAddr> = ports[..n].iter().map(|p| addr(*p)).collect();
    let http: Vec<SocketAddr> = ports[n..].iter().map(|p| addr(*p)).collect();
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut cfgs = Vec::new();
    for &id in run {
        let mut cfg = NodeConfig::new(
            id,
            peers.clone(),
            http[id as usize],
            dir.path().join(format!("node-{id}")),
        );
        cfg.http_peers = http.clone();
        cfg.initial_cluster_state = Some(paxlog_server::InitialClusterState::New);
        cfgs.push((cfg, stop_tx.subscribe()));
    }
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for (cfg, mut stop) in cfgs {
                set.spawn(paxlog_server::run_node(cfg, async move {
                    let _ = stop.recv().await;
                }));
            }
            while let Some(result) = set.join_next().await {
                result.unwrap().unwrap();
            }
        });
    });
    let ports: Vec<u16> = http.iter().map(|a| a.port()).collect();
    for &id in run {
        let port = ports[id as usize];
        wait_for("HTTP up", || request(port, "GET", "/health", None).ok());
    }
    Nodes {
        http: ports,
        stop: Some(stop_tx),
        thread: Some(thread),
        _dir: dir,
    }
}

#[test]
fn metrics_health_ready_and_log_on_a_single_replica() {
    let nodes = start(1, &[0]);
    let port = nodes.http[0];

    let health = get(port, "/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json(), serde_json::json!({ "status": "ok" }));

    // A one-replica cluster elects itself; then it is ready.
    wait_for("ready", || {
        (get(port, "/ready").status == 200).then_some(())
    });
    let ready = get(port, "/ready").json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["role"], "leader");

    for i in 0..3 {
        let r = request(
            port,
            "POST",
            "/command",
            Some(&format!(r#"{{"command": "x{i} = {i}"}}"#)),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = request(port, "PUT", "/v1/kv/some/key", Some("42")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let metrics = get(port, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.head.contains("openmetrics-text"),
        "content type: {}",
        metrics.head
    );
    let text = &metrics.body;
    for name in [
        "paxlog_proposals_total{node=\"0\"} 4",
        "paxlog_commits_total",
        "paxlog_applied_round",
        "paxlog_chosen_round",
        "paxlog_leader_changes_total",
        "paxlog_is_leader{node=\"0\"} 1",
        "paxlog_promised_ballot",
        "paxlog_wal_fsync_seconds_bucket",
        "paxlog_wal_batch_records_bucket",
        "paxlog_http_request_duration_seconds_bucket{",
        "endpoint=\"/command\",method=\"POST\",status=\"2xx\"",
        "endpoint=\"/v1/kv/{*key}\",method=\"PUT\"",
        "paxlog_snapshot_size_bytes",
        "paxlog_snapshot_duration_seconds",
        "paxlog_snapshot_installs_total",
        "# EOF",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    // The raw key never becomes a label value.
    assert!(!text.contains("some/key"));

    // Recent log: the four writes, as text.
    let log = get(port, "/log?limit=10");
    assert_eq!(log.status, 200, "{}", log.body);
    let log = log.json();
    let commands: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["command"].as_str())
        .collect();
    assert_eq!(commands.len(), 4, "{log}");
    assert!(commands[0].contains("x0"), "{log}");
    let from = log["entries"][1]["round"].as_u64().unwrap();
    let page = get(port, &format!("/log?from={from}&limit=1")).json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["round"].as_u64(), Some(from));
    assert_eq!(get(port, "/log?limit=201").status, 400);
    assert_eq!(get(port, "/log?limit=0").status, 400);

    // /status carries the dashboard's counters; GETs allow any origin.
    let status = get(port, "/status");
    assert!(status
        .head
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: *"));
    let status = status.json();
    assert_eq!(status["stats"]["writes"].as_u64(), Some(4));
    let cluster = get(port, "/cluster").json();
    assert_eq!(cluster["id"], 0);
    assert_eq!(cluster["http_peers"].as_array().unwrap().len(), 1);

    // The dashboard and its assets.
    let page = get(port, "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/dashboard.js"));
    assert!(!page.body.contains("https://"), "no external URLs");
    assert_eq!(get(port, "/assets/dashboard.js").status, 200);
    assert_eq!(get(port, "/assets/dashboard.css").status, 200);
}

#[test]
fn ready_fails_without_a_quorum_but_health_passes() {
    // Replica 0 of 3, alone: alive, but no leader can be elected.
    let nodes = start(3, &[0]);
    let port = nodes.http[0];
    assert_eq!(get(port, "/health").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let ready = get(port, "/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().unwrap().contains("no leader"),
        "{body}"
    );
    let metrics = get(port, "/metrics").body;
    assert!(
        metrics.contains("paxlog_peer_reachable{peer=\"1\",node=\"0\"} 0")
            || metrics.contains("paxlog_peer_reachable{node=\"0\",peer=\"1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("paxlog_is_leader{node=\"0\"} 0"),
        "{metrics}"
    );
}
