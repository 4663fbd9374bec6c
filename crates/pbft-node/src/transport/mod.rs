//! The authenticated transport between replicas: TCP, TLS 1.3 with both ends authenticated by the cluster's
//! replica keys, length-prefixed frames.
//!
//! # Connection model
//!
//! Each replica **dials** every peer for what it **sends** to that peer, and **accepts** connections only to
//! **receive**. Between two replicas there are therefore two connections, one per direction, and no tie-breaking
//! is ever needed: the dialer of a connection is its only writer, the listener its only reader. (The dialer also
//! reads, only to notice that the listener went away; a listener that sends anything is misbehaving and the
//! connection is dropped.)
//!
//! - **Identity** ([`tls`]): a replica's TLS certificate is self-signed with its ed25519 protocol key, and the key
//!   is all that is checked. A dialer accepts the listener only if it presents the key configured for the replica
//!   dialed; a listener accepts a dialer only if it presents one of the cluster's replica keys, and that key
//!   names the sender of every frame on the connection ([`Inbound::from`]). The TLS 1.3 handshake signature
//!   proves possession of the key.
//! - **Frames** ([`frame`]): a 4-byte big-endian length and that many bytes. An empty frame or one longer than
//!   `max_frame` is garbage: refused before any allocation, the connection dropped and counted.
//! - **Sending** ([`peer`]): one task and one bounded queue per peer. [`TransportLink::send`] never blocks: when a
//!   peer's queue is full the oldest frame in it is dropped (PBFT recovers lost messages by retransmission), so a
//!   slow or dead peer never holds up the others. While the peer is unreachable the task redials with
//!   exponential back-off (50 ms doubling to 2 s, with jitter) and keeps the newest `queue_depth` frames; once
//!   connected it writes everything queued and flushes once.
//! - **Receiving** ([`listener`]): one task per accepted connection reads frames into one bounded channel shared
//!   by all peers. When the channel is full the reader waits, which stops reading that peer's TCP stream and so
//!   slows that peer down; nothing is buffered without bound. A newer authenticated connection from the same
//!   replica replaces the older one (a peer that restarted left it half-open).
//! - **Failures**: a connection that fails authentication or sends garbage is dropped and counted in
//!   [`TransportStats`]; the replica carries on with the others.

pub mod frame;
pub mod listener;
pub mod peer;
pub mod tls;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pbft_crypto::KeyPair;
use pbft_types::{PublicKeyBytes, ReplicaId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::link::Inbound;
use crate::link::PeerLink;

use peer::PeerQueue;

/// What a replica needs to talk to its peers.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This replica.
    pub me: ReplicaId,
    /// This replica's protocol key; its public key must be `replicas[me]`.
    pub key: KeyPair,
    /// Every replica's public key, indexed by replica id (this one's included).
    pub replicas: Vec<PublicKeyBytes>,
    /// Where to accept connections from peers (port 0 picks a free port; see [`Transport::local_addr`]).
    pub listen: SocketAddr,
    /// Where to dial each peer. This replica must not be listed.
    pub peers: BTreeMap<ReplicaId, SocketAddr>,
    /// The largest frame sent or accepted, in bytes (at most `u32::MAX`).
    pub max_frame: usize,
    /// Frames queued per peer before the oldest are dropped, and the capacity of the inbound channel.
    pub queue_depth: usize,
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport configuration: {0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters since the transport started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Peers this replica currently has an established outbound connection to.
    pub peers_connected: usize,
    /// Frames written and flushed to a peer's connection.
    pub frames_sent: u64,
    /// Bytes of those frames, with their 4-byte length prefixes (TLS adds its record overhead on top).
    pub bytes_sent: u64,
    /// Frames read from authenticated peers and handed to the inbound channel.
    pub frames_received: u64,
    /// Frames dropped on the sending side: a full queue (oldest first), a connection lost with frames in flight,
    /// or a frame addressed to no peer, empty, or longer than `max_frame`.
    pub frames_dropped: u64,
    /// Handshakes refused because of a key: a dialer whose key is not a replica's, a listener whose key is not
    /// the replica dialed, or our own certificate refused by the other side.
    pub auth_failures: u64,
    /// Connections dropped because the other side sent something no replica sends: not TLS, an empty or
    /// oversized frame, data on a send-only connection, or a handshake that never completed.
    pub garbage_connections: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub auth_failures: AtomicU64,
    pub garbage_connections: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// State shared by the sending handle and the tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub me: ReplicaId,
    pub max_frame: usize,
    /// Indexed by replica id: the queue of each peer we dial (`None` for this replica and unlisted ones).
    pub peers: Vec<Option<Arc<PeerQueue>>>,
    pub counters: Counters,
}

/// A cheap, cloneable handle that sends frames to peers and reads the counters. Give it to the runtime as its
/// [`PeerLink`]; the [`Transport`] it came from keeps the tasks and shuts them down.
#[derive(Clone, Debug)]
pub struct TransportLink {
    shared: Arc<Shared>,
}

impl TransportLink {
    /// Queues `frame` for replica `to`. Never blocks: a full queue drops its oldest frame. A frame for a replica
    /// that is not a peer, an empty frame and one longer than `max_frame` are dropped. All drops are counted.
    pub fn send(&self, to: ReplicaId, frame: Bytes) {
        let shared = &self.shared;
        if frame.is_empty() || frame.len() > shared.max_frame {
            tracing::debug!(to = %to, len = frame.len(), "frame of unsendable size dropped");
            Counters::add(&shared.counters.frames_dropped, 1);
            return;
        }
        let Some(queue) = shared.peers.get(to.index()).and_then(Option::as_ref) else {
            tracing::debug!(to = %to, "frame for a replica that is not a peer dropped");
            Counters::add(&shared.counters.frames_dropped, 1);
            return;
        };
        if queue.push(frame) {
            Counters::add(&shared.counters.frames_dropped, 1);
        }
    }

    /// Queues `frame` for every peer (never this replica).
    pub fn broadcast(&self, frame: Bytes) {
        for (id, queue) in self.shared.peers.iter().enumerate() {
            if queue.is_some() {
                self.send(ReplicaId(id as u64), frame.clone());
            }
        }
    }

    pub fn stats(&self) -> TransportStats {
        let shared = &self.shared;
        let c = &shared.counters;
        TransportStats {
            peers_connected: shared
                .peers
                .iter()
                .flatten()
                .filter(|q| q.is_connected())
                .count(),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            auth_failures: c.auth_failures.load(Ordering::Relaxed),
            garbage_connections: c.garbage_connections.load(Ordering::Relaxed),
        }
    }
}

impl PeerLink for TransportLink {
    fn send(&self, to: ReplicaId, frame: Bytes) {
        TransportLink::send(self, to, frame);
    }

    fn broadcast(&self, frame: Bytes) {
        TransportLink::broadcast(self, frame);
    }
}

/// A running transport: the listener, one sending task per peer, and the handle to them. Dropping it stops the
/// tasks; [`Transport::shutdown`] also waits until every connection is closed.
#[derive(Debug)]
pub struct Transport {
    link: TransportLink,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    listener: Option<JoinHandle<()>>,
    dialers: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Binds the listen address, starts dialing every peer, and returns the transport with the channel of frames
    /// received from authenticated peers.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        validate(&config)?;
        let socket =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Transport::start_with_listener(config, socket).await
    }

    /// Like [`Transport::start`], on a socket the caller bound already (`config.listen` is not used). Lets a
    /// caller learn every replica's address before any transport starts, as tests on port 0 do.
    pub async fn start_with_listener(
        config: TransportConfig,
        socket: TcpListener,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        validate(&config)?;
        let local_addr = socket.local_addr().map_err(|source| TransportError::Bind {
            addr: config.listen,
            source,
        })?;
        let identity = tls::Identity::new(config.me, &config.key).map_err(TransportError::Tls)?;
        let n = config.replicas.len();
        let mut peers: Vec<Option<Arc<PeerQueue>>> = vec![None; n];
        for &id in config.peers.keys() {
            peers[id.index()] = Some(Arc::new(PeerQueue::new(config.queue_depth)));
        }
        let shared = Arc::new(Shared {
            me: config.me,
            max_frame: config.max_frame,
            peers,
            counters: Counters::default(),
        });
        let server = tls::server_config(&identity, config.replicas.clone())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let (inbound_tx, inbound_rx) = mpsc::channel(config.queue_depth);
        let (stop, stop_rx) = watch::channel(false);
        let listener = listener::Listener::new(
            shared.clone(),
            Arc::new(server),
            config.replicas.clone(),
            inbound_tx,
        );
        let listener = tokio::spawn(listener.run(socket, stop_rx));

        let mut dialers = Vec::with_capacity(config.peers.len());
        for (&id, &addr) in &config.peers {
            let client = tls::client_config(&identity, id, config.replicas[id.index()])
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            let name = tls::server_name(id).map_err(|e| TransportError::Tls(e.to_string()))?;
            let Some(queue) = shared.peers[id.index()].clone() else {
                continue;
            };
            let dialer = peer::Dialer::new(shared.clone(), id, addr, Arc::new(client), name, queue);
            dialers.push(tokio::spawn(dialer.run()));
        }
        tracing::info!(me = %config.me, listen = %local_addr, peers = config.peers.len(), "transport started");
        let transport = Transport {
            link: TransportLink { shared },
            local_addr,
            stop,
            listener: Some(listener),
            dialers,
        };
        Ok((transport, inbound_rx))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A sending handle for the runtime.
    pub fn link(&self) -> TransportLink {
        self.link.clone()
    }

    /// See [`TransportLink::send`].
    pub fn send(&self, to: ReplicaId, frame: Bytes) {
        self.link.send(to, frame);
    }

    /// See [`TransportLink::broadcast`].
    pub fn broadcast(&self, frame: Bytes) {
        self.link.broadcast(frame);
    }

    pub fn stats(&self) -> TransportStats {
        self.link.stats()
    }

    /// Stops listening and dialing and closes every connection before returning. Frames still queued are lost.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(listener) = self.listener.take() {
            let _ = listener.await;
        }
        for dialer in std::mem::take(&mut self.dialers) {
            dialer.abort();
            let _ = dialer.await;
        }
        for queue in self.link.shared.peers.iter().flatten() {
            queue.set_connected(false);
        }
        tracing::info!(me = %self.link.shared.me, "transport shut down");
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        for dialer in &self.dialers {
            dialer.abort();
        }
    }
}

fn validate(config: &TransportConfig) -> Result<(), TransportError> {
    let bad = |m: String| Err(TransportError::Config(m));
    let n = config.replicas.len();
    let Some(mine) = config.replicas.get(config.me.index()) else {
        return bad(format!(
            "replica {} is not among the {n} replicas",
            config.me
        ));
    };
    if *mine != config.key.public_key() {
        return bad(format!(
            "the key given is not replica {}'s configured key",
            config.me
        ));
    }
    for &id in config.peers.keys() {
        if id == config.me {
            return bad(format!("replica {id} lists itself as a peer"));
        }
        if id.index() >= n {
            return bad(format!("peer {id} is not among the {n} replicas"));
        }
    }
    if config.max_frame == 0 || u32::try_from(config.max_frame).is_err() {
        return bad(format!(
            "max_frame {} is not between 1 and {}",
            config.max_frame,
            u32::MAX
        ));
    }
    if config.queue_depth == 0 {
        return bad("queue_depth must be at least 1".into());
    }
    Ok(())
}
