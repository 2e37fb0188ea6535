//! Concurrent clients: linearizable (or local) reads, writes and CAS on a
//! few key slots; each slot moves to a fresh key after `ops_per_key`
//! operations so that per-key histories stay small for the checker.

use crate::etcd::{self, Answer, EtcdError};
use crate::history::{Kind, OpRec, Outcome};
use crate::http::{self, HttpError};
use crate::Rng;
use paxlog_etcd_proto::etcdserverpb::kv_client::KvClient;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Which client API the workload speaks.
#[derive(Clone)]
pub enum Api {
    /// paxlog's own HTTP API (with request ids: exactly-once retries).
    Http,
    /// etcd's v3 gRPC API, one channel per replica (in `nodes` order).
    Etcd(Vec<KvClient<Channel>>),
}

pub struct Workload {
    pub nodes: Vec<SocketAddr>,
    pub api: Api,
    pub clients: usize,
    pub keys: usize,
    pub ops_per_key: u64,
    pub timeout: Duration,
    pub think_ms: u64,
    pub local_reads: bool,
    pub seed: u64,
    pub t0: Instant,
}

pub struct Running {
    pub stop: Arc<AtomicBool>,
    pub history: Arc<Mutex<Vec<OpRec>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn finish(self) -> Vec<OpRec> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.await;
        }
        let mut h = std::mem::take(&mut *self.history.lock().unwrap_or_else(|p| p.into_inner()));
        h.sort_by(|a, b| a.invoke_ms.total_cmp(&b.invoke_ms));
        h
    }
}

pub fn key_name(slot: usize, generation: u64) -> String {
    format!("t{slot}-g{generation}")
}

pub fn start(w: Workload) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..w.keys).map(|_| AtomicU64::new(0)).collect());
    let w = Arc::new(w);
    let handles = (0..w.clients)
        .map(|c| {
            let (w, stop, history, counters) =
                (w.clone(), stop.clone(), history.clone(), counters.clone());
            tokio::spawn(async move { client(c, &w, &stop, &history, &counters).await })
        })
        .collect();
    Running {
        stop,
        history,
        handles,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
}

async fn client(
    c: usize,
    w: &Workload,
    stop: &AtomicBool,
    history: &Mutex<Vec<OpRec>>,
    counters: &[AtomicU64],
) {
    let mut rng = Rng::new(w.seed ^ (0x5151_0000 + c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let client_id = 0x7000_0000_0000 + ((w.seed & 0xffff) << 16) + c as u64;
    let mut seq = 0u64;
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let slot = rng.below(w.keys as u64) as usize;
        let k = counters[slot].fetch_add(1, Ordering::SeqCst);
        let key = key_name(slot, k / w.ops_per_key);
        let node = rng.below(w.nodes.len() as u64) as usize;
        let addr = w.nodes[node];
        seq += 1;
        let value = (c as u64 + 1) * 10_000_000 + seq;
        let roll = rng.below(100);
        let kind = if roll < 50 {
            Kind::Read
        } else if roll < 80 {
            Kind::Write
        } else {
            Kind::Cas
        };
        let mut rec = OpRec {
            client: c,
            node,
            key: key.clone(),
            kind,
            value: None,
            expected: None,
            read: None,
            cas_ok: None,
            cas_current: None,
            outcome: Outcome::Fail,
            invoke_ms: 0.0,
            complete_ms: 0.0,
            error: None,
        };
        let ids = [
            ("x-paxlog-client-id", client_id.to_string()),
            ("x-paxlog-request-seq", seq.to_string()),
        ];
        let invoke = w.t0.elapsed();
        if let Api::Etcd(clients) = &w.api {
            let mut client = clients[node].clone();
            let answer = match kind {
                Kind::Read => etcd::read(&mut client, &key, w.local_reads, w.timeout).await,
                Kind::Write => {
                    rec.value = Some(value);
                    etcd::write(&mut client, &key, value, w.timeout).await
                }
                Kind::Cas => {
                    rec.value = Some(value);
                    rec.expected = seen.get(&key).copied().flatten();
                    etcd::cas(&mut client, &key, rec.expected, value, w.timeout).await
                }
            };
            rec.invoke_ms = invoke.as_secs_f64() * 1e3;
            rec.complete_ms = w.t0.elapsed().as_secs_f64() * 1e3;
            judge_etcd(&mut rec, answer);
        } else {
            let result = match kind {
                Kind::Read => {
                    let q = if w.local_reads {
                        "local"
                    } else {
                        "linearizable"
                    };
                    let path = format!("/v1/kv/{key}?consistency={q}");
                    http::request(addr, "GET", &path, &[], None, w.timeout).await
                }
                Kind::Write => {
                    rec.value = Some(value);
                    let path = format!("/v1/kv/{key}");
                    http::request(addr, "PUT", &path, &ids, Some(&json!(value)), w.timeout).await
                }
                Kind::Cas => {
                    rec.value = Some(value);
                    rec.expected = seen.get(&key).copied().flatten();
                    let body = match rec.expected {
                        Some(e) => json!({ "expected": e, "value": value }),
                        None => json!({ "value": value }),
                    };
                    let path = format!("/v1/cas/{key}");
                    http::request(addr, "POST", &path, &ids, Some(&body), w.timeout).await
                }
            };
            rec.invoke_ms = invoke.as_secs_f64() * 1e3;
            rec.complete_ms = w.t0.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(r) if r.status == 200 => {
                    rec.outcome = Outcome::Ok;
                    match kind {
                        Kind::Read => {
                            rec.read = as_u64(&r.body["value"]);
                            if rec.read.is_none() {
                                rec.outcome = Outcome::Fail;
                                rec.error = Some(format!("unexpected read body {}", r.body));
                            }
                        }
                        Kind::Write => {}
                        Kind::Cas => {
                            rec.cas_ok = r.body["succeeded"].as_bool();
                            rec.cas_current = match r.body.get("current") {
                                Some(Value::Null) => Some(None),
                                Some(v) => as_u64(v).map(Some),
                                None => None,
                            };
                            if rec.cas_ok.is_none() {
                                rec.outcome = Outcome::Info;
                                rec.error = Some(format!("unexpected CAS body {}", r.body));
                            }
                        }
                    }
                }
                Ok(r) if r.status == 404 && kind == Kind::Read => {
                    rec.outcome = Outcome::Ok;
                    rec.read = None;
                }
                Ok(r) => {
                    // 4xx: refused before it ran; 5xx: may still be applied.
                    rec.outcome = if kind == Kind::Read || (400..500).contains(&r.status) {
                        Outcome::Fail
                    } else {
                        Outcome::Info
                    };
                    let msg = r.body["error"].as_str().unwrap_or("").to_string();
                    rec.error = Some(format!("HTTP {}: {}", r.status, msg));
                }
                Err(e) => {
                    rec.outcome = match (&e, kind) {
                        (_, Kind::Read) | (HttpError::Connect(_), _) => Outcome::Fail,
                        _ => Outcome::Info,
                    };
                    rec.error = Some(e.to_string());
                }
            }
        }
        // What this client now believes the key holds (for its next CAS).
        if rec.outcome == Outcome::Ok {
            match kind {
                Kind::Read => {
                    seen.insert(key.clone(), rec.read);
                }
                Kind::Write => {
                    seen.insert(key.clone(), Some(value));
                }
                Kind::Cas => {
                    if let Some(cur) = rec.cas_current {
                        seen.insert(key.clone(), cur);
                    }
                }
            }
        }
        history.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
        if w.think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(w.think_ms + 1))).await;
        }
    }
}

/// Records how an etcd request ended.
fn judge_etcd(rec: &mut OpRec, answer: Result<Answer, EtcdError>) {
    match answer {
        Ok(Answer::Read(value)) => {
            rec.outcome = Outcome::Ok;
            rec.read = value;
        }
        Ok(Answer::Written) => rec.outcome = Outcome::Ok,
        Ok(Answer::Cas { succeeded, current }) => {
            rec.outcome = Outcome::Ok;
            rec.cas_ok = Some(succeeded);
            rec.cas_current = current;
        }
        Err(e) => {
            // A read that failed changed nothing; a write whose answer was
            // lost may have been applied (etcd has no request ids).
            rec.outcome = match (&e, rec.kind) {
                (_, Kind::Read) | (EtcdError::Refused(_), _) => Outcome::Fail,
                (EtcdError::Unknown(_), _) => Outcome::Info,
            };
            rec.error = Some(e.to_string());
        }
    }
}
