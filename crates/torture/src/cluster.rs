//! The replica processes and their proxies.

use crate::http;
use crate::proxy::Net;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub n: usize,
    bin: PathBuf,
    pub http: Vec<SocketAddr>,
    /// Where each replica serves etcd's gRPC API.
    pub grpc: Vec<SocketAddr>,
    peer: Vec<SocketAddr>,
    pub net: Net,
    data_root: PathBuf,
    log_root: PathBuf,
    procs: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// Replica i was started once: its folder, if empty now, was lost (the
    /// replica must join as `existing` and recover), not new.
    started_once: Vec<bool>,
    pub extra_args: Vec<String>,
    /// Origin of the "t=" stamps the harness writes into the replica logs.
    pub t0: Instant,
}

/// The kernel's ephemeral port range (connect()'s source ports, bind(:0)).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// k free loopback ports for the replicas' peer and HTTP listeners, taken
/// from outside the ephemeral range: a port the harness merely reserved
/// and released (bind :0) is an ephemeral port, which the kernel may hand
/// to any outgoing connection (clients, proxies, replicas dialing peers)
/// while its replica is down, so that the replica could not bind it again.
fn free_addrs(k: usize) -> Result<Vec<SocketAddr>> {
    let (lo, hi) = ephemeral_range();
    let (from, to) = if lo > 12_000 {
        (10_000u16, lo - 1)
    } else if hi < 63_000 {
        (hi + 1, 65_000)
    } else {
        (0, 0)
    };
    let mut held: Vec<TcpListener> = Vec::new();
    if to > from {
        let span = u64::from(to - from) + 1;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = crate::Rng::new(seed);
        for _ in 0..span.min(4096) {
            if held.len() == k {
                break;
            }
            let port = from + rng.below(span) as u16;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                held.push(l);
            }
        }
    }
    while held.len() < k {
        held.push(TcpListener::bind("127.0.0.1:0")?);
    }
    Ok(held.iter().filter_map(|l| l.local_addr().ok()).collect())
}

/// Copies the replica binary into the campaign folder, so that every
/// (re)start during the campaign runs the same build even if the original
/// is rebuilt meanwhile, and under a name of its own (`paxlog-replica`),
/// so that someone else's `pkill -f "paxlog node"` does not match it.
fn snapshot_binary(bin: &Path, root: &Path) -> Result<PathBuf> {
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("paxlog-replica");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(bin, &copy)
        .with_context(|| format!("copying {} to {}", bin.display(), copy.display()))?;
    Ok(copy)
}

/// Outcome of starting a replica.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    Serving,
    /// The process exited before serving (e.g. refused a corrupt log).
    Exited(String),
    TimedOut,
}

impl Cluster {
    pub async fn new(
        bin: &Path,
        n: usize,
        root: &Path,
        extra_args: Vec<String>,
    ) -> Result<Cluster> {
        let addrs = free_addrs(3 * n)?;
        let peer = addrs[..n].to_vec();
        let http = addrs[n..2 * n].to_vec();
        let grpc = addrs[2 * n..].to_vec();
        let net = Net::start(&peer).await?;
        let data_root = root.join("data");
        let log_root = root.join("logs");
        let _ = std::fs::remove_dir_all(&data_root);
        std::fs::create_dir_all(&data_root)?;
        std::fs::create_dir_all(&log_root)?;
        let bin = snapshot_binary(bin, root)?;
        Ok(Cluster {
            n,
            bin,
            http,
            grpc,
            peer,
            net,
            data_root,
            log_root,
            procs: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
            started_once: vec![false; n],
            extra_args,
            t0: Instant::now(),
        })
    }

    /// Appends a harness line to replica i's log, so that its log tells
    /// which starts and stops the harness caused.
    pub fn annotate(&self, i: usize, msg: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
        {
            let t = self.t0.elapsed().as_secs_f64();
            let _ = writeln!(f, "[paxlog-torture t={t:.3}s] replica {i}: {msg}");
        }
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data_root.join(format!("node-{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.log_root.join(format!("node-{i}.log"))
    }

    /// Replica i's --peers: its own real address at i, the proxy (i -> j) at j.
    fn peers_arg(&self, i: usize) -> String {
        (0..self.n)
            .map(|j| {
                if i == j {
                    self.peer[i].to_string()
                } else {
                    self.net
                        .listen_addr(i, j)
                        .map_or_else(String::new, |a| a.to_string())
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Spawns replica i with extra environment (LD_PRELOAD fault
    /// injectors: libfaketime, libfiu).
    pub fn spawn(&mut self, i: usize, env: &[(&str, String)]) -> Result<()> {
        if self.procs[i].is_some() {
            return Err(anyhow!("replica {i} is already running"));
        }
        // Preloads are set directly (not through the `faketime` wrapper,
        // which forks: SIGKILL must reach the replica itself).
        let mut cmd = Command::new(&self.bin);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("node")
            .arg("--id")
            .arg(i.to_string())
            .arg("--peers")
            .arg(self.peers_arg(i))
            .arg("--http")
            .arg(self.http[i].to_string())
            .arg("--grpc")
            .arg(self.grpc[i].to_string())
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--initial-cluster-state")
            .arg(if self.started_once[i] {
                "existing"
            } else {
                "new"
            })
            .args(&self.extra_args);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        cmd.env("RUST_LOG", "warn")
            .env_remove("PAXLOG_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let preload: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.annotate(
            i,
            &format!(
                "spawned pid {} http {} {}",
                child.id(),
                self.http[i],
                preload.join(" ")
            ),
        );
        self.procs[i] = Some(child);
        self.paused[i] = false;
        self.started_once[i] = true;
        Ok(())
    }

    /// Waits until replica i answers /status, or its process exits.
    pub async fn wait_serving(&mut self, i: usize, timeout: Duration) -> Started {
        let start = Instant::now();
        loop {
            if status(self.http[i]).await.is_some() {
                return Started::Serving;
            }
            if let Some(child) = self.procs[i].as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    let pid = child.id();
                    self.procs[i] = None;
                    self.annotate(i, &format!("pid {pid} exited before serving: {exit}"));
                    return Started::Exited(exit.to_string());
                }
            } else {
                return Started::Exited("not running".into());
            }
            if start.elapsed() > timeout {
                return Started::TimedOut;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn start(&mut self, i: usize, env: &[(&str, String)]) -> Result<Started> {
        self.spawn(i, env)?;
        Ok(self.wait_serving(i, Duration::from_secs(30)).await)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// Reaps replica i if its process has exited on its own; returns how.
    pub fn reap(&mut self, i: usize) -> Option<String> {
        let child = self.procs[i].as_mut()?;
        let exit = child.try_wait().ok()??;
        let pid = child.id();
        self.procs[i] = None;
        self.annotate(i, &format!("pid {pid} exited on its own: {exit}"));
        Some(exit.to_string())
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.procs[i].is_some() && !self.paused[i]
    }

    /// SIGKILLs replica i. Returns how it had ended if it was already gone
    /// before the harness killed it (a crash, or someone else's signal).
    pub fn kill(&mut self, i: usize) -> Option<String> {
        let mut gone = None;
        if let Some(mut child) = self.procs[i].take() {
            if let Ok(Some(exit)) = child.try_wait() {
                gone = Some(exit.to_string());
            } else {
                let _ = child.kill();
                let _ = child.wait();
                self.annotate(i, &format!("pid {} killed by the harness", child.id()));
            }
        }
        self.paused[i] = false;
        gone
    }

    fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self.procs[i]
            .as_ref()
            .ok_or_else(|| anyhow!("replica {i} is not running"))?
            .id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            return Err(anyhow!("kill -{sig} {pid} failed"));
        }
        Ok(())
    }

    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, "STOP")?;
        self.paused[i] = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        if self.paused[i] {
            self.signal(i, "CONT")?;
            self.paused[i] = false;
        }
        Ok(())
    }

    /// The leader as most reachable replicas report it, if that replica
    /// agrees it leads.
    pub async fn leader(&self) -> Option<usize> {
        let mut votes = vec![0usize; self.n];
        let mut self_leader = vec![false; self.n];
        for (i, leads) in self_leader.iter_mut().enumerate() {
            if !self.is_up(i) {
                continue;
            }
            if let Some(s) = status(self.http[i]).await {
                if let Some(l) = s["leader"].as_u64() {
                    if (l as usize) < self.n {
                        votes[l as usize] += 1;
                    }
                }
                if s["role"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case("leader"))
                {
                    *leads = true;
                }
            }
        }
        (0..self.n)
            .filter(|&i| self_leader[i] && self.is_up(i))
            .max_by_key(|&i| votes[i])
    }

    /// Components: the largest set of up replicas, all pairwise connected
    /// both ways, if it is a majority.
    pub fn majority_component(&self) -> Option<Vec<usize>> {
        let n = self.n;
        let mut best: Option<Vec<usize>> = None;
        for mask in 1u32..(1 << n) {
            let set: Vec<usize> = (0..n).filter(|&i| mask & (1 << i) != 0).collect();
            if set.len() <= n / 2 || !set.iter().all(|&i| self.is_up(i)) {
                continue;
            }
            let connected = set.iter().all(|&a| {
                set.iter()
                    .all(|&b| a == b || (!self.net.is_blocked(a, b) && !self.net.is_blocked(b, a)))
            });
            if connected && best.as_ref().is_none_or(|b| b.len() < set.len()) {
                best = Some(set);
            }
        }
        best
    }

    pub fn shutdown(&mut self) {
        for i in 0..self.n {
            let _ = self.resume(i);
            let _ = self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// libfiu's preload libraries, if installed (Debian: `fiu-utils`).
pub fn fiu_libs() -> Option<String> {
    let run = PathBuf::from("/usr/lib/fiu/fiu_run_preload.so");
    let posix = PathBuf::from("/usr/lib/fiu/fiu_posix_preload.so");
    (run.exists() && posix.exists()).then(|| format!("{} {}", run.display(), posix.display()))
}

/// The libfaketime shared object, if installed (Debian: `faketime`).
pub fn faketime_lib() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

pub async fn status(addr: SocketAddr) -> Option<Value> {
    match http::request(
        addr,
        "GET",
        "/status",
        &[],
        None,
        Duration::from_millis(800),
    )
    .await
    {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

pub async fn db(addr: SocketAddr) -> Option<Value> {
    match http::request(addr, "GET", "/db", &[], None, Duration::from_secs(3)).await {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

/// The membership as one replica reports it (`GET /v1/members`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    pub epoch: u64,
    pub leader: Option<usize>,
    pub voters: Vec<usize>,
    pub learners: Vec<usize>,
}

impl Members {
    pub fn parse(v: &Value) -> Option<Members> {
        let ids = |field: &str| -> Option<Vec<usize>> {
            v[field]
                .as_array()?
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize))
                .collect()
        };
        Some(Members {
            epoch: v["epoch"].as_u64()?,
            leader: v["leader"].as_u64().map(|l| l as usize),
            voters: ids("voters")?,
            learners: ids("learners")?,
        })
    }
}

pub async fn members(addr: SocketAddr) -> Option<Members> {
    match http::request(
        addr,
        "GET",
        "/v1/members",
        &[],
        None,
        Duration::from_secs(2),
    )
    .await
    {
        Ok(r) if r.status == 200 => Members::parse(&r.body),
        _ => None,
    }
}

/// Asks replica `addr` (the leader, or it answers 503) for one membership
/// change (`demote`, `promote`, ...) of replica `id`. The replica answers
/// within its request timeout (5 s by default) once the change is applied.
pub async fn change_members(
    addr: SocketAddr,
    action: &str,
    id: usize,
) -> Result<http::Resp, http::HttpError> {
    let body = serde_json::json!({ "action": action, "id": id });
    http::request(
        addr,
        "POST",
        "/v1/members",
        &[],
        Some(&body),
        Duration::from_secs(8),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::Members;
    use serde_json::json;

    #[test]
    fn parses_the_members_answer() {
        let body = json!({
            "epoch": 3, "round_id": 120, "leader": 0, "leader_http": "127.0.0.1:1",
            "members": [
                {"id": 0, "role": "voter", "http": "127.0.0.1:1"},
                {"id": 2, "role": "voter", "http": "127.0.0.1:3"},
                {"id": 1, "role": "learner", "http": "127.0.0.1:2"}
            ],
            "voters": [0, 2], "learners": [1]
        });
        let m = Members::parse(&body).expect("parses");
        assert_eq!(m.epoch, 3);
        assert_eq!(m.leader, Some(0));
        assert_eq!(m.voters, vec![0, 2]);
        assert_eq!(m.learners, vec![1]);
        let no_leader = json!({"epoch": 0, "round_id": null, "leader": null,
            "leader_http": null, "members": [], "voters": [0, 1, 2], "learners": []});
        assert_eq!(Members::parse(&no_leader).map(|m| m.leader), Some(None));
        assert_eq!(Members::parse(&json!({"error": "not the leader"})), None);
    }
}
