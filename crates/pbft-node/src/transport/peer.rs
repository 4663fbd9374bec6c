//! The outbound side: one task per peer dials it, keeps the connection, and writes what is queued for it.
//!
//! The queue is bounded and never blocks the sender: when full, the oldest frame is dropped to make room for the
//! newest. While the peer is unreachable the task redials with exponential back-off and jitter and the queue keeps
//! the newest frames. Once connected, each wake-up writes every queued frame and flushes once. The task also
//! reads the connection, only to notice promptly that the peer closed it (a listener never sends anything).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pbft_types::ReplicaId;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::Instrument;

use super::frame::write_frame;
use super::tls::is_auth_failure;
use super::{Counters, Shared};

/// First delay before redialing a peer; it doubles after every failed attempt.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Time allowed to establish TCP, and then again to complete the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to write and flush one batch; a peer that reads nothing for this long is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes gathered before a write reaches TLS, so that a batch of small frames becomes a few large records.
const WRITE_BUFFER: usize = 64 * 1024;

/// The frames waiting for one peer, and whether that peer is connected.
#[derive(Debug)]
pub struct PeerQueue {
    frames: Mutex<VecDeque<Bytes>>,
    depth: usize,
    ready: Notify,
    connected: AtomicBool,
}

impl PeerQueue {
    pub fn new(depth: usize) -> PeerQueue {
        PeerQueue {
            frames: Mutex::new(VecDeque::with_capacity(depth.min(1024))),
            depth,
            ready: Notify::new(),
            connected: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        // A panic while holding this lock cannot leave the queue inconsistent: take it as it is.
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `frame`; returns true if the oldest frame was dropped to make room.
    pub fn push(&self, frame: Bytes) -> bool {
        let dropped = {
            let mut frames = self.lock();
            let dropped = if frames.len() >= self.depth {
                frames.pop_front().is_some()
            } else {
                false
            };
            frames.push_back(frame);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// Everything queued, oldest first.
    pub fn take_all(&self) -> VecDeque<Bytes> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
}

/// Exponential back-off with jitter: each delay is drawn from [d/2, d] where d doubles from `BACKOFF_INITIAL` to
/// `BACKOFF_MAX`. The jitter comes from a xorshift generator seeded by the pair of replicas, so that replicas
/// redialing one restarted peer do not all arrive at once, without a random source.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    state: u64,
}

impl Backoff {
    pub fn new(me: ReplicaId, peer: ReplicaId) -> Backoff {
        let seed = (me.0.rotate_left(32) ^ peer.0).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Backoff {
            next: BACKOFF_INITIAL,
            state: seed,
        }
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (ceiling * 2).min(BACKOFF_MAX);
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let half = ceiling / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.state % (spread + 1))
    }
}

/// Why an established connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer sent data on a send-only connection")]
    UnexpectedData,
    #[error("writing a batch timed out")]
    WriteTimeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The task that sends to one peer.
pub(crate) struct Dialer {
    shared: Arc<Shared>,
    peer: ReplicaId,
    addr: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
    queue: Arc<PeerQueue>,
}

impl Dialer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: ReplicaId,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        queue: Arc<PeerQueue>,
    ) -> Dialer {
        Dialer {
            shared,
            peer,
            addr,
            connector: TlsConnector::from(config),
            name,
            queue,
        }
    }

    pub(crate) async fn run(self) {
        let span =
            tracing::info_span!("dial", me = %self.shared.me, peer = %self.peer, addr = %self.addr);
        self.redial().instrument(span).await;
    }

    /// Connects, sends until the connection ends, waits, and again, until the task is aborted.
    async fn redial(self) {
        let me = self.shared.me;
        let mut backoff = Backoff::new(me, self.peer);
        let mut was_up = true;
        loop {
            match self.connect().await {
                Ok(stream) => {
                    backoff.reset();
                    was_up = true;
                    self.queue.set_connected(true);
                    tracing::info!("connected");
                    let ended = self.pump(stream).await;
                    self.queue.set_connected(false);
                    match ended {
                        Ended::UnexpectedData => {
                            Counters::add(&self.shared.counters.garbage_connections, 1);
                            tracing::warn!("connection dropped: {ended}");
                        }
                        Ended::Io(ref e) if is_auth_failure(e) => {
                            Counters::add(&self.shared.counters.auth_failures, 1);
                            tracing::warn!("the peer refused our certificate: {e}");
                        }
                        _ => tracing::info!("connection lost: {ended}"),
                    }
                }
                Err(e) if is_auth_failure(&e) => {
                    Counters::add(&self.shared.counters.auth_failures, 1);
                    tracing::warn!("peer failed authentication: {e}");
                }
                Err(e) => {
                    // A peer that is down is normal: say it once, then quietly retry.
                    if was_up {
                        tracing::info!("cannot connect, retrying with back-off: {e}");
                    } else {
                        tracing::debug!("cannot connect: {e}");
                    }
                    was_up = false;
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let timed_out =
            |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned());
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| timed_out("TCP connect timed out"))??;
        tcp.set_nodelay(true)?;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connector.connect(self.name.clone(), tcp),
        )
        .await
        .map_err(|_| timed_out("TLS handshake timed out"))?
    }

    /// Writes queued frames until the connection fails or the peer closes it.
    async fn pump(&self, stream: TlsStream<TcpStream>) -> Ended {
        let (mut reader, writer) = tokio::io::split(stream);
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
        let mut probe = [0u8; 1];
        loop {
            let batch = self.queue.take_all();
            if batch.is_empty() {
                tokio::select! {
                    () = self.queue.ready.notified() => continue,
                    read = reader.read(&mut probe) => return match read {
                        Ok(0) => Ended::Closed,
                        Ok(_) => Ended::UnexpectedData,
                        Err(e) => Ended::Io(e),
                    },
                }
            }
            let count = batch.len() as u64;
            let bytes: u64 = batch.iter().map(|f| f.len() as u64 + 4).sum();
            let write = async {
                for frame in &batch {
                    write_frame(&mut writer, frame).await?;
                }
                writer.flush().await
            };
            let counters = &self.shared.counters;
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {
                    Counters::add(&counters.frames_sent, count);
                    Counters::add(&counters.bytes_sent, bytes);
                }
                Ok(Err(e)) => {
                    Counters::add(&counters.frames_dropped, count);
                    return Ended::Io(e);
                }
                Err(_) => {
                    Counters::add(&counters.frames_dropped, count);
                    return Ended::WriteTimeout;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest() {
        let queue = PeerQueue::new(3);
        let dropped: Vec<bool> = (0u8..5).map(|i| queue.push(Bytes::from(vec![i]))).collect();
        assert_eq!(dropped, [false, false, false, true, true]);
        let kept: Vec<u8> = queue.take_all().iter().map(|f| f[0]).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(ReplicaId(0), ReplicaId(1));
        let mut ceiling = BACKOFF_INITIAL;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_INITIAL);
        let a: Vec<_> = {
            let mut b = Backoff::new(ReplicaId(0), ReplicaId(1));
            (0..5).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = Backoff::new(ReplicaId(2), ReplicaId(1));
            (0..5).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, b, "different dialers spread their retries");
    }
}
