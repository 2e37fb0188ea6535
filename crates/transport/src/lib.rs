//! Peer-to-peer transport between paxlog replicas.
//!
//! Each node listens for inbound connections (read-only streams feeding one
//! bounded inbound channel) and keeps one outbound TCP connection per peer,
//! owned by a task with a bounded queue. [`TransportHandle::send`] never
//! blocks: when a peer's queue is full (or the peer is unknown) the message is
//! dropped and counted — consensus tolerates message loss.
//!
//! Peers are addressed as `host:port` strings ([`validate_peer_addr`]), not
//! socket addresses: in Docker compose or Kubernetes a replica keeps its
//! name while its IP changes when its container is re-created, so the name
//! is resolved again at every connect attempt, and a name that does not
//! resolve (yet) is an ordinary, retried connect failure. The listen address
//! stays a socket address: it is what this node binds (e.g. `0.0.0.0:6000`),
//! not what others dial.
//!
//! The peer set can change at runtime, for membership changes:
//! [`TransportHandle::set_peer`] adds a peer or moves it to a new address,
//! [`TransportHandle::remove_peer`] stops and forgets one. The listener
//! admits only the current peers, so a newly added replica can connect in
//! and a removed one is refused (its open connection is closed).
//!
//! See [`wire`] for the frame format and the handshake.

mod config;
mod inbound;
mod outbound;
mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

pub use config::{
    validate_peer_addr, TransportConfig, DEFAULT_INBOUND_CAPACITY, DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_SEND_QUEUE_CAPACITY,
};
pub use tls::{certificates_from_pem, private_key_from_pem, PeerTls};

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid transport config: {0}")]
    InvalidConfig(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A peer's host name did not resolve (or resolved to nothing). Like any
    /// connect failure it is retried with backoff: the name may appear later.
    #[error("cannot resolve {name}: {source}")]
    Resolve {
        name: String,
        source: std::io::Error,
    },
    /// Connecting to one resolved address of a peer failed.
    #[error("cannot connect to {name} ({addr}): {source}")]
    Connect {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The transport was shut down; it cannot take new peers.
    #[error("transport is shut down")]
    Shutdown,
    #[error("encode error: {0}")]
    Encode(postcard::Error),
    #[error("decode error: {0}")]
    Decode(postcard::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("handshake rejected: {0}")]
    Rejected(String),
    #[error("timed out")]
    Timeout,
    #[error("connection closed by peer")]
    ConnectionClosed,
}

/// A message received from a peer; `from` is the peer's id as verified by the
/// handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound<M> {
    pub from: u32,
    pub message: M,
}

/// Snapshot of one peer's outbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: u32,
    /// The address dialed, `host:port` as configured (not resolved).
    pub addr: String,
    /// The socket address `addr` resolved to for the current connection;
    /// `None` while not connected. Shows which IP a host name pointed to.
    pub remote_addr: Option<SocketAddr>,
    /// True while an outbound connection is established (handshake done).
    pub connected: bool,
    /// Frames written and flushed to the peer.
    pub frames_sent: u64,
    /// Messages dropped: queue full, oversized, unencodable, or lost with a
    /// broken connection.
    pub dropped: u64,
    /// Number of successful outbound handshakes so far.
    pub connects: u64,
    /// The last connection error, if any (cleared when the address changes,
    /// as it concerned the old one).
    pub last_error: Option<String>,
}

/// Node-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Inbound connections that completed the handshake.
    pub accepted_connections: u64,
    /// Inbound connections refused during the handshake (including node ids
    /// not, or no longer, in the peer set).
    pub rejected_connections: u64,
    /// Messages passed to `send` for an unknown (or removed) peer (dropped).
    pub dropped_unknown_peer: u64,
    /// Messages received and delivered to the inbound channel.
    pub frames_received: u64,
    /// Inbound connections closed for an oversized frame.
    pub oversized_frames: u64,
    /// Inbound connections closed for an undecodable frame or protocol error.
    pub decode_errors: u64,
}

#[derive(Default)]
pub(crate) struct GlobalStats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    dropped_unknown: AtomicU64,
    received: AtomicU64,
    oversized: AtomicU64,
    decode_errors: AtomicU64,
}

pub(crate) struct PeerShared {
    id: u32,
    connected: AtomicBool,
    remote_addr: Mutex<Option<SocketAddr>>,
    frames_sent: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl PeerShared {
    fn new(id: u32) -> Self {
        PeerShared {
            id,
            connected: AtomicBool::new(false),
            remote_addr: Mutex::new(None),
            frames_sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records the current connection's remote address (`None`: no
    /// connection).
    fn set_connected(&self, remote: Option<SocketAddr>) {
        *self.remote_addr.lock().unwrap_or_else(|p| p.into_inner()) = remote;
        self.connected.store(remote.is_some(), Ordering::Relaxed);
    }

    fn snapshot(&self, addr: String) -> PeerStatus {
        PeerStatus {
            id: self.id,
            addr,
            remote_addr: *self.remote_addr.lock().unwrap_or_else(|p| p.into_inner()),
            connected: self.connected.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// One peer's outbound side as seen by the handle.
struct PeerEntry<M> {
    tx: mpsc::Sender<M>,
    /// The address to dial. The peer task watches it: a new value makes it
    /// drop its connection and dial the new address; dropping the sender
    /// (peer removed) makes it exit, wherever it is waiting.
    addr: watch::Sender<String>,
    shared: Arc<PeerShared>,
}

/// The current peer set, shared by the handle (which changes it and sends
/// through it) and the listener (which admits only its members), so that a
/// peer added at runtime can connect in and a removed one cannot.
pub(crate) struct PeerTable<M> {
    /// Read on every `send`, written only by `set_peer`/`remove_peer`.
    outbound: RwLock<HashMap<u32, PeerEntry<M>>>,
    /// Current inbound connection per peer id, with the signal that closes
    /// it. A newer connection from the same peer supersedes (closes) the
    /// older, so half-open leftovers do not linger; removing the peer closes
    /// it too.
    inbound: Mutex<HashMap<u32, (u64, Arc<Notify>)>>,
}

impl<M> PeerTable<M> {
    fn new() -> Self {
        PeerTable {
            outbound: RwLock::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<u32, PeerEntry<M>>> {
        self.outbound.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<u32, PeerEntry<M>>> {
        self.outbound.write().unwrap_or_else(|p| p.into_inner())
    }

    fn inbound(&self) -> MutexGuard<'_, HashMap<u32, (u64, Arc<Notify>)>> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.read().contains_key(&id)
    }

    /// Makes inbound connection `conn_id` the current one of peer `from`,
    /// closing the previous one, and returns the signal that will close it.
    /// `None` when `from` is no longer a peer: the membership check runs
    /// under the inbound lock, which `remove_peer` takes after updating the
    /// peer set, so a connection racing with its peer's removal is either
    /// refused here or closed by `remove_peer`.
    pub(crate) fn register_inbound(&self, from: u32, conn_id: u64) -> Option<Arc<Notify>> {
        let mut inbound = self.inbound();
        if !self.contains(from) {
            return None;
        }
        let close = Arc::new(Notify::new());
        if let Some((_, old)) = inbound.insert(from, (conn_id, close.clone())) {
            old.notify_one();
        }
        Some(close)
    }

    /// Forgets inbound connection `conn_id` of `from` unless a newer one
    /// replaced it.
    pub(crate) fn unregister_inbound(&self, from: u32, conn_id: u64) {
        let mut inbound = self.inbound();
        if matches!(inbound.get(&from), Some((id, _)) if *id == conn_id) {
            inbound.remove(&from);
        }
    }

    fn close_inbound(&self, id: u32) {
        if let Some((_, close)) = self.inbound().remove(&id) {
            close.notify_one();
        }
    }
}

/// Waits until shutdown is requested or the handle is gone.
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Entry point.
pub struct Transport;

impl Transport {
    /// Binds the listener and starts the listener and per-peer tasks on the
    /// current tokio runtime.
    pub async fn start<M>(
        config: TransportConfig,
    ) -> Result<(TransportHandle<M>, mpsc::Receiver<Inbound<M>>), TransportError>
    where
        M: Serialize + DeserializeOwned + Send + 'static,
    {
        config.validate()?;
        let bind_err = |source| TransportError::Bind {
            addr: config.listen_addr,
            source,
        };
        let socket = if config.listen_addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(bind_err)?;
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(config.listen_addr).map_err(bind_err)?;
        let listener = socket.listen(1024).map_err(bind_err)?;
        let local_addr = listener.local_addr()?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity);
        let stats = Arc::new(GlobalStats::default());
        let config = Arc::new(config);
        let table = Arc::new(PeerTable::new());
        // Peers added later are started here too, whatever thread (or
        // runtime without I/O: the server's driver) asks for them.
        let runtime = tokio::runtime::Handle::current();
        let mut tasks = Vec::new();
        {
            let mut peers = table.write();
            for (id, addr) in &config.peers {
                let (entry, task) =
                    spawn_peer::<M>(&runtime, &config, *id, addr.clone(), &shutdown_rx);
                peers.insert(*id, entry);
                tasks.push(task);
            }
        }

        tasks.push(tokio::spawn(inbound::listener_task::<M>(
            listener,
            config.clone(),
            stats.clone(),
            table.clone(),
            inbound_tx,
            shutdown_rx,
        )));

        tracing::info!(node = config.node_id, %local_addr, peers = config.peers.len(), "transport started");
        let inner = Inner {
            node_id: config.node_id,
            local_addr,
            runtime,
            config,
            peers: table,
            shutdown_tx,
            tasks: Mutex::new(Tasks {
                handles: tasks,
                stopped: false,
            }),
            stats,
        };
        Ok((
            TransportHandle {
                inner: Arc::new(inner),
            },
            inbound_rx,
        ))
    }
}

/// Starts the outbound task of peer `id`, with its own bounded queue.
fn spawn_peer<M: Serialize + Send + 'static>(
    runtime: &tokio::runtime::Handle,
    config: &Arc<TransportConfig>,
    id: u32,
    addr: String,
    shutdown: &watch::Receiver<bool>,
) -> (PeerEntry<M>, JoinHandle<()>) {
    let shared = Arc::new(PeerShared::new(id));
    let (tx, rx) = mpsc::channel(config.send_queue_capacity);
    let (addr_tx, addr_rx) = watch::channel(addr);
    let task = runtime.spawn(outbound::peer_task::<M>(
        config.clone(),
        shared.clone(),
        rx,
        addr_rx,
        shutdown.clone(),
    ));
    let entry = PeerEntry {
        tx,
        addr: addr_tx,
        shared,
    };
    (entry, task)
}

/// The tasks started and not yet seen finished, so that `shutdown` can
/// await them all.
struct Tasks {
    handles: Vec<JoinHandle<()>>,
    /// Set by `shutdown`: no task may start afterwards (it would not be
    /// awaited).
    stopped: bool,
}

struct Inner<M> {
    node_id: u32,
    local_addr: SocketAddr,
    /// The runtime the transport was started on.
    runtime: tokio::runtime::Handle,
    config: Arc<TransportConfig>,
    peers: Arc<PeerTable<M>>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Tasks>,
    stats: Arc<GlobalStats>,
}

impl<M> Drop for Inner<M> {
    fn drop(&mut self) {
        // Dropping `shutdown_tx` right after this also wakes every task.
        self.shutdown_tx.send_replace(true);
    }
}

/// Handle to a running transport. Cheap to clone; when the last clone is
/// dropped all tasks stop.
pub struct TransportHandle<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for TransportHandle<M> {
    fn clone(&self) -> Self {
        TransportHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Serialize + Send + 'static> TransportHandle<M> {
    /// Adds peer `id` at `addr` (`host:port`, see [`validate_peer_addr`]),
    /// starting its outbound task and queue, and admitting its inbound
    /// connections from now on. If `id` is already a peer with another
    /// address, its connection is dropped and the new address dialed
    /// (queued messages are kept, counters continue); with the same address
    /// this is a no-op.
    ///
    /// Errors: `InvalidConfig` for a malformed address or this node's own
    /// id, `Shutdown` after [`TransportHandle::shutdown`].
    pub fn set_peer(&self, id: u32, addr: &str) -> Result<(), TransportError> {
        validate_peer_addr(addr)?;
        if id == self.inner.node_id {
            return Err(TransportError::InvalidConfig(format!(
                "peer id {id} is this node's own id"
            )));
        }
        let mut peers = self.inner.peers.write();
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.stopped {
            return Err(TransportError::Shutdown);
        }
        let node = self.inner.node_id;
        if let Some(entry) = peers.get(&id) {
            let changed = entry.addr.send_if_modified(|cur| {
                let changed = cur != addr;
                if changed {
                    addr.clone_into(cur);
                }
                changed
            });
            if changed {
                entry.shared.clear_error();
                tracing::info!(node, peer = id, addr, "peer address changed");
            }
            return Ok(());
        }
        // Tasks of removed peers have exited; forget their handles so that
        // membership churn does not accumulate them.
        tasks.handles.retain(|t| !t.is_finished());
        let shutdown = self.inner.shutdown_tx.subscribe();
        let (entry, task) = spawn_peer::<M>(
            &self.inner.runtime,
            &self.inner.config,
            id,
            addr.to_string(),
            &shutdown,
        );
        peers.insert(id, entry);
        tasks.handles.push(task);
        tracing::info!(node, peer = id, addr, "peer added");
        Ok(())
    }
}

impl<M: Send + 'static> TransportHandle<M> {
    /// Queues `msg` for peer `to` without blocking. Returns false when the
    /// message was dropped (unknown peer, queue full, or transport stopped);
    /// drops are counted.
    pub fn send(&self, to: u32, msg: M) -> bool {
        let peers = self.inner.peers.read();
        let Some(peer) = peers.get(&to) else {
            self.inner
                .stats
                .dropped_unknown
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match peer.tx.try_send(msg) {
            Ok(()) => true,
            Err(_) => {
                peer.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Removes peer `id`: its outbound task stops (promptly, even while
    /// connecting or backing off), messages still queued for it are
    /// discarded, its current inbound connection is closed and new ones are
    /// refused. Later sends to it count as `dropped_unknown_peer`. Returns
    /// whether `id` was a peer.
    pub fn remove_peer(&self, id: u32) -> bool {
        // Dropping the entry closes the task's queue and address channel;
        // the latter is what the task watches to exit.
        let Some(entry) = self.inner.peers.write().remove(&id) else {
            return false;
        };
        drop(entry);
        // After the peer set changed: see `PeerTable::register_inbound`.
        self.inner.peers.close_inbound(id);
        tracing::info!(node = self.inner.node_id, peer = id, "peer removed");
        true
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Ids of the current peers, sorted.
    pub fn peer_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.peers.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Status of every current peer, sorted by id.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let mut status: Vec<PeerStatus> = self
            .inner
            .peers
            .read()
            .values()
            .map(|p| p.shared.snapshot(p.addr.borrow().clone()))
            .collect();
        status.sort_unstable_by_key(|s| s.id);
        status
    }

    /// Node-wide counters.
    pub fn stats(&self) -> TransportStats {
        let s = &self.inner.stats;
        TransportStats {
            accepted_connections: s.accepted.load(Ordering::Relaxed),
            rejected_connections: s.rejected.load(Ordering::Relaxed),
            dropped_unknown_peer: s.dropped_unknown.load(Ordering::Relaxed),
            frames_received: s.received.load(Ordering::Relaxed),
            oversized_frames: s.oversized.load(Ordering::Relaxed),
            decode_errors: s.decode_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops the listener, all connections and tasks (including those of
    /// peers added at runtime), and waits for them. The inbound channel
    /// yields `None` once drained. Idempotent; `set_peer` fails afterwards.
    pub async fn shutdown(&self) {
        let tasks = {
            let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.stopped = true;
            std::mem::take(&mut tasks.handles)
        };
        self.inner.shutdown_tx.send_replace(true);
        for t in tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "transport task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(10);

    /// Tasks that have not finished, the listener included.
    fn running(h: &TransportHandle<u64>) -> usize {
        let tasks = h.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.handles.iter().filter(|t| !t.is_finished()).count()
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + LONG;
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_peer_task_exits_during_backoff_and_is_not_kept() {
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        // Port 1 on loopback refuses at once; after that the task sleeps an
        // hour in backoff, so only removal can end it within the test.
        let mut c = TransportConfig::new(1, "c", listen, vec![(2, "127.0.0.1:1")]);
        c.connect_backoff_min = Duration::from_secs(3600);
        c.connect_backoff_max = Duration::from_secs(3600);
        let (h, _rx) = Transport::start::<u64>(c).await.expect("start");
        wait_until("a connect failure", || {
            h.peer_status()[0].last_error.is_some()
        })
        .await;
        assert_eq!(running(&h), 2);
        assert!(h.remove_peer(2));
        wait_until("the removed peer's task to exit", || running(&h) == 1).await;

        // Churn does not accumulate handles of finished tasks.
        for _ in 0..5 {
            h.set_peer(2, "127.0.0.1:1").expect("set_peer");
            assert!(h.remove_peer(2));
        }
        wait_until("removed tasks to exit", || running(&h) == 1).await;
        h.set_peer(3, "localhost:1").expect("set_peer");
        let kept = h.inner.tasks.lock().map(|t| t.handles.len()).unwrap_or(0);
        assert_eq!(kept, 2, "listener and peer 3");
        tokio::time::timeout(LONG, h.shutdown())
            .await
            .expect("shutdown hung");
        assert_eq!(running(&h), 0);
    }
}
