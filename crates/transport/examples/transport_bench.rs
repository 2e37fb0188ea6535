//! Throughput benchmark: node 1 sends 100-byte payloads to node 2 over loopback.
//!
//! `cargo run --release -p paxlog-transport --example transport_bench [-- MESSAGES]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use paxlog_transport::{Transport, TransportConfig, TransportError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct BenchMsg {
    seq: u64,
    payload: Vec<u8>,
}

fn free_addr() -> Result<SocketAddr, std::io::Error> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), TransportError> {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let (a, b) = (free_addr()?, free_addr()?);
    let (h1, _rx1) =
        Transport::start::<BenchMsg>(TransportConfig::new(1, "bench", a, vec![(2, b)])).await?;
    let (h2, mut rx2) =
        Transport::start::<BenchMsg>(TransportConfig::new(2, "bench", b, vec![(1, a)])).await?;

    // Warm up: wait until the connection is up.
    while !h1.send(
        2,
        BenchMsg {
            seq: u64::MAX,
            payload: vec![],
        },
    ) {
        tokio::task::yield_now().await;
    }
    loop {
        match rx2.recv().await {
            Some(m) if m.message.seq == u64::MAX => break,
            Some(_) => {}
            None => return Err(TransportError::ConnectionClosed),
        }
    }

    let payload = vec![0xAB_u8; 100];
    let start = Instant::now();
    let sender = {
        let h1 = h1.clone();
        tokio::spawn(async move {
            let mut retries = 0u64;
            for seq in 0..total {
                let m = BenchMsg {
                    seq,
                    payload: payload.clone(),
                };
                while !h1.send(2, m.clone()) {
                    retries += 1;
                    tokio::task::yield_now().await;
                }
            }
            retries
        })
    };
    let mut got = 0u64;
    let mut bytes = 0u64;
    while got < total {
        match tokio::time::timeout(Duration::from_secs(30), rx2.recv()).await {
            Ok(Some(m)) => {
                got += 1;
                bytes += m.message.payload.len() as u64;
            }
            _ => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let retries = sender.await.unwrap_or(0);
    let st = &h1.peer_status()[0];
    println!(
        "received {got}/{total} messages of 100 B in {secs:.2} s: {:.0} msg/s, {:.1} MB/s payload \
         (frames_sent {}, queue-full retries {retries})",
        got as f64 / secs,
        bytes as f64 / secs / 1e6,
        st.frames_sent,
    );
    h1.shutdown().await;
    h2.shutdown().await;
    Ok(())
}
