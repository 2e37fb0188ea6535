//! What applying one log entry answers.

use paxlog_core::Slot;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The state machine's answer for one slot. Serialises to JSON as e.g.
/// `{"slot":4,"duplicate":false,"original_slot":null,"result":{"status":"ok","value":null}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyOutput {
    /// The slot just applied.
    pub slot: Slot,
    /// True when the exactly-once table answered instead of executing, so
    /// the command did not run at this slot: a retry of the client's last
    /// request (`original_slot` is where it ran), an older seq (`Stale`), or
    /// a request whose session expired (`RequestExpired`: it may or may not
    /// have run before; the table cannot tell any more).
    pub duplicate: bool,
    /// For a cached duplicate: the slot where the request was executed.
    pub original_slot: Option<Slot>,
    pub result: ApplyResult,
}

impl ApplyOutput {
    pub fn is_ok(&self) -> bool {
        matches!(self.result, ApplyResult::Ok { .. })
    }
}

/// The outcome of executing a command.
///
/// `value` of `Ok` by command:
/// * `Noop`, `Exec` (`=`, `+=`, `del`): `None` (like Python's `exec`);
/// * `Put`: `{"existed": bool, "previous": <old value or null>}`;
/// * `Delete`: `{"existed": bool, "previous": <old value or null>}`;
/// * `Cas`: `{"succeeded": bool, "current": <value after the command, or null
///   if absent>}`;
/// * `Txn`: `{"succeeded": bool, "responses": [<one per operation run>]}`,
///   a response being `{"put": {"prev_kv": KV | null}}`,
///   `{"delete": {"deleted": n, "prev_kvs": [KV, ...]}}` or
///   `{"range": {"kvs": [KV, ...], "count": n, "more": bool}}`, and a KV
///   `{"key": str, "value": <value, or null for keys only>, "create_revision":
///   n, "mod_revision": n, "version": n, "lease": <id, 0 for none>}`.
///
/// A retried request that already ran is answered without the values: `None`,
/// or `{"succeeded": bool}` for `Cas` and `Txn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ApplyResult {
    Ok { value: Option<Value> },
    Error { kind: ErrorKind, message: String },
}

impl ApplyResult {
    pub(crate) fn ok(value: Option<Value>) -> Self {
        ApplyResult::Ok { value }
    }

    pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApplyResult::Error {
            kind,
            message: message.into(),
        }
    }

    /// The error kind, if this is an error.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            ApplyResult::Ok { .. } => None,
            ApplyResult::Error { kind, .. } => Some(*kind),
        }
    }
}

/// Deterministic error categories (identical on every replica).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The statement does not parse.
    SyntaxError,
    /// `+=` or `del` on a name that does not exist (Python's NameError).
    NameError,
    /// `+=` on incompatible types (Python's TypeError).
    TypeError,
    /// Integer `+=` out of 64-bit range, or a float result that is not finite.
    Overflow,
    /// Empty or too long key.
    InvalidKey,
    /// Value JSON that does not parse or is nested too deeply.
    InvalidValue,
    /// A value (possibly the result of `+=`) or statement over its size limit.
    TooLarge,
    /// The entry payload is not a `KvCommand`.
    BadPayload,
    /// The request's seq is older than the client's last applied seq.
    Stale,
    /// The client has no session and the table can no longer tell whether
    /// this request already ran (its session may have expired since): it was
    /// not executed, and the client must continue under a new client id.
    /// (Appended last: snapshots store kinds by index.)
    RequestExpired,
    /// The lease named does not exist (never granted, revoked or expired).
    LeaseNotFound,
    /// A transaction's put keeps a key's current value or lease, and the
    /// key does not exist.
    KeyNotFound,
}
