//! The PBFT replica as a network service: the runtime that drives `pbft_core::Replica`, the transport between
//! replicas, and the client API.

pub mod api;
pub mod client_slots;
pub mod config;
mod deadlines;
pub mod durable;
pub mod grpc;
pub mod http;
pub mod ledger;
pub mod link;
pub mod local;
pub mod metrics;
pub mod node;
pub mod runtime;
pub mod submit_stream;
pub mod testnet;
pub mod transport;
pub mod waiters;

pub use link::{Inbound, Mesh, MeshLink, PeerLink};
pub use runtime::{Counters, NodeHandle, SubmitError, start};
