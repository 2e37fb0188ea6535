//! Malformed requests get a 4xx with a JSON `error`, change nothing, and
//! the replica keeps serving; bad `paxlog node` flags exit non-zero with a
//! clear message and no panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn current(port: u16) -> Value {
    let r = get(port, "/current").unwrap();
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body["round_id"].clone()
}

/// Asserts a 4xx (or exactly `want`) whose JSON body has an `error` string.
fn assert_client_error(what: &str, r: Result<Response, String>, want: Option<u16>) -> Response {
    let r = r.unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected 4xx, got {} {}",
        r.status,
        r.raw
    );
    if let Some(want) = want {
        assert_eq!(r.status, want, "{what}: {}", r.raw);
    }
    let error = r.body["error"].as_str().unwrap_or_else(|| {
        panic!("{what}: body has no `error` string: {}", r.raw);
    });
    assert!(!error.is_empty(), "{what}: empty error");
    r
}

#[test]
fn malformed_requests_are_rejected_and_change_nothing() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let port = c.port(0);
    let ok = command_retrying(port, "a = 1", 9_000_001, 1);
    assert_eq!(ok.status, 200, "{}", ok.raw);
    wait_until(Duration::from_secs(30), "node 0 applied round 0", || {
        current(port) == json!(1)
    });
    let before = current(port);

    let cmd = |body: &[u8]| request(port, "POST", "/command", &[], Some(body));
    // Malformed JSON and wrong shapes.
    assert_client_error("truncated JSON", cmd(b"{\"command\": "), Some(400));
    assert_client_error("not JSON", cmd(b"li = []"), Some(400));
    assert_client_error("wrong field", cmd(br#"{"cmd": "x = 1"}"#), Some(400));
    assert_client_error("command not a string", cmd(br#"{"command": 5}"#), Some(400));
    assert_client_error("empty body", cmd(b""), None);
    assert_client_error(
        "PUT not JSON",
        request(port, "PUT", "/v1/kv/k", &[], Some(b"{nope")),
        Some(400),
    );
    // Commands outside the language, and errors at apply time.
    assert_client_error(
        "import os",
        post_json(port, "/command", &json!({"command": "import os"})),
        Some(400),
    );
    assert_client_error(
        "call",
        post_json(
            port,
            "/command",
            &json!({"command": "__import__('os').system('true')"}),
        ),
        Some(400),
    );
    let r = assert_client_error(
        "name error",
        post_json(port, "/command", &json!({"command": "x += 1"})),
        Some(400),
    );
    assert!(
        r.raw.to_lowercase().contains("name") || r.raw.contains('x'),
        "name error names the problem: {}",
        r.raw
    );
    assert_client_error(
        "type error",
        post_json(port, "/command", &json!({"command": "a += [1]"})),
        Some(400),
    );
    // A huge body.
    let mut huge = b"{\"command\": \"s = '".to_vec();
    huge.resize(2 << 20, b'x');
    huge.extend_from_slice(b"'\"}");
    assert_client_error(
        "2 MiB command",
        request(port, "POST", "/command", &[], Some(&huge)),
        Some(413),
    );
    let mut huge_value = b"\"".to_vec();
    huge_value.resize(2 << 20, b'y');
    huge_value.push(b'"');
    assert_client_error(
        "2 MiB PUT",
        request(port, "PUT", "/v1/kv/big", &[], Some(&huge_value)),
        Some(413),
    );
    // Unknown endpoints and wrong methods.
    assert_client_error("unknown endpoint", get(port, "/nope"), Some(404));
    assert_client_error("unknown nested", get(port, "/v2/kv/a"), Some(404));
    assert_client_error(
        "DELETE /command",
        request(port, "DELETE", "/command", &[], None),
        Some(405),
    );
    assert_client_error(
        "GET /command",
        request(port, "GET", "/command", &[], None),
        Some(405),
    );
    assert_client_error(
        "POST /db",
        request(port, "POST", "/db", &[], Some(b"{}")),
        Some(405),
    );
    // Bad round_id.
    for path in [
        "/fetch?round_id=abc",
        "/fetch",
        "/fetch?round_id=-1",
        "/fetch?round_id=",
        "/fetch?round=1",
    ] {
        let r = assert_client_error(path, get(port, path), Some(400));
        assert_eq!(r.body["success"], false, "{path}: {}", r.raw);
    }
    let r = assert_client_error("fetch future", get(port, "/fetch?round_id=999"), Some(404));
    assert_eq!(r.body["success"], false, "{}", r.raw);
    // Bad read options.
    assert_client_error(
        "bad consistency",
        get(port, "/v1/kv/a?consistency=eventual"),
        Some(400),
    );
    assert_client_error(
        "bad db consistency",
        get(port, "/db?consistency=x"),
        Some(400),
    );
    assert_client_error("unknown query", get(port, "/db?foo=1"), Some(400));
    assert_client_error(
        "bad min_round",
        get(port, "/v1/kv/a?min_round=x"),
        Some(400),
    );
    assert_client_error("scan limit 0", get(port, "/v1/kv?limit=0"), Some(400));
    // Bad request-id headers.
    let put = |headers: &[(&str, String)]| request(port, "PUT", "/v1/kv/h", headers, Some(b"1"));
    assert_client_error(
        "client id not a number",
        put(&[
            ("x-paxlog-client-id", "abc".into()),
            ("x-paxlog-request-seq", "1".into()),
        ]),
        Some(400),
    );
    assert_client_error(
        "seq negative",
        put(&[
            ("x-paxlog-client-id", "5".into()),
            ("x-paxlog-request-seq", "-1".into()),
        ]),
        Some(400),
    );
    assert_client_error(
        "seq zero",
        put(&[
            ("x-paxlog-client-id", "5".into()),
            ("x-paxlog-request-seq", "0".into()),
        ]),
        Some(400),
    );
    assert_client_error(
        "only client id",
        put(&[("x-paxlog-client-id", "5".into())]),
        Some(400),
    );
    assert_client_error(
        "only seq",
        put(&[("x-paxlog-request-seq", "5".into())]),
        Some(400),
    );

    // Nothing above reached the log.
    assert_eq!(
        current(port),
        before,
        "/current changed by rejected requests"
    );
    let d = db(port).unwrap();
    assert_eq!(d["db"], json!({"a": 1}), "{d}");

    // The replica keeps serving.
    let r = command_retrying(port, "x = 1", 9_000_001, 2);
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["round_id"], before, "{}", r.raw);
    let r = command_retrying(port, "x += 1", 9_000_001, 3);
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = get(port, "/v1/kv/x").unwrap();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["value"], 2, "{}", r.raw);
}

fn assert_clean_failure(what: &str, out: (std::process::ExitStatus, String, String), needle: &str) {
    let (status, _stdout, stderr) = out;
    assert!(!status.success(), "{what}: exited 0; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "{what}: panicked; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{what}: stderr does not mention {needle:?}:\n{stderr}"
    );
}

#[test]
fn bad_node_flags_exit_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let peers = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let http = format!("127.0.0.1:{}", ports[3]);
    let dir = root.path().join("d");
    let dir = dir.to_str().unwrap();

    assert_clean_failure(
        "missing --peers",
        run_paxlog(&["node", "--id", "0", "--http", &http, "--data-dir", dir]),
        "--peers",
    );
    assert_clean_failure(
        "--id out of range",
        run_paxlog(&[
            "node",
            "--id",
            "3",
            "--peers",
            &peers,
            "--http",
            &http,
            "--data-dir",
            dir,
        ]),
        "--id 3",
    );
    assert_clean_failure(
        "bad peer address",
        run_paxlog(&[
            "node",
            "--id",
            "0",
            "--peers",
            "not-an-address",
            "--http",
            &http,
            "--data-dir",
            dir,
        ]),
        "not-an-address",
    );
    assert_clean_failure(
        "--http is a peer",
        run_paxlog(&[
            "node",
            "--id",
            "0",
            "--peers",
            &peers,
            "--http",
            &format!("127.0.0.1:{}", ports[1]),
            "--data-dir",
            dir,
        ]),
        "--http",
    );
    // A data dir that cannot be created (tests run as root, so use a path
    // under a regular file rather than permissions).
    let file = root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("sub");
    assert_clean_failure(
        "data dir under a file",
        run_paxlog(&[
            "node",
            "--id",
            "0",
            "--peers",
            &peers,
            "--http",
            &http,
            "--data-dir",
            under_file.to_str().unwrap(),
        ]),
        "a-file",
    );
}

#[test]
fn data_dir_of_another_cluster_is_refused() {
    let mut c = Cluster::new(1, &["--cluster-id", "a"]);
    c.start(0);
    let r = command_retrying(c.port(0), "k = 1", 9_000_002, 1);
    assert_eq!(r.status, 200, "{}", r.raw);
    let stopped = c.stop(0).expect("node stops on SIGTERM");
    assert!(stopped.success(), "clean stop exits 0: {stopped}");

    // A second process on a folder in use is refused (the lock).
    c.start(0);
    let ports = free_ports(2);
    let out = run_paxlog(&[
        "node",
        "--id",
        "0",
        "--peers",
        &format!("127.0.0.1:{}", ports[0]),
        "--http",
        &format!("127.0.0.1:{}", ports[1]),
        "--data-dir",
        c.data_dir(0).to_str().unwrap(),
        "--cluster-id",
        "a",
    ]);
    assert_clean_failure("folder in use", out, "locked");
    assert!(status(c.port(0)).is_some(), "the running node is unharmed");
    c.stop(0);

    c.extra_args = vec!["--cluster-id".into(), "b".into()];
    let out = output_with_timeout(c.node_command(0));
    assert_clean_failure("other cluster's data dir", out.clone(), "cluster");
    let (_, _, stderr) = out;
    assert!(
        stderr.contains("\"a\"")
            || stderr.contains(" a ")
            || stderr.contains("'a'")
            || stderr.contains("`a`"),
        "the message names the folder's cluster id: {stderr}"
    );

    // The folder itself is intact: cluster a starts from it again.
    c.extra_args = vec!["--cluster-id".into(), "a".into()];
    c.start(0);
    wait_until(Duration::from_secs(30), "k = 1 is back", || {
        db(c.port(0)).is_some_and(|d| d["db"]["k"] == 1)
    });
}
