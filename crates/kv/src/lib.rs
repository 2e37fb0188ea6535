//! paxlog-kv: the replicated database behind the log.
//!
//! * [`parse_statement`]: the seed's Python-statement command language
//!   (`li = []`, `li += [1, 2]`, `del li`), parsed, never evaluated.
//! * [`KvCommand`]: what a log entry's payload means (postcard-encoded), wrapped
//!   in a [`KvRequest`] that stamps when a server first accepted it.
//! * [`KvStore`]: the deterministic [`paxlog_core::StateMachine`], with an
//!   exactly-once table of client sessions inside the replicated state.
//! * etcd's model on top: per-key [`KeyMeta`] (rounds are etcd's
//!   revisions), [`KeyRange`]s, values as bytes ([`value_to_bytes`]) and
//!   transactions ([`Txn`], carried by [`KvCommand::Txn`]).

mod command;
mod error;
mod etcd_bytes;
mod output;
mod parser;
mod range;
mod store;
mod txn;

#[cfg(test)]
mod tests;

pub use command::{
    check_lease_ttl, check_member_addr, validate_key, validate_value, KvCommand, KvRequest,
    MAX_LEASE_TTL_MS, MAX_MEMBER_ADDR_BYTES, MIN_LEASE_TTL_MS,
};
pub use error::KvError;
pub use etcd_bytes::{base64_decode, base64_encode, value_from_bytes, value_to_bytes, BASE64_KEY};
pub use output::{ApplyOutput, ApplyResult, ErrorKind};
pub use parser::{parse_statement, parse_value, ParseError, Statement};
pub use range::{KeyRange, MAX_RANGE_END_BYTES};
pub use store::{
    Change, KeyMeta, KvOptions, KvStore, Lease, MemberAddress, PreviousKv, DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_EXPIRY_ROUNDS, SNAPSHOT_VERSION,
};
pub use txn::{Compare, CompareOp, CompareTarget, Txn, TxnOp, MAX_TXN_OPS, MAX_TXN_RANGE_KEYS};

/// Size and shape limits, enforced before proposing and again at apply time.
pub mod limits {
    /// Longest key / statement name, in bytes (keys must also be non-empty).
    pub const MAX_KEY_BYTES: usize = 1024;
    /// Largest value, measured as its compact JSON encoding, in bytes.
    pub const MAX_VALUE_BYTES: usize = 64 * 1024;
    /// Longest `Exec` statement source, in bytes.
    pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;
    /// Deepest nesting of lists/dicts inside one value.
    pub const MAX_DEPTH: usize = 64;
}
