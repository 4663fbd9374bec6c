//! The PBFT replica as a network service: the runtime that drives `pbft_core::Replica`, the transport between
//! replicas, and the client API.
