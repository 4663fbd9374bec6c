//! The PBFT protocol (Castro and Liskov, OSDI 1999) as a pure, deterministic state machine.
//!
//! `Replica::step` takes one `Input` (an authenticated message, a client request, a timer that fired) and returns
//! the `Output`s it causes (messages to send, replies, timers, committed batches). It performs no IO, reads no
//! clock, starts no thread and draws no random number, so the simulator can run it under any schedule and replay
//! any run from its seed, and the node can drive the very same code over the network.

pub mod app;
mod batches;
mod checkpoint;
mod client_table;
mod held;
pub mod io;
pub mod journal;
mod log;
mod pending;
mod quorum;
mod relay;
mod replica;
mod state_transfer;
pub mod view_change;

pub use app::{ExecContext, ExecutedBatch, RestoreError, StateMachine};
pub use checkpoint::Stable as StableCheckpoint;
pub use io::{Batch, Committed, Dest, Input, Output, RejectReason, Rejection, Timer};
pub use journal::{JournalEntry, JournalError};
pub use replica::RecoveryError;
pub use replica::{Replica, ReplicaStatus};
pub use view_change::{InvalidNewView, InvalidViewChange};
