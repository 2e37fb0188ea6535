//! Storage micro-benchmarks (used by `paxlog bench-storage`-style CLI
//! commands and by `examples/storage_bench.rs`).

use crate::error::{io_err, Result};
use crate::wal::{Wal, WalOptions};
use bytes::Bytes;
use paxlog_core::{Ballot, Entry, NodeId, PersistRecord, RequestId, Slot};
use serde::Serialize;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Scratch directory (sub-directories are created and removed).
    pub dir: PathBuf,
    pub payload_sizes: Vec<usize>,
    pub batch_sizes: Vec<usize>,
    /// Time spent per append case.
    pub case_duration: Duration,
    /// Time spent measuring raw fdatasync.
    pub fsync_duration: Duration,
    /// Size of the log built for the recovery measurement (0 = skip).
    pub recovery_log_bytes: u64,
    /// Entry payload size in the recovery log.
    pub recovery_payload: usize,
}

impl BenchOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BenchOptions {
            dir: dir.into(),
            payload_sizes: vec![100, 4096],
            batch_sizes: vec![1, 16, 256],
            case_duration: Duration::from_secs(2),
            fsync_duration: Duration::from_secs(2),
            recovery_log_bytes: 1 << 30,
            recovery_payload: 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AppendResult {
    pub payload_bytes: usize,
    pub batch: usize,
    pub records: u64,
    pub syncs: u64,
    pub bytes: u64,
    pub secs: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub syncs_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FsyncResult {
    pub block_bytes: usize,
    pub syncs: u64,
    pub secs: f64,
    pub syncs_per_sec: f64,
    pub avg_latency_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecoveryResult {
    pub log_bytes: u64,
    pub records: u64,
    pub segments: usize,
    pub build_secs: f64,
    pub open_secs: f64,
    pub mb_per_sec: f64,
    pub records_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub appends: Vec<AppendResult>,
    pub fsync: FsyncResult,
    pub recovery: Option<RecoveryResult>,
}

fn accepted(slot: u64, payload: &Bytes) -> PersistRecord {
    PersistRecord::Accepted {
        slot: Slot(slot),
        ballot: Ballot {
            counter: 1,
            node: NodeId(0),
        },
        entry: Entry::Command {
            id: RequestId {
                client_id: 7,
                seq: slot,
            },
            payload: payload.clone(),
        },
    }
}

fn fresh_dir(path: &Path) -> Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).map_err(io_err(path))?;
    }
    fs::create_dir_all(path).map_err(io_err(path))
}

/// Appends `batch` records of `payload_bytes` each, then syncs, for about
/// `duration`: the group-commit path of the server.
pub fn append_throughput(
    dir: &Path,
    payload_bytes: usize,
    batch: usize,
    duration: Duration,
) -> Result<AppendResult> {
    let case_dir = dir.join(format!("append-{payload_bytes}-{batch}"));
    fresh_dir(&case_dir)?;
    let (mut wal, _) = Wal::open(&case_dir, Slot::ZERO, WalOptions::default())?;
    let payload = Bytes::from(vec![0xA5u8; payload_bytes]);
    let mut records = 0u64;
    let mut syncs = 0u64;
    let mut bytes = 0u64;
    let mut batch_buf = Vec::with_capacity(batch);
    let start = Instant::now();
    while start.elapsed() < duration {
        batch_buf.clear();
        for _ in 0..batch {
            batch_buf.push(accepted(records, &payload));
            records += 1;
        }
        let before = wal.active_segment_len();
        wal.append(&batch_buf)?;
        bytes += wal.active_segment_len().saturating_sub(before);
        wal.sync()?;
        syncs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(wal);
    fs::remove_dir_all(&case_dir).map_err(io_err(&case_dir))?;
    Ok(AppendResult {
        payload_bytes,
        batch,
        records,
        syncs,
        bytes,
        secs,
        records_per_sec: records as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        syncs_per_sec: syncs as f64 / secs,
    })
}

/// Raw disk rate: append `block_bytes` and `sync_data`, in a loop.
pub fn fsync_rate(dir: &Path, block_bytes: usize, duration: Duration) -> Result<FsyncResult> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("fsync-probe.bin");
    let mut f = File::create(&path).map_err(io_err(&path))?;
    let block = vec![0x5Au8; block_bytes];
    let mut syncs = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        f.write_all(&block).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))?;
        syncs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(&path).map_err(io_err(&path))?;
    Ok(FsyncResult {
        block_bytes,
        syncs,
        secs,
        syncs_per_sec: syncs as f64 / secs,
        avg_latency_us: secs * 1e6 / syncs.max(1) as f64,
    })
}

/// Builds a WAL of about `log_bytes` (Accepted + Chosen pairs with
/// `payload_bytes` payloads, synced every ~4 MiB), then times `Wal::open`.
/// The log was just written, so it is likely in the page cache: this
/// measures decode + replay more than disk reads.
pub fn recovery_time(dir: &Path, log_bytes: u64, payload_bytes: usize) -> Result<RecoveryResult> {
    let case_dir = dir.join("recovery");
    fresh_dir(&case_dir)?;
    let payload = Bytes::from(vec![0x3Cu8; payload_bytes]);
    let build_start = Instant::now();
    {
        let (mut wal, _) = Wal::open(&case_dir, Slot::ZERO, WalOptions::default())?;
        let mut written = 0u64;
        let mut slot = 0u64;
        let mut since_sync = 0u64;
        let mut batch = Vec::with_capacity(128);
        while written < log_bytes {
            batch.clear();
            for _ in 0..64 {
                batch.push(accepted(slot, &payload));
                batch.push(PersistRecord::Chosen {
                    slot: Slot(slot),
                    entry: None,
                });
                slot += 1;
            }
            let before = wal.active_segment_len();
            wal.append(&batch)?;
            let n = wal.active_segment_len().saturating_sub(before);
            written += n;
            since_sync += n;
            if since_sync >= 4 << 20 {
                wal.sync()?;
                since_sync = 0;
            }
        }
        wal.sync()?;
    }
    let build_secs = build_start.elapsed().as_secs_f64();
    let open_start = Instant::now();
    let (wal, rec) = Wal::open(&case_dir, Slot::ZERO, WalOptions::default())?;
    let open_secs = open_start.elapsed().as_secs_f64();
    drop(wal);
    let result = RecoveryResult {
        log_bytes: rec.bytes,
        records: rec.records,
        segments: rec.segments,
        build_secs,
        open_secs,
        mb_per_sec: rec.bytes as f64 / open_secs / 1e6,
        records_per_sec: rec.records as f64 / open_secs,
    };
    drop(rec);
    fs::remove_dir_all(&case_dir).map_err(io_err(&case_dir))?;
    Ok(result)
}

/// Runs every measurement in `opts`.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let mut appends = Vec::new();
    for &p in &opts.payload_sizes {
        for &b in &opts.batch_sizes {
            appends.push(append_throughput(&opts.dir, p, b, opts.case_duration)?);
        }
    }
    let fsync = fsync_rate(&opts.dir, 512, opts.fsync_duration)?;
    let recovery = if opts.recovery_log_bytes > 0 {
        Some(recovery_time(
            &opts.dir,
            opts.recovery_log_bytes,
            opts.recovery_payload,
        )?)
    } else {
        None
    };
    Ok(BenchReport {
        appends,
        fsync,
        recovery,
    })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "WAL append + sync per batch")?;
        writeln!(
            f,
            "{:>8} {:>6} {:>12} {:>10} {:>10} {:>10}",
            "payload", "batch", "records/s", "MB/s", "syncs/s", "records"
        )?;
        for a in &self.appends {
            writeln!(
                f,
                "{:>8} {:>6} {:>12.0} {:>10.2} {:>10.0} {:>10}",
                a.payload_bytes,
                a.batch,
                a.records_per_sec,
                a.mb_per_sec,
                a.syncs_per_sec,
                a.records
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "raw fdatasync ({} B writes): {:.0} syncs/s, {:.0} us average",
            self.fsync.block_bytes, self.fsync.syncs_per_sec, self.fsync.avg_latency_us
        )?;
        if let Some(r) = &self.recovery {
            writeln!(f)?;
            writeln!(
                f,
                "recovery: {:.1} MiB, {} records, {} segments: Wal::open {:.2} s ({:.0} MB/s, {:.0} records/s); build took {:.1} s",
                r.log_bytes as f64 / (1u64 << 20) as f64,
                r.records,
                r.segments,
                r.open_secs,
                r.mb_per_sec,
                r.records_per_sec,
                r.build_secs
            )?;
        }
        Ok(())
    }
}
