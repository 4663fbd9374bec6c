//! What a replica offers its clients, whatever the protocol they speak (gRPC in `grpc`, HTTP/JSON in `http`):
//! submit a client-signed request and get this replica's signed reply, and read where the replica stands.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbft_crypto::{Keyring, Verified};
use pbft_types::wire::{AwaitedReply, SignedEnvelope};
use pbft_types::{ClientId, Reply, Request, Signed, Timestamp};
use prost::Message;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client_slots::{ClientSlot, ClientSlots};
use crate::metrics::Metrics;
use crate::runtime::{NodeHandle, SubmitError};
use crate::transport::TransportStats;
use crate::waiters::ReplySink;

/// Room for a sealed request's envelope around its operation besides its seal: ids, timestamp and the protobuf
/// framing. The seal is a 64-byte signature or an authenticator of one MAC per replica.
const ENVELOPE_ALLOWANCE: usize = 256;

/// Why a submission got no reply.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The bytes are not an encoded, signed REQUEST within the size limit.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request is not signed by the client it names, or names no client of the cluster.
    #[error("request not authenticated: {0}")]
    Unauthenticated(String),
    /// The replica did not execute the request in time (the cluster may be changing view): retry.
    #[error("{0}")]
    Timeout(SubmitError),
    /// The client already had a newer request executed: this one never will be.
    #[error("{0}")]
    Stale(SubmitError),
    /// Too many bytes of requests already wait for this replica to execute them: retry later.
    #[error("the replica is overloaded: {waiting} bytes of requests are waiting; retry later")]
    Overloaded { waiting: usize },
    /// This client already has as many requests waiting at this replica as one client may.
    #[error(
        "client {client} already has {limit} requests waiting at this replica, the most one client may; \
         wait for their replies"
    )]
    TooManyFromClient { client: u64, limit: usize },
    #[error("{0}")]
    Stopped(SubmitError),
}

/// Where a replica stands, as its API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub replica: u64,
    pub view: u64,
    pub changing_view: bool,
    pub last_executed: u64,
    pub stable_checkpoint: u64,
    pub high_watermark: u64,
    pub batches_committed: u64,
    pub requests_executed: u64,
    pub view_changes: u64,
    pub inputs_refused: u64,
    pub messages_unauthenticated: u64,
    pub peers_connected: u64,
    /// Connections refused because the other side did not authenticate as a replica of the cluster.
    pub peer_auth_failures: u64,
    /// Connections dropped because the other side sent something no replica sends.
    pub peer_garbage_connections: u64,
}

/// Reads the replica transport's counters (an in-process cluster has no transport to report on).
pub type PeerStats = Arc<dyn Fn() -> TransportStats + Send + Sync>;

/// The most bytes of requests one replica holds waiting for their execution, over all connections, streams and
/// the HTTP API together. Past it a submission is refused at once: a flood of requests costs the flooder
/// refusals, never the replica its memory.
const MAX_WAITING_BYTES: usize = 256 << 20;

/// The most requests one client may have waiting at one replica (see `client_slots`). A client of this
/// project's library has one.
pub const MAX_WAITING_PER_CLIENT: usize = 64;

/// What a waiting request counts for at least: its envelope is small, but its waiter and task are not free.
const MIN_WAITING_BYTES: usize = 1024;

/// The answer to one submitted request, once this replica executed it (or refused it).
pub type Submission = Pin<Box<dyn Future<Output = Result<Signed<Reply>, ApiError>> + Send>>;

/// Where a submission's outcome goes, for a caller that does not wait on a future (a stream's entry).
pub trait SubmissionSink: Send + 'static {
    /// Takes the outcome. Called once, on whatever thread has it, so it must not block.
    fn answer(self, outcome: Result<Signed<Reply>, ApiError>);

    /// Whether nobody listens any longer: the submission's wait is then dropped, and what it held freed.
    fn is_closed(&self) -> bool;
}

/// A oneshot channel is a sink, for a caller that wants a future after all.
impl SubmissionSink for tokio::sync::oneshot::Sender<Result<Signed<Reply>, ApiError>> {
    fn answer(self, outcome: Result<Signed<Reply>, ApiError>) {
        let _ = self.send(outcome);
    }

    fn is_closed(&self) -> bool {
        tokio::sync::oneshot::Sender::is_closed(self)
    }
}

/// A sink's submission as the node holds it: with the room and client slot it takes until it is answered.
struct Holding<S> {
    sink: S,
    _held: Held,
    /// Where to record how long an answered request took, from when.
    answered: Option<(Arc<Metrics>, Instant)>,
}

impl<S: SubmissionSink> ReplySink for Holding<S> {
    fn answer(self: Box<Self>, outcome: Result<Signed<Reply>, SubmitError>) {
        let Holding { sink, answered, .. } = *self;
        if let (Ok(_), Some((metrics, started))) = (&outcome, answered) {
            metrics.answered(started.elapsed());
        }
        sink.answer(outcome.map_err(ApiError::from));
    }

    fn is_closed(&self) -> bool {
        self.sink.is_closed()
    }
}

/// A request that passed every check, with the room and the client slot it holds while it waits.
struct Admitted {
    request: Verified<Request>,
    held: Held,
}

/// What a waiting submission holds until it is answered: its share of the room for waiting requests, and one of
/// its client's slots.
type Held = (OwnedSemaphorePermit, ClientSlot);

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Timeout(_) => ApiError::Timeout(e),
            SubmitError::Stale(_) => ApiError::Stale(e),
            SubmitError::Stopped => ApiError::Stopped(e),
        }
    }
}

/// The client API of one replica, shared by its gRPC and HTTP servers.
#[derive(Clone)]
pub struct ClientApi {
    node: NodeHandle,
    keyring: Arc<Keyring>,
    max_request: usize,
    /// The largest operation the cluster accepts (`Params::max_request_size`).
    max_operation: usize,
    timeout: Duration,
    peers: Option<PeerStats>,
    /// One permit per byte of the requests waiting for execution (see MAX_WAITING_BYTES).
    waiting: Arc<Semaphore>,
    waiting_limit: usize,
    clients: Arc<ClientSlots>,
}

impl ClientApi {
    /// `max_operation` bounds a request's operation, as the cluster's parameters do (an encoded, sealed request
    /// may be up to 1 KiB larger); `timeout` is how long a submission waits for this replica to execute it.
    pub fn new(
        node: NodeHandle,
        keyring: Keyring,
        max_operation: usize,
        timeout: Duration,
    ) -> Self {
        let seal = (keyring.replicas() * pbft_types::MAC_LEN).max(64);
        ClientApi {
            node,
            max_request: max_operation
                .saturating_add(ENVELOPE_ALLOWANCE)
                .saturating_add(seal),
            keyring: Arc::new(keyring),
            max_operation,
            timeout,
            peers: None,
            waiting: Arc::new(Semaphore::new(MAX_WAITING_BYTES)),
            waiting_limit: MAX_WAITING_BYTES,
            clients: ClientSlots::new(MAX_WAITING_PER_CLIENT),
        }
    }

    /// Holds at most `bytes` of requests waiting for execution instead of MAX_WAITING_BYTES.
    pub fn with_waiting_limit(mut self, bytes: usize) -> Self {
        self.waiting = Arc::new(Semaphore::new(bytes));
        self.waiting_limit = bytes;
        self
    }

    /// Lets each client have at most `requests` waiting instead of MAX_WAITING_PER_CLIENT.
    pub fn with_client_limit(mut self, requests: usize) -> Self {
        self.clients = ClientSlots::new(requests);
        self
    }

    /// Reports on the replica's connections through `peers`.
    pub fn with_peer_stats(mut self, peers: PeerStats) -> Self {
        self.peers = Some(peers);
        self
    }

    pub fn max_request(&self) -> usize {
        self.max_request
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.node.metrics()
    }

    /// Decodes, authenticates and submits an encoded signed REQUEST; answers with this replica's signed REPLY
    /// once it executed the request.
    pub async fn submit(&self, bytes: &[u8]) -> Result<Signed<Reply>, ApiError> {
        let signed = Signed::<Request>::decode(bytes, self.max_request)
            .map_err(|e| ApiError::Malformed(e.to_string()))?;
        self.submit_signed(signed).await
    }

    /// As `submit`, for an envelope a gRPC server already decoded.
    pub async fn submit_envelope(
        &self,
        envelope: SignedEnvelope,
    ) -> Result<Signed<Reply>, ApiError> {
        let admitted = self.admit_envelope(envelope)?;
        self.submit_admitted(admitted).await
    }

    async fn submit_signed(&self, signed: Signed<Request>) -> Result<Signed<Reply>, ApiError> {
        let admitted = self.admit(signed)?;
        self.submit_admitted(admitted).await
    }

    async fn submit_admitted(&self, admitted: Admitted) -> Result<Signed<Reply>, ApiError> {
        match self.wait_all(vec![admitted]).await.pop() {
            Some(reply) => reply.await,
            None => Err(ApiError::Stopped(SubmitError::Stopped)),
        }
    }

    /// As `submit_envelope` for each of `envelopes`, handed to the replica together, for a caller that does not
    /// wait on futures (a stream): each envelope's outcome goes to its sink (`sinks` has one per envelope, in
    /// order), at once for a request refused before submission, once this replica executed it otherwise.
    pub async fn submit_envelopes_to<S: SubmissionSink>(
        &self,
        envelopes: Vec<SignedEnvelope>,
        sinks: Vec<S>,
    ) {
        let mut requests = Vec::with_capacity(envelopes.len());
        let mut holdings: Vec<Box<dyn ReplySink>> = Vec::with_capacity(envelopes.len());
        let metrics = self.node.metrics();
        let started = Instant::now();
        // Everything but authentication first, so that the signatures of what passed are checked in one batch.
        let mut unchecked = Vec::with_capacity(envelopes.len());
        let mut waiting = Vec::with_capacity(envelopes.len());
        for (envelope, sink) in envelopes.into_iter().zip(sinks) {
            match self
                .decode_envelope(envelope)
                .and_then(|s| self.admit_unverified(s))
            {
                Ok((signed, permit)) => {
                    unchecked.push(signed);
                    waiting.push((permit, sink));
                }
                Err(e) => sink.answer(Err(e)),
            }
        }
        let verdicts = self.keyring.verify_each_request(unchecked);
        for (verdict, (permit, sink)) in verdicts.into_iter().zip(waiting) {
            let admitted = verdict
                .map_err(|e| ApiError::Unauthenticated(e.to_string()))
                .and_then(|request| self.admit_verified(request, permit));
            match admitted {
                Ok(admitted) => {
                    metrics.submitted();
                    requests.push(admitted.request);
                    holdings.push(Box::new(Holding {
                        sink,
                        _held: admitted.held,
                        answered: Some((Arc::clone(metrics), started)),
                    }));
                }
                Err(e) => sink.answer(Err(e)),
            }
        }
        self.node.submit_to(requests, holdings, self.timeout).await;
    }

    /// Waits for this replica's replies to requests its clients sent to another replica, each asked for with
    /// an `AwaitedReply` (see `proto/pbft.proto`): each entry's outcome goes to its sink (`sinks` has one per
    /// entry, in order), with the reply (sealed with a MAC) once this replica executed the request, or a
    /// refusal. An entry must carry its client's MAC and takes a slot of that client, like a request.
    pub fn await_replies_to<S: SubmissionSink>(&self, awaited: Vec<AwaitedReply>, sinks: Vec<S>) {
        let mut keys = Vec::with_capacity(awaited.len());
        let mut holdings: Vec<Box<dyn ReplySink>> = Vec::with_capacity(awaited.len());
        for (entry, sink) in awaited.into_iter().zip(sinks) {
            let key = (ClientId(entry.client), Timestamp(entry.timestamp));
            match self.admit_awaited(key, &entry.mac) {
                Ok(held) => {
                    keys.push(key);
                    holdings.push(Box::new(Holding {
                        sink,
                        _held: held,
                        answered: None,
                    }));
                }
                Err(e) => sink.answer(Err(e)),
            }
        }
        self.node.await_to(keys, holdings, self.timeout);
    }

    fn admit_awaited(
        &self,
        (client, timestamp): (ClientId, Timestamp),
        mac: &[u8],
    ) -> Result<Held, ApiError> {
        self.keyring
            .check_awaited(client, timestamp, mac)
            .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        let permit = self.waiting_permit(MIN_WAITING_BYTES)?;
        let slot = self.client_slot(client)?;
        Ok((permit, slot))
    }

    fn admit_envelope(&self, envelope: SignedEnvelope) -> Result<Admitted, ApiError> {
        self.admit(self.decode_envelope(envelope)?)
    }

    fn decode_envelope(&self, envelope: SignedEnvelope) -> Result<Signed<Request>, ApiError> {
        let size = envelope.encoded_len();
        if size > self.max_request {
            return Err(ApiError::Malformed(format!(
                "{size} bytes, more than the limit of {}",
                self.max_request
            )));
        }
        Signed::<Request>::from_envelope(envelope).map_err(|e| ApiError::Malformed(e.to_string()))
    }

    /// Everything a request must pass before it is handed to the replica: its operation's size, room among the
    /// waiting bytes, its authentication, and a slot of its client's.
    fn admit(&self, signed: Signed<Request>) -> Result<Admitted, ApiError> {
        let (signed, permit) = self.admit_unverified(signed)?;
        let request = self
            .keyring
            .verify_request(signed)
            .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        self.admit_verified(request, permit)
    }

    /// The checks of `admit` before authentication: the operation's size, and room among the waiting bytes.
    fn admit_unverified(
        &self,
        signed: Signed<Request>,
    ) -> Result<(Signed<Request>, OwnedSemaphorePermit), ApiError> {
        // The replica would refuse it too, but silently: the client would wait out its deadline.
        let size = signed.value().operation.len();
        if size > self.max_operation {
            return Err(ApiError::Malformed(format!(
                "an operation of {size} bytes, more than the cluster's limit of {}",
                self.max_operation
            )));
        }
        let permit = self.waiting_permit(signed.body().len() + MIN_WAITING_BYTES)?;
        Ok((signed, permit))
    }

    /// The check of `admit` after authentication: a slot of the client's.
    fn admit_verified(
        &self,
        request: Verified<Request>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Admitted, ApiError> {
        let slot = self.client_slot(request.client)?;
        Ok(Admitted {
            request,
            held: (permit, slot),
        })
    }

    /// `weight` bytes of the room for waiting requests, or Overloaded.
    fn waiting_permit(&self, weight: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        self.waiting
            .clone()
            .try_acquire_many_owned(u32::try_from(weight).unwrap_or(u32::MAX))
            .map_err(|_| ApiError::Overloaded {
                waiting: self
                    .waiting_limit
                    .saturating_sub(self.waiting.available_permits()),
            })
    }

    /// One of `client`'s slots, or TooManyFromClient.
    fn client_slot(&self, client: ClientId) -> Result<ClientSlot, ApiError> {
        self.clients
            .take(client)
            .ok_or(ApiError::TooManyFromClient {
                client: client.0,
                limit: self.clients.per_client(),
            })
    }

    /// Hands admitted requests to the replica in one go; each future holds its request's room and slot until
    /// the request is answered.
    /// Hands admitted requests to the replica in one go; each future holds its request's room and slot until
    /// the request is answered.
    async fn wait_all(&self, admitted: Vec<Admitted>) -> Vec<Submission> {
        let (requests, held): (Vec<_>, Vec<_>) =
            admitted.into_iter().map(|a| (a.request, a.held)).unzip();
        let metrics = self.node.metrics();
        for _ in 0..requests.len() {
            metrics.submitted();
        }
        let started = Instant::now();
        self.node
            .submit_all(requests, self.timeout)
            .await
            .into_iter()
            .zip(held)
            .map(|(reply, held)| {
                let metrics = Arc::clone(metrics);
                let answer: Submission = Box::pin(async move {
                    let _held = held;
                    let reply = reply.await.map_err(ApiError::from)?;
                    metrics.answered(started.elapsed());
                    Ok(reply)
                });
                answer
            })
            .collect()
    }

    pub fn status(&self) -> StatusView {
        let s = self.node.status();
        let c = self.node.counters();
        let peers = self.transport_stats();
        StatusView {
            replica: s.id.0,
            view: s.view.0,
            changing_view: s.changing_view,
            last_executed: s.last_executed.0,
            stable_checkpoint: s.low_watermark.0,
            high_watermark: s.high_watermark.0,
            batches_committed: c.batches_committed,
            requests_executed: c.requests_executed,
            view_changes: c.view_changes,
            inputs_refused: c.inputs_refused,
            messages_unauthenticated: c.messages_unauthenticated,
            peers_connected: peers.peers_connected as u64,
            peer_auth_failures: peers.auth_failures,
            peer_garbage_connections: peers.garbage_connections,
        }
    }

    /// The metrics in the Prometheus text format, with the peer count brought up to date.
    pub fn render_metrics(&self) -> String {
        self.transport_stats();
        self.node.metrics().render()
    }

    /// The transport's counters, also brought up to date in the metrics.
    fn transport_stats(&self) -> TransportStats {
        let stats = self.peers.as_ref().map(|read| read()).unwrap_or_default();
        self.node.metrics().set_transport(&stats);
        stats
    }
}
