//! `paxlog`: run a replica or a local cluster, talk to one as a client,
//! inspect a data folder, and measure.

mod bench;
mod bench_grpc;
mod certs;
mod client;
mod join;
mod watch;

/// mimalloc: measured faster than the system allocator on the replica's
/// allocation pattern (many small, short-lived buffers across threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use paxlog_server::{InitialClusterState, NodeConfig};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "paxlog",
    version,
    about = "A Multi-Paxos replicated log and key-value store"
)]
struct Cli {
    /// Log format for node and cluster.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PAXLOG_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LeaseVerb {
    Grant,
    Keepalive,
    Revoke,
    Get,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MemberVerb {
    List,
    Add,
    Promote,
    Demote,
    Remove,
    Replace,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Verb {
    /// Run one replica.
    Node(Box<NodeArgs>),
    /// Run a local cluster (3 replicas by default) on this machine.
    Cluster(ClusterArgs),
    /// Set KEY to VALUE (JSON, or else taken as a string).
    Put {
        key: String,
        value: String,
        /// Attach the key to this lease (it goes when the lease does).
        #[arg(long)]
        lease: Option<u64>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Leases: `grant TTL_MS`, `keepalive ID` (once, or with --keep until
    /// stopped), `revoke ID` (its keys go too), `get ID`.
    Lease {
        #[arg(value_enum)]
        action: LeaseVerb,
        /// The TTL in milliseconds (grant) or the lease id.
        arg: u64,
        /// keepalive: keep it alive until stopped (every third of its TTL).
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Read KEY.
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
        consistency: ReadConsistency,
        /// Wait until the replica has applied this round (read-your-writes).
        #[arg(long)]
        min_round: Option<u64>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Delete KEY.
    Delete {
        key: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Set KEY to NEW only if it holds OLD (`--expect OLD`) or is absent (`--absent`).
    Cas {
        key: String,
        new: String,
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expect: Option<String>,
        #[arg(long)]
        absent: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// List keys starting with PREFIX.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Run a command of the seed's language, e.g. 'li += [1, 2]'.
    Command {
        command: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// A replica's status (role, leader, rounds, peers).
    Status {
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// The cluster's members (`list`), or one change: `add ADDR` (a new
    /// replica at peer address ADDR, as a learner; or `add ID` for one
    /// listed in --peers), `promote ID` (learner to voter), `demote ID`,
    /// `remove ID`, `replace ID ADDR` (add ADDR, promote it once it has
    /// caught up, then remove ID). Changes go to the leader (endpoints are
    /// tried until it answers).
    Member {
        #[arg(value_enum)]
        action: MemberVerb,
        /// The replica's id, or for `add`, a new replica's peer address.
        target: Option<String>,
        /// For `replace`: the new replica's peer address.
        address: Option<String>,
        /// For `add ADDR` / `replace`: the new replica's client address.
        #[arg(long = "member-http")]
        member_http: Option<String>,
        /// For `replace`: how long to wait for the new replica to catch up.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// A replica's whole database, as the seed's /db.
    Db {
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Follows the changes to keys under PREFIX, one JSON line per round
    /// (`{"round", "key", "value"}`, value null for a delete), resuming at
    /// the next endpoint if a replica goes away.
    Watch {
        /// Key prefix ("" for every key).
        prefix: String,
        /// The first round to report (default: from now).
        #[arg(long)]
        from_round: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// The command chosen for a round.
    Fetch {
        round: u64,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Closed-loop load generator (paxlog or etcd's JSON gateway).
    Bench(bench::BenchArgs),
    /// Storage micro-benchmark: appends with fsync, raw fsync rate, recovery time.
    BenchStorage {
        /// Scratch folder (created; sub-folders are removed afterwards).
        #[arg(long, default_value = "./paxlog-bench-storage")]
        dir: PathBuf,
        /// Size of the log built to time recovery, in MiB (0 skips it).
        #[arg(long, default_value_t = 1024)]
        recovery_mib: u64,
        /// Seconds per append case.
        #[arg(long, default_value_t = 2.0)]
        case_secs: f64,
        #[arg(long)]
        json: bool,
    },
    /// Make a cluster CA and certificates for N replicas and a client.
    Certs {
        /// Folder to write into (files must not exist yet).
        #[arg(long, default_value = "./paxlog-certs")]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Extra host names or IP addresses the replica certificates name.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// The name replicas check on each other's certificates.
        #[arg(long, default_value = "paxlog")]
        peer_name: String,
    },
    /// Report what a data folder holds (read only).
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReadConsistency {
    Linearizable,
    Local,
}

#[derive(Args, Clone)]
struct Endpoints {
    /// Bearer token for a replica that requires one.
    #[arg(long, env = "PAXLOG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for https:// endpoints.
    #[arg(long, env = "PAXLOG_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate and key (PEM), for replicas that require one.
    #[arg(
        long = "cert",
        id = "client_cert",
        requires = "client_key",
        env = "PAXLOG_CERT"
    )]
    client_cert: Option<PathBuf>,
    #[arg(
        long = "key",
        id = "client_key",
        requires = "client_cert",
        env = "PAXLOG_KEY"
    )]
    client_key: Option<PathBuf>,
    /// Replica HTTP endpoints, tried in turn until one answers.
    #[arg(
        long,
        value_delimiter = ',',
        env = "PAXLOG_ENDPOINTS",
        default_value = "http://127.0.0.1:5000,http://127.0.0.1:5001,http://127.0.0.1:5002"
    )]
    endpoints: Vec<String>,
}

#[derive(Args)]
struct NodeArgs {
    /// Threads for HTTP and peer connections. The replica's consensus loop
    /// has a thread of its own, so one is usually best: more threads mostly
    /// add cross-thread wake-ups.
    #[arg(long, default_value_t = 1, env = "PAXLOG_IO_THREADS")]
    io_threads: usize,
    /// A TOML file with the node's settings; flags override it.
    #[arg(long, env = "PAXLOG_CONFIG")]
    config: Option<PathBuf>,
    /// This replica's id: its index in --peers. A replica that joins gets
    /// its id from the cluster (an --id outside --peers, as a StatefulSet's
    /// pod index, means "join").
    #[arg(long, env = "PAXLOG_ID")]
    id: Option<u32>,
    /// The bootstrap replicas' peer-protocol addresses (host:port, host
    /// names allowed), in id order.
    #[arg(long, value_delimiter = ',', env = "PAXLOG_PEERS")]
    peers: Option<Vec<String>>,
    /// Where the peer listener binds (default: this replica's own peer
    /// address if it is an IP, else all interfaces on its port).
    #[arg(long, env = "PAXLOG_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Join a running cluster through any of these members' client
    /// addresses (host:port or URL) when the data folder is empty: the
    /// cluster gives this replica its id and adds it as a learner.
    #[arg(long, value_delimiter = ',', env = "PAXLOG_JOIN")]
    join: Option<Vec<String>>,
    /// The peer address other replicas dial for this one (needed to join).
    #[arg(long, env = "PAXLOG_ADVERTISE_PEER")]
    advertise_peer: Option<String>,
    /// The client address others are told of (default: --http).
    #[arg(long, env = "PAXLOG_ADVERTISE_HTTP")]
    advertise_http: Option<String>,
    /// After joining, ask to become a voter once caught up (retried until
    /// it is one).
    #[arg(long, env = "PAXLOG_PROMOTE")]
    promote: bool,
    /// Client HTTP API address.
    #[arg(long, env = "PAXLOG_HTTP")]
    http: Option<SocketAddr>,
    /// Serve etcd's v3 gRPC API here (etcdctl and etcd's client libraries).
    #[arg(long, env = "PAXLOG_GRPC")]
    grpc: Option<SocketAddr>,
    /// The gRPC address others are told of (default: --grpc).
    #[arg(long, env = "PAXLOG_ADVERTISE_GRPC")]
    advertise_grpc: Option<String>,
    /// Every replica's HTTP address, in id order (for the dashboard at /).
    #[arg(long, value_delimiter = ',', env = "PAXLOG_HTTP_PEERS")]
    http_peers: Option<Vec<SocketAddr>>,
    #[arg(long, env = "PAXLOG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "PAXLOG_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Shared secret peers must prove (HMAC handshake).
    #[arg(long, env = "PAXLOG_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// This replica's certificate chain (PEM): enables mutual TLS between
    /// replicas and HTTPS for clients (needs --tls-key and --tls-ca).
    #[arg(long, env = "PAXLOG_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "PAXLOG_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA that signs every replica's certificate.
    #[arg(long, env = "PAXLOG_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The name every replica's certificate carries (default "paxlog").
    #[arg(long, env = "PAXLOG_TLS_PEER_NAME")]
    tls_peer_name: Option<String>,
    /// HTTP clients must present a certificate signed by --tls-ca.
    #[arg(long, env = "PAXLOG_TLS_CLIENT_AUTH")]
    tls_client_auth: bool,
    /// Bearer token that may read and write through the HTTP API.
    #[arg(long, env = "PAXLOG_WRITE_TOKEN", hide_env_values = true)]
    write_token: Option<String>,
    /// Bearer token that may only read.
    #[arg(long, env = "PAXLOG_READ_TOKEN", hide_env_values = true)]
    read_token: Option<String>,
    #[arg(long, env = "PAXLOG_TICK_MS")]
    tick_ms: Option<u64>,
    #[arg(long, env = "PAXLOG_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    #[arg(long, env = "PAXLOG_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// What an empty data folder becomes: `new` bootstraps a new cluster;
    /// `existing` joins a running one, e.g. to replace a lost disk (the
    /// replica then recovers from the others before it votes). Required
    /// for an empty folder; ignored once it holds data.
    #[arg(long, value_enum, env = "PAXLOG_INITIAL_CLUSTER_STATE")]
    initial_cluster_state: Option<ClusterStateArg>,
    /// How many of the --peers (the first N) vote in a new cluster; the
    /// others start outside it until `paxlog member add` adds them.
    /// Default: all. Must be the same on every replica.
    #[arg(long, env = "PAXLOG_INITIAL_VOTERS")]
    initial_voters: Option<u32>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClusterStateArg {
    New,
    Existing,
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Replica i serves HTTP on base-port + i.
    #[arg(long, default_value_t = 5000)]
    base_port: u16,
    /// Replica i talks to its peers on peer-base-port + i (default: base-port + 1000).
    #[arg(long)]
    peer_base_port: Option<u16>,
    /// Replica i serves etcd's v3 gRPC API on grpc-base-port + i (0: not at all).
    #[arg(long, default_value_t = 2379)]
    grpc_base_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Replica i keeps its data in DATA_DIR/node-i.
    #[arg(long, default_value = "./paxlog-data")]
    data_dir: PathBuf,
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// A folder made by `paxlog certs`: run with mutual TLS between replicas
    /// and HTTPS for clients.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Bearer token that may read and write.
    #[arg(long, env = "PAXLOG_WRITE_TOKEN", hide_env_values = true)]
    write_token: Option<String>,
    /// Bearer token that may only read.
    #[arg(long, env = "PAXLOG_READ_TOKEN", hide_env_values = true)]
    read_token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Verb::Node(args) = &cli.command {
        if !(1..=256).contains(&args.io_threads) {
            eprintln!("error: --io-threads must be 1..=256");
            return ExitCode::FAILURE;
        }
        builder.worker_threads(args.io_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Verb::Node(args) => {
            init_logging(cli.log_format);
            let promote = args.promote;
            let joining = args.join.clone();
            let mut cfg = node_config(*args)?;
            if let Some(endpoints) = joining {
                if cfg.id as usize >= cfg.peers.len() {
                    join::join(&mut cfg, &endpoints).await?;
                    cfg.validate()?;
                } else if cfg.initial_cluster_state == Some(InitialClusterState::New)
                    && paxlog_storage::read_metadata(&cfg.data_dir)?.is_none()
                {
                    // A bootstrap replica on an empty folder: if the cluster
                    // already exists, this folder was lost, and it must not
                    // vote on what it forgot.
                    if let Some(found) = join::existing_cluster_state(&cfg, &endpoints).await {
                        tracing::warn!(
                            id = cfg.id,
                            "empty data folder but the cluster exists ({found}): starting as existing, to recover before voting"
                        );
                        cfg.initial_cluster_state = Some(InitialClusterState::Existing);
                    }
                }
            }
            if promote {
                tokio::spawn(join::promote_when_caught_up(cfg.clone()));
            }
            paxlog_server::run_node(cfg, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Cluster(args) => {
            init_logging(cli.log_format);
            run_cluster(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Put {
            key,
            value,
            lease,
            endpoints,
        } => {
            let body = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
            let mut path = format!("/v1/kv/{}", encode_key(&key));
            if let Some(lease) = lease {
                path.push_str(&format!("?lease={lease}"));
            }
            client_call(&endpoints, Method::PUT, &path, Some(body)).await
        }
        Verb::Lease {
            action,
            arg,
            keep,
            endpoints,
        } => match action {
            LeaseVerb::Grant => {
                let body = serde_json::json!({ "ttl_ms": arg });
                client_call(&endpoints, Method::POST, "/v1/leases", Some(body)).await
            }
            LeaseVerb::Revoke => {
                client_call(
                    &endpoints,
                    Method::DELETE,
                    &format!("/v1/leases/{arg}"),
                    None,
                )
                .await
            }
            LeaseVerb::Get => {
                client_call(&endpoints, Method::GET, &format!("/v1/leases/{arg}"), None).await
            }
            LeaseVerb::Keepalive => {
                let path = format!("/v1/leases/{arg}/keepalive");
                loop {
                    let answer = call_leader(&endpoints, &path, Value::Null).await?;
                    let code = print_answer(&answer)?;
                    if !keep || !answer.status.is_success() {
                        return Ok(code);
                    }
                    let json: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                    let ttl = json["ttl_ms"].as_u64().unwrap_or(3000);
                    tokio::time::sleep(Duration::from_millis((ttl / 3).max(100))).await;
                }
            }
        },
        Verb::Get {
            key,
            consistency,
            min_round,
            endpoints,
        } => {
            let query = match (min_round, consistency) {
                (Some(round), _) => format!("min_round={round}"),
                (None, ReadConsistency::Linearizable) => "consistency=linearizable".into(),
                (None, ReadConsistency::Local) => "consistency=local".into(),
            };
            let path = format!("/v1/kv/{}?{query}", encode_key(&key));
            client_call(&endpoints, Method::GET, &path, None).await
        }
        Verb::Delete { key, endpoints } => {
            let path = format!("/v1/kv/{}", encode_key(&key));
            client_call(&endpoints, Method::DELETE, &path, None).await
        }
        Verb::Cas {
            key,
            new,
            expect,
            absent: _,
            endpoints,
        } => {
            let parse = |s: String| serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s));
            let mut body = serde_json::json!({ "value": parse(new) });
            if let (Some(expect), Value::Object(map)) = (expect, &mut body) {
                map.insert("expected".into(), parse(expect));
            }
            let path = format!("/v1/cas/{}", encode_key(&key));
            client_call(&endpoints, Method::POST, &path, Some(body)).await
        }
        Verb::Scan {
            prefix,
            limit,
            endpoints,
        } => {
            let path = format!("/v1/kv?prefix={}&limit={limit}", encode_key(&prefix));
            client_call(&endpoints, Method::GET, &path, None).await
        }
        Verb::Command { command, endpoints } => {
            let body = serde_json::json!({ "command": command });
            client_call(&endpoints, Method::POST, "/command", Some(body)).await
        }
        Verb::Status { endpoints } => client_call(&endpoints, Method::GET, "/status", None).await,
        Verb::Db { endpoints } => client_call(&endpoints, Method::GET, "/db", None).await,
        Verb::Member {
            action,
            target,
            address,
            member_http,
            wait_secs,
            endpoints,
        } => {
            let name = match action {
                MemberVerb::List => {
                    return client_call(&endpoints, Method::GET, "/v1/members", None).await
                }
                MemberVerb::Replace => {
                    let (Some(old), Some(address)) = (target, address) else {
                        bail!("`paxlog member replace` needs the old replica's id and the new one's peer address");
                    };
                    let old: u32 = old
                        .parse()
                        .map_err(|_| anyhow!("`{old}` is not a replica id"))?;
                    return replace_member(&endpoints, old, &address, member_http, wait_secs).await;
                }
                MemberVerb::Add => "add",
                MemberVerb::Promote => "promote",
                MemberVerb::Demote => "demote",
                MemberVerb::Remove => "remove",
            };
            if address.is_some() {
                bail!("`paxlog member {name}` takes one argument");
            }
            let Some(target) = target else {
                bail!("`paxlog member {name}` needs the replica's id");
            };
            let body = match target.parse::<u32>() {
                Ok(id) => serde_json::json!({ "action": name, "id": id }),
                Err(_) if action == MemberVerb::Add => serde_json::json!({
                    "action": "add",
                    "peer_addr": target,
                    "http_addr": member_http,
                }),
                Err(_) => bail!("`{target}` is not a replica id"),
            };
            client_call_leader(&endpoints, "/v1/members", body).await
        }
        Verb::Watch {
            prefix,
            from_round,
            count,
            endpoints,
        } => {
            if endpoints
                .endpoints
                .iter()
                .any(|e| e.starts_with("https://"))
            {
                bail!("paxlog watch speaks plain HTTP only (for now)");
            }
            watch::watch(
                &endpoints.endpoints,
                endpoints.token.as_deref(),
                &prefix,
                from_round,
                count,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Fetch { round, endpoints } => {
            let path = format!("/fetch?round_id={round}");
            client_call(&endpoints, Method::GET, &path, None).await
        }
        Verb::Bench(args) => {
            bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::BenchStorage {
            dir,
            recovery_mib,
            case_secs,
            json,
        } => {
            if !(0.1..=600.0).contains(&case_secs) {
                bail!("--case-secs must be within 0.1..=600");
            }
            let mut options = paxlog_storage::bench::BenchOptions::new(&dir);
            options.recovery_log_bytes = recovery_mib << 20;
            options.case_duration = Duration::from_secs_f64(case_secs);
            let report = tokio::task::spawn_blocking(move || paxlog_storage::bench::run(&options))
                .await
                .context("the storage benchmark panicked")??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Certs {
            out,
            nodes,
            hosts,
            peer_name,
        } => {
            let written = certs::generate(&out, nodes, &peer_name, &hosts)?;
            println!(
                "wrote {} files to {}: {}",
                written.len(),
                out.display(),
                written.join(", ")
            );
            println!(
                "run: paxlog cluster --tls-dir {0}   (clients: --cacert {0}/ca.pem, https://127.0.0.1:5000)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Inspect { dir, json } => {
            let report = paxlog_storage::inspect(&dir)
                .with_context(|| format!("cannot inspect {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(if report.is_healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

/// Percent-encodes what a URL path cannot carry as is.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Tries each endpoint until one answers; prints the JSON answer. Exit code
/// 0 for 2xx, 1 otherwise.
async fn client_call(
    endpoints: &Endpoints,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<ExitCode> {
    let http = client::new_client(1);
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let tls = match &endpoints.cacert {
        Some(ca) => {
            let identity = match (&endpoints.client_cert, &endpoints.client_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            Some(client::TlsClient::new(
                &read(ca)?,
                identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            )?)
        }
        None => None,
    };
    let headers: Vec<(&str, String)> = endpoints
        .token
        .iter()
        .map(|t| ("authorization", format!("Bearer {t}")))
        .collect();
    let body = body.map(|b| Bytes::from(b.to_string()));
    let mut failures = Vec::new();
    for endpoint in &endpoints.endpoints {
        let url = format!("{}{path}", endpoint.trim_end_matches('/'));
        let outcome = if url.starts_with("https://") {
            match &tls {
                Some(tls) => {
                    tls.request(method.clone(), &url, &headers, body.clone())
                        .await
                }
                None => Err(anyhow!(
                    "{url}: give --cacert FILE to trust an https endpoint"
                )),
            }
        } else {
            client::request(&http, method.clone(), &url, &headers, body.clone()).await
        };
        match outcome {
            Ok(response) => return print_answer(&response),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!("no endpoint answered:\n  {}", failures.join("\n  "))
}

/// POSTs `body` to each endpoint in turn until one that is not a follower
/// answers (a follower says 503 with the leader's id): the leader's answer,
/// or an error that is not about leadership, decides.
async fn client_call_leader(endpoints: &Endpoints, path: &str, body: Value) -> Result<ExitCode> {
    match call_leader(endpoints, path, body.clone()).await {
        Ok(response) => print_answer(&response),
        // TLS or a token: the general path (no leader search).
        Err(e) if e.downcast_ref::<NeedsGeneralPath>().is_some() => {
            client_call(endpoints, Method::POST, path, Some(body)).await
        }
        Err(e) => Err(e),
    }
}

/// A TLS endpoint or a token: `call_leader` does not search for the leader.
#[derive(Debug)]
struct NeedsGeneralPath;

impl std::fmt::Display for NeedsGeneralPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("leader search needs plain HTTP without a token")
    }
}

impl std::error::Error for NeedsGeneralPath {}

/// POSTs `body` to each endpoint in turn, and to the leader a follower
/// names, until one that is not a follower answers (a follower says 503):
/// that answer.
async fn call_leader(
    endpoints: &Endpoints,
    path: &str,
    body: Value,
) -> Result<client::HttpResponse> {
    let http = client::new_client(1);
    let mut last = None;
    let mut queue: Vec<String> = endpoints.endpoints.clone();
    let mut tried = std::collections::HashSet::new();
    while let Some(endpoint) = queue.pop() {
        if !tried.insert(endpoint.clone()) || tried.len() > 16 {
            continue;
        }
        let url = format!("{}{path}", endpoint.trim_end_matches('/'));
        if !url.starts_with("http://") || endpoints.token.is_some() {
            return Err(NeedsGeneralPath.into());
        }
        match client::request(
            &http,
            Method::POST,
            &url,
            &[],
            Some(Bytes::from(body.to_string())),
        )
        .await
        {
            Ok(response) if response.status.as_u16() == 503 => {
                last = Some(String::from_utf8_lossy(&response.body).into_owned());
                // Ask the member list who leads, and go there next.
                let members = format!("{}/v1/members", endpoint.trim_end_matches('/'));
                if let Ok(r) = client::request(&http, Method::GET, &members, &[], None).await {
                    let json: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if let Some(leader) = json["leader_http"].as_str() {
                        queue.push(join::endpoint_url(leader, false));
                    }
                }
            }
            Ok(response) => return Ok(response),
            Err(e) => last = Some(format!("{e:#}")),
        }
    }
    bail!(
        "no endpoint took the change (is a leader elected?); last answer: {}",
        last.unwrap_or_default()
    )
}

/// `paxlog member replace OLD ADDR`: the new replica at ADDR is added as a
/// learner, promoted once it has caught up (it must be started meanwhile,
/// e.g. with `paxlog node --join`), and only then is OLD removed, so the
/// cluster never has fewer voters than before.
async fn replace_member(
    endpoints: &Endpoints,
    old: u32,
    address: &str,
    http: Option<String>,
    wait_secs: u64,
) -> Result<ExitCode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    // Another change may be in flight (the new replica joining by itself,
    // say): 409 and 503 are retried until the deadline.
    let answer = loop {
        let added = call_leader(
            endpoints,
            "/v1/members",
            serde_json::json!({ "action": "add", "peer_addr": address, "http_addr": http }),
        )
        .await?;
        let answer: Value = serde_json::from_slice(&added.body).unwrap_or_default();
        if added.status.is_success() {
            break answer;
        }
        let retry = matches!(added.status.as_u16(), 409 | 503);
        if !retry || std::time::Instant::now() > deadline {
            bail!("adding {address} failed: {answer}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let new = answer["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the cluster answered without an id: {answer}"))?;
    eprintln!("replica {new} at {address} is a learner; start it (paxlog node --join ...) if it is not running: waiting for it to catch up");
    loop {
        let promoted = call_leader(
            endpoints,
            "/v1/members",
            serde_json::json!({ "action": "promote", "id": new }),
        )
        .await?;
        let answer: Value = serde_json::from_slice(&promoted.body).unwrap_or_default();
        if promoted.status.is_success() {
            break;
        }
        let already = answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("is not a learner"));
        if already {
            break; // promoted by an earlier attempt (or by itself: --promote)
        }
        if promoted.status.as_u16() != 409 || std::time::Instant::now() > deadline {
            bail!("promoting replica {new} failed: {answer}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("replica {new} votes; removing replica {old}");
    let removed = call_leader(
        endpoints,
        "/v1/members",
        serde_json::json!({ "action": "remove", "id": old }),
    )
    .await?;
    print_answer(&removed)
}

/// Prints a replica's answer (JSON pretty-printed); fails on a non-2xx.
fn print_answer(response: &client::HttpResponse) -> Result<ExitCode> {
    let text = match serde_json::from_slice::<Value>(&response.body) {
        Ok(json) => serde_json::to_string_pretty(&json)?,
        Err(_) => String::from_utf8_lossy(&response.body).into_owned(),
    };
    // A reader that stopped early (`paxlog member list | head`) is no
    // error; `println!` would panic on the closed pipe.
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow!("cannot write the answer: {e}"))
        }
        _ => {}
    }
    Ok(if response.status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn node_config(args: NodeArgs) -> Result<NodeConfig> {
    let mut cfg: Option<NodeConfig> = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Some(
                toml::from_str(&text)
                    .with_context(|| format!("bad config file {}", path.display()))?,
            )
        }
        None => None,
    };
    if let Some(cfg) = &mut cfg {
        if let Some(id) = args.id {
            cfg.id = id;
        }
        if let Some(peers) = &args.peers {
            cfg.peers = peers.clone();
        }
        if args.join.is_some() && args.id.is_none() {
            cfg.id = u32::MAX; // given by the cluster (see `join`)
        }
        if let Some(http) = args.http {
            cfg.http = http;
        }
        if let Some(dir) = &args.data_dir {
            cfg.data_dir = dir.clone();
        }
    }
    let mut cfg = match cfg {
        Some(cfg) => cfg,
        None => {
            let joining = args.join.is_some();
            let missing: Vec<&str> = [
                ("--id", args.id.is_none() && !joining),
                ("--peers", args.peers.is_none() && !joining),
                ("--http", args.http.is_none()),
                ("--data-dir", args.data_dir.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(n, _)| *n)
            .collect();
            // A replica that joins gets its id from the cluster; until then
            // it has none (u32::MAX is outside every --peers).
            let id = args.id.or(joining.then_some(u32::MAX));
            let peers = args.peers.or(joining.then(Vec::new));
            let (Some(id), Some(peers), Some(http), Some(data_dir)) =
                (id, peers, args.http, args.data_dir)
            else {
                bail!("missing {} (or give --config FILE)", missing.join(", "));
            };
            NodeConfig::new(id, peers, http, data_dir)
        }
    };
    if let Some(v) = args.cluster_id {
        cfg.cluster_id = v;
    }
    replace_if_given(&mut cfg.peer_listen, args.peer_listen);
    replace_if_given(&mut cfg.advertise_peer, args.advertise_peer);
    replace_if_given(&mut cfg.advertise_http, args.advertise_http);
    replace_if_given(&mut cfg.grpc, args.grpc);
    replace_if_given(&mut cfg.advertise_grpc, args.advertise_grpc);
    if let Some(v) = args.cluster_secret {
        cfg.cluster_secret = Some(v);
    }
    replace_if_given(&mut cfg.tls_cert, args.tls_cert);
    replace_if_given(&mut cfg.tls_key, args.tls_key);
    replace_if_given(&mut cfg.tls_ca, args.tls_ca);
    if let Some(v) = args.tls_peer_name {
        cfg.tls_peer_name = v;
    }
    cfg.tls_client_auth |= args.tls_client_auth;
    replace_if_given(&mut cfg.write_token, args.write_token);
    replace_if_given(&mut cfg.read_token, args.read_token);
    if let Some(v) = args.tick_ms {
        cfg.tick_ms = v;
    }
    if let Some(v) = args.snapshot_every {
        cfg.snapshot_every_rounds = v;
    }
    if let Some(v) = args.request_timeout_ms {
        cfg.request_timeout_ms = v;
    }
    if let Some(v) = args.http_peers {
        cfg.http_peers = v;
    }
    if let Some(n) = args.initial_voters {
        cfg.initial_voters = Some(n);
    }
    if let Some(v) = args.initial_cluster_state {
        cfg.initial_cluster_state = Some(match v {
            ClusterStateArg::New => InitialClusterState::New,
            ClusterStateArg::Existing => InitialClusterState::Existing,
        });
    }
    // A replica that joins is checked once it knows its id (see `join`).
    if !(args.join.is_some() && cfg.id as usize >= cfg.peers.len()) {
        cfg.validate()?;
    }
    Ok(cfg)
}

/// A flag given on the command line wins over the config file.
fn replace_if_given<T>(setting: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *setting = flag;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

async fn run_cluster(args: ClusterArgs) -> Result<()> {
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be 1..=9");
    }
    let peer_base = match args.peer_base_port {
        Some(p) => p,
        None => args.base_port.checked_add(1000).ok_or_else(|| {
            anyhow!("--base-port too high to derive peer ports; give --peer-base-port")
        })?,
    };
    let port = |base: u16, i: u32| -> Result<u16> {
        base.checked_add(i as u16)
            .ok_or_else(|| anyhow!("port {base} + {i} is out of range"))
    };
    let mut peers = Vec::new();
    let mut http_peers = Vec::new();
    for i in 0..args.nodes {
        peers.push(SocketAddr::new(args.host, port(peer_base, i)?));
        http_peers.push(SocketAddr::new(args.host, port(args.base_port, i)?));
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut nodes = tokio::task::JoinSet::new();
    for i in 0..args.nodes {
        let http = SocketAddr::new(args.host, port(args.base_port, i)?);
        let mut cfg = NodeConfig::new(
            i,
            peers.clone(),
            http,
            args.data_dir.join(format!("node-{i}")),
        );
        if let Some(every) = args.snapshot_every {
            cfg.snapshot_every_rounds = every;
        }
        cfg.http_peers = http_peers.clone();
        if args.grpc_base_port != 0 {
            cfg.grpc = Some(SocketAddr::new(args.host, port(args.grpc_base_port, i)?));
        }
        // `paxlog cluster` is the explicit act that bootstraps its folders.
        cfg.initial_cluster_state = Some(InitialClusterState::New);
        if let Some(dir) = &args.tls_dir {
            cfg.tls_cert = Some(dir.join(format!("node-{i}.pem")));
            cfg.tls_key = Some(dir.join(format!("node-{i}-key.pem")));
            cfg.tls_ca = Some(dir.join("ca.pem"));
        }
        cfg.write_token = args.write_token.clone();
        cfg.read_token = args.read_token.clone();
        cfg.validate()?;
        let mut stop = stop_tx.subscribe();
        nodes.spawn(async move {
            paxlog_server::run_node(cfg, async move {
                let _ = stop.recv().await;
            })
            .await
            .map_err(|e| anyhow!("node {i}: {e}"))
        });
    }
    // Give the replicas a moment to bind, then say where they are.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "paxlog cluster: {} replicas, data in {}",
        args.nodes,
        args.data_dir.display()
    );
    for i in 0..args.nodes {
        let grpc = if args.grpc_base_port == 0 {
            String::new()
        } else {
            format!(
                ", etcd gRPC {}",
                SocketAddr::new(args.host, port(args.grpc_base_port, i)?)
            )
        };
        println!(
            "  node {i}: http://{}  (peer {}{grpc})",
            SocketAddr::new(args.host, port(args.base_port, i)?),
            peers[i as usize]
        );
    }
    println!(
        "Try: curl -s -X POST localhost:{}/command -d '{{\"command\": \"li = []\"}}'",
        args.base_port
    );
    println!(
        "Dashboard: http://{}/  (metrics at /metrics)",
        SocketAddr::new(args.host, args.base_port)
    );
    println!("Ctrl-C stops the cluster; running this again resumes from the same data.");
    let mut first_error = None;
    tokio::select! {
        () = shutdown_signal() => {}
        // A node that fails (e.g. its port is taken) stops the whole cluster.
        Some(result) = nodes.join_next() => {
            match result {
                Ok(Err(e)) => first_error = Some(e),
                Err(e) => first_error = Some(anyhow!("a node task failed: {e}")),
                Ok(Ok(())) => {}
            }
        }
    }
    let _ = stop_tx.send(());
    while let Some(result) = nodes.join_next().await {
        if let Ok(Err(e)) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
