//! The replicated state machine contract shared by the simulator and the server.

use crate::types::{Entry, Slot};

/// A deterministic state machine driven by chosen log entries, applied in slot
/// order. Every replica that applies the same prefix holds the same state.
pub trait StateMachine {
    /// What applying one entry answers to the client that proposed it.
    type Output;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies the entry chosen for `slot`. Called exactly once per slot, in
    /// increasing slot order with no gaps. Must be deterministic and must not
    /// fail: a command that cannot be executed yields an error *output*.
    fn apply(&mut self, slot: Slot, entry: &Entry) -> Self::Output;

    /// The first slot not yet applied (the seed's `current_round`).
    fn applied_upto(&self) -> Slot;

    /// A self-contained image of the state, covering all slots `< applied_upto()`.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot image.
    fn restore(&mut self, image: &[u8]) -> Result<(), Self::Error>;
}
