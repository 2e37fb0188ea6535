//! Read-only report on a data directory (`paxlog inspect DIR`).

use crate::datadir::{read_metadata, Metadata};
use crate::error::{Result, StorageError};
use crate::format::{read_file, scan_segment, Tail};
use crate::snapshot::{list_snapshots, verify_snapshot_file};
use crate::wal::{check_contiguous, list_segments, replay_above_floor};
use paxlog_core::{Ballot, DurableState, PersistRecord, Slot};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    pub file: PathBuf,
    pub log_start: Slot,
    pub size: u64,
    pub checksum_ok: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SegmentReport {
    pub file: PathBuf,
    pub seq: u64,
    pub size: u64,
    /// Bytes up to the end of the last good record.
    pub valid_bytes: u64,
    pub promised_records: u64,
    pub campaign_records: u64,
    pub accepted_records: u64,
    pub chosen_records: u64,
    pub min_slot: Option<Slot>,
    pub max_slot: Option<Slot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub dir: PathBuf,
    pub metadata: Option<Metadata>,
    pub metadata_error: Option<String>,
    pub snapshots: Vec<SnapshotReport>,
    pub segments: Vec<SegmentReport>,
    /// `log_start` of the newest valid snapshot (replay starts there;
    /// recovery falls back past corrupt newer ones).
    pub log_start: Slot,
    /// Last `Promised` record read (before any corruption).
    pub last_promised: Option<Ballot>,
    /// End of the contiguous chosen prefix from `log_start`, from the
    /// records before any corruption.
    pub chosen_upto: Slot,
    pub accepted_slots: usize,
    pub chosen_slots: usize,
    /// A torn tail `Wal::open` would truncate (not corruption).
    pub torn_tail: Option<Problem>,
    /// The first damage `Wal::open` would refuse to start with.
    pub first_corruption: Option<Problem>,
}

impl InspectReport {
    pub fn is_healthy(&self) -> bool {
        self.first_corruption.is_none()
            && self.metadata_error.is_none()
            && self.snapshots.iter().all(|s| s.checksum_ok)
    }
}

fn problem_from(err: &StorageError, fallback: &Path) -> Problem {
    match err {
        StorageError::CorruptWal {
            path,
            offset,
            reason,
        } => Problem {
            file: path.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        StorageError::Replay {
            path,
            offset,
            source,
        } => Problem {
            file: path.clone(),
            offset: *offset,
            reason: source.to_string(),
        },
        other => Problem {
            file: fallback.to_path_buf(),
            offset: 0,
            reason: other.to_string(),
        },
    }
}

/// Inspects `dir` without modifying anything. Errors only if the directory
/// cannot be listed; damage is reported in the result.
pub fn inspect(dir: impl AsRef<Path>) -> Result<InspectReport> {
    let dir = dir.as_ref().to_path_buf();
    let (metadata, metadata_error) = match read_metadata(&dir) {
        Ok(Some(m)) => (Some(m), None),
        Ok(None) => (None, Some("metadata file missing".to_string())),
        Err(e) => (None, Some(e.to_string())),
    };

    let mut snapshots = Vec::new();
    for (slot, path) in list_snapshots(&dir)? {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // No size limit here: verification streams the body.
        let (checksum_ok, error) = match verify_snapshot_file(&path, slot, u64::MAX) {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        snapshots.push(SnapshotReport {
            file: path,
            log_start: slot,
            size,
            checksum_ok,
            error,
        });
    }
    let (segs, _temps) = list_segments(&dir)?;
    // As `DataDir::recover`: the newest valid snapshot is used; below the
    // newest snapshot file the log may have been compacted, unless segment 1
    // is still there.
    let wal_complete = segs.first().is_some_and(|(seq, _)| *seq == 1);
    let usable = snapshots.iter().rev().find(|s| s.checksum_ok);
    let log_start = usable.map_or(Slot::ZERO, |s| s.log_start);
    let newest_file = snapshots.last().map(|s| s.log_start);
    let floor = crate::datadir::compaction_floor(&dir, log_start, newest_file, wal_complete)?;

    let mut first_corruption: Option<Problem> = None;
    let mut torn_tail = None;
    let mut state = DurableState::from_snapshot(log_start);
    let mut last_promised = None;
    let mut segment_reports = Vec::new();

    if let Err(e) = check_contiguous(&dir, &segs) {
        first_corruption = Some(problem_from(&e, &dir));
    }
    let n = segs.len();
    for (i, (seq, path)) in segs.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let mut rep = SegmentReport {
            file: path.clone(),
            seq,
            ..SegmentReport::default()
        };
        let data = match read_file(&path) {
            Ok(d) => d,
            Err(e) => {
                first_corruption.get_or_insert_with(|| problem_from(&e, &path));
                segment_reports.push(rep);
                continue;
            }
        };
        rep.size = data.len() as u64;
        let replaying = first_corruption.is_none();
        let mut replay_err = None;
        let scan = scan_segment(&path, &data, seq, |offset, rec| {
            match &rec {
                PersistRecord::Promised(_) => rep.promised_records += 1,
                PersistRecord::Campaigned(_) => rep.campaign_records += 1,
                PersistRecord::Accepted { .. } => rep.accepted_records += 1,
                PersistRecord::Chosen { .. } => rep.chosen_records += 1,
            }
            if let Some(s) = rec.slot() {
                rep.min_slot = Some(rep.min_slot.map_or(s, |m| m.min(s)));
                rep.max_slot = Some(rep.max_slot.map_or(s, |m| m.max(s)));
            }
            if replaying && replay_err.is_none() {
                if let PersistRecord::Promised(b) = rec {
                    last_promised = Some(b);
                }
                if let Err(source) = replay_above_floor(&mut state, &rec, floor) {
                    replay_err = Some(StorageError::Replay {
                        path: path.clone(),
                        offset,
                        source,
                    });
                }
            }
            Ok(())
        });
        if let Some(e) = replay_err {
            first_corruption.get_or_insert_with(|| problem_from(&e, &path));
        }
        match scan {
            Err(e) => {
                first_corruption.get_or_insert_with(|| problem_from(&e, &path));
            }
            Ok(scan) => match scan.tail {
                Tail::Clean => rep.valid_bytes = scan.len,
                Tail::Bad {
                    offset,
                    reason,
                    valid_after,
                } => {
                    rep.valid_bytes = offset;
                    let p = Problem {
                        file: path.clone(),
                        offset,
                        reason: match valid_after {
                            Some(a) => format!("{reason}; a valid record follows at offset {a}"),
                            None => reason,
                        },
                    };
                    if is_last && valid_after.is_none() {
                        torn_tail = Some(p);
                    } else {
                        first_corruption.get_or_insert(p);
                    }
                }
            },
        }
        segment_reports.push(rep);
    }

    let mut chosen_upto = state.log_start;
    while state.chosen.contains_key(&chosen_upto) {
        chosen_upto = chosen_upto.next();
    }
    // A bad snapshot stops recovery only when there is nothing to fall back
    // to: no valid older one and a log that no longer reaches round 0.
    let fatal_snapshot = usable.is_none() && !wal_complete;
    if let Some(bad) = snapshots
        .last()
        .filter(|s| !s.checksum_ok && fatal_snapshot)
    {
        first_corruption.get_or_insert_with(|| Problem {
            file: bad.file.clone(),
            offset: 0,
            reason: bad.error.clone().unwrap_or_default(),
        });
    }
    Ok(InspectReport {
        dir,
        metadata,
        metadata_error,
        snapshots,
        segments: segment_reports,
        log_start,
        last_promised,
        chosen_upto,
        accepted_slots: state.accepted.len(),
        chosen_slots: state.chosen.len(),
        torn_tail,
        first_corruption,
    })
}

fn opt_slot(s: Option<Slot>) -> String {
    s.map_or_else(|| "-".to_string(), |s| s.to_string())
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data directory: {}", self.dir.display())?;
        match (&self.metadata, &self.metadata_error) {
            (Some(m), _) => writeln!(
                f,
                "metadata: cluster {:?}, node {}, format version {}",
                m.cluster_id, m.node_id, m.format_version
            )?,
            (None, Some(e)) => writeln!(f, "metadata: ERROR {e}")?,
            (None, None) => writeln!(f, "metadata: -")?,
        }
        writeln!(f, "snapshots: {}", self.snapshots.len())?;
        for s in &self.snapshots {
            writeln!(
                f,
                "  {}  log_start {}  {} bytes  {}",
                s.file.display(),
                s.log_start,
                s.size,
                if s.checksum_ok {
                    "checksum ok".to_string()
                } else {
                    format!("CORRUPT: {}", s.error.clone().unwrap_or_default())
                }
            )?;
        }
        writeln!(f, "WAL segments: {}", self.segments.len())?;
        writeln!(
            f,
            "  {:<28} {:>12} {:>9} {:>9} {:>9}  slots",
            "file", "bytes", "promised", "accepted", "chosen"
        )?;
        for s in &self.segments {
            let name = s
                .file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            writeln!(
                f,
                "  {:<28} {:>12} {:>9} {:>9} {:>9}  {}..={}",
                name,
                s.size,
                s.promised_records,
                s.accepted_records,
                s.chosen_records,
                opt_slot(s.min_slot),
                opt_slot(s.max_slot)
            )?;
        }
        writeln!(f, "log_start: {}", self.log_start)?;
        writeln!(
            f,
            "last promised ballot: {}",
            self.last_promised
                .map_or_else(|| "-".to_string(), |b| b.to_string())
        )?;
        writeln!(
            f,
            "chosen_upto: {} (accepted slots {}, chosen slots {})",
            self.chosen_upto, self.accepted_slots, self.chosen_slots
        )?;
        match &self.torn_tail {
            Some(p) => writeln!(
                f,
                "torn tail: {} at offset {}: {} (would be truncated on open)",
                p.file.display(),
                p.offset,
                p.reason
            )?,
            None => writeln!(f, "torn tail: none")?,
        }
        match &self.first_corruption {
            Some(p) => writeln!(
                f,
                "first corruption: {} at offset {}: {}",
                p.file.display(),
                p.offset,
                p.reason
            ),
            None => writeln!(f, "first corruption: none"),
        }
    }
}
