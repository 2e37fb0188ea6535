//! etcd's transaction: compares, then one branch of operations, applied at
//! one round. (Applied in `store/apply_txn.rs`; this is the command's shape.)

use serde::{Deserialize, Serialize};

use crate::command::{parse_json_value, validate_key};
use crate::error::KvError;
use crate::limits::MAX_VALUE_BYTES;
use crate::range::KeyRange;

/// Most operations in one branch of a transaction (etcd's default
/// `--max-txn-ops`), and most compares.
pub const MAX_TXN_OPS: usize = 128;

/// Most key-values a `Range` inside a transaction returns, and all of the
/// transaction's `Range`s together (the answer is built on every replica;
/// 128 ranges of 1000 values of 64 KiB would be 8 GiB).
pub const MAX_TXN_RANGE_KEYS: u64 = 1000;

/// `if all compares hold { success } else { failure }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// Holds when every key in `range` satisfies `target op`; with no key in
/// the range, a `Value` compare fails and the others compare zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub range: KeyRange,
    pub target: CompareTarget,
    pub op: CompareOp,
}

/// How the key's field compares with the target: `Greater` holds when the
/// key's field is greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, and the operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value as etcd bytes ([`crate::value_to_bytes`]), compared
    /// lexicographically.
    Value(Vec<u8>),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    /// The key's lease id; 0: no lease.
    Lease(i64),
}

/// One operation of a branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Sets `key`. `ignore_value`: keep the current value (`value_json` must
    /// be empty); `ignore_lease`: keep the current lease (`lease` must be
    /// `None`); either needs the key to exist. Otherwise `lease: Some(id)`
    /// attaches the key to that lease and `None` detaches it.
    Put {
        key: String,
        value_json: String,
        lease: Option<u64>,
        ignore_value: bool,
        ignore_lease: bool,
        prev_kv: bool,
    },
    /// Deletes every key in `range`.
    Delete { range: KeyRange, prev_kv: bool },
    /// Reads `range`, as it is after the branch's earlier operations.
    Range {
        range: KeyRange,
        /// 0: no limit (but at most [`MAX_TXN_RANGE_KEYS`]).
        limit: u64,
        keys_only: bool,
        count_only: bool,
    },
}

impl Txn {
    /// Checks the shape, as apply does before running anything: sizes,
    /// keys, values, and that no branch writes a key twice (etcd: a put and
    /// another put or a delete of the same key in one branch).
    pub fn validate(&self) -> Result<(), KvError> {
        check_count("compares in a txn", self.compares.len())?;
        for compare in &self.compares {
            compare.range.validate()?;
            if let CompareTarget::Value(bytes) = &compare.target {
                if bytes.len() > MAX_VALUE_BYTES {
                    return Err(KvError::TooLarge {
                        what: "compared value",
                        size: bytes.len(),
                        max: MAX_VALUE_BYTES,
                    });
                }
            }
        }
        for branch in [&self.success, &self.failure] {
            check_count("operations in a txn branch", branch.len())?;
            for op in branch {
                op.validate()?;
            }
            check_no_duplicate_writes(branch)?;
        }
        Ok(())
    }
}

impl TxnOp {
    fn validate(&self) -> Result<(), KvError> {
        match self {
            TxnOp::Put {
                key,
                value_json,
                lease,
                ignore_value,
                ignore_lease,
                ..
            } => {
                validate_key(key)?;
                if *ignore_value {
                    if !value_json.is_empty() {
                        return Err(KvError::InvalidValue(
                            "value is provided (a put that ignores the value must not give one)"
                                .into(),
                        ));
                    }
                } else {
                    parse_json_value(value_json)?;
                }
                if *ignore_lease && lease.is_some() {
                    return Err(KvError::InvalidValue(
                        "lease is provided (a put that ignores the lease must not give one)".into(),
                    ));
                }
                Ok(())
            }
            TxnOp::Delete { range, .. } | TxnOp::Range { range, .. } => range.validate(),
        }
    }
}

fn check_count(what: &'static str, count: usize) -> Result<(), KvError> {
    if count > MAX_TXN_OPS {
        return Err(KvError::TooMany {
            what,
            count,
            max: MAX_TXN_OPS,
        });
    }
    Ok(())
}

/// Refuses a branch whose puts share a key with another put or a delete.
/// (Deletes may overlap each other, as in etcd.) Apply relies on it: no
/// operation changes a key another one's precondition looks at.
fn check_no_duplicate_writes(branch: &[TxnOp]) -> Result<(), KvError> {
    let mut put_keys = std::collections::BTreeSet::new();
    let mut deletes = Vec::new();
    for op in branch {
        match op {
            TxnOp::Put { key, .. } => {
                if !put_keys.insert(key.as_str()) {
                    return Err(duplicate_key(key));
                }
            }
            TxnOp::Delete { range, .. } => deletes.push(range),
            TxnOp::Range { .. } => {}
        }
    }
    // At most 128 x 128 cheap checks.
    for key in put_keys {
        if deletes.iter().any(|range| range.contains(key)) {
            return Err(duplicate_key(key));
        }
    }
    Ok(())
}

fn duplicate_key(key: &str) -> KvError {
    KvError::InvalidValue(format!(
        "duplicate key given in txn request: {key:?} is written twice in one branch"
    ))
}

/// `TXN IF <compares> THEN <ops> ELSE <ops>`, as `/fetch` shows a command.
pub(crate) fn describe(txn: &Txn) -> String {
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let compares = txn
        .compares
        .iter()
        .map(|c| {
            let op = match c.op {
                CompareOp::Equal => "==",
                CompareOp::Greater => ">",
                CompareOp::Less => "<",
                CompareOp::NotEqual => "!=",
            };
            let (field, operand) = match &c.target {
                CompareTarget::Value(bytes) => ("value", quote_bytes(bytes)),
                CompareTarget::Version(n) => ("version", n.to_string()),
                CompareTarget::CreateRevision(n) => ("create_revision", n.to_string()),
                CompareTarget::ModRevision(n) => ("mod_revision", n.to_string()),
                CompareTarget::Lease(n) => ("lease", format!("{n:x}")),
            };
            format!("{field}({}) {op} {operand}", describe_range(&c.range))
        })
        .collect();
    let ops = |ops: &[TxnOp]| {
        list(
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put {
                        key,
                        value_json,
                        lease,
                        ignore_value,
                        ignore_lease,
                        ..
                    } => {
                        let value = if *ignore_value {
                            "(same value)"
                        } else {
                            value_json
                        };
                        let lease = match (ignore_lease, lease) {
                            (true, _) => " (same lease)".to_owned(),
                            (false, Some(id)) => format!(" lease {id:x}"),
                            (false, None) => String::new(),
                        };
                        format!("PUT {} {value}{lease}", quote(key))
                    }
                    TxnOp::Delete { range, .. } => format!("DELETE {}", describe_range(range)),
                    TxnOp::Range { range, .. } => format!("RANGE {}", describe_range(range)),
                })
                .collect(),
        )
    };
    format!(
        "TXN IF {} THEN {} ELSE {}",
        list(compares),
        ops(&txn.success),
        ops(&txn.failure)
    )
}

/// `"k"`, `"a"..` (from), `"a".."b"` (below).
fn describe_range(range: &KeyRange) -> String {
    match range {
        KeyRange::One(key) => quote(key),
        KeyRange::From(start) => format!("{}..", quote(start)),
        KeyRange::Below { start, end } => format!("{}..{}", quote(start), quote_bytes(end)),
    }
}

fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Quoted text if UTF-8, else `0x` and hex.
fn quote_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => quote(text),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}
