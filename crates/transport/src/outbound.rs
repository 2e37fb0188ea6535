//! Outbound side: one task per peer owning a bounded queue and a persistent
//! connection to the peer's current address, which is a name resolved at
//! every connect attempt.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::PeerStream;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::wire::{self, Challenge, Hello, HelloAck, MAGIC, PROTOCOL_VERSION};
use crate::{wait_shutdown, PeerShared, TransportConfig, TransportError};

const WRITE_BUFFER: usize = 64 * 1024;

/// Exponential backoff with jitter, driven by a small xorshift generator.
pub(crate) struct Backoff {
    cur: Duration,
    min: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos;
        if rng == 0 {
            rng = 0x2545_F491_4F6C_DD1D;
        }
        Backoff {
            cur: min,
            min,
            max,
            rng,
        }
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The next delay: uniform in `[cur/2, cur]`, then `cur` doubles up to max.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        let half = base / 2;
        let span = (base - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_rand() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.cur = self.min;
    }
}

/// Why the peer task stopped waiting for a connection, a session or a
/// backoff delay.
enum Interrupt {
    /// Transport shutdown or peer removed: exit.
    Stop,
    /// The peer's address changed: dial the new one now.
    Retarget,
}

/// Waits for the peer's address to change (`Retarget`) or its address
/// channel to close, i.e. the peer was removed (`Stop`).
async fn addr_changed(addr: &mut watch::Receiver<String>) -> Interrupt {
    match addr.changed().await {
        Ok(()) => Interrupt::Retarget,
        Err(_) => Interrupt::Stop,
    }
}

/// The outbound task of one peer: dials the peer's current address (resolved
/// afresh at each attempt, as the IP behind a name may change) and drains
/// the queue into the connection, reconnecting with backoff. It exits on
/// shutdown or when the peer is removed, and re-dials at once when the
/// peer's address changes.
pub(crate) async fn peer_task<M: Serialize + Send + 'static>(
    config: Arc<TransportConfig>,
    peer: Arc<PeerShared>,
    mut rx: mpsc::Receiver<M>,
    mut addr_rx: watch::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let seed = (u64::from(config.node_id) << 32) | u64::from(peer.id);
    let mut backoff = Backoff::new(config.connect_backoff_min, config.connect_backoff_max, seed);
    let mut logged_failure = false;
    loop {
        let addr = addr_rx.borrow_and_update().clone();
        let connected = tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => return,
            i = addr_changed(&mut addr_rx) => match i {
                Interrupt::Stop => return,
                Interrupt::Retarget => {
                    backoff.reset();
                    continue;
                }
            },
            r = connect(&config, peer.id, &addr) => r,
        };
        match connected {
            Ok((stream, remote)) => {
                backoff.reset();
                logged_failure = false;
                peer.connects.fetch_add(1, Ordering::Relaxed);
                peer.set_connected(Some(remote));
                tracing::debug!(node = config.node_id, peer = peer.id, %addr, %remote, "connected");
                let end = tokio::select! {
                    biased;
                    _ = wait_shutdown(&mut shutdown) => Err(Interrupt::Stop),
                    i = addr_changed(&mut addr_rx) => Err(i),
                    r = run_session(stream, &mut rx, &peer, config.max_frame_bytes) => Ok(r),
                };
                peer.set_connected(None);
                match end {
                    Err(Interrupt::Stop) | Ok(Ok(())) => return,
                    Err(Interrupt::Retarget) => {
                        tracing::debug!(
                            node = config.node_id,
                            peer = peer.id,
                            "address changed, reconnecting"
                        );
                        backoff.reset();
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(node = config.node_id, peer = peer.id, error = %e, "connection lost");
                        peer.set_error(e.to_string());
                    }
                }
            }
            Err(e) => {
                if matches!(e, TransportError::Rejected(_) | TransportError::Protocol(_)) {
                    tracing::warn!(node = config.node_id, peer = peer.id, error = %e, "handshake failed");
                } else if !logged_failure {
                    tracing::debug!(node = config.node_id, peer = peer.id, error = %e, "connect failed, retrying");
                }
                logged_failure = true;
                peer.set_error(e.to_string());
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => return,
            i = addr_changed(&mut addr_rx) => match i {
                Interrupt::Stop => return,
                Interrupt::Retarget => backoff.reset(),
            },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Resolves `addr` (`host:port`) and connects to the first resolved address
/// that accepts, then runs TLS (if configured) and the handshake, all within
/// `handshake_timeout`. Returns the stream and the address it reached.
async fn connect(
    config: &TransportConfig,
    peer_id: u32,
    addr: &str,
) -> Result<(PeerStream, SocketAddr), TransportError> {
    let fut = async {
        let (tcp, remote) = dial(addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream: PeerStream = match &config.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(
                tls.connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| TransportError::Rejected(format!("TLS handshake failed: {e}")))?,
            ),
        };
        dial_handshake(&mut stream, config, peer_id).await?;
        Ok((stream, remote))
    };
    match tokio::time::timeout(config.handshake_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout),
    }
}

/// Resolves `addr` now (never cached: the IP behind a name changes when a
/// container is re-created) and tries each resolved address in turn; the
/// error is the last address's.
async fn dial(addr: &str) -> Result<(TcpStream, SocketAddr), TransportError> {
    let resolve_err = |source| TransportError::Resolve {
        name: addr.to_string(),
        source,
    };
    let resolved = tokio::net::lookup_host(addr).await.map_err(resolve_err)?;
    let mut last = None;
    for remote in resolved {
        match TcpStream::connect(remote).await {
            Ok(tcp) => return Ok((tcp, remote)),
            Err(source) => {
                last = Some(TransportError::Connect {
                    name: addr.to_string(),
                    addr: remote,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        resolve_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses found",
        ))
    }))
}

/// Dialer side of the handshake (see [`crate::wire`]).
pub(crate) async fn dial_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &TransportConfig,
    expected_peer: u32,
) -> Result<(), TransportError> {
    let challenge: Challenge = wire::read_handshake_frame(stream).await?;
    if challenge.magic != MAGIC {
        return Err(TransportError::Protocol("bad magic from listener".into()));
    }
    if challenge.version != PROTOCOL_VERSION {
        return Err(TransportError::BadVersion(challenge.version));
    }
    if challenge.cluster_id != config.cluster_id {
        return Err(TransportError::Protocol(format!(
            "listener belongs to cluster {:?}, expected {:?}",
            challenge.cluster_id, config.cluster_id
        )));
    }
    if challenge.node_id != expected_peer {
        return Err(TransportError::Protocol(format!(
            "listener is node {}, expected {expected_peer}",
            challenge.node_id
        )));
    }
    let proof = match &config.cluster_secret {
        Some(secret) => Some(wire::compute_proof(
            secret,
            &challenge.nonce,
            &config.cluster_id,
            config.node_id,
        )?),
        None => None,
    };
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id,
        proof,
    };
    wire::write_frame(stream, &hello).await?;
    let ack: HelloAck = wire::read_handshake_frame(stream).await?;
    if !ack.accepted {
        return Err(TransportError::Rejected(ack.reason));
    }
    Ok(())
}

/// Drains the queue into the connection until it breaks. `Ok(())` means the
/// queue was closed (handle dropped).
async fn run_session<M: Serialize>(
    stream: PeerStream,
    rx: &mut mpsc::Receiver<M>,
    peer: &PeerShared,
    max_frame_bytes: usize,
) -> Result<(), TransportError> {
    let (mut rd, wr) = tokio::io::split(stream);
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    let limit = rx.max_capacity().max(1);
    let mut batch: Vec<M> = Vec::with_capacity(limit.min(1024));
    let mut scratch = Vec::with_capacity(256);
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, limit) => {
                if n == 0 {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                let total = batch.len() as u64;
                let mut written = 0u64;
                let mut skipped = 0u64;
                let mut result = Ok(());
                for msg in batch.drain(..) {
                    match wire::encode_frame(&msg, &mut scratch) {
                        Ok(len) if len <= max_frame_bytes => {
                            if let Err(e) = wr.write_all(&scratch).await {
                                result = Err(e);
                                break;
                            }
                            written += 1;
                        }
                        Ok(len) => {
                            skipped += 1;
                            tracing::warn!(peer = peer.id, len, max = max_frame_bytes, "dropping oversized outbound message");
                        }
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(peer = peer.id, error = %e, "dropping unencodable outbound message");
                        }
                    }
                }
                if scratch.capacity() > WRITE_BUFFER * 4 {
                    scratch = Vec::with_capacity(256);
                }
                let result = match result {
                    Ok(()) => wr.flush().await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        peer.frames_sent.fetch_add(written, Ordering::Relaxed);
                        peer.dropped.fetch_add(skipped, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Whatever was in this batch may not have arrived.
                        peer.dropped.fetch_add(total, Ordering::Relaxed);
                        return Err(e.into());
                    }
                }
            }
            r = rd.read(&mut probe) => {
                return match r {
                    Ok(0) => Err(TransportError::ConnectionClosed),
                    Ok(_) => Err(TransportError::Protocol("unexpected data from listener".into())),
                    Err(e) => Err(e.into()),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let min = Duration::from_millis(20);
        let max = Duration::from_secs(1);
        let mut b = Backoff::new(min, max, 7);
        let mut cap = min;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= cap / 2 && d <= cap, "{d:?} vs {cap:?}");
            cap = (cap * 2).min(max);
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
