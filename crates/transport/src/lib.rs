//! Peer-to-peer transport between paxlog replicas.
//!
//! Each node listens for inbound connections (read-only streams feeding one
//! bounded inbound channel) and keeps one outbound TCP connection per peer,
//! owned by a task with a bounded queue. [`TransportHandle::send`] never
//! blocks: when a peer's queue is full (or the peer is unknown) the message is
//! dropped and counted — consensus tolerates message loss.
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
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{
    TransportConfig, DEFAULT_INBOUND_CAPACITY, DEFAULT_MAX_FRAME_BYTES, DEFAULT_SEND_QUEUE_CAPACITY,
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
    pub addr: SocketAddr,
    /// True while an outbound connection is established (handshake done).
    pub connected: bool,
    /// Frames written and flushed to the peer.
    pub frames_sent: u64,
    /// Messages dropped: queue full, oversized, unencodable, or lost with a
    /// broken connection.
    pub dropped: u64,
    /// Number of successful outbound handshakes so far.
    pub connects: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// Node-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Inbound connections that completed the handshake.
    pub accepted_connections: u64,
    /// Inbound connections refused during the handshake.
    pub rejected_connections: u64,
    /// Messages passed to `send` for an unknown peer (dropped).
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
    addr: SocketAddr,
    connected: AtomicBool,
    frames_sent: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl PeerShared {
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn snapshot(&self) -> PeerStatus {
        PeerStatus {
            id: self.id,
            addr: self.addr,
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
        let mut tasks = Vec::new();
        let mut peers = HashMap::new();
        let mut order = Vec::new();

        for &(id, addr) in &config.peers {
            let shared = Arc::new(PeerShared {
                id,
                addr,
                connected: AtomicBool::new(false),
                frames_sent: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                connects: AtomicU64::new(0),
                last_error: Mutex::new(None),
            });
            let (tx, rx) = mpsc::channel(config.send_queue_capacity);
            tasks.push(tokio::spawn(outbound::peer_task::<M>(
                config.clone(),
                shared.clone(),
                rx,
                shutdown_rx.clone(),
            )));
            peers.insert(id, PeerEntry { tx, shared });
            order.push(id);
        }

        tasks.push(tokio::spawn(inbound::listener_task::<M>(
            listener,
            config.clone(),
            stats.clone(),
            inbound_tx,
            shutdown_rx,
        )));

        tracing::info!(node = config.node_id, %local_addr, peers = order.len(), "transport started");
        let inner = Inner {
            node_id: config.node_id,
            local_addr,
            peers,
            order,
            shutdown_tx,
            tasks: Mutex::new(tasks),
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

struct PeerEntry<M> {
    tx: mpsc::Sender<M>,
    shared: Arc<PeerShared>,
}

struct Inner<M> {
    node_id: u32,
    local_addr: SocketAddr,
    peers: HashMap<u32, PeerEntry<M>>,
    order: Vec<u32>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
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

impl<M: Send + 'static> TransportHandle<M> {
    /// Queues `msg` for peer `to` without blocking. Returns false when the
    /// message was dropped (unknown peer, queue full, or transport stopped);
    /// drops are counted.
    pub fn send(&self, to: u32, msg: M) -> bool {
        let Some(peer) = self.inner.peers.get(&to) else {
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

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Ids of the configured peers, in configuration order.
    pub fn peer_ids(&self) -> Vec<u32> {
        self.inner.order.clone()
    }

    /// Status of every peer, in configuration order.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.inner
            .order
            .iter()
            .filter_map(|id| self.inner.peers.get(id))
            .map(|p| p.shared.snapshot())
            .collect()
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

    /// Stops the listener, all connections and tasks, and waits for them.
    /// The inbound channel yields `None` once drained. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "transport task failed");
            }
        }
    }
}
