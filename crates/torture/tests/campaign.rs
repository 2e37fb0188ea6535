//! Short campaigns against a real cluster. They need the `paxlog` binary:
//! `cargo build --release -p paxlog-cli` first, or set PAXLOG_BIN.

use std::path::PathBuf;
use std::process::Command;

fn paxlog_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PAXLOG_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut candidates = vec![root.join("target/release/paxlog")];
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        candidates.insert(0, PathBuf::from(t).join("release/paxlog"));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("paxlog binary not found: run `cargo build --release -p paxlog-cli` or set PAXLOG_BIN")
        })
}

fn campaign(extra: &[&str], out: &std::path::Path) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_paxlog-torture"))
        .arg("--bin")
        .arg(paxlog_bin())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("run paxlog-torture");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("paxlog-torture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn short_campaign_all_nemeses_passes() {
    let out = out_dir("all");
    let (code, stdout, stderr) = campaign(
        &[
            "--time",
            "20",
            "--nodes",
            "3",
            "--nemesis",
            "all",
            "--seed",
            "11",
        ],
        &out,
    );
    assert_eq!(
        code, 0,
        "campaign failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    for f in ["report.json", "report.md", "latency.svg"] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap_or_default())
            .expect("report.json parses");
    assert_eq!(report["checker"]["verdict"], "linearizable");
    assert!(report["faults"].as_array().is_some_and(|f| !f.is_empty()));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn local_reads_anomaly_is_detected() {
    let out = out_dir("anomaly");
    let (code, stdout, stderr) = campaign(
        &[
            "--time",
            "15",
            "--nodes",
            "3",
            "--anomaly",
            "local-reads",
            "--seed",
            "3",
        ],
        &out,
    );
    assert_eq!(
        code, 2,
        "expected the checker to flag the stale local reads (exit 2)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ANOMALY DETECTED"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn pause_leader_refuses_a_client_timeout_shorter_than_its_pause() {
    let out = out_dir("pause-leader-timeout");
    let (code, stdout, stderr) = campaign(
        &[
            "--time",
            "10",
            "--nemesis",
            "pause-leader",
            "--timeout-ms",
            "2000",
        ],
        &out,
    );
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("must be at least 6000"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The leader is stopped for longer than an election timeout while clients
/// wait longer than that: reads sent to it meanwhile are answered after it
/// resumes, so they are in the checked history (not dropped as failed).
#[test]
fn pause_leader_campaign_checks_reads_queued_at_the_stopped_leader() {
    let out = out_dir("pause-leader");
    let (code, stdout, stderr) = campaign(
        &[
            "--time",
            "14",
            "--nodes",
            "3",
            "--nemesis",
            "pause-leader",
            "--clients",
            "8",
            "--seed",
            "14",
        ],
        &out,
    );
    assert_eq!(
        code, 0,
        "campaign failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap_or_default())
            .expect("report.json parses");
    assert_eq!(report["checker"]["verdict"], "linearizable");
    let pauses: Vec<(u64, f64, f64)> = report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter(|f| f["kind"] == "pause-leader" && f["leader_targeted"] == true)
        .filter_map(|f| {
            Some((
                f["nodes"][0].as_u64()?,
                f["start_ms"].as_f64()?,
                f["end_ms"].as_f64()?,
            ))
        })
        .collect();
    assert!(!pauses.is_empty(), "no leader was paused: {report}");
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap_or_default();
    let queued_reads_answered = history
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|o| o["kind"] == "read" && o["outcome"] == "ok")
        .filter(|o| {
            let (Some(node), Some(invoke), Some(complete)) = (
                o["node"].as_u64(),
                o["invoke_ms"].as_f64(),
                o["complete_ms"].as_f64(),
            ) else {
                return false;
            };
            pauses.iter().any(|&(n, start, end)| {
                n == node && invoke > start && invoke < end && complete > end
            })
        })
        .count();
    assert!(
        queued_reads_answered > 0,
        "no read sent to a stopped leader was answered after it resumed; faults: {:?}",
        pauses
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Voters other than the leader are demoted to learners and promoted back
/// while clients run; the history stays linearizable, the replicas
/// converge, and every replica is a voter again at the end.
#[test]
fn membership_campaign_demotes_and_promotes_voters() {
    let out = out_dir("membership");
    let (code, stdout, stderr) = campaign(
        &[
            "--time",
            "20",
            "--nodes",
            "3",
            "--nemesis",
            "membership",
            "--seed",
            "7",
        ],
        &out,
    );
    assert_eq!(
        code, 0,
        "campaign failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap_or_default())
            .expect("report.json parses");
    assert_eq!(report["checker"]["verdict"], "linearizable");
    let membership: Vec<&serde_json::Value> = report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter(|f| f["kind"] == "membership")
        .collect();
    assert!(
        !membership.is_empty(),
        "no membership fault in the report: {report}"
    );
    assert!(
        membership.iter().any(|f| f["detail"]
            .as_str()
            .is_some_and(|d| d.contains("then promote"))),
        "no voter was demoted: {membership:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
