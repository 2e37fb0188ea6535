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
