//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use super::*;
use paxlog_kv::{Compare, CompareOp, CompareTarget, KeyRange, Txn, TxnOp};
use pb::range_request::{SortOrder, SortTarget};
use std::collections::BTreeMap;
use tonic::{Request, Response};

pub struct KvApi(pub EtcdApi);

#[tonic::async_trait]
impl pb::kv_server::Kv for KvApi {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let request = request.into_inner();
        let range = key_range(&request.key, &request.range_end)?;
        let api = self.0.clone();
        let consistency = consistency(request.serializable);
        let answer = self
            .0
            .inspect(consistency, move |view| range_at(&view, &range, &request))
            .await?;
        let (revision, kvs, more, count) = answer;
        Ok(Response::new(pb::RangeResponse {
            header: Some(api.header(revision)),
            kvs,
            more,
            count: revision_i64(count as u64),
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let op = put_op(request.into_inner())?;
        let (revision, response) = self.0.run_op(op).await?;
        let prev_kv = match response {
            Some(pb::ResponseOp {
                response: Some(pb::response_op::Response::ResponsePut(put)),
            }) => put.prev_kv,
            _ => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: Some(self.0.header(revision)),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        let op = TxnOp::Delete {
            range: key_range(&request.key, &request.range_end)?,
            prev_kv: request.prev_kv,
        };
        let (revision, response) = self.0.run_op(op).await?;
        let (deleted, prev_kvs) = match response {
            Some(pb::ResponseOp {
                response: Some(pb::response_op::Response::ResponseDeleteRange(d)),
            }) => (d.deleted, d.prev_kvs),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: Some(self.0.header(revision)),
            deleted,
            prev_kvs,
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        let txn = Txn {
            compares: request
                .compare
                .iter()
                .map(compare)
                .collect::<Result<_, _>>()?,
            success: request
                .success
                .into_iter()
                .map(txn_op)
                .collect::<Result<_, _>>()?,
            failure: request
                .failure
                .into_iter()
                .map(txn_op)
                .collect::<Result<_, _>>()?,
        };
        let answer = self.0.run_txn(txn).await?;
        Ok(Response::new(pb::TxnResponse {
            header: Some(self.0.header(answer.revision)),
            succeeded: answer.succeeded,
            responses: answer.responses,
        }))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let revision = request.into_inner().revision;
        let current = self
            .0
            .inspect(Consistency::Linearizable, move |view| {
                let current = view.kv.applied_upto().0;
                let wanted = u64::try_from(revision).unwrap_or(0);
                if wanted > current {
                    return Err(future_revision());
                }
                // As etcd: compacting at or below the last compaction, or
                // below what the history still holds, is refused.
                if wanted <= view.history.compacted_revision()
                    || wanted < view.history.first_kept_round()
                {
                    return Err(compacted());
                }
                view.history.compact(wanted);
                Ok(current)
            })
            .await?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(self.0.header(current)),
        }))
    }
}

/// A transaction's outcome in etcd's shapes.
pub(super) struct TxnAnswer {
    pub revision: u64,
    pub succeeded: bool,
    pub responses: Vec<pb::ResponseOp>,
}

impl EtcdApi {
    /// Runs one op on its own (a Put, a DeleteRange): its revision and
    /// its result.
    async fn run_op(&self, op: TxnOp) -> Result<(u64, Option<pb::ResponseOp>), Status> {
        let mut answer = self
            .run_txn(Txn {
                compares: Vec::new(),
                success: vec![op],
                failure: Vec::new(),
            })
            .await?;
        Ok((answer.revision, answer.responses.pop()))
    }

    /// Runs `txn` through the log: its revision is its round's.
    pub(super) async fn run_txn(&self, txn: Txn) -> Result<TxnAnswer, Status> {
        let command = KvCommand::txn(txn).map_err(txn_refusal)?;
        let output = self.write(command).await?;
        let revision = revision_of_round(output.slot.0);
        let ApplyResult::Ok {
            value: Some(report),
        } = &output.result
        else {
            return Err(Status::internal(
                "a transaction answered without its report",
            ));
        };
        let succeeded = report
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let responses = report
            .get("responses")
            .and_then(Value::as_array)
            .map(|ops| ops.iter().map(response_op).collect())
            .unwrap_or_default();
        Ok(TxnAnswer {
            revision,
            succeeded,
            responses,
        })
    }
}

/// A transaction refused before it reached the log, with etcd's message
/// where its clients match on it.
fn txn_refusal(error: paxlog_kv::KvError) -> Status {
    let message = error.to_string();
    if matches!(error, paxlog_kv::KvError::TooMany { .. }) {
        Status::invalid_argument("etcdserver: too many operations in txn request")
    } else if message.contains("duplicate key given in txn request") {
        Status::invalid_argument("etcdserver: duplicate key given in txn request")
    } else {
        Status::invalid_argument(message)
    }
}

/// A key and `range_end` as a key range; etcd refuses an empty key.
pub(super) fn key_range(key: &[u8], range_end: &[u8]) -> Result<KeyRange, Status> {
    if key.is_empty() {
        return Err(key_missing());
    }
    KeyRange::from_etcd(key, range_end).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn put_op(request: pb::PutRequest) -> Result<TxnOp, Status> {
    if request.key.is_empty() {
        return Err(key_missing());
    }
    let key = String::from_utf8(request.key)
        .map_err(|_| Status::invalid_argument("paxlog keys are UTF-8 text; this key is not"))?;
    if request.ignore_value && !request.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    let value_json = if request.ignore_value {
        String::new()
    } else {
        paxlog_kv::value_from_bytes(&request.value).to_string()
    };
    Ok(TxnOp::Put {
        key,
        value_json,
        lease: u64::try_from(request.lease).ok().filter(|l| *l != 0),
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
        prev_kv: request.prev_kv,
    })
}

fn txn_op(op: pb::RequestOp) -> Result<TxnOp, Status> {
    use pb::request_op::Request as Op;
    match op.request {
        Some(Op::RequestRange(r)) => {
            if r.revision != 0 || r.sort_order != 0 || r.sort_target != 0 {
                return Err(Status::invalid_argument(
                    "paxlog: a range inside a txn reads the txn's own revision, unsorted",
                ));
            }
            Ok(TxnOp::Range {
                range: key_range(&r.key, &r.range_end)?,
                limit: u64::try_from(r.limit).unwrap_or(0),
                keys_only: r.keys_only,
                count_only: r.count_only,
            })
        }
        Some(Op::RequestPut(p)) => put_op(p),
        Some(Op::RequestDeleteRange(d)) => Ok(TxnOp::Delete {
            range: key_range(&d.key, &d.range_end)?,
            prev_kv: d.prev_kv,
        }),
        Some(Op::RequestTxn(_)) => Err(Status::unimplemented(
            "paxlog does not run a txn nested in a txn",
        )),
        None => Err(Status::invalid_argument(
            "etcdserver: a txn operation is empty",
        )),
    }
}

fn compare(c: &pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget as Target, TargetUnion};
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => return Err(Status::invalid_argument("unknown compare result")),
    };
    let number =
        |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match Target::try_from(c.target) {
        Ok(Target::Version) => CompareTarget::Version(number(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Create) => CompareTarget::CreateRevision(number(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Mod) => CompareTarget::ModRevision(number(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Lease) => CompareTarget::Lease(number(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Value) => CompareTarget::Value(match &c.target_union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        Err(_) => return Err(Status::invalid_argument("unknown compare target")),
    };
    Ok(Compare {
        range: key_range(&c.key, &c.range_end)?,
        target,
        op,
    })
}

/// One op's result, from the store's JSON report.
fn response_op(op: &Value) -> pb::ResponseOp {
    use pb::response_op::Response as R;
    let kvs = |v: Option<&Value>| -> Vec<mvccpb::KeyValue> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(kv_of_json).collect())
            .unwrap_or_default()
    };
    let number = |v: Option<&Value>| v.and_then(Value::as_u64).map_or(0, revision_i64);
    let response = if let Some(put) = op.get("put") {
        R::ResponsePut(pb::PutResponse {
            header: None,
            prev_kv: put.get("prev_kv").and_then(kv_of_json),
        })
    } else if let Some(delete) = op.get("delete") {
        R::ResponseDeleteRange(pb::DeleteRangeResponse {
            header: None,
            deleted: number(delete.get("deleted")),
            prev_kvs: kvs(delete.get("prev_kvs")),
        })
    } else {
        let range = op.get("range");
        R::ResponseRange(pb::RangeResponse {
            header: None,
            kvs: kvs(range.and_then(|r| r.get("kvs"))),
            more: range
                .and_then(|r| r.get("more"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            count: number(range.and_then(|r| r.get("count"))),
        })
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

/// A key-value from the store's JSON report (`null`: none).
fn kv_of_json(kv: &Value) -> Option<mvccpb::KeyValue> {
    let key = kv.get("key")?.as_str()?;
    let number = |name: &str| kv.get(name).and_then(Value::as_u64).unwrap_or(0);
    let meta = KeyMeta {
        create_revision: number("create_revision"),
        mod_revision: number("mod_revision"),
        version: number("version"),
    };
    let value = kv.get("value").filter(|v| !v.is_null());
    let lease = Some(number("lease")).filter(|l| *l != 0);
    Some(key_value(key, value, meta, lease))
}

/// What a Range answers: the store's current revision, the key-values,
/// whether more matched than the limit let through, and how many matched
/// in all.
type RangeAnswer = (u64, Vec<mvccpb::KeyValue>, bool, usize);

/// Answers a Range from the store (on the driver's thread).
fn range_at(
    view: &StoreView<'_>,
    range: &KeyRange,
    request: &pb::RangeRequest,
) -> Result<RangeAnswer, Status> {
    let current = view.kv.applied_upto().0;
    let wanted = u64::try_from(request.revision).unwrap_or(0);
    let revision = if wanted == 0 { current } else { wanted };
    if revision > current {
        return Err(future_revision());
    }
    // The keys in range as of `revision`: the store's entries now, with
    // the changes after `revision` undone from the watch history.
    let mut entries: Vec<(String, Option<Value>, KeyMeta, Option<u64>)> = Vec::new();
    let limit = usize::try_from(request.limit)
        .ok()
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // In key order with no filter, only the first `limit` keys are needed
    // (the rest are only counted).
    let in_key_order = request.sort_order == 0
        && request.sort_target == 0
        && request.min_mod_revision == 0
        && request.max_mod_revision == 0
        && request.min_create_revision == 0
        && request.max_create_revision == 0;
    if revision == current && in_key_order {
        let mut count = 0;
        for (key, value, meta) in view.kv.range(range) {
            count += 1;
            if count > limit || request.count_only {
                continue;
            }
            if entries.len() >= MAX_RANGE_KEYS {
                return Err(too_many_keys());
            }
            let value = (!request.keys_only).then(|| value.clone());
            entries.push((key.to_string(), value, meta, view.kv.lease_of(key)));
        }
        let kvs = entries
            .iter()
            .map(|(key, value, meta, lease)| key_value(key, value.as_ref(), *meta, *lease))
            .collect();
        return Ok((revision, kvs, count > limit, count));
    }
    if revision == current {
        for (key, value, meta) in view.kv.range(range) {
            if entries.len() >= MAX_RANGE_KEYS {
                return Err(too_many_keys());
            }
            entries.push((
                key.to_string(),
                Some(value.clone()),
                meta,
                view.kv.lease_of(key),
            ));
        }
    } else {
        // Revision r is the state after round r - 1: the changes of
        // rounds r and later undo to it.
        if revision < view.history.first_kept_round()
            || revision < view.history.compacted_revision()
        {
            return Err(compacted());
        }
        let mut past: BTreeMap<String, (Value, KeyMeta, Option<u64>)> = view
            .kv
            .range(range)
            .map(|(k, v, m)| (k.to_string(), (v.clone(), m, view.kv.lease_of(k))))
            .collect();
        for event in view.history.events_from(revision).rev() {
            if !range.contains(&event.key) {
                continue;
            }
            match &event.previous {
                Some(p) => {
                    past.insert(event.key.clone(), (p.value.clone(), p.meta, p.lease));
                }
                None => {
                    past.remove(&event.key);
                }
            }
        }
        if past.len() > MAX_RANGE_KEYS {
            return Err(too_many_keys());
        }
        entries = past
            .into_iter()
            .map(|(k, (v, m, l))| (k, Some(v), m, l))
            .collect();
    }
    let count = entries.len();
    let in_bounds =
        |value: i64, min: i64, max: i64| (min == 0 || value >= min) && (max == 0 || value <= max);
    entries.retain(|(_, _, meta, _)| {
        in_bounds(
            revision_i64(meta.mod_revision),
            request.min_mod_revision,
            request.max_mod_revision,
        ) && in_bounds(
            revision_i64(meta.create_revision),
            request.min_create_revision,
            request.max_create_revision,
        )
    });
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    // etcd sorts ascending by default when asked to sort by anything but
    // the key (the store's order).
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        let value_bytes = |v: &Option<Value>| v.as_ref().map(paxlog_kv::value_to_bytes);
        entries.sort_by(|a, b| match target {
            SortTarget::Key => a.0.cmp(&b.0),
            SortTarget::Version => a.2.version.cmp(&b.2.version),
            SortTarget::Create => a.2.create_revision.cmp(&b.2.create_revision),
            SortTarget::Mod => a.2.mod_revision.cmp(&b.2.mod_revision),
            SortTarget::Value => value_bytes(&a.1).cmp(&value_bytes(&b.1)),
        });
        if order == SortOrder::Descend {
            entries.reverse();
        }
    }
    let more = entries.len() > limit;
    entries.truncate(limit);
    let kvs = if request.count_only {
        Vec::new()
    } else {
        entries
            .iter()
            .map(|(key, value, meta, lease)| {
                let value = if request.keys_only {
                    None
                } else {
                    value.as_ref()
                };
                key_value(key, value, *meta, *lease)
            })
            .collect()
    };
    // The header carries the store's revision, whatever revision was read
    // (as etcd's does).
    Ok((current, kvs, more, count))
}

fn too_many_keys() -> Status {
    Status::resource_exhausted(format!(
        "paxlog: a range returns at most {MAX_RANGE_KEYS} keys at once; ask with a limit and continue from the last key"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::driver::{WatchEvent, WatchHub};
    use paxlog_core::{Entry, RequestId};
    use paxlog_kv::{KvRequest, KvStore};

    /// Applies `command` as the next round and records its changes as the
    /// driver does.
    fn apply(kv: &mut KvStore, hub: &mut WatchHub, command: KvCommand) {
        let slot = kv.applied_upto();
        let entry = Entry::Command {
            id: RequestId {
                client_id: 1000 + slot.0,
                seq: 1,
            },
            payload: KvRequest::new(slot, command).encode(),
        };
        kv.apply(slot, &entry);
        let changes = kv.changes().to_vec();
        for (i, change) in changes.iter().enumerate() {
            let value = kv.get(&change.key).cloned();
            hub.record(WatchEvent {
                round: slot.0,
                key: change.key.clone(),
                meta: value.as_ref().and_then(|_| kv.meta(&change.key)),
                lease: None,
                value,
                previous: change.previous.clone(),
                last_in_round: i + 1 == changes.len(),
            });
        }
    }

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::put(key, &Value::from(value)).unwrap()
    }

    fn range_all(kv: &KvStore, hub: &mut WatchHub, revision: i64) -> Result<Vec<String>, Status> {
        let view = StoreView {
            kv,
            history: hub,
            promised: paxlog_core::Ballot::ZERO,
        };
        let request = pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        };
        let range = key_range(&request.key, &request.range_end)?;
        let (_, kvs, _, _) = range_at(&view, &range, &request)?;
        Ok(kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}@{}v{}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value),
                    kv.mod_revision,
                    kv.version
                )
            })
            .collect())
    }

    #[test]
    fn a_range_at_a_past_revision_sees_the_store_as_it_was_then() {
        let mut kv = KvStore::default();
        let mut hub = WatchHub::new(0);
        apply(&mut kv, &mut hub, put("a", "1")); // revision 1
        apply(&mut kv, &mut hub, put("a", "2")); // 2
        apply(&mut kv, &mut hub, put("b", "1")); // 3
        apply(&mut kv, &mut hub, KvCommand::delete("a").unwrap()); // 4
        apply(&mut kv, &mut hub, put("c", "1")); // 5
        let expected: [&[&str]; 5] = [
            &["a=1@1v1"],
            &["a=2@2v2"],
            &["a=2@2v2", "b=1@3v1"],
            &["b=1@3v1"],
            &["b=1@3v1", "c=1@5v1"],
        ];
        for (revision, want) in (1..).zip(expected) {
            assert_eq!(
                range_all(&kv, &mut hub, revision).unwrap(),
                want,
                "at {revision}"
            );
        }
        // Now (0) is the last revision; a later one is refused.
        assert_eq!(range_all(&kv, &mut hub, 0).unwrap(), ["b=1@3v1", "c=1@5v1"]);
        let future = range_all(&kv, &mut hub, 6).unwrap_err();
        assert_eq!(future.code(), Code::OutOfRange);
        assert!(future.message().contains("future revision"));
        // Compacted at revision 3: reads there still work, older not; the
        // change that made revision 3 is kept for a watch from 3.
        hub.compact(3);
        assert_eq!(range_all(&kv, &mut hub, 3).unwrap(), ["a=2@2v2", "b=1@3v1"]);
        let gone = range_all(&kv, &mut hub, 2).unwrap_err();
        assert!(gone.message().contains("compacted"), "{gone:?}");
        let kept: Vec<u64> = hub
            .events_from(0)
            .map(|e| revision_of_round(e.round))
            .collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(hub.compacted_revision(), 3);
    }

    #[test]
    fn a_range_sorts_limits_and_counts_as_etcd_does() {
        let mut kv = KvStore::default();
        let mut hub = WatchHub::new(0);
        apply(&mut kv, &mut hub, put("k1", "z"));
        apply(&mut kv, &mut hub, put("k2", "y"));
        apply(&mut kv, &mut hub, put("k3", "x"));
        apply(&mut kv, &mut hub, put("k1", "w"));
        let view = StoreView {
            kv: &kv,
            history: &mut hub,
            promised: paxlog_core::Ballot::ZERO,
        };
        let keys = |request: pb::RangeRequest| {
            let range = key_range(&request.key, &request.range_end).unwrap();
            let (_, kvs, more, count) = range_at(&view, &range, &request).unwrap();
            let keys: Vec<String> = kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect();
            (keys, more, count)
        };
        let prefix =
            |sort_order: SortOrder, sort_target: SortTarget, limit: i64| pb::RangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                sort_order: sort_order as i32,
                sort_target: sort_target as i32,
                limit,
                ..Default::default()
            };
        assert_eq!(
            keys(prefix(SortOrder::None, SortTarget::Key, 2)),
            (vec!["k1".into(), "k2".into()], true, 3)
        );
        assert_eq!(
            keys(prefix(SortOrder::Descend, SortTarget::Key, 0)),
            (vec!["k3".into(), "k2".into(), "k1".into()], false, 3)
        );
        // By value, ascending by default: w (k1), x (k3), y (k2).
        assert_eq!(
            keys(prefix(SortOrder::None, SortTarget::Value, 0)),
            (vec!["k1".into(), "k3".into(), "k2".into()], false, 3)
        );
        // By mod revision, descending, limited: k1 was written last.
        assert_eq!(
            keys(prefix(SortOrder::Descend, SortTarget::Mod, 1)),
            (vec!["k1".into()], true, 3)
        );
        // Count only: no key-values, the count.
        let mut count_only = prefix(SortOrder::None, SortTarget::Key, 0);
        count_only.count_only = true;
        assert_eq!(keys(count_only), (vec![], false, 3));
    }
}
