//! The crate's error type.

use crate::parser::ParseError;

/// Everything that can go wrong in this crate outside of `apply` (which never
/// fails: it turns problems into an [`crate::ApplyOutput`] error result).
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The statement of an `Exec` command does not parse.
    #[error("syntax error: {0}")]
    Parse(#[from] ParseError),
    /// A key is empty or too long.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A value is not valid JSON, too deeply nested, or not representable.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A value or statement exceeds its size limit.
    #[error("{what} is too large ({size} bytes, at most {max})")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    /// A list (a transaction's operations or compares) over its length
    /// limit.
    #[error("too many {what} ({count}, at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// A log entry payload that is not a `KvRequest` or a postcard-encoded
    /// `KvCommand`.
    #[error("undecodable command payload: {0}")]
    Decode(#[source] postcard::Error),
    /// A snapshot written by an unknown format version.
    #[error("unsupported snapshot format version {0}")]
    SnapshotVersion(u8),
    /// A snapshot image that is truncated or inconsistent.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
}
