//! `paxlog bench --protocol grpc`: the closed-loop generator over etcd's
//! v3 gRPC API, so one client (this one) measures etcd and paxlog through
//! the same protocol. Each client has its own HTTP/2 connection.
//!
//! Workloads: `write` (Put), `read` (Range, linearizable or serializable),
//! `mixed:R`, `txn` (a Txn that compares the key's version and puts on
//! success, reads on failure), and `watch` (clients write under a prefix
//! while `--watchers` watches follow it: the rate counts events delivered
//! to the watchers, the latencies are the writes').

use crate::bench::{BenchArgs, Xorshift};
use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use paxlog_etcd_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use pb::watch_client::WatchClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// What one client did while measuring.
pub struct Counts {
    pub histogram: Histogram<u64>,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
    Txn,
}

/// `http://host:port` or `host:port` as a gRPC endpoint, one connection.
async fn connect(endpoint: &str) -> Result<Channel> {
    let address = endpoint
        .trim_end_matches('/')
        .trim_start_matches("http://")
        .to_string();
    Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

fn key_of(key: u64) -> Vec<u8> {
    format!("bench-{key}").into_bytes()
}

fn txn_of(key: Vec<u8>, value: Vec<u8>) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(Request::RequestRange(pb::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// One closed-loop client of the KV service.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    args: Arc<BenchArgs>,
    index: usize,
    read_fraction: f64,
    txn: bool,
    serializable: bool,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Counts> {
    let endpoint = &args.endpoints[index % args.endpoints.len()];
    let mut kv = KvClient::new(connect(endpoint).await?);
    let value = vec![b'x'; args.value_size];
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) * 0x2545_F491_4F6C_DD1D));
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    while !stop.load(Ordering::Relaxed) {
        let key = key_of(rng.next() % args.keys.max(1));
        let kind = if txn {
            Kind::Txn
        } else if rng.unit() < read_fraction {
            Kind::Read
        } else {
            Kind::Write
        };
        let started = Instant::now();
        let outcome = match kind {
            Kind::Write => kv
                .put(pb::PutRequest {
                    key,
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Kind::Read => kv
                .range(pb::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Kind::Txn => kv.txn(txn_of(key, value.clone())).await.map(|_| ()),
        };
        let micros = started.elapsed().as_micros() as u64;
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match outcome {
            Ok(()) => {
                ops += 1;
                let _ = histogram.record(micros.max(1));
            }
            Err(status) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{status}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(Counts {
        histogram,
        ops,
        errors,
        first_error,
    })
}

/// Writes every key once, so reads and txns find them.
pub async fn preload(args: &BenchArgs) -> Result<()> {
    let mut kv = KvClient::new(connect(&args.endpoints[0]).await?);
    let value = vec![b'x'; args.value_size];
    for key in 0..args.keys {
        let mut attempts = 0;
        while let Err(status) = kv
            .put(pb::PutRequest {
                key: key_of(key),
                value: value.clone(),
                ..Default::default()
            })
            .await
        {
            attempts += 1;
            if attempts >= 20 {
                bail!("could not preload keys: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `watchers` watches on the `bench-` prefix, spread over the endpoints;
/// returns the count of events they receive while `measuring`.
pub async fn start_watchers(
    args: &BenchArgs,
    watchers: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<AtomicU64>, Vec<tokio::task::JoinHandle<Result<()>>>)> {
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(watchers);
    for index in 0..watchers {
        let endpoint = args.endpoints[index % args.endpoints.len()].clone();
        let mut client = WatchClient::new(connect(&endpoint).await?);
        let (requests, outbound) = tokio::sync::mpsc::channel(1);
        requests
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: b"bench-".to_vec(),
                        range_end: b"bench.".to_vec(),
                        ..Default::default()
                    },
                )),
            })
            .await
            .map_err(|_| anyhow!("watch request not sent"))?;
        let mut responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .with_context(|| format!("cannot watch at {endpoint}"))?
            .into_inner();
        let (delivered, measuring, stop) = (delivered.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Held open: dropping it would end the watch stream.
            let _requests = requests;
            while !stop.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(200), responses.message());
                match next.await {
                    Err(_) => continue,
                    Ok(Ok(Some(response))) => {
                        if response.canceled {
                            bail!("a watch was canceled: {}", response.cancel_reason);
                        }
                        if measuring.load(Ordering::Relaxed) {
                            delivered.fetch_add(response.events.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(Ok(None)) => bail!("a watch stream ended"),
                    Ok(Err(status)) => bail!("a watch failed: {status}"),
                }
            }
            Ok(())
        }));
    }
    Ok((delivered, tasks))
}

/// Which KV workload `text` names: (read fraction, txn).
pub fn kv_workload(text: &str) -> Result<(f64, bool)> {
    match text {
        "txn" => Ok((0.0, true)),
        other => Ok((crate::bench::read_fraction(other)?, false)),
    }
}
