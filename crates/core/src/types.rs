//! Identifiers and the values a slot can hold.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A replica's index in the cluster configuration (0-based, dense).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A log position: the seed's "round". Slot 0 is the first round.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Slot(pub u64);

impl Slot {
    pub const ZERO: Slot = Slot(0);

    pub fn next(self) -> Slot {
        Slot(self.0 + 1)
    }

    /// Slots in `self..end` (empty when `end <= self`).
    pub fn until(self, end: Slot) -> impl Iterator<Item = Slot> {
        (self.0..end.0.max(self.0)).map(Slot)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Paxos ballot (proposal number). Totally ordered by counter, then node,
/// so two proposers never share a ballot.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Ballot {
    pub counter: u64,
    pub node: NodeId,
}

impl Ballot {
    /// Below every real ballot: what a fresh acceptor has promised.
    pub const ZERO: Ballot = Ballot {
        counter: 0,
        node: NodeId(0),
    };

    /// The smallest ballot owned by `node` that is greater than `self`.
    pub fn successor_for(self, node: NodeId) -> Ballot {
        Ballot {
            counter: self.counter + 1,
            node,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.counter, self.node.0)
    }
}

/// Identifies one client request across retries, for exactly-once application.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    pub client_id: u64,
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}/{}", self.client_id, self.seq)
    }
}

/// What a slot holds once chosen: one client command, or a no-op that a new
/// leader used to fill a hole. The payload is opaque to the core.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entry {
    Noop,
    Command { id: RequestId, payload: Bytes },
}

impl Entry {
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Entry::Noop => None,
            Entry::Command { id, .. } => Some(*id),
        }
    }

    /// Approximate encoded size, for batching limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            Entry::Noop => 1,
            Entry::Command { payload, .. } => 17 + payload.len(),
        }
    }
}

/// A client command submitted to a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: RequestId,
    pub payload: Bytes,
}

impl Proposal {
    pub fn into_entry(self) -> Entry {
        Entry::Command {
            id: self.id,
            payload: self.payload,
        }
    }
}
