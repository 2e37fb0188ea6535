//! Outbound side: one task per peer owning a bounded queue and a persistent
//! connection.

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

pub(crate) async fn peer_task<M: Serialize + Send + 'static>(
    config: Arc<TransportConfig>,
    peer: Arc<PeerShared>,
    mut rx: mpsc::Receiver<M>,
    mut shutdown: watch::Receiver<bool>,
) {
    let seed = (u64::from(config.node_id) << 32) | u64::from(peer.id);
    let mut backoff = Backoff::new(config.connect_backoff_min, config.connect_backoff_max, seed);
    let mut logged_failure = false;
    loop {
        let connected = tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => return,
            r = connect(&config, &peer) => r,
        };
        match connected {
            Ok(stream) => {
                backoff.reset();
                logged_failure = false;
                peer.connects.fetch_add(1, Ordering::Relaxed);
                peer.connected.store(true, Ordering::Relaxed);
                tracing::debug!(node = config.node_id, peer = peer.id, addr = %peer.addr, "connected");
                let end = tokio::select! {
                    biased;
                    _ = wait_shutdown(&mut shutdown) => None,
                    r = run_session(stream, &mut rx, &peer, config.max_frame_bytes) => Some(r),
                };
                peer.connected.store(false, Ordering::Relaxed);
                match end {
                    None | Some(Ok(())) => return,
                    Some(Err(e)) => {
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
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn connect(
    config: &TransportConfig,
    peer: &PeerShared,
) -> Result<PeerStream, TransportError> {
    let fut = async {
        let tcp = TcpStream::connect(peer.addr).await?;
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
        dial_handshake(&mut stream, config, peer.id).await?;
        Ok(stream)
    };
    match tokio::time::timeout(config.handshake_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout),
    }
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
