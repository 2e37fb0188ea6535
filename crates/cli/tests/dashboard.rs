//! The live dashboard in a real browser: a 3-replica `paxlog cluster`, a few
//! writes, then headless Chromium renders `/` (DOM checked for the three
//! replicas and one leader) and saves a screenshot (into the test's temp
//! folder; into docs/dashboard.png with PAXLOG_UPDATE_SCREENSHOT=1).
//! Without Chromium installed the test prints a skip message and passes.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u16 = 3;

/// Kills the cluster process (ours, by handle) when the test ends.
struct ClusterProcess(Child);

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A base port with base..base+3 (HTTP) and base+1000.. (peers) all free.
fn free_base_port() -> u16 {
    let mut rng = Rng::new();
    for _ in 0..200 {
        let base = rng.range(20_000, 40_000) as u16;
        let all_free = (0..NODES).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + 1000 + i)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

/// Runs Chromium headless with `args` on `url`; returns its stdout.
fn chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let mut stdout = stdout;
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut out = String::new();
        let mut stderr = stderr;
        let _ = std::io::Read::read_to_string(&mut stderr, &mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(status.success(), "chromium failed ({status}): {err}");
    out
}

fn leader_of(port: u16) -> Option<u64> {
    let r = get(port, "/status").ok()?;
    (r.status == 200)
        .then(|| r.body["leader"].as_u64())
        .flatten()
}

#[test]
fn dashboard_shows_three_replicas_and_a_leader() {
    let started = Instant::now();
    let Some(chromium_bin) = find_chromium() else {
        // CI installs it (scripts/deps.sh): there a missing browser is a
        // failure, not a silent skip.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed, and CI=true: scripts/deps.sh should have installed it"
        );
        println!("SKIP dashboard test: chromium not installed (apt-get install -y chromium)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let log = std::fs::File::create(tmp.path().join("cluster.log")).unwrap();
    let child = Command::new(BIN)
        .args(["cluster", "--nodes", "3", "--base-port", &base.to_string()])
        .args(["--grpc-base-port", "0"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _cluster = ClusterProcess(child);
    let ports: Vec<u16> = (0..NODES).map(|i| base + i).collect();

    // Every replica agrees on a leader.
    wait_until(Duration::from_secs(60), "a leader known everywhere", || {
        let leaders: Vec<Option<u64>> = ports.iter().map(|p| leader_of(*p)).collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });
    let commands = [
        "greeting = 'hello'",
        "li = []",
        "li += [1, 2]",
        "count = 40",
        "count += 2",
    ];
    for (i, command) in commands.iter().enumerate() {
        let r = command_retrying(ports[i % ports.len()], command, 7_000_001, i as u64 + 1);
        assert_eq!(r.status, 200, "{command}: {}", r.raw);
    }
    // Replicas report each other reachable and have applied the writes.
    wait_until(Duration::from_secs(30), "all replicas applied", || {
        ports.iter().all(|p| {
            get(*p, "/current")
                .map(|r| r.body["round_id"].as_u64() >= Some(commands.len() as u64))
                .unwrap_or(false)
        })
    });
    let status: Value = get(ports[0], "/status").unwrap().body;
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["reachable"] == true),
        "{status}"
    );

    // Keep some writes flowing while the browser watches (for the charts).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let port = ports[1];
        std::thread::spawn(move || {
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!({ "command": format!("count += {}", seq % 7) });
                let _ = request(
                    port,
                    "POST",
                    "/command",
                    &id_headers(7_000_002, seq),
                    Some(body.to_string().as_bytes()),
                );
                seq += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };

    let url = format!("http://127.0.0.1:{}/", ports[0]);
    let dom = chromium(
        &chromium_bin,
        &tmp.path().join("profile-dom"),
        &["--dump-dom"],
        &url,
    );
    let replicas = dom.matches("class=\"replica\"").count();
    assert_eq!(replicas, 3, "expected 3 replica cards in:\n{dom}");
    assert_eq!(
        dom.matches("data-role=\"leader\"").count(),
        1,
        "expected one leader card in:\n{dom}"
    );
    assert_eq!(
        dom.matches("data-role=\"follower\"").count(),
        2,
        "expected two followers in:\n{dom}"
    );
    assert!(dom.contains("data-replica-count=\"3\""), "{dom}");
    assert!(!dom.contains("data-leader=\"\""), "no leader shown:\n{dom}");
    assert!(dom.contains("data-round="), "no log slots:\n{dom}");
    assert!(dom.contains("<polyline"), "no chart drawn:\n{dom}");

    let screenshot = if std::env::var_os("PAXLOG_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    };
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &chromium_bin,
        &tmp.path().join("profile-shot"),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,900",
        ],
        &url,
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot missing or tiny ({size} bytes)");
    println!(
        "dashboard test passed in {:.1} s; screenshot at {}",
        started.elapsed().as_secs_f64(),
        screenshot.display()
    );
}
