//! Wire format.
//!
//! Every frame is `[u32 BE length of the rest][u8 protocol version][payload]`,
//! where the payload is postcard-encoded. The length counts the version byte
//! and the payload and must not exceed `max_frame_bytes`.
//!
//! Handshake (each step one frame):
//! 1. listener -> dialer: [`Challenge`] (magic, version, cluster id, the
//!    listener's node id, a random 32-byte nonce);
//! 2. dialer -> listener: [`Hello`] (magic, version, cluster id, dialer node
//!    id, and when a cluster secret is configured
//!    `HMAC-SHA256(secret, nonce || cluster_id || node_id as u32 BE)`);
//! 3. listener -> dialer: [`HelloAck`]; on rejection the listener closes.
//!
//! After the handshake the connection carries application frames from the
//! dialer to the listener only.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::TransportError;

/// Protocol version carried in every frame header and in the handshake.
/// 2: promises come in pages (`Message::Promise` gained `complete`), so a
/// replica of version 1 is refused at the handshake, not misread.
/// 3: the server's messages gained `ClientAddress` (replicas announce where
/// they serve clients).
/// 4: `ClientAddress` gained the etcd gRPC address.
pub const PROTOCOL_VERSION: u8 = 4;
/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"PXLG";
/// Size of the frame length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest handshake frame accepted (before the peer is authenticated).
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// First handshake frame, sent by the listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub magic: [u8; 4],
    pub version: u8,
    pub cluster_id: String,
    pub node_id: u32,
    pub nonce: [u8; 32],
}

/// Second handshake frame, sent by the dialer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u8,
    pub cluster_id: String,
    pub node_id: u32,
    pub proof: Option<[u8; 32]>,
}

/// Final handshake frame, sent by the listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub accepted: bool,
    pub reason: String,
}

/// `HMAC-SHA256(secret, nonce || cluster_id || node_id BE)`.
pub fn compute_proof(
    secret: &[u8],
    nonce: &[u8; 32],
    cluster_id: &str,
    node_id: u32,
) -> Result<[u8; 32], TransportError> {
    let out = proof_mac(secret, nonce, cluster_id, node_id)?
        .finalize()
        .into_bytes();
    let mut proof = [0u8; 32];
    proof.copy_from_slice(&out);
    Ok(proof)
}

/// Constant-time check of a proof.
pub fn verify_proof(
    secret: &[u8],
    nonce: &[u8; 32],
    cluster_id: &str,
    node_id: u32,
    proof: &[u8; 32],
) -> bool {
    match proof_mac(secret, nonce, cluster_id, node_id) {
        Ok(mac) => mac.verify_slice(proof).is_ok(),
        Err(_) => false,
    }
}

fn proof_mac(
    secret: &[u8],
    nonce: &[u8; 32],
    cluster_id: &str,
    node_id: u32,
) -> Result<Hmac<Sha256>, TransportError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|e| TransportError::InvalidConfig(format!("cluster secret: {e}")))?;
    mac.update(nonce);
    mac.update(cluster_id.as_bytes());
    mac.update(&node_id.to_be_bytes());
    Ok(mac)
}

/// 32 unpredictable bytes (std's per-process random SipHash keys, a counter and the clock).
pub fn random_nonce() -> [u8; 32] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = [0u8; 32];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(now);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Encodes `msg` as a complete frame into `buf` (cleared first).
/// Returns the frame's length field (version byte + payload).
pub fn encode_frame<T: Serialize + ?Sized>(
    msg: &T,
    buf: &mut Vec<u8>,
) -> Result<usize, TransportError> {
    buf.clear();
    buf.extend_from_slice(&[0, 0, 0, 0, PROTOCOL_VERSION]);
    let mut v = postcard::to_extend(msg, std::mem::take(buf)).map_err(TransportError::Encode)?;
    let len = v.len() - LEN_PREFIX;
    let len32 = u32::try_from(len).map_err(|_| TransportError::FrameTooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    v[..LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
    *buf = v;
    Ok(len)
}

/// Reads one frame's payload into `buf`. Returns `Ok(false)` on a clean end of
/// stream at a frame boundary.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, TransportError> {
    let mut hdr = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = r.read(&mut hdr[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(TransportError::ConnectionClosed);
        }
        got += n;
    }
    let len = u32::from_be_bytes(hdr) as usize;
    if len == 0 {
        return Err(TransportError::Protocol("empty frame".into()));
    }
    if len > max_frame_bytes {
        return Err(TransportError::FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let version = r.read_u8().await?;
    if version != PROTOCOL_VERSION {
        return Err(TransportError::BadVersion(version));
    }
    buf.clear();
    buf.resize(len - 1, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

/// Decodes a whole payload; trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TransportError> {
    let (v, rest) = postcard::take_from_bytes::<T>(payload).map_err(TransportError::Decode)?;
    if !rest.is_empty() {
        return Err(TransportError::Protocol(format!(
            "{} trailing bytes after message",
            rest.len()
        )));
    }
    Ok(v)
}

/// Writes one small frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), TransportError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads and decodes one handshake frame.
pub async fn read_handshake_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, TransportError> {
    let mut buf = Vec::new();
    if !read_frame(r, MAX_HANDSHAKE_FRAME, &mut buf).await? {
        return Err(TransportError::ConnectionClosed);
    }
    decode_payload(&buf)
}
