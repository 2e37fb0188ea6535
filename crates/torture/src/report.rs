//! report.json, report.md, latency.svg and history.jsonl.

use crate::checker::KeyVerdict;
use crate::history::{Connectivity, FaultRec, Kind, OpRec, Outcome};
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

pub struct Inputs<'a> {
    pub nodes: usize,
    pub seed: u64,
    pub time_s: u64,
    pub nemesis: Vec<String>,
    pub anomaly: Option<String>,
    pub ops: &'a [OpRec],
    pub faults: &'a [FaultRec],
    pub timeline: &'a [Connectivity],
    pub verdicts: &'a [KeyVerdict],
    pub converged: bool,
    pub convergence_secs: f64,
    pub check_secs: f64,
    pub end_ms: f64,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct Failover {
    pub fault: String,
    pub start_s: f64,
    /// Seconds from the fault to the first write that succeeded after it.
    pub write_unavailable_s: Option<f64>,
}

#[derive(Serialize)]
pub struct Report {
    pub config: Value,
    pub ops_total: usize,
    pub ops: BTreeMap<String, BTreeMap<String, usize>>,
    pub faults_by_kind: BTreeMap<String, usize>,
    pub faults: Vec<FaultRec>,
    pub checker: Value,
    pub converged: bool,
    pub convergence_secs: f64,
    pub availability: Value,
    pub longest_write_gap_s: f64,
    pub longest_write_gap_at_s: f64,
    pub failovers: Vec<Failover>,
    pub max_write_unavailability_after_leader_kill_s: Option<f64>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub passed: bool,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Read => "read",
        Kind::Write => "write",
        Kind::Cas => "cas",
    }
}

fn outcome_name(o: &OpRec) -> &'static str {
    match (o.outcome, o.kind, o.cas_ok) {
        (Outcome::Ok, Kind::Cas, Some(true)) => "ok (swapped)",
        (Outcome::Ok, Kind::Cas, _) => "ok (not swapped)",
        (Outcome::Ok, _, _) => "ok",
        (Outcome::Fail, _, _) => "failed",
        (Outcome::Info, _, _) => "indeterminate",
    }
}

fn majority_at(timeline: &[Connectivity], t: f64) -> Option<&Vec<usize>> {
    let i = timeline.partition_point(|c| c.at_ms <= t);
    if i == 0 {
        timeline.first().and_then(|c| c.majority.as_ref())
    } else {
        timeline[i - 1].majority.as_ref()
    }
}

pub fn build(x: Inputs<'_>) -> Report {
    let mut ops: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for o in x.ops {
        *ops.entry(kind_name(o.kind).into())
            .or_default()
            .entry(outcome_name(o).into())
            .or_default() += 1;
    }
    let mut faults_by_kind = BTreeMap::new();
    for f in x.faults {
        *faults_by_kind.entry(f.kind.clone()).or_default() += 1;
    }
    // Availability while a majority was up and connected.
    let (mut maj_ops, mut maj_ok, mut in_ops, mut in_ok) = (0usize, 0usize, 0usize, 0usize);
    for o in x.ops {
        if let Some(m) = majority_at(x.timeline, o.invoke_ms) {
            maj_ops += 1;
            maj_ok += usize::from(o.outcome == Outcome::Ok);
            if m.contains(&o.node) {
                in_ops += 1;
                in_ok += usize::from(o.outcome == Outcome::Ok);
            }
        }
    }
    let majority_ms: f64 = x
        .timeline
        .iter()
        .enumerate()
        .filter(|(_, c)| c.majority.is_some())
        .map(|(i, c)| {
            x.timeline
                .get(i + 1)
                .map_or(x.end_ms, |n| n.at_ms)
                .min(x.end_ms)
                - c.at_ms
        })
        .sum();
    let frac = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let availability = json!({
        "majority_connected_s": majority_ms / 1e3,
        "ops_while_majority": maj_ops,
        "succeeded_fraction_while_majority": frac(maj_ok, maj_ops),
        "ops_to_majority_replicas": in_ops,
        "succeeded_fraction_to_majority_replicas": frac(in_ok, in_ops),
    });
    // Longest stretch without a successful write.
    let mut done: Vec<f64> = x
        .ops
        .iter()
        .filter(|o| o.is_successful_write())
        .map(|o| o.complete_ms)
        .collect();
    done.sort_by(f64::total_cmp);
    let workload_end = x.ops.iter().map(|o| o.invoke_ms).fold(0.0, f64::max);
    let mut gap = (0.0f64, 0.0f64);
    let mut prev = done.first().copied().unwrap_or(0.0);
    for &t in done.iter().chain(std::iter::once(&workload_end)) {
        if t - prev > gap.0 {
            gap = (t - prev, prev);
        }
        prev = prev.max(t);
    }
    let failovers: Vec<Failover> = x
        .faults
        .iter()
        .filter(|f| f.leader_targeted)
        .map(|f| {
            let first = x
                .ops
                .iter()
                .filter(|o| o.is_successful_write() && o.invoke_ms >= f.start_ms)
                .map(|o| o.complete_ms)
                .fold(f64::INFINITY, f64::min);
            Failover {
                fault: format!("{} {}", f.kind, f.detail),
                start_s: f.start_ms / 1e3,
                write_unavailable_s: first.is_finite().then(|| (first - f.start_ms) / 1e3),
            }
        })
        .collect();
    let max_kill = failovers
        .iter()
        .filter(|f| f.fault.starts_with("kill leader"))
        .filter_map(|f| f.write_unavailable_s)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let non_lin: Vec<&str> = x
        .verdicts
        .iter()
        .filter(|v| v.linearizable == Some(false))
        .map(|v| v.key.as_str())
        .collect();
    let undecided = x
        .verdicts
        .iter()
        .filter(|v| v.linearizable.is_none())
        .count();
    let checker = json!({
        "checker": "todc-utils 0.1 WGLChecker, per key, CAS register model",
        "keys": x.verdicts.len(),
        "ops_checked": x.verdicts.iter().map(|v| v.ops).sum::<usize>(),
        "indeterminate_ops": x.verdicts.iter().map(|v| v.indeterminate).sum::<usize>(),
        "non_linearizable_keys": non_lin,
        "undecided_keys": undecided,
        "verdict": if !non_lin.is_empty() { "NON-LINEARIZABLE" } else if undecided > 0 { "UNDECIDED" } else { "linearizable" },
        "seconds": x.check_secs,
    });
    let passed = x.failures.is_empty() && non_lin.is_empty() && undecided == 0 && x.converged;
    Report {
        config: json!({
            "nodes": x.nodes, "seed": x.seed, "time_s": x.time_s,
            "nemesis": x.nemesis, "anomaly": x.anomaly,
        }),
        ops_total: x.ops.len(),
        ops,
        faults_by_kind,
        faults: x.faults.to_vec(),
        checker,
        converged: x.converged,
        convergence_secs: x.convergence_secs,
        availability,
        longest_write_gap_s: gap.0 / 1e3,
        longest_write_gap_at_s: gap.1 / 1e3,
        failovers,
        max_write_unavailability_after_leader_kill_s: max_kill,
        failures: x.failures,
        notes: x.notes,
        passed,
    }
}

pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "ops: {} ({})\nfaults: {}\nchecker: {} ({} ops on {} keys, {} indeterminate)\nconverged: {} ({:.1} s)\navailability while a majority was connected: {:.1}% of all ops, {:.1}% of ops sent to majority replicas\nlongest stretch without a successful write: {:.2} s (at t={:.1} s); worst after a leader kill: {}",
        r.ops_total,
        r.ops
            .iter()
            .map(|(k, m)| format!("{k}: {}", m.values().sum::<usize>()))
            .collect::<Vec<_>>()
            .join(", "),
        if r.faults_by_kind.is_empty() {
            "none".to_string()
        } else {
            r.faults_by_kind
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
        r.checker["verdict"].as_str().unwrap_or("?"),
        r.checker["ops_checked"],
        r.checker["keys"],
        r.checker["indeterminate_ops"],
        r.converged,
        r.convergence_secs,
        r.availability["succeeded_fraction_while_majority"].as_f64().unwrap_or(0.0) * 100.0,
        r.availability["succeeded_fraction_to_majority_replicas"].as_f64().unwrap_or(0.0) * 100.0,
        r.longest_write_gap_s,
        r.longest_write_gap_at_s,
        r.max_write_unavailability_after_leader_kill_s
            .map_or("n/a".to_string(), |v| format!("{v:.2} s")),
    );
    s
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# paxlog torture report\n");
    let _ = writeln!(s, "Config: `{}`\n", r.config);
    let _ = writeln!(
        s,
        "**Result: {}**\n",
        if r.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(s, "```\n{}\n```\n", summary(r));
    let _ = writeln!(
        s,
        "## Operations\n\n| op | outcome | count |\n|---|---|---|"
    );
    for (k, m) in &r.ops {
        for (o, c) in m {
            let _ = writeln!(s, "| {k} | {o} | {c} |");
        }
    }
    let _ = writeln!(
        s,
        "\n## Checker\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&r.checker).unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "## Availability\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&r.availability).unwrap_or_default()
    );
    let _ = writeln!(s, "## Failover (leader-targeted faults)\n\n| fault | at (s) | writes unavailable (s) |\n|---|---|---|");
    for f in &r.failovers {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} |",
            f.fault,
            f.start_s,
            f.write_unavailable_s
                .map_or("never recovered".into(), |v| format!("{v:.2}"))
        );
    }
    let _ = writeln!(s, "\n## Faults ({} total)\n\n| kind | detail | nodes | from (s) | to (s) | note |\n|---|---|---|---|---|---|", r.faults.len());
    for f in &r.faults {
        let _ = writeln!(
            s,
            "| {} | {} | {:?} | {:.1} | {:.1} | {} |",
            f.kind,
            f.detail,
            f.nodes,
            f.start_ms / 1e3,
            f.end_ms / 1e3,
            f.note.as_deref().unwrap_or("")
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        for f in &r.failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    let _ = writeln!(s, "\n## Notes\n");
    let _ = writeln!(s, "- Replicas use time only for timeouts (elections, heartbeats, request deadlines), never for safety; the clock nemesis (libfaketime offsets and rates) can only cost availability.");
    let _ = writeln!(s, "- Indeterminate writes/CAS (timeout, 5xx, broken connection) may or may not have taken effect; the checker treats them that way. Failed reads are dropped.");
    let _ = writeln!(s, "- The converged `/db` after healing is added as a final read of every key, so a lost acknowledged write shows up as a linearizability violation.");
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

fn svg(ops: &[OpRec], faults: &[FaultRec], end_ms: f64) -> String {
    let (w, h, ml, mr, mt, mb) = (1000.0, 420.0, 60.0, 20.0, 30.0, 50.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let t_max = end_ms.max(1.0);
    let lat_max = ops
        .iter()
        .map(|o| o.complete_ms - o.invoke_ms)
        .fold(10.0, f64::max)
        .min(10_000.0);
    // log scale from 1 ms to lat_max
    let ly = |ms: f64| {
        let v = (ms.max(1.0)).log10() / lat_max.log10().max(1.0);
        mt + ph - v.min(1.0) * ph
    };
    let x = |t: f64| ml + (t / t_max) * pw;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let colors = [
        ("kill", "#e57373"),
        ("pause", "#ffb74d"),
        ("pause-leader", "#ff8a65"),
        ("partition", "#64b5f6"),
        ("clock", "#ba68c8"),
        ("disk", "#a1887f"),
        ("membership", "#4db6ac"),
        ("crash", "#212121"),
    ];
    for f in faults {
        let c = colors
            .iter()
            .find(|(k, _)| *k == f.kind)
            .map_or("#cccccc", |c| c.1);
        let (x0, x1) = (x(f.start_ms), x(f.end_ms));
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{mt}" width="{:.1}" height="{ph}" fill="{c}" fill-opacity="0.25"><title>{} {}</title></rect>"#,
            (x1 - x0).max(1.0),
            f.kind,
            f.detail
        );
    }
    let step = (ops.len() / 20_000).max(1);
    for o in ops.iter().step_by(step) {
        let c = match o.outcome {
            Outcome::Ok => "#2e7d32",
            Outcome::Fail => "#c62828",
            Outcome::Info => "#ef6c00",
        };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.3" fill="{c}"/>"#,
            x(o.invoke_ms),
            ly(o.complete_ms - o.invoke_ms)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let mut tick = 1.0;
    while tick <= lat_max {
        let y = ly(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick} ms</text>"##,
            ml + pw,
            ml - 4.0,
            y + 4.0
        );
        tick *= 10.0;
    }
    let secs = t_max / 1e3;
    let tstep = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0]
        .into_iter()
        .find(|s| secs / s <= 12.0)
        .unwrap_or(300.0);
    let mut t = 0.0;
    while t <= secs {
        let xx = x(t * 1e3);
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"#,
            mt + ph + 14.0
        );
        t += tstep;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        ml + pw / 2.0,
        h - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{ml}" y="18" font-size="13">Latency per operation (log scale); green ok, orange indeterminate, red failed</text>"#
    );
    let mut lx = ml;
    for (k, c) in colors {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="10" fill="{c}" fill-opacity="0.4"/><text x="{:.1}" y="{:.1}">{k}</text>"#,
            h - 12.0,
            lx + 15.0,
            h - 3.0
        );
        lx += 90.0;
    }
    s.push_str("</svg>\n");
    s
}

pub fn write(
    out: &Path,
    r: &Report,
    ops: &[OpRec],
    faults: &[FaultRec],
    end_ms: f64,
) -> Result<()> {
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("report.md"), markdown(r))?;
    std::fs::write(out.join("latency.svg"), svg(ops, faults, end_ms))?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(out.join("history.jsonl"))?);
    for o in ops {
        serde_json::to_writer(&mut f, o)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}
