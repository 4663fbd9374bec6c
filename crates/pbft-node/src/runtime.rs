//! The runtime that drives one `pbft_core::Replica`: a single task owns the replica and feeds it, one at a time,
//! the messages that verifier tasks authenticated, the requests clients submitted and the timers that fired; it
//! carries out what the replica asks (send, reply, set and cancel timers) and publishes its status.
//!
//! Decoding and signature checking, the expensive part, happen before the replica task, on several tasks at
//! once and in batches (`verify_inbound`); a large batch goes to a blocking thread. Every channel is bounded: a replica that cannot keep up slows its
//! senders down instead of buffering without limit.
//!
//! Log before send: the replica task handles every event already queued and hands what they produced to the
//! journal writer, a thread of its own that makes the journal entries durable in one synced write and only then
//! sends their messages, in the order the replica produced them, and hands their replies to the waiting clients
//! (`waiters`), all under one lock. While the disk syncs, the replica
//! task goes on with the next events; the writer takes every round that queued up meanwhile into its next write
//! (group commit), so a slow disk costs fewer, larger writes instead of a stalled replica. A round that only
//! executed batches waits for no write: its `Executed` records go with the next one. A write that fails
//! stops the replica (a crash, which PBFT tolerates), rather than letting it send what it could not remember.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pbft_core::{Output, RejectReason, Replica, ReplicaStatus};
use pbft_crypto::{AuthError, KeyPair, Keyring, Verified, VerifiedMsg};
use pbft_types::{
    DecodeLimits, Principal, ReplicaId, ReplicaMsg, Reply, Request, Signed, Timestamp,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::deadlines::Deadlines;
use crate::durable::Journal;
use crate::link::{Inbound, PeerLink};
use crate::metrics::Metrics;
use crate::waiters::{Key, Registered, ReplySink, SinkWait, Waiters};

/// How many events may wait for the replica task before their senders have to wait.
const EVENT_QUEUE: usize = 4096;

/// How many rounds of outputs may wait for the journal writer before the replica task has to wait.
const WRITER_QUEUE: usize = 64;

/// What the replica task takes in (its timers it keeps itself, in `Deadlines`).
// A peer's message, the largest variant, is also the most frequent: boxing it would cost an allocation per
// message to save queue space that the requests, fewer, hardly use.
#[allow(clippy::large_enum_variant)]
enum Event {
    Message {
        from: ReplicaId,
        msg: VerifiedMsg,
    },
    /// Requests submitted together (one packed batch of a stream, or a single request): one hand-off for all.
    Requests(Vec<Verified<Request>>),
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the replica did not answer within {0:?}")]
    Timeout(Duration),
    /// The client already had a newer request executed: this one never will be.
    #[error("a request older than the last one its client had executed (timestamp {0})")]
    Stale(Timestamp),
    #[error("the replica has stopped")]
    Stopped,
}

pub use crate::metrics::Counters;

/// Whether the reply to `request` is sealed with a MAC (its request was) rather than signed.
fn with_mac(request: &Verified<Request>) -> bool {
    request.signed().signature().is_none()
}

/// A running replica, as the API and the node see it.
#[derive(Clone)]
pub struct NodeHandle {
    events: mpsc::Sender<Event>,
    waiters: Arc<Waiters>,
    status: watch::Receiver<ReplicaStatus>,
    metrics: Arc<Metrics>,
    failure: watch::Receiver<Option<String>>,
}

impl NodeHandle {
    /// Waits until the replica stops because of a fault of its own (its journal could not be written), and
    /// says why. Never returns for a replica that keeps running.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Submits an authenticated request and waits for this replica's reply to it, sealed as the request was
    /// (the client needs f+1 matching ones from distinct replicas; this is one of them).
    pub async fn submit(
        &self,
        request: Verified<Request>,
        timeout: Duration,
    ) -> Result<Signed<Reply>, SubmitError> {
        match self.submit_all(vec![request], timeout).await.pop() {
            Some(reply) => reply.await,
            None => Err(SubmitError::Stopped),
        }
    }

    /// Submits authenticated requests together: their waiters are registered under one lock and the requests
    /// reach the replica task as one event. Returns, in order, one future per request that waits (at most
    /// `timeout`) for this replica's reply to it, sealed as the request was.
    pub async fn submit_all(
        &self,
        requests: Vec<Verified<Request>>,
        timeout: Duration,
    ) -> Vec<impl Future<Output = Result<Signed<Reply>, SubmitError>> + Send + 'static> {
        if requests.is_empty() {
            return Vec::new();
        }
        let keys: Vec<Key> = requests.iter().map(|r| (r.client, r.timestamp)).collect();
        let with_mac: Vec<bool> = requests.iter().map(with_mac).collect();
        let registered = self.waiters.wait_all(&keys);
        let sent = self.events.send(Event::Requests(requests)).await.is_ok();
        self.waiting(with_mac, registered, sent, timeout)
    }

    /// Submits authenticated requests together, as `submit_all`, for a stream: each request's outcome goes to
    /// its sink, which waits at most `timeout`.
    pub async fn submit_to(
        &self,
        requests: Vec<Verified<Request>>,
        sinks: Vec<Box<dyn ReplySink>>,
        timeout: Duration,
    ) {
        if requests.is_empty() {
            return;
        }
        let deadline = Instant::now() + timeout;
        let waits: Vec<SinkWait> = requests
            .iter()
            .zip(sinks)
            .map(|(request, sink)| SinkWait {
                key: (request.client, request.timestamp),
                with_mac: with_mac(request),
                deadline,
                sink,
            })
            .collect();
        let keys: Vec<Key> = waits.iter().map(|w| w.key).collect();
        self.waiters.sink_all(waits, false);
        if self.events.send(Event::Requests(requests)).await.is_err() {
            // The replica stopped; the sweep would answer them only at their deadline.
            for (client, timestamp) in keys {
                self.waiters
                    .answer(client, timestamp, &Err(SubmitError::Stopped));
            }
        }
    }

    /// Waits (at most `timeout`) for this replica's replies to requests that other replicas received, each named
    /// by its client and timestamp, which the caller has authenticated as asked for by that client (an
    /// `AwaitedReply`). Each key's outcome goes to its sink: at once for a reply given already, when this replica
    /// executes the request otherwise. The replies are sealed with MACs.
    pub fn await_to(&self, keys: Vec<Key>, sinks: Vec<Box<dyn ReplySink>>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let waits = keys
            .into_iter()
            .zip(sinks)
            .map(|(key, sink)| SinkWait {
                key,
                with_mac: true,
                deadline,
                sink,
            })
            .collect();
        self.waiters.sink_all(waits, true);
    }

    /// One future per registered waiter, which gives up after `timeout` and seals what it got.
    fn waiting(
        &self,
        with_mac: Vec<bool>,
        registered: Vec<Registered>,
        sent: bool,
        timeout: Duration,
    ) -> Vec<impl Future<Output = Result<Signed<Reply>, SubmitError>> + Send + 'static> {
        with_mac
            .into_iter()
            .zip(registered)
            .map(|(with_mac, mut registered)| {
                let waiters = Arc::clone(&self.waiters);
                async move {
                    if !sent {
                        return Err(SubmitError::Stopped);
                    }
                    let outcome = tokio::time::timeout(timeout, &mut registered.reply).await;
                    drop(registered);
                    match outcome {
                        Ok(Ok(Ok(reply))) => Ok(waiters.seal(reply, with_mac)),
                        Ok(Ok(Err(e))) => Err(e),
                        Ok(Err(_)) => Err(SubmitError::Stopped),
                        Err(_) => Err(SubmitError::Timeout(timeout)),
                    }
                }
            })
            .collect()
    }

    pub fn status(&self) -> ReplicaStatus {
        *self.status.borrow()
    }

    pub fn counters(&self) -> Counters {
        self.metrics.counters()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits until the replica's status satisfies `done`, or `timeout` passes; returns the last status seen.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&ReplicaStatus) -> bool,
    ) -> ReplicaStatus {
        let mut status = self.status.clone();
        let _ = tokio::time::timeout(timeout, status.wait_for(|s| done(s))).await;
        *self.status.borrow()
    }
}

/// Starts the replica task and the verifier tasks for messages from peers. `inbound` carries frames whose sender
/// the link authenticated; `link` carries what the replica sends. Returns the handle clients go through.
///
/// `journal` keeps what the replica must remember across a crash (none: it forgets everything when it stops);
/// `initial` are the outputs `Replica::recover` returned, carried out first.
#[allow(clippy::too_many_arguments)]
pub fn start(
    replica: Replica,
    key: KeyPair,
    keyring: Keyring,
    limits: DecodeLimits,
    link: Arc<dyn PeerLink>,
    inbound: mpsc::Receiver<Inbound>,
    journal: Option<Journal>,
    initial: Vec<Output>,
) -> NodeHandle {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (status_tx, status_rx) = watch::channel(replica.status());
    let waiters = Arc::new(Waiters::new(key, keyring.sessions()));
    Waiters::spawn_sweeper(Arc::downgrade(&waiters));
    let metrics = Metrics::shared();
    metrics.set_status(&replica.status());
    verify_inbound(inbound, keyring, limits, events_tx.clone(), metrics.clone());
    let (failure_tx, failure_rx) = watch::channel(None);
    let failure = Arc::new(failure_tx);
    let outbox = Arc::new(Outbox {
        link,
        waiters: waiters.clone(),
        metrics: metrics.clone(),
    });
    let writer = journal
        .map(|journal| spawn_writer(journal, outbox.clone(), failure.clone(), HOLD_WHEN_IDLE));
    let mut task = ReplicaTask {
        replica,
        outbox,
        writer,
        deadlines: Deadlines::default(),
        status: status_tx,
        metrics: metrics.clone(),
        deferred: Vec::new(),
        failure,
        view_asked: 0,
    };
    for output in initial {
        task.carry_out(output);
    }
    tokio::spawn(task.run(events_rx));
    NodeHandle {
        events: events_tx,
        waiters,
        status: status_rx,
        metrics,
        failure: failure_rx,
    }
}

/// Frames taken from the queue and handed to a blocking thread at once, so that the hand-off is paid per batch
/// rather than per frame; their signatures are checked in one batch too.
const VERIFY_BATCH: usize = 64;

/// At most this many frames are checked on the verifier's own task; more go to a blocking thread. A few
/// signature checks hold a worker for well under a millisecond, and handing them to another thread would cost
/// two thread switches, which is what a busy replica spends most of its switches on.
const VERIFY_IN_PLACE: usize = 4;

/// Decodes and verifies frames from peers on as many tasks as there are cores, a batch at a time, off the
/// replica task. What fails is dropped and counted.
fn verify_inbound(
    inbound: mpsc::Receiver<Inbound>,
    keyring: Keyring,
    limits: DecodeLimits,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let inbound = Arc::new(tokio::sync::Mutex::new(inbound));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let keyring = Arc::new(keyring);
    for _ in 0..workers {
        let (inbound, keyring, events, metrics) = (
            inbound.clone(),
            keyring.clone(),
            events.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            loop {
                let mut frames = Vec::with_capacity(VERIFY_BATCH);
                if inbound
                    .lock()
                    .await
                    .recv_many(&mut frames, VERIFY_BATCH)
                    .await
                    == 0
                {
                    return;
                }
                let checked = if frames.len() <= VERIFY_IN_PLACE {
                    Ok(decode_and_verify(&keyring, limits, frames))
                } else {
                    let keyring = keyring.clone();
                    tokio::task::spawn_blocking(move || decode_and_verify(&keyring, limits, frames))
                        .await
                };
                let Ok((undecodable, verified)) = checked else {
                    return;
                };
                for _ in 0..undecodable {
                    metrics.unauthenticated();
                }
                for (from, result) in verified {
                    match result {
                        Ok(msg) => {
                            if events.send(Event::Message { from, msg }).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => metrics.unauthenticated(),
                    }
                }
            }
        });
    }
}

/// A peer's message as the keyring judged it.
type Verdict = (ReplicaId, Result<VerifiedMsg, AuthError>);

/// The frames that decode, each with its sender and verdict, in the order they arrived (a peer's messages reach
/// the replica in the order it sent them); and how many did not decode, which are dropped.
fn decode_and_verify(
    keyring: &Keyring,
    limits: DecodeLimits,
    frames: Vec<Inbound>,
) -> (usize, Vec<Verdict>) {
    let total = frames.len();
    let decoded: Vec<(ReplicaId, ReplicaMsg)> = frames
        .into_iter()
        .filter_map(|f| Some((f.from, ReplicaMsg::decode(&f.frame, limits).ok()?)))
        .collect();
    let senders: Vec<ReplicaId> = decoded.iter().map(|(from, _)| *from).collect();
    let verdicts: Vec<Verdict> = senders
        .into_iter()
        .zip(keyring.verify_replica_msgs(decoded))
        .collect();
    (total - verdicts.len(), verdicts)
}

/// Carries out what leaves the replica: messages to peers, replies to waiting clients, and the count of
/// committed batches.
struct Outbox {
    link: Arc<dyn PeerLink>,
    waiters: Arc<Waiters>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// Carries out `output` if it is one of the deferred kinds (see `ReplicaTask::carry_out`); returns any other.
    fn release(&self, output: Output) -> Option<Output> {
        match output {
            Output::Send { to, msg } => {
                let frame = Bytes::from(msg.encode());
                match to {
                    pbft_core::Dest::AllReplicas => self.link.broadcast(frame),
                    pbft_core::Dest::Replica(r) => self.link.send(r, frame),
                }
            }
            Output::Reply(reply) => self.waiters.deliver(&reply),
            Output::Committed(committed) => {
                self.metrics
                    .batch_committed(committed.results.iter().flatten().count());
            }
            // Written before anything else of its round.
            Output::Persist(_) => {}
            other => return Some(other),
        }
        None
    }

    /// Carries out deferred outputs in their order, except that their replies are handed over together at the
    /// end: one lock and one hand-off for the sealing of them all.
    fn release_all(&self, outputs: Vec<Output>) {
        let mut replies = Vec::new();
        for output in outputs {
            match output {
                Output::Reply(reply) => replies.push(reply),
                other => {
                    self.release(other);
                }
            }
        }
        self.waiters.deliver_all(&replies);
    }
}

/// Where the journal writer makes a round's entries durable: the replica's journal (or, in tests, a stand-in).
trait Durable: Send + 'static {
    fn persist(&mut self, outputs: &[Output]) -> Result<(), String>;
}

impl Durable for Journal {
    fn persist(&mut self, outputs: &[Output]) -> Result<(), String> {
        Journal::persist(self, outputs).map_err(|e| e.to_string())
    }
}

/// Whether the messages and replies of a round must wait until its entries are durable: the core says so
/// (`Output::waits_for_journal`: an entry other than an `Executed` record, or a CHECKPOINT sent), or the round
/// archives a committed block, which a client may ask for as soon as it has its reply.
fn waits_for_disk(output: &Output) -> bool {
    match output {
        Output::Committed(committed) => committed.record.is_some(),
        other => other.waits_for_journal(),
    }
}

/// How long the journal writer keeps `Executed` records when no round comes that would take them along: it writes
/// them then, so that a crash rarely makes the replica commit those batches again.
const HOLD_WHEN_IDLE: Duration = Duration::from_millis(100);

/// Starts the journal writer: it writes each round of outputs it receives (together with every round queued
/// behind it) in one synced write, then releases their messages and replies. If a write fails it records why and
/// stops, which closes its queue and so stops the replica task too.
///
/// Rounds that need not wait (a batch executed, nothing else to remember, no CHECKPOINT sent) are released at
/// once; their `Executed` records go to the disk in order, at the head of the next write, or on their own once the
/// oldest has waited `hold_when_idle` (`HOLD_WHEN_IDLE`). At most a checkpoint interval of them wait: a step that
/// sends a CHECKPOINT waits for the journal.
fn spawn_writer(
    mut journal: impl Durable,
    outbox: Arc<Outbox>,
    failure: Arc<watch::Sender<Option<String>>>,
    hold_when_idle: Duration,
) -> mpsc::Sender<Vec<Output>> {
    let (tx, mut rx) = mpsc::channel::<Vec<Output>>(WRITER_QUEUE);
    let runtime = tokio::runtime::Handle::current();
    // A blocking-pool thread for as long as the replica runs: it spends its time in write and fsync calls.
    tokio::task::spawn_blocking(move || {
        // The `Executed` records of rounds already released, not written yet, and since when the oldest waits.
        let mut held: Vec<Output> = Vec::new();
        let mut held_since = tokio::time::Instant::now();
        loop {
            // The queue's senders live in tasks of the runtime, which drops them when it shuts down, so the
            // `recv` below ends (with `None`) before the runtime's timers stop.
            let next = match held.is_empty() {
                true => rx.blocking_recv(),
                false => {
                    let until = held_since + hold_when_idle;
                    match runtime.block_on(tokio::time::timeout_at(until, rx.recv())) {
                        Ok(next) => next,
                        Err(_held_long_enough) => {
                            if let Err(e) = Durable::persist(&mut journal, &held) {
                                fail(&failure, format!("the journal could not be written: {e}"));
                                return;
                            }
                            held.clear();
                            continue;
                        }
                    }
                }
            };
            let Some(mut outputs) = next else {
                break;
            };
            while let Ok(more) = rx.try_recv() {
                outputs.extend(more);
            }
            if !outputs.iter().any(waits_for_disk) {
                let (entries, rest): (Vec<Output>, Vec<Output>) = outputs
                    .into_iter()
                    .partition(|output| matches!(output, Output::Persist(_)));
                if held.is_empty() {
                    held_since = tokio::time::Instant::now();
                }
                held.extend(entries);
                outbox.release_all(rest);
                continue;
            }
            let mut round = std::mem::take(&mut held);
            round.extend(outputs);
            if let Err(e) = Durable::persist(&mut journal, &round) {
                fail(&failure, format!("the journal could not be written: {e}"));
                return;
            }
            outbox.release_all(round);
        }
        // The replica stops: what is held goes to the disk if it can (a crash would lose it, which is safe).
        if !held.is_empty()
            && let Err(e) = Durable::persist(&mut journal, &held)
        {
            tracing::warn!(error = %e, "the last executed batches could not be recorded");
        }
    });
    tx
}

/// Records why the replica stops, unless a reason is already recorded (the first is the cause).
fn fail(failure: &watch::Sender<Option<String>>, reason: String) {
    failure.send_if_modified(|recorded| {
        if recorded.is_some() {
            return false;
        }
        tracing::error!(%reason, "the replica stops");
        *recorded = Some(reason);
        true
    });
}

struct ReplicaTask {
    replica: Replica,
    outbox: Arc<Outbox>,
    /// The journal writer's queue; none for a replica without a journal, whose outputs leave at once.
    writer: Option<mpsc::Sender<Vec<Output>>>,
    /// When each running timer fires.
    deadlines: Deadlines,
    status: watch::Sender<ReplicaStatus>,
    metrics: Arc<Metrics>,
    /// Journal entries, messages and replies of the events handled since the last hand-over to the writer: the
    /// messages and replies leave once the entries are durable.
    deferred: Vec<Output>,
    failure: Arc<watch::Sender<Option<String>>>,
    /// The latest view this replica asked for, for the log.
    view_asked: u64,
}

impl ReplicaTask {
    /// Runs until every sender of events is gone (the node stopped) or the journal cannot be written.
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        if let Err(reason) = self.flush().await {
            return fail(&self.failure, reason);
        }
        let alarm = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(alarm);
        loop {
            // The alarm is moved only when the earliest deadline moved.
            let next = self.deadlines.next();
            if let Some(at) = next
                && alarm.deadline() != at
            {
                alarm.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => self.handle(event),
                    None => return,
                },
                () = &mut alarm, if next.is_some() => {}
            }
            // Whatever else is already queued is handled before the round goes to the journal writer and the
            // status is published (at most a queue's worth, so that a queue refilled as fast as it drains
            // holds back neither the round nor the timers); so are the timers that are due.
            for _ in 0..EVENT_QUEUE {
                let Ok(event) = events.try_recv() else {
                    break;
                };
                self.handle(event);
            }
            self.fire_due_timers();
            if let Err(reason) = self.flush().await {
                return fail(&self.failure, reason);
            }
            let status = self.replica.status();
            self.metrics.set_status(&status);
            self.status.send_replace(status);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Message { from, msg } => self.step(pbft_core::Input::Message { from, msg }),
            Event::Requests(requests) => {
                for request in requests {
                    self.step(pbft_core::Input::Request(request));
                }
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(timer) = self.deadlines.pop_due(now) {
            self.step(pbft_core::Input::TimerFired(timer));
        }
    }

    fn step(&mut self, input: pbft_core::Input) {
        for output in self.replica.step(input) {
            self.carry_out(output);
        }
    }

    /// Hands the deferred outputs to the journal writer, or, without a journal, carries them out now.
    async fn flush(&mut self) -> Result<(), String> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let deferred = std::mem::take(&mut self.deferred);
        match &self.writer {
            Some(writer) => writer
                .send(deferred)
                .await
                .map_err(|_| "the journal writer stopped".to_string()),
            None => {
                self.outbox.release_all(deferred);
                Ok(())
            }
        }
    }

    fn carry_out(&mut self, output: Output) {
        if let Output::Send {
            msg: ReplicaMsg::ViewChange(vc),
            ..
        } = &output
            && vc.value().replica == self.replica.status().id
            && vc.value().new_view.0 > self.view_asked
        {
            // Logged once per view: the same VIEW-CHANGE is resent to peers that lag behind.
            self.view_asked = vc.value().new_view.0;
            tracing::info!(view = %vc.value().new_view, "asked for a view change");
        }
        match output {
            // A committed batch's block is archived with the round's journal entries.
            Output::Send { .. } | Output::Reply(_) | Output::Persist(_) | Output::Committed(_) => {
                self.deferred.push(output)
            }
            other => self.carry_out_now(other),
        }
    }

    fn carry_out_now(&mut self, output: Output) {
        let Some(output) = self.outbox.release(output) else {
            return;
        };
        match output {
            Output::SetTimer { timer, after } => {
                self.deadlines
                    .set(timer, tokio::time::Instant::now() + after);
            }
            Output::CancelTimer(timer) => self.deadlines.cancel(timer),
            // Carried out by the outbox above.
            Output::Send { .. } | Output::Reply(_) | Output::Committed(_) | Output::Persist(_) => {}
            Output::StateInstalled { seq, digest } => {
                tracing::info!(%seq, ?digest, "installed the state of a certified checkpoint");
            }
            Output::EnteredView(view) => {
                tracing::info!(%view, "entered view");
                self.metrics.entered_view();
            }
            Output::Evidence { first, second } => {
                tracing::warn!(
                    primary = %first.replica,
                    view = %first.view,
                    seq = %first.seq,
                    first = ?first.digest,
                    second = ?second.digest,
                    "the primary signed two PRE-PREPAREs for one sequence number"
                );
            }
            Output::Rejected(rejection) => {
                tracing::debug!(from = %rejection.from, kind = rejection.kind, reason = ?rejection.reason, "refused");
                // A stale request never executes: whoever submitted it here learns so now, instead of holding
                // its place among the waiting requests until its timeout.
                if let (Principal::Client(client), RejectReason::StaleRequest { timestamp }) =
                    (rejection.from, &rejection.reason)
                {
                    let stale = Err(SubmitError::Stale(*timestamp));
                    self.outbox.waiters.answer(client, *timestamp, &stale);
                }
                self.metrics
                    .refused(rejection.kind, rejection.reason.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc as std_mpsc;
    use std::sync::{Mutex, PoisonError};

    use pbft_core::{Dest, JournalEntry};
    use pbft_types::{Digest, Prepare, SeqNo, View};

    use super::*;

    /// The entries of each write, by sequence number.
    type Writes = Arc<Mutex<Vec<Vec<Option<SeqNo>>>>>;

    /// A journal that takes its time, counts the rounds it made durable, and keeps the entries of each write.
    struct SlowDisk {
        written: Arc<AtomicUsize>,
        writes: Writes,
        fail: bool,
    }

    impl Durable for SlowDisk {
        fn persist(&mut self, outputs: &[Output]) -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(50));
            if self.fail {
                return Err("the disk is full".into());
            }
            let entries = outputs.iter().filter_map(|output| match output {
                Output::Persist(entry) => Some(entry.seq()),
                _ => None,
            });
            self.writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entries.collect());
            self.written.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A link that notes, for every frame, how many writes had completed when it left.
    struct Watch {
        written: Arc<AtomicUsize>,
        sent: Mutex<std_mpsc::Sender<usize>>,
    }

    impl PeerLink for Watch {
        fn send(&self, _to: ReplicaId, _frame: Bytes) {
            self.broadcast(Bytes::new());
        }
        fn broadcast(&self, _frame: Bytes) {
            let written = self.written.load(Ordering::SeqCst);
            let _ = self
                .sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(written);
        }
    }

    fn round(seq: u64) -> Vec<Output> {
        let prepare = KeyPair::from_seed([1; 32]).sign(Prepare {
            view: View(0),
            seq: SeqNo(seq),
            digest: Digest([seq as u8; 32]),
            replica: ReplicaId(0),
        });
        vec![
            Output::Persist(JournalEntry::View {
                view: View(seq),
                changing: false,
            }),
            Output::Send {
                to: Dest::AllReplicas,
                msg: ReplicaMsg::Prepare(prepare),
            },
        ]
    }

    /// The keys of a cluster of four replicas, and its keyring.
    fn four_replicas() -> (Vec<KeyPair>, Keyring) {
        let keys: Vec<KeyPair> = (1..=4).map(|i| KeyPair::from_seed([i; 32])).collect();
        let config = pbft_types::ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: vec![],
            params: pbft_types::Params::default(),
        };
        let keyring = Keyring::new(&config).expect("a valid cluster");
        (keys, keyring)
    }

    /// A round with nothing to remember but the execution of batch `seq`, and a message.
    fn executed_round(seq: u64) -> Vec<Output> {
        let (keys, keyring) = four_replicas();
        let header = keys[0].sign(pbft_types::PrePrepare {
            view: View(0),
            seq: SeqNo(seq),
            digest: Digest([seq as u8; 32]),
            replica: ReplicaId(0),
        });
        let header = keyring.verify(header).expect("signed by replica 0");
        let mut round = round(seq);
        round[0] = Output::Persist(JournalEntry::Executed { header });
        round
    }

    /// The writer's queue, the link's record of frames, and where the writer reports a failure.
    type Writer = (
        mpsc::Sender<Vec<Output>>,
        std_mpsc::Receiver<usize>,
        Arc<watch::Sender<Option<String>>>,
    );

    fn writer(fail: bool) -> Writer {
        let (writer, _writes) = writer_keeping_writes(fail, HOLD_WHEN_IDLE);
        writer
    }

    /// A writer, and the entries of each write it made.
    fn writer_keeping_writes(fail: bool, hold_when_idle: Duration) -> (Writer, Writes) {
        let written = Arc::new(AtomicUsize::new(0));
        let (sent, frames) = std_mpsc::channel();
        let outbox = Arc::new(Outbox {
            link: Arc::new(Watch {
                written: written.clone(),
                sent: Mutex::new(sent),
            }),
            waiters: Arc::new(Waiters::new(KeyPair::from_seed([9; 32]), None)),
            metrics: Metrics::shared(),
        });
        let failure = Arc::new(watch::channel(None).0);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let disk = SlowDisk {
            written,
            writes: writes.clone(),
            fail,
        };
        let writer = (
            spawn_writer(disk, outbox, failure.clone(), hold_when_idle),
            frames,
            failure,
        );
        (writer, writes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inbound_frames_reach_the_replica_in_order_and_the_bad_ones_are_counted() {
        let (replicas, keyring) = four_replicas();
        let prepare = |r: u64, seq: u64| {
            ReplicaMsg::Prepare(replicas[r as usize].sign(Prepare {
                view: View(0),
                seq: SeqNo(seq),
                digest: Digest([1; 32]),
                replica: ReplicaId(r),
            }))
        };
        let frame = |from: u64, msg: &ReplicaMsg| Inbound {
            from: ReplicaId(from),
            frame: Bytes::from(msg.encode()),
        };
        let frames = vec![
            frame(1, &prepare(1, 1)),
            Inbound {
                from: ReplicaId(2),
                frame: Bytes::from_static(b"not a message"),
            },
            // Replica 1's PREPARE on replica 3's connection.
            frame(3, &prepare(1, 2)),
            frame(2, &prepare(2, 1)),
            frame(3, &prepare(3, 1)),
        ];
        let (inbound_tx, inbound) = mpsc::channel(frames.len());
        for f in frames {
            inbound_tx.send(f).await.expect("room for every frame");
        }
        drop(inbound_tx);
        let (events, mut received) = mpsc::channel(8);
        let metrics = Metrics::shared();
        let limits = DecodeLimits {
            max_message_size: 1 << 20,
            max_batch_size: 16,
        };
        verify_inbound(inbound, keyring, limits, events, metrics.clone());

        let mut passed = Vec::new();
        while let Some(event) = received.recv().await {
            let Event::Message { from, msg } = event else {
                panic!("only messages come from peers")
            };
            passed.push((from, msg.to_replica_msg()));
        }
        assert_eq!(
            passed,
            vec![
                (ReplicaId(1), prepare(1, 1)),
                (ReplicaId(2), prepare(2, 1)),
                (ReplicaId(3), prepare(3, 1)),
            ]
        );
        assert_eq!(metrics.counters().messages_unauthenticated, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rounds_messages_leave_only_after_its_entries_are_durable() {
        let (rounds, frames, _failure) = writer(false);
        for seq in 1..=3 {
            rounds.send(round(seq)).await.expect("the writer runs");
        }
        let seen: Vec<usize> = (0..3).map(|_| next_frame(&frames)).collect();
        // The first round's message waited for its write; the later ones may share a write, never precede one.
        assert!(seen.iter().all(|&w| w >= 1), "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_executed_record_does_not_hold_its_round_and_goes_to_the_disk_with_the_next_write() {
        let ((rounds, frames, _failure), writes, left_after) =
            writer_holding_batch_1(Duration::from_secs(60)).await;
        assert_eq!(left_after, 0, "it left without waiting for a write");
        rounds
            .send(executed_round(2))
            .await
            .expect("the writer runs");
        assert_eq!(next_frame(&frames), 0);
        rounds.send(round(3)).await.expect("the writer runs");
        assert_eq!(
            next_frame(&frames),
            1,
            "an entry that gates its round was written first"
        );
        let writes = writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // The held records first, in order, then the view.
        assert_eq!(writes, vec![vec![Some(SeqNo(1)), Some(SeqNo(2)), None]]);
    }

    /// Waits for the next frame the link sends, and returns how many writes had completed when it left.
    /// A writer that was handed a round executing batch 1 (its record held back), and the count of writes when
    /// that round's message left.
    async fn writer_holding_batch_1(hold_when_idle: Duration) -> (Writer, Writes, usize) {
        let ((rounds, frames, failure), writes) = writer_keeping_writes(false, hold_when_idle);
        rounds
            .send(executed_round(1))
            .await
            .expect("the writer runs");
        let left_after = next_frame(&frames);
        ((rounds, frames, failure), writes, left_after)
    }

    fn next_frame(frames: &std_mpsc::Receiver<usize>) -> usize {
        tokio::task::block_in_place(|| frames.recv_timeout(Duration::from_secs(5)))
            .expect("the round's message leaves")
    }

    /// Waits until the writer made `n` writes, and returns them.
    async fn wait_for_writes(writes: &Writes, n: usize) -> Vec<Vec<Option<SeqNo>>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_records_are_written_when_the_writer_idles_and_when_the_replica_stops() {
        let ((rounds, _frames, _failure), writes, _) = writer_holding_batch_1(HOLD_WHEN_IDLE).await;
        // Idle for HOLD_WHEN_IDLE: written on their own.
        assert_eq!(
            wait_for_writes(&writes, 1).await,
            vec![vec![Some(SeqNo(1))]]
        );
        // Held when the replica stops (its queue closes): written before the writer ends.
        rounds
            .send(executed_round(2))
            .await
            .expect("the writer runs");
        drop(rounds);
        assert_eq!(
            wait_for_writes(&writes, 2).await,
            vec![vec![Some(SeqNo(1))], vec![Some(SeqNo(2))]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_that_keep_coming_do_not_hold_the_records_back_longer() {
        let ((rounds, _frames, _failure), writes) = writer_keeping_writes(false, HOLD_WHEN_IDLE);
        // A round every 30 ms for 600 ms: never 100 ms without one.
        for seq in 1..=20 {
            rounds
                .send(executed_round(seq))
                .await
                .expect("the writer runs");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let written = writes.lock().unwrap_or_else(PoisonError::into_inner).len();
        assert!(written >= 2, "{written} writes in 600 ms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_that_sends_a_checkpoint_waits_for_the_records_held_before_it() {
        let ((rounds, frames, _failure), writes, _) =
            writer_holding_batch_1(Duration::from_secs(60)).await;
        let checkpoint = KeyPair::from_seed([1; 32]).sign(pbft_types::Checkpoint {
            seq: SeqNo(1),
            digest: Digest([1; 32]),
            replica: ReplicaId(0),
        });
        let round = vec![Output::Send {
            to: Dest::AllReplicas,
            msg: ReplicaMsg::Checkpoint(checkpoint),
        }];
        rounds.send(round).await.expect("the writer runs");
        let written = next_frame(&frames);
        assert_eq!(
            written, 1,
            "the CHECKPOINT left before the record was written"
        );
        assert_eq!(
            wait_for_writes(&writes, 1).await,
            vec![vec![Some(SeqNo(1))]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_sends_nothing_and_stops_the_writer() {
        let (rounds, frames, failure) = writer(true);
        rounds.send(round(1)).await.expect("the writer runs");
        let sent = tokio::task::block_in_place(|| frames.recv_timeout(Duration::from_millis(500)));
        assert!(
            sent.is_err(),
            "a message left although its round was not written"
        );
        let mut failure = failure.subscribe();
        let reason =
            tokio::time::timeout(Duration::from_secs(5), failure.wait_for(Option::is_some))
                .await
                .expect("the failure is recorded")
                .expect("the sender lives")
                .clone();
        assert!(reason.is_some_and(|r| r.contains("the disk is full")));
        // Its queue is closed: the replica task's next hand-over fails, and it stops.
        tokio::time::timeout(Duration::from_secs(5), rounds.closed())
            .await
            .expect("the writer's queue closes");
    }
}
