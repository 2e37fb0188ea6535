//! Commands carried in log entry payloads, and the stamped request that wraps them.

use bytes::Bytes;
use paxlog_core::{Ballot, Slot};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io;

use crate::error::KvError;
use crate::limits::{MAX_DEPTH, MAX_KEY_BYTES, MAX_STATEMENT_BYTES, MAX_VALUE_BYTES};
use crate::parser::{parse_statement, Statement};
use crate::txn::Txn;

/// One replicated command: the meaning of an `Entry::Command` payload.
///
/// JSON values travel as compact JSON text (postcard cannot carry
/// `serde_json::Value`) and are parsed again at apply time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// A seed-style statement (`li += [1, 2]`), kept as its exact source text.
    Exec { source: String },
    /// Sets `key` to a JSON value.
    Put { key: String, value_json: String },
    /// Removes `key` (absent is fine).
    Delete { key: String },
    /// Sets `key` to `new_json` iff its current value equals `expected_json`
    /// (`None`: iff the key is absent). Equality is exact JSON equality, so
    /// `1` and `1.0` differ.
    Cas {
        key: String,
        expected_json: Option<String>,
        new_json: String,
    },
    /// Records where a replica that joins the cluster can be reached and
    /// gives it its id (the store allocates ids: the same on every replica,
    /// never reused). Registering an address that a live registration
    /// already holds answers that registration's id, so a retried join gets
    /// the same id. `min_id` is the floor (the bootstrap replicas' ids are
    /// below it).
    RegisterMember {
        peer_addr: String,
        http_addr: Option<String>,
        min_id: u32,
    },
    /// Creates a lease that lives `ttl_ms` after its last keep-alive, as
    /// the leader counts (the store only numbers it: ids are the same on
    /// every replica).
    LeaseGrant { ttl_ms: u64 },
    /// Sets `key` and attaches it to `lease`: the key goes when the lease
    /// does. (Any other write to the key detaches it.)
    PutLeased {
        key: String,
        value_json: String,
        lease: u64,
    },
    /// Ends `lease` and deletes its keys, in this round on every replica
    /// (asked by a client).
    LeaseRevoke { lease: u64 },
    /// etcd's transaction (also how etcd's plain Put and DeleteRange are
    /// proposed: a transaction with no compares and one operation).
    /// (Appended last: payloads encode variants by index.)
    Txn(Txn),
    /// A leader with `ballot` gave every lease a new term: expiries decided
    /// under a lower ballot are void from here on. A new leader places it
    /// (and sees it applied) before it takes keep-alives or expires leases.
    LeasesRenewed { ballot: Ballot },
    /// `lease` expired, as the leader with `ballot` counted: it ends and its
    /// keys go, unless a later leader renewed the leases before this
    /// applies (it may have taken keep-alives since).
    LeaseExpire { lease: u64, ballot: Ballot },
}

/// Shortest and longest lease lifetime.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
pub const MAX_LEASE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Checks a lease lifetime.
pub fn check_lease_ttl(ttl_ms: u64) -> Result<(), KvError> {
    if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(KvError::InvalidValue(format!(
            "a lease lives {MIN_LEASE_TTL_MS} ms to {MAX_LEASE_TTL_MS} ms, not {ttl_ms} ms"
        )))
    }
}

/// Longest replica address (`host:port`) the address book takes, in bytes.
pub const MAX_MEMBER_ADDR_BYTES: usize = 256;

/// Checks a replica address a user wrote: `host:port`, where host is a host
/// name, an IPv4 address or a bracketed IPv6 address, and port is 1-65535.
pub fn check_member_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > MAX_MEMBER_ADDR_BYTES {
        return Err(format!(
            "an address must be 1 to {MAX_MEMBER_ADDR_BYTES} bytes, got {}",
            addr.len()
        ));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address {addr:?} has no port (write host:port)"));
    };
    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(format!("address {addr:?}: port {port:?} is not 1-65535"));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    };
    if !host_ok {
        return Err(format!(
            "address {addr:?}: {host:?} is not a host name, an IPv4 address or a [bracketed] IPv6 address"
        ));
    }
    Ok(())
}

impl KvCommand {
    /// An `Exec` command; the statement must parse.
    pub fn exec(source: impl Into<String>) -> Result<Self, KvError> {
        let source = source.into();
        check_statement(&source)?;
        Ok(KvCommand::Exec { source })
    }

    /// A `Put` command.
    pub fn put(key: impl Into<String>, value: &Value) -> Result<Self, KvError> {
        let key = key.into();
        validate_key(&key)?;
        let value_json = encode_value(value)?;
        Ok(KvCommand::Put { key, value_json })
    }

    /// A `Put` command from JSON text (normalised to compact JSON).
    pub fn put_json(key: impl Into<String>, value_json: &str) -> Result<Self, KvError> {
        let value = parse_json_value(value_json)?;
        Self::put(key, &value)
    }

    /// A `Delete` command.
    pub fn delete(key: impl Into<String>) -> Result<Self, KvError> {
        let key = key.into();
        validate_key(&key)?;
        Ok(KvCommand::Delete { key })
    }

    /// A compare-and-set command; `expected == None` means "must be absent".
    pub fn cas(
        key: impl Into<String>,
        expected: Option<&Value>,
        new: &Value,
    ) -> Result<Self, KvError> {
        let key = key.into();
        validate_key(&key)?;
        let expected_json = expected.map(encode_value).transpose()?;
        let new_json = encode_value(new)?;
        Ok(KvCommand::Cas {
            key,
            expected_json,
            new_json,
        })
    }

    /// An etcd transaction; its shape must be valid (see [`Txn::validate`]).
    pub fn txn(txn: Txn) -> Result<Self, KvError> {
        txn.validate()?;
        Ok(KvCommand::Txn(txn))
    }

    /// Can this command fail depending on the state (`+=` and `del` on a
    /// name that may be missing or of another type)? Such a command is
    /// checked against an up-to-date state before it is proposed.
    pub fn depends_on_state(&self) -> bool {
        match self {
            KvCommand::Exec { source } => matches!(
                check_statement(source),
                Ok(crate::parser::Statement::AddAssign { .. }
                    | crate::parser::Statement::Delete { .. })
            ),
            _ => false,
        }
    }

    /// Checks every limit, as `apply` will; the server should call this on
    /// commands it did not build with the constructors above.
    pub fn validate(&self) -> Result<(), KvError> {
        match self {
            KvCommand::Exec { source } => check_statement(source).map(|_| ()),
            KvCommand::Put { key, value_json } => {
                validate_key(key)?;
                parse_json_value(value_json).map(|_| ())
            }
            KvCommand::Delete { key } => validate_key(key),
            KvCommand::Cas {
                key,
                expected_json,
                new_json,
            } => {
                validate_key(key)?;
                if let Some(e) = expected_json {
                    parse_json_value(e)?;
                }
                parse_json_value(new_json).map(|_| ())
            }
            KvCommand::RegisterMember {
                peer_addr,
                http_addr,
                ..
            } => {
                check_member_addr(peer_addr).map_err(KvError::InvalidValue)?;
                if let Some(http) = http_addr {
                    check_member_addr(http).map_err(KvError::InvalidValue)?;
                }
                Ok(())
            }
            KvCommand::LeaseGrant { ttl_ms } => check_lease_ttl(*ttl_ms),
            KvCommand::PutLeased {
                key, value_json, ..
            } => {
                validate_key(key)?;
                parse_json_value(value_json).map(|_| ())
            }
            KvCommand::LeaseRevoke { .. }
            | KvCommand::LeasesRenewed { .. }
            | KvCommand::LeaseExpire { .. } => Ok(()),
            KvCommand::Txn(txn) => txn.validate(),
        }
    }

    /// The postcard bytes of an unstamped payload (applied as `since = 0`;
    /// servers should send [`KvRequest::encode`] instead).
    pub fn encode(&self) -> Bytes {
        // Serialising strings and options into a Vec cannot fail; an empty
        // payload would only be rejected at apply time as a bad payload.
        Bytes::from(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// Decodes a payload produced by [`KvCommand::encode`] or
    /// [`KvRequest::encode`] (the stamp is dropped). Trailing bytes are an
    /// error. Does not check limits (see [`KvCommand::validate`]).
    pub fn decode(payload: &[u8]) -> Result<KvCommand, KvError> {
        KvRequest::decode(payload).map(|request| request.command)
    }

    /// Human-readable text, as the seed's `/fetch` shows a chosen command:
    ///
    /// * `Exec`: the statement source, exactly as submitted (`li += [1, 2]`);
    /// * `Put`: `PUT "key" <json>`, e.g. `PUT "user:1" {"name":"ann"}`;
    /// * `Delete`: `DELETE "key"`;
    /// * `Cas`: `CAS "key" <expected json | absent> -> <new json>`, e.g.
    ///   `CAS "n" 1 -> 2` or `CAS "n" absent -> 0`;
    /// * `Txn`: `TXN IF [<compares>] THEN [<ops>] ELSE [<ops>]`, e.g.
    ///   `TXN IF [version("k") == 0] THEN [PUT "k" 1] ELSE [RANGE "k"]`.
    ///
    /// Keys are rendered as JSON strings (quoted, escaped).
    pub fn describe(&self) -> String {
        match self {
            KvCommand::Exec { source } => source.clone(),
            KvCommand::Put { key, value_json } => format!("PUT {} {value_json}", quote(key)),
            KvCommand::Delete { key } => format!("DELETE {}", quote(key)),
            KvCommand::Cas {
                key,
                expected_json,
                new_json,
            } => format!(
                "CAS {} {} -> {new_json}",
                quote(key),
                expected_json.as_deref().unwrap_or("absent")
            ),
            KvCommand::LeaseGrant { ttl_ms } => format!("LEASE GRANT ttl {ttl_ms} ms"),
            KvCommand::PutLeased {
                key,
                value_json,
                lease,
            } => format!("PUT {} {value_json} lease {lease:x}", quote(key)),
            KvCommand::LeaseRevoke { lease } => format!("LEASE REVOKE {lease:x}"),
            KvCommand::LeasesRenewed { ballot } => format!("LEASES RENEWED by leader {ballot}"),
            KvCommand::LeaseExpire { lease, ballot } => {
                format!("LEASE EXPIRE {lease:x} (leader {ballot})")
            }
            KvCommand::Txn(txn) => crate::txn::describe(txn),
            KvCommand::RegisterMember {
                peer_addr,
                http_addr,
                ..
            } => format!(
                "MEMBER ADDRESS {} http {}",
                quote(peer_addr),
                http_addr.as_deref().map_or("unknown".into(), quote)
            ),
        }
    }

    /// The key this command writes, if it can be known without parsing.
    pub fn key(&self) -> Option<&str> {
        match self {
            KvCommand::Exec { .. }
            | KvCommand::RegisterMember { .. }
            | KvCommand::LeaseGrant { .. }
            | KvCommand::LeaseRevoke { .. }
            | KvCommand::LeasesRenewed { .. }
            | KvCommand::LeaseExpire { .. }
            | KvCommand::Txn(_) => None,
            KvCommand::PutLeased { key, .. } => Some(key),
            KvCommand::Put { key, .. } | KvCommand::Delete { key } | KvCommand::Cas { key, .. } => {
                Some(key)
            }
        }
    }
}

/// First byte of a stamped payload, format version 1. An unstamped payload
/// starts with `KvCommand`'s variant index as a postcard varint (0..=3), so
/// the two cannot be confused while `KvCommand` has fewer than 64 variants.
/// A later format takes the next byte (0x41).
const STAMPED_V1: u8 = 0x40;

/// What an `Entry::Command` payload carries: a command and the stamp that
/// lets the exactly-once table decide a retry after sessions have expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRequest {
    /// The accepting replica's applied round (its `applied_upto`) when a
    /// server first accepted this request. Set once; re-proposals of the same
    /// request keep it. The request can only be chosen at a slot >= `since`.
    /// A retry stamped afresh after its session expired would look new, so
    /// every attempt must carry the first attempt's stamp.
    pub since: Slot,
    pub command: KvCommand,
}

/// Version 1 of the stamped payload, after the [`STAMPED_V1`] byte.
#[derive(Serialize, Deserialize)]
struct StampedV1<C> {
    since: u64,
    command: C,
}

impl KvRequest {
    pub fn new(since: Slot, command: KvCommand) -> Self {
        KvRequest { since, command }
    }

    /// The bytes to put in `Entry::Command { payload, .. }`:
    /// `[0x40]` followed by postcard of `(since, command)`.
    pub fn encode(&self) -> Bytes {
        let body = StampedV1 {
            since: self.since.0,
            command: &self.command,
        };
        let mut out = vec![STAMPED_V1];
        // Serialising integers and strings into a Vec cannot fail; an
        // undecodable payload would only be rejected at apply time.
        out.extend(postcard::to_allocvec(&body).unwrap_or_default());
        Bytes::from(out)
    }

    /// Decodes a stamped payload, or an unstamped one (from
    /// [`KvCommand::encode`], or written before stamps existed) as
    /// `since = 0`. Trailing bytes are an error.
    pub fn decode(payload: &[u8]) -> Result<KvRequest, KvError> {
        match payload.split_first() {
            Some((&STAMPED_V1, body)) => {
                let stamped: StampedV1<KvCommand> = decode_exact(body)?;
                Ok(KvRequest {
                    since: Slot(stamped.since),
                    command: stamped.command,
                })
            }
            _ => Ok(KvRequest {
                since: Slot::ZERO,
                command: decode_exact(payload)?,
            }),
        }
    }
}

fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, KvError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(KvError::Decode)?;
    if !rest.is_empty() {
        return Err(KvError::Decode(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
}

fn quote(key: &str) -> String {
    Value::String(key.to_owned()).to_string()
}

pub(crate) fn check_statement(source: &str) -> Result<Statement, KvError> {
    if source.len() > MAX_STATEMENT_BYTES {
        return Err(KvError::TooLarge {
            what: "statement",
            size: source.len(),
            max: MAX_STATEMENT_BYTES,
        });
    }
    let stmt = parse_statement(source)?;
    if let Statement::Assign { value, .. } | Statement::AddAssign { value, .. } = &stmt {
        validate_value(value)?;
    }
    Ok(stmt)
}

/// Keys (and statement names) must be non-empty and at most
/// [`MAX_KEY_BYTES`] bytes. Any other string is a valid key.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidKey("key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::InvalidKey(format!(
            "key is {} bytes long, at most {MAX_KEY_BYTES} allowed",
            key.len()
        )));
    }
    Ok(())
}

/// Checks nesting depth (<= [`MAX_DEPTH`]) and encoded size
/// (<= [`MAX_VALUE_BYTES`]); returns the compact JSON size in bytes.
pub fn validate_value(value: &Value) -> Result<usize, KvError> {
    if depth(value) > MAX_DEPTH {
        return Err(KvError::InvalidValue(format!(
            "nesting is too deep (at most {MAX_DEPTH} levels)"
        )));
    }
    let size = json_size(value);
    if size > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge {
            what: "value",
            size,
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(size)
}

/// Container nesting depth: scalars 0, `[]` 1, `[[1]]` 2.
pub(crate) fn depth(value: &Value) -> usize {
    // Iterative, so hostile values cannot overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Length of the compact JSON encoding, without allocating it.
pub(crate) fn json_size(value: &Value) -> usize {
    let mut c = Counter(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// Compact JSON text of a valid value.
pub(crate) fn encode_value(value: &Value) -> Result<String, KvError> {
    validate_value(value)?;
    serde_json::to_string(value).map_err(|e| KvError::InvalidValue(e.to_string()))
}

/// Parses and validates JSON text.
pub(crate) fn parse_json_value(text: &str) -> Result<Value, KvError> {
    if text.len() > MAX_VALUE_BYTES.saturating_mul(8) {
        return Err(KvError::TooLarge {
            what: "value",
            size: text.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| KvError::InvalidValue(e.to_string()))?;
    validate_value(&value)?;
    Ok(value)
}
