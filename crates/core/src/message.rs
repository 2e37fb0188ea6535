//! Messages between replicas. The seed's `/prepare`, `/propose` and `/learn`
//! HTTP calls become `Prepare`, `Accept` and the commit index carried on
//! `Accept`/`Heartbeat`; its `/current` + `/fetch` catch-up becomes
//! `CatchUpRequest`/`CatchUpReply`.

use crate::ready::DropReason;
use crate::types::{Ballot, Entry, NodeId, Proposal, RequestId, Slot};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}

/// A value an acceptor holds for one slot, reported in a `Promise`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedValue {
    pub slot: Slot,
    pub ballot: Ballot,
    pub entry: Entry,
    /// The acceptor knows this value is chosen.
    pub chosen: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a, for every slot from `from_slot` on.
    Prepare {
        ballot: Ballot,
        from_slot: Slot,
        chosen_upto: Slot,
    },
    /// Phase 1b: the acceptor promised `ballot` and reports what it accepted
    /// at or after the prepare's `from_slot`. Slots below `log_start` were
    /// compacted into a snapshot (they are chosen).
    Promise {
        ballot: Ballot,
        log_start: Slot,
        chosen_upto: Slot,
        accepted: Vec<AcceptedValue>,
        /// False when `accepted` stopped at the message budget: the
        /// candidate asks again (a Prepare at the same ballot) from the slot
        /// after the last one reported, and counts this acceptor's promise
        /// only with the last page. One unbounded promise could exceed the
        /// transport's frame limit and be dropped on every try.
        complete: bool,
    },
    /// Phase 2a for the consecutive slots `first_slot..first_slot+entries.len()`,
    /// with the leader's commit index: every slot below `commit_upto` is chosen.
    Accept {
        ballot: Ballot,
        first_slot: Slot,
        entries: Vec<Entry>,
        commit_upto: Slot,
    },
    /// Phase 2b: the acceptor accepted every slot in `first_slot..end_slot` at `ballot`.
    Accepted {
        ballot: Ballot,
        first_slot: Slot,
        end_slot: Slot,
        chosen_upto: Slot,
    },
    /// A `Prepare`, `Accept` or `Heartbeat` at `ballot` was refused. `promised`
    /// is the acceptor's promise; it may equal or be below `ballot` when the
    /// acceptor refused a prepare because it still hears a live leader.
    Reject {
        ballot: Ballot,
        promised: Ballot,
        chosen_upto: Slot,
    },
    /// Leader liveness, the commit index, and read-index confirmation rounds.
    Heartbeat {
        ballot: Ballot,
        commit_upto: Slot,
        read_round: u64,
    },
    HeartbeatAck {
        ballot: Ballot,
        chosen_upto: Slot,
        /// The heartbeat's `commit_upto`: if `chosen_upto` is below it, the
        /// follower lacks values and the leader pushes them.
        heard_commit_upto: Slot,
        read_round: u64,
    },
    /// "Tell me what was chosen from `from_slot` on" (the seed's `/fetch`, batched).
    CatchUpRequest { from_slot: Slot, max_entries: u32 },
    /// Chosen values for consecutive slots from `first_slot`.
    CatchUpReply {
        first_slot: Slot,
        entries: Vec<Entry>,
        chosen_upto: Slot,
    },
    /// The slots asked for were compacted: fetch the snapshot, then the log
    /// from `log_start`.
    SnapshotRequired { log_start: Slot },
    /// Client proposals forwarded from a non-leader to the leader.
    Forward { proposals: Vec<Proposal> },
    /// Forwarded proposals that will not be chosen through the sender (it
    /// is not, or no longer, the leader, or their slot went to another
    /// value, or it is overloaded): the origin may retry them with the same
    /// ids, after a pause when the reason is `Overloaded`.
    ForwardDropped {
        ids: Vec<RequestId>,
        reason: DropReason,
    },
    /// A follower asks the leader for a read index on behalf of a client read.
    ReadIndexRequest { read_id: u64 },
    /// The leader's answer: once the asker has applied `read_index`, its state
    /// reflects every write acknowledged before the read began.
    ReadIndexReply {
        read_id: u64,
        read_index: Option<Slot>,
    },
    /// A replica that may have forgotten its promises and accepts (a lost or
    /// damaged disk) asks what the others promised and accepted.
    RecoveryQuery { nonce: u64, from_slot: Slot },
    /// The answer, from a replica that is not recovering itself: its
    /// promise, its chosen prefix, and every value it accepted from
    /// `max(from_slot, chosen_upto)` on (`complete` is false when the
    /// message bound cut the list short).
    RecoveryReply {
        nonce: u64,
        promised: Ballot,
        chosen_upto: Slot,
        accepted: Vec<AcceptedValue>,
        complete: bool,
    },
}

impl Message {
    /// Does this message state something about the sender's acceptor (a
    /// promise, an accept, a refusal, an acknowledgement of a leader)? Such
    /// a message may leave only after the records of the same `Ready` are
    /// durable. Every other message may leave before the fsync: a leader's
    /// own accept counts toward a quorum only when a follower's reply is
    /// processed, which the driver does after this `Ready`'s sync returned.
    pub fn requires_durability(&self) -> bool {
        matches!(
            self,
            Message::Promise { .. }
                | Message::Accepted { .. }
                | Message::Reject { .. }
                | Message::HeartbeatAck { .. }
                | Message::RecoveryReply { .. }
        )
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Reject { .. } => "reject",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::CatchUpRequest { .. } => "catch_up_request",
            Message::CatchUpReply { .. } => "catch_up_reply",
            Message::SnapshotRequired { .. } => "snapshot_required",
            Message::Forward { .. } => "forward",
            Message::ForwardDropped { .. } => "forward_dropped",
            Message::ReadIndexRequest { .. } => "read_index_request",
            Message::ReadIndexReply { .. } => "read_index_reply",
            Message::RecoveryQuery { .. } => "recovery_query",
            Message::RecoveryReply { .. } => "recovery_reply",
        }
    }
}
