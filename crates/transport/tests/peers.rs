//! Peers named by host names (resolved at every dial) and a peer set that
//! changes at runtime: `set_peer` adds or moves a peer, `remove_peer` drops
//! it, and the listener admits only the current set.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

use std::net::SocketAddr;

use paxlog_transport::{Inbound, Transport, TransportConfig, TransportError, TransportHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Receiver;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Msg(u64);

type Node = (TransportHandle<Msg>, Receiver<Inbound<Msg>>);

async fn start(c: TransportConfig) -> Node {
    start_node(c).await
}

/// `addr` as a host name rather than an IP literal.
fn named(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

fn from(from: u32, seq: u64) -> Inbound<Msg> {
    Inbound {
        from,
        message: Msg(seq),
    }
}

/// The last error reported for peer `id`, if `id` is a peer.
fn last_error(h: &TransportHandle<Msg>, id: u32) -> String {
    h.peer_status()
        .into_iter()
        .find(|s| s.id == id)
        .and_then(|s| s.last_error)
        .unwrap_or_default()
}

async fn stop(h: &TransportHandle<Msg>) {
    tokio::time::timeout(LONG, h.shutdown())
        .await
        .expect("shutdown hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_named_by_host_name_connects_and_delivers() {
    let (a, b) = (free_addr(), free_addr());
    let (ha, mut rxa) = start(config(1, a, vec![(2, named(b))])).await;
    let (hb, mut rxb) = start(config(2, b, vec![(1, named(a))])).await;
    assert!(ha.send(2, Msg(1)));
    assert!(hb.send(1, Msg(2)));
    assert_eq!(recv(&mut rxb).await, from(1, 1));
    assert_eq!(recv(&mut rxa).await, from(2, 2));
    wait_until("connected", || ha.peer_status()[0].connected).await;
    let st = &ha.peer_status()[0];
    assert_eq!(st.addr, named(b));
    // The name was resolved to the address B listens on.
    assert_eq!(st.remote_addr, Some(b));
    stop(&ha).await;
    stop(&hb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_at_runtime_exchange_messages_both_ways() {
    let (a, b) = (free_addr(), free_addr());
    let (ha, mut rxa) = start(config(1, a, NO_PEERS)).await;
    let (hb, mut rxb) = start(config(2, b, NO_PEERS)).await;
    assert!(ha.peer_ids().is_empty());
    assert!(!ha.send(2, Msg(0)));
    assert_eq!(ha.stats().dropped_unknown_peer, 1);

    // A learns of B first: B does not know A yet and refuses it, while A
    // keeps the message queued.
    ha.set_peer(2, &b.to_string()).unwrap();
    assert_eq!(ha.peer_ids(), vec![2]);
    assert!(ha.send(2, Msg(1)));
    wait_until("B refuses the unknown node", || {
        last_error(&ha, 2).contains("unknown node id 1")
    })
    .await;
    assert!(hb.stats().rejected_connections >= 1);

    // Once B knows A, the queued message gets through, and B reaches A.
    // (Asked from a thread outside any runtime, as the server's driver
    // thread is: the task still starts on the transport's runtime.)
    let hb2 = hb.clone();
    std::thread::spawn(move || hb2.set_peer(1, &named(a)))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(hb.peer_ids(), vec![1]);
    assert_eq!(recv(&mut rxb).await, from(1, 1));
    assert!(hb.send(1, Msg(2)));
    assert_eq!(recv(&mut rxa).await, from(2, 2));
    assert!(ha.send(2, Msg(3)));
    assert_eq!(recv(&mut rxb).await, from(1, 3));

    // Setting the same address again changes nothing.
    wait_until("A connected", || ha.peer_status()[0].connected).await;
    let before = ha.peer_status();
    ha.set_peer(2, &b.to_string()).unwrap();
    assert_eq!(ha.peer_status(), before);

    // Shutdown awaits the tasks started at runtime too.
    stop(&ha).await;
    stop(&hb).await;
    assert!(matches!(
        ha.set_peer(3, "localhost:1"),
        Err(TransportError::Shutdown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_peer_address_moves_traffic_to_the_new_listener() {
    let (a, b1, b2) = (free_addr(), free_addr(), free_addr());
    let (ha, _rxa) = start(config(1, a, vec![(2, b1.to_string())])).await;
    // Two incarnations of node 2, e.g. a pod re-created elsewhere.
    let (hb1, mut rxb1) = start(config(2, b1, vec![(1, a.to_string())])).await;
    let (hb2, mut rxb2) = start(config(2, b2, vec![(1, a.to_string())])).await;
    assert!(ha.send(2, Msg(1)));
    assert_eq!(recv(&mut rxb1).await, from(1, 1));

    ha.set_peer(2, &named(b2)).unwrap();
    let st = &ha.peer_status()[0];
    assert_eq!(st.addr, named(b2));
    wait_until("connected to the new address", || {
        let st = &ha.peer_status()[0];
        st.connected && st.remote_addr == Some(b2)
    })
    .await;
    assert_eq!(ha.peer_status()[0].connects, 2);
    for seq in 10..20 {
        assert!(ha.send(2, Msg(seq)));
    }
    for seq in 10..20 {
        assert_eq!(recv(&mut rxb2).await, from(1, seq));
    }
    // The old incarnation got nothing more.
    assert!(rxb1.try_recv().is_err());
    assert_eq!(hb1.stats().frames_received, 1);

    stop(&ha).await;
    stop(&hb1).await;
    stop(&hb2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_peer_gets_nothing_and_is_refused() {
    let (a, b) = (free_addr(), free_addr());
    let (ha, mut rxa) = start(config(1, a, vec![(2, named(b))])).await;
    let (hb, mut rxb) = start(config(2, b, vec![(1, named(a))])).await;
    assert!(ha.send(2, Msg(1)));
    assert!(hb.send(1, Msg(1)));
    assert_eq!(recv(&mut rxb).await, from(1, 1));
    assert_eq!(recv(&mut rxa).await, from(2, 1));

    assert!(ha.remove_peer(2));
    assert!(!ha.remove_peer(2));
    assert!(ha.peer_ids().is_empty());
    assert!(ha.peer_status().is_empty());
    assert!(!ha.send(2, Msg(2)));
    assert_eq!(ha.stats().dropped_unknown_peer, 1);

    // A closed B's connection into it, and refuses B's reconnects.
    wait_until("B refused", || {
        last_error(&hb, 1).contains("unknown node id 2")
    })
    .await;
    // B still has A as a peer: what it sends now waits in its queue, and
    // is not delivered while B is refused.
    assert!(hb.send(1, Msg(3)));
    let rejected = ha.stats().rejected_connections;
    wait_until("another refused attempt", || {
        ha.stats().rejected_connections > rejected
    })
    .await;
    assert!(rxa.try_recv().is_err());
    // A's task for B has stopped: B's listener sees nothing more.
    assert!(rxb.try_recv().is_err());
    assert_eq!(hb.stats().frames_received, 1);

    // Re-adding B lets its queued message through.
    ha.set_peer(2, &named(b)).unwrap();
    assert_eq!(recv(&mut rxa).await, from(2, 3));
    assert!(ha.send(2, Msg(4)));
    assert_eq!(recv(&mut rxb).await, from(1, 4));

    stop(&ha).await;
    stop(&hb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_are_refused() {
    let a = free_addr();
    for bad in [
        "localhost",
        "localhost:0",
        "localhost:70000",
        ":6000",
        "::1:6000",
    ] {
        let err = Transport::start::<Msg>(config(1, a, vec![(2, bad.to_string())])).await;
        assert!(
            matches!(&err, Err(TransportError::InvalidConfig(m)) if m.contains(bad)),
            "{bad}: {:?}",
            err.map(|_| ())
        );
    }

    let (h, _rx) = start(config(1, a, NO_PEERS)).await;
    for bad in [
        "",
        "localhost",
        "localhost:",
        "localhost:0",
        "host name:80",
        "[::1]",
    ] {
        match h.set_peer(2, bad) {
            Err(TransportError::InvalidConfig(m)) => assert!(m.contains("peer address"), "{m}"),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
    // This node's own id is not a peer.
    assert!(matches!(
        h.set_peer(1, "localhost:6000"),
        Err(TransportError::InvalidConfig(_))
    ));
    assert!(h.peer_ids().is_empty());
    stop(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_name_is_retried_like_any_connect_failure() {
    let (a, b) = (free_addr(), free_addr());
    // `.invalid` never resolves (RFC 6761).
    let (ha, _rxa) = start(config(1, a, vec![(2, "no-such-peer.invalid:6000")])).await;
    assert!(ha.send(2, Msg(1)));
    wait_until("the resolution failure reported", || {
        last_error(&ha, 2).contains("cannot resolve no-such-peer.invalid:6000")
    })
    .await;
    let st = &ha.peer_status()[0];
    assert!(!st.connected);
    assert_eq!(st.remote_addr, None);

    // Pointing the peer at a name that resolves recovers, and the message
    // queued meanwhile is delivered.
    let (hb, mut rxb) = start(config(2, b, vec![(1, named(a))])).await;
    ha.set_peer(2, &named(b)).unwrap();
    assert_eq!(recv(&mut rxb).await, from(1, 1));
    stop(&ha).await;
    stop(&hb).await;
}
