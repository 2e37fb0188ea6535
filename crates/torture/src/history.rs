//! What the harness records.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Read,
    Write,
    Cas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed with an answer.
    Ok,
    /// Definitely did not take effect (failed read, 4xx, refused connection).
    Fail,
    /// Indeterminate: may or may not have taken effect.
    Info,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpRec {
    pub client: usize,
    pub node: usize,
    pub key: String,
    pub kind: Kind,
    /// Value written (write) or proposed (CAS).
    pub value: Option<u64>,
    /// CAS: the value expected (None = must be absent).
    pub expected: Option<u64>,
    /// Read: value seen (None = absent).
    pub read: Option<u64>,
    pub cas_ok: Option<bool>,
    /// CAS: value after the command, when reported (Some(None) = absent).
    pub cas_current: Option<Option<u64>>,
    pub outcome: Outcome,
    pub invoke_ms: f64,
    pub complete_ms: f64,
    pub error: Option<String>,
}

impl OpRec {
    /// A write or CAS that got an answer: consensus made progress.
    pub fn is_successful_write(&self) -> bool {
        self.outcome == Outcome::Ok && matches!(self.kind, Kind::Write | Kind::Cas)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultRec {
    pub kind: String,
    pub detail: String,
    pub nodes: Vec<usize>,
    pub leader_targeted: bool,
    pub start_ms: f64,
    pub end_ms: f64,
    /// Anything notable (e.g. "corruption detected, data wiped").
    pub note: Option<String>,
}

/// Connectivity at a point in time: the largest set of running, unpaused,
/// fully connected replicas if it is a majority.
#[derive(Clone, Debug, Serialize)]
pub struct Connectivity {
    pub at_ms: f64,
    pub majority: Option<Vec<usize>>,
}
