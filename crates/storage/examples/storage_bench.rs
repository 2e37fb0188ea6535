//! `cargo run --release -p paxlog-storage --example storage_bench -- --dir /tmp/x
//!  [--recovery-mib 1024] [--recovery-payload 1024] [--case-secs 2] [--json]`

use paxlog_storage::bench::{run, BenchOptions};
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!(
        "usage: storage_bench --dir DIR [--recovery-mib N (default 1024, 0 = skip)] \
         [--recovery-payload BYTES] [--case-secs S] [--json]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut dir = None;
    let mut recovery_mib: u64 = 1024;
    let mut recovery_payload: usize = 1024;
    let mut case_secs: f64 = 2.0;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next();
        match arg.as_str() {
            "--dir" => dir = value(),
            "--recovery-mib" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => recovery_mib = v,
                None => return usage(),
            },
            "--recovery-payload" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => recovery_payload = v,
                None => return usage(),
            },
            "--case-secs" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => case_secs = v,
                None => return usage(),
            },
            "--json" => json = true,
            _ => return usage(),
        }
    }
    let Some(dir) = dir else {
        return usage();
    };
    let mut opts = BenchOptions::new(dir);
    opts.case_duration = Duration::from_secs_f64(case_secs);
    opts.fsync_duration = Duration::from_secs_f64(case_secs);
    opts.recovery_log_bytes = recovery_mib << 20;
    opts.recovery_payload = recovery_payload;
    match run(&opts) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
