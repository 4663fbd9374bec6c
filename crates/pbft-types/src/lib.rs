//! Ids, configuration and typed messages of the PBFT replication system.
//!
//! Everything here is plain data. Signatures are checked by `pbft-crypto`, which alone can produce a
//! `Verified<T>`; the protocol lives in `pbft-core`.

pub mod config;
pub mod error;
pub mod ids;
pub mod message;
pub mod replica_msg;
pub mod signed;
#[allow(clippy::all)]
pub mod wire;

pub use config::{
    ClientAuth, ClientInfo, ClusterConfig, ConfigError, Params, PublicKeyBytes, ReplicaAuth,
    new_view_size_bound,
};
pub use error::DecodeError;
pub use ids::{ClientId, Digest, Principal, ReplicaId, SeqNo, Timestamp, View};
pub use message::{
    BatchData, Body, Checkpoint, Commit, FetchBatch, FetchState, NestedSignature, NewView,
    PrePrepare, Prepare, PreparedProof, Reply, Request, StateChunk, Status, ViewChange,
};
pub use replica_msg::{DecodeLimits, ReplicaMsg};
pub use signed::{MAC_LEN, MAX_AUTHENTICATOR_MACS, Seal, SignatureBytes, Signed};
