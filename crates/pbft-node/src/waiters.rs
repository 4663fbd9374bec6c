//! The clients waiting at one replica: each request submitted through this node, and each reply a client asked
//! for (an `AwaitedReply`), waits for this replica's reply to it.
//!
//! A wait ends one of two ways. A single submission (a unary call, the HTTP API) holds a future that receives the
//! reply through a oneshot channel, seals it and keeps its own time. A stream's entry is a [`ReplySink`]: the
//! reply is sealed and handed to it on the spot, by whichever thread has it (the journal writer, once the reply
//! may leave), so that a busy stream costs no task, future, channel or timer per request. Sinks have no timers of
//! their own either: a sweeper, every [`SWEEP_EVERY`], answers the waits past their deadline and drops those
//! nobody listens to any longer (their stream is gone), which frees what they held at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use pbft_crypto::{KeyPair, SessionKeys};
use pbft_types::{ClientId, Reply, Signed, Timestamp};
use smallvec::SmallVec;
use tokio::sync::oneshot;

use crate::runtime::SubmitError;

/// How often the waits of sinks are checked for their deadline and their listener.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// Which request a wait is for.
pub type Key = (ClientId, Timestamp);

/// Where a waiting stream entry's outcome goes, the moment it exists.
pub trait ReplySink: Send + 'static {
    /// Takes the outcome: this replica's sealed reply, or why none will come. Called at most once, on whatever
    /// thread has the outcome, so it must not block.
    fn answer(self: Box<Self>, outcome: Result<Signed<Reply>, SubmitError>);

    /// Whether nobody listens any longer: such a wait is dropped unanswered.
    fn is_closed(&self) -> bool;
}

/// A stream entry's wait: for `key`, until `deadline`, with its reply sealed by MAC or signature.
pub struct SinkWait {
    pub key: Key,
    pub with_mac: bool,
    pub deadline: Instant,
    pub sink: Box<dyn ReplySink>,
}

/// The waiting clients of one replica.
pub struct Waiters {
    state: Mutex<WaitState>,
    sealer: Arc<ReplySealer>,
}

#[derive(Default)]
struct WaitState {
    /// One entry per client of the configuration at most, as in the client table: only authenticated clients
    /// get this far.
    clients: HashMap<ClientId, ClientWaits>,
}

/// What a replica holds for one client, found with one lookup.
#[derive(Default)]
struct ClientWaits {
    /// The newest reply this replica gave the client, for a client that asks for it only after it was given (its
    /// `AwaitedReply` came late).
    latest: Option<Reply>,
    /// The waits for the client's requests, by timestamp: nearly always one, kept inline.
    waits: SmallVec<[(Timestamp, Waiter); 1]>,
}

impl ClientWaits {
    /// What a client that asks for the reply to `timestamp` after it was given gets: the reply, Stale if the
    /// client had a newer one, or nothing if no reply this new was given.
    fn given(&self, timestamp: Timestamp) -> Option<Result<Reply, SubmitError>> {
        let latest = self.latest.as_ref()?;
        if latest.timestamp == timestamp {
            Some(Ok(latest.clone()))
        } else if latest.timestamp > timestamp {
            Some(Err(SubmitError::Stale(latest.timestamp)))
        } else {
            None
        }
    }

    /// Takes every wait for `timestamp` out, to be handed `answer`.
    fn take(
        &mut self,
        timestamp: Timestamp,
        answer: impl Fn() -> Result<Reply, SubmitError>,
        handing: &mut Vec<Handing>,
    ) {
        let mut i = 0;
        while i < self.waits.len() {
            if self.waits[i].0 == timestamp {
                let (_, waiter) = self.waits.swap_remove(i);
                handing.push(match waiter {
                    Waiter::Once(tx) => Handing::Once(tx, answer()),
                    Waiter::Sink { with_mac, sink, .. } => Handing::Sink(sink, with_mac, answer()),
                });
            } else {
                i += 1;
            }
        }
    }
}

enum Waiter {
    /// A submission's future waits on the other end; it seals the reply itself and keeps its own time.
    Once(ReplySender),
    Sink {
        with_mac: bool,
        deadline: Instant,
        /// When it was registered, for the timeout it reports.
        since: Instant,
        sink: Box<dyn ReplySink>,
    },
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Once(tx) => tx.is_closed(),
            Waiter::Sink { sink, .. } => sink.is_closed(),
        }
    }
}

/// Where one waiting submission gets its reply, or learns that none will come.
type ReplySender = oneshot::Sender<Result<Reply, SubmitError>>;

/// A single submission's wait: its receiving end, closed and forgotten when dropped, however the wait ended.
pub struct Registered {
    waiters: Arc<Waiters>,
    key: Key,
    pub reply: oneshot::Receiver<Result<Reply, SubmitError>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Closed first, so that `forget` sees this sender as abandoned and removes it.
        self.reply.close();
        self.waiters.forget(self.key);
    }
}

/// An answer to hand over once the lock is released: sealing and sending are not done under it.
enum Handing {
    Once(ReplySender, Result<Reply, SubmitError>),
    Sink(Box<dyn ReplySink>, bool, Result<Reply, SubmitError>),
}

impl Waiters {
    pub fn new(key: KeyPair, sessions: Option<Arc<SessionKeys>>) -> Waiters {
        Waiters {
            state: Mutex::default(),
            sealer: Arc::new(ReplySealer { key, sessions }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seals this replica's reply the way its request was sealed (see `ReplySealer`).
    pub fn seal(&self, reply: Reply, with_mac: bool) -> Signed<Reply> {
        self.sealer.seal(reply, with_mac)
    }

    /// Registers a single submission's wait for each of `keys`, under one lock, each with the `Registered` that
    /// receives its reply. A request goes to the core, which answers a repeated one from its client table, so
    /// these waits do not look at the replies given already.
    pub fn wait_all(self: &Arc<Self>, keys: &[Key]) -> Vec<Registered> {
        let mut state = self.lock();
        keys.iter()
            .map(|&key| {
                let (tx, rx) = oneshot::channel();
                state
                    .clients
                    .entry(key.0)
                    .or_default()
                    .waits
                    .push((key.1, Waiter::Once(tx)));
                Registered {
                    waiters: Arc::clone(self),
                    key,
                    reply: rx,
                }
            })
            .collect()
    }

    /// Registers stream entries' waits, under one lock. With `given_too` (the entries ask for replies to requests
    /// sent to other replicas), a key whose reply was given already is answered at once, and one older than its
    /// client's latest reply is stale.
    pub fn sink_all(&self, waits: Vec<SinkWait>, given_too: bool) {
        let now = Instant::now();
        let mut handing = Vec::new();
        {
            let mut state = self.lock();
            for wait in waits {
                let (client, timestamp) = wait.key;
                let waits = state.clients.entry(client).or_default();
                match given_too.then(|| waits.given(timestamp)).flatten() {
                    Some(answer) => handing.push(Handing::Sink(wait.sink, wait.with_mac, answer)),
                    None => waits.waits.push((
                        timestamp,
                        Waiter::Sink {
                            with_mac: wait.with_mac,
                            deadline: wait.deadline,
                            since: now,
                            sink: wait.sink,
                        },
                    )),
                }
            }
        }
        self.hand_over(handing);
    }

    fn forget(&self, (client, timestamp): Key) {
        if let Some(waits) = self.lock().clients.get_mut(&client) {
            waits
                .waits
                .retain(|(t, w)| *t != timestamp || !w.is_closed());
        }
    }

    /// Records `reply` as its client's latest and answers every wait for it.
    pub fn deliver(&self, reply: &Reply) {
        self.deliver_all(std::slice::from_ref(reply));
    }

    /// As `deliver` for each of `replies`, under one lock, with the sealing after it.
    pub fn deliver_all(&self, replies: &[Reply]) {
        let mut handing = Vec::new();
        {
            let mut state = self.lock();
            for reply in replies {
                let waits = state.clients.entry(reply.client).or_default();
                if waits
                    .latest
                    .as_ref()
                    .is_none_or(|latest| latest.timestamp <= reply.timestamp)
                {
                    waits.latest = Some(reply.clone());
                }
                waits.take(reply.timestamp, || Ok(reply.clone()), &mut handing);
            }
        }
        self.hand_over(handing);
    }

    /// Answers every wait for `client`'s request `timestamp` with `answer`.
    pub fn answer(
        &self,
        client: ClientId,
        timestamp: Timestamp,
        answer: &Result<Reply, SubmitError>,
    ) {
        let mut handing = Vec::new();
        if let Some(waits) = self.lock().clients.get_mut(&client) {
            waits.take(timestamp, || answer.clone(), &mut handing);
        }
        self.hand_over(handing);
    }

    fn hand_over(&self, handing: Vec<Handing>) {
        let mut to_sign = Vec::new();
        for h in handing {
            match h {
                // A waiter that gave up has dropped its receiver; nothing to do for it.
                Handing::Once(tx, answer) => {
                    let _ = tx.send(answer);
                }
                Handing::Sink(sink, with_mac, Ok(reply))
                    if !self.sealer.seals_with_mac(with_mac) =>
                {
                    to_sign.push((sink, reply));
                }
                Handing::Sink(sink, with_mac, answer) => {
                    sink.answer(answer.map(|reply| self.sealer.seal(reply, with_mac)));
                }
            }
        }
        if to_sign.is_empty() {
            return;
        }
        // A signature costs about a hundred MACs: the round's signatures are made on a blocking thread rather than
        // on the journal writer's, which has the next write to make (a caller outside a runtime, a test, signs
        // here).
        let sealer = Arc::clone(&self.sealer);
        let sign_all = move || {
            for (sink, reply) in to_sign {
                sink.answer(Ok(sealer.seal(reply, false)));
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(sign_all);
            }
            Err(_) => sign_all(),
        }
    }

    /// Answers Timeout to every sink's wait past its deadline at `now`, and drops the waits nobody listens to
    /// any longer, whatever their kind. Returns how many waits remain.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut expired = Vec::new();
        let remaining = {
            let mut state = self.lock();
            for waits in state.clients.values_mut() {
                let waiting = &mut waits.waits;
                let mut i = 0;
                while i < waiting.len() {
                    let due = match &waiting[i].1 {
                        Waiter::Sink { deadline, .. } => *deadline <= now,
                        Waiter::Once(_) => false,
                    };
                    if due {
                        expired.push(waiting.swap_remove(i).1);
                    } else if waiting[i].1.is_closed() {
                        waiting.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            state.clients.values().map(|w| w.waits.len()).sum()
        };
        for waiter in expired {
            if let Waiter::Sink { since, sink, .. } = waiter {
                sink.answer(Err(SubmitError::Timeout(
                    now.saturating_duration_since(since),
                )));
            }
        }
        remaining
    }

    /// Sweeps `waiters` every `SWEEP_EVERY` for as long as anyone holds them.
    pub fn spawn_sweeper(waiters: Weak<Waiters>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match waiters.upgrade() {
                    Some(waiters) => {
                        waiters.sweep(Instant::now());
                    }
                    None => return,
                }
            }
        });
    }
}

/// Seals this replica's replies the way their requests were sealed: a signed request gets a signed reply, one
/// with a MAC authenticator a reply with the MAC of the client's session. Only replies someone waits for are
/// sealed, off the replica task.
struct ReplySealer {
    key: KeyPair,
    sessions: Option<Arc<SessionKeys>>,
}

impl ReplySealer {
    /// Whether a reply `with_mac` gets a MAC (the client has a session) rather than a signature.
    fn seals_with_mac(&self, with_mac: bool) -> bool {
        with_mac && self.sessions.is_some()
    }

    fn seal(&self, reply: Reply, with_mac: bool) -> Signed<Reply> {
        if with_mac && let Some(sessions) = &self.sessions {
            match sessions.seal_reply(reply.clone()) {
                Ok(sealed) => return sealed,
                // Cannot happen for a request whose MAC verified; a signature serves that client too.
                Err(e) => tracing::warn!(error = %e, "a reply could not be sealed with a MAC"),
            }
        }
        self.key.sign(reply)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use pbft_types::{ReplicaId, View};

    use super::*;

    fn waiters() -> Arc<Waiters> {
        Arc::new(Waiters::new(KeyPair::from_seed([3; 32]), None))
    }

    fn reply_to(client: u64, timestamp: u64) -> Reply {
        Reply {
            view: View(0),
            timestamp: Timestamp(timestamp),
            client: ClientId(client),
            replica: ReplicaId(1),
            result: Bytes::from_static(b"ok"),
        }
    }

    fn key(client: u64, timestamp: u64) -> Key {
        (ClientId(client), Timestamp(timestamp))
    }

    type Outcome = Result<Signed<Reply>, SubmitError>;

    /// A sink that records what it was answered, and can be closed.
    #[derive(Clone, Default)]
    struct Recorder {
        answers: Arc<Mutex<Vec<Outcome>>>,
        closed: Arc<AtomicBool>,
    }

    impl ReplySink for Recorder {
        fn answer(self: Box<Self>, outcome: Outcome) {
            self.answers.lock().unwrap().push(outcome);
        }
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::SeqCst)
        }
    }

    impl Recorder {
        fn wait(&self, key: Key, deadline: Instant) -> SinkWait {
            SinkWait {
                key,
                with_mac: false,
                deadline,
                sink: Box::new(self.clone()),
            }
        }
        fn taken(&self) -> Vec<Result<Reply, SubmitError>> {
            self.answers
                .lock()
                .unwrap()
                .drain(..)
                .map(|a| a.map(|signed| signed.value().clone()))
                .collect()
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_submitted_request_waits_for_its_reply_even_if_one_was_given_before() {
        let waiters = waiters();
        waiters.deliver(&reply_to(1, 10));
        let mut answers = waiters.wait_all(&[key(1, 10)]);
        assert!(answers[0].reply.try_recv().is_err());
        let sink = Recorder::default();
        waiters.sink_all(vec![sink.wait(key(1, 10), later())], false);
        assert!(sink.taken().is_empty());
        waiters.deliver(&reply_to(1, 10));
        assert_eq!(answers[0].reply.try_recv().unwrap(), Ok(reply_to(1, 10)));
        assert_eq!(sink.taken(), [Ok(reply_to(1, 10))]);
    }

    #[test]
    fn a_sink_gets_its_reply_sealed_and_so_does_every_other_wait_for_it() {
        let waiters = waiters();
        let (first, second) = (Recorder::default(), Recorder::default());
        waiters.sink_all(vec![first.wait(key(1, 10), later())], false);
        let mut single = waiters.wait_all(&[key(1, 10)]);
        waiters.sink_all(vec![second.wait(key(1, 10), later())], true);
        assert!(first.taken().is_empty());
        waiters.deliver(&reply_to(1, 10));
        let sealed = first.answers.lock().unwrap().pop().unwrap().unwrap();
        // Sealed by this replica's key: no sessions, so a signature.
        assert!(sealed.signature().is_some());
        assert_eq!(second.taken(), [Ok(reply_to(1, 10))]);
        assert_eq!(single[0].reply.try_recv().unwrap(), Ok(reply_to(1, 10)));
        assert_eq!(waiters.sweep(Instant::now()), 0);
    }

    #[test]
    fn a_sink_asking_late_is_answered_at_once_from_the_latest_reply() {
        let waiters = waiters();
        waiters.deliver(&reply_to(1, 10));
        // A reply of another client, and an older one of client 1 delivered late, change nothing for client 1.
        waiters.deliver(&reply_to(2, 50));
        waiters.deliver(&reply_to(1, 9));
        let sink = Recorder::default();
        waiters.sink_all(
            vec![
                sink.wait(key(1, 10), later()),
                sink.wait(key(1, 9), later()),
                sink.wait(key(1, 11), later()),
            ],
            true,
        );
        // Signed replies are handed over after the rest: the order between them is not kept.
        let taken = sink.taken();
        assert_eq!(taken.len(), 2, "{taken:?}");
        assert!(taken.contains(&Ok(reply_to(1, 10))), "{taken:?}");
        assert!(
            taken.contains(&Err(SubmitError::Stale(Timestamp(10)))),
            "{taken:?}"
        );
        // Not executed yet: it waits, and gets the reply when it comes.
        assert_eq!(waiters.sweep(Instant::now()), 1);
        waiters.deliver(&reply_to(1, 11));
        assert_eq!(sink.taken(), [Ok(reply_to(1, 11))]);
        assert_eq!(waiters.sweep(Instant::now()), 0);
    }

    #[test]
    fn the_sweep_times_out_sinks_past_their_deadline_and_only_them() {
        let waiters = waiters();
        let sink = Recorder::default();
        let now = Instant::now();
        waiters.sink_all(
            vec![
                sink.wait(key(1, 1), now + Duration::from_secs(1)),
                sink.wait(key(2, 1), now + Duration::from_secs(3)),
            ],
            false,
        );
        let single = waiters.wait_all(&[key(1, 1)]);
        assert_eq!(waiters.sweep(now), 3);
        assert!(sink.taken().is_empty());
        assert_eq!(waiters.sweep(now + Duration::from_secs(2)), 2);
        let taken = sink.taken();
        assert_eq!(taken.len(), 1);
        assert!(
            matches!(taken[0], Err(SubmitError::Timeout(_))),
            "{taken:?}"
        );
        // The single submission keeps its own time; the other sink still waits.
        drop(single);
        assert_eq!(waiters.sweep(now + Duration::from_secs(2)), 1);
        waiters.deliver(&reply_to(2, 1));
        assert_eq!(sink.taken(), [Ok(reply_to(2, 1))]);
    }

    #[test]
    fn the_sweep_drops_the_waits_of_a_sink_nobody_listens_to() {
        let waiters = waiters();
        let (gone, alive) = (Recorder::default(), Recorder::default());
        waiters.sink_all(
            vec![
                gone.wait(key(1, 1), later()),
                alive.wait(key(1, 1), later()),
            ],
            false,
        );
        gone.closed.store(true, Ordering::SeqCst);
        assert_eq!(waiters.sweep(Instant::now()), 1);
        waiters.deliver(&reply_to(1, 1));
        assert!(gone.taken().is_empty());
        assert_eq!(alive.taken(), [Ok(reply_to(1, 1))]);
    }

    #[test]
    fn a_single_submission_that_gives_up_leaves_no_trace() {
        let waiters = waiters();
        let registered = waiters.wait_all(&[key(1, 1)]);
        assert_eq!(waiters.sweep(Instant::now()), 1);
        drop(registered);
        assert_eq!(waiters.sweep(Instant::now()), 0);
    }
}
