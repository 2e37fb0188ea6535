//! The replicated database: the seed's per-node dict, made deterministic.

use paxlog_core::{Entry, RequestId, Slot, StateMachine};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;

use crate::command::{check_statement, parse_json_value, validate_key, validate_value, KvCommand};
use crate::error::KvError;
use crate::output::{ApplyOutput, ApplyResult, ErrorKind};
use crate::parser::Statement;

/// How long (in slots) a client's last answer is remembered for retries.
/// At 30,000 writes/s this is over 3 s, several times the interval at which
/// a replica re-proposes a write it has not heard of (1 s by default); a
/// client's own retry older than the window is applied again.
pub const DEFAULT_DEDUP_WINDOW_SLOTS: u64 = 100_000;

/// The first byte of every snapshot image.
pub const SNAPSHOT_VERSION: u8 = 2;

/// Store configuration. Must be identical on all replicas.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KvOptions {
    /// A client's dedup record is dropped once `last_slot + window < slot`
    /// for the slot being applied.
    pub dedup_window_slots: u64,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            dedup_window_slots: DEFAULT_DEDUP_WINDOW_SLOTS,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct ClientRecord {
    last_seq: u64,
    last_slot: Slot,
    outcome: Outcome,
}

/// What a retried request is told: the outcome of its first execution,
/// without the values (so a dedup record stays a few dozen bytes whatever
/// the request carried).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Outcome {
    Ok,
    CasSucceeded,
    CasFailed,
    Error(ErrorKind),
}

impl Outcome {
    fn of(result: &ApplyResult) -> Outcome {
        match result {
            ApplyResult::Error { kind, .. } => Outcome::Error(*kind),
            ApplyResult::Ok {
                value: Some(Value::Object(map)),
            } => match map.get("succeeded") {
                Some(Value::Bool(true)) => Outcome::CasSucceeded,
                Some(Value::Bool(false)) => Outcome::CasFailed,
                _ => Outcome::Ok,
            },
            ApplyResult::Ok { .. } => Outcome::Ok,
        }
    }

    fn replay(self) -> ApplyResult {
        let succeeded = |b: bool| {
            let mut report = Map::new();
            report.insert("succeeded".into(), Value::Bool(b));
            ApplyResult::ok(Some(Value::Object(report)))
        };
        match self {
            Outcome::Ok => ApplyResult::ok(None),
            Outcome::CasSucceeded => succeeded(true),
            Outcome::CasFailed => succeeded(false),
            Outcome::Error(kind) => ApplyResult::error(
                kind,
                "the first execution of this request failed (retried requests are not run again)",
            ),
        }
    }
}

/// The key-value database driven by the log. Statement names and KV keys
/// share one namespace.
#[derive(Clone, Debug)]
pub struct KvStore {
    options: KvOptions,
    db: BTreeMap<String, Value>,
    applied_upto: Slot,
    /// Exactly-once table: client id -> last request seen. (A hash map: it
    /// is touched on every write; snapshots sort it, so they stay
    /// deterministic.)
    clients: HashMap<u64, ClientRecord>,
    /// `(slot, client)` in the order records were written, for incremental
    /// eviction. An entry whose client has a newer record is stale and is
    /// skipped when it reaches the front.
    by_slot: VecDeque<(Slot, u64)>,
}

impl PartialEq for KvStore {
    /// The replicated state; the eviction queue's stale entries are not.
    fn eq(&self, other: &Self) -> bool {
        self.options == other.options
            && self.db == other.db
            && self.applied_upto == other.applied_upto
            && self.clients == other.clients
    }
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new(KvOptions::default())
    }
}

impl KvStore {
    pub fn new(options: KvOptions) -> Self {
        KvStore {
            options,
            db: BTreeMap::new(),
            applied_upto: Slot::ZERO,
            clients: HashMap::new(),
            by_slot: VecDeque::new(),
        }
    }

    pub fn options(&self) -> KvOptions {
        self.options
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.db.get(key)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &str, limit: usize) -> Vec<(String, Value)> {
        self.db
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The whole database as a JSON object with sorted keys: the seed's `db`.
    pub fn db_json(&self) -> Value {
        Value::Object(
            self.db
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<String, Value>>(),
        )
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.db.len()
    }

    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    /// Number of clients currently remembered by the dedup table.
    pub fn dedup_len(&self) -> usize {
        self.clients.len()
    }

    /// If `id` was already applied here (so it is committed), the answer a
    /// retry gets, without going through the log again.
    pub fn answer_duplicate(&self, id: RequestId) -> Option<ApplyOutput> {
        let rec = self.clients.get(&id.client_id)?;
        if id.seq != rec.last_seq {
            return None;
        }
        Some(ApplyOutput {
            slot: rec.last_slot,
            duplicate: true,
            original_slot: Some(rec.last_slot),
            result: rec.outcome.replay(),
        })
    }

    /// The last request seq applied for `client_id`, if still remembered.
    pub fn last_seq(&self, client_id: u64) -> Option<u64> {
        self.clients.get(&client_id).map(|r| r.last_seq)
    }

    fn evict_expired(&mut self, slot: Slot) {
        let window = self.options.dedup_window_slots;
        while let Some(&(last_slot, client)) = self.by_slot.front() {
            if last_slot.0.saturating_add(window) >= slot.0 {
                break;
            }
            self.by_slot.pop_front();
            if self
                .clients
                .get(&client)
                .is_some_and(|r| r.last_slot == last_slot)
            {
                self.clients.remove(&client);
            }
        }
    }

    fn apply_command(&mut self, slot: Slot, id: RequestId, payload: &[u8]) -> ApplyOutput {
        if let Some(rec) = self.clients.get(&id.client_id) {
            if id.seq == rec.last_seq {
                return ApplyOutput {
                    slot,
                    duplicate: true,
                    original_slot: Some(rec.last_slot),
                    result: rec.outcome.replay(),
                };
            }
            if id.seq < rec.last_seq {
                return ApplyOutput {
                    slot,
                    duplicate: true,
                    original_slot: None,
                    result: ApplyResult::error(
                        ErrorKind::Stale,
                        format!(
                            "request {id} is older than this client's last applied request (seq {})",
                            rec.last_seq
                        ),
                    ),
                };
            }
        }
        let result = self.execute(payload);
        self.clients.insert(
            id.client_id,
            ClientRecord {
                last_seq: id.seq,
                last_slot: slot,
                outcome: Outcome::of(&result),
            },
        );
        self.by_slot.push_back((slot, id.client_id));
        ApplyOutput {
            slot,
            duplicate: false,
            original_slot: None,
            result,
        }
    }

    /// Runs one command. Errors leave the database untouched.
    fn execute(&mut self, payload: &[u8]) -> ApplyResult {
        match KvCommand::decode(payload) {
            Ok(cmd) => self.execute_command(cmd).unwrap_or_else(|e| e),
            Err(e) => failed(e),
        }
    }

    fn execute_command(&mut self, cmd: KvCommand) -> Result<ApplyResult, ApplyResult> {
        match cmd {
            KvCommand::Exec { source } => {
                let stmt = check_statement(&source).map_err(failed)?;
                self.execute_statement(stmt)
            }
            KvCommand::Put { key, value_json } => {
                validate_key(&key).map_err(failed)?;
                let value = parse_json_value(&value_json).map_err(failed)?;
                let previous = self.db.insert(key, value);
                Ok(previous_report(previous))
            }
            KvCommand::Delete { key } => {
                validate_key(&key).map_err(failed)?;
                let previous = self.db.remove(&key);
                Ok(previous_report(previous))
            }
            KvCommand::Cas {
                key,
                expected_json,
                new_json,
            } => {
                validate_key(&key).map_err(failed)?;
                let expected = expected_json
                    .as_deref()
                    .map(parse_json_value)
                    .transpose()
                    .map_err(failed)?;
                let new = parse_json_value(&new_json).map_err(failed)?;
                let current = self.db.get(&key);
                let succeeded = match (&expected, current) {
                    (None, None) => true,
                    (Some(e), Some(c)) => e == c,
                    _ => false,
                };
                if succeeded {
                    self.db.insert(key.clone(), new);
                }
                let mut report = Map::new();
                report.insert("succeeded".into(), Value::Bool(succeeded));
                report.insert(
                    "current".into(),
                    self.db.get(&key).cloned().unwrap_or(Value::Null),
                );
                Ok(ApplyResult::ok(Some(Value::Object(report))))
            }
        }
    }

    /// Dry-runs `cmd` against the current state without changing it: the
    /// error it would produce now, if any. The server uses it to refuse a
    /// command that cannot succeed before it reaches the log; the command can
    /// still fail at apply time if the state changes in between.
    pub fn check(&self, cmd: &KvCommand) -> Result<(), ApplyResult> {
        match cmd {
            KvCommand::Exec { source } => match check_statement(source).map_err(failed)? {
                Statement::Assign { .. } => Ok(()),
                Statement::AddAssign { name, value } => {
                    let current = self.db.get(&name).ok_or_else(|| name_error(&name))?;
                    let sum = add(current, &value)?;
                    validate_value(&sum).map_err(failed)?;
                    Ok(())
                }
                Statement::Delete { name } => {
                    self.db.get(&name).ok_or_else(|| name_error(&name))?;
                    Ok(())
                }
            },
            other => other.validate().map_err(failed),
        }
    }

    fn execute_statement(&mut self, stmt: Statement) -> Result<ApplyResult, ApplyResult> {
        match stmt {
            Statement::Assign { name, value } => {
                self.db.insert(name, value);
            }
            Statement::AddAssign { name, value } => {
                let current = self.db.get(&name).ok_or_else(|| name_error(&name))?;
                let sum = add(current, &value)?;
                validate_value(&sum).map_err(failed)?;
                self.db.insert(name, sum);
            }
            Statement::Delete { name } => {
                self.db.remove(&name).ok_or_else(|| name_error(&name))?;
            }
        }
        Ok(ApplyResult::ok(None))
    }
}

fn failed(e: KvError) -> ApplyResult {
    let kind = match &e {
        KvError::Parse(_) => ErrorKind::SyntaxError,
        KvError::InvalidKey(_) => ErrorKind::InvalidKey,
        KvError::InvalidValue(_) => ErrorKind::InvalidValue,
        KvError::TooLarge { .. } => ErrorKind::TooLarge,
        KvError::Decode(_) | KvError::SnapshotVersion(_) | KvError::CorruptSnapshot(_) => {
            ErrorKind::BadPayload
        }
    };
    ApplyResult::error(kind, e.to_string())
}

fn name_error(name: &str) -> ApplyResult {
    ApplyResult::error(
        ErrorKind::NameError,
        format!("name '{name}' is not defined"),
    )
}

fn previous_report(previous: Option<Value>) -> ApplyResult {
    let mut report = Map::new();
    report.insert("existed".into(), Value::Bool(previous.is_some()));
    report.insert("previous".into(), previous.unwrap_or(Value::Null));
    ApplyResult::ok(Some(Value::Object(report)))
}

/// Python's type name for a JSON value.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn int_of(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Python-like `lhs += rhs`. Booleans are not numbers here.
fn add(lhs: &Value, rhs: &Value) -> Result<Value, ApplyResult> {
    match (lhs, rhs) {
        (Value::Array(a), Value::Array(b)) => {
            let mut items = Vec::with_capacity(a.len() + b.len());
            items.extend(a.iter().cloned());
            items.extend(b.iter().cloned());
            Ok(Value::Array(items))
        }
        (Value::String(a), Value::String(b)) => Ok(Value::String(format!("{a}{b}"))),
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (int_of(a), int_of(b)) {
                // i128 cannot overflow on the sum of two 64-bit integers.
                i64::try_from(x + y).map(Value::from).map_err(|_| {
                    ApplyResult::error(
                        ErrorKind::Overflow,
                        format!(
                            "integer overflow: {x} + {y} does not fit in a signed 64-bit integer"
                        ),
                    )
                })
            } else {
                let (x, y) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                Number::from_f64(x + y)
                    .filter(|_| (x + y).is_finite())
                    .map(Value::Number)
                    .ok_or_else(|| {
                        ApplyResult::error(
                            ErrorKind::Overflow,
                            format!("float overflow: {x} + {y} is not finite"),
                        )
                    })
            }
        }
        _ => Err(ApplyResult::error(
            ErrorKind::TypeError,
            format!(
                "unsupported operand type(s) for +=: '{}' and '{}'",
                type_name(lhs),
                type_name(rhs)
            ),
        )),
    }
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    applied_upto: u64,
    entries: Vec<(&'a str, String)>,
    clients: Vec<SnapshotClient>,
}

#[derive(Deserialize)]
struct SnapshotIn {
    applied_upto: u64,
    entries: Vec<(String, String)>,
    clients: Vec<SnapshotClient>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotClient {
    client_id: u64,
    last_seq: u64,
    last_slot: u64,
    outcome: Outcome,
}

fn corrupt(msg: impl Into<String>) -> KvError {
    KvError::CorruptSnapshot(msg.into())
}

impl StateMachine for KvStore {
    type Output = ApplyOutput;
    type Error = KvError;

    /// # Panics
    /// If `slot != self.applied_upto()` (a caller bug: gaps or reordering).
    fn apply(&mut self, slot: Slot, entry: &Entry) -> ApplyOutput {
        assert_eq!(
            slot, self.applied_upto,
            "KvStore::apply: slots must be applied in order without gaps"
        );
        self.evict_expired(slot);
        let out = match entry {
            Entry::Noop => ApplyOutput {
                slot,
                duplicate: false,
                original_slot: None,
                result: ApplyResult::ok(None),
            },
            Entry::Command { id, payload } => self.apply_command(slot, *id, payload),
        };
        self.applied_upto = slot.next();
        out
    }

    fn applied_upto(&self) -> Slot {
        self.applied_upto
    }

    /// `[SNAPSHOT_VERSION]` followed by postcard of: applied_upto, the db
    /// entries in key order as (key, compact JSON text), and the dedup table
    /// in client-id order as (client_id, last_seq, last_slot, outcome).
    fn snapshot(&self) -> Vec<u8> {
        let body = SnapshotOut {
            applied_upto: self.applied_upto.0,
            entries: self
                .db
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_string()))
                .collect(),
            clients: {
                let mut clients: Vec<SnapshotClient> = self
                    .clients
                    .iter()
                    .map(|(&client_id, r)| SnapshotClient {
                        client_id,
                        last_seq: r.last_seq,
                        last_slot: r.last_slot.0,
                        outcome: r.outcome,
                    })
                    .collect();
                clients.sort_unstable_by_key(|c| c.client_id);
                clients
            },
        };
        let mut out = vec![SNAPSHOT_VERSION];
        // Serialising into a Vec cannot fail.
        out.extend(postcard::to_allocvec(&body).unwrap_or_default());
        out
    }

    fn restore(&mut self, image: &[u8]) -> Result<(), KvError> {
        let (&version, rest) = image.split_first().ok_or_else(|| corrupt("empty image"))?;
        if version != SNAPSHOT_VERSION {
            return Err(KvError::SnapshotVersion(version));
        }
        let (body, tail) = postcard::take_from_bytes::<SnapshotIn>(rest)
            .map_err(|e| corrupt(format!("undecodable body: {e}")))?;
        if !tail.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", tail.len())));
        }
        let applied_upto = Slot(body.applied_upto);

        let mut db = BTreeMap::new();
        for (key, text) in body.entries {
            validate_key(&key).map_err(|e| corrupt(e.to_string()))?;
            if db
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= key)
            {
                return Err(corrupt(
                    "db entries are not in strictly increasing key order",
                ));
            }
            let value =
                parse_json_value(&text).map_err(|e| corrupt(format!("key {key:?}: {e}")))?;
            db.insert(key, value);
        }

        let mut clients = HashMap::with_capacity(body.clients.len());
        let mut by_slot = Vec::with_capacity(body.clients.len());
        let mut previous_client = None;
        for c in body.clients {
            if previous_client.is_some_and(|last| last >= c.client_id) {
                return Err(corrupt(
                    "dedup entries are not in strictly increasing client order",
                ));
            }
            if c.last_slot >= applied_upto.0 {
                return Err(corrupt(format!(
                    "client {:x} last applied at slot {} >= applied_upto {applied_upto}",
                    c.client_id, c.last_slot
                )));
            }
            previous_client = Some(c.client_id);
            by_slot.push((Slot(c.last_slot), c.client_id));
            clients.insert(
                c.client_id,
                ClientRecord {
                    last_seq: c.last_seq,
                    last_slot: Slot(c.last_slot),
                    outcome: c.outcome,
                },
            );
        }

        self.db = db;
        self.applied_upto = applied_upto;
        by_slot.sort_unstable();
        self.clients = clients;
        self.by_slot = by_slot.into();
        Ok(())
    }
}
