//! Applying an etcd transaction ([`crate::Txn`]).
//!
//! Everything that can fail is checked before anything changes, as etcd
//! does: the shape first, then the compares pick a branch, then each of the
//! branch's operations is resolved against the state ([`PlannedOp`]), and
//! only then do they run, in order, infallibly.

use serde_json::{json, Value};
use std::cmp::Ordering;

use super::{failed, KeyMeta, KvStore};
use crate::command::parse_json_value;
use crate::etcd_bytes::value_to_bytes;
use crate::output::{ApplyResult, ErrorKind};
use crate::range::KeyRange;
use crate::txn::{Compare, CompareOp, CompareTarget, Txn, TxnOp, MAX_TXN_RANGE_KEYS};

/// An operation with everything that could fail already decided.
enum PlannedOp {
    Put {
        key: String,
        value: Value,
        lease: Option<u64>,
        prev_kv: bool,
    },
    Delete {
        range: KeyRange,
        prev_kv: bool,
    },
    Range {
        range: KeyRange,
        limit: u64,
        keys_only: bool,
        count_only: bool,
    },
}

impl KvStore {
    /// Runs `txn`; the answer is `{"succeeded": bool, "responses": [...]}`
    /// (see [`crate::ApplyResult`]). Errors leave the database untouched.
    pub(super) fn execute_txn(&mut self, txn: Txn) -> Result<ApplyResult, ApplyResult> {
        txn.validate().map_err(failed)?;
        let succeeded = txn.compares.iter().all(|c| self.holds(c));
        let branch = if succeeded { txn.success } else { txn.failure };
        // Planning against the state before the branch runs is planning
        // against the state each operation will see: validation refused
        // branches where an operation writes a key another one puts, and
        // operations do not create or end leases.
        let planned = branch
            .into_iter()
            .map(|op| self.plan(op))
            .collect::<Result<Vec<_>, _>>()?;
        let mut range_budget = MAX_TXN_RANGE_KEYS;
        let mut responses = Vec::with_capacity(planned.len());
        for op in planned {
            responses.push(self.run(op, &mut range_budget));
        }
        Ok(ApplyResult::ok(Some(json!({
            "succeeded": succeeded,
            "responses": responses,
        }))))
    }

    /// etcd's `applyCompare`: every key in the range satisfies the compare;
    /// with none, a value compare fails and the others compare zero.
    fn holds(&self, compare: &Compare) -> bool {
        let mut keys = self.range(&compare.range).peekable();
        if keys.peek().is_none() {
            return match &compare.target {
                CompareTarget::Value(_) => false,
                CompareTarget::Version(n)
                | CompareTarget::CreateRevision(n)
                | CompareTarget::ModRevision(n)
                | CompareTarget::Lease(n) => compare.op.holds(0.cmp(&i128::from(*n))),
            };
        }
        keys.all(|(key, value, meta)| {
            let field = |x: u64, n: &i64| i128::from(x).cmp(&i128::from(*n));
            let ordering = match &compare.target {
                CompareTarget::Value(bytes) => compare_value(value, bytes),
                CompareTarget::Version(n) => field(meta.version, n),
                CompareTarget::CreateRevision(n) => field(meta.create_revision, n),
                CompareTarget::ModRevision(n) => field(meta.mod_revision, n),
                CompareTarget::Lease(n) => field(self.lease_of(key).unwrap_or(0), n),
            };
            compare.op.holds(ordering)
        })
    }

    /// Resolves what `op` will do, or the error it would fail with.
    fn plan(&self, op: TxnOp) -> Result<PlannedOp, ApplyResult> {
        Ok(match op {
            TxnOp::Put {
                key,
                value_json,
                lease,
                ignore_value,
                ignore_lease,
                prev_kv,
            } => {
                let current = self.get(&key);
                if (ignore_value || ignore_lease) && current.is_none() {
                    return Err(ApplyResult::error(
                        ErrorKind::KeyNotFound,
                        format!(
                            "key not found: {key:?} does not exist, and a put that keeps the \
                             current value or lease needs it"
                        ),
                    ));
                }
                let value = match current {
                    Some(current) if ignore_value => current.clone(),
                    _ => parse_json_value(&value_json).map_err(failed)?,
                };
                let lease = if ignore_lease {
                    self.lease_of(&key)
                } else {
                    if let Some(id) = lease {
                        if !self.leases.contains_key(&id) {
                            return Err(Self::lease_not_found(id));
                        }
                    }
                    lease
                };
                PlannedOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                }
            }
            TxnOp::Delete { range, prev_kv } => PlannedOp::Delete { range, prev_kv },
            TxnOp::Range {
                range,
                limit,
                keys_only,
                count_only,
            } => PlannedOp::Range {
                range,
                limit,
                keys_only,
                count_only,
            },
        })
    }

    /// Runs a planned operation; its response object.
    fn run(&mut self, op: PlannedOp, range_budget: &mut u64) -> Value {
        match op {
            PlannedOp::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                let reported_key = prev_kv.then(|| key.clone());
                let previous = match lease {
                    Some(id) => self.set_leased(key, value, id),
                    None => self.set(key, value),
                };
                let prev = match (reported_key, previous) {
                    (Some(key), Some(p)) => kv_json(&key, Some(&p.value), p.meta, p.lease),
                    _ => Value::Null,
                };
                json!({"put": {"prev_kv": prev}})
            }
            PlannedOp::Delete { range, prev_kv } => {
                let keys: Vec<String> = self.range(&range).map(|(k, ..)| k.to_owned()).collect();
                let mut prev_kvs = Vec::new();
                for key in &keys {
                    if let Some(p) = self.unset(key) {
                        if prev_kv {
                            prev_kvs.push(kv_json(key, Some(&p.value), p.meta, p.lease));
                        }
                    }
                }
                json!({"delete": {"deleted": keys.len(), "prev_kvs": prev_kvs}})
            }
            PlannedOp::Range {
                range,
                limit,
                keys_only,
                count_only,
            } => {
                let most = match limit {
                    0 => MAX_TXN_RANGE_KEYS,
                    n => n.min(MAX_TXN_RANGE_KEYS),
                }
                .min(*range_budget);
                let mut count = 0u64;
                let mut kvs = Vec::new();
                for (key, value, meta) in self.range(&range) {
                    count += 1;
                    if !count_only && count <= most {
                        let value = (!keys_only).then_some(value);
                        kvs.push(kv_json(key, value, meta, self.lease_of(key)));
                    }
                }
                let returned = kvs.len() as u64;
                *range_budget -= returned;
                let more = !count_only && count > returned;
                json!({"range": {"kvs": kvs, "count": count, "more": more}})
            }
        }
    }
}

impl CompareOp {
    /// Does `field <op> target` hold, given `field.cmp(target)`?
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// A value's etcd bytes against `bytes` (without copying a string value).
fn compare_value(value: &Value, bytes: &[u8]) -> Ordering {
    match value {
        Value::String(text) => text.as_bytes().cmp(bytes),
        other => value_to_bytes(other).as_slice().cmp(bytes),
    }
}

/// A key-value as a transaction reports it; `value: None` reports
/// `"value": null` (keys only).
fn kv_json(key: &str, value: Option<&Value>, meta: KeyMeta, lease: Option<u64>) -> Value {
    json!({
        "key": key,
        "value": value.cloned().unwrap_or(Value::Null),
        "create_revision": meta.create_revision,
        "mod_revision": meta.mod_revision,
        "version": meta.version,
        "lease": lease.unwrap_or(0),
    })
}
