#![allow(clippy::unwrap_used)]

mod common;

use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use paxlog_transport::wire::{self, Challenge, Hello, HelloAck, MAGIC, PROTOCOL_VERSION};
use paxlog_transport::{Inbound, Transport, TransportConfig, TransportHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    body: Vec<u8>,
}

fn msg(seq: u64) -> Msg {
    Msg {
        seq,
        body: vec![7; 16],
    }
}

type Node = (TransportHandle<Msg>, Receiver<Inbound<Msg>>);

async fn start(c: TransportConfig) -> Node {
    start_node(c).await
}

/// Sends, retrying (yielding) while the queue is full.
async fn send_all(h: &TransportHandle<Msg>, to: u32, m: Msg) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !h.send(to, m.clone()) {
        assert!(tokio::time::Instant::now() < deadline, "queue stayed full");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_many_messages_in_order() {
    let addrs: Vec<(u32, SocketAddr)> = (1..=3).map(|i| (i, free_addr())).collect();
    let mut nodes = Vec::new();
    for &(id, addr) in &addrs {
        let peers = addrs.iter().copied().filter(|(p, _)| *p != id).collect();
        nodes.push(start(config(id, addr, peers)).await);
    }
    const N: u64 = 3000;
    let handles: Vec<_> = nodes.iter().map(|(h, _)| h.clone()).collect();
    let mut senders = Vec::new();
    for h in handles.clone() {
        senders.push(tokio::spawn(async move {
            for seq in 0..N {
                for to in h.peer_ids() {
                    send_all(&h, to, msg(seq)).await;
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    for (h, rx) in nodes.iter_mut() {
        let me = h.node_id();
        let mut next = std::collections::HashMap::new();
        for _ in 0..(2 * N) {
            let m = recv(rx).await;
            assert_ne!(m.from, me);
            let e = next.entry(m.from).or_insert(0u64);
            assert_eq!(m.message.seq, *e, "out of order from {}", m.from);
            assert_eq!(m.message.body, vec![7; 16]);
            *e += 1;
        }
        assert!(next.values().all(|v| *v == N));
    }
    for (h, _) in &nodes {
        for st in h.peer_status() {
            assert!(st.connected, "{st:?}");
            assert_eq!(st.frames_sent, N);
            assert_eq!(st.dropped, 0);
        }
        assert_eq!(h.stats().frames_received, 2 * N);
    }
    for (h, _) in &nodes {
        tokio::time::timeout(LONG, h.shutdown()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_peer_is_reached_after_backoff() {
    let (a, b) = (free_addr(), free_addr());
    let (ha, _rxa) = start(config(1, a, vec![(2, b)])).await;
    assert!(ha.send(2, msg(1)));
    wait_until("a connect failure", || {
        ha.peer_status()[0].last_error.is_some()
    })
    .await;
    assert!(!ha.peer_status()[0].connected);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (hb, mut rxb) = start(config(2, b, vec![(1, a)])).await;
    let m = recv(&mut rxb).await;
    assert_eq!(
        m,
        Inbound {
            from: 1,
            message: msg(1)
        }
    );
    wait_until("connected", || ha.peer_status()[0].connected).await;
    ha.shutdown().await;
    hb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reconnected() {
    let (a, b) = (free_addr(), free_addr());
    let (ha, _rxa) = start(config(1, a, vec![(2, b)])).await;
    let (hb, mut rxb) = start(config(2, b, vec![(1, a)])).await;
    assert!(ha.send(2, msg(0)));
    assert_eq!(recv(&mut rxb).await.message.seq, 0);
    tokio::time::timeout(LONG, hb.shutdown()).await.unwrap();
    drop(hb);
    while rxb.recv().await.is_some() {}
    wait_until("disconnect noticed", || !ha.peer_status()[0].connected).await;

    let (hb2, mut rxb2) = start(config(2, b, vec![(1, a)])).await;
    // Messages sent around the restart may be lost; keep sending until one lands.
    let sender = {
        let ha = ha.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                ha.send(2, msg(seq));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let m = recv(&mut rxb2).await;
    assert_eq!(m.from, 1);
    assert!(m.message.seq >= 1);
    // Later messages arrive in order on the new connection.
    let next = recv(&mut rxb2).await;
    assert_eq!(next.message.seq, m.message.seq + 1);
    sender.abort();
    assert!(ha.peer_status()[0].connects >= 2);
    ha.shutdown().await;
    hb2.shutdown().await;
}

/// Performs the dialer side of the handshake by hand.
async fn raw_handshake(
    addr: SocketAddr,
    cluster: &str,
    node_id: u32,
    secret: Option<&[u8]>,
    corrupt_proof: bool,
) -> (TcpStream, HelloAck) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ch: Challenge = wire::read_handshake_frame(&mut s).await.unwrap();
    assert_eq!(ch.magic, MAGIC);
    let mut proof = secret.map(|k| wire::compute_proof(k, &ch.nonce, cluster, node_id).unwrap());
    if corrupt_proof {
        if let Some(p) = proof.as_mut() {
            p[0] ^= 1;
        }
    }
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id: cluster.into(),
        node_id,
        proof,
    };
    wire::write_frame(&mut s, &hello).await.unwrap();
    let ack: HelloAck = tokio::time::timeout(LONG, wire::read_handshake_frame(&mut s))
        .await
        .unwrap()
        .unwrap();
    (s, ack)
}

async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(LONG, s.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "expected close, got {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_frames_close_connection_node_keeps_serving() {
    let (a, b) = (free_addr(), free_addr());
    let mut ca = config(1, a, vec![(2, b)]);
    ca.max_frame_bytes = 1024;
    let (ha, mut rxa) = start(ca).await;

    // Oversized frame header.
    let (mut s, ack) = raw_handshake(a, CLUSTER, 2, None, false).await;
    assert!(ack.accepted, "{ack:?}");
    let mut frame = 1_000_000u32.to_be_bytes().to_vec();
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&[0u8; 64]);
    s.write_all(&frame).await.unwrap();
    assert_closed(&mut s).await;
    wait_until("oversized counted", || ha.stats().oversized_frames == 1).await;

    // Undecodable payload.
    let (mut s, ack) = raw_handshake(a, CLUSTER, 2, None, false).await;
    assert!(ack.accepted);
    s.write_all(&[0, 0, 0, 3, PROTOCOL_VERSION, 0xff, 0xff])
        .await
        .unwrap();
    assert_closed(&mut s).await;
    wait_until("decode error counted", || ha.stats().decode_errors == 1).await;

    // Wrong frame version.
    let (mut s, _) = raw_handshake(a, CLUSTER, 2, None, false).await;
    s.write_all(&[0, 0, 0, 2, 99, 0]).await.unwrap();
    assert_closed(&mut s).await;

    // A valid raw frame is delivered with the handshake's identity.
    let (mut s, _) = raw_handshake(a, CLUSTER, 2, None, false).await;
    let mut buf = Vec::new();
    wire::encode_frame(&msg(42), &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    assert_eq!(
        recv(&mut rxa).await,
        Inbound {
            from: 2,
            message: msg(42)
        }
    );
    drop(s);

    // A real peer still gets through; its own oversized message is dropped on the send side.
    let mut cb = config(2, b, vec![(1, a)]);
    cb.max_frame_bytes = 1024;
    let (hb, _rxb) = start(cb).await;
    assert!(hb.send(
        1,
        Msg {
            seq: 1,
            body: vec![0; 4096]
        }
    ));
    assert!(hb.send(1, msg(2)));
    assert_eq!(
        recv(&mut rxa).await,
        Inbound {
            from: 2,
            message: msg(2)
        }
    );
    wait_until("send-side drop counted", || {
        hb.peer_status()[0].dropped == 1
    })
    .await;
    assert_eq!(hb.peer_status()[0].frames_sent, 1);
    ha.shutdown().await;
    hb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_refused() {
    let (a, b) = (free_addr(), free_addr());
    let secret = b"s3cret".to_vec();
    let (ha, mut rxa) = start(config(1, a, vec![(2, b)]).with_secret(secret.clone())).await;

    let cases: Vec<(&str, u32, Option<&[u8]>, bool)> = vec![
        ("other-cluster", 2, Some(&secret), false), // wrong cluster
        (CLUSTER, 9, Some(&secret), false),         // unknown node
        (CLUSTER, 1, Some(&secret), false),         // own id
        (CLUSTER, 2, None, false),                  // missing proof
        (CLUSTER, 2, Some(b"wrong"), false),        // wrong secret
        (CLUSTER, 2, Some(&secret), true),          // corrupted proof
    ];
    for (i, (cluster, id, key, corrupt)) in cases.iter().enumerate() {
        let (mut s, ack) = raw_handshake(a, cluster, *id, *key, *corrupt).await;
        assert!(!ack.accepted, "case {i} accepted");
        assert_closed(&mut s).await;
        wait_until("rejection counted", || {
            ha.stats().rejected_connections == i as u64 + 1
        })
        .await;
    }
    // Bad magic.
    let mut s = TcpStream::connect(a).await.unwrap();
    let _: Challenge = wire::read_handshake_frame(&mut s).await.unwrap();
    let hello = Hello {
        magic: *b"NOPE",
        version: PROTOCOL_VERSION,
        cluster_id: CLUSTER.into(),
        node_id: 2,
        proof: None,
    };
    wire::write_frame(&mut s, &hello).await.unwrap();
    let ack: HelloAck = wire::read_handshake_frame(&mut s).await.unwrap();
    assert!(!ack.accepted);

    // A real node with the wrong secret is refused and reports it.
    let (hb, _rxb) = start(config(2, b, vec![(1, a)]).with_secret(b"nope".to_vec())).await;
    assert!(hb.send(1, msg(1)));
    wait_until("refusal reported", || {
        hb.peer_status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    assert!(!hb.peer_status()[0].connected);
    hb.shutdown().await;
    drop(hb);

    // A real node with the wrong cluster id notices it is talking to another cluster.
    let mut cw = config(2, b, vec![(1, a)]).with_secret(secret.clone());
    cw.cluster_id = "other-cluster".into();
    let (hw, _rxw) = start(cw).await;
    wait_until("cluster mismatch reported", || {
        hw.peer_status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cluster"))
    })
    .await;
    hw.shutdown().await;
    drop(hw);

    // Nothing was delivered; the right secret works.
    assert!(rxa.try_recv().is_err());
    let (hb, _rxb) = start(config(2, b, vec![(1, a)]).with_secret(secret)).await;
    assert!(hb.send(1, msg(5)));
    assert_eq!(
        recv(&mut rxa).await,
        Inbound {
            from: 2,
            message: msg(5)
        }
    );
    ha.shutdown().await;
    hb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_send_queue_drops_instead_of_blocking() {
    let (a, dead) = (free_addr(), free_addr());
    let mut c = config(1, a, vec![(2, dead)]);
    c.send_queue_capacity = 4;
    let (h, _rx) = start(c).await;
    let accepted = (0..100).filter(|i| h.send(2, msg(*i))).count();
    assert!(accepted <= 4, "accepted {accepted}");
    let st = &h.peer_status()[0];
    assert_eq!(st.dropped, 100 - accepted as u64);
    assert!(!h.send(77, msg(0)));
    assert_eq!(h.stats().dropped_unknown_peer, 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_terminate() {
    let (a, b) = (free_addr(), free_addr());
    let (ha, mut rxa) = start(config(1, a, vec![(2, b)])).await;
    let (hb, mut rxb) = start(config(2, b, vec![(1, a)])).await;
    assert!(ha.send(2, msg(1)));
    assert!(hb.send(1, msg(1)));
    recv(&mut rxa).await;
    recv(&mut rxb).await;

    tokio::time::timeout(LONG, ha.shutdown()).await.unwrap();
    tokio::time::timeout(LONG, ha.shutdown()).await.unwrap(); // idempotent
    assert!(tokio::time::timeout(LONG, rxa.recv())
        .await
        .unwrap()
        .is_none());
    assert!(!ha.send(2, msg(2)));
    // The port is free again.
    let again = tokio::net::TcpListener::bind(a).await.unwrap();
    drop(again);

    // Dropping the last handle stops everything too.
    let hb2 = hb.clone();
    drop(hb);
    drop(hb2);
    assert!(tokio::time::timeout(LONG, rxb.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected() {
    let a = free_addr();
    let c = config(1, a, vec![(1, free_addr())]);
    assert!(Transport::start::<Msg>(c).await.is_err());
    let mut c = config(1, a, NO_PEERS);
    c.send_queue_capacity = 0;
    assert!(Transport::start::<Msg>(c).await.is_err());
}
