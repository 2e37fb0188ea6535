//! What replicas send each other: consensus messages, plus the chunked
//! snapshot transfer that the core delegates to the driver.

use paxlog_core::{Message, Slot};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Wire {
    Core(Message),
    /// Send me your newest snapshot from `offset` (`log_start` pins which
    /// one, when resuming).
    SnapshotRequest {
        log_start: Option<Slot>,
        offset: u64,
    },
    SnapshotChunk {
        log_start: Slot,
        offset: u64,
        data: Vec<u8>,
        total_len: u64,
        total_crc: u32,
        chunk_crc: u32,
    },
    /// The asked-for snapshot does not exist (any more).
    SnapshotUnavailable,
    /// Where the sender serves clients (sent now and then): a follower
    /// can then point a client, or a replica that joins, at its leader.
    ClientAddress {
        http_addr: String,
        /// Its etcd gRPC API, if it serves one.
        grpc_addr: Option<String>,
    },
}
