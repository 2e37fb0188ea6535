//! The `etcd-client` crate (crates.io, a client nobody here wrote) against
//! a 3-replica paxlog cluster's etcd v3 gRPC API: KV, prefixes, delete with
//! previous values, transactions, leases and their keep-alive stream,
//! member list and status; and a watch that survives a leader change with
//! no missed and no repeated event.
//!
//! The `paxlog` binary comes from the `PAXLOG_BIN` environment variable
//! (scripts/test.sh sets it to `target/release/paxlog`).

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use std::collections::hash_map::RandomState;
use std::fmt::Display;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};

/// How long anything that should happen soon may take on a slow, busy
/// machine.
const LONG: Duration = Duration::from_secs(60);

type Res<T> = Result<T, etcd_client::Error>;

// ----- the cluster ---------------------------------------------------------------

fn paxlog_bin() -> PathBuf {
    const HOW: &str = "build it with `cargo build --release -p paxlog-cli` in the main \
                       workspace and set PAXLOG_BIN to target/release/paxlog";
    let bin = std::env::var_os("PAXLOG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("PAXLOG_BIN (the paxlog binary) is not set: {HOW}"));
    assert!(
        bin.is_file(),
        "PAXLOG_BIN={} is not a file: {HOW}",
        bin.display()
    );
    bin
}

/// `n` distinct free local ports, held all at once while choosing. They
/// are drawn at random below Linux's default range for outgoing
/// connections' ports (32768 and up), so that no connection takes one
/// before its replica listens on it; a replica that still finds its port
/// taken makes [`Cluster::start`] start again on other ports.
fn free_ports(n: usize) -> Vec<u16> {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let mut state = hasher.finish() | 1;
    let mut listeners: Vec<TcpListener> = Vec::new();
    for _ in 0..1000 {
        if listeners.len() == n {
            break;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 15000 + (state % 17000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

fn tail_of(path: &Path, max_bytes: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max_bytes);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A fresh folder under the system's temporary folder.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "paxlog-etcd-client-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Three `paxlog node` processes on free local ports in a temporary
/// folder. Dropping it kills them and removes the folder, or, while
/// panicking, keeps it and prints the logs' tails.
struct Cluster {
    dir: PathBuf,
    grpc: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

impl Cluster {
    const SIZE: usize = 3;

    /// Starts the replicas and waits until each answers etcd's Status.
    async fn start() -> Cluster {
        let bin = paxlog_bin();
        let mut attempt = 1;
        loop {
            let mut cluster = Cluster::launch(&bin);
            match cluster.wait_serving().await {
                Ok(()) => return cluster,
                Err(why) if attempt < 5 => {
                    eprintln!("{why}: starting the cluster again on other ports");
                    attempt += 1;
                }
                Err(why) => panic!("{why}, {attempt} times"),
            }
        }
    }

    fn launch(bin: &Path) -> Cluster {
        let dir = fresh_dir();
        let ports = free_ports(3 * Self::SIZE);
        let (peer, rest) = ports.split_at(Self::SIZE);
        let (http, grpc) = rest.split_at(Self::SIZE);
        let peers = peer
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir,
            grpc: grpc.to_vec(),
            nodes: Vec::new(),
        };
        for i in 0..Self::SIZE {
            let log = std::fs::File::create(cluster.log_path(i)).expect("create log file");
            let child = Command::new(bin)
                .arg("node")
                .args(["--id", &i.to_string()])
                .args(["--peers", &peers])
                .args(["--http", &format!("127.0.0.1:{}", http[i])])
                .args(["--grpc", &format!("127.0.0.1:{}", grpc[i])])
                .arg("--data-dir")
                .arg(cluster.dir.join(format!("node-{i}")))
                .args(["--initial-cluster-state", "new"])
                .env("RUST_LOG", "warn")
                .env_remove("PAXLOG_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    /// Waits until every replica answers etcd's Status. An error says a
    /// replica found a port taken.
    async fn wait_serving(&mut self) -> Result<(), String> {
        let start = Instant::now();
        for i in 0..Self::SIZE {
            loop {
                let exited = self.nodes[i]
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(exit) = exited {
                    self.nodes[i] = None;
                    let log = tail_of(&self.log_path(i), 4000);
                    if log.contains("Address already in use") {
                        return Err(format!("node {i} found a port taken"));
                    }
                    panic!("node {i} exited with {exit} before serving; log:\n{log}");
                }
                if status_of(&self.endpoint(i)).await.is_ok() {
                    break;
                }
                assert!(
                    start.elapsed() < LONG,
                    "node {i} did not answer etcd's Status within {LONG:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}.log"))
    }

    fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.grpc[i])
    }

    fn endpoints(&self, which: &[usize]) -> Vec<String> {
        which.iter().map(|&i| self.endpoint(i)).collect()
    }

    /// Panics (with the log's tail) if replica `i` has exited.
    fn assert_running(&mut self, i: usize) {
        if let Some(child) = self.nodes[i].as_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                self.nodes[i] = None;
                panic!(
                    "node {i} exited with {exit}; log:\n{}",
                    tail_of(&self.log_path(i), 4000)
                );
            }
        }
    }

    /// SIGKILLs replica `i` and reaps it.
    async fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].take().expect("node is running");
        child.start_kill().expect("kill node");
        let _ = child.wait().await;
    }

    /// Waits until every running replica answers etcd's Status with the
    /// same non-zero leader, and returns, for each replica, its etcd member
    /// id, and the leader's index.
    async fn wait_for_leader(&mut self) -> (Vec<u64>, usize) {
        let start = Instant::now();
        loop {
            let running: Vec<usize> = (0..Self::SIZE)
                .filter(|&i| self.nodes[i].is_some())
                .collect();
            for &i in &running {
                self.assert_running(i);
            }
            let mut statuses = Vec::new();
            for &i in &running {
                match status_of(&self.endpoint(i)).await {
                    Ok(s) => statuses.push((i, s)),
                    Err(e) => {
                        eprintln!("status of node {i}: {e}");
                        break;
                    }
                }
            }
            if statuses.len() == running.len() {
                let leader = statuses[0].1 .1;
                if leader != 0 && statuses.iter().all(|(_, s)| s.1 == leader) {
                    let mut member_ids = vec![0; Self::SIZE];
                    for (i, (member, _)) in &statuses {
                        member_ids[*i] = *member;
                    }
                    if let Some(at) = member_ids.iter().position(|m| *m == leader) {
                        return (member_ids, at);
                    }
                }
            }
            assert!(
                start.elapsed() < LONG,
                "no agreed leader among nodes {running:?} within {LONG:?} (last statuses: \
                 {statuses:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            for i in 0..Self::SIZE {
                eprintln!(
                    "----- node {i} log ({}), tail:\n{}",
                    self.log_path(i).display(),
                    tail_of(&self.log_path(i), 3000)
                );
            }
            eprintln!("(the cluster's folder {} is kept)", self.dir.display());
        } else {
            // Reap the replicas before removing their folders.
            for child in self.nodes.iter_mut().flatten() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(15))
}

async fn connect(endpoints: &[String]) -> Client {
    let start = Instant::now();
    loop {
        match Client::connect(endpoints, Some(options())).await {
            Ok(client) => return client,
            Err(e) => {
                assert!(
                    start.elapsed() < LONG,
                    "cannot connect to {endpoints:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// (this endpoint's member id, the leader's member id) by etcd's Status.
async fn status_of(endpoint: &str) -> Res<(u64, u64)> {
    let mut client = Client::connect([endpoint], Some(options())).await?;
    let status = client.status().await?;
    let member = status.header().map_or(0, |h| h.member_id());
    Ok((member, status.leader()))
}

/// Retries `op` until it succeeds (a replica may be electing), for at most
/// [`LONG`].
async fn retry<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(start.elapsed() < LONG, "{what}: still failing: {e}");
                eprintln!("{what}: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ----- KV, txn, lease, cluster and maintenance -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_and_lease_basics() {
    let mut cluster = Cluster::start().await;
    let (member_ids, leader) = cluster.wait_for_leader().await;
    let mut c = connect(&cluster.endpoints(&[0, 1, 2])).await;

    // Put and get; a write's header revision is the key's mod_revision.
    let mut revisions = Vec::new();
    for (key, value) in [("k/a", "1"), ("k/b", "2"), ("k/c", "3")] {
        let put = retry("put", || {
            let mut c = c.clone();
            async move { c.put(key, value, None).await }
        })
        .await;
        revisions.push(put.header().expect("put header").revision());
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "put revisions not increasing: {revisions:?}"
    );
    let got = c.get("k/a", None).await.expect("get k/a");
    assert_eq!(got.kvs().len(), 1, "{got:?}");
    let kv = &got.kvs()[0];
    assert_eq!((kv.key(), kv.value()), (&b"k/a"[..], &b"1"[..]));
    assert_eq!(kv.mod_revision(), revisions[0], "{kv:?}");
    assert_eq!(kv.create_revision(), revisions[0], "{kv:?}");
    assert_eq!(kv.version(), 1, "{kv:?}");
    assert!(got.header().expect("get header").revision() >= revisions[2]);
    let absent = c.get("k/none", None).await.expect("get k/none");
    assert!(absent.kvs().is_empty() && absent.count() == 0, "{absent:?}");

    // A prefix: the keys in order.
    let prefix = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get k/ prefix");
    let listed: Vec<(String, String, i64)> = prefix
        .kvs()
        .iter()
        .map(|kv| (text(kv.key()), text(kv.value()), kv.mod_revision()))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("k/a".to_string(), "1".to_string(), revisions[0]),
            ("k/b".to_string(), "2".to_string(), revisions[1]),
            ("k/c".to_string(), "3".to_string(), revisions[2]),
        ]
    );
    assert_eq!(prefix.count(), 3);

    // Delete with the previous value.
    let deleted = c
        .delete("k/b", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete k/b");
    assert_eq!(deleted.deleted(), 1, "{deleted:?}");
    assert_eq!(deleted.prev_kvs().len(), 1, "{deleted:?}");
    assert_eq!(
        (deleted.prev_kvs()[0].key(), deleted.prev_kvs()[0].value()),
        (&b"k/b"[..], &b"2"[..])
    );
    let delete_revision = deleted.header().expect("delete header").revision();
    assert!(delete_revision > revisions[2], "{deleted:?}");
    assert!(c.get("k/b", None).await.expect("get k/b").kvs().is_empty());

    // A txn comparing a value: the success branch, then the failure one.
    let txn = || {
        Txn::new()
            .when([Compare::value("k/a", CompareOp::Equal, "1")])
            .and_then([TxnOp::put("k/a", "10", None)])
            .or_else([TxnOp::get("k/a", None)])
    };
    let first = c.txn(txn()).await.expect("txn 1");
    assert!(first.succeeded(), "{first:?}");
    let txn_revision = first.header().expect("txn header").revision();
    assert!(txn_revision > delete_revision, "{first:?}");
    match first.op_responses().as_slice() {
        [TxnOpResponse::Put(_)] => {}
        other => panic!("success branch answered {other:?}"),
    }
    let second = c.txn(txn()).await.expect("txn 2");
    assert!(!second.succeeded(), "{second:?}");
    match second.op_responses().as_slice() {
        [TxnOpResponse::Get(get)] => {
            assert_eq!(get.kvs().len(), 1, "{get:?}");
            assert_eq!(get.kvs()[0].value(), b"10");
            assert_eq!(get.kvs()[0].mod_revision(), txn_revision);
            assert_eq!(get.kvs()[0].version(), 2);
        }
        other => panic!("failure branch answered {other:?}"),
    }

    // create_revision == 0: the key is absent (create-if-absent).
    let create = || {
        Txn::new()
            .when([Compare::create_revision("k/new", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("k/new", "first", None)])
            .or_else([TxnOp::get("k/new", None)])
    };
    let created = c.txn(create()).await.expect("create txn 1");
    assert!(created.succeeded(), "{created:?}");
    let not_again = c.txn(create()).await.expect("create txn 2");
    assert!(!not_again.succeeded(), "{not_again:?}");
    match not_again.op_responses().as_slice() {
        [TxnOpResponse::Get(get)] => assert_eq!(get.kvs()[0].value(), b"first"),
        other => panic!("failure branch answered {other:?}"),
    }

    // Leases: grant, attach, keep alive through the crate's stream, TTL.
    let grant = c.lease_grant(30, None).await.expect("lease grant");
    assert!(grant.id() != 0 && grant.ttl() == 30, "{grant:?}");
    let lease = grant.id();
    c.put("lease/k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    let got = c.get("lease/k", None).await.expect("get lease/k");
    assert_eq!(got.kvs()[0].lease(), lease, "{got:?}");
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.expect("keep alive");
    assert_eq!(keeper.id(), lease);
    for _ in 0..2 {
        keeper.keep_alive().await.expect("send keep-alive");
        let answer = tokio::time::timeout(LONG, stream.message())
            .await
            .expect("keep-alive answer in time")
            .expect("keep-alive answer")
            .expect("keep-alive stream ended");
        assert_eq!(answer.id(), lease, "{answer:?}");
        assert!(answer.ttl() > 0 && answer.ttl() <= 30, "{answer:?}");
    }
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(ttl.id(), lease, "{ttl:?}");
    assert_eq!(ttl.granted_ttl(), 30, "{ttl:?}");
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 30, "{ttl:?}");
    assert_eq!(ttl.keys(), &[b"lease/k".to_vec()], "{ttl:?}");
    let leases = c.leases().await.expect("leases");
    assert!(
        leases.leases().iter().any(|l| l.id() == lease),
        "{leases:?}"
    );
    c.lease_revoke(lease).await.expect("revoke");
    let gone = c.get("lease/k", None).await.expect("get lease/k");
    assert!(
        gone.kvs().is_empty(),
        "a revoked lease's key stays: {gone:?}"
    );

    // Members: three, named paxlog-0..2, with the ids Status reports.
    let members = c.member_list().await.expect("member list");
    let mut named: Vec<(String, u64)> = members
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.id()))
        .collect();
    named.sort();
    let expected: Vec<(String, u64)> = (0..Cluster::SIZE)
        .map(|i| (format!("paxlog-{i}"), member_ids[i]))
        .collect();
    assert_eq!(named, expected, "{members:?}");
    for m in members.members() {
        assert!(!m.is_learner(), "{m:?}");
        assert!(!m.client_urls().is_empty(), "{m:?}");
    }

    // Status: every endpoint names the same leader.
    for i in 0..Cluster::SIZE {
        let mut one = connect(&cluster.endpoints(&[i])).await;
        let status = one.status().await.expect("status");
        assert_eq!(status.leader(), member_ids[leader], "node {i}: {status:?}");
        assert_eq!(
            status.header().expect("status header").member_id(),
            member_ids[i],
            "node {i}: {status:?}"
        );
    }
    for i in 0..Cluster::SIZE {
        cluster.assert_running(i);
    }
}

// ----- a watch across a leader change --------------------------------------------

const WRITES: usize = 40;
/// Written after the others: a watch has seen everything before it when it
/// sees this one, so a repeat at the end cannot go unnoticed.
const LAST_KEY: &str = "w/~end";

/// (key, value, mod_revision)
type Seen = (String, String, i64);

/// Starts a watch of `w/` from `start_revision` through `client`, waiting
/// for its `created` answer.
async fn watch_from(client: &mut Client, start_revision: i64) -> Res<WatchStream> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision);
    let mut stream = client.watch("w/", Some(options)).await?;
    match stream.message().await? {
        Some(r) if r.created() && !r.canceled() => Ok(stream),
        other => Err(etcd_client::Error::WatchError(format!(
            "the watch was not created: {other:?}"
        ))),
    }
}

/// Collects `w/` events from `stream` until [`LAST_KEY`]'s comes. If the
/// stream breaks and `resume_on` is given, resumes as an etcd user would:
/// connects to those endpoints and watches again from the revision after
/// the last event seen. Returns the events and how many resumes it took.
async fn collect(
    name: &str,
    mut stream: WatchStream,
    start_revision: i64,
    resume_on: Option<Vec<String>>,
) -> (Vec<Seen>, usize) {
    let mut seen: Vec<Seen> = Vec::new();
    let mut resumes = 0;
    let mut _resumed_client = None;
    loop {
        let broken = match stream.message().await {
            Ok(Some(r)) => {
                if r.canceled() {
                    Some(format!(
                        "canceled (reason {:?}, compact revision {})",
                        r.cancel_reason(),
                        r.compact_revision()
                    ))
                } else {
                    for event in r.events() {
                        let kv = event.kv().expect("an event carries its key");
                        assert_eq!(
                            event.event_type(),
                            EventType::Put,
                            "{name}: unexpected event {event:?}"
                        );
                        if kv.key() == LAST_KEY.as_bytes() {
                            return (seen, resumes);
                        }
                        seen.push((text(kv.key()), text(kv.value()), kv.mod_revision()));
                        assert!(
                            seen.len() <= WRITES,
                            "watch {name}: more events than writes: {seen:?}"
                        );
                    }
                    None
                }
            }
            Ok(None) => Some("the stream ended".to_string()),
            Err(e) => Some(format!("the stream failed: {e}")),
        };
        if let Some(why) = broken {
            let endpoints = resume_on
                .as_ref()
                .unwrap_or_else(|| panic!("watch {name}: {why}, after {} events", seen.len()));
            let from = seen.last().map_or(start_revision, |s| s.2 + 1);
            eprintln!(
                "watch {name}: {why} after {} events; resuming from revision {from} on \
                 {endpoints:?}",
                seen.len()
            );
            let start = Instant::now();
            let (client, resumed) = loop {
                let mut client = connect(endpoints).await;
                match watch_from(&mut client, from).await {
                    Ok(s) => break (client, s),
                    Err(e) => {
                        assert!(
                            start.elapsed() < LONG,
                            "watch {name}: cannot resume from {from}: {e}"
                        );
                        eprintln!("watch {name}: resume: {e} (retrying)");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            _resumed_client = Some(client);
            stream = resumed;
            resumes += 1;
        }
    }
}

/// Puts `key` = `value` through `writer` exactly once: on an error it
/// checks with a (linearizable) get whether the put took effect before
/// trying again. Returns the put's revision.
async fn put_once(mut c: Client, key: String, value: String) -> i64 {
    let start = Instant::now();
    loop {
        match c.put(key.as_str(), value.as_str(), None).await {
            Ok(put) => return put.header().expect("put header").revision(),
            Err(e) => eprintln!("put {key}: {e}"),
        }
        // Did it take effect anyway?
        loop {
            assert!(
                start.elapsed() < LONG,
                "put {key}: no success within {LONG:?}"
            );
            match c.get(key.as_str(), None).await {
                Ok(got) => match got.kvs().first() {
                    Some(kv) if kv.value() == value.as_bytes() => {
                        eprintln!("put {key}: it was applied after all");
                        return kv.mod_revision();
                    }
                    _ => break,
                },
                Err(e) => {
                    eprintln!("get {key}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_a_leader_change_with_no_missed_or_repeated_event() {
    let mut cluster = Cluster::start().await;
    let (member_ids, leader) = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..Cluster::SIZE).filter(|&i| i != leader).collect();
    eprintln!("leader: node {leader} (member {})", member_ids[leader]);

    let writer = connect(&cluster.endpoints(&followers)).await;
    let before = retry("initial put", || {
        let mut c = writer.clone();
        async move { c.put("watch-start", "", None).await }
    })
    .await;
    let start_revision = before.header().expect("put header").revision() + 1;

    // Watch A through the leader alone (resumed on the survivors when the
    // leader dies); watch B through one follower alone.
    let via_leader = connect(&cluster.endpoints(&[leader])).await;
    let a = retry("watch A", || {
        let mut c = via_leader.clone();
        async move { watch_from(&mut c, start_revision).await }
    })
    .await;
    let via_follower = connect(&cluster.endpoints(&followers[..1])).await;
    let b = retry("watch B", || {
        let mut c = via_follower.clone();
        async move { watch_from(&mut c, start_revision).await }
    })
    .await;
    let task_a = tokio::spawn(collect(
        "A",
        a,
        start_revision,
        Some(cluster.endpoints(&followers)),
    ));
    let task_b = tokio::spawn(collect("B", b, start_revision, None));

    // The writes, in order; the leader dies halfway.
    let nonce = std::process::id();
    let mut written: Vec<Seen> = Vec::new();
    for i in 0..WRITES {
        let key = format!("w/{i:02}");
        let value = format!("value-{i}-{nonce}");
        let put = tokio::spawn(put_once(writer.clone(), key.clone(), value.clone()));
        if i == WRITES / 2 {
            // Most likely while this put is under way.
            eprintln!("killing the leader, node {leader}");
            cluster.kill(leader).await;
        }
        let revision = put.await.expect("writer task");
        written.push((key, value, revision));
    }
    put_once(writer.clone(), LAST_KEY.to_string(), String::new()).await;
    for i in &followers {
        cluster.assert_running(*i);
    }

    // Both watches end at LAST_KEY's event, which follows all the others.
    let deadline = Duration::from_secs(60);
    let (seen_a, resumes_a) = tokio::time::timeout(deadline, task_a)
        .await
        .expect("watch A: all events within 60 s")
        .expect("watch A task");
    let (seen_b, resumes_b) = tokio::time::timeout(deadline, task_b)
        .await
        .expect("watch B: all events within 60 s")
        .expect("watch B task");

    assert!(
        written.windows(2).all(|w| w[0].2 < w[1].2),
        "put revisions not increasing: {written:?}"
    );
    assert_eq!(seen_a, written, "watch A (resumed {resumes_a} times)");
    assert_eq!(seen_b, written, "watch B");
    let revisions =
        |s: &[Seen]| -> Vec<(String, i64)> { s.iter().map(|(k, _, r)| (k.clone(), *r)).collect() };
    assert_eq!(revisions(&seen_a), revisions(&seen_b));
    assert!(
        resumes_a >= 1,
        "watch A, through the killed leader, never broke"
    );
    assert_eq!(resumes_b, 0, "watch B, through a surviving follower, broke");

    // A new leader, and the surviving replicas agree on it.
    let (_, new_leader) = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let mut check = connect(&cluster.endpoints(&followers)).await;
    let all = check
        .get("w/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get w/");
    let stored: Vec<Seen> = all
        .kvs()
        .iter()
        .filter(|kv| kv.key() != LAST_KEY.as_bytes())
        .map(|kv| (text(kv.key()), text(kv.value()), kv.mod_revision()))
        .collect();
    assert_eq!(stored, written, "the keys as stored");
}
