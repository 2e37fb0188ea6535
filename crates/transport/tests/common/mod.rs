//! Helpers shared by the transport's integration tests.
// Each test file uses its own subset.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use paxlog_transport::{Inbound, Transport, TransportConfig, TransportHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc::Receiver;

/// Deadline of every wait: generous, the machine is slow and busy.
pub const LONG: Duration = Duration::from_secs(60);

/// The cluster id every test node uses.
pub const CLUSTER: &str = "test-cluster";

/// Reserves an ephemeral loopback port (bind, read, release).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A node that knows no peer yet.
pub const NO_PEERS: Vec<(u32, String)> = Vec::new();

/// A node of `CLUSTER` with fast reconnects.
pub fn config<A: ToString>(id: u32, addr: SocketAddr, peers: Vec<(u32, A)>) -> TransportConfig {
    let mut c = TransportConfig::new(id, CLUSTER, addr, peers);
    c.connect_backoff_min = Duration::from_millis(10);
    c.connect_backoff_max = Duration::from_millis(200);
    c
}

/// Starts a node (each test file wraps it with its message type).
pub async fn start_node<M>(c: TransportConfig) -> (TransportHandle<M>, Receiver<Inbound<M>>)
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    Transport::start::<M>(c).await.unwrap()
}

pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn recv<M>(rx: &mut Receiver<Inbound<M>>) -> Inbound<M> {
    tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("inbound channel closed")
}
