//! Replicated applications: deterministic state machines that `pbft-core` orders operations for.
//!
//! Each application implements [`pbft_core::StateMachine`] and defines its operations and results as protobuf
//! messages in `proto/pbft.proto`, so that clients in any language can build them.

pub mod kv;
pub mod ledger;

pub use kv::{KvError, KvOp, KvResult, KvStore};
pub use ledger::{Genesis, Ledger, LedgerReader};
