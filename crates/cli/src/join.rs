//! `paxlog node --join URL`: a new replica asks a running cluster for an
//! id and a place as a learner, knowing only its own address and one
//! member's; and, with `--promote`, asks to become a voter once it has
//! caught up.

use crate::client::{self, HttpResponse, TlsClient};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use paxlog_core::Membership;
use paxlog_server::{InitialClusterState, NodeConfig};
use paxlog_storage::{JoinedCluster, JoinedMember};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a joining replica keeps trying to reach the cluster (the other
/// containers may still be starting, or electing a leader).
const JOIN_DEADLINE: Duration = Duration::from_secs(300);
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Talks to the cluster's client API the way this replica is configured
/// to (HTTPS with its certificate when TLS is on; its write token if any).
pub struct ClusterClient {
    http: client::HttpClient,
    tls: Option<TlsClient>,
    headers: Vec<(&'static str, String)>,
}

impl ClusterClient {
    pub fn for_node(cfg: &NodeConfig) -> Result<ClusterClient> {
        let tls = match (&cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
                };
                Some(TlsClient::new(
                    &read(ca)?,
                    Some((&read(cert)?, &read(key)?)),
                )?)
            }
            _ => None,
        };
        let headers = cfg
            .write_token
            .iter()
            .map(|t| ("authorization", format!("Bearer {t}")))
            .collect();
        Ok(ClusterClient {
            http: client::new_client(1),
            tls,
            headers,
        })
    }

    async fn call(&self, method: Method, url: &str, body: Option<Value>) -> Result<HttpResponse> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        match &self.tls {
            Some(tls) if url.starts_with("https://") => {
                tls.request(method, url, &self.headers, body).await
            }
            _ => client::request(&self.http, method, url, &self.headers, body).await,
        }
    }
}

/// `host:port` or a URL: the URL (http, or https when TLS is on).
pub fn endpoint_url(endpoint: &str, tls: bool) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", endpoint.trim_end_matches('/'))
    }
}

fn answer_json(response: &HttpResponse) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(
        |_| json!({ "error": String::from_utf8_lossy(&response.body).into_owned() }),
    )
}

fn error_text(answer: &Value) -> String {
    answer["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| answer.to_string())
}

/// For a replica whose data folder is empty: joins the cluster through
/// `endpoints` and fills in `cfg` (id, cluster id, what it joined). A
/// folder that holds data keeps its identity (the server checks it).
pub async fn join(cfg: &mut NodeConfig, endpoints: &[String]) -> Result<()> {
    if let Some(meta) = paxlog_storage::read_metadata(&cfg.data_dir)? {
        cfg.id = meta.node_id;
        if let Some(joined) = &meta.joined {
            let own = joined.members.iter().find(|m| m.id == meta.node_id);
            if cfg.advertise_peer.is_none() {
                cfg.advertise_peer = own.map(|m| m.peer_addr.clone());
            }
        }
        cfg.joined = meta.joined;
        tracing::info!(
            id = cfg.id,
            "the data folder joined before: starting as that replica"
        );
        return Ok(());
    }
    let Some(peer_addr) = cfg.advertise_peer.clone() else {
        bail!("--join needs --advertise-peer HOST:PORT (the address other replicas dial for this one)");
    };
    let http_addr = cfg.own_http_addr();
    if http_addr.starts_with("0.0.0.0:") || http_addr.starts_with("[::]:") {
        bail!("--join needs --advertise-http HOST:PORT when --http listens on all interfaces ({http_addr})");
    }
    let tls = cfg.tls_ca.is_some();
    let cluster = ClusterClient::for_node(cfg)?;
    let started = Instant::now();
    let mut last_problem = String::new();
    let answer = 'attempts: loop {
        if started.elapsed() > JOIN_DEADLINE {
            bail!(
                "could not join through {} within {} s; last answer: {last_problem}",
                endpoints.join(", "),
                JOIN_DEADLINE.as_secs()
            );
        }
        for endpoint in endpoints {
            let base = endpoint_url(endpoint, tls);
            // The leader places the change; any member says who it is.
            let target = match cluster
                .call(Method::GET, &format!("{base}/v1/members"), None)
                .await
            {
                Ok(r) if r.status.is_success() => {
                    let members = answer_json(&r);
                    match members["leader_http"].as_str() {
                        Some(leader) => endpoint_url(leader, tls),
                        None => {
                            last_problem = format!("{base}: no leader is known yet");
                            continue;
                        }
                    }
                }
                Ok(r) => {
                    last_problem = format!("{base}: {}", error_text(&answer_json(&r)));
                    continue;
                }
                Err(e) => {
                    last_problem = format!("{e:#}");
                    continue;
                }
            };
            let body = json!({ "action": "add", "peer_addr": peer_addr, "http_addr": http_addr, "join": true });
            match cluster
                .call(Method::POST, &format!("{target}/v1/members"), Some(body))
                .await
            {
                Ok(r) if r.status.is_success() => break 'attempts answer_json(&r),
                Ok(r) if r.status.is_client_error() && r.status.as_u16() != 409 => {
                    bail!(
                        "the cluster refused the join: {}",
                        error_text(&answer_json(&r))
                    )
                }
                Ok(r) => last_problem = format!("{target}: {}", error_text(&answer_json(&r))),
                Err(e) => last_problem = format!("{e:#}"),
            }
        }
        tracing::info!(problem = %last_problem, "joining: retrying");
        tokio::time::sleep(RETRY_INTERVAL).await;
    };
    let (joined, id) = parse_join_answer(&answer)?;
    let cluster_id = answer["cluster_id"]
        .as_str()
        .ok_or_else(|| anyhow!("the join answer has no cluster_id: {answer}"))?;
    if cfg.cluster_id != cluster_id {
        bail!(
            "this replica is configured for cluster {:?} but {} serves cluster {cluster_id:?}",
            cfg.cluster_id,
            endpoints.join(", ")
        );
    }
    // A fresh id never promised anything; an id that already votes is this
    // replica come back without its disk: it recovers before it votes.
    let voter = joined.membership.is_voter(paxlog_core::NodeId(id));
    cfg.initial_cluster_state = Some(if voter {
        InitialClusterState::Existing
    } else {
        InitialClusterState::New
    });
    cfg.id = id;
    cfg.joined = Some(joined);
    tracing::info!(
        id,
        cluster = cluster_id,
        recovering = voter,
        "joined the cluster as a learner"
    );
    Ok(())
}

/// A bootstrap replica (one of `--peers`) about to start on an empty
/// folder as `new`: if any of `endpoints` (other members' client
/// addresses) already holds cluster state, this folder lost its replica's
/// promises and accepts, and bootstrapping it would let it vote on state it
/// forgot. Returns what the member reported, if so (the caller starts it as
/// `existing`: it recovers before it votes). Members that do not answer
/// within a few seconds count as having nothing to say (a new cluster
/// whose replicas start together).
pub async fn existing_cluster_state(cfg: &NodeConfig, endpoints: &[String]) -> Option<String> {
    let cluster = ClusterClient::for_node(cfg).ok()?;
    let tls = cfg.tls_ca.is_some();
    for endpoint in endpoints {
        let url = format!("{}/status", endpoint_url(endpoint, tls));
        let call = cluster.call(Method::GET, &url, None);
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), call).await else {
            continue;
        };
        if !r.status.is_success() {
            continue;
        }
        let status = answer_json(&r);
        if status["id"].as_u64() == Some(cfg.id.into()) {
            continue; // itself (an endpoint list shared by all replicas)
        }
        // Something chosen, not merely promised: replicas of a new cluster
        // that start one after another see each other's first campaigns,
        // and taking those for an old cluster would leave two of them
        // recovering, each waiting for the other. (A folder lost before
        // the cluster chose anything at all is not caught.)
        let round = status["chosen_round"].as_u64().unwrap_or(0);
        let epoch = status["membership"]["epoch"].as_u64().unwrap_or(0);
        if round > 0 || epoch > 0 {
            return Some(format!(
                "{endpoint} reports chosen round {round}, membership epoch {epoch}"
            ));
        }
    }
    None
}

fn parse_join_answer(answer: &Value) -> Result<(JoinedCluster, u32)> {
    let bad = || anyhow!("unexpected join answer: {answer}");
    let id = answer["id"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(bad)?;
    let mask = |field: &str| -> Result<u64> {
        let mut mask = 0u64;
        for v in answer[field].as_array().ok_or_else(bad)? {
            let i = v.as_u64().filter(|i| *i < 64).ok_or_else(bad)?;
            mask |= 1 << i;
        }
        Ok(mask)
    };
    let membership = Membership {
        epoch: answer["epoch"].as_u64().ok_or_else(bad)?,
        voters: mask("voters")?,
        learners: mask("learners")?,
    };
    let mut members = Vec::new();
    for m in answer["members"].as_array().ok_or_else(bad)? {
        let (Some(member_id), Some(peer)) = (m["id"].as_u64(), m["peer"].as_str()) else {
            continue; // a member whose address this replica does not know
        };
        members.push(JoinedMember {
            id: u32::try_from(member_id).map_err(|_| bad())?,
            peer_addr: peer.to_string(),
            http_addr: m["http"].as_str().map(str::to_string),
        });
    }
    Ok((
        JoinedCluster {
            membership,
            members,
        },
        id,
    ))
}

/// `--promote`: once this replica runs, asks the leader to make it a voter
/// until it is one (the leader refuses while it lags: 409) or the cluster
/// says it cannot be (it is not a learner any more).
pub async fn promote_when_caught_up(cfg: NodeConfig) {
    let cluster = match ClusterClient::for_node(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "--promote: cannot make a client");
            return;
        }
    };
    let tls = cfg.tls_ca.is_some();
    let own = endpoint_url(&cfg.own_http_addr(), tls);
    let id = cfg.id;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(r) = cluster
            .call(Method::GET, &format!("{own}/v1/members"), None)
            .await
        else {
            continue;
        };
        let members = answer_json(&r);
        let is = |field: &str| {
            members[field]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_u64() == Some(id.into())))
        };
        if is("voters") {
            tracing::info!(id, "this replica is a voter");
            return;
        }
        if !is("learners") {
            continue; // not applied here yet (or removed: nothing to do)
        }
        let Some(leader) = members["leader_http"].as_str() else {
            continue;
        };
        let url = format!("{}/v1/members", endpoint_url(leader, tls));
        let body = json!({ "action": "promote", "id": id });
        match cluster.call(Method::POST, &url, Some(body)).await {
            Ok(r) if r.status.is_success() => {
                tracing::info!(id, "promoted to voter");
                return;
            }
            Ok(r) => {
                tracing::info!(id, answer = %error_text(&answer_json(&r)), "promotion: not yet");
            }
            Err(e) => tracing::info!(id, error = %format!("{e:#}"), "promotion: not yet"),
        }
    }
}
