//! Requests over `ReplicaApi.SubmitStream`: one long-lived bidirectional stream per replica carries the requests
//! of every [`NetClient`](crate::net::NetClient) sharing a set of streamed
//! [`Connections`](crate::net::Connections), and brings their answers back in batches.
//!
//! A unary call pairs a reply with its request by construction; on a stream, the [`Demux`] does it: each
//! submission registers under its request's (client, timestamp) with its client's [`Mailbox`], and every reply
//! (by the ids its body names) or refusal (by the ids it carries) is put into the mailbox registered under them,
//! as a [`Delivery`] that names the replica and what was sent to it. The client sees what a unary call would have
//! returned: the envelope, still to be verified, or an error status. One mailbox serves every stream and every
//! request of a client, so a request in flight costs an entry in each demux it waits on, and nothing else: no
//! task, future, channel or timer of its own.
//!
//! Requests queue for the stream, and each time the transport can take a message, every request queued at that
//! moment goes out in it as one `RequestBatch` (up to a cap): under load a few messages carry many requests, and
//! an idle stream sends each request the moment it is queued, never waiting to fill a batch.
//!
//! The stream is opened at the first submission and again after it breaks, with a growing pause between failed
//! attempts so that a replica that is down costs a failed submission, not a connection attempt each time. When a
//! stream breaks, every submission waiting on it fails at once; the client's retransmission sends them again.
//! A replica gives up on a request it could not execute in time and says so, so an answer always comes, unless
//! the replica is faulty: the client does not wait on a stream beyond its own deadline.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pbft_types::wire::replica_api_client::ReplicaApiClient;
use pbft_types::wire::{AwaitedReply, ReplyBatch, RequestBatch, SignedEnvelope};
use pbft_types::{ClientId, ReplicaId, Reply, Signed, Timestamp};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// The pause after the first failed attempt to open a stream; it doubles with each further failure, up to
/// [`MAX_PAUSE`], and starts again from here once a stream opened.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Requests in one outgoing message at most: a replica refuses a batch of more than it handles at once on a
/// stream (4096), and a quarter of that already spreads a message's cost thinly.
const PACK_REQUESTS: usize = 1024;

/// An outgoing message takes no request that would carry it past this many bytes, unless it is the first: well
/// within the 4 MiB a replica takes.
const PACK_BYTES: usize = 1 << 20;

/// The largest batch of answers accepted: a replica caps its batches near 1 MiB plus one reply, and a reply
/// carries a result of the application's choosing.
const MAX_BATCH: usize = 64 << 20;

/// A submission's answer: the replica's reply, decoded (to be routed) but not verified yet, or why there is none.
pub(crate) type Answer = Result<Signed<Reply>, Status>;

/// Which request an answer is for.
pub(crate) type Key = (ClientId, Timestamp);

/// What went to a replica for a request: the request itself, or only the wish for the reply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carries {
    Request,
    AwaitedReply,
}

/// Tells a client's calls apart, even two of the same request to the same replica.
pub(crate) type CallId = u64;

/// One replica's answer for a request, as it reaches the client's mailbox.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) replica: ReplicaId,
    pub(crate) call: CallId,
    pub(crate) carries: Carries,
    pub(crate) key: Key,
    pub(crate) answer: Answer,
}

/// Where the answers for one client's submissions arrive, from every replica's stream.
pub(crate) type Mailbox = mpsc::UnboundedSender<Delivery>;

/// What a stream carries to the replica: a request, or a client's wish for the reply to a request it sent to
/// another replica.
pub(crate) enum Outgoing {
    Request(SignedEnvelope),
    Awaited(AwaitedReply),
}

impl Outgoing {
    fn carries(&self) -> Carries {
        match self {
            Outgoing::Request(_) => Carries::Request,
            Outgoing::Awaited(_) => Carries::AwaitedReply,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Outgoing::Request(envelope) => envelope.encoded_len(),
            Outgoing::Awaited(awaited) => awaited.encoded_len(),
        }
    }
}

/// One replica's stream, shared by every client of a set of connections; clones share it.
#[derive(Clone)]
pub(crate) struct ReplicaStream {
    inner: Arc<Inner>,
}

struct Inner {
    api: ReplicaApiClient<Channel>,
    demux: Arc<Demux>,
    link: Mutex<Link>,
}

/// What clients queue for the stream. A replica that stops reading (it is faulty, or cannot execute and so
/// pushes back with HTTP/2 flow control) fills it; then a call to it fails at once, and the client carries on
/// with the others, instead of queueing without limit for a replica that may never read again.
type Queue = mpsc::Sender<Outgoing>;

/// Entries a stream's queue holds at most: several for each of the clients of a busy load generator.
const QUEUE: usize = 4096;

/// The stream open now, if any, and when to try again after failures.
struct Link {
    open: Option<(StreamId, Queue)>,
    next_id: StreamId,
    retry_at: Option<Instant>,
    pause: Duration,
}

/// Tells the streams opened one after another apart, so that a stream that broke fails only its own submissions.
type StreamId = u64;

impl ReplicaStream {
    /// A stream to `replica` at `addr` (its gRPC API); nothing is opened before the first submission.
    pub(crate) fn new(replica: ReplicaId, addr: SocketAddr) -> Result<ReplicaStream, String> {
        // A channel of its own: the unary channel times each call out as a whole, which would end a stream.
        // Keep-alive pings find a replica that vanished without closing its connection.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let api =
            ReplicaApiClient::new(endpoint.connect_lazy()).max_decoding_message_size(MAX_BATCH);
        Ok(ReplicaStream {
            inner: Arc::new(Inner {
                api,
                demux: Arc::new(Demux::new(replica)),
                link: Mutex::new(Link {
                    open: None,
                    next_id: 0,
                    retry_at: None,
                    pause: FIRST_PAUSE,
                }),
            }),
        })
    }

    /// Sends `envelope` (the request `key` names) on the stream as `call`; the replica's answer will reach its
    /// mailbox, unless the returned registration was dropped first.
    pub(crate) fn submit(
        &self,
        envelope: SignedEnvelope,
        key: Key,
        call: (CallId, &Mailbox),
    ) -> Result<Registration, Status> {
        self.send(Outgoing::Request(envelope), key, call)
    }

    /// Asks the replica for its reply to the request `key` names, which went to another replica; the reply will
    /// reach the mailbox of `call`. `mac` is the client's MAC of the wish for this replica.
    pub(crate) fn await_reply(
        &self,
        key: Key,
        mac: [u8; pbft_types::MAC_LEN],
        call: (CallId, &Mailbox),
    ) -> Result<Registration, Status> {
        let awaited = AwaitedReply {
            client: key.0.0,
            timestamp: key.1.0,
            mac: mac.to_vec().into(),
        };
        self.send(Outgoing::Awaited(awaited), key, call)
    }

    fn send(
        &self,
        outgoing: Outgoing,
        key: Key,
        (call, mailbox): (CallId, &Mailbox),
    ) -> Result<Registration, Status> {
        // Sent under the link's lock: no handle on the queue is cloned per request, which every client would
        // contend for.
        let mut link = self
            .inner
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (id, queue) = self.open(&mut link)?;
        // Registered first, so that no answer can come before its waiter.
        let registration =
            self.inner
                .demux
                .register(key, id, (call, outgoing.carries()), mailbox)?;
        queue.try_send(outgoing).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Status::resource_exhausted(format!(
                "{QUEUE} entries wait for the stream to the replica, which is not reading"
            )),
            mpsc::error::TrySendError::Closed(_) => {
                Status::unavailable("the stream to the replica closed")
            }
        })?;
        Ok(registration)
    }

    /// The open stream, opened now if there is none and no pause is running.
    fn open<'a>(&self, link: &'a mut Link) -> Result<(StreamId, &'a Queue), Status> {
        let usable = link
            .open
            .as_ref()
            .is_some_and(|(_, requests)| !requests.is_closed());
        if !usable {
            if let Some(at) = link.retry_at {
                let now = Instant::now();
                if now < at {
                    return Err(Status::unavailable(format!(
                        "the stream to the replica failed; next attempt in {:?}",
                        at - now
                    )));
                }
            }
            let id = link.next_id;
            link.next_id += 1;
            let (tx, rx) = mpsc::channel(QUEUE);
            self.inner.demux.opened(id);
            tokio::spawn(drive(
                Arc::downgrade(&self.inner),
                self.inner.api.clone(),
                id,
                rx,
                Arc::clone(&self.inner.demux),
            ));
            link.open = Some((id, tx));
        }
        match &link.open {
            Some((id, queue)) => Ok((*id, queue)),
            None => Err(Status::unavailable("the stream to the replica closed")),
        }
    }
}

impl Inner {
    /// A stream opened (the replica answered its call): the next failure pauses briefly again.
    fn opened(&self) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        link.pause = FIRST_PAUSE;
        link.retry_at = None;
    }

    /// The stream `id` is over: the next submission opens another, after a pause.
    fn closed(&self, id: StreamId) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if link.open.as_ref().is_some_and(|(open, _)| *open == id) {
            link.open = None;
        }
        link.retry_at = Some(Instant::now() + link.pause);
        link.pause = (link.pause * 2).min(MAX_PAUSE);
    }
}

/// Runs stream `id`: sends what arrives on `requests`, routes the answers, and when the stream ends, fails the
/// submissions still waiting on it. Holds the stream's owner weakly: once every client sharing it is gone, the
/// request queue closes, the replica answers what it has and ends the stream, and this task ends.
async fn drive(
    owner: Weak<Inner>,
    mut api: ReplicaApiClient<Channel>,
    id: StreamId,
    requests: mpsc::Receiver<Outgoing>,
    demux: Arc<Demux>,
) {
    let why = match api
        .submit_stream(Packer::new(requests, PACK_REQUESTS, PACK_BYTES))
        .await
    {
        Err(status) => status,
        Ok(response) => {
            if let Some(owner) = owner.upgrade() {
                owner.opened();
            }
            let mut answers = response.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(batch)) => demux.deliver(batch),
                    Ok(None) => break Status::unavailable("the replica ended the stream"),
                    Err(status) => break status,
                }
            }
        }
    };
    if let Some(owner) = owner.upgrade() {
        owner.closed(id);
    }
    demux.broke(id, &why);
}

/// The outgoing half of a stream: each time the transport asks for a message, every request and awaited reply
/// queued at that moment, up to the caps, as one batch.
struct Packer {
    queue: mpsc::Receiver<Outgoing>,
    /// An entry that did not fit the last batch; it opens the next.
    held: Option<Outgoing>,
    max_entries: usize,
    max_bytes: usize,
}

impl Packer {
    fn new(queue: mpsc::Receiver<Outgoing>, max_entries: usize, max_bytes: usize) -> Self {
        Packer {
            queue,
            held: None,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }
}

impl Stream for Packer {
    type Item = RequestBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RequestBatch>> {
        let this = self.get_mut();
        let first = match this.held.take() {
            Some(held) => held,
            // The queue ends once every sender is gone: the stream's clients, and so its work, are.
            None => match ready!(this.queue.poll_recv(cx)) {
                Some(outgoing) => outgoing,
                None => return Poll::Ready(None),
            },
        };
        let mut bytes = first.encoded_len();
        let mut batch = RequestBatch::default();
        let add = |batch: &mut RequestBatch, outgoing| match outgoing {
            Outgoing::Request(envelope) => batch.requests.push(envelope),
            Outgoing::Awaited(awaited) => batch.awaited.push(awaited),
        };
        add(&mut batch, first);
        let mut entries = 1;
        while entries < this.max_entries {
            let Ok(outgoing) = this.queue.try_recv() else {
                break;
            };
            let size = outgoing.encoded_len();
            if bytes.saturating_add(size) > this.max_bytes {
                this.held = Some(outgoing);
                break;
            }
            bytes += size;
            entries += 1;
            add(&mut batch, outgoing);
        }
        Poll::Ready(Some(batch))
    }
}

/// Routes one replica's answers to the mailboxes of the submissions waiting for them.
pub(crate) struct Demux {
    replica: ReplicaId,
    state: Mutex<DemuxState>,
}

#[derive(Default)]
struct DemuxState {
    waiting: HashMap<Key, Waiter>,
    /// Streams that may still answer: a submission can wait only on one of them.
    open: HashSet<StreamId>,
    next_waiter: u64,
}

struct Waiter {
    id: u64,
    stream: StreamId,
    call: CallId,
    carries: Carries,
    mailbox: Mailbox,
}

/// A submission's place in a [`Demux`], given up when dropped (answered, superseded or abandoned).
pub(crate) struct Registration {
    demux: Arc<Demux>,
    key: Key,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.demux.lock();
        if state
            .waiting
            .get(&self.key)
            .is_some_and(|w| w.id == self.id)
        {
            state.waiting.remove(&self.key);
        }
    }
}

impl Demux {
    fn new(replica: ReplicaId) -> Demux {
        Demux {
            replica,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DemuxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn opened(&self, stream: StreamId) {
        self.lock().open.insert(stream);
    }

    /// Waits for the answer to request `key` on `stream`, to be put into `mailbox`. A second registration of the
    /// same key replaces the first, which then gets nothing: a client has one submission of a request per
    /// replica at a time, and the second carries at least what the first did.
    pub(crate) fn register(
        self: &Arc<Self>,
        key: Key,
        stream: StreamId,
        (call, carries): (CallId, Carries),
        mailbox: &Mailbox,
    ) -> Result<Registration, Status> {
        let mut state = self.lock();
        if !state.open.contains(&stream) {
            return Err(Status::unavailable("the stream to the replica broke"));
        }
        let id = state.next_waiter;
        state.next_waiter += 1;
        state.waiting.insert(
            key,
            Waiter {
                id,
                stream,
                call,
                carries,
                mailbox: mailbox.clone(),
            },
        );
        Ok(Registration {
            demux: Arc::clone(self),
            key,
            id,
        })
    }

    /// Puts each answer of `batch` into the mailbox of the submission waiting for it; answers nobody waits for
    /// (any longer) are dropped, and so are replies whose ids cannot be read (the client could not have verified
    /// them anyway).
    pub(crate) fn deliver(&self, batch: ReplyBatch) {
        // Decoded before taking the lock, which every submission takes too.
        let mut answers: Vec<(Key, Answer)> =
            Vec::with_capacity(batch.replies.len() + batch.refusals.len());
        for envelope in batch.replies {
            // Decoded once, here; the client verifies the seal once the reply reaches it.
            let Ok(reply) = Signed::<Reply>::from_envelope(envelope) else {
                continue;
            };
            let key = (reply.value().client, reply.value().timestamp);
            answers.push((key, Ok(reply)));
        }
        for refusal in batch.refusals {
            let key = (ClientId(refusal.client), Timestamp(refusal.timestamp));
            answers.push((key, Err(refusal.to_status())));
        }
        let mut state = self.lock();
        for (key, answer) in answers {
            if let Some(waiter) = state.waiting.remove(&key) {
                self.hand(waiter, key, answer);
            }
        }
    }

    /// Stream `stream` ended: every submission waiting on it fails with `why`.
    pub(crate) fn broke(&self, stream: StreamId, why: &Status) {
        let mut state = self.lock();
        state.open.remove(&stream);
        let failed: Vec<Key> = state
            .waiting
            .iter()
            .filter(|(_, w)| w.stream == stream)
            .map(|(k, _)| *k)
            .collect();
        for key in failed {
            if let Some(waiter) = state.waiting.remove(&key) {
                let status = Status::unavailable(format!(
                    "the stream to the replica broke: {}",
                    why.message()
                ));
                self.hand(waiter, key, Err(status));
            }
        }
    }

    fn hand(&self, waiter: Waiter, key: Key, answer: Answer) {
        // The client may be gone; then nobody waits for the answer.
        let _ = waiter.mailbox.send(Delivery {
            replica: self.replica,
            call: waiter.call,
            carries: waiter.carries,
            key,
            answer,
        });
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use bytes::Bytes;
    use pbft_crypto::KeyPair;
    use pbft_types::wire::Refusal;
    use pbft_types::{ReplicaId, View};

    use super::*;

    fn key(client: u64, timestamp: u64) -> Key {
        (ClientId(client), Timestamp(timestamp))
    }

    fn reply(client: u64, timestamp: u64) -> SignedEnvelope {
        KeyPair::from_seed([1; 32])
            .sign(Reply {
                view: View(0),
                timestamp: Timestamp(timestamp),
                client: ClientId(client),
                replica: ReplicaId(2),
                result: Bytes::from_static(b"ok"),
            })
            .to_envelope()
    }

    fn demux_with(streams: &[StreamId]) -> Arc<Demux> {
        let demux = Arc::new(Demux::new(ReplicaId(2)));
        for s in streams {
            demux.opened(*s);
        }
        demux
    }

    fn mailbox() -> (Mailbox, mpsc::UnboundedReceiver<Delivery>) {
        mpsc::unbounded_channel()
    }

    /// Every delivery waiting in `inbox` now.
    fn delivered(inbox: &mut mpsc::UnboundedReceiver<Delivery>) -> Vec<Delivery> {
        std::iter::from_fn(|| inbox.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn each_answer_of_a_batch_reaches_the_mailbox_of_its_request() {
        let demux = demux_with(&[0]);
        let (one, mut inbox_one) = mailbox();
        let (two, mut inbox_two) = mailbox();
        let _a = demux
            .register(key(1, 10), 0, (10, Carries::Request), &one)
            .unwrap();
        let _b = demux
            .register(key(2, 10), 0, (10, Carries::AwaitedReply), &two)
            .unwrap();
        let _c = demux
            .register(key(1, 11), 0, (11, Carries::Request), &one)
            .unwrap();
        let refused = Status::unauthenticated("not signed by client 1");
        demux.deliver(ReplyBatch {
            replies: vec![reply(2, 10), reply(1, 10), reply(9, 9)],
            refusals: vec![Refusal::from_status(1, 11, &refused)],
        });
        let mut ones = delivered(&mut inbox_one);
        assert_eq!(ones.len(), 2);
        let refusal = ones.pop().unwrap();
        assert_eq!(
            (refusal.key, refusal.carries),
            (key(1, 11), Carries::Request)
        );
        let status = refusal.answer.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "not signed by client 1");
        let answered = ones.pop().unwrap();
        assert_eq!(answered.replica, ReplicaId(2));
        assert_eq!(answered.key, key(1, 10));
        assert_eq!(answered.answer.unwrap().to_envelope(), reply(1, 10));
        let twos = delivered(&mut inbox_two);
        assert_eq!(twos.len(), 1);
        assert_eq!(twos[0].carries, Carries::AwaitedReply);
        assert_eq!(demux.waiting(), 0);
    }

    #[tokio::test]
    async fn a_reply_that_cannot_be_read_or_is_for_nobody_is_dropped() {
        let demux = demux_with(&[0]);
        let (one, mut inbox) = mailbox();
        let _a = demux
            .register(key(1, 10), 0, (10, Carries::Request), &one)
            .unwrap();
        let garbage = SignedEnvelope {
            body: Bytes::from_static(b"\xff\xff"),
            signature: Bytes::new(),
            ..SignedEnvelope::default()
        };
        demux.deliver(ReplyBatch {
            replies: vec![garbage, reply(5, 5)],
            refusals: vec![Refusal::from_status(
                0,
                0,
                &Status::out_of_range("too large"),
            )],
        });
        assert!(delivered(&mut inbox).is_empty());
        assert_eq!(demux.waiting(), 1);
    }

    #[tokio::test]
    async fn a_broken_stream_fails_its_own_submissions_only() {
        let demux = demux_with(&[0, 1]);
        let (one, mut inbox) = mailbox();
        let _a = demux
            .register(key(1, 10), 0, (10, Carries::Request), &one)
            .unwrap();
        let _b = demux
            .register(key(2, 10), 1, (10, Carries::Request), &one)
            .unwrap();
        demux.broke(0, &Status::unavailable("connection reset"));
        let failed = delivered(&mut inbox);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].key, key(1, 10));
        let status = failed[0].answer.as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("connection reset"), "{status}");
        // Nothing may wait on a stream that broke: its answers will never come.
        assert_eq!(
            demux
                .register(key(3, 1), 0, (1, Carries::Request), &one)
                .err()
                .unwrap()
                .code(),
            tonic::Code::Unavailable
        );
        assert_eq!(demux.waiting(), 1);
    }

    #[tokio::test]
    async fn a_submission_that_gives_up_leaves_no_trace() {
        let demux = demux_with(&[0]);
        let (one, mut inbox) = mailbox();
        let registration = demux
            .register(key(1, 10), 0, (10, Carries::Request), &one)
            .unwrap();
        drop(registration);
        assert_eq!(demux.waiting(), 0);
        // Its late answer goes nowhere.
        demux.deliver(ReplyBatch {
            replies: vec![reply(1, 10)],
            refusals: vec![],
        });
        assert_eq!(demux.waiting(), 0);
        assert!(delivered(&mut inbox).is_empty());
    }

    #[tokio::test]
    async fn a_second_submission_of_a_request_takes_the_first_ones_place() {
        let demux = demux_with(&[0]);
        let (one, mut inbox) = mailbox();
        let first = demux
            .register(key(1, 10), 0, (10, Carries::AwaitedReply), &one)
            .unwrap();
        let _second = demux
            .register(key(1, 10), 0, (10, Carries::Request), &one)
            .unwrap();
        // The first one giving up does not remove the second.
        drop(first);
        assert_eq!(demux.waiting(), 1);
        demux.deliver(ReplyBatch {
            replies: vec![reply(1, 10)],
            refusals: vec![],
        });
        let answers = delivered(&mut inbox);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].carries, Carries::Request);
    }

    fn numbered(i: u64, size: usize) -> Outgoing {
        Outgoing::Request(SignedEnvelope {
            body: Bytes::from(vec![0; size]),
            signature: Bytes::from(i.to_le_bytes().to_vec()),
            ..SignedEnvelope::default()
        })
    }

    fn awaited(timestamp: u64) -> Outgoing {
        Outgoing::Awaited(AwaitedReply {
            client: 1,
            timestamp,
            mac: Bytes::from_static(&[7; 16]),
        })
    }

    fn numbers(batch: &RequestBatch) -> Vec<u64> {
        batch
            .requests
            .iter()
            .map(|e| u64::from_le_bytes(e.signature.as_ref().try_into().unwrap()))
            .collect()
    }

    /// The packer's next message, which must be ready now.
    fn next_now(packer: &mut Packer) -> Option<RequestBatch> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(packer).poll_next(&mut cx) {
            Poll::Ready(batch) => batch,
            Poll::Pending => panic!("the packer waited"),
        }
    }

    #[tokio::test]
    async fn requests_queued_together_go_out_in_one_message() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut packer = Packer::new(rx, PACK_REQUESTS, PACK_BYTES);
        for i in 0..100 {
            tx.try_send(numbered(i, 512)).unwrap();
        }
        let batch = next_now(&mut packer).unwrap();
        assert_eq!(numbers(&batch), (0..100).collect::<Vec<_>>());
        // Nothing queued: no message, and no waiting to fill one either.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut packer).poll_next(&mut cx).is_pending());
        tx.try_send(numbered(100, 512)).unwrap();
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [100]);
        // The clients are gone and everything went out: the stream ends.
        drop(tx);
        assert!(next_now(&mut packer).is_none());
    }

    #[tokio::test]
    async fn awaited_replies_travel_with_the_requests_and_count_against_the_cap() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut packer = Packer::new(rx, 3, PACK_BYTES);
        for i in 0..2 {
            tx.try_send(numbered(i, 8)).unwrap();
            tx.try_send(awaited(10 + i)).unwrap();
        }
        let first = next_now(&mut packer).unwrap();
        assert_eq!(numbers(&first), [0, 1]);
        assert_eq!(
            first
                .awaited
                .iter()
                .map(|a| a.timestamp)
                .collect::<Vec<_>>(),
            [10]
        );
        let second = next_now(&mut packer).unwrap();
        assert!(second.requests.is_empty());
        assert_eq!(second.awaited[0].timestamp, 11);
    }

    #[tokio::test]
    async fn a_message_holds_at_most_the_capped_count_of_requests() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut packer = Packer::new(rx, 4, PACK_BYTES);
        for i in 0..10 {
            tx.try_send(numbered(i, 8)).unwrap();
        }
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [0, 1, 2, 3]);
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [4, 5, 6, 7]);
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [8, 9]);
    }

    #[tokio::test]
    async fn a_request_that_would_carry_a_message_past_the_byte_cap_opens_the_next() {
        let (tx, rx) = mpsc::channel(QUEUE);
        // Each request is a little over 100 bytes: two fit under 250, a third does not.
        let mut packer = Packer::new(rx, PACK_REQUESTS, 250);
        for i in 0..3 {
            tx.try_send(numbered(i, 100)).unwrap();
        }
        // A request larger than the cap on its own still goes, alone.
        tx.try_send(numbered(3, 1000)).unwrap();
        tx.try_send(numbered(4, 100)).unwrap();
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [0, 1]);
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [2]);
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [3]);
        assert_eq!(numbers(&next_now(&mut packer).unwrap()), [4]);
    }

    #[tokio::test]
    async fn a_replica_that_is_down_fails_submissions_fast_and_is_retried_after_a_pause() {
        // A port nobody listens on: bind one, note it, close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let stream = ReplicaStream::new(ReplicaId(0), addr).unwrap();
        let envelope = SignedEnvelope::default();
        let (one, mut inbox) = mailbox();
        let started = std::time::Instant::now();
        let _registration = stream
            .submit(envelope.clone(), key(1, 1), (1, &one))
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        let status = first.answer.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Within the pause, no new attempt is made.
        let paused = stream.submit(envelope, key(1, 2), (2, &one)).err().unwrap();
        assert!(paused.message().contains("next attempt"), "{paused}");
        let link = stream.inner.link.lock().unwrap();
        assert!(link.open.is_none());
        assert_eq!(link.next_id, 1);
        assert_eq!(link.pause, FIRST_PAUSE * 2);
    }

    #[tokio::test]
    async fn a_replica_that_does_not_read_fails_calls_beyond_the_queue_at_once() {
        // It accepts the connection (the kernel does, for its backlog) and never answers nor reads.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = ReplicaStream::new(ReplicaId(0), listener.local_addr().unwrap()).unwrap();
        let (one, _inbox) = mailbox();
        let envelope = SignedEnvelope {
            body: Bytes::from(vec![0; 1024]),
            ..SignedEnvelope::default()
        };
        let (mut accepted, mut exhausted) = (Vec::new(), 0);
        for timestamp in 0..(2 * QUEUE + 4 * PACK_REQUESTS) as u64 {
            match stream.submit(envelope.clone(), key(1, timestamp), (timestamp, &one)) {
                Ok(registration) => accepted.push(registration),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                    exhausted += 1;
                }
            }
        }
        // Beyond the queue, at most what the transport took into its first messages before flow control held it.
        assert!(exhausted > 0);
        assert!(
            accepted.len() <= QUEUE + 2 * PACK_REQUESTS,
            "{}",
            accepted.len()
        );
    }
}
