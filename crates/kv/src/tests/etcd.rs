//! Per-key metadata, changes, key ranges in the store, transactions.

use super::*;

/// Applies `cmd` as a fresh client's request at the next slot.
fn apply(store: &mut KvStore, cmd: &KvCommand) -> ApplyOutput {
    let client = 2_000_000 + store.applied_upto().0;
    let entry = fresh(store, client, 1, cmd);
    run(store, &entry)
}

fn put_cmd(key: &str, value: Value) -> KvCommand {
    KvCommand::put(key, &value).unwrap()
}

fn meta(create_revision: u64, mod_revision: u64, version: u64) -> Option<KeyMeta> {
    Some(KeyMeta {
        create_revision,
        mod_revision,
        version,
    })
}

fn put(key: &str, value_json: &str) -> TxnOp {
    put_full(key, value_json, None, false, false)
}

/// A put without `prev_kv`.
fn put_full(
    key: &str,
    value_json: &str,
    lease: Option<u64>,
    ignore_value: bool,
    ignore_lease: bool,
) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value_json: value_json.into(),
        lease,
        ignore_value,
        ignore_lease,
        prev_kv: false,
    }
}

fn leased(key: &str, value_json: &str, lease: u64) -> TxnOp {
    put_full(key, value_json, Some(lease), false, false)
}

/// A put that keeps the key's current value (and gives none).
fn keep_value(key: &str) -> TxnOp {
    put_full(key, "", None, true, false)
}

/// A put that keeps the key's current lease.
fn keep_lease(key: &str, value_json: &str) -> TxnOp {
    put_full(key, value_json, None, false, true)
}

fn delete(range: KeyRange, prev_kv: bool) -> TxnOp {
    TxnOp::Delete { range, prev_kv }
}

fn read(range: KeyRange) -> TxnOp {
    TxnOp::Range {
        range,
        limit: 0,
        keys_only: false,
        count_only: false,
    }
}

fn one(key: &str) -> KeyRange {
    KeyRange::One(key.into())
}

fn compare(range: KeyRange, target: CompareTarget, op: CompareOp) -> Compare {
    Compare { range, target, op }
}

fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Txn {
    Txn {
        compares,
        success,
        failure,
    }
}

/// A transaction's answer; panics on an error.
fn answer(out: &ApplyOutput) -> Value {
    match &out.result {
        ApplyResult::Ok { value: Some(v) } => v.clone(),
        other => panic!("not an answer: {other:?}"),
    }
}

fn run_txn(store: &mut KvStore, t: Txn) -> Value {
    answer(&apply(store, &KvCommand::txn(t).unwrap()))
}

/// Whether a transaction of just these compares succeeds.
fn holds(store: &mut KvStore, compares: Vec<Compare>) -> bool {
    run_txn(store, txn(compares, vec![], vec![]))["succeeded"]
        .as_bool()
        .unwrap()
}

fn grant(store: &mut KvStore) -> u64 {
    let out = apply(store, &KvCommand::LeaseGrant { ttl_ms: 5_000 });
    answer(&out)["lease"].as_u64().unwrap()
}

// ------------------------------------------------------------ metadata

#[test]
fn metadata_follows_put_put_delete_put() {
    let mut s = KvStore::default();
    apply(&mut s, &put_cmd("k", json!(1))); // slot 0: revision 1
    assert_eq!(s.meta("k"), meta(1, 1, 1));
    assert_eq!(
        s.changes(),
        [Change {
            key: "k".into(),
            previous: None
        }]
    );
    apply(&mut s, &put_cmd("other", json!(0))); // slot 1: revision 2
    apply(&mut s, &put_cmd("k", json!(2))); // slot 2: revision 3
    assert_eq!(s.meta("k"), meta(1, 3, 2));
    assert_eq!(
        s.changes(),
        [Change {
            key: "k".into(),
            previous: Some(PreviousKv {
                value: json!(1),
                meta: KeyMeta {
                    create_revision: 1,
                    mod_revision: 1,
                    version: 1
                },
                lease: None,
            }),
        }]
    );
    apply(&mut s, &KvCommand::delete("k").unwrap()); // slot 3
    assert_eq!(s.meta("k"), None);
    assert_eq!(s.changes().len(), 1);
    assert_eq!(
        s.changes()[0].previous.as_ref().map(|p| p.meta),
        meta(1, 3, 2)
    );
    // Deleting what is absent changes nothing.
    apply(&mut s, &KvCommand::delete("k").unwrap()); // slot 4
    assert!(s.changes().is_empty());
    apply(&mut s, &put_cmd("k", json!(3))); // slot 5: revision 6
    assert_eq!(s.meta("k"), meta(6, 6, 1), "a re-created key starts again");
    assert_eq!(s.meta("other"), meta(2, 2, 1));
}

#[test]
fn every_write_path_updates_metadata() {
    let mut s = KvStore::default();
    exec(&mut s, "x = [1]"); // slot 0: revision 1
    exec(&mut s, "x += [2]"); // slot 1: revision 2
    assert_eq!(s.meta("x"), meta(1, 2, 2));
    // A failed statement writes nothing.
    assert_eq!(kind(&exec(&mut s, "x += 'a'")), Some(ErrorKind::TypeError)); // slot 2
    assert_eq!(s.meta("x"), meta(1, 2, 2));
    assert!(s.changes().is_empty());
    exec(&mut s, "del x"); // slot 3
    assert_eq!(s.meta("x"), None);
    // Compare-and-set: a success writes, a failure does not.
    apply(&mut s, &KvCommand::cas("c", None, &json!(1)).unwrap()); // slot 4: revision 5
    apply(
        &mut s,
        &KvCommand::cas("c", Some(&json!(9)), &json!(2)).unwrap(),
    ); // slot 5
    assert_eq!(s.meta("c"), meta(5, 5, 1));
    apply(
        &mut s,
        &KvCommand::cas("c", Some(&json!(1)), &json!(2)).unwrap(),
    ); // slot 6: revision 7
    assert_eq!(s.meta("c"), meta(5, 7, 2));
    // Leased puts, and revoking.
    let lease = grant(&mut s); // slot 7
    let leased = KvCommand::PutLeased {
        key: "c".into(),
        value_json: "3".into(),
        lease,
    };
    apply(&mut s, &leased); // slot 8: revision 9
    assert_eq!(s.meta("c"), meta(5, 9, 3));
    apply(&mut s, &KvCommand::LeaseRevoke { lease }); // slot 9
    assert_eq!(s.meta("c"), None);
    assert_eq!(
        s.changes(),
        [Change {
            key: "c".into(),
            previous: Some(PreviousKv {
                value: json!(3),
                meta: KeyMeta {
                    create_revision: 5,
                    mod_revision: 9,
                    version: 3
                },
                lease: Some(lease),
            }),
        }]
    );
    // A retried request does not write again.
    let entry = cmd_entry(77, 1, &put_cmd("r", json!(1)));
    run(&mut s, &entry); // slot 10: revision 11
    run(&mut s, &entry); // slot 11
    assert_eq!(s.meta("r"), meta(11, 11, 1));
    assert!(s.changes().is_empty());
}

#[test]
fn store_ranges_in_key_order() {
    let mut s = KvStore::default();
    for key in ["a", "a/1", "a/2", "a0", "b", "\u{ff}"] {
        apply(&mut s, &put_cmd(key, json!(key)));
    }
    let keys = |r: &KeyRange| s.range(r).map(|(k, ..)| k.to_owned()).collect::<Vec<_>>();
    assert_eq!(keys(&KeyRange::prefix("a/")), ["a/1", "a/2"]);
    assert_eq!(keys(&KeyRange::prefix("a")), ["a", "a/1", "a/2", "a0"]);
    assert_eq!(keys(&one("a0")), ["a0"]);
    assert!(keys(&one("zz")).is_empty());
    assert_eq!(keys(&KeyRange::From("a0".into())), ["a0", "b", "\u{ff}"]);
    assert_eq!(keys(&KeyRange::From(String::new())).len(), 6);
    let below = KeyRange::from_etcd(b"a/", b"b").unwrap();
    assert_eq!(keys(&below), ["a/1", "a/2", "a0"]);
    let backwards = KeyRange::from_etcd(b"b", b"a").unwrap();
    assert!(keys(&backwards).is_empty());
    let (key, value, m) = s.range(&one("b")).next().unwrap();
    // "b" was the fifth put: slot 4, revision 5.
    assert_eq!((key, value, Some(m)), ("b", &json!("b"), meta(5, 5, 1)));
}

// ------------------------------------------------------------ transactions

#[test]
fn a_single_put_answers_in_the_documented_shape() {
    let mut s = KvStore::default();
    let first = run_txn(&mut s, txn(vec![], vec![put("k", "\"v\"")], vec![])); // slot 0
    assert_eq!(
        first,
        json!({"succeeded": true, "responses": [{"put": {"prev_kv": null}}]})
    );
    let prev = TxnOp::Put {
        key: "k".into(),
        value_json: "2".into(),
        lease: None,
        ignore_value: false,
        ignore_lease: false,
        prev_kv: true,
    };
    let second = run_txn(&mut s, txn(vec![], vec![prev], vec![])); // slot 1
    assert_eq!(
        second,
        json!({"succeeded": true, "responses": [{"put": {"prev_kv": {
            "key": "k", "value": "v", "create_revision": 1, "mod_revision": 1, "version": 1, "lease": 0
        }}}]})
    );
    assert_eq!(s.meta("k"), meta(1, 2, 2));
    let deleted = run_txn(
        &mut s,
        txn(vec![], vec![delete(KeyRange::prefix(""), true)], vec![]),
    );
    assert_eq!(
        deleted,
        json!({"succeeded": true, "responses": [{"delete": {"deleted": 1, "prev_kvs": [{
            "key": "k", "value": 2, "create_revision": 1, "mod_revision": 2, "version": 2, "lease": 0
        }]}}]})
    );
    assert!(s.is_empty());
}

#[test]
fn compares_on_every_target() {
    use CompareOp::{Equal, Greater, Less, NotEqual};
    use CompareTarget as T;
    let mut s = KvStore::default();
    apply(&mut s, &put_cmd("a", json!("x"))); // slot 0: revision 1
    apply(&mut s, &put_cmd("a", json!("y"))); // slot 1: a is version 2, revision 2
    let lease = grant(&mut s); // slot 2
    apply(
        &mut s,
        &KvCommand::PutLeased {
            key: "b".into(),
            value_json: "{\"n\":1}".into(),
            lease,
        },
    ); // slot 3: b at revision 4
    let n = |x: u64| i64::try_from(x).unwrap();
    let cases: Vec<(KeyRange, T, CompareOp, bool)> = vec![
        // Value: etcd bytes, lexicographic.
        (one("a"), T::Value(b"y".to_vec()), Equal, true),
        (one("a"), T::Value(b"x".to_vec()), Greater, true),
        (one("a"), T::Value(b"z".to_vec()), Less, true),
        (one("a"), T::Value(b"y".to_vec()), NotEqual, false),
        (one("a"), T::Value(b"yy".to_vec()), Less, true),
        (one("b"), T::Value(br#"{"n":1}"#.to_vec()), Equal, true),
        // A value compare on a missing key fails whatever the op.
        (one("zz"), T::Value(vec![]), Equal, false),
        (one("zz"), T::Value(vec![]), NotEqual, false),
        (one("zz"), T::Value(b"a".to_vec()), Less, false),
        // Version, create and mod revisions (a revision is the slot plus one).
        (one("a"), T::Version(2), Equal, true),
        (one("a"), T::Version(1), Greater, true),
        (one("a"), T::Version(3), Less, true),
        (one("a"), T::Version(2), NotEqual, false),
        (one("a"), T::CreateRevision(1), Equal, true),
        (one("a"), T::CreateRevision(2), Equal, false),
        // 0 names no write: an existing key's create revision is never 0.
        (one("a"), T::CreateRevision(0), Equal, false),
        (one("a"), T::CreateRevision(0), Greater, true),
        (one("a"), T::ModRevision(2), Equal, true),
        (one("a"), T::ModRevision(1), Equal, false),
        (one("a"), T::ModRevision(1), Greater, true),
        (one("a"), T::ModRevision(0), Greater, true),
        (one("b"), T::CreateRevision(4), Equal, true),
        (one("b"), T::ModRevision(4), Less, false),
        (one("b"), T::ModRevision(5), Less, true),
        (one("a"), T::Version(-1), Greater, true),
        (one("a"), T::Version(i64::MIN), Greater, true),
        // Other targets on a missing key compare zero.
        (one("zz"), T::Version(0), Equal, true),
        (one("zz"), T::CreateRevision(0), Equal, true),
        (one("zz"), T::CreateRevision(0), NotEqual, false),
        (one("zz"), T::ModRevision(0), Equal, true),
        (one("zz"), T::ModRevision(1), Less, true),
        (one("zz"), T::Lease(0), Equal, true),
        (one("zz"), T::Version(0), Greater, false),
        // Leases: 0 is none.
        (one("a"), T::Lease(0), Equal, true),
        (one("b"), T::Lease(n(lease)), Equal, true),
        (one("b"), T::Lease(0), NotEqual, true),
        // Ranges: every key must hold.
        (KeyRange::prefix(""), T::Version(0), Greater, true),
        (KeyRange::prefix(""), T::Version(2), Equal, false),
        (KeyRange::prefix(""), T::CreateRevision(5), Less, true),
        (KeyRange::prefix(""), T::CreateRevision(4), Less, false),
        (KeyRange::prefix("a"), T::Version(2), Equal, true),
        (KeyRange::From("b".into()), T::Lease(n(lease)), Equal, true),
        // An empty range is a missing key.
        (KeyRange::prefix("q"), T::Version(0), Equal, true),
        (KeyRange::prefix("q"), T::Value(vec![]), NotEqual, false),
    ];
    for (range, target, op, expected) in cases {
        let c = compare(range.clone(), target.clone(), op);
        assert_eq!(
            holds(&mut s, vec![c]),
            expected,
            "{range:?} {target:?} {op:?}"
        );
    }
    // All compares must hold.
    let yes = compare(one("a"), T::Version(2), Equal);
    let no = compare(one("a"), T::Version(1), Equal);
    assert!(holds(&mut s, vec![yes.clone(), yes.clone()]));
    assert!(!holds(&mut s, vec![yes.clone(), no.clone()]));
    assert!(holds(&mut s, vec![]));
    // Compares and reads write nothing.
    assert_eq!(s.meta("a"), meta(1, 2, 2));
    assert!(s.changes().is_empty());
}

#[test]
fn the_branch_follows_the_compares_and_later_ops_see_earlier_ones() {
    let mut s = KvStore::default();
    // Create "k" once: the classic etcd lock / leader-election idiom.
    let create_once = || {
        txn(
            // etcd's usual test, `CreateRevision == 0`: it holds only for
            // a missing key, even one first written at slot 0 (revision 1).
            vec![compare(
                one("k"),
                CompareTarget::CreateRevision(0),
                CompareOp::Equal,
            )],
            vec![put("k", "1"), read(one("k"))],
            vec![read(one("k"))],
        )
    };
    let first = run_txn(&mut s, create_once()); // slot 0
    assert_eq!(first["succeeded"], json!(true));
    assert_eq!(first["responses"][0], json!({"put": {"prev_kv": null}}));
    assert_eq!(
        first["responses"][1]["range"]["kvs"],
        json!([{"key": "k", "value": 1, "create_revision": 1, "mod_revision": 1, "version": 1, "lease": 0}]),
        "the read sees the put before it"
    );
    let second = run_txn(&mut s, create_once()); // slot 1
    assert_eq!(second["succeeded"], json!(false));
    assert_eq!(second["responses"].as_array().unwrap().len(), 1);
    assert_eq!(second["responses"][0]["range"]["count"], json!(1));
    assert_eq!(s.meta("k"), meta(1, 1, 1), "the failure branch only read");
    // A delete, then a read of what it deleted, then a put elsewhere.
    let after = run_txn(
        &mut s,
        txn(
            vec![],
            vec![
                read(KeyRange::prefix("")),
                delete(one("k"), false),
                read(KeyRange::prefix("")),
                put("j", "2"),
                read(KeyRange::prefix("")),
            ],
            vec![],
        ),
    ); // slot 2
    let counts: Vec<&Value> = [0, 2, 4]
        .iter()
        .map(|&i| &after["responses"][i]["range"]["count"])
        .collect();
    assert_eq!(counts, [&json!(1), &json!(0), &json!(1)]);
    assert_eq!(
        after["responses"][1],
        json!({"delete": {"deleted": 1, "prev_kvs": []}})
    );
    // Every key the transaction wrote is a change, in order.
    let changes: Vec<(&str, bool)> = s
        .changes()
        .iter()
        .map(|c| (c.key.as_str(), c.previous.is_some()))
        .collect();
    assert_eq!(changes, [("k", true), ("j", false)]);
    assert_eq!(s.meta("j"), meta(3, 3, 1), "written at slot 2");
}

#[test]
fn ignore_value_and_ignore_lease_keep_what_the_key_has() {
    let mut s = KvStore::default();
    let lease = grant(&mut s); // slot 0
    let put_one = |s: &mut KvStore, op| run_txn(s, txn(vec![], vec![op], vec![]));
    put_one(&mut s, leased("k", "1", lease)); // slot 1: revision 2
    assert_eq!(s.lease_of("k"), Some(lease));
    // New value, same lease.
    put_one(&mut s, keep_lease("k", "2")); // slot 2
    assert_eq!(
        (s.get("k"), s.lease_of("k")),
        (Some(&json!(2)), Some(lease))
    );
    assert!(s.leases()[&lease].keys.contains("k"));
    // Same value, off the lease.
    put_one(&mut s, keep_value("k")); // slot 3
    assert_eq!((s.get("k"), s.lease_of("k")), (Some(&json!(2)), None));
    assert!(s.leases()[&lease].keys.is_empty());
    // Same value, back on the lease.
    put_one(&mut s, put_full("k", "", Some(lease), true, false)); // slot 4: revision 5
    assert_eq!(
        (s.get("k"), s.lease_of("k")),
        (Some(&json!(2)), Some(lease))
    );
    assert_eq!(
        s.meta("k"),
        meta(2, 5, 4),
        "keeping the value is still a write"
    );
    // Both kept: a write that changes only the metadata.
    put_one(&mut s, put_full("k", "", None, true, true)); // slot 5: revision 6
    assert_eq!(
        (s.get("k"), s.lease_of("k")),
        (Some(&json!(2)), Some(lease))
    );
    assert_eq!(s.meta("k"), meta(2, 6, 5));
    // On a missing key: KeyNotFound, and nothing is written.
    for op in [keep_value("nope"), keep_lease("nope", "1")] {
        let before = s.clone();
        let t = txn(vec![], vec![put("first", "1"), op], vec![]);
        let out = apply(&mut s, &KvCommand::txn(t).unwrap());
        assert_eq!(kind(&out), Some(ErrorKind::KeyNotFound));
        assert_eq!(s.get("first"), None);
        assert_eq!(s.db_json(), before.db_json());
        assert!(s.changes().is_empty());
    }
    // A value or a lease given with the flag that ignores it is refused.
    for (op, what) in [
        (put_full("k", "3", None, true, false), "value is provided"),
        (
            put_full("k", "3", Some(lease), false, true),
            "lease is provided",
        ),
    ] {
        let t = txn(vec![], vec![op], vec![]);
        let e = KvCommand::txn(t.clone()).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
        // Unchecked commands are refused at apply too.
        let out = apply(&mut s, &KvCommand::Txn(t));
        assert_eq!(kind(&out), Some(ErrorKind::InvalidValue));
    }
    assert_eq!(s.get("k"), Some(&json!(2)));
}

#[test]
fn leases_attach_and_detach_through_transactions() {
    let mut s = KvStore::default();
    let lease = grant(&mut s); // slot 0
    run_txn(
        &mut s,
        txn(
            vec![],
            vec![leased("a", "1", lease), leased("b", "1", lease)],
            vec![],
        ),
    );
    assert_eq!(s.lease_of("a"), Some(lease));
    assert_eq!(s.leases()[&lease].keys.len(), 2);
    let read_a = run_txn(&mut s, txn(vec![], vec![read(one("a"))], vec![]));
    assert_eq!(
        read_a["responses"][0]["range"]["kvs"][0]["lease"],
        json!(lease)
    );
    // A put without a lease detaches.
    run_txn(&mut s, txn(vec![], vec![put("a", "2")], vec![]));
    assert_eq!(s.lease_of("a"), None);
    assert_eq!(s.leases()[&lease].keys.len(), 1);
    // An unknown lease: LeaseNotFound, and the op before it is not applied.
    let before = s.clone();
    let t = txn(vec![], vec![put("c", "1"), leased("d", "1", 99)], vec![]);
    let out = apply(&mut s, &KvCommand::txn(t).unwrap());
    assert_eq!(kind(&out), Some(ErrorKind::LeaseNotFound));
    assert_eq!(s.get("c"), None);
    assert_eq!(s.db_json(), before.db_json());
    // Revoking deletes the keys still on it.
    apply(&mut s, &KvCommand::LeaseRevoke { lease });
    assert_eq!(s.get("b"), None);
    assert_eq!(s.get("a"), Some(&json!(2)));
}

#[test]
fn ranges_in_a_transaction_honour_limit_keys_only_and_count_only() {
    let mut s = KvStore::default();
    let keys: Vec<TxnOp> = (0..5)
        .map(|i| put(&format!("k{i}"), &i.to_string()))
        .collect();
    run_txn(&mut s, txn(vec![], keys, vec![])); // slot 0: revision 1
    let range = |limit, keys_only, count_only| TxnOp::Range {
        range: KeyRange::prefix("k"),
        limit,
        keys_only,
        count_only,
    };
    let out = run_txn(
        &mut s,
        txn(
            vec![],
            vec![
                range(2, false, false),
                range(0, true, false),
                range(1, false, true),
                range(5, false, false),
            ],
            vec![],
        ),
    );
    let r = |i: usize| &out["responses"][i]["range"];
    assert_eq!(r(0)["count"], json!(5));
    assert_eq!(r(0)["more"], json!(true));
    assert_eq!(
        r(0)["kvs"],
        json!([
            {"key": "k0", "value": 0, "create_revision": 1, "mod_revision": 1, "version": 1, "lease": 0},
            {"key": "k1", "value": 1, "create_revision": 1, "mod_revision": 1, "version": 1, "lease": 0},
        ])
    );
    assert_eq!(r(1)["kvs"].as_array().unwrap().len(), 5);
    assert!(r(1)["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|kv| kv["value"].is_null()));
    assert_eq!(r(1)["more"], json!(false));
    assert_eq!(r(2), &json!({"kvs": [], "count": 5, "more": false}));
    assert_eq!(r(3)["more"], json!(false));
    assert_eq!(r(3)["kvs"].as_array().unwrap().len(), 5);
}

#[test]
fn a_transaction_returns_at_most_max_txn_range_keys() {
    let mut s = KvStore::default();
    let n = MAX_TXN_RANGE_KEYS + 5;
    for chunk in (0..n).collect::<Vec<_>>().chunks(MAX_TXN_OPS) {
        let puts = chunk
            .iter()
            .map(|i| put(&format!("k{i:05}"), "0"))
            .collect();
        run_txn(&mut s, txn(vec![], puts, vec![]));
    }
    let all = || read(KeyRange::prefix("k"));
    let out = run_txn(&mut s, txn(vec![], vec![all(), all()], vec![]));
    let first = &out["responses"][0]["range"];
    assert_eq!(first["count"], json!(n));
    assert_eq!(first["more"], json!(true));
    assert_eq!(
        first["kvs"].as_array().unwrap().len() as u64,
        MAX_TXN_RANGE_KEYS
    );
    // The transaction's ranges share the allowance.
    let second = &out["responses"][1]["range"];
    assert_eq!(second["count"], json!(n));
    assert_eq!(second["kvs"], json!([]));
    assert_eq!(second["more"], json!(true));
}

#[test]
fn a_failing_operation_leaves_everything_untouched() {
    let mut s = KvStore::default();
    exec(&mut s, "keep = 1"); // slot 0
    let lease = grant(&mut s); // slot 1
    let before = s.clone();
    let t = txn(
        vec![],
        vec![
            put("new", "2"),
            delete(one("keep"), false),
            leased("x", "1", lease + 1),
        ],
        vec![],
    );
    let out = apply(&mut s, &KvCommand::txn(t).unwrap());
    assert_eq!(kind(&out), Some(ErrorKind::LeaseNotFound));
    assert!(s.changes().is_empty());
    assert_eq!(s.db_json(), before.db_json());
    assert_eq!(s.meta("keep"), before.meta("keep"));
    assert_eq!(s.leases(), before.leases());
    // The failure is the request's outcome: a retry answers it again.
    let keep_missing = KvCommand::txn(txn(vec![], vec![keep_value("y")], vec![])).unwrap();
    let entry = cmd_entry(9, 1, &keep_missing);
    assert_eq!(kind(&run(&mut s, &entry)), Some(ErrorKind::KeyNotFound));
    let retry = run(&mut s, &entry);
    assert!(retry.duplicate);
    assert_eq!(kind(&retry), Some(ErrorKind::KeyNotFound));
    assert_eq!(s.db_json(), before.db_json());
}

#[test]
fn a_branch_may_not_write_a_key_twice() {
    let duplicates = [
        vec![put("a", "1"), put("a", "2")],
        vec![put("a", "1"), delete(one("a"), false)],
        vec![delete(KeyRange::prefix("a"), false), put("ab", "1")],
        vec![put("b", "1"), delete(KeyRange::From("a".into()), true)],
    ];
    let mut s = KvStore::default();
    for ops in duplicates {
        for t in [
            txn(vec![], ops.clone(), vec![]),
            txn(vec![], vec![], ops.clone()),
        ] {
            let e = KvCommand::txn(t.clone()).unwrap_err();
            assert!(e.to_string().contains("duplicate key"), "{e}");
            let out = apply(&mut s, &KvCommand::Txn(t));
            assert_eq!(kind(&out), Some(ErrorKind::InvalidValue));
            assert!(s.is_empty());
        }
    }
    // Fine: overlapping deletes, reads of written keys, the same key in
    // both branches, a put beside a delete that misses it.
    let fine = txn(
        vec![],
        vec![
            delete(KeyRange::prefix("a"), false),
            delete(one("ab"), true),
            put("b", "1"),
            read(one("b")),
            delete(KeyRange::from_etcd(b"c", b"d").unwrap(), false),
        ],
        vec![put("b", "2")],
    );
    assert!(KvCommand::txn(fine).is_ok());
}

#[test]
fn transaction_limits() {
    let many = |n: usize| {
        (0..n)
            .map(|i| put(&format!("k{i}"), "0"))
            .collect::<Vec<_>>()
    };
    assert!(KvCommand::txn(txn(vec![], many(MAX_TXN_OPS), many(MAX_TXN_OPS))).is_ok());
    let e = KvCommand::txn(txn(vec![], many(MAX_TXN_OPS + 1), vec![])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "too many operations in a txn branch (129, at most 128)"
    );
    for t in [
        txn(vec![], many(MAX_TXN_OPS + 1), vec![]),
        txn(vec![], vec![], many(MAX_TXN_OPS + 1)),
        txn(
            vec![compare(one("k"), CompareTarget::Version(0), CompareOp::Equal); MAX_TXN_OPS + 1],
            vec![],
            vec![],
        ),
        txn(
            vec![compare(
                one("k"),
                CompareTarget::Value(vec![b'x'; limits::MAX_VALUE_BYTES + 1]),
                CompareOp::Equal,
            )],
            vec![],
            vec![],
        ),
    ] {
        let e = KvCommand::txn(t.clone()).unwrap_err();
        assert!(
            matches!(e, KvError::TooLarge { .. } | KvError::TooMany { .. }),
            "{e}"
        );
        let mut s = KvStore::default();
        assert_eq!(
            kind(&apply(&mut s, &KvCommand::Txn(t))),
            Some(ErrorKind::TooLarge)
        );
    }
    // Keys, ranges and values are checked like everywhere else.
    let long_key = "k".repeat(limits::MAX_KEY_BYTES + 1);
    for (t, expected) in [
        (
            txn(vec![], vec![put("", "1")], vec![]),
            ErrorKind::InvalidKey,
        ),
        (
            txn(vec![], vec![put(&long_key, "1")], vec![]),
            ErrorKind::InvalidKey,
        ),
        (
            txn(vec![], vec![put("k", "nope")], vec![]),
            ErrorKind::InvalidValue,
        ),
        (
            txn(vec![], vec![put("k", "")], vec![]),
            ErrorKind::InvalidValue,
        ),
        (
            txn(vec![], vec![read(KeyRange::From(long_key.clone()))], vec![]),
            ErrorKind::InvalidKey,
        ),
        (
            txn(
                vec![compare(
                    one(""),
                    CompareTarget::Version(0),
                    CompareOp::Equal,
                )],
                vec![],
                vec![],
            ),
            ErrorKind::InvalidKey,
        ),
    ] {
        assert!(KvCommand::txn(t.clone()).is_err());
        let mut s = KvStore::default();
        assert_eq!(kind(&apply(&mut s, &KvCommand::Txn(t))), Some(expected));
        assert!(s
            .check(&KvCommand::Txn(txn(vec![], vec![], vec![])))
            .is_ok());
    }
}

#[test]
fn a_retried_transaction_answers_whether_it_succeeded() {
    let mut s = KvStore::default();
    let t = txn(
        vec![compare(
            one("k"),
            CompareTarget::Version(0),
            CompareOp::Equal,
        )],
        vec![put("k", "1")],
        vec![read(one("k"))],
    );
    let cmd = KvCommand::txn(t).unwrap();
    for (client, succeeded) in [(1, true), (2, false)] {
        let entry = fresh(&s, client, 1, &cmd);
        let first = run(&mut s, &entry);
        assert_eq!(answer(&first)["succeeded"], json!(succeeded));
        let retry = run(&mut s, &entry);
        assert!(retry.duplicate);
        assert_eq!(answer(&retry), json!({"succeeded": succeeded}));
        let asked = s
            .answer_duplicate(RequestId {
                client_id: client,
                seq: 1,
            })
            .unwrap();
        assert_eq!(asked.result, retry.result);
    }
    // Written by the first request, at slot 0.
    assert_eq!(s.meta("k"), meta(1, 1, 1), "the retries wrote nothing");
}

#[test]
fn values_compare_as_etcd_bytes() {
    let mut s = KvStore::default();
    let raw = [0x00, 0xff, 0x10];
    let value = value_from_bytes(&raw);
    let value_json = value.to_string();
    run_txn(&mut s, txn(vec![], vec![put("bin", &value_json)], vec![]));
    assert_eq!(value_to_bytes(s.get("bin").unwrap()), raw);
    let is = |bytes: &[u8], op| compare(one("bin"), CompareTarget::Value(bytes.to_vec()), op);
    assert!(holds(&mut s, vec![is(&raw, CompareOp::Equal)]));
    assert!(holds(&mut s, vec![is(&[0x00, 0xff], CompareOp::Greater)]));
    assert!(holds(&mut s, vec![is(&[0x01], CompareOp::Less)]));
}

#[test]
fn describe_a_transaction() {
    let t = txn(
        vec![compare(
            one("k"),
            CompareTarget::Version(0),
            CompareOp::Equal,
        )],
        vec![put("k", "1"), delete(KeyRange::prefix("a\u{ff}"), false)],
        vec![read(KeyRange::From("b".into()))],
    );
    assert_eq!(
        KvCommand::Txn(t).describe(),
        r#"TXN IF [version("k") == 0] THEN [PUT "k" 1, DELETE "aÿ"..0x61c3c0] ELSE [RANGE "b"..]"#
    );
}

#[test]
fn transactions_survive_the_log_encoding() {
    let t = txn(
        vec![compare(
            KeyRange::prefix("a\u{ff}"),
            CompareTarget::Lease(-1),
            CompareOp::NotEqual,
        )],
        vec![keep_value("k")],
        vec![delete(KeyRange::From(String::new()), true)],
    );
    let cmd = KvCommand::txn(t).unwrap();
    assert_eq!(KvCommand::decode(&cmd.encode()).unwrap(), cmd);
    let request = KvRequest::new(Slot(7), cmd.clone());
    assert_eq!(KvRequest::decode(&request.encode()).unwrap(), request);
    // Older commands keep their variant indexes.
    assert_eq!(put_cmd("k", json!(1)).encode()[0], 1);
    assert_eq!(KvCommand::LeaseRevoke { lease: 1 }.encode()[0], 7);
    assert_eq!(cmd.encode()[0], 8);
}

// ------------------------------------------------------------ replicas

/// A workload of transactions and plain writes over a few keys.
fn mixed_commands(lease: u64) -> Vec<KvCommand> {
    let leased = |key: &str| leased(key, "7", lease);
    vec![
        put_cmd("a", json!(1)),
        KvCommand::txn(txn(
            vec![compare(
                one("a"),
                CompareTarget::Version(1),
                CompareOp::Equal,
            )],
            vec![put("b", "2"), leased("c"), read(KeyRange::prefix(""))],
            vec![delete(KeyRange::prefix(""), true)],
        ))
        .unwrap(),
        ex("a += 1"),
        KvCommand::txn(txn(
            vec![compare(
                one("a"),
                CompareTarget::Version(1),
                CompareOp::Equal,
            )],
            vec![put("b", "3")],
            vec![delete(KeyRange::prefix("b"), true), leased("d")],
        ))
        .unwrap(),
        KvCommand::txn(txn(vec![], vec![leased("zz"), put("a", "\"x\"")], vec![])).unwrap(),
    ]
}

#[test]
fn replicas_applying_the_same_entries_agree_and_snapshots_keep_metadata() {
    let mut a = KvStore::default();
    let grant = cmd_entry(1, 1, &KvCommand::LeaseGrant { ttl_ms: 5_000 });
    let lease = answer(&run(&mut a, &grant))["lease"].as_u64().unwrap();
    let mut entries = vec![grant];
    for (i, cmd) in mixed_commands(lease).iter().enumerate() {
        let entry = fresh(&a, 10 + i as u64, 1, cmd);
        run(&mut a, &entry);
        entries.push(entry);
    }
    let mut b = KvStore::default();
    for entry in &entries {
        run(&mut b, entry);
    }
    assert_eq!(a, b);
    assert_eq!(a.snapshot(), b.snapshot());
    assert_eq!(
        a.db_json(),
        json!({"a": "x", "c": 7, "d": 7, "zz": 7}),
        "{:?}",
        a.db_json()
    );
    // The grant is slot 0, the commands slots 1 to 5 (revisions 2 to 6).
    assert_eq!(a.meta("a"), meta(2, 6, 3));
    assert_eq!(a.meta("d"), meta(5, 5, 1));
    assert_eq!(a.lease_of("d"), Some(lease));
    // A snapshot keeps every key's metadata and lease exactly.
    let image = a.snapshot();
    assert_eq!(image[0], SNAPSHOT_VERSION);
    assert_eq!(SNAPSHOT_VERSION, 8);
    let mut restored = KvStore::default();
    restored.restore(&image).unwrap();
    assert_eq!(restored, a);
    for key in ["a", "c", "d", "zz"] {
        assert_eq!(restored.meta(key), a.meta(key), "{key}");
        assert_eq!(restored.lease_of(key), a.lease_of(key), "{key}");
    }
    assert_eq!(restored.snapshot(), image);
}

/// A version 6 image: keys without metadata, a lease with a key on it.
fn v6_image(applied_upto: u64) -> Vec<u8> {
    let mut image = vec![6u8];
    image.extend(
        postcard::to_allocvec(&(
            applied_upto,
            None::<u64>,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "{\"x\":[true]}".to_string()),
            ],
            Vec::<u8>::new(),
            None::<(u64, u64, u64)>,
            Vec::<(u32, (String, Option<String>))>::new(),
            0u64,
            vec![(3u64, (5_000u64, vec!["b".to_string()]))],
            4u64,
        ))
        .unwrap(),
    );
    image
}

#[test]
fn a_version_6_image_restores_with_every_key_written_once_at_the_last_round() {
    let mut s = KvStore::default();
    s.restore(&v6_image(12)).unwrap();
    assert_eq!(s.applied_upto(), Slot(12));
    assert_eq!(s.db_json(), json!({"a": 1, "b": {"x": [true]}}));
    // The last applied round is slot 11: revision 12, the store's own.
    assert_eq!(s.meta("a"), meta(12, 12, 1));
    assert_eq!(s.meta("b"), meta(12, 12, 1));
    assert_eq!(s.lease_of("b"), Some(3));
    // Written again, a key counts on from there.
    apply(&mut s, &put_cmd("a", json!(2))); // slot 12: revision 13
    assert_eq!(s.meta("a"), meta(12, 13, 2));
    assert_eq!(s.meta("b"), meta(12, 12, 1));
    // The upgraded state is written as the current version and reads back.
    let image = s.snapshot();
    assert_eq!(image[0], paxlog_kv_version());
    let mut r = KvStore::default();
    r.restore(&image).unwrap();
    assert_eq!(r, s);
    // Keys with no round before them (create revision 0) are impossible.
    let mut t = KvStore::default();
    assert!(matches!(
        t.restore(&v6_image(0)),
        Err(KvError::CorruptSnapshot(_))
    ));
    assert_eq!(t, KvStore::default());
}

#[test]
fn restore_refuses_impossible_metadata() {
    let mut s = KvStore::default();
    apply(&mut s, &put_cmd("k", json!(1))); // slot 0: revision 1
    apply(&mut s, &put_cmd("k", json!(2))); // slot 1: revision 2, applied_upto 2
    assert_eq!(s.applied_upto(), Slot(2));
    let image = s.snapshot();
    // The image's first fields, then the rest as they are.
    type Head = (u64, Option<u64>, Vec<(String, String, (u64, u64, u64))>);
    let (head, rest) = postcard::take_from_bytes::<Head>(&image[1..]).unwrap();
    assert_eq!(head.0, 2);
    assert_eq!(head.2, [("k".into(), "2".into(), (1, 2, 2))]);
    let with_meta = |m: (u64, u64, u64)| {
        let mut out = vec![SNAPSHOT_VERSION];
        out.extend(postcard::to_allocvec(&(head.0, head.1, vec![("k", "2", m)])).unwrap());
        out.extend(rest);
        out
    };
    assert_eq!(
        with_meta((1, 2, 2)),
        image,
        "the layout above is the image's"
    );
    // Stores that differ only in a key's metadata differ.
    let mut other = KvStore::default();
    other.restore(&with_meta((1, 1, 2))).unwrap();
    assert_eq!(other.db_json(), s.db_json());
    assert_ne!(other, s);
    // Possible histories, up to a write at the last applied round
    // (mod_revision == applied_upto), restore as they are.
    for (what, m) in [
        ("the image's own", (1, 2, 2)),
        ("created and modified at the last round", (2, 2, 1)),
        ("modified at the first round", (1, 1, 2)),
    ] {
        let mut r = KvStore::default();
        r.restore(&with_meta(m))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.meta("k"), meta(m.0, m.1, m.2), "{what}");
        assert_eq!(r.snapshot(), with_meta(m), "{what}");
    }
    for (what, m) in [
        ("version 0", (1, 2, 0)),
        ("created at revision 0", (0, 2, 2)),
        ("created and modified at revision 0", (0, 0, 1)),
        ("created after modified", (2, 1, 2)),
        ("modified at an unapplied round", (1, 3, 2)),
        ("created and modified at an unapplied round", (3, 3, 1)),
    ] {
        let mut r = s.clone();
        let result = r.restore(&with_meta(m));
        assert!(
            matches!(result, Err(KvError::CorruptSnapshot(_))),
            "{what}: {result:?}"
        );
        assert_eq!(r, s, "{what}");
    }
}

fn paxlog_kv_version() -> u8 {
    crate::SNAPSHOT_VERSION
}
