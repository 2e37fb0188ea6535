//! Inbound side: the listener and one read-only task per accepted connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::tls::PeerStream;
use serde::de::DeserializeOwned;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::wire::{self, Challenge, Hello, HelloAck, MAGIC, PROTOCOL_VERSION};
use crate::{wait_shutdown, GlobalStats, Inbound, PeerTable, TransportConfig, TransportError};

const READ_BUFFER: usize = 64 * 1024;

struct ListenerCtx<M> {
    config: Arc<TransportConfig>,
    stats: Arc<GlobalStats>,
    /// The current peer set: only its members are admitted, and it tracks
    /// each peer's current inbound connection.
    peers: Arc<PeerTable<M>>,
    inbound_tx: mpsc::Sender<Inbound<M>>,
    next_conn: AtomicU64,
}

pub(crate) async fn listener_task<M: DeserializeOwned + Send + 'static>(
    listener: TcpListener,
    config: Arc<TransportConfig>,
    stats: Arc<GlobalStats>,
    peers: Arc<PeerTable<M>>,
    inbound_tx: mpsc::Sender<Inbound<M>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(ListenerCtx {
        config,
        stats,
        peers,
        inbound_tx,
        next_conn: AtomicU64::new(0),
    });
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    conns.spawn(connection_task(stream, addr, ctx.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(node = ctx.config.node_id, error = %e, "accept failed");
                    tokio::select! {
                        _ = wait_shutdown(&mut shutdown) => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn connection_task<M: DeserializeOwned + Send + 'static>(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: Arc<ListenerCtx<M>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = ctx.config.node_id;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(node, %addr, error = %e, "set_nodelay failed");
    }
    let stream: PeerStream = match &ctx.config.tls {
        None => Box::new(stream),
        Some(tls) => {
            let handshake =
                tokio::time::timeout(ctx.config.handshake_timeout, tls.acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls_stream)) => Box::new(tls_stream),
                Ok(Err(e)) => {
                    ctx.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node, %addr, error = %e, "inbound TLS handshake refused");
                    return;
                }
                Err(_) => {
                    ctx.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node, %addr, "inbound TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let accepted = tokio::select! {
        biased;
        _ = wait_shutdown(&mut shutdown) => return,
        r = tokio::time::timeout(ctx.config.handshake_timeout, accept_handshake(&mut reader, &ctx)) => {
            match r {
                Ok(r) => r,
                Err(_) => Err(Rejection::Silent(TransportError::Timeout)),
            }
        }
    };
    let from = match accepted {
        Ok(id) => id,
        Err(rej) => {
            ctx.stats.rejected.fetch_add(1, Ordering::Relaxed);
            match rej {
                Rejection::Refused(reason) => {
                    tracing::warn!(node, %addr, %reason, "inbound connection refused");
                    let ack = HelloAck {
                        accepted: false,
                        reason,
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        wire::write_frame(reader.get_mut(), &ack),
                    )
                    .await;
                }
                Rejection::Silent(e) => {
                    tracing::warn!(node, %addr, error = %e, "inbound handshake failed");
                }
            }
            return;
        }
    };
    let conn_id = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let Some(close) = ctx.peers.register_inbound(from, conn_id) else {
        // Removed between the handshake's check and now.
        ctx.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node, peer = from, %addr, "inbound connection dropped: peer was just removed");
        return;
    };
    ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(node, peer = from, %addr, "inbound connection accepted");

    let result = tokio::select! {
        biased;
        _ = wait_shutdown(&mut shutdown) => Ok(()),
        _ = close.notified() => {
            tracing::debug!(node, peer = from, "inbound connection closed: superseded by a newer one, or peer removed");
            Ok(())
        }
        r = read_loop(&mut reader, from, &ctx) => r,
    };
    ctx.peers.unregister_inbound(from, conn_id);
    if let Err(e) = result {
        match e {
            TransportError::FrameTooLarge { .. } => {
                ctx.stats.oversized.fetch_add(1, Ordering::Relaxed);
            }
            TransportError::Decode(_)
            | TransportError::Protocol(_)
            | TransportError::BadVersion(_) => {
                ctx.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        tracing::warn!(node, peer = from, %addr, error = %e, "closing inbound connection");
    }
}

enum Rejection {
    /// Send the reason to the dialer, then close.
    Refused(String),
    /// Close without answering (I/O failure, garbage).
    Silent(TransportError),
}

impl From<TransportError> for Rejection {
    fn from(e: TransportError) -> Self {
        Rejection::Silent(e)
    }
}

async fn accept_handshake<M>(
    reader: &mut BufReader<PeerStream>,
    ctx: &ListenerCtx<M>,
) -> Result<u32, Rejection> {
    let cfg = &ctx.config;
    let nonce = wire::random_nonce();
    let challenge = Challenge {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id: cfg.cluster_id.clone(),
        node_id: cfg.node_id,
        nonce,
    };
    wire::write_frame(reader.get_mut(), &challenge).await?;
    let hello: Hello = wire::read_handshake_frame(reader).await?;
    if hello.magic != MAGIC {
        return Err(Rejection::Refused("bad magic".into()));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(Rejection::Refused(format!(
            "unsupported protocol version {}",
            hello.version
        )));
    }
    if hello.cluster_id != cfg.cluster_id {
        return Err(Rejection::Refused(format!(
            "wrong cluster id {:?}",
            hello.cluster_id
        )));
    }
    if hello.node_id == cfg.node_id {
        return Err(Rejection::Refused(format!(
            "node id {} is the listener's own id",
            hello.node_id
        )));
    }
    // The current set, not the configured one: peers come and go at runtime.
    if !ctx.peers.contains(hello.node_id) {
        return Err(Rejection::Refused(format!(
            "unknown node id {}",
            hello.node_id
        )));
    }
    if let Some(secret) = &cfg.cluster_secret {
        let ok = match &hello.proof {
            Some(proof) => {
                wire::verify_proof(secret, &nonce, &hello.cluster_id, hello.node_id, proof)
            }
            None => false,
        };
        if !ok {
            return Err(Rejection::Refused("authentication failed".into()));
        }
    }
    let ack = HelloAck {
        accepted: true,
        reason: String::new(),
    };
    wire::write_frame(reader.get_mut(), &ack).await?;
    Ok(hello.node_id)
}

async fn read_loop<M: DeserializeOwned>(
    reader: &mut BufReader<PeerStream>,
    from: u32,
    ctx: &ListenerCtx<M>,
) -> Result<(), TransportError> {
    let max = ctx.config.max_frame_bytes;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if !wire::read_frame(reader, max, &mut buf).await? {
            return Ok(());
        }
        let message: M = wire::decode_payload(&buf)?;
        if buf.capacity() > READ_BUFFER * 4 {
            buf = Vec::with_capacity(1024);
        }
        if ctx
            .inbound_tx
            .send(Inbound { from, message })
            .await
            .is_err()
        {
            // The application dropped the receiver.
            return Ok(());
        }
        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
    }
}
