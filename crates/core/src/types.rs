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
    Command {
        id: RequestId,
        payload: Bytes,
    },
    /// A membership change: once chosen at slot `s`, `membership` governs
    /// every slot after `s` (see `docs/design.md`, "Membership change").
    Config {
        id: RequestId,
        membership: Membership,
    },
}

impl Entry {
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Entry::Noop => None,
            Entry::Command { id, .. } | Entry::Config { id, .. } => Some(*id),
        }
    }

    /// Approximate encoded size, for batching limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            Entry::Noop => 1,
            Entry::Command { payload, .. } => 17 + payload.len(),
            Entry::Config { membership, .. } => 25 + 5 * membership.len(),
        }
    }
}

/// The largest replica id (ids are never reused, and sets of them are
/// 64-bit masks in the core): a cluster can have had at most 64 members.
pub const MAX_NODE_ID: u32 = 63;

/// Which replicas vote and which only learn, from some slot on. Changed only
/// by a chosen `Entry::Config`, one voter at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Counts changes: the initial membership is epoch 0.
    pub epoch: u64,
    /// Bit i: replica i votes (its promise and accept count in quorums).
    pub voters: u64,
    /// Bit i: replica i receives the log but does not vote.
    pub learners: u64,
}

impl Membership {
    /// Replicas `0..size` voting: a cluster as bootstrapped.
    pub fn initial(size: u32) -> Membership {
        let size = size.min(MAX_NODE_ID + 1);
        let voters = if size >= 64 {
            u64::MAX
        } else {
            (1u64 << size) - 1
        };
        Membership {
            epoch: 0,
            voters,
            learners: 0,
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        id.0 <= MAX_NODE_ID && self.voters & (1 << id.0) != 0
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        id.0 <= MAX_NODE_ID && self.learners & (1 << id.0) != 0
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Voters and learners.
    pub fn members_mask(&self) -> u64 {
        self.voters | self.learners
    }

    pub fn len(&self) -> usize {
        self.members_mask().count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.members_mask() == 0
    }

    pub fn voter_count(&self) -> usize {
        self.voters.count_ones() as usize
    }

    /// Votes needed: a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voter_count() / 2 + 1
    }

    /// How many of the replicas in `mask` vote here.
    pub fn votes_in(&self, mask: u64) -> usize {
        (mask & self.voters).count_ones() as usize
    }

    pub fn voter_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        ids_of(self.voters)
    }

    pub fn learner_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        ids_of(self.learners)
    }

    /// Is `next` a change this membership may be followed by? One replica
    /// added (as a learner), promoted, demoted or removed at a time, so any
    /// majority of the old voters and any majority of the new ones share a
    /// replica; the epoch moves by one; at least one voter remains.
    pub fn check_next(&self, next: &Membership) -> Result<(), String> {
        if next.epoch != self.epoch + 1 {
            return Err(format!(
                "epoch {} does not follow {}",
                next.epoch, self.epoch
            ));
        }
        if next.voters & next.learners != 0 {
            return Err("a replica cannot be both voter and learner".into());
        }
        if next.voters == 0 {
            return Err("the last voter cannot be removed".into());
        }
        let voters_changed = (self.voters ^ next.voters).count_ones();
        let members_changed = (self.members_mask() ^ next.members_mask()).count_ones();
        let learners_changed = (self.learners ^ next.learners).count_ones();
        if voters_changed > 1 || members_changed > 1 || learners_changed > 1 {
            return Err("one replica changes at a time".into());
        }
        if voters_changed + members_changed + learners_changed == 0 {
            return Err("the membership does not change".into());
        }
        Ok(())
    }
}

/// The ids of the bits set in `mask`, ascending.
pub fn ids_of(mask: u64) -> impl Iterator<Item = NodeId> {
    (0..=MAX_NODE_ID)
        .filter(move |i| mask & (1 << i) != 0)
        .map(NodeId)
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
