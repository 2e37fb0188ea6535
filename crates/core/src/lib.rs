//! paxlog-core: Multi-Paxos as a pure, deterministic state machine.
//!
//! No clock, no I/O, no threads, no randomness of its own: the driver feeds
//! it messages (`step`), time (`tick`) and client proposals (`propose`), and
//! takes back a [`Ready`] saying what to persist, send and apply.

pub mod durable;
pub mod message;
pub mod ready;
mod replica;
pub mod rng;
pub mod state_machine;
pub mod types;

pub use durable::{DurableState, ReplayError};
pub use message::{AcceptedValue, Envelope, Message};
pub use ready::{DropReason, Event, PersistRecord, ReadFailure, Ready};
pub use replica::{
    Bugs, Config, ConfigChangeError, PeerReport, ProposeError, RecoveryStatus, Replica, Role,
    StatusReport, Submitted,
};
pub use state_machine::StateMachine;
pub use types::{
    ids_of, Ballot, Entry, Membership, NodeId, Proposal, RequestId, Slot, MAX_NODE_ID,
};
