//! What the core hands back to its driver after each batch of inputs.
//!
//! The driver's contract, in this order:
//! 1. write every record in `persist` and make it durable (one fsync for all;
//!    if no record `needs_sync()`, writing them without an fsync is enough);
//!    messages whose `requires_durability()` is false (a leader's accepts,
//!    heartbeats, catch-up) may be sent before or during this step, so the
//!    leader's fsync overlaps its followers';
//! 2. only then send the other `messages` (a promise or an accepted reply
//!    must not reach the network before it is durable);
//! 3. apply `apply` to the state machine, in order;
//! 4. handle `events`.
//!
//! No input is given to the replica between steps 1 and 2.
//!
//! Exception to the early sends: a `Ready` that raises this replica's own
//! promise or records a new campaign ballot (`messages_wait_for_sync`)
//! sends nothing before its fsync. A new
//! leader's first accepts and heartbeats travel in the same `Ready` as the
//! promise to its own ballot; were they to leave first and the process die
//! before the sync, it would restart with its old promise, pick the same
//! ballot again and could propose a second value at `(ballot, slot)`, which
//! followers that learn from the commit index would take as chosen.
//!
//! In a cluster of more than one voter, step 3 may come first: an entry is
//! handed out for application only once it is chosen, that is once a quorum
//! made it durable, and a leader counts its own vote only while processing a
//! follower's reply, which happens after the `Ready` that carried its own
//! accept was synced. With a single voter its own vote is the quorum, so
//! such entries wait for this `Ready`'s sync, and so do its messages, whose
//! commit index would tell learners a slot is chosen before it is durable
//! (`apply_waits_for_sync`; the simulator found this with a voter and a
//! learner).

use crate::message::{Envelope, Message};
use crate::types::{Ballot, Entry, NodeId, RequestId, Slot};
use serde::{Deserialize, Serialize};

/// One durable fact about this replica's acceptor or learner state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistRecord {
    /// The acceptor promised never to accept below this ballot.
    Promised(Ballot),
    /// The acceptor accepted `entry` for `slot` at `ballot`.
    Accepted {
        slot: Slot,
        ballot: Ballot,
        entry: Entry,
    },
    /// `slot` is chosen. `entry` is `None` when the chosen value is the one
    /// this replica accepted last for the slot (saves writing it twice).
    Chosen { slot: Slot, entry: Option<Entry> },
    /// This replica campaigned with this ballot (sent Prepare at it): it
    /// never uses it again, not even after a crash, since promises that
    /// answered its first campaign could otherwise count for a second one.
    Campaigned(Ballot),
}

impl PersistRecord {
    /// Must this record be durable before the `Ready`'s other messages leave?
    /// A chosen mark need not: a replica that loses it learns the slot again
    /// from its peers. The driver may write such records lazily (handed to
    /// the OS, synced with a later batch).
    pub fn needs_sync(&self) -> bool {
        !matches!(self, PersistRecord::Chosen { .. })
    }

    pub fn slot(&self) -> Option<Slot> {
        match self {
            PersistRecord::Promised(_) | PersistRecord::Campaigned(_) => None,
            PersistRecord::Accepted { slot, .. } | PersistRecord::Chosen { slot, .. } => {
                Some(*slot)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    /// This replica is not the leader (or stopped being it) before the
    /// proposal got a slot. It was not chosen; retrying elsewhere is safe.
    NotLeader,
    /// The slot this proposal was placed in was chosen with another value.
    /// Retrying with the same request id is safe (the state machine dedups).
    Lost,
    /// Too many proposals are queued.
    Overloaded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadFailure {
    NotLeader,
    Overloaded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Leadership as this replica now sees it.
    LeaderChanged {
        leader: Option<NodeId>,
        ballot: Ballot,
    },
    /// A proposal submitted here will not be chosen through this replica.
    ProposalDropped {
        id: RequestId,
        reason: DropReason,
    },
    /// A linearizable read may proceed once `read_index` is applied.
    ReadReady {
        read_id: u64,
        read_index: Slot,
    },
    ReadFailed {
        read_id: u64,
        reason: ReadFailure,
    },
    /// The slots this replica needs were compacted on `from`: install its
    /// snapshot (covering every slot below some point >= `log_start`), then
    /// call `Replica::install_snapshot`.
    SnapshotNeeded {
        from: NodeId,
        log_start: Slot,
    },
    /// This replica, which may have forgotten promises and accepts, has
    /// recovered them from a majority and votes again. Its new promise is
    /// in this `Ready`'s records: once they are durable, the driver clears
    /// its "recovering" mark.
    Recovered {
        promised: Ballot,
    },
    /// `peer` reported another value for `slot` than the one this replica
    /// knows is chosen: it lost or corrupted its state. Its messages are
    /// refused from now on (reported once per peer).
    PeerConflict {
        peer: NodeId,
        slot: Slot,
        ours: Entry,
        theirs: Entry,
    },
    /// A membership change chosen at `slot` governs every slot after it
    /// (reported when the chosen prefix passes it). A replica that is no
    /// member of it any more has been removed: it stops campaigning and
    /// should stop serving.
    MembershipChanged {
        slot: Slot,
        membership: crate::types::Membership,
    },
}

#[derive(Debug, Default)]
pub struct Ready {
    pub persist: Vec<PersistRecord>,
    pub messages: Vec<Envelope>,
    pub apply: Vec<(Slot, Entry)>,
    pub events: Vec<Event>,
    /// No message of this `Ready` may leave before its records are durable
    /// (it raises this replica's promise: see the module comment).
    pub messages_wait_for_sync: bool,
    /// Some entry in `apply` was chosen counting this replica's own accept
    /// of this `Ready` (a single voter, as after membership changes down to
    /// one, or a one-replica cluster): apply only after the fsync.
    pub apply_waits_for_sync: bool,
}

impl Ready {
    /// May `message` (one of this `Ready`'s) be sent before the fsync?
    pub fn may_send_before_sync(&self, message: &Message) -> bool {
        !self.messages_wait_for_sync && !message.requires_durability()
    }

    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.apply.is_empty()
            && self.events.is_empty()
    }
}
