//! The PBFT client protocol (PROTOCOL.md, normal case 6 and view change), without IO.
//!
//! Like the replica core, the client reads no clock, opens no socket and draws no random number: its driver (the
//! simulator or the node) feeds it inputs (a request to start, a verified reply, a timer that fired) and carries
//! out the [`ClientOutput`]s it returns. The same code therefore runs in seeded simulations and in production.
//!
//! A driver:
//! - calls [`Client::submit`] to start a request (one at a time), passing its clock as a timestamp hint;
//! - verifies every reply with the cluster's `Keyring` and hands the `Verified<Reply>` to [`Client::on_reply`];
//! - keeps one retransmission timer: `SetTimer` (re)starts it, `CancelTimer` stops it, and its expiry is reported
//!   with [`Client::on_timeout`];
//! - carries out the outputs in the order they are returned; `Completed` carries the accepted result.
//!
//! With the `net` feature, [`net::NetClient`] is such a driver over the replicas' gRPC API.

mod backoff;
mod client;
mod replies;
mod view_estimate;

#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "net")]
mod stream;

pub use client::{Client, ClientError, ClientOutput, Destination};
