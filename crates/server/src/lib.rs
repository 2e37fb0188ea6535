//! paxlog-server: one replica process. It recovers the replica from its data
//! folder, connects to its peers, runs the driver loop on its own thread and
//! serves the client HTTP API.

mod auth;
pub mod config;
pub mod driver;
mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
mod tls;
pub mod wire;

pub use config::{InitialClusterState, NodeConfig};
pub use error::ServerError;

use driver::io::SystemClock;
use driver::{Driver, DriverInput, DriverIo};
use paxlog_core::{Config as CoreConfig, DurableState, NodeId, Replica, StateMachine};
use paxlog_kv::{KvOptions, KvStore};
use paxlog_storage::OnEmpty;
use paxlog_storage::{DataDir, Recovery, SnapshotStore, Wal, WalOptions};
use paxlog_transport::{Transport, TransportConfig};
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use wire::Wire;

/// Inputs queued for the driver at most.
const DRIVER_QUEUE: usize = 65_536;

/// Runs one replica until `shutdown` resolves (clean stop) or the replica
/// fails (an error the process should exit with).
pub async fn run_node(
    mut cfg: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    cfg.validate()?;
    let recovery_started = Instant::now();
    // Holds the data directory's lock until the node stops.
    let on_empty = match cfg.initial_cluster_state {
        None => OnEmpty::Refuse,
        Some(InitialClusterState::New) => OnEmpty::Bootstrap,
        Some(InitialClusterState::Existing) => OnEmpty::Join,
    };
    let data_dir = DataDir::open_joined(
        &cfg.data_dir,
        &cfg.cluster_id,
        cfg.id,
        on_empty,
        cfg.joined.as_ref(),
    )?;
    // A folder that joined keeps what the cluster told it then.
    if let Some(joined) = &data_dir.metadata().joined {
        cfg.joined = Some(joined.clone());
    }
    let metrics = Arc::new(metrics::Metrics::new(cfg.id));
    let Restored {
        kv,
        last_snapshot_round,
        wal,
        snapshots,
        durable,
    } = recover_replica(&cfg, &data_dir, &metrics)?;
    tracing::info!(
        node = cfg.id,
        snapshot_round = last_snapshot_round,
        promised = %durable.promised,
        ms = recovery_started.elapsed().as_millis() as u64,
        "recovered from {}",
        cfg.data_dir.display()
    );

    // (A replica that joined has no bootstrap list: its membership is set
    // below, and the size only has to be valid.)
    let voters = cfg.initial_voters.unwrap_or(cfg.peers.len() as u32).max(1);
    let mut core_cfg = CoreConfig::new(NodeId(cfg.id), voters);
    core_cfg.heartbeat_interval_ticks = cfg.heartbeat_ticks;
    core_cfg.election_timeout_ticks = cfg.election_ticks;
    // The membership where the log begins: the snapshot's, if a change was
    // ever applied; else the bootstrap one (every listed peer votes).
    // A replica that joined starts from the membership it joined under.
    core_cfg.membership = kv
        .membership()
        .cloned()
        .or_else(|| cfg.joined.as_ref().map(|j| j.membership.clone()));
    let seed = RandomState::new().build_hasher().finish();
    let replica = Replica::new(core_cfg, durable, seed);

    let peers: Vec<(u32, String)> = driver::peer_addresses(&cfg, &kv, &Default::default())
        .into_iter()
        .filter(|(id, _)| *id != cfg.id)
        .map(|(id, a)| (id, a.peer_addr))
        .collect();
    let mut transport_cfg = TransportConfig::new(
        cfg.id,
        cfg.cluster_id.clone(),
        cfg.peer_listen_addr()?,
        peers,
    );
    if let Some(secret) = &cfg.cluster_secret {
        transport_cfg = transport_cfg.with_secret(secret.as_bytes().to_vec());
    }
    let tls_pem = load_tls_files(&cfg)?;
    if let Some((cert, key, ca)) = &tls_pem {
        transport_cfg = transport_cfg.with_tls(paxlog_transport::PeerTls::from_pem(
            cert,
            key,
            ca,
            &cfg.tls_peer_name,
        )?);
    }
    let http_tls = match &tls_pem {
        Some((cert, key, ca)) => Some(tls::HttpTls::from_pem(
            cert,
            key,
            cfg.tls_client_auth.then_some(ca.as_slice()),
        )?),
        None => None,
    };
    let grpc_tls = match &tls_pem {
        Some((cert, key, ca)) => Some(tls::HttpTls::with_alpn(
            cert,
            key,
            cfg.tls_client_auth.then_some(ca.as_slice()),
            b"h2",
        )?),
        None => None,
    };
    let grpc_dialer = match &tls_pem {
        Some((cert, key, ca)) => Some(tls::GrpcDialer::from_pem(
            cert,
            key,
            ca,
            &cfg.tls_peer_name,
        )?),
        None => None,
    };
    let (transport, inbound) = Transport::start::<Wire>(transport_cfg).await?;

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|source| ServerError::HttpBind {
            addr: cfg.http,
            source,
        })?;
    let grpc_listener = match cfg.grpc {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::HttpBind { addr, source })?,
        ),
        None => None,
    };

    // The driver takes client requests from this channel, and peer messages
    // straight from the transport's (no task in between).
    let (driver_tx, driver_rx) = mpsc::channel(DRIVER_QUEUE);

    let io = DriverIo {
        log: Box::new(wal),
        snapshots: Box::new(snapshots),
        network: Box::new(transport.clone()),
        clock: Box::new(SystemClock),
        seed: driver::random_u64(),
    };
    let driver = Driver::new(
        cfg.clone(),
        replica,
        kv,
        io,
        last_snapshot_round,
        metrics.clone(),
    );
    let (driver_done_tx, driver_done) = oneshot::channel();
    let node_id = cfg.id;
    std::thread::Builder::new()
        .name(format!("paxlog-driver-{node_id}"))
        .spawn(move || {
            let result = driver.run(driver_rx, inbound);
            let _ = driver_done_tx.send(result);
        })
        .map_err(|e| ServerError::Driver(format!("cannot start driver thread: {e}")))?;

    let state = http::AppState::new(
        driver_tx.clone(),
        Duration::from_millis(cfg.request_timeout_ms),
        metrics,
        http::NodeInfo {
            id: cfg.id,
            http: cfg.http,
            tls: tls_pem.is_some(),
            http_peers: cfg.http_peers.clone(),
            ready_max_lag_rounds: cfg.ready_max_lag_rounds,
            cluster_id: cfg.cluster_id.clone(),
            election_timeout_ms: cfg.tick_ms * cfg.election_ticks,
            min_new_id: (cfg.peers.len() as u32).max(cfg.id + 1),
        },
    );
    let tokens = std::sync::Arc::new(auth::Tokens {
        read_write: cfg.write_token.clone(),
        read_only: cfg.read_token.clone(),
    });
    let grpc_app = grpc::router(
        grpc::EtcdApi::new(state.clone(), cfg.write_token.clone(), grpc_dialer),
        tokens.clone(),
    );
    let mut app = http::router(state, cfg.max_body_bytes);
    if tokens.enabled() {
        app = app.layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::require_token,
        ));
    }
    tracing::info!(node = node_id, http = %cfg.http, peer = cfg.own_peer_addr().unwrap_or("?"), "serving");

    let (stop_grpc_tx, stop_grpc) = oneshot::channel::<()>();
    if let Some(grpc_listener) = grpc_listener {
        tracing::info!(node = node_id, grpc = ?cfg.grpc, "serving etcd's v3 API");
        tokio::spawn(tls::serve(grpc_listener, grpc_app, grpc_tls, async move {
            let _ = stop_grpc.await;
        }));
    }
    let (stop_http_tx, stop_http) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_http.await;
        };
        match http_tls {
            Some(tls) => {
                tls::serve(listener, app, Some(tls), stop).await;
                Ok(())
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
    });

    let mut driver_done = driver_done;
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        result = &mut driver_done => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(ServerError::Driver(message)),
            Err(_) => Err(ServerError::Driver("the driver thread panicked".into())),
        },
    };
    // Stop taking requests, then stop the driver (it answers what waits).
    let _ = stop_http_tx.send(());
    let _ = stop_grpc_tx.send(());
    let _ = driver_tx.send(DriverInput::Shutdown).await;
    drop(driver_tx);
    if outcome.is_ok() {
        if let Ok(Err(message)) = driver_done.await {
            tracing::error!(node = node_id, "driver stopped with an error: {message}");
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(node = node_id, error = %e, "HTTP server error"),
        Ok(_) => {}
        Err(_) => tracing::warn!(node = node_id, "HTTP server did not stop within 5 s"),
    }
    transport.shutdown().await;
    outcome
}

/// What startup recovered from the data directory, for the driver.
struct Restored {
    kv: KvStore,
    last_snapshot_round: u64,
    wal: Wal,
    snapshots: SnapshotStore,
    durable: DurableState,
}

/// Restores the state machine from the newest snapshot it accepts and
/// replays the WAL. A snapshot that does not restore (checksum good, content
/// bad) or covers other rounds than its name says is skipped like a corrupt
/// one: each skipped file is logged and counted in `snapshot_fallbacks`.
fn recover_replica(
    cfg: &NodeConfig,
    data_dir: &DataDir,
    metrics: &metrics::Metrics,
) -> Result<Restored, ServerError> {
    let mut restored_kv = None;
    let recovery = data_dir.recover_with(
        WalOptions::default(),
        cfg.max_snapshot_bytes,
        |slot, image| {
            let mut kv = KvStore::new(KvOptions::default());
            kv.restore(image)
                .map_err(|e| format!("the state machine cannot restore it: {e}"))?;
            if kv.applied_upto() != slot {
                return Err(format!(
                    "its image covers the rounds below {}, not below {slot} as its name says",
                    kv.applied_upto()
                ));
            }
            restored_kv = Some(kv);
            Ok(())
        },
    )?;
    let Recovery {
        wal,
        snapshots,
        snapshot,
        recovered,
        skipped,
        wal_may_lack_below,
    } = recovery;
    for repair in &recovered.repairs {
        tracing::warn!(node = cfg.id, %repair, "repaired the write-ahead log on start");
    }
    for bad in &skipped {
        metrics.snapshot_fallbacks.inc();
        tracing::warn!(
            node = cfg.id,
            file = %bad.path.display(),
            reason = %bad.reason,
            "skipped an unusable snapshot; falling back to an older one"
        );
    }
    // The image itself was only needed to restore `restored_kv`.
    let last_snapshot_round = snapshot.map_or(0, |(slot, _)| slot.0);
    let kv = restored_kv.unwrap_or_else(|| KvStore::new(KvOptions::default()));
    // State this replica may have forgotten: it recovers before it votes.
    let mut forgotten = Vec::new();
    if let Some(floor) = wal_may_lack_below {
        forgotten.push(format!(
            "recovery fell back to the snapshot at round {last_snapshot_round}, but the write-ahead \
             log was compacted up to round {}: its promises and accepts in between are gone",
            floor.0
        ));
    }
    for repair in &recovered.repairs {
        if matches!(repair, paxlog_storage::RepairAction::TruncatedTail { .. }) {
            // A torn write and a damaged synced record look alike.
            forgotten.push(format!(
                "the write-ahead log was cut at its tail ({repair}): records that were synced may be gone"
            ));
        }
    }
    if !forgotten.is_empty() {
        paxlog_storage::mark_recovering(data_dir.path(), &forgotten.join("; "))?;
    }
    let mut durable = recovered.state;
    if let Some(reason) = paxlog_storage::recovering_reason(data_dir.path())? {
        tracing::warn!(
            node = cfg.id,
            %reason,
            "this replica may have forgotten promises and accepts: it votes in nothing until a \
             majority of the others told it what they promised and accepted"
        );
        metrics.recovering.set(1);
        metrics.published.set_recovering(true);
        durable.recovering = true;
    }
    tracing::info!(
        node = cfg.id,
        snapshot_round = last_snapshot_round,
        skipped_snapshots = skipped.len(),
        wal_records = recovered.records,
        repairs = recovered.repairs.len(),
        "replayed the write-ahead log"
    );
    Ok(Restored {
        kv,
        last_snapshot_round,
        wal,
        snapshots,
        durable,
    })
}

/// Reads the TLS certificate, key and CA files, if configured.
#[allow(clippy::type_complexity)]
fn load_tls_files(cfg: &NodeConfig) -> Result<Option<(Vec<u8>, Vec<u8>, Vec<u8>)>, ServerError> {
    let (Some(cert), Some(key), Some(ca)) = (&cfg.tls_cert, &cfg.tls_key, &cfg.tls_ca) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))
    };
    Ok(Some((read(cert)?, read(key)?, read(ca)?)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use paxlog_core::{Entry, Slot};

    /// A state machine image covering the rounds below `rounds` (no-ops).
    fn kv_image(rounds: u64) -> Vec<u8> {
        let mut kv = KvStore::new(KvOptions::default());
        for s in 0..rounds {
            kv.apply(Slot(s), &Entry::Noop);
        }
        kv.snapshot()
    }

    #[test]
    fn startup_falls_back_past_snapshots_that_do_not_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let addr = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let cfg = NodeConfig::new(0, vec![addr(1)], addr(2), tmp.path().to_path_buf());
        let data_dir = DataDir::open_or_init(&cfg.data_dir, &cfg.cluster_id, cfg.id).unwrap();
        // The log was never compacted (its first segment is there), so
        // falling back to any snapshot forgets nothing.
        drop(
            data_dir
                .open_wal(Slot::ZERO, WalOptions::default())
                .unwrap(),
        );
        let store = data_dir.snapshots().unwrap();
        store.save(Slot(10), &kv_image(10)).unwrap();
        // Checksums good, content bad: undecodable, then the wrong rounds.
        store.save(Slot(20), b"\x01not a kv image").unwrap();
        store.save(Slot(30), &kv_image(29)).unwrap();
        let metrics = metrics::Metrics::new(0);
        let restored = recover_replica(&cfg, &data_dir, &metrics).unwrap();
        assert_eq!(restored.last_snapshot_round, 10);
        assert_eq!(restored.kv.applied_upto(), Slot(10));
        assert_eq!(restored.durable.log_start, Slot(10));
        assert_eq!(metrics.snapshot_fallbacks.get(), 2);
        assert!(metrics
            .encode()
            .unwrap()
            .contains("paxlog_snapshot_fallbacks_total{node=\"0\"} 2"));
    }

    #[test]
    fn a_fallback_past_the_compacted_log_starts_recovering() {
        let tmp = tempfile::tempdir().unwrap();
        let addr = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let cfg = NodeConfig::new(0, vec![addr(1)], addr(2), tmp.path().to_path_buf());
        let data_dir = DataDir::open_or_init(&cfg.data_dir, &cfg.cluster_id, cfg.id).unwrap();
        let store = data_dir.snapshots().unwrap();
        store.save(Slot(10), &kv_image(10)).unwrap();
        store.save(Slot(30), b"\x01not a kv image").unwrap();
        // The log was cut below round 30 (as an older version did, right
        // after each snapshot): the accepts for rounds 10..30 are gone.
        let (mut wal, _) = data_dir
            .open_wal(Slot::ZERO, WalOptions::default())
            .unwrap();
        wal.compact(Slot(30)).unwrap();
        drop(wal);
        std::fs::write(tmp.path().join(paxlog_storage::WAL_FLOOR_FILE), "30").unwrap();
        let metrics = metrics::Metrics::new(0);
        let restored = recover_replica(&cfg, &data_dir, &metrics).unwrap();
        assert_eq!(restored.last_snapshot_round, 10);
        // It may have forgotten votes: it recovers before it votes, and the
        // mark stays on disk until it has.
        assert!(restored.durable.recovering);
        let reason = paxlog_storage::recovering_reason(tmp.path())
            .unwrap()
            .expect("marked");
        assert!(reason.contains("compacted up to round 30"), "{reason}");
        assert_eq!(metrics.recovering.get(), 1);
    }
}
