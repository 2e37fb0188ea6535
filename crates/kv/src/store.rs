//! The replicated database: the seed's per-node dict, made deterministic.

use paxlog_core::{Ballot, Entry, Membership, RequestId, Slot, StateMachine, MAX_NODE_ID};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;

use crate::command::{
    check_member_addr, check_statement, parse_json_value, validate_key, validate_value, KvCommand,
    KvRequest,
};
use crate::error::KvError;
use crate::output::{ApplyOutput, ApplyResult, ErrorKind};
use crate::parser::Statement;
use crate::range::KeyRange;

mod apply_txn;

/// How many rounds a client session lives without being used. At 30,000
/// writes/s this is over 30 s, several times a server's request deadline
/// (5 s), during which it re-proposes a pending write every second, and
/// every re-proposal that reaches the log refreshes the session.
pub const DEFAULT_SESSION_EXPIRY_ROUNDS: u64 = 1_000_000;

/// Most client sessions kept at once; beyond it the least recently used one
/// expires. Bounds the table at a few MB (about 80 bytes a session).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// The first byte of every snapshot image.
pub const SNAPSHOT_VERSION: u8 = 8;

/// The image before lease terms: no `lease_ballot`. Still restorable (no
/// leader has renewed leases then).
const SNAPSHOT_VERSION_V7: u8 = 7;

/// The image before per-key metadata: entries are (key, value) only.
/// Still restorable (every key then counts as written once, at the last
/// applied round).
const SNAPSHOT_VERSION_V6: u8 = 6;

/// The image before leases: no `leases`, no `next_lease_id`. Still
/// restorable (no leases then).
const SNAPSHOT_VERSION_V5: u8 = 5;

/// The image before the address book: no `addresses`, no `ever_members`.
/// Still restorable (the book is then empty).
const SNAPSHOT_VERSION_V4: u8 = 4;

/// The image before memberships were replicated: no `membership` field.
/// Still restorable (the membership is then the bootstrap one).
const SNAPSHOT_VERSION_V3: u8 = 3;

/// The image written before sessions existed: one record per client, no
/// `last_used_slot`, no `expired_upto`. Still restorable.
const SNAPSHOT_VERSION_V2: u8 = 2;

/// Store configuration. Must be identical on all replicas.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KvOptions {
    /// A client session expires once `last_used_slot + session_expiry_rounds
    /// < slot` for the slot being applied.
    pub session_expiry_rounds: u64,
    /// When more sessions than this exist, the least recently used expire.
    pub max_sessions: usize,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            session_expiry_rounds: DEFAULT_SESSION_EXPIRY_ROUNDS,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// A lease: its lifetime after a keep-alive, and the keys that go with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl_ms: u64,
    pub keys: std::collections::BTreeSet<String>,
}

/// A key's history, as etcd reports it. A revision is the round (slot) of
/// the log entry that wrote the key plus one: etcd keeps 0 for "no such
/// key", and a store whose `applied_upto` is `c` is at revision `c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// Where the key was created (last went from absent to present).
    pub create_revision: u64,
    /// Where it was last written.
    pub mod_revision: u64,
    /// Writes since it was created, that one included: 1 after creation.
    pub version: u64,
}

/// A key the entry being applied wrote or deleted, and what it was before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// `None`: the key did not exist (it was created).
    pub previous: Option<PreviousKv>,
}

/// A key's state before a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousKv {
    pub value: Value,
    pub meta: KeyMeta,
    /// The lease it was attached to.
    pub lease: Option<u64>,
}

/// A key's value and metadata, as the database holds them.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    value: Value,
    meta: KeyMeta,
}

/// Where a replica that joined can be reached: its peer-protocol address
/// and, if it gave one, its client HTTP address (`host:port` each).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddress {
    pub peer_addr: String,
    pub http_addr: Option<String>,
}

/// One client's exactly-once state: its last executed request and when the
/// client was last heard of in the log.
#[derive(Clone, Debug, PartialEq)]
struct Session {
    last_seq: u64,
    /// Where `last_seq` was executed.
    last_slot: Slot,
    /// The last slot whose entry came from this client (executed, answered
    /// as a duplicate, or refused as stale): expiry counts from here.
    last_used_slot: Slot,
    outcome: Outcome,
}

// Three u64 and a one-byte outcome: 32 bytes; with its u64 key a map entry
// is 40 bytes (plus the map's control byte and load-factor slack).
const _: () = assert!(std::mem::size_of::<Session>() <= 32);

/// Slack before the use queue is compacted, so small tables do not compact
/// on every write.
const USE_QUEUE_SLACK: usize = 64;

/// What a retried request is told: the outcome of its first execution,
/// without the values (so a session stays a few dozen bytes whatever the
/// request carried).
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
        let succeeded = |b: bool| ok_report([("succeeded", Value::Bool(b))]);
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
    db: BTreeMap<String, Record>,
    applied_upto: Slot,
    /// Exactly-once table: client id -> session. (A hash map: it is touched
    /// on every write; snapshots sort it, so they stay deterministic.)
    sessions: HashMap<u64, Session>,
    /// `(last_used_slot, client)` in the order sessions were used, for
    /// incremental expiry, least recently used first. An entry whose session
    /// has been used again since (or is gone) is stale and is skipped when it
    /// reaches the front; compaction keeps the stale ones fewer than the
    /// live ones (plus a slack).
    by_use: VecDeque<(Slot, u64)>,
    /// The highest `last_used_slot` of any session ever expired; `None` if
    /// none ever did. Monotone, since sessions expire in last-use order.
    expired_upto: Option<Slot>,
    /// The membership the last chosen `Entry::Config` set (`None`: none was
    /// applied; the cluster's bootstrap membership governs). Kept here so a
    /// snapshot records the membership in force where the log it replaces
    /// ends, as the consensus core needs on restart.
    membership: Option<Membership>,
    /// Where replicas that joined through the cluster can be reached, by
    /// id (the bootstrap replicas' addresses are in their flags).
    addresses: BTreeMap<u32, MemberAddress>,
    /// Bit i: replica i was a member under some applied membership. An id
    /// that was and is no more is retired: its registration no longer
    /// answers for its address, and no id is ever given out twice.
    ever_members: u64,
    /// Leases by id, with the keys attached to each.
    leases: BTreeMap<u64, Lease>,
    /// The lease each leased key is attached to.
    key_lease: HashMap<String, u64>,
    /// The id the next lease gets (ids are never reused).
    next_lease_id: u64,
    /// The highest ballot of a leader that renewed every lease
    /// (`LeasesRenewed`): an expiry decided under a lower ballot is void.
    lease_ballot: Ballot,
    /// The keys the entry being applied changed, with their previous
    /// state (not replicated state).
    changed: Vec<Change>,
    /// Moves whenever the address book or the membership may have changed
    /// (not replicated state: a cue for the server to redial its peers).
    book_version: u64,
    /// Test only (the simulator's planted `dedup-expiry` bug): a client
    /// without a session always runs (and `precheck` lets it through),
    /// whatever its stamp, as before stamps existed. Here rather than in
    /// [`KvOptions`], whose struct literals a new field would break.
    #[doc(hidden)]
    pub ignore_request_stamps: bool,
}

impl PartialEq for KvStore {
    /// The replicated state; the use queue's stale entries are not.
    fn eq(&self, other: &Self) -> bool {
        self.options == other.options
            && self.db == other.db
            && self.applied_upto == other.applied_upto
            && self.sessions == other.sessions
            && self.expired_upto == other.expired_upto
            && self.membership == other.membership
            && self.addresses == other.addresses
            && self.ever_members == other.ever_members
            && self.leases == other.leases
            && self.next_lease_id == other.next_lease_id
            && self.lease_ballot == other.lease_ballot
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
            sessions: HashMap::new(),
            by_use: VecDeque::new(),
            expired_upto: None,
            membership: None,
            addresses: BTreeMap::new(),
            ever_members: 0,
            leases: BTreeMap::new(),
            key_lease: HashMap::new(),
            next_lease_id: 1,
            lease_ballot: Ballot::ZERO,
            changed: Vec::new(),
            book_version: 0,
            ignore_request_stamps: false,
        }
    }

    pub fn options(&self) -> KvOptions {
        self.options
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.db.get(key).map(|record| &record.value)
    }

    /// The metadata of `key`, if it exists.
    pub fn meta(&self, key: &str) -> Option<KeyMeta> {
        self.db.get(key).map(|record| record.meta)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &str, limit: usize) -> Vec<(String, Value)> {
        self.db
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, record)| (k.clone(), record.value.clone()))
            .collect()
    }

    /// The keys in `range` with their values and metadata, in key order.
    /// (What it yields borrows the store only.)
    pub fn range<'s, 'r>(
        &'s self,
        range: &'r KeyRange,
    ) -> impl Iterator<Item = (&'s str, &'s Value, KeyMeta)> + use<'s, 'r> {
        // Every key in a range is >= its start, so the scan starts there and
        // stops at the first key past it.
        self.db
            .range::<str, _>((Bound::Included(range.start()), Bound::Unbounded))
            .take_while(move |(key, _)| range.contains(key))
            .map(|(key, record)| (key.as_str(), &record.value, record.meta))
    }

    /// The whole database as a JSON object with sorted keys: the seed's `db`.
    pub fn db_json(&self) -> Value {
        Value::Object(
            self.db
                .iter()
                .map(|(k, record)| (k.clone(), record.value.clone()))
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

    /// Number of client sessions currently held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The highest last-use slot of any session that has expired, if any
    /// has: a request stamped at or before it without a session is refused.
    pub fn expired_upto(&self) -> Option<Slot> {
        self.expired_upto
    }

    /// If `id` was already applied here (so it is committed), the answer a
    /// retry gets, without going through the log again.
    pub fn answer_duplicate(&self, id: RequestId) -> Option<ApplyOutput> {
        let session = self.sessions.get(&id.client_id)?;
        if id.seq != session.last_seq {
            return None;
        }
        Some(ApplyOutput {
            slot: session.last_slot,
            duplicate: true,
            original_slot: Some(session.last_slot),
            result: session.outcome.replay(),
        })
    }

    /// The server's check before proposing request `id` stamped `since`
    /// (see [`crate::KvRequest::since`]): `Some` answer when this table
    /// already decides it without the log, `None` to propose it.
    ///
    /// * a retry of the client's last applied request: its cached answer
    ///   (as [`KvStore::answer_duplicate`]);
    /// * no session and `since <= expired_upto`: a `RequestExpired` error.
    ///   `expired_upto` only grows, so the log refuses it too, unless an
    ///   earlier request of this client that this replica has not applied
    ///   yet reopens its session first; that takes a stamp older than
    ///   sessions this replica has already expired, so a stamping replica
    ///   lagging further than sessions live. Not executing is safe either way.
    ///
    /// A client without a session whose seq is above 1 is left to the log
    /// (which refuses it once anything has expired): a lagging replica may
    /// just not have applied the client's previous request yet.
    ///
    /// Not applied through the log, so it refreshes nothing.
    pub fn precheck(&self, id: RequestId, since: Slot) -> Option<ApplyOutput> {
        if self.sessions.contains_key(&id.client_id) {
            return self.answer_duplicate(id);
        }
        match self.expired_upto {
            Some(upto) if upto >= since && !self.ignore_request_stamps => Some(expired_output(
                Slot(self.applied_upto.0.saturating_sub(1)),
                id,
            )),
            _ => None,
        }
    }

    /// Entries in the use queue, stale ones included.
    #[cfg(test)]
    pub(crate) fn use_queue_len(&self) -> usize {
        self.by_use.len()
    }

    /// The membership the last applied change set, if any was applied
    /// (also restored from snapshots).
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// The address book: replicas registered by the join flow, by id.
    pub fn member_addresses(&self) -> &BTreeMap<u32, MemberAddress> {
        &self.addresses
    }

    /// The leases, by id.
    pub fn leases(&self) -> &BTreeMap<u64, Lease> {
        &self.leases
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &str) -> Option<u64> {
        self.key_lease.get(key).copied()
    }

    /// The keys the last applied entry wrote or deleted, in the order it
    /// changed them, with their previous state (what a watch reports for
    /// its round).
    pub fn changes(&self) -> &[Change] {
        &self.changed
    }

    /// The revision of the entry being applied: its round plus one (so 0
    /// never names a write, as in etcd, where it means "no such key").
    /// `apply` asserts that it applies slot `applied_upto` and moves
    /// `applied_upto` past it only after the entry ran.
    fn applying(&self) -> u64 {
        self.applied_upto.0 + 1
    }

    /// Sets `key`, off any lease, updates its metadata and notes the
    /// change. Returns the previous state.
    fn set(&mut self, key: String, value: Value) -> Option<PreviousKv> {
        let lease = self.detach(&key);
        let revision = self.applying();
        let meta = match self.db.get(&key) {
            Some(old) => KeyMeta {
                create_revision: old.meta.create_revision,
                mod_revision: revision,
                version: old.meta.version.saturating_add(1),
            },
            None => KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        };
        let previous = self
            .db
            .insert(key.clone(), Record { value, meta })
            .map(|old| PreviousKv {
                value: old.value,
                meta: old.meta,
                lease,
            });
        self.changed.push(Change {
            key,
            previous: previous.clone(),
        });
        previous
    }

    /// Sets `key` and attaches it to `lease`, which must exist.
    fn set_leased(&mut self, key: String, value: Value, lease: u64) -> Option<PreviousKv> {
        let previous = self.set(key.clone(), value);
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.clone());
        }
        self.key_lease.insert(key, lease);
        previous
    }

    /// Removes `key` (with its metadata), off any lease; notes the change
    /// if it existed. Returns the previous state.
    fn unset(&mut self, key: &str) -> Option<PreviousKv> {
        let lease = self.detach(key);
        let old = self.db.remove(key)?;
        let previous = PreviousKv {
            value: old.value,
            meta: old.meta,
            lease,
        };
        self.changed.push(Change {
            key: key.to_owned(),
            previous: Some(previous.clone()),
        });
        Some(previous)
    }

    /// Takes `key` off its lease; returns the lease it was on.
    fn detach(&mut self, key: &str) -> Option<u64> {
        let lease = self.key_lease.remove(key)?;
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
        Some(lease)
    }

    /// Ends `lease` and deletes its keys.
    fn revoke(&mut self, lease: u64) -> Result<ApplyResult, ApplyResult> {
        let Some(gone) = self.leases.remove(&lease) else {
            return Err(Self::lease_not_found(lease));
        };
        let mut deleted = Vec::new();
        for key in gone.keys {
            if self.unset(&key).is_some() {
                deleted.push(Value::from(key));
            }
        }
        Ok(ok_report([("deleted", Value::Array(deleted))]))
    }

    fn lease_not_found(lease: u64) -> ApplyResult {
        ApplyResult::error(
            ErrorKind::LeaseNotFound,
            format!("lease {lease:x} does not exist (never granted, revoked, or expired)"),
        )
    }

    /// The ballot of the last leader that renewed every lease (see
    /// [`KvCommand::LeasesRenewed`]).
    pub fn lease_ballot(&self) -> Ballot {
        self.lease_ballot
    }

    /// Changes whenever the address book or the membership may have (see
    /// the field).
    pub fn book_version(&self) -> u64 {
        self.book_version
    }

    /// Was `id` a member once and is no more (so it never comes back)?
    pub fn is_retired(&self, id: u32) -> bool {
        id <= MAX_NODE_ID
            && self.ever_members & (1 << id) != 0
            && !self
                .membership
                .as_ref()
                .is_some_and(|m| m.is_member(paxlog_core::NodeId(id)))
    }

    /// Gives the replica at `peer_addr` its id: the live registration of
    /// that address if there is one, else the next id never used.
    fn register_member(
        &mut self,
        peer_addr: String,
        http_addr: Option<String>,
        min_id: u32,
    ) -> Result<ApplyResult, ApplyResult> {
        let invalid = |why: String| ApplyResult::error(ErrorKind::InvalidValue, why);
        check_member_addr(&peer_addr).map_err(invalid)?;
        if let Some(http) = &http_addr {
            check_member_addr(http).map_err(invalid)?;
        }
        let report = |id: u32, existed: bool| {
            ok_report([("id", Value::from(id)), ("existed", Value::Bool(existed))])
        };
        let live = self
            .addresses
            .iter()
            .find(|(id, a)| a.peer_addr == peer_addr && !self.is_retired(**id))
            .map(|(id, _)| *id);
        self.book_version += 1;
        if let Some(id) = live {
            if let (Some(http), Some(entry)) = (http_addr, self.addresses.get_mut(&id)) {
                entry.http_addr = Some(http);
            }
            return Ok(report(id, true));
        }
        let members = self.membership.as_ref().map_or(0, |m| m.members_mask()) | self.ever_members;
        let above_members = 64 - members.leading_zeros();
        let above_book = self.addresses.keys().next_back().map_or(0, |id| id + 1);
        let id = min_id.max(above_members).max(above_book);
        if id > MAX_NODE_ID {
            return Err(ApplyResult::error(
                ErrorKind::TooLarge,
                format!(
                    "no replica id is left: ids are never reused and a cluster can have had at most {} members",
                    MAX_NODE_ID + 1
                ),
            ));
        }
        self.addresses.insert(
            id,
            MemberAddress {
                peer_addr,
                http_addr,
            },
        );
        Ok(report(id, false))
    }

    /// The last request seq applied for `client_id`, if its session exists.
    pub fn last_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.last_seq)
    }

    /// Is `(used, client)` the current entry of a session (not stale)?
    fn is_current(&self, used: Slot, client: u64) -> bool {
        self.sessions
            .get(&client)
            .is_some_and(|s| s.last_used_slot == used)
    }

    /// Pops the least recently used entry; if it is current, its session
    /// expires.
    fn pop_least_recent(&mut self) {
        let Some((used, client)) = self.by_use.pop_front() else {
            return;
        };
        if self.is_current(used, client) {
            self.sessions.remove(&client);
            // The queue is in slot order, so `max` never lowers it; it only
            // guards against an inconsistent restored image.
            self.expired_upto = Some(self.expired_upto.map_or(used, |e| e.max(used)));
        }
    }

    /// Expires sessions idle for more than `session_expiry_rounds` before
    /// `slot`, then the least recently used ones beyond `max_sessions`.
    fn expire_sessions(&mut self, slot: Slot) {
        let rounds = self.options.session_expiry_rounds;
        while let Some(&(used, client)) = self.by_use.front() {
            if self.is_current(used, client) && used.0.saturating_add(rounds) >= slot.0 {
                break;
            }
            self.pop_least_recent();
        }
        while self.sessions.len() > self.options.max_sessions && !self.by_use.is_empty() {
            self.pop_least_recent();
        }
    }

    /// Records that `client`'s session (already updated to `slot`) was used.
    fn note_use(&mut self, slot: Slot, client: u64) {
        self.by_use.push_back((slot, client));
        // A busy client leaves a stale entry per use; dropping them when they
        // outnumber the sessions keeps the queue O(sessions), at O(1)
        // amortised cost.
        if self.by_use.len() > 2 * self.sessions.len() + USE_QUEUE_SLACK {
            let sessions = &self.sessions;
            self.by_use
                .retain(|(used, c)| sessions.get(c).is_some_and(|s| s.last_used_slot == *used));
        }
    }

    /// Applies request `id` at `slot`.
    ///
    /// The rule, for a payload stamped `since`:
    /// * the client has a session: `seq == last_seq` is a duplicate (answered
    ///   from the session), `seq < last_seq` is `Stale`, a higher seq runs;
    ///   every case refreshes the session;
    /// * no session, nothing ever expired (`expired_upto == None`): it runs
    ///   and opens a session;
    /// * no session, `seq > 1` or `since <= expired_upto`: `RequestExpired`,
    ///   not executed;
    /// * otherwise (no session, `seq <= 1`, `since > expired_upto`): it runs.
    ///
    /// Why this never runs a request twice: `since` is the accepting
    /// replica's `applied_upto` before the request was first proposed, so
    /// any execution of it happened at a slot `s >= since`, and left a
    /// session with `last_used_slot >= s` that only grows while it lives. If
    /// that session is gone now, it expired, and since sessions expire in
    /// last-use order, `expired_upto >= s >= since`. So no session with
    /// `expired_upto < since` (or `None`) means it never ran. If a session
    /// exists, `seq <= last_seq` never runs, and a higher seq did not run
    /// under it (running raises `last_seq`, which never falls); nor under an
    /// earlier, expired session of this client, because once anything has
    /// expired a session only opens at seq 1 (this assumes a client id is
    /// never reused by a new client restarting at seq 1). The stamp must be
    /// the first attempt's: a retry stamped afresh after its session expired
    /// looks new.
    fn apply_command(&mut self, slot: Slot, id: RequestId, payload: &[u8]) -> ApplyOutput {
        // An undecodable payload has no stamp: `since = 0`, the most
        // conservative; running it changes nothing anyway.
        let (since, command) = match KvRequest::decode(payload) {
            Ok(request) => (request.since, Ok(request.command)),
            Err(e) => (Slot::ZERO, Err(e)),
        };
        if let Some(session) = self.sessions.get_mut(&id.client_id) {
            if id.seq <= session.last_seq {
                session.last_used_slot = slot;
                let out = if id.seq == session.last_seq {
                    ApplyOutput {
                        slot,
                        duplicate: true,
                        original_slot: Some(session.last_slot),
                        result: session.outcome.replay(),
                    }
                } else {
                    ApplyOutput {
                        slot,
                        duplicate: true,
                        original_slot: None,
                        result: ApplyResult::error(
                            ErrorKind::Stale,
                            format!(
                                "request {id} is older than this client's last applied request (seq {})",
                                session.last_seq
                            ),
                        ),
                    }
                };
                self.note_use(slot, id.client_id);
                return out;
            }
        } else if !self.ignore_request_stamps
            && self
                .expired_upto
                .is_some_and(|upto| id.seq > 1 || since <= upto)
        {
            return expired_output(slot, id);
        }
        let result = match command {
            Ok(cmd) => self.execute_command(cmd).unwrap_or_else(|e| e),
            Err(e) => failed(e),
        };
        self.sessions.insert(
            id.client_id,
            Session {
                last_seq: id.seq,
                last_slot: slot,
                last_used_slot: slot,
                outcome: Outcome::of(&result),
            },
        );
        self.note_use(slot, id.client_id);
        // A new session may exceed `max_sessions`; this one is the most
        // recently used, so another one goes (unless the limit is 0).
        self.expire_sessions(slot);
        ApplyOutput {
            slot,
            duplicate: false,
            original_slot: None,
            result,
        }
    }

    /// Runs one command. Errors leave the database untouched.
    fn execute_command(&mut self, cmd: KvCommand) -> Result<ApplyResult, ApplyResult> {
        match cmd {
            KvCommand::Exec { source } => {
                let stmt = check_statement(&source).map_err(failed)?;
                self.execute_statement(stmt)
            }
            KvCommand::Put { key, value_json } => {
                validate_key(&key).map_err(failed)?;
                let value = parse_json_value(&value_json).map_err(failed)?;
                let previous = self.set(key, value);
                Ok(previous_report(previous.map(|p| p.value)))
            }
            KvCommand::Delete { key } => {
                validate_key(&key).map_err(failed)?;
                let previous = self.unset(&key);
                Ok(previous_report(previous.map(|p| p.value)))
            }
            KvCommand::RegisterMember {
                peer_addr,
                http_addr,
                min_id,
            } => self.register_member(peer_addr, http_addr, min_id),
            KvCommand::LeaseGrant { ttl_ms } => {
                crate::command::check_lease_ttl(ttl_ms).map_err(failed)?;
                let id = self.next_lease_id;
                self.next_lease_id += 1;
                self.leases.insert(
                    id,
                    Lease {
                        ttl_ms,
                        keys: Default::default(),
                    },
                );
                Ok(ok_report([
                    ("lease", Value::from(id)),
                    ("ttl_ms", Value::from(ttl_ms)),
                ]))
            }
            KvCommand::PutLeased {
                key,
                value_json,
                lease,
            } => {
                validate_key(&key).map_err(failed)?;
                let value = parse_json_value(&value_json).map_err(failed)?;
                if !self.leases.contains_key(&lease) {
                    return Err(Self::lease_not_found(lease));
                }
                let previous = self.set_leased(key, value, lease);
                Ok(previous_report(previous.map(|p| p.value)))
            }
            KvCommand::LeasesRenewed { ballot } => {
                self.lease_ballot = self.lease_ballot.max(ballot);
                Ok(ApplyResult::ok(None))
            }
            KvCommand::LeaseExpire { lease, ballot } => {
                // Decided by a leader that a later one has replaced: the
                // later one gave every lease a new term (and may have
                // taken keep-alives since), so the expiry is void.
                if ballot < self.lease_ballot {
                    return Ok(ok_report([("superseded", Value::Bool(true))]));
                }
                self.revoke(lease)
            }
            KvCommand::LeaseRevoke { lease } => self.revoke(lease),
            KvCommand::Txn(txn) => self.execute_txn(txn),
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
                let current = self.get(&key);
                let succeeded = match (&expected, current) {
                    (None, None) => true,
                    (Some(e), Some(c)) => e == c,
                    _ => false,
                };
                if succeeded {
                    self.set(key.clone(), new);
                }
                Ok(ok_report([
                    ("succeeded", Value::Bool(succeeded)),
                    ("current", self.get(&key).cloned().unwrap_or(Value::Null)),
                ]))
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
                    let current = self.get(&name).ok_or_else(|| name_error(&name))?;
                    let sum = add(current, &value)?;
                    validate_value(&sum).map_err(failed)?;
                    Ok(())
                }
                Statement::Delete { name } => {
                    self.get(&name).ok_or_else(|| name_error(&name))?;
                    Ok(())
                }
            },
            other => other.validate().map_err(failed),
        }
    }

    fn execute_statement(&mut self, stmt: Statement) -> Result<ApplyResult, ApplyResult> {
        match stmt {
            Statement::Assign { name, value } => {
                self.set(name, value);
            }
            Statement::AddAssign { name, value } => {
                let current = self.get(&name).ok_or_else(|| name_error(&name))?;
                let sum = add(current, &value)?;
                validate_value(&sum).map_err(failed)?;
                self.set(name, sum);
            }
            Statement::Delete { name } => {
                self.unset(&name).ok_or_else(|| name_error(&name))?;
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
        KvError::TooLarge { .. } | KvError::TooMany { .. } => ErrorKind::TooLarge,
        KvError::Decode(_) | KvError::SnapshotVersion(_) | KvError::CorruptSnapshot(_) => {
            ErrorKind::BadPayload
        }
    };
    ApplyResult::error(kind, e.to_string())
}

/// The refusal of a request whose session may have expired.
fn expired_output(slot: Slot, id: RequestId) -> ApplyOutput {
    ApplyOutput {
        slot,
        duplicate: true,
        original_slot: None,
        result: ApplyResult::error(
            ErrorKind::RequestExpired,
            format!(
                "request {id} was not executed: the session of client {:x} has expired, so \
                 whether this request (or an earlier one of this client) already ran can no \
                 longer be told; continue with a new client id",
                id.client_id
            ),
        ),
    }
}

fn name_error(name: &str) -> ApplyResult {
    ApplyResult::error(
        ErrorKind::NameError,
        format!("name '{name}' is not defined"),
    )
}

fn previous_report(previous: Option<Value>) -> ApplyResult {
    ok_report([
        ("existed", Value::Bool(previous.is_some())),
        ("previous", previous.unwrap_or(Value::Null)),
    ])
}

/// A successful command's answer: an object of these fields.
fn ok_report<const N: usize>(fields: [(&str, Value); N]) -> ApplyResult {
    let report: Map<String, Value> = fields
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
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
    expired_upto: Option<u64>,
    entries: Vec<(&'a str, String, KeyMeta)>,
    sessions: Vec<SnapshotSession>,
    membership: Option<&'a Membership>,
    addresses: Vec<(u32, &'a MemberAddress)>,
    ever_members: u64,
    leases: Vec<(u64, &'a Lease)>,
    next_lease_id: u64,
    lease_ballot: Ballot,
}

#[derive(Deserialize)]
struct SnapshotIn {
    applied_upto: u64,
    expired_upto: Option<u64>,
    entries: Vec<(String, String, KeyMeta)>,
    sessions: Vec<SnapshotSession>,
    membership: Option<Membership>,
    addresses: Vec<(u32, MemberAddress)>,
    ever_members: u64,
    leases: Vec<(u64, Lease)>,
    next_lease_id: u64,
    lease_ballot: Ballot,
}

/// A version 7 image: as version 8 without the lease term.
#[derive(Deserialize)]
struct SnapshotInV7 {
    applied_upto: u64,
    expired_upto: Option<u64>,
    entries: Vec<(String, String, KeyMeta)>,
    sessions: Vec<SnapshotSession>,
    membership: Option<Membership>,
    addresses: Vec<(u32, MemberAddress)>,
    ever_members: u64,
    leases: Vec<(u64, Lease)>,
    next_lease_id: u64,
}

impl SnapshotInV7 {
    /// No leader has renewed the leases yet.
    fn upgrade(self) -> SnapshotIn {
        SnapshotIn {
            applied_upto: self.applied_upto,
            expired_upto: self.expired_upto,
            entries: self.entries,
            sessions: self.sessions,
            membership: self.membership,
            addresses: self.addresses,
            ever_members: self.ever_members,
            leases: self.leases,
            next_lease_id: self.next_lease_id,
            lease_ballot: Ballot::ZERO,
        }
    }
}

/// A version 6 image: as version 7 without the keys' metadata.
#[derive(Deserialize)]
struct SnapshotInV6 {
    applied_upto: u64,
    expired_upto: Option<u64>,
    entries: Vec<(String, String)>,
    sessions: Vec<SnapshotSession>,
    membership: Option<Membership>,
    addresses: Vec<(u32, MemberAddress)>,
    ever_members: u64,
    leases: Vec<(u64, Lease)>,
    next_lease_id: u64,
}

impl SnapshotInV6 {
    /// The history is unknown: every key counts as created by the last
    /// applied round (revision `applied_upto`), the latest it can have been
    /// written (a round not yet applied is a later write's).
    fn upgrade(self) -> SnapshotInV7 {
        let meta = KeyMeta {
            create_revision: self.applied_upto,
            mod_revision: self.applied_upto,
            version: 1,
        };
        SnapshotInV7 {
            applied_upto: self.applied_upto,
            expired_upto: self.expired_upto,
            entries: self
                .entries
                .into_iter()
                .map(|(key, value)| (key, value, meta))
                .collect(),
            sessions: self.sessions,
            membership: self.membership,
            addresses: self.addresses,
            ever_members: self.ever_members,
            leases: self.leases,
            next_lease_id: self.next_lease_id,
        }
    }
}

/// A version 5 image: as version 6 without the leases.
#[derive(Deserialize)]
struct SnapshotInV5 {
    applied_upto: u64,
    expired_upto: Option<u64>,
    entries: Vec<(String, String)>,
    sessions: Vec<SnapshotSession>,
    membership: Option<Membership>,
    addresses: Vec<(u32, MemberAddress)>,
    ever_members: u64,
}

impl SnapshotInV5 {
    fn upgrade(self) -> SnapshotInV6 {
        SnapshotInV6 {
            applied_upto: self.applied_upto,
            expired_upto: self.expired_upto,
            entries: self.entries,
            sessions: self.sessions,
            membership: self.membership,
            addresses: self.addresses,
            ever_members: self.ever_members,
            leases: Vec::new(),
            next_lease_id: 1,
        }
    }
}

/// A version 4 image: as version 5 without the address book.
#[derive(Deserialize)]
struct SnapshotInV4 {
    applied_upto: u64,
    expired_upto: Option<u64>,
    entries: Vec<(String, String)>,
    sessions: Vec<SnapshotSession>,
    membership: Option<Membership>,
}

impl SnapshotInV4 {
    fn upgrade(self) -> SnapshotInV5 {
        // The members of the membership in force were members; earlier
        // ones are unknown, which only matters to ids in the book (none).
        let ever_members = self.membership.as_ref().map_or(0, |m| m.members_mask());
        SnapshotInV5 {
            applied_upto: self.applied_upto,
            expired_upto: self.expired_upto,
            entries: self.entries,
            sessions: self.sessions,
            membership: self.membership,
            addresses: Vec::new(),
            ever_members,
        }
    }
}

/// A version 3 image: as version 4 without the membership.
#[derive(Deserialize)]
struct SnapshotInV3 {
    applied_upto: u64,
    expired_upto: Option<u64>,
    entries: Vec<(String, String)>,
    sessions: Vec<SnapshotSession>,
}

impl SnapshotInV3 {
    fn upgrade(self) -> SnapshotInV4 {
        SnapshotInV4 {
            applied_upto: self.applied_upto,
            expired_upto: self.expired_upto,
            entries: self.entries,
            sessions: self.sessions,
            membership: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotSession {
    client_id: u64,
    last_seq: u64,
    last_slot: u64,
    last_used_slot: u64,
    outcome: Outcome,
}

/// A version 2 image: a dedup record per client, no use times.
#[derive(Deserialize)]
struct SnapshotInV2 {
    applied_upto: u64,
    entries: Vec<(String, String)>,
    clients: Vec<SnapshotClientV2>,
}

#[derive(Deserialize)]
struct SnapshotClientV2 {
    client_id: u64,
    last_seq: u64,
    last_slot: u64,
    outcome: Outcome,
}

impl SnapshotInV2 {
    /// Records become sessions last used where they ran. Version 2 dropped
    /// records `window` slots after their last use, and `expired_upto: None`
    /// would let a retry of a dropped one run again; so everything last
    /// used before the oldest kept record (or before the last applied round,
    /// if none was kept) counts as expired. Every replica restoring the
    /// image derives the same value.
    fn upgrade(self) -> SnapshotInV3 {
        let oldest_kept = self.clients.iter().map(|c| c.last_slot).min();
        let last_applied = self.applied_upto.checked_sub(1);
        let expired_upto = match (oldest_kept, last_applied) {
            (Some(kept), Some(last)) => kept.min(last).checked_sub(1),
            (None, Some(last)) => last.checked_sub(1),
            (_, None) => None,
        };
        SnapshotInV3 {
            applied_upto: self.applied_upto,
            expired_upto,
            entries: self.entries,
            sessions: self
                .clients
                .into_iter()
                .map(|c| SnapshotSession {
                    client_id: c.client_id,
                    last_seq: c.last_seq,
                    last_slot: c.last_slot,
                    last_used_slot: c.last_slot,
                    outcome: c.outcome,
                })
                .collect(),
        }
    }
}

fn decode_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, KvError> {
    let (body, tail) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| corrupt(format!("undecodable body: {e}")))?;
    if !tail.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", tail.len())));
    }
    Ok(body)
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
        self.expire_sessions(slot);
        self.changed.clear();
        let out = match entry {
            // A membership change is the consensus layer's: the store's data
            // and sessions do not change.
            Entry::Noop => ApplyOutput {
                slot,
                duplicate: false,
                original_slot: None,
                result: ApplyResult::ok(None),
            },
            Entry::Config { membership, .. } => {
                self.ever_members |= membership.members_mask();
                self.book_version += 1;
                self.membership = Some(membership.clone());
                ApplyOutput {
                    slot,
                    duplicate: false,
                    original_slot: None,
                    result: ApplyResult::ok(None),
                }
            }
            Entry::Command { id, payload } => self.apply_command(slot, *id, payload),
        };
        self.applied_upto = slot.next();
        out
    }

    fn applied_upto(&self) -> Slot {
        self.applied_upto
    }

    /// `[SNAPSHOT_VERSION]` followed by postcard of: applied_upto,
    /// expired_upto, the db entries in key order as (key, compact JSON text,
    /// (create_revision, mod_revision, version)), the sessions in client-id order
    /// as (client_id, last_seq, last_slot, last_used_slot, outcome), the
    /// membership, the address book, ever_members, the leases and
    /// next_lease_id.
    fn snapshot(&self) -> Vec<u8> {
        let body = SnapshotOut {
            applied_upto: self.applied_upto.0,
            expired_upto: self.expired_upto.map(|s| s.0),
            entries: self
                .db
                .iter()
                .map(|(k, record)| (k.as_str(), record.value.to_string(), record.meta))
                .collect(),
            sessions: {
                let mut sessions: Vec<SnapshotSession> = self
                    .sessions
                    .iter()
                    .map(|(&client_id, s)| SnapshotSession {
                        client_id,
                        last_seq: s.last_seq,
                        last_slot: s.last_slot.0,
                        last_used_slot: s.last_used_slot.0,
                        outcome: s.outcome,
                    })
                    .collect();
                sessions.sort_unstable_by_key(|s| s.client_id);
                sessions
            },
            membership: self.membership.as_ref(),
            addresses: self.addresses.iter().map(|(id, a)| (*id, a)).collect(),
            ever_members: self.ever_members,
            leases: self.leases.iter().map(|(id, l)| (*id, l)).collect(),
            next_lease_id: self.next_lease_id,
            lease_ballot: self.lease_ballot,
        };
        let mut out = vec![SNAPSHOT_VERSION];
        // Serialising into a Vec cannot fail.
        out.extend(postcard::to_allocvec(&body).unwrap_or_default());
        out
    }

    /// Restores a current image, or a version 2 one (see
    /// [`SnapshotInV2::upgrade`]). On error the state is unchanged.
    fn restore(&mut self, image: &[u8]) -> Result<(), KvError> {
        let (&version, rest) = image.split_first().ok_or_else(|| corrupt("empty image"))?;
        let body = match version {
            SNAPSHOT_VERSION => decode_body::<SnapshotIn>(rest)?,
            SNAPSHOT_VERSION_V7 => decode_body::<SnapshotInV7>(rest)?.upgrade(),
            // Older images step up one version at a time.
            SNAPSHOT_VERSION_V6 => decode_body::<SnapshotInV6>(rest)?.upgrade().upgrade(),
            SNAPSHOT_VERSION_V5 => decode_body::<SnapshotInV5>(rest)?
                .upgrade()
                .upgrade()
                .upgrade(),
            SNAPSHOT_VERSION_V4 => decode_body::<SnapshotInV4>(rest)?
                .upgrade()
                .upgrade()
                .upgrade()
                .upgrade(),
            SNAPSHOT_VERSION_V3 => decode_body::<SnapshotInV3>(rest)?
                .upgrade()
                .upgrade()
                .upgrade()
                .upgrade()
                .upgrade(),
            SNAPSHOT_VERSION_V2 => decode_body::<SnapshotInV2>(rest)?
                .upgrade()
                .upgrade()
                .upgrade()
                .upgrade()
                .upgrade()
                .upgrade(),
            other => return Err(KvError::SnapshotVersion(other)),
        };
        let applied_upto = Slot(body.applied_upto);
        let expired_upto = body.expired_upto.map(Slot);
        if expired_upto.is_some_and(|e| e >= applied_upto) {
            return Err(corrupt(format!(
                "sessions expired up to slot {} >= applied_upto {applied_upto}",
                body.expired_upto.unwrap_or_default()
            )));
        }

        let mut db = BTreeMap::new();
        for (key, text, meta) in body.entries {
            validate_key(&key).map_err(|e| corrupt(e.to_string()))?;
            if db
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= key)
            {
                return Err(corrupt(
                    "db entries are not in strictly increasing key order",
                ));
            }
            // Written once at least, created no later than last written,
            // and both at rounds already applied (revision = round + 1).
            if meta.version == 0
                || meta.create_revision == 0
                || meta.create_revision > meta.mod_revision
                || meta.mod_revision > applied_upto.0
            {
                return Err(corrupt(format!(
                    "key {key:?}: impossible history {meta:?} with applied_upto {applied_upto}"
                )));
            }
            let value =
                parse_json_value(&text).map_err(|e| corrupt(format!("key {key:?}: {e}")))?;
            db.insert(key, Record { value, meta });
        }

        let mut sessions = HashMap::with_capacity(body.sessions.len());
        let mut by_use = Vec::with_capacity(body.sessions.len());
        let mut previous_client = None;
        for s in body.sessions {
            if previous_client.is_some_and(|last| last >= s.client_id) {
                return Err(corrupt(
                    "sessions are not in strictly increasing client order",
                ));
            }
            previous_client = Some(s.client_id);
            // Ran no later than last used, which is before applied_upto and
            // after every expired session (sessions expire in use order).
            if s.last_slot > s.last_used_slot
                || s.last_used_slot >= applied_upto.0
                || expired_upto.is_some_and(|e| s.last_used_slot <= e.0)
            {
                return Err(corrupt(format!(
                    "client {:x}: ran at slot {}, last used at slot {}, with applied_upto \
                     {applied_upto} and sessions expired up to {expired_upto:?}",
                    s.client_id, s.last_slot, s.last_used_slot
                )));
            }
            by_use.push((Slot(s.last_used_slot), s.client_id));
            sessions.insert(
                s.client_id,
                Session {
                    last_seq: s.last_seq,
                    last_slot: Slot(s.last_slot),
                    last_used_slot: Slot(s.last_used_slot),
                    outcome: s.outcome,
                },
            );
        }
        by_use.sort_unstable();
        // One entry is applied per slot, so no two sessions share a last use;
        // the expiry order is then the same on every replica.
        if let Some(w) = by_use.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(corrupt(format!(
                "clients {:x} and {:x} were both last used at slot {}",
                w[0].1, w[1].1, w[0].0
            )));
        }

        let mut addresses = BTreeMap::new();
        for (id, address) in body.addresses {
            if id > MAX_NODE_ID || addresses.contains_key(&id) {
                return Err(corrupt(format!("address book: bad or repeated id {id}")));
            }
            check_member_addr(&address.peer_addr)
                .map_err(|e| corrupt(format!("address book, replica {id}: {e}")))?;
            if let Some(http) = &address.http_addr {
                check_member_addr(http)
                    .map_err(|e| corrupt(format!("address book, replica {id}: {e}")))?;
            }
            addresses.insert(id, address);
        }

        let mut leases = BTreeMap::new();
        let mut key_lease = HashMap::new();
        for (id, lease) in body.leases {
            if id == 0 || id >= body.next_lease_id || leases.contains_key(&id) {
                return Err(corrupt(format!(
                    "lease {id:x}: a repeated id, or not below the next id {:x}",
                    body.next_lease_id
                )));
            }
            for key in &lease.keys {
                validate_key(key).map_err(|e| corrupt(format!("lease {id:x}: {e}")))?;
                if key_lease.insert(key.clone(), id).is_some() {
                    return Err(corrupt(format!("key {key:?} is on two leases")));
                }
            }
            leases.insert(id, lease);
        }

        self.db = db;
        self.leases = leases;
        self.lease_ballot = body.lease_ballot;
        self.key_lease = key_lease;
        self.next_lease_id = body.next_lease_id.max(1);
        self.addresses = addresses;
        self.ever_members = body.ever_members;
        self.book_version += 1;
        self.applied_upto = applied_upto;
        self.sessions = sessions;
        self.by_use = by_use.into();
        self.expired_upto = expired_upto;
        self.membership = body.membership;
        Ok(())
    }
}
