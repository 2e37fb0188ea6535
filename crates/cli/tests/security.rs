//! Security end to end: TLS between replicas and for clients, bearer
//! tokens, client certificates, and peers that must be refused.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PAXLOG: &str = env!("CARGO_BIN_EXE_paxlog");
const RW: &str = "rw-token-for-tests";
const RO: &str = "ro-token-for-tests";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_node(args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(PAXLOG)
        .arg("node")
        .args(["--initial-cluster-state", "new"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn paxlog(args: &[&str]) -> Output {
    Command::new(PAXLOG).args(args).output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Cluster {
    dir: PathBuf,
    peers: String,
    http: Vec<u16>,
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        Cluster {
            dir: dir.to_path_buf(),
            peers: peer_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            http: (0..3).map(|_| free_port()).collect(),
        }
    }

    fn node_args(&self, i: usize, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            "--id".into(),
            i.to_string(),
            "--peers".into(),
            self.peers.clone(),
            "--http".into(),
            format!("127.0.0.1:{}", self.http[i]),
            "--data-dir".into(),
            self.dir
                .join(format!("data-{i}-{}", extra.len()))
                .display()
                .to_string(),
        ];
        args.extend_from_slice(extra);
        args
    }
}

fn tls_args(certs: &Path, i: usize) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        certs.join(format!("node-{i}.pem")).display().to_string(),
        "--tls-key".into(),
        certs
            .join(format!("node-{i}-key.pem"))
            .display()
            .to_string(),
        "--tls-ca".into(),
        certs.join("ca.pem").display().to_string(),
    ]
}

#[test]
fn tls_tokens_and_client_certificates_guard_the_api_and_the_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let foreign = tmp.path().join("foreign");
    for dir in [&certs, &foreign] {
        let out = paxlog(&["certs", "--out", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cluster = Cluster::new(tmp.path());
    let mut nodes = Nodes(Vec::new());
    for i in 0..2 {
        let mut extra = tls_args(&certs, i);
        extra.extend([
            "--write-token".into(),
            RW.into(),
            "--read-token".into(),
            RO.into(),
        ]);
        extra.push("--tls-client-auth".into());
        nodes.0.push(spawn_node(
            &cluster.node_args(i, &extra),
            &tmp.path().join(format!("n{i}.log")),
        ));
    }
    // Replica 2's place is taken by an impostor whose certificate another CA signed.
    let mut impostor = tls_args(&foreign, 2);
    impostor[5] = certs.join("ca.pem").display().to_string(); // it even trusts our CA
    nodes.0.push(spawn_node(
        &cluster.node_args(2, &impostor),
        &tmp.path().join("n2.log"),
    ));

    let endpoint = format!("https://127.0.0.1:{}", cluster.http[0]);
    let ca = certs.join("ca.pem");
    let client_cert = certs.join("client.pem");
    let client_key = certs.join("client-key.pem");
    let client = |args: &[&str], token: Option<&str>, with_cert: bool| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--endpoints", &endpoint, "--cacert", ca.to_str().unwrap()]);
        if let Some(token) = token {
            all.extend(["--token", token]);
        }
        if with_cert {
            all.extend([
                "--cert",
                client_cert.to_str().unwrap(),
                "--key",
                client_key.to_str().unwrap(),
            ]);
        }
        paxlog(&all)
    };

    // Replicas 0 and 1 form a majority over mutual TLS: writes go through.
    wait_until("a write over TLS with the write token", || {
        client(&["put", "k", "1"], Some(RW), true).status.success()
    });
    let read = client(&["get", "k"], Some(RO), true);
    assert!(read.status.success());
    assert_eq!(json(&read)["value"], 1);

    // Tokens: none is 401, a read-only token cannot write.
    let anonymous = client(&["get", "k"], None, true);
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stdout).contains("missing or invalid bearer token"));
    let read_only_write = client(&["put", "k", "2"], Some(RO), true);
    assert!(!read_only_write.status.success());
    assert!(String::from_utf8_lossy(&read_only_write.stdout).contains("may only read"));

    // Client certificates are required (--tls-client-auth).
    let no_cert = client(&["get", "k"], Some(RO), false);
    assert!(
        !no_cert.status.success(),
        "a client without a certificate got in"
    );

    // Plain HTTP to the HTTPS port gets no answer.
    let plain = paxlog(&[
        "get",
        "k",
        "--endpoints",
        &format!("http://127.0.0.1:{}", cluster.http[0]),
    ]);
    assert!(!plain.status.success());

    // Nothing the read-only writer or the impostor sent reached the log:
    // round 0 holds the one accepted write, and the impostor learned nothing.
    let fetch = client(&["fetch", "1"], Some(RO), true);
    assert!(String::from_utf8_lossy(&fetch.stdout).contains("not chosen yet"));
    let db = client(&["db"], Some(RO), true);
    assert_eq!(json(&db)["db"], serde_json::json!({"k": 1}));
    let log = std::fs::read_to_string(tmp.path().join("n0.log")).unwrap();
    assert!(
        log.contains("TLS handshake refused"),
        "replica 0 should log the refused impostor:\n{log}"
    );
    let impostor_status = paxlog(&[
        "status",
        "--endpoints",
        &format!("https://127.0.0.1:{}", cluster.http[2]),
        "--cacert",
        foreign.join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(
        json(&impostor_status)["current_round"],
        0,
        "the impostor must learn nothing"
    );
}

#[test]
fn a_peer_with_the_wrong_cluster_secret_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(tmp.path());
    let mut nodes = Nodes(Vec::new());
    for (i, secret) in ["shared-secret", "shared-secret", "wrong-secret"]
        .iter()
        .enumerate()
    {
        let extra = vec!["--cluster-secret".to_string(), secret.to_string()];
        nodes.0.push(spawn_node(
            &cluster.node_args(i, &extra),
            &tmp.path().join(format!("n{i}.log")),
        ));
    }
    let endpoint = |i: usize| format!("http://127.0.0.1:{}", cluster.http[i]);
    wait_until("a write through the two honest replicas", || {
        paxlog(&["put", "k", "1", "--endpoints", &endpoint(0)])
            .status
            .success()
    });
    // The impostor never hears anything, and nothing of it reached the log.
    std::thread::sleep(Duration::from_secs(1));
    let status = json(&paxlog(&["status", "--endpoints", &endpoint(2)]));
    assert_eq!(status["current_round"], 0);
    let db = json(&paxlog(&["db", "--endpoints", &endpoint(1)]));
    assert_eq!(db["current_round"], 1, "exactly the honest write: {db}");
    let log = std::fs::read_to_string(tmp.path().join("n0.log")).unwrap();
    assert!(
        log.contains("refused"),
        "replica 0 should log the refusal:\n{log}"
    );
}
