//! End-to-end test harness: runs `paxlog node` processes on free local
//! ports with a temporary root folder, and talks to them over a tiny
//! blocking HTTP/1.1 client.
#![allow(clippy::unwrap_used, dead_code)]

use serde_json::Value;
use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_paxlog");

// ----- small utilities ---------------------------------------------------------

/// A tiny xorshift generator seeded from the OS's random hasher keys.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        Rng(h.finish() | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Free local ports (all held at once while choosing, so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Polls `cond` every 100 ms until it holds; panics naming `what` after
/// `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Like [`wait_until`] but returns the last value `f` produced when it
/// became `Some`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail_of(path: &Path, max_bytes: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max_bytes);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

// ----- HTTP client -------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub raw: String,
}

/// One HTTP/1.1 request with `Connection: close`. Errors are connection
/// failures or an unparseable response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut write_error = None;
    if let Some(b) = body {
        // The server may answer (e.g. 413) and close before reading it all.
        if let Err(e) = stream.write_all(b) {
            write_error = Some(e.to_string());
        }
    }
    let mut buf = Vec::new();
    if let Err(e) = stream.read_to_end(&mut buf) {
        if buf.is_empty() {
            return Err(format!(
                "read {addr}: {e} (write error: {})",
                write_error.unwrap_or_default()
            ));
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(buf)))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut body = buf[split + 4..].to_vec();
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let raw = String::from_utf8_lossy(&body).into_owned();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| format!("status {status}, non-JSON body {raw:?}: {e}"))?
    };
    Ok(Response {
        status,
        body: value,
        raw,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("short chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

pub fn get(port: u16, path: &str) -> Result<Response, String> {
    request(port, "GET", path, &[], None)
}

pub fn post_json(port: u16, path: &str, body: &Value) -> Result<Response, String> {
    request(port, "POST", path, &[], Some(body.to_string().as_bytes()))
}

/// `PUT /v1/kv/KEY` with a JSON value.
pub fn put(port: u16, key: &str, value: &Value) -> Result<Response, String> {
    request(
        port,
        "PUT",
        &format!("/v1/kv/{key}"),
        &[],
        Some(value.to_string().as_bytes()),
    )
}

pub fn id_headers(client_id: u64, seq: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-paxlog-client-id", client_id.to_string()),
        ("x-paxlog-request-seq", seq.to_string()),
    ]
}

/// POSTs a seed command, retrying with the same request id while the
/// replica answers 503 or cannot be reached (exactly-once retries).
pub fn command_retrying(port: u16, command: &str, client_id: u64, seq: u64) -> Response {
    let body = serde_json::json!({ "command": command }).to_string();
    let headers = id_headers(client_id, seq);
    wait_for(
        Duration::from_secs(60),
        &format!("command {command:?} on :{port}"),
        || match request(port, "POST", "/command", &headers, Some(body.as_bytes())) {
            Ok(r) if r.status == 503 => None,
            Ok(r) => Some(r),
            Err(_) => None,
        },
    )
}

/// `/db` of the replica at `port`, if it answers 200.
pub fn db(port: u16) -> Option<Value> {
    match get(port, "/db") {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

pub fn status(port: u16) -> Option<Value> {
    match get(port, "/status") {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

// ----- the cluster ---------------------------------------------------------------

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub peer_ports: Vec<u16>,
    pub http_ports: Vec<u16>,
    /// Where each replica serves etcd's gRPC API.
    pub grpc_ports: Vec<u16>,
    pub extra_args: Vec<String>,
    nodes: Vec<Option<Child>>,
    /// The replicas listed in `--peers`; the ones after them join.
    bootstrap: usize,
}

impl Cluster {
    /// A cluster of `n` replicas, none started yet.
    pub fn new(n: usize, extra_args: &[&str]) -> Cluster {
        let ports = free_ports(3 * n);
        Cluster {
            root: tempfile::tempdir().unwrap(),
            peer_ports: ports[..n].to_vec(),
            http_ports: ports[n..2 * n].to_vec(),
            grpc_ports: ports[2 * n..].to_vec(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            nodes: (0..n).map(|_| None).collect(),
            bootstrap: n,
        }
    }

    /// Room for one more replica, not in `--peers`: it joins (see
    /// `joiner_command`). Returns its slot in this harness (not its id,
    /// which the cluster gives).
    pub fn add_slot(&mut self) -> usize {
        let ports = free_ports(3);
        self.peer_ports.push(ports[0]);
        self.http_ports.push(ports[1]);
        self.grpc_ports.push(ports[2]);
        self.nodes.push(None);
        self.http_ports.len() - 1
    }

    /// `paxlog node --join` for slot `i`, through replica `via`'s client
    /// address, its own peer address given as a host name.
    pub fn joiner_command(&self, i: usize, via: usize, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("node")
            .args(["--join", &format!("127.0.0.1:{}", self.http_ports[via])])
            .args([
                "--advertise-peer",
                &format!("localhost:{}", self.peer_ports[i]),
            ])
            .args(["--http", &format!("127.0.0.1:{}", self.http_ports[i])])
            .args(["--grpc", &format!("127.0.0.1:{}", self.grpc_ports[i])])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(extra);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        cmd.env("RUST_LOG", "info")
            .env_remove("PAXLOG_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        cmd
    }

    /// Starts slot `i` with `cmd` and waits until it serves.
    pub fn start_with(&mut self, i: usize, mut cmd: Command) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        self.nodes[i] = Some(cmd.spawn().unwrap());
        self.wait_serving(i);
    }

    pub fn size(&self) -> usize {
        self.http_ports.len()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.http_ports[i]
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node-{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node-{i}.log"))
    }

    pub fn peers_arg(&self) -> String {
        self.peer_ports[..self.bootstrap]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `paxlog node` command for replica `i` with its stderr appended
    /// to its log file.
    pub fn node_command(&self, i: usize) -> Command {
        // Bootstraps an empty folder; ignored once it holds data.
        self.node_command_as(i, "new")
    }

    /// [`node_command`](Self::node_command) with `--initial-cluster-state STATE`
    /// (`existing`: a replica that replaces a lost disk).
    pub fn node_command_as(&self, i: usize, initial_cluster_state: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("node")
            .arg("--id")
            .arg(i.to_string())
            .arg("--peers")
            .arg(self.peers_arg())
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.http_ports[i]))
            .args(["--grpc", &format!("127.0.0.1:{}", self.grpc_ports[i])])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--initial-cluster-state", initial_cluster_state])
            .args(&self.extra_args);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        cmd.env("RUST_LOG", "warn")
            .env_remove("PAXLOG_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        cmd
    }

    /// Starts replica `i` (not waiting for it to serve).
    pub fn spawn(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        let child = self.node_command(i).spawn().unwrap();
        self.nodes[i] = Some(child);
    }

    /// Starts replica `i` as one that replaces a lost disk (`existing`).
    pub fn spawn_existing(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        let child = self.node_command_as(i, "existing").spawn().unwrap();
        self.nodes[i] = Some(child);
    }

    /// Starts replica `i` and waits until it answers `/status`.
    pub fn start(&mut self, i: usize) {
        self.spawn(i);
        self.wait_serving(i);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.size() {
            self.spawn(i);
        }
        for i in 0..self.size() {
            self.wait_serving(i);
        }
    }

    pub fn wait_serving(&mut self, i: usize) {
        let port = self.http_ports[i];
        let start = Instant::now();
        loop {
            if status(port).is_some() {
                return;
            }
            if let Some(child) = self.nodes[i].as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    self.nodes[i] = None;
                    panic!(
                        "node {i} exited with {exit} before serving; log:\n{}",
                        tail_of(&self.log_path(i), 4000)
                    );
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node {i} did not serve within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// The process id of replica `i`, if the harness runs it.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (a clean stop); SIGKILL after 20 s. Returns the
    /// exit status of a clean stop.
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        let mut child = self.nodes[i].take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(exit)) = child.try_wait() {
                return Some(exit);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The leader as some running replica sees it (and that replica says it
    /// is the leader itself).
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.size() {
            if !self.is_running(i) {
                continue;
            }
            if let Some(s) = status(self.port(i)) {
                if s["role"] == "Leader" || s["role"] == "leader" {
                    return Some(i);
                }
            }
        }
        None
    }

    pub fn wait_leader(&self) -> usize {
        wait_for(Duration::from_secs(60), "a leader", || self.leader())
    }

    /// Waits until every running replica's `/db` is the same; returns it.
    pub fn wait_converged(&self, timeout: Duration) -> Value {
        let running: Vec<usize> = (0..self.size()).filter(|&i| self.is_running(i)).collect();
        let start = Instant::now();
        loop {
            let dbs: Vec<Option<Value>> = running.iter().map(|&i| db(self.port(i))).collect();
            if dbs.iter().all(|d| d.is_some()) && dbs.windows(2).all(|w| w[0] == w[1]) {
                return dbs[0].clone().unwrap();
            }
            if start.elapsed() > timeout {
                let rounds: Vec<Value> = dbs
                    .iter()
                    .map(|d| {
                        d.as_ref()
                            .map_or(Value::Null, |d| d["current_round"].clone())
                    })
                    .collect();
                panic!("replicas {running:?} did not converge within {timeout:?}; current_round: {rounds:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn dump_logs(&self) {
        for i in 0..self.size() {
            eprintln!(
                "----- node {i} log tail ({}) -----\n{}",
                self.log_path(i).display(),
                tail_of(&self.log_path(i), 3000)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.size() {
            self.kill(i);
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Runs `cmd` to completion (SIGKILL and panic after 30 s); (exit status,
/// stdout, stderr).
pub fn output_with_timeout(mut cmd: Command) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        out_reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

/// Runs `paxlog ARGS` to completion; (exit status, stdout, stderr).
pub fn run_paxlog(args: &[&str]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PAXLOG_CONFIG");
    output_with_timeout(cmd)
}

/// `wal-*.log` files under `dir` (recursively), sorted by name.
pub fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("wal-") && name.ends_with(".log") {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    out
}

// ----- a write load ----------------------------------------------------------------

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Writer threads doing PUTs of unique keys through random replicas,
/// retrying (same request id) on 503 or connection errors. Every
/// acknowledged (key, value) is recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<BTreeMap<String, Value>>>,
    pub errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(ports: Vec<u16>, writers: usize, prefix: &str) -> Load {
        Load::start_opts(ports, writers, prefix, false)
    }

    /// With `verify_reads`, each acknowledged write is read back from a
    /// random replica, linearizably and with `min_round`; a 404 or a wrong
    /// value is recorded as an error (503 and connection errors are not).
    pub fn start_opts(ports: Vec<u16>, writers: usize, prefix: &str, verify_reads: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let base = Rng::new().next_u64() >> 8;
        let threads = (0..writers)
            .map(|t| {
                let (stop, acked, errors, ports) =
                    (stop.clone(), acked.clone(), errors.clone(), ports.clone());
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    let mut rng = Rng::new();
                    let client_id = base + t as u64;
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = format!("{prefix}-{t}-{seq}");
                        let value = serde_json::json!({ "t": t, "n": seq });
                        let body = value.to_string();
                        let headers = id_headers(client_id, seq);
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            let port = ports[rng.range(0, ports.len() as u64) as usize];
                            let path = format!("/v1/kv/{key}");
                            match request(port, "PUT", &path, &headers, Some(body.as_bytes())) {
                                Ok(r) if r.status == 200 => {
                                    acked.lock().unwrap().insert(key.clone(), value.clone());
                                    if verify_reads {
                                        let round = r.body["round_id"].as_u64().unwrap_or(0);
                                        for query in ["", &format!("?min_round={round}")] {
                                            let port =
                                                ports[rng.range(0, ports.len() as u64) as usize];
                                            let path = format!("/v1/kv/{key}{query}");
                                            match get(port, &path) {
                                                Ok(r) if r.status == 503 => {}
                                                Ok(r) if r.status == 200 && r.body["value"] == value => {}
                                                Ok(r) => errors.lock().unwrap().push(format!(
                                                    "GET {path} on :{port} after PUT acked at round {round}: {} {}",
                                                    r.status, r.raw
                                                )),
                                                Err(_) => {}
                                            }
                                        }
                                    }
                                    break;
                                }
                                // 409: the same request is still in flight there.
                                Ok(r) if r.status == 503 || r.status == 409 => {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                Ok(r) => {
                                    errors.lock().unwrap().push(format!(
                                        "PUT {key} on :{port}: {} {}",
                                        r.status, r.raw
                                    ));
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(20)),
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            errors,
            threads,
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until at least `n` more writes than now are acknowledged.
    pub fn wait_progress(&self, n: usize, timeout: Duration, what: &str) {
        let target = self.acked_count() + n;
        wait_until(timeout, what, || self.acked_count() >= target);
    }

    pub fn finish(mut self) -> (BTreeMap<String, Value>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (acked, errors)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Asserts every acknowledged key is in `db` (a `/db` answer) with its value.
pub fn assert_all_acked_present(acked: &BTreeMap<String, Value>, db: &Value, who: &str) {
    let map = db["db"]
        .as_object()
        .unwrap_or_else(|| panic!("{who}: /db has no db object: {db}"));
    let mut missing = Vec::new();
    for (key, value) in acked {
        match map.get(key) {
            Some(v) if v == value => {}
            other => missing.push(format!("{key}: expected {value}, got {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{who}: {} of {} acknowledged writes lost or wrong, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}
