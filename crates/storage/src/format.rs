//! Byte layout shared by the WAL, recovery and `inspect`.
//!
//! See `docs/storage.md` for the full description.

use crate::error::{io_err, Result, StorageError};
use paxlog_core::PersistRecord;
use std::fs::File;
use std::path::{Path, PathBuf};

/// First 8 bytes of every WAL segment.
pub const WAL_MAGIC: &[u8; 8] = b"PAXWAL01";
/// Version written in every segment header.
pub const WAL_FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + seq (8) + crc32c of the previous 20 bytes (4).
pub const SEGMENT_HEADER_LEN: usize = 24;
/// length (4) + crc32c (4).
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest payload accepted in one record.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

pub(crate) fn segment_temp_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log.tmp")
}

/// What a directory entry's name says it is.
pub(crate) enum WalName {
    Segment(u64),
    Temp,
    Malformed,
    Other,
}

pub(crate) fn classify_wal_name(name: &str) -> WalName {
    let Some(rest) = name.strip_prefix("wal-") else {
        return WalName::Other;
    };
    if rest.ends_with(".log.tmp") {
        return WalName::Temp;
    }
    let Some(hex) = rest.strip_suffix(".log") else {
        return WalName::Other;
    };
    if hex.len() != 16 {
        return WalName::Malformed;
    }
    match u64::from_str_radix(hex, 16) {
        Ok(seq) => WalName::Segment(seq),
        Err(_) => WalName::Malformed,
    }
}

pub(crate) fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(WAL_MAGIC);
    h[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks a segment header; returns a reason on failure.
pub(crate) fn check_segment_header(data: &[u8], expected_seq: u64) -> Result<(), String> {
    if data.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header incomplete ({} of {SEGMENT_HEADER_LEN} bytes)",
            data.len()
        ));
    }
    if &data[0..8] != WAL_MAGIC {
        return Err("bad magic (not a paxlog WAL segment)".into());
    }
    let crc = crc32c::crc32c(&data[0..20]);
    if crc != le_u32(&data[20..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = le_u32(&data[8..12]);
    if version != WAL_FORMAT_VERSION {
        return Err(format!(
            "unsupported segment format version {version} (this build reads {WAL_FORMAT_VERSION})"
        ));
    }
    let seq = le_u64(&data[12..20]);
    if seq != expected_seq {
        return Err(format!(
            "header says segment {seq:016x} but the file name says {expected_seq:016x}"
        ));
    }
    Ok(())
}

/// Appends one framed record to `out`; returns the framed size.
pub(crate) fn encode_record(record: &PersistRecord, out: &mut Vec<u8>) -> Result<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    let out_after = match postcard::to_extend(record, std::mem::take(out)) {
        Ok(v) => v,
        Err(e) => return Err(StorageError::Encode(e)),
    };
    *out = out_after;
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    if payload_len > MAX_RECORD_BYTES {
        out.truncate(start);
        return Err(StorageError::RecordTooLarge {
            size: payload_len,
            max: MAX_RECORD_BYTES,
        });
    }
    // payload_len <= 16 MiB fits in u32.
    let len_bytes = (payload_len as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len_bytes),
        &out[start + RECORD_HEADER_LEN..],
    );
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Why the bytes at an offset are not a good record.
#[derive(Debug)]
pub(crate) struct BadFrame {
    pub reason: String,
}

/// Checks the frame at `off`; returns the payload range end (= next offset).
pub(crate) fn check_frame(data: &[u8], off: usize) -> Result<(usize, usize), BadFrame> {
    let remaining = data.len() - off;
    if remaining < RECORD_HEADER_LEN {
        return Err(BadFrame {
            reason: format!("incomplete record header ({remaining} of {RECORD_HEADER_LEN} bytes)"),
        });
    }
    let len = le_u32(&data[off..off + 4]) as usize;
    if len == 0 {
        return Err(BadFrame {
            reason: "zero-length record".into(),
        });
    }
    if len > MAX_RECORD_BYTES {
        return Err(BadFrame {
            reason: format!("record length {len} exceeds the maximum {MAX_RECORD_BYTES}"),
        });
    }
    let start = off + RECORD_HEADER_LEN;
    if len > data.len() - start {
        return Err(BadFrame {
            reason: format!(
                "incomplete record payload ({} of {len} bytes)",
                data.len() - start
            ),
        });
    }
    let stored = le_u32(&data[off + 4..off + 8]);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&data[off..off + 4]),
        &data[start..start + len],
    );
    if crc != stored {
        return Err(BadFrame {
            reason: format!("record checksum mismatch (stored {stored:08x}, computed {crc:08x})"),
        });
    }
    Ok((start, start + len))
}

pub(crate) fn decode_payload(payload: &[u8]) -> Result<PersistRecord, String> {
    match postcard::take_from_bytes::<PersistRecord>(payload) {
        Ok((rec, [])) => Ok(rec),
        Ok((_, rest)) => Err(format!("{} trailing bytes after the record", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Looks for any well-formed record starting after `bad_off`. Used to tell a
/// torn tail (nothing valid follows) from corruption in the middle.
pub(crate) fn find_valid_record_after(data: &[u8], bad_off: usize) -> Option<usize> {
    let mut p = bad_off + 1;
    while p + RECORD_HEADER_LEN < data.len() {
        if let Ok((s, e)) = check_frame(data, p) {
            if decode_payload(&data[s..e]).is_ok() {
                return Some(p);
            }
        }
        p += 1;
    }
    None
}

/// How a segment's record stream ends.
#[derive(Debug)]
pub(crate) enum Tail {
    /// Every byte after the header is a good record.
    Clean,
    /// The record at `offset` is bad; everything before it is good.
    Bad {
        offset: u64,
        reason: String,
        /// Offset of a well-formed record after the bad one, if any.
        valid_after: Option<u64>,
    },
}

pub(crate) struct SegmentScan {
    pub tail: Tail,
    pub len: u64,
}

/// Reads a whole segment file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    read_file_into(path, &mut data)?;
    Ok(data)
}

/// Reads a whole file into `data` (cleared first; its allocation is reused,
/// which matters when replaying many 64 MiB segments).
pub(crate) fn read_file_into(path: &Path, data: &mut Vec<u8>) -> Result<()> {
    data.clear();
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    data.reserve(usize::try_from(len).unwrap_or(0));
    std::io::Read::read_to_end(&mut f, data).map_err(io_err(path))?;
    Ok(())
}

/// Walks a segment's records, calling `visit(offset, record)` for each good
/// one, in order. Errors: bad header, a checksummed record that does not
/// decode, or whatever `visit` returns. A bad frame ends the walk (see
/// [`Tail`]); the caller decides whether that is a torn tail or corruption.
pub(crate) fn scan_segment(
    path: &Path,
    data: &[u8],
    seq: u64,
    mut visit: impl FnMut(u64, PersistRecord) -> Result<()>,
) -> Result<SegmentScan> {
    check_segment_header(data, seq).map_err(|reason| StorageError::CorruptWal {
        path: PathBuf::from(path),
        offset: 0,
        reason,
    })?;
    let mut off = SEGMENT_HEADER_LEN;
    while off < data.len() {
        match check_frame(data, off) {
            Ok((s, e)) => {
                let rec = decode_payload(&data[s..e]).map_err(|why| StorageError::CorruptWal {
                    path: PathBuf::from(path),
                    offset: off as u64,
                    reason: format!(
                        "record checksum is valid but the payload does not decode: {why}"
                    ),
                })?;
                visit(off as u64, rec)?;
                off = e;
            }
            Err(bad) => {
                return Ok(SegmentScan {
                    tail: Tail::Bad {
                        offset: off as u64,
                        reason: bad.reason,
                        valid_after: find_valid_record_after(data, off).map(|p| p as u64),
                    },
                    len: data.len() as u64,
                });
            }
        }
    }
    Ok(SegmentScan {
        tail: Tail::Clean,
        len: data.len() as u64,
    })
}

/// Fsyncs a directory so that creates, renames and deletes in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
