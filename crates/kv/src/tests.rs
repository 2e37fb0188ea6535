#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::limits::{MAX_DEPTH, MAX_KEY_BYTES, MAX_STATEMENT_BYTES, MAX_VALUE_BYTES};
use crate::*;
use paxlog_core::{Entry, RequestId, Slot, StateMachine};
use proptest::prelude::*;
use serde_json::{json, Value};

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

/// Applies at the next slot.
fn run(store: &mut KvStore, entry: &Entry) -> ApplyOutput {
    let slot = store.applied_upto();
    store.apply(slot, entry)
}

/// Runs a statement as a fresh client request.
fn exec(store: &mut KvStore, source: &str) -> ApplyOutput {
    let client = 1_000_000 + store.applied_upto().0;
    run(
        store,
        &cmd_entry(client, 1, &KvCommand::exec(source).unwrap()),
    )
}

fn exec_raw(store: &mut KvStore, source: &str) -> ApplyOutput {
    let client = 1_000_000 + store.applied_upto().0;
    let cmd = KvCommand::Exec {
        source: source.into(),
    };
    run(store, &cmd_entry(client, 1, &cmd))
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
fn dedup_eviction_is_windowed() {
    let mut s = KvStore::new(KvOptions {
        dedup_window_slots: 3,
    });
    exec(&mut s, "n = 0");
    let inc = cmd_entry(1, 1, &KvCommand::exec("n += 1").unwrap());
    let first = run(&mut s, &inc); // slot 1
    assert_eq!(first.slot, Slot(1));
    for _ in 0..3 {
        run(&mut s, &Entry::Noop); // slots 2, 3, 4: 1 + 3 >= slot, kept
    }
    assert_eq!(s.last_seq(1), Some(1));
    let retry = run(&mut s, &inc); // slot 5: 1 + 3 < 5, evicted first
    assert!(!retry.duplicate);
    assert_eq!(s.get("n"), Some(&json!(2)));
    // Many one-shot clients: the table stays bounded by the window.
    for c in 100..200 {
        run(&mut s, &cmd_entry(c, 1, &KvCommand::exec("x = 1").unwrap()));
        assert!(s.dedup_len() <= 4, "{}", s.dedup_len());
    }
    // Default window keeps everything for a while.
    let mut d = KvStore::default();
    for c in 0..50 {
        run(&mut d, &cmd_entry(c, 1, &KvCommand::exec("x = 1").unwrap()));
    }
    assert_eq!(d.dedup_len(), 50);
}

// ------------------------------------------------------------ snapshots

fn busy_store() -> KvStore {
    let mut s = KvStore::new(KvOptions {
        dedup_window_slots: 5,
    });
    for src in [
        "li = []",
        "li += [1, 2]",
        "li += [3, 4]",
        "i = 0",
        "f = -0.0",
        "u = 'ü\\n'",
    ] {
        exec(&mut s, src);
    }
    run(&mut s, &Entry::Noop);
    run(
        &mut s,
        &cmd_entry(
            3,
            4,
            &KvCommand::put("p", &json!({"z": 1, "a": [1.5, null]})).unwrap(),
        ),
    );
    run(
        &mut s,
        &cmd_entry(4, 1, &KvCommand::exec("missing += [1]").unwrap()),
    );
    run(
        &mut s,
        &cmd_entry(5, 9, &KvCommand::cas("c", None, &json!(1)).unwrap()),
    );
    s
}

#[test]
fn snapshot_restore_roundtrip() {
    let s = busy_store();
    let image = s.snapshot();
    assert_eq!(image[0], SNAPSHOT_VERSION);
    let mut r = KvStore::new(KvOptions {
        dedup_window_slots: 5,
    });
    exec(&mut r, "junk = 1");
    r.restore(&image).unwrap();
    assert_eq!(r, s);
    assert_eq!(r.snapshot(), image);
    assert_eq!(r.get("junk"), None);
    // Restored dedup state still answers retries.
    let mut a = s.clone();
    let retry = cmd_entry(5, 9, &KvCommand::cas("c", None, &json!(1)).unwrap());
    let (oa, or) = (run(&mut a, &retry), run(&mut r, &retry));
    assert!(oa.duplicate);
    assert_eq!(oa, or);
    assert_eq!(a.snapshot(), r.snapshot());
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

fn arb_entry() -> impl Strategy<Value = Entry> {
    let cmd = prop_oneof![
        arb_statement().prop_map(|source| KvCommand::Exec { source }),
        ("[a-d]", 0i64..5).prop_map(|(k, v)| KvCommand::put(k, &Value::from(v)).unwrap()),
        "[a-d]".prop_map(|k| KvCommand::delete(k).unwrap()),
        ("[a-d]", proptest::option::of(0i64..3), 0i64..3).prop_map(|(k, e, n)| {
            KvCommand::cas(k, e.map(Value::from).as_ref(), &Value::from(n)).unwrap()
        }),
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
    fn replicas_agree(entries in proptest::collection::vec(arb_entry(), 0..60), window in 0u64..8, cut in 0usize..60) {
        let opts = KvOptions { dedup_window_slots: window };
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
        prop_assert!(a.dedup_len() <= window as usize + 1);
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
        let put = cmd_entry(client, 1, &KvCommand::put("k", &big).unwrap());
        run(&mut s, &put);
    }
    assert_eq!(s.dedup_len(), 1000);
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
