//! The client over the network: the [`Client`] state machine driven by tokio, talking to the replicas' gRPC API
//! (`service ReplicaApi` in `proto/pbft.proto`).
//!
//! A replica answers a submission with its own sealed reply once it executed the request, so a reply travels
//! back on the call that carried the request. The client therefore calls every replica at once, whatever replica
//! the state machine names: the primary orders the request, the backups forward it and watch that it gets
//! ordered, and each answers on its call. The result is accepted once f+1 distinct replicas sealed matching
//! replies. When no result comes in time, the request goes again to every replica whose call has ended.
//!
//! With streamed [`Connections`] the calls travel on one long-lived stream per replica instead of one gRPC call
//! each (see `stream`), and their answers arrive in the client's mailbox. A call ends with the replica's answer
//! to it, or when its stream breaks; one that got neither for `CALL_TIMEOUT` (the replica gives up sooner and
//! says so, unless it is faulty) counts as ended at the next retransmission. With MAC authenticators as well, only
//! the replica the state machine names (the primary it believes in) gets the request itself, as in PBFT; the
//! others get an `AwaitedReply`, a few bytes that ask for their reply to it once the primary's PRE-PREPARE made
//! them execute it. That spares each backup the request's bytes and its checks, which the PRE-PREPARE brings
//! anyway. When no result comes in time, the retransmission sends the request itself to every replica, so that
//! the backups forward it and watch that it gets ordered (the view-change timer) as before.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use pbft_crypto::{KeyPair, Keyring, SessionKeys, Signer};
use pbft_types::wire::replica_api_client::ReplicaApiClient;
use pbft_types::wire::{ReplicaStatus, StatusQuery};
use pbft_types::{
    ClientAuth, ClientId, ClusterConfig, Principal, ReplicaId, Reply, Request, Signed, View,
};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use crate::stream::{CallId, Carries, Delivery, Key, Mailbox, Registration, ReplicaStream};
use crate::{Client, ClientError, ClientOutput, Destination};

/// How long one call to a replica may take before it is abandoned (the replica itself gives up sooner and
/// answers DEADLINE_EXCEEDED when it could not execute the request). On a stream, a call older than this counts
/// as ended at the next retransmission, which then sends it again.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum NetError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "no result after {0:?}: fewer than f+1 replicas answered alike (are enough of them running?)"
    )]
    Timeout(Duration),
    #[error("the cluster configuration: {0}")]
    Config(String),
    #[error("replica {replica}: {message}")]
    Replica { replica: ReplicaId, message: String },
}

/// Settings of a network client.
#[derive(Clone, Debug)]
pub struct NetClientConfig {
    pub config: ClusterConfig,
    pub id: ClientId,
    pub key: KeyPair,
    /// The gRPC address of every replica, in replica id order.
    pub replicas: Vec<SocketAddr>,
    /// The first retransmission timeout; it doubles while the request waits.
    pub retransmit_after: Duration,
    /// How long `submit` waits for a result before it fails.
    pub deadline: Duration,
}

/// A PBFT client over the network. One request at a time; use several clients (distinct ids) for concurrency.
pub struct NetClient {
    core: Client,
    keyring: Keyring,
    replicas: Vec<ReplicaApiClient<Channel>>,
    /// With streamed connections: the stream to every replica, which carries the requests.
    streams: Option<Vec<ReplicaStream>>,
    /// With streamed connections and MAC authenticators: the client's sessions, with which it asks the replicas
    /// other than the primary for their replies instead of sending them the request.
    awaiting: Option<SessionKeys>,
    deadline: Duration,
    /// Where every replica's answers for this client arrive, on streams and unary calls alike.
    mailbox: Mailbox,
    inbox: mpsc::UnboundedReceiver<Delivery>,
    next_call: CallId,
}

/// A connection to every replica's gRPC API, opened at the first call; clones share it.
#[derive(Clone)]
pub struct Connections {
    replicas: Vec<ReplicaApiClient<Channel>>,
    /// Streamed connections: one `SubmitStream` per replica carries the requests of every client sharing them.
    streams: Option<Vec<ReplicaStream>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("replicas", &self.replicas.len())
            .field("streamed", &self.streams.is_some())
            .finish()
    }
}

impl Connections {
    /// `replicas`: the gRPC address of every replica, in replica id order.
    pub fn new(replicas: &[SocketAddr]) -> Result<Connections, NetError> {
        let replicas = replicas
            .iter()
            .map(|addr| {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| NetError::Config(format!("address {addr}: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true);
                Ok(ReplicaApiClient::new(endpoint.connect_lazy()))
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        Ok(Connections {
            replicas,
            streams: None,
        })
    }

    /// Like `new`, but requests travel on one long-lived bidirectional stream per replica (`SubmitStream`), opened
    /// at the first request and again after it breaks, and the replicas answer them in batches: far less
    /// per-request work on both sides than a gRPC call per request and replica, when many clients share them.
    pub fn streamed(replicas: &[SocketAddr]) -> Result<Connections, NetError> {
        let mut connections = Connections::new(replicas)?;
        let streams = replicas
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                ReplicaStream::new(ReplicaId(i as u64), *addr).map_err(NetError::Config)
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        connections.streams = Some(streams);
        Ok(connections)
    }

    /// Whether requests travel on streams (see `streamed`).
    pub fn is_streamed(&self) -> bool {
        self.streams.is_some()
    }
}

/// A call to one replica that has not answered yet.
struct Call {
    id: CallId,
    carries: Carries,
    since: Instant,
    /// On a stream, where the answer is awaited; dropping it forgets the call.
    _registration: Option<Registration>,
}

/// Unary calls in flight: each ends with its replica's answer.
type UnaryCalls = FuturesUnordered<Pin<Box<dyn Future<Output = Delivery> + Send>>>;

/// What one submission is waiting for.
struct Round {
    /// The request, once it was sent.
    key: Option<Key>,
    calls: HashMap<ReplicaId, Call>,
    unary: UnaryCalls,
    /// When the state machine's retransmission timer fires.
    timer: Option<Instant>,
}

impl Round {
    /// Forgets the calls that got no answer within `CALL_TIMEOUT`: the retransmission that follows calls those
    /// replicas again (one that lost a call answers neither it nor its stream's end).
    fn forget_stale_calls(&mut self, now: Instant) {
        self.calls
            .retain(|_, call| now.saturating_duration_since(call.since) < CALL_TIMEOUT);
    }
}

/// What woke a submission.
// Only ever one, on the stack for one turn of the loop: boxing the answer would cost more than its size.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Answer(Delivery),
    Timer,
}

impl NetClient {
    /// Prepares connections to every replica; none is opened before the first call, so a replica that is down
    /// does not stop the client from starting.
    pub fn new(settings: NetClientConfig) -> Result<NetClient, NetError> {
        let connections = Connections::new(&settings.replicas)?;
        NetClient::with_connections(settings, &connections)
    }

    /// A client whose calls travel over `connections`, which many clients may share (each call is one HTTP/2
    /// stream). `settings.replicas` is not used.
    pub fn with_connections(
        settings: NetClientConfig,
        connections: &Connections,
    ) -> Result<NetClient, NetError> {
        if connections.replicas.len() != settings.config.n() {
            return Err(NetError::Config(format!(
                "{} replica addresses for {} replicas",
                connections.replicas.len(),
                settings.config.n()
            )));
        }
        let mut keyring =
            Keyring::of_replicas(&settings.config).map_err(|e| NetError::Config(e.to_string()))?;
        let replicas = connections.replicas.clone();
        let streams = connections.streams.clone();
        let signer = Signer::new(Principal::Client(settings.id), settings.key.clone());
        let mut core = Client::new(settings.config.clone(), signer, settings.retransmit_after);
        let mut awaiting = None;
        if settings.config.params.client_auth == ClientAuth::Macs {
            // Requests carry MACs, and so do the replies to them.
            let sessions = SessionKeys::for_client(&settings.config, settings.id, &settings.key)
                .map_err(|e| NetError::Config(e.to_string()))?;
            core = core.with_sessions(sessions.clone());
            keyring = keyring.with_sessions(sessions.clone());
            awaiting = streams.is_some().then_some(sessions);
        }
        let (mailbox, inbox) = mpsc::unbounded_channel();
        Ok(NetClient {
            core,
            keyring,
            replicas,
            streams,
            awaiting,
            deadline: settings.deadline,
            mailbox,
            inbox,
            next_call: 0,
        })
    }

    pub fn id(&self) -> ClientId {
        self.core.id()
    }

    /// The view the client believes current, learnt from replies.
    pub fn view(&self) -> View {
        self.core.view()
    }

    /// Submits an operation and waits for its result: the bytes f+1 distinct replicas signed alike.
    pub async fn submit(&mut self, operation: Bytes) -> Result<Bytes, NetError> {
        let outputs = self.core.submit(operation, wall_clock_micros())?;
        // Unary calls run inside this future rather than as tasks of their own, and streamed ones cost an entry
        // in their stream's demux: a request costs no task spawns, and returning (or being dropped) forgets
        // whatever calls are still open.
        let mut round = Round {
            key: None,
            calls: HashMap::new(),
            unary: FuturesUnordered::new(),
            timer: None,
        };
        let deadline = Instant::now() + self.deadline;
        if let Some(done) = self.carry_out(outputs, &mut round) {
            return Ok(done);
        }
        loop {
            let wake = round.timer.map_or(deadline, |t| t.min(deadline));
            let event = tokio::select! {
                // Never ends: this client holds a sender of its own mailbox.
                Some(delivery) = self.inbox.recv() => Wake::Answer(delivery),
                Some(delivery) = round.unary.next(), if !round.unary.is_empty() => Wake::Answer(delivery),
                () = tokio::time::sleep_until(wake) => Wake::Timer,
            };
            let outputs = match event {
                // An answer for an earlier request of this client's, come after it completed.
                Wake::Answer(delivery) if Some(delivery.key) != round.key => continue,
                Wake::Answer(delivery) => self.on_answer(delivery, &mut round),
                Wake::Timer => {
                    if Instant::now() >= deadline {
                        self.core.abandon();
                        return Err(NetError::Timeout(self.deadline));
                    }
                    round.timer = None;
                    round.forget_stale_calls(Instant::now());
                    self.core.on_timeout()
                }
            };
            if let Some(done) = self.carry_out(outputs, &mut round) {
                return Ok(done);
            }
        }
    }

    /// What the state machine makes of one replica's answer.
    fn on_answer(&mut self, delivery: Delivery, round: &mut Round) -> Vec<ClientOutput> {
        let Delivery {
            replica,
            call,
            carries,
            answer,
            ..
        } = delivery;
        // The answer to a call the request superseded, or one forgotten at a retransmission, leaves the newer call
        // in place; a reply in it is as good as any, but a failure says nothing about the newer call.
        let current = round.calls.get(&replica).is_some_and(|c| c.id == call);
        if current {
            round.calls.remove(&replica);
        }
        match answer {
            Ok(reply) => match self.verify(replica, reply) {
                Some(reply) => self.core.on_reply(reply),
                None => Vec::new(),
            },
            // The replica is down, refused the request, or gave up waiting; the retransmission timer will try it
            // again. But if it was the one replica sent the request itself while the others only wait for their
            // replies to it, nobody else has it: it goes to every replica now, as when the timer fires (a primary
            // that crashed costs no timeout).
            Err(_) if !current => Vec::new(),
            Err(_) => {
                let stranded = carries == Carries::Request
                    && round
                        .calls
                        .values()
                        .any(|call| call.carries == Carries::AwaitedReply);
                if stranded {
                    self.core.on_timeout()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Reads one replica's status.
    pub async fn status(&self, replica: ReplicaId) -> Result<ReplicaStatus, NetError> {
        let mut api = self
            .replicas
            .get(replica.index())
            .cloned()
            .ok_or_else(|| NetError::Config(format!("no replica {replica}")))?;
        api.get_status(StatusQuery {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| NetError::Replica {
                replica,
                message: status.message().to_string(),
            })
    }

    /// A reply is used only if it is sealed (signed, or MACed with this client's session) by the replica that
    /// answered the call. One the client would not count (for another request) is dropped unchecked: a signature
    /// check costs more than anything else a client does with a reply. (Late replies to a completed request do
    /// not get here: the stream's demultiplexer drops answers to calls of a finished round.)
    fn verify(
        &self,
        replica: ReplicaId,
        signed: Signed<Reply>,
    ) -> Option<pbft_crypto::Verified<Reply>> {
        if signed.value().replica != replica || !self.core.wants(signed.value()) {
            return None;
        }
        self.keyring.verify(signed).ok()
    }

    /// Carries out the state machine's outputs; returns the result when the request completed.
    fn carry_out(&mut self, outputs: Vec<ClientOutput>, round: &mut Round) -> Option<Bytes> {
        for output in outputs {
            match output {
                ClientOutput::Send { request, to } => {
                    let key = (request.value().client, request.value().timestamp);
                    round.key = Some(key);
                    self.call_all(&request, key, to, round);
                }
                ClientOutput::SetTimer(after) => round.timer = Some(Instant::now() + after),
                ClientOutput::CancelTimer => round.timer = None,
                ClientOutput::Completed { result, .. } => {
                    // Calls still open have nothing left to deliver; dropping them forgets them.
                    round.calls.clear();
                    round.unary.clear();
                    return Some(result);
                }
            }
        }
        None
    }

    /// Replies come back on the call that carried the request, or that asked for the reply, so every replica is
    /// called (see the module documentation). A replica whose call is still open already has the request, or is
    /// asked for its reply and gets the request only once it goes to all.
    fn call_all(
        &mut self,
        request: &Signed<Request>,
        key: Key,
        to: Destination,
        round: &mut Round,
    ) {
        let envelope = request.to_envelope();
        for (i, api) in self.replicas.iter().enumerate() {
            let replica = ReplicaId(i as u64);
            let awaited = match (to, &self.awaiting) {
                (Destination::Replica(primary), Some(sessions)) if primary != replica => {
                    sessions.awaited_mac(replica, key.1)
                }
                _ => None,
            };
            let carries = if awaited.is_some() {
                Carries::AwaitedReply
            } else {
                Carries::Request
            };
            // Nothing to add where the request is already, or where the wish is all that goes.
            if round
                .calls
                .get(&replica)
                .is_some_and(|c| c.carries == Carries::Request || c.carries == carries)
            {
                continue;
            }
            let call = self.next_call;
            self.next_call += 1;
            let registration = match self.streams.as_ref().and_then(|s| s.get(i)) {
                Some(stream) => {
                    let sent = match awaited {
                        Some(mac) => stream.await_reply(key, mac, (call, &self.mailbox)),
                        None => stream.submit(envelope.clone(), key, (call, &self.mailbox)),
                    };
                    match sent {
                        Ok(registration) => Some(registration),
                        Err(status) => {
                            // Not sent (the stream is down): answered at once, as a failed unary call would be.
                            let failed = Delivery {
                                replica,
                                call,
                                carries,
                                key,
                                answer: Err(status),
                            };
                            round.unary.push(Box::pin(std::future::ready(failed)));
                            None
                        }
                    }
                }
                None => {
                    let mut api = api.clone();
                    let envelope = envelope.clone();
                    round.unary.push(Box::pin(async move {
                        let answer = api.submit(envelope).await.and_then(|answer| {
                            Signed::<Reply>::from_envelope(answer.into_inner())
                                .map_err(|e| tonic::Status::data_loss(e.to_string()))
                        });
                        Delivery {
                            replica,
                            call,
                            carries,
                            key,
                            answer,
                        }
                    }));
                    None
                }
            };
            round.calls.insert(
                replica,
                Call {
                    id: call,
                    carries,
                    since: Instant::now(),
                    _registration: registration,
                },
            );
        }
    }
}

/// Microseconds of wall time: the timestamp hint that keeps a client's timestamps increasing across runs of
/// short-lived processes using the same client id.
fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: CallId, since: Instant) -> Call {
        Call {
            id,
            carries: Carries::Request,
            since,
            _registration: None,
        }
    }

    #[test]
    fn a_retransmission_forgets_only_the_calls_older_than_the_call_timeout() {
        let now = Instant::now() + CALL_TIMEOUT * 2;
        let mut round = Round {
            key: None,
            calls: HashMap::from([
                (
                    ReplicaId(0),
                    call(1, now - CALL_TIMEOUT - Duration::from_millis(1)),
                ),
                (
                    ReplicaId(1),
                    call(2, now - CALL_TIMEOUT + Duration::from_millis(1)),
                ),
                (ReplicaId(2), call(3, now)),
            ]),
            unary: FuturesUnordered::new(),
            timer: None,
        };
        round.forget_stale_calls(now);
        let mut kept: Vec<CallId> = round.calls.values().map(|c| c.id).collect();
        kept.sort();
        assert_eq!(kept, vec![2, 3]);
    }
}
