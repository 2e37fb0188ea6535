//! `paxlog bench`: a closed-loop load generator. Each client owns one
//! connection and sends its next request as soon as the previous one
//! answered. Over HTTP/1.1 it drives paxlog's key-value API or etcd's v3
//! JSON gateway; over gRPC (`--protocol grpc`, see `bench_grpc`) it speaks
//! etcd's v3 API to either, so the same client measures both.

use crate::bench_grpc;
use crate::client::{self, HttpClient};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// http: paxlog's HTTP API or etcd's JSON gateway (--target);
    /// grpc: etcd's v3 gRPC API, which both serve.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// With --workload watch: watches that follow the written keys.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Seconds of measurement (after warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// write, read, or mixed:R with R the read fraction (e.g. mixed:0.9);
    /// with --protocol grpc also txn and watch.
    #[arg(long, default_value = "write")]
    workload: String,
    #[arg(long, value_enum, default_value_t = BenchConsistency::Linearizable)]
    read_consistency: BenchConsistency,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: u64,
    #[arg(long, value_enum, default_value_t = Target::Paxlog)]
    target: Target,
    /// Endpoints; client i uses endpoint i mod n.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:5000,http://127.0.0.1:5001,http://127.0.0.1:5002"
    )]
    pub(crate) endpoints: Vec<String>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Protocol {
    Http,
    Grpc,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BenchConsistency {
    Linearizable,
    Local,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Paxlog,
    Etcd,
}

#[derive(Serialize)]
struct Summary {
    target: Target,
    workload: String,
    clients: usize,
    seconds: f64,
    ops: u64,
    errors: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    first_error: Option<String>,
}

struct Operation {
    method: Method,
    url: String,
    body: Option<Bytes>,
}

struct Workload {
    read_fraction: f64,
}

fn parse_workload(text: &str) -> Result<Workload> {
    Ok(Workload {
        read_fraction: read_fraction(text)?,
    })
}

/// The share of reads a workload name asks for.
pub(crate) fn read_fraction(text: &str) -> Result<f64> {
    let read_fraction = match text {
        "write" => 0.0,
        "read" => 1.0,
        other => match other.strip_prefix("mixed:") {
            Some(r) => {
                let r: f64 = r
                    .parse()
                    .with_context(|| format!("bad read fraction in '{other}'"))?;
                if !(0.0..=1.0).contains(&r) {
                    bail!("read fraction must be within 0..=1");
                }
                r
            }
            None => bail!("unknown workload '{other}': use write, read, or mixed:R"),
        },
    };
    Ok(read_fraction)
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Generator {
    args: BenchArgs,
    value: String,
}

impl Generator {
    fn operation(&self, endpoint: &str, key: u64, read: bool) -> Operation {
        let endpoint = endpoint.trim_end_matches('/');
        let key = format!("bench-{key}");
        match (self.args.target, read) {
            (Target::Paxlog, false) => Operation {
                method: Method::PUT,
                url: format!("{endpoint}/v1/kv/{key}"),
                body: Some(Bytes::from(format!("\"{}\"", self.value))),
            },
            (Target::Paxlog, true) => {
                let consistency = match self.args.read_consistency {
                    BenchConsistency::Linearizable => "linearizable",
                    BenchConsistency::Local => "local",
                };
                Operation {
                    method: Method::GET,
                    url: format!("{endpoint}/v1/kv/{key}?consistency={consistency}"),
                    body: None,
                }
            }
            (Target::Etcd, false) => Operation {
                method: Method::POST,
                url: format!("{endpoint}/v3/kv/put"),
                body: Some(Bytes::from(format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    base64(key.as_bytes()),
                    base64(self.value.as_bytes())
                ))),
            },
            (Target::Etcd, true) => {
                let serializable = self.args.read_consistency == BenchConsistency::Local;
                Operation {
                    method: Method::POST,
                    url: format!("{endpoint}/v3/kv/range"),
                    body: Some(Bytes::from(format!(
                        "{{\"key\":\"{}\",\"serializable\":{serializable}}}",
                        base64(key.as_bytes())
                    ))),
                }
            }
        }
    }
}

/// A tiny per-client PRNG (xorshift): the generator needs no crypto.
pub(crate) struct Xorshift(pub(crate) u64);

impl Xorshift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

use crate::bench_grpc::Counts as ClientResult;

async fn run_client(
    generator: Arc<Generator>,
    index: usize,
    workload: Arc<Workload>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<ClientResult> {
    let http: HttpClient = client::new_client(1);
    let endpoints = &generator.args.endpoints;
    let endpoint = endpoints[index % endpoints.len()].clone();
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) * 0x2545_F491_4F6C_DD1D));
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    while !stop.load(Ordering::Relaxed) {
        let key = rng.next() % generator.args.keys.max(1);
        let read = rng.unit() < workload.read_fraction;
        let op = generator.operation(&endpoint, key, read);
        let started = Instant::now();
        let outcome = client::request(&http, op.method, &op.url, &[], op.body).await;
        let micros = started.elapsed().as_micros() as u64;
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match outcome {
            // A read of a key not written yet is a valid answer.
            Ok(r) if r.status.is_success() || (read && r.status.as_u16() == 404) => {
                ops += 1;
                let _ = histogram.record(micros.max(1));
            }
            Ok(r) => {
                errors += 1;
                first_error.get_or_insert_with(|| {
                    format!("{}: {}", r.status, String::from_utf8_lossy(&r.body))
                });
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(ClientResult {
        histogram,
        ops,
        errors,
        first_error,
    })
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.clients == 0 || args.clients > 10_000 {
        bail!("--clients must be 1..=10000");
    }
    if args.endpoints.is_empty() {
        bail!("give at least one endpoint");
    }
    let duration_ok = args.duration > 0.0 && args.duration <= 3600.0;
    if !duration_ok || !(0.0..=600.0).contains(&args.warmup) {
        bail!("--duration must be in (0, 3600] seconds and --warmup in [0, 600]");
    }
    if args.value_size > 60_000 {
        bail!("--value-size must be at most 60000 bytes");
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.clients);
    let mut watchers = None;
    if args.protocol == Protocol::Grpc {
        let shared = Arc::new(args.clone());
        let watch = args.workload == "watch";
        let (read_fraction, txn) = if watch {
            (0.0, false)
        } else {
            bench_grpc::kv_workload(&args.workload)?
        };
        if read_fraction > 0.0 || txn {
            bench_grpc::preload(&args).await?;
        }
        if watch {
            if !(1..=10_000).contains(&args.watchers) {
                bail!("--watchers must be 1..=10000");
            }
            watchers = Some(
                bench_grpc::start_watchers(&args, args.watchers, measuring.clone(), stop.clone())
                    .await?,
            );
        }
        let serializable = args.read_consistency == BenchConsistency::Local;
        for index in 0..args.clients {
            tasks.push(tokio::spawn(bench_grpc::run_client(
                shared.clone(),
                index,
                read_fraction,
                txn,
                serializable,
                measuring.clone(),
                stop.clone(),
            )));
        }
    } else {
        let workload = Arc::new(parse_workload(&args.workload)?);
        let generator = Arc::new(Generator {
            value: "x".repeat(args.value_size),
            args: args.clone(),
        });
        if workload.read_fraction > 0.0 {
            preload(&generator).await?;
        }
        for index in 0..args.clients {
            tasks.push(tokio::spawn(run_client(
                generator.clone(),
                index,
                workload.clone(),
                measuring.clone(),
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    for task in tasks {
        let result = task.await.context("a client task failed")??;
        histogram.add(&result.histogram)?;
        ops += result.ops;
        errors += result.errors;
        if first_error.is_none() {
            first_error = result.first_error;
        }
    }
    // Watch fan-out: the rate is the events the watchers received.
    if let Some((delivered, watch_tasks)) = watchers {
        for task in watch_tasks {
            if let Err(e) = task.await.context("a watch task failed")? {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        ops = delivered.load(Ordering::Relaxed);
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let summary = Summary {
        target: args.target,
        workload: args.workload.clone(),
        clients: args.clients,
        seconds,
        ops,
        errors,
        ops_per_sec: ops as f64 / seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        first_error,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{:?} {} clients={} ops/s={:.0} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms ops={} errors={}",
            args.target == Target::Paxlog,
            summary.workload,
            summary.clients,
            summary.ops_per_sec,
            summary.p50_ms,
            summary.p99_ms,
            summary.p999_ms,
            summary.max_ms,
            summary.ops,
            summary.errors
        );
        if let Some(e) = &summary.first_error {
            println!("first error: {e}");
        }
    }
    // A run with failed requests is not a measurement to quote.
    if summary.errors > 0 {
        anyhow::bail!(
            "{} of {} requests failed (first: {})",
            summary.errors,
            summary.ops + summary.errors,
            summary.first_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

/// Writes every key once so reads find them.
async fn preload(generator: &Arc<Generator>) -> Result<()> {
    let http = client::new_client(16);
    let endpoint = generator.args.endpoints[0].clone();
    let mut pending = Vec::new();
    for key in 0..generator.args.keys {
        let op = generator.operation(&endpoint, key, false);
        let http = http.clone();
        pending.push(tokio::spawn(async move {
            for _ in 0..20 {
                if let Ok(r) =
                    client::request(&http, op.method.clone(), &op.url, &[], op.body.clone()).await
                {
                    if r.status.is_success() {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }));
        if pending.len() >= 32 {
            for task in pending.drain(..) {
                if !task.await.unwrap_or(false) {
                    bail!("could not preload keys at {endpoint}");
                }
            }
        }
    }
    for task in pending {
        if !task.await.unwrap_or(false) {
            bail!("could not preload keys at {endpoint}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"bench-12"), "YmVuY2gtMTI=");
    }

    #[test]
    fn workloads_parse() {
        assert_eq!(
            parse_workload("write").map(|w| w.read_fraction).ok(),
            Some(0.0)
        );
        assert_eq!(
            parse_workload("mixed:0.9").map(|w| w.read_fraction).ok(),
            Some(0.9)
        );
        assert!(parse_workload("mixed:2").is_err());
        assert!(parse_workload("bogus").is_err());
    }
}
