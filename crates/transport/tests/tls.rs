//! Mutual TLS between peers: certificates signed by the cluster CA are
//! required both ways; anything else never reaches the paxlog handshake.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

use paxlog_transport::{PeerTls, Transport};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::time::Duration;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A replica's TLS settings: a certificate for "paxlog" signed by `signer`,
/// trusting `trusted`.
fn node_tls(signer: &Ca, trusted: &Ca) -> PeerTls {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["paxlog".to_string()]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &signer.cert, &signer.key).unwrap();
    PeerTls::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        trusted.cert.pem().as_bytes(),
        "paxlog",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_cluster_certificates_talk_and_others_are_refused() {
    let cluster_ca = ca("paxlog cluster CA");
    let other_ca = ca("someone else's CA");
    let (a, b, c, d) = (free_addr(), free_addr(), free_addr(), free_addr());

    let (ha, mut rxa) = Transport::start::<u64>(
        config(1, a, vec![(2, b), (3, c), (4, d)]).with_tls(node_tls(&cluster_ca, &cluster_ca)),
    )
    .await
    .unwrap();
    let (hb, _rxb) = Transport::start::<u64>(
        config(2, b, vec![(1, a)]).with_tls(node_tls(&cluster_ca, &cluster_ca)),
    )
    .await
    .unwrap();
    // Node 3 has a certificate from another CA; node 4 speaks plain TCP.
    let (hc, _rxc) = Transport::start::<u64>(
        config(3, c, vec![(1, a)]).with_tls(node_tls(&other_ca, &cluster_ca)),
    )
    .await
    .unwrap();
    let (hd, _rxd) = Transport::start::<u64>(config(4, d, vec![(1, a)]))
        .await
        .unwrap();

    // The real peer gets through, over TLS.
    let deadline = tokio::time::Instant::now() + LONG;
    let got = loop {
        hb.send(1, 42);
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rxa.recv()).await {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message over TLS"
        );
    };
    assert_eq!((got.from, got.message), (2, 42));

    // The impostors keep trying and are refused every time; nothing from
    // them reaches node 1.
    let deadline = tokio::time::Instant::now() + LONG;
    while ha.stats().rejected_connections < 4 {
        hc.send(1, 666);
        hd.send(1, 777);
        assert!(
            tokio::time::Instant::now() < deadline,
            "impostors were not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Ok(m) = rxa.try_recv() {
        assert_eq!(m.from, 2, "a message from an impostor got through: {m:?}");
    }
    for h in [&ha, &hb, &hc, &hd] {
        h.shutdown().await;
    }
}

#[test]
fn bad_pem_is_a_clear_error() {
    let err = PeerTls::from_pem(b"not a cert", b"not a key", b"nope", "paxlog").unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}
