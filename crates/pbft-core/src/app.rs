//! The interface between the protocol and the replicated application.

use bytes::Bytes;
use pbft_crypto::Verified;
use pbft_types::{ClientId, Digest, Request, SeqNo, Timestamp};
use thiserror::Error;

/// Where a request executes: which batch, and whose request it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecContext {
    pub seq: SeqNo,
    pub client: ClientId,
    pub timestamp: Timestamp,
}

/// A batch that has just executed: every request of it, in order, with its result (`None` for a request that did
/// not execute because its client had a request with that timestamp or a later one executed already).
#[derive(Clone, Copy, Debug)]
pub struct ExecutedBatch<'a> {
    pub seq: SeqNo,
    /// The batch digest the replicas agreed on (what its COMMITs sign), so the application need not hash the
    /// requests again.
    pub digest: Digest,
    pub requests: &'a [Verified<Request>],
    pub results: &'a [Option<Bytes>],
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

    /// Called once after each batch executed, null batches included, before any checkpoint at its sequence
    /// number is taken. An application that keeps a history outside its state (the ledger's blocks) closes an
    /// entry of it here and returns it encoded: the driver keeps it with the batch's commit certificate. It may
    /// change the state (the ledger moves its chain head), deterministically like `execute`.
    fn end_batch(&mut self, batch: ExecutedBatch<'_>) -> Option<Bytes> {
        let _ = batch;
        None
    }

    /// Whether the application keeps commit certificates that third parties check (the ledger's blocks): its
    /// COMMITs must then be signed, and a cluster with `replica_auth = "macs"` is refused.
    fn needs_signed_commits(&self) -> bool {
        false
    }
}
