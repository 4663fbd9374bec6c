//! The interface between the protocol and the replicated application.

use bytes::Bytes;
use pbft_types::{ClientId, Digest, SeqNo, Timestamp};
use thiserror::Error;

/// Where a request executes: which batch, and whose request it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecContext {
    pub seq: SeqNo,
    pub client: ClientId,
    pub timestamp: Timestamp,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("snapshot rejected: {0}")]
pub struct RestoreError(pub String);

/// A deterministic replicated application. Every correct replica applies the same operations in the same order
/// and must reach the same state, so `execute` may depend on nothing but the state, the context and the operation
/// (no clock, no randomness, no iteration over unordered maps).
pub trait StateMachine: Send {
    /// Applies one operation and returns its result. The operation comes from an authenticated client but is
    /// otherwise arbitrary bytes: a malformed one must produce an error result, never a panic, and leave the
    /// state unchanged.
    fn execute(&mut self, ctx: ExecContext, operation: &[u8]) -> Bytes;

    /// A digest of the whole application state. Two replicas with equal states return equal digests.
    fn digest(&self) -> Digest;

    /// The whole state as bytes, for state transfer.
    fn snapshot(&self) -> Bytes;

    /// Replaces the state with a snapshot taken by `snapshot`, possibly on another replica. A malformed
    /// snapshot is an error and leaves the state unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
}
