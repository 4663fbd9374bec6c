//! The inbound side: accept connections, authenticate the dialer as a replica of the cluster, and read its frames
//! into the bounded inbound channel.
//!
//! Each connection has its own task. A full inbound channel makes the task wait, so the peer's TCP window fills
//! and it slows down; nothing is buffered beyond one frame per connection. A connection that fails
//! authentication or sends garbage is dropped and counted, and the others carry on. A newer authenticated
//! connection from a replica replaces its older one, which a restarted peer may have left half-open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbft_types::{PublicKeyBytes, ReplicaId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use super::frame::read_frame;
use super::tls::{ed25519_key, is_auth_failure};
use super::{Counters, Inbound, Shared};

/// Time a dialer has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (for example when out of file descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Connections allowed to be in their handshake at once. Only n-1 peers ever need one; the rest of the room is
/// for reconnections. Anything beyond is closed at once, so that a flood of connections that never authenticate
/// cannot exhaust memory or file descriptors, whatever its rate.
pub(crate) const MAX_HANDSHAKES: usize = 64;

/// Accepts and serves inbound connections.
pub(crate) struct Listener {
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    replicas: Vec<PublicKeyBytes>,
    inbound: mpsc::Sender<Inbound>,
    /// Per replica id, the generation of its current connection: a connection whose generation is no longer
    /// current has been replaced and ends.
    current: Vec<watch::Sender<u64>>,
}

impl Listener {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: Arc<rustls::ServerConfig>,
        replicas: Vec<PublicKeyBytes>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Listener {
        let current = replicas.iter().map(|_| watch::Sender::new(0)).collect();
        Listener {
            shared,
            acceptor: TlsAcceptor::from(config),
            replicas,
            inbound,
            current,
        }
    }

    /// Accepts until `stop` turns true, then closes every connection.
    pub(crate) async fn run(self, socket: TcpListener, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut connections = JoinSet::new();
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            tokio::select! {
                () = stopped(&mut stop) => break,
                accepted = socket.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                            Counters::add(&this.shared.counters.garbage_connections, 1);
                            tracing::debug!(%addr, "too many connections in their handshake: closed");
                            continue;
                        };
                        let span = tracing::info_span!("inbound", me = %this.shared.me, %addr);
                        connections.spawn(this.clone().serve(tcp, addr, permit).instrument(span));
                    }
                    Err(e) => {
                        tracing::warn!(me = %this.shared.me, "accept failed: {e}");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
    }

    /// `handshake` is this connection's place among those in their handshake, given up once it authenticated.
    async fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        handshake: OwnedSemaphorePermit,
    ) {
        let counters = &self.shared.counters;
        let _ = tcp.set_nodelay(true);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if is_auth_failure(&e) => {
                Counters::add(&counters.auth_failures, 1);
                tracing::warn!("dialer refused: {e}");
                return;
            }
            Ok(Err(e)) => {
                // Bytes that are not TLS count as garbage; a dialer that merely went away does not.
                if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                    Counters::add(&counters.garbage_connections, 1);
                    tracing::warn!("handshake failed: {e}");
                } else {
                    tracing::debug!("handshake aborted: {e}");
                }
                return;
            }
            Err(_) => {
                Counters::add(&counters.garbage_connections, 1);
                tracing::warn!("handshake not completed within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let Some(from) = self.sender(&stream) else {
            Counters::add(&counters.auth_failures, 1);
            tracing::warn!("dialer refused: no replica key, or this replica's own");
            return;
        };
        drop(handshake);
        tracing::info!(from = %from, "peer connected");
        self.receive(stream, from)
            .instrument(tracing::info_span!("from", peer = %from, %addr))
            .await;
    }

    /// The replica that authenticated on `stream`: the verifier accepted only cluster keys, so this looks the
    /// key up again. A replica does not dial itself.
    fn sender(&self, stream: &TlsStream<TcpStream>) -> Option<ReplicaId> {
        let (_, connection) = stream.get_ref();
        let cert = connection.peer_certificates()?.first()?;
        let key = ed25519_key(cert).ok()?;
        let index = self.replicas.iter().position(|k| *k == key)?;
        let from = ReplicaId(index as u64);
        (from != self.shared.me).then_some(from)
    }

    /// Reads frames from an authenticated peer until it closes, misbehaves, or a newer connection replaces this one.
    async fn receive(&self, mut stream: TlsStream<TcpStream>, from: ReplicaId) {
        let counters = &self.shared.counters;
        let Some(current) = self.current.get(from.index()) else {
            return;
        };
        let mut generation = 0;
        current.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let mut replaced = current.subscribe();
        let replaced = async move {
            // Resolves once a newer connection from the same replica took over.
            let _ = replaced.wait_for(|g| *g != generation).await;
        };
        tokio::pin!(replaced);
        loop {
            let frame = tokio::select! {
                frame = read_frame(&mut stream, self.shared.max_frame) => frame,
                () = &mut replaced => {
                    tracing::info!("replaced by a newer connection from the same replica");
                    return;
                }
            };
            match frame {
                Ok(Some(frame)) => {
                    let delivered = tokio::select! {
                        sent = self.inbound.send(Inbound { from, frame }) => sent.is_ok(),
                        () = &mut replaced => return,
                    };
                    if !delivered {
                        tracing::debug!("inbound channel closed");
                        return;
                    }
                    Counters::add(&counters.frames_received, 1);
                }
                Ok(None) => {
                    tracing::info!("peer closed the connection");
                    return;
                }
                Err(e) if e.is_garbage() => {
                    Counters::add(&counters.garbage_connections, 1);
                    tracing::warn!("connection dropped: {e}");
                    return;
                }
                Err(e) => {
                    tracing::info!("connection lost: {e}");
                    return;
                }
            }
        }
    }
}

/// Resolves once the transport is told to stop (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
