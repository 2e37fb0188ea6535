//! What HTTP handlers send the driver and what it answers: one reply
//! type per request, and the ways a request can fail (the HTTP layer maps
//! them to status codes).

use super::*;

/// A reply channel for one request, typed by what it answers.
pub type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

/// Why the driver could not answer a request. The HTTP layer picks the
/// status code.
#[derive(Clone, Debug)]
pub enum DriverError {
    /// Too many requests wait at this replica.
    Busy,
    /// A request with this id is already in flight here.
    InFlight(RequestId),
    /// The command cannot run against the current state: nothing written.
    Rejected { kind: ErrorKind, message: String },
    /// No answer in time (no quorum, a round not applied yet) or the
    /// replica is stopping; `current_round` says how far it is.
    Unavailable {
        message: String,
        current_round: Option<u64>,
    },
    /// Only the leader does this; `leader` is the one this replica knows.
    NotLeader { leader: Option<u32> },
    /// The request cannot be done as asked (a membership change that may
    /// not follow the current one, say).
    Invalid(String),
    /// Not now: something else is in progress (another membership change).
    Conflict(String),
    /// What was asked for is no longer kept (a watch from a round whose
    /// changes were dropped from the history).
    Gone(String),
}

impl DriverError {
    pub(crate) fn unavailable(message: impl Into<String>) -> DriverError {
        DriverError::Unavailable {
            message: message.into(),
            current_round: None,
        }
    }
}

pub enum DriverInput {
    Write(WriteRequest),
    Read(ReadRequest),
    ChangeMembership(MembershipRequest),
    Watch(WatchRequest),
    Shutdown,
}

/// One replica's change of role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberAction {
    /// Add a replica as a learner (it receives the log, votes in nothing).
    Add,
    /// Make a learner a voter (once it has caught up).
    Promote,
    /// Make a voter a learner.
    Demote,
    /// Take a replica out of the cluster (a voter or a learner).
    Remove,
}

pub struct MembershipRequest {
    pub action: MemberAction,
    pub id: u32,
    pub reply: Reply<MembersReport>,
    pub deadline: Instant,
}

/// The membership in force, as this replica knows it.
#[derive(Clone, Debug, Serialize)]
pub struct MembersReport {
    pub epoch: u64,
    /// The round the change that set it was chosen at (`None`: the
    /// bootstrap membership).
    pub round: Option<u64>,
    pub voters: Vec<u32>,
    pub learners: Vec<u32>,
    pub leader: Option<u32>,
    /// Where each known replica can be reached (this one included).
    pub addresses: BTreeMap<u32, paxlog_kv::MemberAddress>,
    /// Where each replica serves etcd's gRPC API, as far as known.
    pub grpc_addresses: BTreeMap<u32, String>,
}

pub struct WriteRequest {
    pub command: KvCommand,
    pub id: RequestId,
    pub reply: Reply<ApplyOutput>,
    pub deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed through the leader with a quorum round (read index).
    Linearizable,
    /// This replica's state as it is, possibly stale.
    Local,
    /// Wait until this replica has applied the given round.
    MinRound(u64),
}

/// A read, with the channel its typed answer goes to.
pub enum Query {
    Get {
        key: String,
        reply: Reply<KeyValue>,
    },
    Scan {
        prefix: String,
        limit: usize,
        reply: Reply<Items>,
    },
    Db {
        reply: Reply<DbImage>,
    },
    Current {
        reply: Reply<u64>,
    },
    Fetch {
        round: u64,
        reply: Reply<Fetched>,
    },
    Status {
        reply: Reply<Box<NodeStatus>>,
    },
    /// A lease's keep-alive or its state: answered after the read barrier,
    /// so a revoke a new leader inherited is applied first.
    Lease {
        action: LeaseAction,
        reply: Reply<LeaseInfo>,
    },
    /// Runs `run` on this replica's state once the read's consistency is
    /// met (or with the reason it cannot be): front ends with their own
    /// data shapes (the etcd API) read through it. It runs on the driver's
    /// thread, so it must be quick and send its answer without waiting.
    Inspect {
        run: Inspector,
    },
    /// Chosen entries from `from` (default: the last `limit` chosen rounds).
    Log {
        from: Option<u64>,
        limit: usize,
        reply: Reply<LogPage>,
    },
}

impl Query {
    /// Does the answer depend on the database (so consistency applies)?
    pub(super) fn reads_state(&self) -> bool {
        matches!(
            self,
            Query::Get { .. }
                | Query::Scan { .. }
                | Query::Db { .. }
                | Query::Lease { .. }
                | Query::Inspect { .. }
        )
    }

    pub(super) fn fail(self, error: DriverError) {
        match self {
            Query::Get { reply, .. } => drop(reply.send(Err(error))),
            Query::Scan { reply, .. } => drop(reply.send(Err(error))),
            Query::Db { reply } => drop(reply.send(Err(error))),
            Query::Current { reply } => drop(reply.send(Err(error))),
            Query::Fetch { reply, .. } => drop(reply.send(Err(error))),
            Query::Status { reply } => drop(reply.send(Err(error))),
            Query::Log { reply, .. } => drop(reply.send(Err(error))),
            Query::Lease { reply, .. } => drop(reply.send(Err(error))),
            Query::Inspect { run } => run(Err(error)),
        }
    }
}

/// What a [`Query::Inspect`] sees.
pub struct StoreView<'a> {
    pub kv: &'a KvStore,
    /// The changes kept for watches (and reads at past revisions).
    pub history: &'a mut WatchHub,
    /// The highest ballot this replica promised: its count is the etcd
    /// API's term.
    pub promised: Ballot,
}

pub type Inspector = Box<dyn FnOnce(Result<StoreView<'_>, DriverError>) + Send>;

pub struct ReadRequest {
    pub query: Query,
    pub consistency: Consistency,
    pub deadline: Instant,
}

pub struct KeyValue {
    pub value: Option<Value>,
    pub current_round: u64,
}

pub struct Items {
    pub items: Vec<(String, Value)>,
    pub current_round: u64,
}

pub struct DbImage {
    pub current_round: u64,
    pub db: Value,
}

#[derive(Serialize)]
pub struct LogEntry {
    pub round: u64,
    /// The command as text; `None` for a no-op.
    pub command: Option<String>,
}

#[derive(Serialize)]
pub struct LogPage {
    pub log_start: u64,
    pub chosen_round: u64,
    pub current_round: u64,
    pub entries: Vec<LogEntry>,
}

pub enum Fetched {
    Value {
        round_id: u64,
        value: Option<String>,
    },
    NotYet {
        current_round: u64,
    },
    Compacted {
        log_start: u64,
    },
}

#[derive(Serialize)]
pub struct PeerInfo {
    pub id: u32,
    pub address: String,
    pub reachable: bool,
    pub last_heard_ms_ago: Option<u64>,
    pub chosen_round: u64,
    pub last_error: Option<String>,
}

#[derive(Serialize)]
pub struct NodeStatus {
    pub id: u32,
    pub role: Role,
    pub leader: Option<u32>,
    pub promised_ballot: String,
    pub leader_ballot: Option<String>,
    pub current_round: u64,
    pub applied_round: u64,
    pub chosen_round: u64,
    pub log_start: u64,
    pub next_round: Option<u64>,
    pub pending_writes: usize,
    pub last_snapshot_round: u64,
    /// Set while this replica recovers state it may have forgotten and votes
    /// in nothing: what it waits for.
    pub recovering: Option<paxlog_core::RecoveryStatus>,
    /// Peers whose messages are refused: they reported another value for a
    /// round this replica knows is chosen.
    pub peer_conflicts: Vec<PeerConflictInfo>,
    pub peers: Vec<PeerInfo>,
    pub membership: MembersReport,
}

#[derive(Clone, Serialize)]
pub struct PeerConflictInfo {
    pub peer: u32,
    pub round: u64,
    /// The commands as text (`None`: a no-op).
    pub ours: Option<String>,
    pub theirs: Option<String>,
}
