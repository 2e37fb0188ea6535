//! `paxlog-torture`: a Jepsen-style fault-injection campaign against a real
//! local paxlog cluster (processes + per-link TCP proxies), with a
//! linearizability check of the recorded history.

mod checker;
mod cluster;
mod etcd;
mod history;
mod http;
mod nemesis;
mod proxy;
mod report;
mod workload;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use cluster::{Cluster, Started};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).max(1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NemesisArg {
    Kill,
    Pause,
    Partition,
    Clock,
    Disk,
    /// fsync/fdatasync failures via libfiu (not part of `all`).
    Fsync,
    /// SIGSTOP the leader for 2-4 s, several election timeouts (in about
    /// half the faults with its links cut meanwhile), while clients wait
    /// longer than that (not part of `all`; the client timeout defaults to
    /// 8 s with it): reads queued at the stopped leader are answered after
    /// it resumes, and checked.
    PauseLeader,
    /// Demote a voter other than the leader to a learner, hold 1-3 s,
    /// promote it back (`POST /v1/members` to the leader); every replica is
    /// a voter again after healing.
    Membership,
    /// kill, pause, partition, clock, disk and membership.
    All,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Anomaly {
    /// Reads use consistency=local and one replica is cut off: stale reads
    /// that the checker must flag.
    LocalReads,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ApiArg {
    Http,
    Etcd,
}

#[derive(Parser, Debug)]
#[command(
    name = "paxlog-torture",
    about = "Fault-injection campaign against a local paxlog cluster"
)]
struct Args {
    /// Seconds of workload (faults run during this time).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Faults to inject (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    nemesis: Vec<NemesisArg>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    nodes: u8,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The paxlog binary (build it with `cargo build --release -p paxlog-cli`).
    #[arg(long, default_value = "target/release/paxlog")]
    bin: PathBuf,
    #[arg(long, default_value = "torture-report")]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// The API the clients use: paxlog's HTTP API, or etcd's v3 gRPC API.
    #[arg(long, value_enum, default_value = "http")]
    api: ApiArg,
    /// Concurrent key slots.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Operations per key before its slot moves on to a fresh key (bounds
    /// the checker's work).
    #[arg(long, default_value_t = 120)]
    ops_per_key: u64,
    /// Client request timeout, ms [default: 2000; 8000 with pause-leader].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Each client sleeps up to this long between operations, ms.
    #[arg(long, default_value_t = 40)]
    think_ms: u64,
    /// Run a known-bad configuration the checker must catch (exit code 2
    /// when caught).
    #[arg(long, value_enum)]
    anomaly: Option<Anomaly>,
    /// Seconds to wait for every replica's /db to agree after healing.
    #[arg(long, default_value_t = 90)]
    converge_secs: u64,
    /// Print progress.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paxlog-torture: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paxlog-torture: FAILED: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    let bin = std::fs::canonicalize(&args.bin).with_context(|| {
        format!(
            "paxlog binary {} not found; build it with `cargo build --release -p paxlog-cli` or pass --bin",
            args.bin.display()
        )
    })?;
    let n = args.nodes as usize;
    let mut notes = Vec::new();
    let mut kinds: Vec<nemesis::Kind> = Vec::new();
    for k in &args.nemesis {
        use nemesis::Kind as K;
        let add: &[K] = match k {
            NemesisArg::Kill => &[K::Kill],
            NemesisArg::Pause => &[K::Pause],
            NemesisArg::Partition => &[K::Partition],
            NemesisArg::Clock => &[K::Clock],
            NemesisArg::Disk => &[K::Disk],
            NemesisArg::Fsync => &[K::Fsync],
            NemesisArg::PauseLeader => &[K::PauseLeader],
            NemesisArg::Membership => &[K::Membership],
            NemesisArg::All => &[
                K::Kill,
                K::Pause,
                K::Partition,
                K::Clock,
                K::Disk,
                K::Membership,
            ],
            NemesisArg::None => &[],
        };
        for a in add {
            if !kinds.contains(a) {
                kinds.push(*a);
            }
        }
    }
    if kinds.contains(&nemesis::Kind::Clock) && cluster::faketime_lib().is_none() {
        kinds.retain(|k| *k != nemesis::Kind::Clock);
        notes.push(
            "clock nemesis skipped: libfaketime is not installed (apt-get install faketime)"
                .to_string(),
        );
    }
    if kinds.contains(&nemesis::Kind::Fsync) && cluster::fiu_libs().is_none() {
        kinds.retain(|k| *k != nemesis::Kind::Fsync);
        notes.push(
            "fsync nemesis skipped: libfiu is not installed (apt-get install fiu-utils)"
                .to_string(),
        );
    }
    let pause_leader = kinds.contains(&nemesis::Kind::PauseLeader);
    let timeout_ms = args
        .timeout_ms
        .unwrap_or(if pause_leader { 8000 } else { 2000 });
    if pause_leader {
        let longest = nemesis::PAUSE_LEADER_MS.1;
        if timeout_ms < longest + 2000 {
            bail!(
                "--nemesis pause-leader stops the leader for up to {longest} ms: --timeout-ms \
                 must be at least {} so that requests queued at the stopped leader are answered \
                 (and checked) after it resumes, not abandoned",
                longest + 2000
            );
        }
        notes.push(format!(
            "pause-leader: the leader is stopped (SIGSTOP) for {}-{} ms and clients wait up to {timeout_ms} ms, so reads sent to it while it is stopped are answered after it resumes and checked",
            nemesis::PAUSE_LEADER_MS.0,
            nemesis::PAUSE_LEADER_MS.1
        ));
    }
    let anomaly = args.anomaly.is_some();
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let mut cluster = Cluster::new(&bin, n, &out, Vec::new()).await?;
    let say = |m: &str| {
        if args.verbose {
            eprintln!("[torture] {m}");
        }
    };
    for i in 0..n {
        cluster.spawn(i, &[])?;
    }
    for i in 0..n {
        match cluster.wait_serving(i, Duration::from_secs(30)).await {
            Started::Serving => {}
            s => bail!(
                "replica {i} did not start ({s:?}); see {}",
                cluster.log_path(i).display()
            ),
        }
    }
    let t_leader = Instant::now();
    while cluster.leader().await.is_none() {
        if t_leader.elapsed() > Duration::from_secs(30) {
            bail!("no leader elected within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say("cluster up, leader elected");

    let t0 = Instant::now();
    let api = match args.api {
        ApiArg::Http => workload::Api::Http,
        ApiArg::Etcd => workload::Api::Etcd(etcd::channels(&cluster.grpc)?),
    };
    let running = workload::start(workload::Workload {
        nodes: cluster.http.clone(),
        api,
        clients: args.clients,
        keys: args.keys,
        ops_per_key: args.ops_per_key,
        timeout: Duration::from_millis(timeout_ms),
        think_ms: args.think_ms,
        local_reads: anomaly,
        seed: args.seed,
        t0,
    });
    let until = t0 + Duration::from_secs(args.time);
    cluster.t0 = t0;
    let mut nem = nemesis::Nemesis::new(&mut cluster, args.seed, t0);
    if anomaly {
        // Cut one follower off for most of the run; clients keep reading
        // from it with consistency=local.
        nem.idle_until(Instant::now() + Duration::from_secs(2))
            .await;
        let leader = nem.cluster.leader().await.unwrap_or(0);
        let victim = (leader + 1) % n;
        let others: Vec<usize> = (0..n).filter(|&j| j != victim).collect();
        let start = t0.elapsed().as_secs_f64() * 1e3;
        nem.cluster.net.split(&[victim], &others);
        nem.mark();
        nem.idle_until(until - Duration::from_secs(1)).await;
        nem.cluster.net.heal_all();
        nem.faults.push(history::FaultRec {
            kind: "partition".into(),
            detail: format!("anomaly: isolate follower {victim}, reads are local"),
            nodes: vec![victim],
            leader_targeted: false,
            start_ms: start,
            end_ms: t0.elapsed().as_secs_f64() * 1e3,
            note: None,
        });
        nem.mark();
        nem.idle_until(until).await;
    } else if kinds.is_empty() {
        nem.idle_until(until).await;
    } else {
        nem.run(
            &kinds,
            Duration::from_secs(2).min(Duration::from_secs(args.time / 4)),
            until,
        )
        .await?;
        nem.idle_until(until).await;
    }
    say("workload done; healing");
    let ops = running.finish().await;
    nem.heal_all().await;
    let end_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut faults = std::mem::take(&mut nem.faults);
    faults.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let timeline = std::mem::take(&mut nem.timeline);
    let mut failures = std::mem::take(&mut nem.failures);
    notes.append(&mut nem.notes);
    drop(nem);

    // Convergence: every replica's /db the same, at the same round.
    say("waiting for convergence");
    let conv_start = Instant::now();
    let mut converged: Option<serde_json::Value> = None;
    let mut last_rounds = Vec::new();
    while conv_start.elapsed() < Duration::from_secs(args.converge_secs) {
        let mut dbs = Vec::new();
        for i in 0..n {
            dbs.push(cluster::db(cluster.http[i]).await);
        }
        last_rounds = dbs
            .iter()
            .map(|d| d.as_ref().map(|d| d["current_round"].clone()))
            .collect();
        if dbs.iter().all(|d| d.is_some()) && dbs.windows(2).all(|w| w[0] == w[1]) {
            converged = dbs[0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let convergence_secs = conv_start.elapsed().as_secs_f64();
    let mut check_ops = ops.clone();
    match &converged {
        Some(db) => {
            // The converged state is a final read of every key we touched.
            let mut keys: Vec<String> = ops.iter().map(|o| o.key.clone()).collect();
            keys.sort();
            keys.dedup();
            let at = t0.elapsed().as_secs_f64() * 1e3;
            for key in keys {
                let v = &db["db"][&key];
                // Over etcd's API values are bytes: the store keeps the
                // decimal text as a JSON string.
                let read = match args.api {
                    ApiArg::Http => v.as_u64(),
                    ApiArg::Etcd => v.as_str().and_then(|s| s.parse().ok()),
                };
                if !v.is_null() && read.is_none() {
                    failures.push(format!("key {key} holds a value the clients never wrote: {v}"));
                    continue;
                }
                check_ops.push(history::OpRec {
                    client: usize::MAX,
                    node: usize::MAX,
                    key,
                    kind: history::Kind::Read,
                    value: None,
                    expected: None,
                    read,
                    cas_ok: None,
                    cas_current: None,
                    outcome: history::Outcome::Ok,
                    invoke_ms: at,
                    complete_ms: at,
                    error: None,
                });
            }
        }
        None => failures.push(format!(
            "replicas did not converge within {} s after healing (current_round per replica: {last_rounds:?})",
            args.converge_secs
        )),
    }
    cluster.shutdown();

    say("checking linearizability");
    let check_start = Instant::now();
    let verdicts = checker::check_all(&check_ops, Duration::from_secs(180), anomaly);
    let check_secs = check_start.elapsed().as_secs_f64();

    let rep = report::build(report::Inputs {
        nodes: n,
        seed: args.seed,
        time_s: args.time,
        nemesis: kinds.iter().map(|k| k.name().to_string()).collect(),
        anomaly: args.anomaly.map(|_| "local-reads".to_string()),
        ops: &ops,
        faults: &faults,
        timeline: &timeline,
        verdicts: &verdicts,
        converged: converged.is_some(),
        convergence_secs,
        check_secs,
        end_ms,
        failures: failures.clone(),
        notes: notes.clone(),
    });
    report::write(&out, &rep, &ops, &faults, end_ms)?;

    let bad: Vec<&checker::KeyVerdict> = verdicts
        .iter()
        .filter(|v| v.linearizable == Some(false))
        .collect();
    let undecided = verdicts.iter().filter(|v| v.linearizable.is_none()).count();
    println!("{}", report::summary(&rep));
    println!("report: {}", out.join("report.md").display());
    if anomaly {
        if !bad.is_empty() {
            println!(
                "ANOMALY DETECTED (as expected): history is non-linearizable on {} key(s), e.g. {}",
                bad.len(),
                bad[0].key
            );
            return Ok(ExitCode::from(2));
        }
        eprintln!("paxlog-torture: FAILED: --anomaly local-reads: the checker did not flag the stale reads");
        return Ok(ExitCode::from(1));
    }
    let mut problems = failures;
    if !bad.is_empty() {
        let names: Vec<&str> = bad.iter().take(5).map(|v| v.key.as_str()).collect();
        problems.push(format!(
            "NON-LINEARIZABLE history on {} key(s): {names:?}",
            bad.len()
        ));
    }
    if undecided > 0 {
        problems.push(format!("checker did not finish {undecided} key(s) in time"));
    }
    if !ops.iter().any(|o| o.is_successful_write()) {
        problems.push("no write succeeded during the whole run".into());
    }
    if problems.is_empty() {
        println!("PASS: every check passed");
        let _ = std::fs::remove_dir_all(out.join("data"));
        let _ = std::fs::remove_dir_all(out.join("bin"));
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("paxlog-torture: FAILED: {p}");
        }
        Ok(ExitCode::from(1))
    }
}
