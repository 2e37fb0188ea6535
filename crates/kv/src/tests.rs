#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::limits::{MAX_DEPTH, MAX_KEY_BYTES, MAX_STATEMENT_BYTES, MAX_VALUE_BYTES};
use crate::*;
use paxlog_core::{Entry, RequestId, Slot, StateMachine};
use proptest::prelude::*;
use serde_json::{json, Value};

mod etcd;

fn stmt(s: &str) -> Statement {
    parse_statement(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn val(s: &str) -> Value {
    match stmt(&format!("x = {s}")) {
        Statement::Assign { value, .. } => value,
        other => panic!("unexpected {other:?}"),
    }
}

fn perr(s: &str) -> ParseError {
    match parse_statement(s) {
        Ok(st) => panic!("{s:?} should not parse, got {st:?}"),
        Err(e) => e,
    }
}

fn cmd_entry(client_id: u64, seq: u64, cmd: &KvCommand) -> Entry {
    Entry::Command {
        id: RequestId { client_id, seq },
        payload: cmd.encode(),
    }
}

/// A request stamped `since`, as a server sends it.
fn stamped(client_id: u64, seq: u64, since: Slot, cmd: &KvCommand) -> Entry {
    Entry::Command {
        id: RequestId { client_id, seq },
        payload: KvRequest::new(since, cmd.clone()).encode(),
    }
}

/// A request accepted now: stamped with the store's applied round.
fn fresh(store: &KvStore, client_id: u64, seq: u64, cmd: &KvCommand) -> Entry {
    stamped(client_id, seq, store.applied_upto(), cmd)
}

fn small(session_expiry_rounds: u64, max_sessions: usize) -> KvStore {
    KvStore::new(KvOptions {
        session_expiry_rounds,
        max_sessions,
    })
}

fn ex(source: &str) -> KvCommand {
    KvCommand::exec(source).unwrap()
}

/// Applies at the next slot.
fn run(store: &mut KvStore, entry: &Entry) -> ApplyOutput {
    let slot = store.applied_upto();
    store.apply(slot, entry)
}

/// Runs a statement as a fresh client request.
fn exec(store: &mut KvStore, source: &str) -> ApplyOutput {
    let client = 1_000_000 + store.applied_upto().0;
    let entry = fresh(store, client, 1, &ex(source));
    run(store, &entry)
}

fn exec_raw(store: &mut KvStore, source: &str) -> ApplyOutput {
    let client = 1_000_000 + store.applied_upto().0;
    let cmd = KvCommand::Exec {
        source: source.into(),
    };
    let entry = fresh(store, client, 1, &cmd);
    run(store, &entry)
}

fn kind(out: &ApplyOutput) -> Option<ErrorKind> {
    out.result.error_kind()
}

// ---------------------------------------------------------------- parser

#[test]
fn seed_sample_execution() {
    let mut s = KvStore::default();
    for src in ["li = []", "li += [1, 2]", "li += [3, 4]", "i = 0"] {
        assert!(exec(&mut s, src).is_ok(), "{src}");
    }
    assert_eq!(s.applied_upto(), Slot(4));
    assert_eq!(s.db_json(), json!({"i": 0, "li": [1, 2, 3, 4]}));
    assert!(exec(&mut s, "i = 42").is_ok());
    assert_eq!(s.applied_upto(), Slot(5));
    assert_eq!(
        serde_json::to_string(&s.db_json()).unwrap(),
        r#"{"i":42,"li":[1,2,3,4]}"#
    );
}

#[test]
fn statement_shapes() {
    assert_eq!(
        stmt("li = []"),
        Statement::Assign {
            name: "li".into(),
            value: json!([])
        }
    );
    assert_eq!(
        stmt("  li  +=[1,2]\n"),
        Statement::AddAssign {
            name: "li".into(),
            value: json!([1, 2])
        }
    );
    assert_eq!(stmt("del li"), Statement::Delete { name: "li".into() });
    assert_eq!(
        stmt("\tdel   _x9 "),
        Statement::Delete { name: "_x9".into() }
    );
    assert_eq!(stmt("delta = 1").name(), "delta");
    assert_eq!(stmt("true = 1").name(), "true");
    assert_eq!(stmt("x=1").to_string(), "x = 1");
}

#[test]
fn numbers() {
    assert_eq!(val("42"), json!(42));
    assert_eq!(val("-7"), json!(-7));
    assert_eq!(val("+7"), json!(7));
    assert_eq!(val("0"), json!(0));
    assert_eq!(val("-0"), json!(0));
    assert_eq!(val("1_000_000"), json!(1_000_000));
    assert_eq!(val("0x1F"), json!(31));
    assert_eq!(val("0o17"), json!(15));
    assert_eq!(val("0b101"), json!(5));
    assert_eq!(val("-0x10"), json!(-16));
    assert_eq!(val("9223372036854775807"), json!(i64::MAX));
    assert_eq!(val("-9223372036854775808"), json!(i64::MIN));
    assert_eq!(val("1.5"), json!(1.5));
    assert_eq!(val("-2.25"), json!(-2.25));
    assert_eq!(val(".5"), json!(0.5));
    assert_eq!(val("5."), json!(5.0));
    assert_eq!(val("1e3"), json!(1000.0));
    assert_eq!(val("1E-2"), json!(0.01));
    assert_eq!(val("-2.5e+2"), json!(-250.0));
    assert!(val("1.0").is_f64());
    assert!(val("1").is_i64());
}

#[test]
fn strings_and_escapes() {
    assert_eq!(val(r#""hi""#), json!("hi"));
    assert_eq!(val("'hi'"), json!("hi"));
    assert_eq!(val(r#"'say "x"'"#), json!("say \"x\""));
    assert_eq!(val(r#""it's""#), json!("it's"));
    assert_eq!(val(r#"'it\'s'"#), json!("it's"));
    assert_eq!(val(r#""a\nb\tc\\d\/""#), json!("a\nb\tc\\d/"));
    assert_eq!(val(r#""\u00e9\x41\101\0""#), json!("éAA\u{0}"));
    assert_eq!(val(r#""\ud83d\ude00""#), json!("😀"));
    assert_eq!(val(r#""\U0001F600""#), json!("😀"));
    assert_eq!(val("'héllo wörld'"), json!("héllo wörld"));
    assert_eq!(val("''"), json!(""));
}

#[test]
fn constants_lists_dicts() {
    assert_eq!(val("True"), json!(true));
    assert_eq!(val("False"), json!(false));
    assert_eq!(val("None"), json!(null));
    assert_eq!(val("true"), json!(true));
    assert_eq!(val("false"), json!(false));
    assert_eq!(val("null"), json!(null));
    assert_eq!(val("[1, 2,]"), json!([1, 2]));
    assert_eq!(val("[ ]"), json!([]));
    assert_eq!(val("{}"), json!({}));
    assert_eq!(
        val("{'a': [1, {\"b\": None}], \"c\": 'd',}"),
        json!({"a": [1, {"b": null}], "c": "d"})
    );
    assert_eq!(val("{'a': 1, 'a': 2}"), json!({"a": 2}));
    assert_eq!(
        val("[\n  1,\n  [True, None],\n  'x'\n]"),
        json!([1, [true, null], "x"])
    );
    // A JSON document is accepted verbatim.
    let doc = json!({"k": [1, -2.5, "s\"q", null, true, {"n": []}]});
    assert_eq!(val(&doc.to_string()), doc);
}

#[test]
fn depth_limit() {
    let ok = format!("x = {}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse_statement(&ok).is_ok());
    let deep = format!(
        "x = {}{}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    let e = perr(&deep);
    assert!(e.reason.contains("too deep"), "{e}");
    assert_eq!(e.column, 5 + MAX_DEPTH);
    // Very deep input is rejected without overflowing the stack.
    let e = perr(&format!("x = {}", "[".repeat(60_000)));
    assert!(e.reason.contains("too deep"));
    let e = perr(&format!("x = {}", "{'a':".repeat(10_000)));
    assert!(e.reason.contains("too deep"));
}

#[test]
fn error_columns_and_messages() {
    let e = perr("li = [1,]]");
    assert_eq!(
        e.to_string(),
        "column 10: expected end of statement, found ']'"
    );
    let e = perr("li += ]");
    assert_eq!(e.to_string(), "column 7: expected a value, found ']'");
    let e = perr("li += [,]");
    assert_eq!(
        (e.column, e.reason.as_str()),
        (8, "expected a value, found ','")
    );
    let e = perr("x =");
    assert_eq!(
        e.to_string(),
        "column 4: expected a value, found end of input"
    );
    let e = perr("x = [1 2]");
    assert_eq!(
        e.to_string(),
        "column 8: expected ',' or ']' in list, found '2'"
    );
    let e = perr("x = 'abc");
    assert_eq!(e.to_string(), "column 5: unterminated string literal");
    let e = perr("x = {1: 2}");
    assert_eq!(e.to_string(), "column 6: dict keys must be strings");
    let e = perr("x = {'a' 1}");
    assert_eq!(e.column, 10);
    let e = perr("x = {'a', 'b'}");
    assert!(e.reason.contains("sets are not supported"), "{e}");
    let e = perr("x = y");
    assert_eq!(e.column, 5);
    assert!(e.reason.contains("found name 'y'"), "{e}");
    let e = perr("x = 01");
    assert!(e.reason.contains("leading zeros"), "{e}");
    let e = perr("x = 99999999999999999999");
    assert!(e.reason.contains("out of range"), "{e}");
    let e = perr("x = 9223372036854775808");
    assert!(e.reason.contains("out of range"), "{e}");
    let e = perr("x = 1e400");
    assert!(e.reason.contains("out of range"), "{e}");
    let e = perr("x = 1_");
    assert_eq!(e.column, 6);
    let e = perr("x = 12abc");
    assert!(e.reason.contains("invalid number"), "{e}");
    let e = perr("x = 1.2.3");
    assert!(e.reason.contains("invalid number"), "{e}");
    let e = perr(r"x = '\q'");
    assert_eq!(e.to_string(), r"column 6: unknown escape sequence '\q'");
    let e = perr(r"x = '\ud800'");
    assert!(e.reason.contains("surrogate"), "{e}");
    let e = perr(r"x = '\x4'");
    assert!(e.reason.contains("hex digits"), "{e}");
    let e = perr("x == 1");
    assert_eq!(e.column, 3);
    let e = perr("");
    assert_eq!(e.column, 1);
    assert!(e.reason.contains("found end of input"));
    // Columns count characters, not bytes.
    let e = perr("é = 1");
    assert_eq!(e.column, 1);
    let e = perr("x = 'é' ]");
    assert_eq!(e.column, 9);
}

#[test]
fn rejects_unsafe_and_unknown_statements() {
    for src in [
        "import os",
        "print(x)",
        "li.append(3)",
        "__import__('os').system('rm -rf /')",
        "exec('x = 1')",
        "x = open('/etc/passwd')",
        "x = [i for i in range(3)]",
        "x = 1 + 2",
        "x = 1; y = 2",
        "x = 1\ny = 2",
        "x -= 1",
        "x *= 2",
        "x = y = 1",
        "x = (1, 2)",
        "x = 1, 2",
        "x = {1, 2}",
        "x = lambda: 0",
        "del x, y",
        "del",
        "del 1",
        "del(x)",
        "True = 1",
        "None = 1",
        "for = 1",
        "x[0] = 1",
        "x.y = 1",
        "x = float('inf')",
        "x = r'raw'",
        "x = b'bytes'",
        "x = 1j",
        "x = 'a' 'b'",
        "# comment",
        "x = [1] # comment",
        "λ = 1",
    ] {
        let e = perr(src);
        assert!(e.column >= 1, "{src}: {e}");
    }
    let e = perr("import os");
    assert_eq!(e.column, 1);
    assert!(e.reason.contains("unsupported statement 'import'"), "{e}");
    let e = perr("print(x)");
    assert_eq!(
        e.to_string(),
        "column 6: expected '=' or '+=' after name 'print', found '('"
    );
    let e = perr("li.append(3)");
    assert_eq!(
        e.to_string(),
        "column 3: expected '=' or '+=' after name 'li', found '.'"
    );
}

#[test]
fn length_limits() {
    let long = format!("x = '{}'", "a".repeat(MAX_STATEMENT_BYTES));
    let e = perr(&long);
    assert!(e.reason.contains("too long"), "{e}");
    assert!(matches!(
        KvCommand::exec(long),
        Err(KvError::TooLarge { .. })
    ));
    let name = "n".repeat(MAX_KEY_BYTES + 1);
    let e = perr(&format!("{name} = 1"));
    assert!(e.reason.contains("name is too long"), "{e}");
    assert!(parse_statement(&format!("{} = 1", "n".repeat(MAX_KEY_BYTES))).is_ok());
}

#[test]
fn parse_value_standalone() {
    assert_eq!(parse_value(" [1, 'a'] ").unwrap(), json!([1, "a"]));
    assert_eq!(parse_value("1 2").unwrap_err().column, 3);
}

// ------------------------------------------------------------ commands

#[test]
fn command_constructors_validate() {
    assert!(KvCommand::exec("x = 1").is_ok());
    assert!(matches!(
        KvCommand::exec("import os"),
        Err(KvError::Parse(_))
    ));
    assert!(matches!(
        KvCommand::put("", &json!(1)),
        Err(KvError::InvalidKey(_))
    ));
    assert!(matches!(
        KvCommand::delete("k".repeat(MAX_KEY_BYTES + 1)),
        Err(KvError::InvalidKey(_))
    ));
    assert!(KvCommand::delete("k".repeat(MAX_KEY_BYTES)).is_ok());
    let big = json!("v".repeat(MAX_VALUE_BYTES));
    assert!(matches!(
        KvCommand::put("k", &big),
        Err(KvError::TooLarge { .. })
    ));
    assert!(KvCommand::put("k", &json!("v".repeat(MAX_VALUE_BYTES - 2))).is_ok());
    assert!(matches!(
        KvCommand::put_json("k", "{nope"),
        Err(KvError::InvalidValue(_))
    ));
    let mut deep = json!(1);
    for _ in 0..=MAX_DEPTH {
        deep = json!([deep]);
    }
    assert!(matches!(
        KvCommand::put("k", &deep),
        Err(KvError::InvalidValue(_))
    ));
    assert!(matches!(
        KvCommand::cas("k", Some(&deep), &json!(1)),
        Err(KvError::InvalidValue(_))
    ));
    let raw = KvCommand::Put {
        key: "k".into(),
        value_json: "[1,".into(),
    };
    assert!(raw.validate().is_err());
    assert!(KvCommand::put("k", &json!(1)).unwrap().validate().is_ok());
}

#[test]
fn encode_decode_roundtrip() {
    let cmds = [
        KvCommand::exec("li += [1, 2]").unwrap(),
        KvCommand::put("user:1", &json!({"name": "ann"})).unwrap(),
        KvCommand::delete("user:1").unwrap(),
        KvCommand::cas("n", None, &json!(0)).unwrap(),
        KvCommand::cas("n", Some(&json!(1)), &json!(2)).unwrap(),
    ];
    for c in &cmds {
        assert_eq!(&KvCommand::decode(&c.encode()).unwrap(), c);
    }
    assert!(KvCommand::decode(&[]).is_err());
    assert!(KvCommand::decode(&[0xff, 0xff, 0xff]).is_err());
    let mut trailing = cmds[0].encode().to_vec();
    trailing.push(0);
    assert!(KvCommand::decode(&trailing).is_err());
}

#[test]
fn stamped_requests_roundtrip_and_old_payloads_still_decode() {
    let cmd = KvCommand::cas("n", Some(&json!(1)), &json!(2)).unwrap();
    for since in [Slot(0), Slot(1), Slot(300), Slot(u64::MAX)] {
        let request = KvRequest::new(since, cmd.clone());
        let payload = request.encode();
        assert_eq!(payload[0], 0x40, "versioned wrapper");
        assert_eq!(KvRequest::decode(&payload).unwrap(), request);
        // `/fetch` and `/log` describe entries through `KvCommand::decode`.
        assert_eq!(KvCommand::decode(&payload).unwrap(), cmd);
        let mut trailing = payload.to_vec();
        trailing.push(0);
        assert!(KvRequest::decode(&trailing).is_err());
        assert!(KvRequest::decode(&payload[..payload.len() - 1]).is_err());
    }
    // A payload from before stamps (the bytes `KvCommand::encode` still
    // writes) is a request with `since = 0`.
    let old = cmd.encode();
    assert_eq!(old[0], 3, "postcard variant index of Cas");
    assert_eq!(
        KvRequest::decode(&old).unwrap(),
        KvRequest::new(Slot::ZERO, cmd.clone())
    );
    assert!(KvRequest::decode(&[]).is_err());
    assert!(KvRequest::decode(&[0x40]).is_err());
    assert!(KvRequest::decode(&[0x41, 0, 0]).is_err(), "unknown version");
    assert_eq!(
        KvCommand::decode(&KvRequest::new(Slot(9), ex("a = 1")).encode())
            .unwrap()
            .describe(),
        "a = 1"
    );
}

#[test]
fn describe_format() {
    assert_eq!(
        KvCommand::exec("li  +=  [1,2]").unwrap().describe(),
        "li  +=  [1,2]"
    );
    assert_eq!(
        KvCommand::put("user:1", &json!({"name": "ann"}))
            .unwrap()
            .describe(),
        r#"PUT "user:1" {"name":"ann"}"#
    );
    assert_eq!(
        KvCommand::put_json("k", " [1, 2] ").unwrap().describe(),
        "PUT \"k\" [1,2]"
    );
    assert_eq!(
        KvCommand::delete("a\"b").unwrap().describe(),
        r#"DELETE "a\"b""#
    );
    assert_eq!(
        KvCommand::cas("n", Some(&json!(1)), &json!(2))
            .unwrap()
            .describe(),
        r#"CAS "n" 1 -> 2"#
    );
    assert_eq!(
        KvCommand::cas("n", None, &json!(0)).unwrap().describe(),
        r#"CAS "n" absent -> 0"#
    );
}

// ------------------------------------------------------------ apply

#[test]
fn add_assign_semantics() {
    let mut s = KvStore::default();
    exec(&mut s, "s = 'ab'");
    exec(&mut s, "s += \"cd\"");
    exec(&mut s, "n = 40");
    exec(&mut s, "n += 2");
    exec(&mut s, "f = 1");
    exec(&mut s, "f += 0.5");
    exec(&mut s, "g = 2.5");
    exec(&mut s, "g += -1");
    exec(&mut s, "l = [[1]]");
    exec(&mut s, "l += [{'a': None}]");
    assert_eq!(
        s.db_json(),
        json!({"s": "abcd", "n": 42, "f": 1.5, "g": 1.5, "l": [[1], {"a": null}]})
    );
    assert!(s.get("n").unwrap().is_i64());
    assert!(s.get("g").unwrap().is_f64());
    let out = exec(&mut s, "del s");
    assert_eq!(out.result, ApplyResult::Ok { value: None });
    assert_eq!(s.get("s"), None);
    assert_eq!(s.len(), 4);
}

#[test]
fn apply_errors_are_outputs_and_change_nothing() {
    let mut s = KvStore::default();
    exec(&mut s, "li = [1]");
    exec(&mut s, "n = 9223372036854775807");
    exec(&mut s, "m = -9223372036854775808");
    exec(&mut s, "f = 1e308");
    exec(&mut s, "b = True");
    exec(&mut s, "d = {}");
    let before = s.db_json();
    let cases: &[(&str, ErrorKind, &str)] = &[
        (
            "missing += [1]",
            ErrorKind::NameError,
            "name 'missing' is not defined",
        ),
        (
            "del missing",
            ErrorKind::NameError,
            "name 'missing' is not defined",
        ),
        (
            "li += 3",
            ErrorKind::TypeError,
            "unsupported operand type(s) for +=: 'list' and 'int'",
        ),
        ("li += 'x'", ErrorKind::TypeError, "'list' and 'str'"),
        ("n += 'x'", ErrorKind::TypeError, "'int' and 'str'"),
        ("b += 1", ErrorKind::TypeError, "'bool' and 'int'"),
        ("d += {}", ErrorKind::TypeError, "'dict' and 'dict'"),
        ("li += None", ErrorKind::TypeError, "'list' and 'NoneType'"),
        ("f += 'x'", ErrorKind::TypeError, "'float' and 'str'"),
        ("n += 1", ErrorKind::Overflow, "integer overflow"),
        ("m += -1", ErrorKind::Overflow, "integer overflow"),
        ("f += 1e308", ErrorKind::Overflow, "float overflow"),
    ];
    for (src, k, msg) in cases {
        let out = exec(&mut s, src);
        match &out.result {
            ApplyResult::Error { kind, message } => {
                assert_eq!(kind, k, "{src}");
                assert!(message.contains(msg), "{src}: {message}");
            }
            other => panic!("{src}: expected error, got {other:?}"),
        }
        assert_eq!(s.db_json(), before, "{src} changed state");
    }
    // Unparseable statements smuggled past the constructor.
    let out = exec_raw(&mut s, "import os");
    assert_eq!(kind(&out), Some(ErrorKind::SyntaxError));
    // Growing past the size limit.
    exec(&mut s, &format!("big = '{}'", "a".repeat(40_000)));
    let out = exec_raw(&mut s, &format!("big += '{}'", "a".repeat(40_000)));
    assert_eq!(kind(&out), Some(ErrorKind::TooLarge));
    assert_eq!(s.get("big").unwrap().as_str().unwrap().len(), 40_000);
    assert_eq!(s.applied_upto().0, 6 + cases.len() as u64 + 3);
}

#[test]
fn bad_payloads_and_noop() {
    let mut s = KvStore::default();
    let out = run(&mut s, &Entry::Noop);
    assert_eq!(out.slot, Slot(0));
    assert_eq!(out.result, ApplyResult::Ok { value: None });
    assert_eq!(s.applied_upto(), Slot(1));
    assert!(s.is_empty());
    for (seq, payload) in [vec![], vec![0xff; 7], vec![0, 200, 1]]
        .into_iter()
        .enumerate()
    {
        let e = Entry::Command {
            id: RequestId {
                client_id: 5,
                seq: seq as u64,
            },
            payload: payload.into(),
        };
        let out = run(&mut s, &e);
        assert_eq!(kind(&out), Some(ErrorKind::BadPayload), "{out:?}");
    }
    let bad_key = KvCommand::Put {
        key: String::new(),
        value_json: "1".into(),
    };
    assert_eq!(
        kind(&run(&mut s, &cmd_entry(6, 1, &bad_key))),
        Some(ErrorKind::InvalidKey)
    );
    let bad_val = KvCommand::Put {
        key: "k".into(),
        value_json: "[1,".into(),
    };
    assert_eq!(
        kind(&run(&mut s, &cmd_entry(7, 1, &bad_val))),
        Some(ErrorKind::InvalidValue)
    );
    assert!(s.is_empty());
    assert_eq!(s.applied_upto(), Slot(6));
}

#[test]
#[should_panic(expected = "in order")]
fn apply_rejects_gaps() {
    let mut s = KvStore::default();
    s.apply(Slot(1), &Entry::Noop);
}

#[test]
fn put_delete_cas() {
    let mut s = KvStore::default();
    let out = run(
        &mut s,
        &cmd_entry(1, 1, &KvCommand::put("k", &json!([1])).unwrap()),
    );
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"existed": false, "previous": null}))
        }
    );
    let out = run(
        &mut s,
        &cmd_entry(1, 2, &KvCommand::put("k", &json!(2)).unwrap()),
    );
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"existed": true, "previous": [1]}))
        }
    );
    // Shared namespace with statements.
    exec(&mut s, "k += 3");
    assert_eq!(s.get("k"), Some(&json!(5)));
    let cas = |exp: Option<Value>, new: Value| KvCommand::cas("k", exp.as_ref(), &new).unwrap();
    let out = run(&mut s, &cmd_entry(1, 3, &cas(Some(json!(4)), json!(9))));
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"succeeded": false, "current": 5}))
        }
    );
    let out = run(&mut s, &cmd_entry(1, 4, &cas(Some(json!(5.0)), json!(9))));
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"succeeded": false, "current": 5}))
        }
    );
    let out = run(&mut s, &cmd_entry(1, 5, &cas(None, json!(9))));
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"succeeded": false, "current": 5}))
        }
    );
    let out = run(
        &mut s,
        &cmd_entry(1, 6, &cas(Some(json!(5)), json!({"a": 1}))),
    );
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"succeeded": true, "current": {"a": 1}}))
        }
    );
    let out = run(&mut s, &cmd_entry(1, 7, &KvCommand::delete("k").unwrap()));
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"existed": true, "previous": {"a": 1}}))
        }
    );
    let out = run(&mut s, &cmd_entry(1, 8, &KvCommand::delete("k").unwrap()));
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"existed": false, "previous": null}))
        }
    );
    let out = run(&mut s, &cmd_entry(1, 9, &cas(None, json!(0))));
    assert_eq!(
        out.result,
        ApplyResult::Ok {
            value: Some(json!({"succeeded": true, "current": 0}))
        }
    );
    // Keys that are not identifiers are fine for KV operations.
    run(
        &mut s,
        &cmd_entry(1, 10, &KvCommand::put("user:1/x y", &json!(null)).unwrap()),
    );
    assert_eq!(s.get("user:1/x y"), Some(&Value::Null));
}

#[test]
fn reads() {
    let mut s = KvStore::default();
    for (i, k) in ["a", "user:1", "user:2", "user:3", "userx", "v"]
        .iter()
        .enumerate()
    {
        run(
            &mut s,
            &cmd_entry(1, i as u64 + 1, &KvCommand::put(*k, &json!(i)).unwrap()),
        );
    }
    assert_eq!(s.len(), 6);
    let got = s.scan("user:", 10);
    assert_eq!(
        got,
        vec![
            ("user:1".to_string(), json!(1)),
            ("user:2".into(), json!(2)),
            ("user:3".into(), json!(3))
        ]
    );
    assert_eq!(s.scan("user:", 2).len(), 2);
    assert_eq!(s.scan("", 100).len(), 6);
    assert!(s.scan("zzz", 10).is_empty());
    assert_eq!(
        serde_json::to_string(&s.db_json()).unwrap(),
        r#"{"a":0,"user:1":1,"user:2":2,"user:3":3,"userx":4,"v":5}"#
    );
}

#[test]
fn output_json_shape() {
    let out = ApplyOutput {
        slot: Slot(4),
        duplicate: false,
        original_slot: None,
        result: ApplyResult::Error {
            kind: ErrorKind::NameError,
            message: "name 'x' is not defined".into(),
        },
    };
    let text = serde_json::to_string(&out).unwrap();
    assert_eq!(
        text,
        r#"{"slot":4,"duplicate":false,"original_slot":null,"result":{"status":"error","kind":"name_error","message":"name 'x' is not defined"}}"#
    );
    let back: ApplyOutput = serde_json::from_str(&text).unwrap();
    assert_eq!(back, out);
}

// ------------------------------------------------------------ dedup

#[test]
fn retry_returns_cached_output_and_does_not_apply_twice() {
    let mut s = KvStore::default();
    exec(&mut s, "li = []");
    let add = cmd_entry(7, 1, &KvCommand::exec("li += [1]").unwrap());
    let first = run(&mut s, &add);
    assert!(!first.duplicate);
    let first_slot = first.slot;
    let again = run(&mut s, &add);
    assert!(again.duplicate);
    assert_eq!(again.original_slot, Some(first_slot));
    assert!(again.is_ok(), "the retry reports the first outcome");
    assert_eq!(s.get("li"), Some(&json!([1])));

    // Cached errors are replayed too, without re-executing.
    let bad = cmd_entry(7, 2, &KvCommand::exec("nope += [1]").unwrap());
    let e1 = run(&mut s, &bad);
    exec(&mut s, "nope = []");
    let e2 = run(&mut s, &bad);
    assert!(e2.duplicate);
    assert_eq!(kind(&e2), kind(&e1));
    assert_eq!(kind(&e2), Some(ErrorKind::NameError));
    assert_eq!(s.get("nope"), Some(&json!([])));

    // Older seq: stale, not executed.
    let old = run(
        &mut s,
        &cmd_entry(7, 1, &KvCommand::exec("li += [1]").unwrap()),
    );
    assert!(old.duplicate);
    assert_eq!(kind(&old), Some(ErrorKind::Stale));
    assert_eq!(s.get("li"), Some(&json!([1])));
    // Newer seq (gaps allowed) executes.
    assert!(
        !run(
            &mut s,
            &cmd_entry(7, 10, &KvCommand::exec("li += [2]").unwrap())
        )
        .duplicate
    );
    assert_eq!(s.get("li"), Some(&json!([1, 2])));
    assert_eq!(s.last_seq(7), Some(10));
    // Other clients are independent.
    assert!(
        !run(
            &mut s,
            &cmd_entry(8, 1, &KvCommand::exec("li += [3]").unwrap())
        )
        .duplicate
    );
    assert_eq!(s.get("li"), Some(&json!([1, 2, 3])));
}

#[test]
fn idle_sessions_expire_after_session_expiry_rounds() {
    let mut s = small(3, 100);
    exec(&mut s, "n = 0"); // slot 0
    let inc = fresh(&s, 1, 1, &ex("n += 1"));
    let first = run(&mut s, &inc); // slot 1
    assert_eq!(first.slot, Slot(1));
    for _ in 0..3 {
        run(&mut s, &Entry::Noop); // slots 2, 3, 4: 1 + 3 >= slot, kept
    }
    assert_eq!(s.last_seq(1), Some(1));
    assert_eq!(s.expired_upto(), Some(Slot(0)), "the slot-0 client expired");
    // Slot 5: 1 + 3 < 5, so the session expires first. The retry carries
    // its first attempt's stamp, so it is refused, not run again.
    let retry = run(&mut s, &inc);
    assert_eq!(kind(&retry), Some(ErrorKind::RequestExpired), "{retry:?}");
    assert!(retry.duplicate);
    assert_eq!(retry.original_slot, None);
    assert_eq!(s.last_seq(1), None);
    assert_eq!(s.expired_upto(), Some(Slot(1)));
    assert_eq!(s.get("n"), Some(&json!(1)));
    // Many one-shot clients: the table stays bounded by the expiry.
    for c in 100..200 {
        let e = fresh(&s, c, 1, &ex("x = 1"));
        assert!(!run(&mut s, &e).duplicate, "a new client runs");
        assert!(s.session_count() <= 4, "{}", s.session_count());
    }
    // The default expiry keeps everything for a while.
    let mut d = KvStore::default();
    for c in 0..50 {
        let e = fresh(&d, c, 1, &ex("x = 1"));
        run(&mut d, &e);
    }
    assert_eq!(d.session_count(), 50);
    assert_eq!(d.expired_upto(), None);
}

/// Issue 10: `c += 1` as (7, 1), then many writes of other clients, then the
/// same request again. The old table (a 10-slot window here) had dropped the
/// record and ran it a second time (`duplicate: false`, `c == 2`).
#[test]
fn an_expired_retry_is_refused_not_run_again() {
    for (expiry_rounds, max_sessions) in [(10, 100_000), (1_000_000, 3)] {
        let mut s = small(expiry_rounds, max_sessions);
        exec(&mut s, "c = 0");
        let inc = fresh(&s, 7, 1, &ex("c += 1"));
        assert!(!run(&mut s, &inc).duplicate);
        for client in 100..227 {
            let other = fresh(&s, client, 1, &ex("x = 1"));
            assert!(!run(&mut s, &other).duplicate);
        }
        // A server re-proposing it keeps the first stamp.
        let retry = run(&mut s, &inc);
        assert!(
            retry.duplicate,
            "the retry was executed again: {retry:?} ({expiry_rounds}, {max_sessions})"
        );
        assert_eq!(kind(&retry), Some(ErrorKind::RequestExpired));
        let ApplyResult::Error { message, .. } = &retry.result else {
            panic!("{retry:?}");
        };
        assert!(message.contains("not executed"), "{message}");
        assert!(message.contains("new client id"), "{message}");
        assert_eq!(s.get("c"), Some(&json!(1)), "c was incremented twice");
        // The server can refuse it without the log too.
        let id = RequestId {
            client_id: 7,
            seq: 1,
        };
        let since = KvRequest::decode(match &inc {
            Entry::Command { payload, .. } => payload,
            Entry::Noop | Entry::Config { .. } => unreachable!(),
        })
        .unwrap()
        .since;
        let pre = s.precheck(id, since).expect("decided without the log");
        assert_eq!(kind(&pre), Some(ErrorKind::RequestExpired));
        // The client's next request has no session either: refused too.
        let next = fresh(&s, 7, 2, &ex("c += 1"));
        assert_eq!(kind(&run(&mut s, &next)), Some(ErrorKind::RequestExpired));
        assert_eq!(s.get("c"), Some(&json!(1)));
        // Under a new client id, it runs.
        let renamed = fresh(&s, 8, 1, &ex("c += 1"));
        assert!(!run(&mut s, &renamed).duplicate);
        assert_eq!(s.get("c"), Some(&json!(2)));
    }
}

#[test]
fn a_duplicate_hit_refreshes_the_session() {
    let mut s = small(10, 100);
    exec(&mut s, "c = 0");
    let inc = fresh(&s, 7, 1, &ex("c += 1"));
    let first = run(&mut s, &inc);
    for round in 0..20 {
        for _ in 0..9 {
            run(&mut s, &Entry::Noop);
        }
        // 10 rounds after the last use: still alive, and refreshed again.
        let retry = run(&mut s, &inc);
        assert!(retry.duplicate, "retry {round}: {retry:?}");
        assert!(retry.is_ok(), "retry {round}: {retry:?}");
        assert_eq!(retry.original_slot, Some(first.slot));
    }
    assert_eq!(s.get("c"), Some(&json!(1)));
    // A stale seq touches the session as well.
    let newer = fresh(&s, 7, 5, &ex("c += 1"));
    run(&mut s, &newer);
    for _ in 0..3 {
        for _ in 0..9 {
            run(&mut s, &Entry::Noop);
        }
        let stale = run(&mut s, &inc);
        assert_eq!(kind(&stale), Some(ErrorKind::Stale));
    }
    assert_eq!(s.last_seq(7), Some(5));
    assert_eq!(s.get("c"), Some(&json!(2)));
    // Idle for 11 rounds: gone.
    for _ in 0..11 {
        run(&mut s, &Entry::Noop);
    }
    assert_eq!(s.last_seq(7), None);
}

#[test]
fn beyond_max_sessions_the_least_recently_used_expires() {
    let mut s = small(1_000_000, 3);
    let (a, b, c, d) = (
        fresh(&s, 1, 1, &ex("a = 1")),
        fresh(&s, 2, 1, &ex("b = 1")),
        fresh(&s, 3, 1, &ex("c = 1")),
        fresh(&s, 4, 1, &ex("d = 1")),
    );
    run(&mut s, &a); // slot 0
    run(&mut s, &b); // slot 1
    run(&mut s, &c); // slot 2
    assert!(run(&mut s, &a).duplicate); // slot 3: client 1 is now the most recent
    assert_eq!(s.expired_upto(), None);
    run(&mut s, &d); // slot 4: four sessions, client 2 was used least recently
    assert_eq!(s.session_count(), 3);
    assert_eq!(s.last_seq(2), None);
    assert_eq!(s.last_seq(1), Some(1));
    assert_eq!(s.expired_upto(), Some(Slot(1)));
    let e = fresh(&s, 5, 1, &ex("e = 1"));
    run(&mut s, &e); // slot 5: client 3 (last used at 2) goes
    assert_eq!(s.last_seq(3), None);
    assert_eq!(s.expired_upto(), Some(Slot(2)));
    // Noops and refused requests open no session and evict nothing.
    run(&mut s, &Entry::Noop);
    assert_eq!(kind(&run(&mut s, &b)), Some(ErrorKind::RequestExpired));
    assert_eq!(s.session_count(), 3);
    assert_eq!(s.expired_upto(), Some(Slot(2)));
    // A client stamped after everything that expired is new: it runs.
    let f = fresh(&s, 6, 1, &ex("f = 1"));
    assert!(!run(&mut s, &f).duplicate);
    assert_eq!(s.last_seq(1), None, "client 1, last used at 3, went");
    assert_eq!(s.expired_upto(), Some(Slot(3)));
}

#[test]
fn unstamped_requests_count_as_stamped_at_zero() {
    let mut s = small(2, 100);
    let old = cmd_entry(1, 1, &ex("a = 1"));
    assert!(!run(&mut s, &old).duplicate, "nothing expired yet: it runs");
    for _ in 0..3 {
        run(&mut s, &Entry::Noop);
    }
    assert_eq!(s.expired_upto(), Some(Slot(0)));
    // Without a stamp the table cannot tell a new client from an old retry.
    let new_client = cmd_entry(2, 1, &ex("a = 2"));
    assert_eq!(
        kind(&run(&mut s, &new_client)),
        Some(ErrorKind::RequestExpired)
    );
    assert_eq!(s.get("a"), Some(&json!(1)));
    // Undecodable payloads have no stamp either.
    let junk = Entry::Command {
        id: RequestId {
            client_id: 3,
            seq: 1,
        },
        payload: vec![0xff, 0xff].into(),
    };
    assert_eq!(kind(&run(&mut s, &junk)), Some(ErrorKind::RequestExpired));
}

#[test]
fn precheck_answers_what_the_table_already_knows() {
    let mut s = small(5, 100);
    let put = fresh(&s, 9, 3, &KvCommand::put("k", &json!(1)).unwrap());
    let first = run(&mut s, &put);
    let id = |client_id, seq| RequestId { client_id, seq };
    // Known duplicate: the cached answer.
    let dup = s.precheck(id(9, 3), Slot(0)).expect("known");
    assert!(dup.duplicate && dup.is_ok());
    assert_eq!(dup.original_slot, Some(first.slot));
    assert_eq!(Some(dup), s.answer_duplicate(id(9, 3)));
    // Newer or older seq of a known client, and unknown clients while
    // nothing expired: the log decides.
    assert!(s.precheck(id(9, 4), Slot(0)).is_none());
    assert!(s.precheck(id(9, 2), Slot(0)).is_none());
    assert!(s.precheck(id(8, 1), Slot(0)).is_none());
    assert!(s.precheck(id(8, 5), Slot(0)).is_none());
    for _ in 0..10 {
        run(&mut s, &Entry::Noop);
    }
    assert_eq!(s.expired_upto(), Some(first.slot));
    // No session and stamped at or before the expiry: refused.
    let expired = s.precheck(id(9, 3), first.slot).expect("expired");
    assert_eq!(kind(&expired), Some(ErrorKind::RequestExpired));
    assert_eq!(expired.slot, Slot(s.applied_upto().0 - 1));
    assert!(s.precheck(id(8, 1), first.slot).is_some());
    // Stamped after it: a new request, proposed. A higher seq without a
    // session is left to the log (a lagging replica may lack the session).
    assert!(s.precheck(id(8, 1), first.slot.next()).is_none());
    assert!(s.precheck(id(8, 2), s.applied_upto()).is_none());
    assert!(s.answer_duplicate(id(9, 3)).is_none());
}

#[test]
fn the_use_queue_stays_bounded_by_the_sessions() {
    let mut s = small(1_000_000, 1_000);
    let idle = fresh(&s, 1, 1, &ex("a = 1"));
    run(&mut s, &idle);
    let busy = fresh(&s, 2, 1, &ex("b = 1"));
    assert!(!run(&mut s, &busy).duplicate);
    for _ in 0..10_000 {
        // Each duplicate hit queues a use; the stale ones are dropped.
        assert!(run(&mut s, &busy).duplicate);
        assert!(s.use_queue_len() <= 2 * s.session_count() + 64 + 1);
    }
    assert_eq!(s.session_count(), 2);
    assert_eq!(s.expired_upto(), None);
}

// ------------------------------------------------------------ snapshots

/// A store whose state has sessions of every outcome and an expiry behind
/// it.
fn busy_store() -> KvStore {
    let mut s = busy_options();
    exec(&mut s, "li = []"); // slot 0
    let cas = fresh(&s, 5, 9, &KvCommand::cas("c", None, &json!(1)).unwrap());
    run(&mut s, &cas);
    let put = fresh(
        &s,
        3,
        4,
        &KvCommand::put("p", &json!({"z": 1, "a": [1.5, null]})).unwrap(),
    );
    run(&mut s, &put);
    let missing = fresh(&s, 4, 1, &ex("missing += [1]"));
    run(&mut s, &missing);
    for src in ["li += [1, 2]", "li += [3, 4]", "i = 0", "f = -0.0"] {
        exec(&mut s, src);
    }
    assert!(run(&mut s, &cas).duplicate, "refreshes client 5");
    run(&mut s, &Entry::Noop); // slot 9: the slot-0 client expires
    exec(&mut s, "u = 'ü\\n'");
    assert_eq!(s.expired_upto(), Some(Slot(0)));
    assert_eq!(s.last_seq(5), Some(9));
    assert_eq!(s.session_count(), 8);
    s
}

/// An empty store with `busy_store`'s options.
fn busy_options() -> KvStore {
    small(8, 8)
}

#[test]
fn snapshot_restore_roundtrip() {
    let s = busy_store();
    let image = s.snapshot();
    assert_eq!(image[0], SNAPSHOT_VERSION);
    let mut r = busy_options();
    exec(&mut r, "junk = 1");
    r.restore(&image).unwrap();
    assert_eq!(r, s);
    assert_eq!(r.expired_upto(), s.expired_upto());
    assert_eq!(r.snapshot(), image);
    assert_eq!(r.get("junk"), None);
    // Restored dedup state still answers retries.
    let mut a = s.clone();
    let retry = stamped(
        5,
        9,
        Slot(1),
        &KvCommand::cas("c", None, &json!(1)).unwrap(),
    );
    let (oa, or) = (run(&mut a, &retry), run(&mut r, &retry));
    assert!(oa.duplicate && oa.is_ok());
    assert_eq!(oa, or);
    assert_eq!(a.snapshot(), r.snapshot());
    // ...and refuses what expired, and expires the same sessions next.
    let expired = stamped(1_000_000, 1, Slot(0), &ex("li = 0"));
    let (oa, or) = (run(&mut a, &expired), run(&mut r, &expired));
    assert_eq!(kind(&oa), Some(ErrorKind::RequestExpired));
    assert_eq!(oa, or);
    for c in 50..60 {
        let e = fresh(&a, c, 1, &ex("z = 1"));
        assert_eq!(run(&mut a, &e), run(&mut r, &e));
        assert_eq!(a, r);
    }
    assert_eq!(a.snapshot(), r.snapshot());
    // A store configured for fewer sessions takes the image and trims it,
    // least recently used first, at its next apply.
    let mut fewer = small(8, 2);
    fewer.restore(&image).unwrap();
    assert_eq!(fewer.session_count(), 8);
    run(&mut fewer, &Entry::Noop);
    assert_eq!(fewer.session_count(), 2);
    assert_eq!(fewer.last_seq(5), Some(9), "last used at slot 8, kept");
    assert_eq!(fewer.last_seq(4), None, "last used at slot 3, gone");
    assert_eq!(fewer.expired_upto(), Some(Slot(7)));
    // An empty store roundtrips too.
    let mut e = KvStore::default();
    e.restore(&KvStore::default().snapshot()).unwrap();
    assert_eq!(e, KvStore::default());
}

#[test]
fn restore_rejects_bad_images_without_changing_state() {
    let s = busy_store();
    let image = s.snapshot();
    let mut r = busy_store();
    assert!(matches!(r.restore(&[]), Err(KvError::CorruptSnapshot(_))));
    let mut v9 = image.clone();
    v9[0] = 9;
    assert!(matches!(r.restore(&v9), Err(KvError::SnapshotVersion(9))));
    for cut in 1..image.len() {
        assert!(r.restore(&image[..cut]).is_err(), "truncated at {cut}");
    }
    let mut long = image.clone();
    long.push(0);
    assert!(matches!(r.restore(&long), Err(KvError::CorruptSnapshot(_))));
    assert_eq!(r, s);
}

/// An image written by the version-2 store (dedup records, 5-slot window):
/// `c = 1` by client 5 seq 9, `p` by client 3 seq 4, a NameError by client
/// 4 seq 1, records of one-shot clients 1000004 (slot 4) and 1000005 (slot
/// 5); the records of 1000000..=1000003 (slots 0..=3) had expired.
const V2_IMAGE_HEX: &str = "020a06016301310166042d302e3001690130026c69095b312c322c332c345d01\
    70167b2261223a5b312e352c6e756c6c5d2c227a223a317d01750622c3bc5c6e2205030407000401080301\
    05090901c4843d010400c5843d010500";

fn v2_image() -> Vec<u8> {
    (0..V2_IMAGE_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&V2_IMAGE_HEX[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_version_2_image_restores_as_sessions() {
    let mut s = small(6, 5);
    s.restore(&v2_image()).unwrap();
    assert_eq!(s.applied_upto(), Slot(10));
    assert_eq!(
        s.db_json(),
        json!({"c":1,"f":-0.0,"i":0,"li":[1,2,3,4],"p":{"a":[1.5,null],"z":1},"u":"ü\n"})
    );
    assert_eq!(s.session_count(), 5);
    assert_eq!(s.last_seq(5), Some(9));
    assert_eq!(s.last_seq(3), Some(4));
    // Version 2 had expired records; everything before the oldest kept one
    // (slot 4) counts as expired.
    assert_eq!(s.expired_upto(), Some(Slot(3)));
    let cas = stamped(
        5,
        9,
        Slot(0),
        &KvCommand::cas("c", None, &json!(1)).unwrap(),
    );
    let dup = s
        .precheck(
            RequestId {
                client_id: 5,
                seq: 9,
            },
            Slot(0),
        )
        .unwrap();
    assert!(dup.duplicate && dup.is_ok());
    assert_eq!(dup.original_slot, Some(Slot(9)));
    assert_eq!(
        dup.result,
        ApplyResult::Ok {
            value: Some(json!({"succeeded": true}))
        }
    );
    let name_error = s
        .answer_duplicate(RequestId {
            client_id: 4,
            seq: 1,
        })
        .unwrap();
    assert_eq!(kind(&name_error), Some(ErrorKind::NameError));
    // A retry of an expired one-shot client is refused, not run again.
    let gone = stamped(1_000_002, 1, Slot(0), &ex("i = 0"));
    assert_eq!(kind(&run(&mut s, &gone)), Some(ErrorKind::RequestExpired));
    assert!(run(&mut s, &cas).duplicate);
    // The upgraded state is written as the current version and reads back.
    let image = s.snapshot();
    assert_eq!(image[0], SNAPSHOT_VERSION);
    let mut r = small(6, 5);
    r.restore(&image).unwrap();
    assert_eq!(r, s);
    // Corrupt version-2 images fail cleanly.
    let v2 = v2_image();
    for cut in 1..v2.len() {
        assert!(r.restore(&v2[..cut]).is_err(), "truncated at {cut}");
    }
    assert_eq!(r, s);
}

#[test]
fn restore_rejects_inconsistent_sessions() {
    let s = busy_store();
    let image = s.snapshot();
    let mut r = busy_options();
    r.restore(&image).unwrap();
    // Re-encode the image with one field changed, through the same layout.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Image {
        applied_upto: u64,
        expired_upto: Option<u64>,
        entries: Vec<(String, String, (u64, u64, u64))>,
        sessions: Vec<(u64, u64, u64, u64, Outcome)>,
        membership: Option<(u64, u64, u64)>,
        addresses: Vec<(u32, (String, Option<String>))>,
        ever_members: u64,
        leases: Vec<(u64, (u64, Vec<String>))>,
        next_lease_id: u64,
        lease_ballot: (u64, u32),
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Outcome {
        Ok,
        CasSucceeded,
        CasFailed,
        Error(ErrorKind),
    }
    let body: Image = postcard::from_bytes(&image[1..]).unwrap();
    let encode = |b: &Image| {
        let mut out = vec![SNAPSHOT_VERSION];
        out.extend(postcard::to_allocvec(b).unwrap());
        out
    };
    assert_eq!(encode(&body), image, "the layout above is the image's");
    let min_used = body.sessions.iter().map(|x| x.3).min().unwrap();
    let broken: Vec<(&str, Image)> = vec![
        (
            "expired_upto at applied_upto",
            Image {
                expired_upto: Some(body.applied_upto),
                ..postcard::from_bytes(&image[1..]).unwrap()
            },
        ),
        (
            "a session used at or before expired_upto",
            Image {
                expired_upto: Some(min_used),
                ..postcard::from_bytes(&image[1..]).unwrap()
            },
        ),
        ("ran after its last use", {
            let mut b: Image = postcard::from_bytes(&image[1..]).unwrap();
            b.sessions[0].2 = b.sessions[0].3 + 1;
            b
        }),
        ("two sessions last used at one slot", {
            let mut b: Image = postcard::from_bytes(&image[1..]).unwrap();
            b.sessions[1].3 = b.sessions[0].3;
            b.sessions[1].2 = b.sessions[1].2.min(b.sessions[1].3);
            b
        }),
        ("unsorted clients", {
            let mut b: Image = postcard::from_bytes(&image[1..]).unwrap();
            b.sessions.swap(0, 1);
            b
        }),
    ];
    for (what, b) in broken {
        let result = r.restore(&encode(&b));
        assert!(
            matches!(result, Err(KvError::CorruptSnapshot(_))),
            "{what}: {result:?}"
        );
        assert_eq!(r, s, "{what}: state unchanged");
    }
}

// ------------------------------------------------------------ properties

fn arb_statement() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c] = [0-9]{1,3}",
        "[a-c] \\+= [0-9]{1,3}",
        "[a-c] = \\[[0-9, ]{0,6}\\]",
        "[a-c] \\+= \\[[0-9]{0,2}\\]",
        "[a-c] = '[a-z]{0,3}'",
        "[a-c] \\+= \"[a-z]{0,3}\"",
        "[a-c] \\+= [0-9]\\.[0-9]",
        "del [a-c]",
        "[a-c] = 9223372036854775807",
        "[a-c] = \\{'k': [a-c0-9 ,\\[\\]]{0,8}\\}",
    ]
}

/// Transactions over keys a-d, some refused (a key written twice).
fn arb_txn() -> impl Strategy<Value = Txn> {
    let range = prop_oneof![
        "[a-d]".prop_map(KeyRange::One),
        "[a-d]?".prop_map(|p| KeyRange::prefix(&p)),
    ];
    let op = prop_oneof![
        ("[a-d]", 0i64..3, any::<bool>()).prop_map(|(key, v, prev_kv)| TxnOp::Put {
            key,
            value_json: v.to_string(),
            lease: None,
            ignore_value: false,
            ignore_lease: false,
            prev_kv,
        }),
        (range.clone(), any::<bool>())
            .prop_map(|(range, prev_kv)| TxnOp::Delete { range, prev_kv }),
        (range.clone(), 0u64..3).prop_map(|(range, limit)| TxnOp::Range {
            range,
            limit,
            keys_only: false,
            count_only: false,
        }),
    ];
    let compare = (range, 0i64..3).prop_map(|(range, n)| Compare {
        range,
        target: CompareTarget::Version(n),
        op: CompareOp::Less,
    });
    (
        proptest::collection::vec(compare, 0..2),
        proptest::collection::vec(op.clone(), 0..3),
        proptest::collection::vec(op, 0..3),
    )
        .prop_map(|(compares, success, failure)| Txn {
            compares,
            success,
            failure,
        })
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    let cmd = prop_oneof![
        arb_statement().prop_map(|source| KvCommand::Exec { source }),
        ("[a-d]", 0i64..5).prop_map(|(k, v)| KvCommand::put(k, &Value::from(v)).unwrap()),
        "[a-d]".prop_map(|k| KvCommand::delete(k).unwrap()),
        ("[a-d]", proptest::option::of(0i64..3), 0i64..3).prop_map(|(k, e, n)| {
            KvCommand::cas(k, e.map(Value::from).as_ref(), &Value::from(n)).unwrap()
        }),
        arb_txn().prop_map(KvCommand::Txn),
    ];
    prop_oneof![
        1 => Just(Entry::Noop),
        1 => (0u64..4, 0u64..6, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(
            |(client_id, seq, payload)| Entry::Command {
                id: RequestId { client_id, seq },
                payload: payload.into(),
            }
        ),
        8 => (0u64..4, 0u64..6, cmd).prop_map(|(client_id, seq, c)| Entry::Command {
            id: RequestId { client_id, seq },
            payload: c.encode(),
        }),
    ]
}

proptest! {
    #[test]
    fn parser_never_panics(s in any::<String>()) {
        let _ = parse_statement(&s);
        let _ = parse_value(&s);
    }

    #[test]
    fn parser_never_panics_on_statement_like_input(
        s in "[a-z_ =+\\-\\[\\]{}\"',:0-9.eExob_\\\\u\n\t]{0,40}"
    ) {
        if let Err(e) = parse_statement(&s) {
            prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{e} for {s:?}");
        }
    }

    #[test]
    fn json_values_parse_back(v in arb_json()) {
        let text = v.to_string();
        prop_assert_eq!(parse_value(&text).unwrap(), v);
    }

    #[test]
    fn replicas_agree(
        entries in proptest::collection::vec(arb_entry(), 0..60),
        window in 0u64..8,
        max_sessions in 0usize..5,
        cut in 0usize..60,
    ) {
        let opts = KvOptions { session_expiry_rounds: window, max_sessions };
        let (mut a, mut b) = (KvStore::new(opts), KvStore::new(opts));
        for (i, e) in entries.iter().enumerate() {
            if i == cut {
                // b restarts from a snapshot of itself midway.
                let image = b.snapshot();
                b = KvStore::new(opts);
                b.restore(&image).unwrap();
            }
            let slot = Slot(i as u64);
            let (oa, ob) = (a.apply(slot, e), b.apply(slot, e));
            prop_assert_eq!(oa, ob);
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
        prop_assert!(a.session_count() <= (window as usize + 1).min(max_sessions));
        let mut c = KvStore::new(opts);
        c.restore(&a.snapshot()).unwrap();
        prop_assert_eq!(&c, &a);
    }

    #[test]
    fn restore_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut s = KvStore::default();
        let _ = s.restore(&bytes);
        let mut with_version = vec![SNAPSHOT_VERSION];
        with_version.extend(&bytes);
        let _ = s.restore(&with_version);
    }

    #[test]
    fn restore_never_panics_on_mutated_snapshots(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)
    ) {
        let s = busy_store();
        let mut image = s.snapshot();
        for (i, b) in flips {
            let n = image.len();
            image[i % n] = b;
        }
        let mut r = KvStore::default();
        if r.restore(&image).is_ok() {
            // Whatever was accepted is internally consistent.
            let again = r.snapshot();
            let mut r2 = KvStore::default();
            prop_assert!(r2.restore(&again).is_ok());
        }
    }
}

/// One step of a client population talking to the log through servers
/// that re-propose and a network that delays and duplicates.
#[derive(Clone, Debug)]
enum Step {
    /// Client `c` sends its next request if it has none outstanding; the
    /// accepting server stamps it with the current applied round.
    Send(usize),
    /// An attempt of client `c`'s outstanding request reaches the log.
    Deliver(usize),
    /// The `i`-th request ever sent reaches the log again (a late
    /// re-proposal or a duplicated message), with its first stamp.
    Replay(usize),
    /// Other traffic: `n` no-ops.
    Idle(u8),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..6).prop_map(Step::Send),
        3 => (0usize..6).prop_map(Step::Deliver),
        2 => any::<usize>().prop_map(Step::Replay),
        1 => (1u8..8).prop_map(Step::Idle),
    ]
}

/// The list every request appends its own tag to: a second execution would
/// show as a repeated tag.
fn append(tag: u64) -> KvCommand {
    KvCommand::exec(format!("log += [{tag}]")).unwrap()
}

proptest! {
    #[test]
    fn no_request_runs_twice(
        steps in proptest::collection::vec(arb_step(), 0..200),
        expiry_rounds in 1u64..12,
        max_sessions in 1usize..5,
        cut in 0usize..200,
    ) {
        let opts = KvOptions { session_expiry_rounds: expiry_rounds, max_sessions };
        let (mut a, mut b) = (KvStore::new(opts), KvStore::new(opts));
        let apply = |a: &mut KvStore, b: &mut KvStore, entry: &Entry| {
            let slot = a.applied_upto();
            let (oa, ob) = (a.apply(slot, entry), b.apply(slot, entry));
            assert_eq!(&oa, &ob);
            oa
        };
        apply(&mut a, &mut b, &stamped(u64::MAX, 1, Slot(0), &ex("log = []")));
        // Per client slot: (client id, last seq, outstanding request).
        let mut clients: Vec<(u64, u64, Option<usize>)> =
            (0..6).map(|c| (c as u64 * 1000, 0, None)).collect();
        // Every request sent: (id, its entry).
        let mut sent: Vec<(RequestId, Entry)> = Vec::new();
        let mut executed = std::collections::HashSet::new();
        let mut expired_upto = None;
        for (i, step) in steps.iter().enumerate() {
            if i == cut {
                // b restarts from its snapshot midway.
                let image = b.snapshot();
                b = KvStore::new(opts);
                b.restore(&image).unwrap();
            }
            let outputs: Vec<(RequestId, ApplyOutput, bool)> = match *step {
                Step::Send(c) => {
                    let (client_id, seq, outstanding) = &mut clients[c];
                    if outstanding.is_none() {
                        *seq += 1;
                        let id = RequestId { client_id: *client_id, seq: *seq };
                        let entry = fresh(&a, id.client_id, id.seq, &append(id.client_id * 100 + id.seq));
                        *outstanding = Some(sent.len());
                        sent.push((id, entry));
                    }
                    Vec::new()
                }
                Step::Deliver(c) => match clients[c].2 {
                    Some(k) => {
                        let (id, entry) = sent[k].clone();
                        vec![(id, apply(&mut a, &mut b, &entry), true)]
                    }
                    None => Vec::new(),
                },
                Step::Replay(k) if !sent.is_empty() => {
                    let (id, entry) = sent[k % sent.len()].clone();
                    vec![(id, apply(&mut a, &mut b, &entry), false)]
                }
                Step::Replay(_) => Vec::new(),
                Step::Idle(n) => {
                    for _ in 0..n {
                        apply(&mut a, &mut b, &Entry::Noop);
                    }
                    Vec::new()
                }
            };
            for (id, out, answers_client) in outputs {
                if !out.duplicate {
                    prop_assert!(out.is_ok(), "{out:?}");
                    prop_assert!(executed.insert(id), "{id} ran twice: {out:?}");
                }
                if answers_client {
                    let slot = clients
                        .iter_mut()
                        .find(|(client_id, _, _)| *client_id == id.client_id)
                        .unwrap();
                    slot.2 = None;
                    if out.result.error_kind() == Some(ErrorKind::RequestExpired) {
                        // As told: go on under a new client id.
                        slot.0 += 1;
                        slot.1 = 0;
                    }
                }
            }
            prop_assert!(a.expired_upto() >= expired_upto, "expired_upto went back");
            expired_upto = a.expired_upto();
            prop_assert!(a.session_count() <= max_sessions);
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.snapshot(), b.snapshot());
        // The state agrees with the outputs: each executed tag once.
        let Some(Value::Array(log)) = a.get("log") else {
            panic!("no log: {:?}", a.get("log"));
        };
        let mut tags: Vec<u64> = log.iter().map(|v| v.as_u64().unwrap()).collect();
        prop_assert_eq!(tags.len(), executed.len());
        tags.sort_unstable();
        tags.dedup();
        prop_assert_eq!(tags.len(), executed.len());
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn dedup_records_do_not_keep_request_values() {
    let mut s = KvStore::default();
    let big = json!("v".repeat(10_000));
    for client in 0..1000u64 {
        let put = fresh(&s, client, 1, &KvCommand::put("k", &big).unwrap());
        run(&mut s, &put);
    }
    assert_eq!(s.session_count(), 1000);
    // One 10 KB value in the db, 1000 dedup records of a few dozen bytes each
    // (a record keeping the previous value would add 10 KB apiece).
    let image = s.snapshot();
    assert!(
        image.len() < 10_000 + 1000 * 64,
        "snapshot is {} bytes",
        image.len()
    );
}

#[test]
fn a_retry_of_an_applied_request_is_answered_without_the_log() {
    let mut s = KvStore::default();
    let put = cmd_entry(9, 3, &KvCommand::put("k", &json!(1)).unwrap());
    let first = run(&mut s, &put);
    let id = paxlog_core::RequestId {
        client_id: 9,
        seq: 3,
    };
    let answer = s.answer_duplicate(id).expect("known");
    assert!(answer.duplicate && answer.is_ok());
    assert_eq!(answer.original_slot, Some(first.slot));
    assert!(s
        .answer_duplicate(paxlog_core::RequestId {
            client_id: 9,
            seq: 4
        })
        .is_none());
    assert!(s
        .answer_duplicate(paxlog_core::RequestId {
            client_id: 8,
            seq: 3
        })
        .is_none());
}

/// A replica restored from a snapshot must hold exactly what the replica
/// that took it holds: floats cross the snapshot as JSON text, so parsing
/// must round-trip exactly (serde_json's `float_roundtrip`; without it
/// "9.299999999999999" came back as 9.3).
#[test]
fn float_values_are_identical_after_a_snapshot() {
    let mut live = KvStore::default();
    for command in ["a = 3", "a += 5.7", "a += 0.6"] {
        exec(&mut live, command);
        let mut restored = KvStore::default();
        restored.restore(&live.snapshot()).unwrap();
        assert_eq!(live.get("a"), restored.get("a"), "after {command}");
        assert_eq!(live, restored);
    }
}

#[test]
fn the_membership_a_change_set_survives_a_snapshot() {
    use paxlog_core::Membership;
    let mut s = KvStore::default();
    assert_eq!(s.membership(), None);
    let m = Membership {
        epoch: 1,
        voters: 0b111,
        learners: 0b1000,
    };
    let out = s.apply(
        Slot(0),
        &Entry::Config {
            id: RequestId {
                client_id: 1,
                seq: 1,
            },
            membership: m.clone(),
        },
    );
    assert!(!out.duplicate);
    assert_eq!(s.applied_upto(), Slot(1));
    assert_eq!(s.membership(), Some(&m));
    let image = s.snapshot();
    let mut restored = KvStore::default();
    restored.restore(&image).unwrap();
    assert_eq!(restored.membership(), Some(&m));
    assert_eq!(restored, s);
    // A version 3 image (no membership) still restores, with none.
    let mut v3 = vec![3u8];
    v3.extend(
        postcard::to_allocvec(&(
            1u64,
            None::<u64>,
            Vec::<(String, String)>::new(),
            Vec::<u8>::new(),
        ))
        .unwrap(),
    );
    let mut old = KvStore::default();
    old.restore(&v3).unwrap();
    assert_eq!(old.membership(), None);
    assert_eq!(old.applied_upto(), Slot(1));
}

fn register(
    store: &mut KvStore,
    client_id: u64,
    peer: &str,
    http: Option<&str>,
    min_id: u32,
) -> ApplyOutput {
    let command = KvCommand::RegisterMember {
        peer_addr: peer.into(),
        http_addr: http.map(Into::into),
        min_id,
    };
    let entry = fresh(store, client_id, 1, &command);
    run(store, &entry)
}

fn config(store: &mut KvStore, epoch: u64, voters: u64, learners: u64) {
    let slot = store.applied_upto();
    store.apply(
        slot,
        &Entry::Config {
            id: RequestId {
                client_id: 1,
                seq: epoch,
            },
            membership: paxlog_core::Membership {
                epoch,
                voters,
                learners,
            },
        },
    );
}

fn registered_id(out: &ApplyOutput) -> (u64, bool) {
    match &out.result {
        ApplyResult::Ok { value: Some(v) } => {
            (v["id"].as_u64().unwrap(), v["existed"].as_bool().unwrap())
        }
        other => panic!("not registered: {other:?}"),
    }
}

#[test]
fn the_address_book_gives_ids_once_and_answers_retries_with_the_same_id() {
    let mut s = KvStore::default();
    // Bootstrap replicas 0..3: the floor is 3.
    assert_eq!(
        registered_id(&register(
            &mut s,
            10,
            "db-3.example:7000",
            Some("db-3.example:8000"),
            3
        )),
        (3, false)
    );
    // A retried join (another request, the same address): the same id.
    assert_eq!(
        registered_id(&register(&mut s, 11, "db-3.example:7000", None, 3)),
        (3, true)
    );
    assert_eq!(
        s.member_addresses()
            .get(&3)
            .and_then(|a| a.http_addr.as_deref()),
        Some("db-3.example:8000"),
        "a retry without an http address keeps the one given"
    );
    assert_eq!(
        registered_id(&register(&mut s, 12, "[::1]:7004", None, 3)),
        (4, false)
    );
    // 3 joins as a learner, then is removed: retired for good.
    config(&mut s, 1, 0b111, 0b1000);
    assert!(!s.is_retired(3));
    config(&mut s, 2, 0b111, 0);
    assert!(s.is_retired(3));
    assert!(!s.is_retired(4), "4 never was a member");
    // The same address again is a new replica with a new id.
    assert_eq!(
        registered_id(&register(&mut s, 13, "db-3.example:7000", None, 3)),
        (5, false)
    );
    // Bad addresses are refused, deterministically, and change nothing.
    for bad in [
        "",
        "no-port",
        "host:0",
        "host:99999",
        "bad host:1",
        "[nope]:1",
    ] {
        let out = register(
            &mut s,
            1000 + bad.bytes().map(u64::from).sum::<u64>(),
            bad,
            None,
            3,
        );
        assert_eq!(kind(&out), Some(ErrorKind::InvalidValue), "{bad:?}");
        assert!(KvCommand::RegisterMember {
            peer_addr: bad.into(),
            http_addr: None,
            min_id: 0
        }
        .validate()
        .is_err());
    }
    assert_eq!(s.member_addresses().len(), 3);
    // The book and the retired ids survive a snapshot.
    let mut restored = KvStore::default();
    restored.restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert!(restored.is_retired(3));
    assert_eq!(
        registered_id(&register(&mut restored, 30, "x:1", None, 0)),
        (6, false)
    );
}

#[test]
fn ids_run_out_at_64_members_with_an_error() {
    let mut s = KvStore::default();
    let out = register(&mut s, 1, "a:1", None, 63);
    assert_eq!(registered_id(&out), (63, false));
    let out = register(&mut s, 2, "b:1", None, 0);
    assert_eq!(kind(&out), Some(ErrorKind::TooLarge));
}

#[test]
fn a_version_4_image_restores_with_an_empty_address_book() {
    let mut v4 = vec![4u8];
    v4.extend(
        postcard::to_allocvec(&(
            1u64,
            None::<u64>,
            Vec::<(String, String)>::new(),
            Vec::<u8>::new(),
            Some((1u64, 0b111u64, 0b1000u64)),
        ))
        .unwrap(),
    );
    let mut old = KvStore::default();
    old.restore(&v4).unwrap();
    assert!(old.member_addresses().is_empty());
    assert_eq!(old.membership().map(|m| m.learners), Some(0b1000));
    // Members of the membership in force count as having been members.
    let mut after = old.clone();
    config(&mut after, 2, 0b111, 0);
    assert!(after.is_retired(3));
}

fn changed_keys(store: &KvStore) -> Vec<&str> {
    store.changes().iter().map(|c| c.key.as_str()).collect()
}

fn lease_cmd(store: &mut KvStore, client_id: u64, cmd: &KvCommand) -> ApplyOutput {
    let entry = fresh(store, client_id, 1, cmd);
    run(store, &entry)
}

#[test]
fn leases_number_the_same_everywhere_keep_their_keys_and_take_them_when_revoked() {
    let mut s = KvStore::default();
    let granted = lease_cmd(&mut s, 1, &KvCommand::LeaseGrant { ttl_ms: 5_000 });
    let ApplyResult::Ok { value: Some(v) } = &granted.result else {
        panic!("{granted:?}")
    };
    assert_eq!(v["lease"], json!(1));
    let put = |key: &str, lease| KvCommand::PutLeased {
        key: key.into(),
        value_json: "1".into(),
        lease,
    };
    assert!(lease_cmd(&mut s, 2, &put("a", 1)).is_ok());
    assert!(lease_cmd(&mut s, 3, &put("b", 1)).is_ok());
    assert!(lease_cmd(&mut s, 4, &put("c", 1)).is_ok());
    assert_eq!(s.lease_of("a"), Some(1));
    // A plain write takes a key off its lease; a delete too.
    lease_cmd(&mut s, 5, &KvCommand::put("b", &json!(2)).unwrap());
    assert_eq!(s.lease_of("b"), None);
    assert_eq!(changed_keys(&s), ["b"]);
    lease_cmd(&mut s, 6, &KvCommand::delete("c").unwrap());
    // A failed compare-and-set writes nothing and leaves the lease.
    lease_cmd(
        &mut s,
        7,
        &KvCommand::cas("a", Some(&json!(9)), &json!(3)).unwrap(),
    );
    assert_eq!(s.lease_of("a"), Some(1));
    assert!(
        s.changes().is_empty(),
        "a failed compare-and-set changes nothing"
    );
    // An unknown lease is refused and writes nothing.
    let refused = lease_cmd(&mut s, 8, &put("z", 9));
    assert_eq!(kind(&refused), Some(ErrorKind::LeaseNotFound));
    assert!(s.get("z").is_none());
    // The snapshot keeps leases and their keys.
    let mut restored = KvStore::default();
    restored.restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.lease_of("a"), Some(1));
    // Revoking deletes exactly the keys still on it.
    let revoked = lease_cmd(&mut s, 9, &KvCommand::LeaseRevoke { lease: 1 });
    let ApplyResult::Ok { value: Some(v) } = &revoked.result else {
        panic!("{revoked:?}")
    };
    assert_eq!(v["deleted"], json!(["a"]));
    assert_eq!(changed_keys(&s), ["a"]);
    assert_eq!(
        s.changes()[0]
            .previous
            .as_ref()
            .map(|p| (&p.value, p.lease)),
        Some((&json!(1), Some(1))),
        "a revoked key's change carries its value and lease"
    );
    assert!(s.get("a").is_none());
    assert_eq!(s.get("b"), Some(&json!(2)));
    assert!(s.leases().is_empty());
    let again = lease_cmd(&mut s, 10, &KvCommand::LeaseRevoke { lease: 1 });
    assert_eq!(kind(&again), Some(ErrorKind::LeaseNotFound));
    // Ids are never reused; bad lifetimes are refused.
    let next = lease_cmd(&mut s, 11, &KvCommand::LeaseGrant { ttl_ms: 2_000 });
    let ApplyResult::Ok { value: Some(v) } = &next.result else {
        panic!("{next:?}")
    };
    assert_eq!(v["lease"], json!(2));
    assert!(KvCommand::LeaseGrant { ttl_ms: 10 }.validate().is_err());
}

#[test]
fn an_expiry_decided_before_a_later_leader_renewed_the_leases_is_void() {
    use paxlog_core::{Ballot, NodeId};
    let ballot = |counter, node| Ballot {
        counter,
        node: NodeId(node),
    };
    let mut s = KvStore::default();
    lease_cmd(&mut s, 1, &KvCommand::LeaseGrant { ttl_ms: 5_000 });
    lease_cmd(
        &mut s,
        2,
        &KvCommand::PutLeased {
            key: "a".into(),
            value_json: "1".into(),
            lease: 1,
        },
    );
    // Leader 2.1 renews the leases; then leader 8.2 does.
    lease_cmd(
        &mut s,
        3,
        &KvCommand::LeasesRenewed {
            ballot: ballot(2, 1),
        },
    );
    lease_cmd(
        &mut s,
        4,
        &KvCommand::LeasesRenewed {
            ballot: ballot(8, 2),
        },
    );
    assert_eq!(s.lease_ballot(), ballot(8, 2));
    // An older renewal applied late does not lower it.
    lease_cmd(
        &mut s,
        5,
        &KvCommand::LeasesRenewed {
            ballot: ballot(2, 1),
        },
    );
    assert_eq!(s.lease_ballot(), ballot(8, 2));
    // 2.1's expiry, chosen after 8.2 renewed: void, the key stays.
    let void = lease_cmd(
        &mut s,
        6,
        &KvCommand::LeaseExpire {
            lease: 1,
            ballot: ballot(2, 1),
        },
    );
    let ApplyResult::Ok { value: Some(v) } = &void.result else {
        panic!("{void:?}")
    };
    assert_eq!(v["superseded"], json!(true));
    assert_eq!(s.get("a"), Some(&json!(1)));
    assert!(s.changes().is_empty());
    // The renewing leader's own expiry ends the lease.
    let expired = lease_cmd(
        &mut s,
        7,
        &KvCommand::LeaseExpire {
            lease: 1,
            ballot: ballot(8, 2),
        },
    );
    assert!(expired.is_ok(), "{expired:?}");
    assert!(s.get("a").is_none());
    assert!(s.leases().is_empty());
    // The term survives a snapshot.
    let mut restored = KvStore::default();
    restored.restore(&s.snapshot()).unwrap();
    assert_eq!(restored.lease_ballot(), ballot(8, 2));
    assert_eq!(restored, s);
}

#[test]
fn a_version_7_image_restores_with_no_lease_term() {
    let mut s = KvStore::default();
    lease_cmd(&mut s, 1, &KvCommand::LeaseGrant { ttl_ms: 5_000 });
    // Version 8 appends the term; a zero ballot encodes as two zero bytes,
    // so without them (and with byte 7 first) it is the version 7 image.
    let v8 = s.snapshot();
    assert_eq!(v8[0], 8);
    assert_eq!(&v8[v8.len() - 2..], &[0, 0]);
    let mut v7 = v8[..v8.len() - 2].to_vec();
    v7[0] = 7;
    let mut restored = KvStore::default();
    restored.restore(&v7).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.lease_ballot(), paxlog_core::Ballot::ZERO);
}
