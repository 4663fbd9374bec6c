//! `ReplicaApi.SubmitStream`: many requests on one long-lived stream, packed into batches both ways.
//!
//! A reader task reads the client's stream and hands each [`RequestBatch`] to the handler together with one
//! [`AnswerSlot`] per entry. Whoever has an entry's answer puts it into its slot, the moment it exists and on
//! whatever thread: a request that waits for execution never holds up the others, in its batch or behind it, and
//! a busy stream costs no task or future per request. Each slot holds a permit from the moment its batch is read
//! until its answer is put into a reply batch: with every permit taken, the reader stops reading, and HTTP/2 flow
//! control pushes back on the client. The outgoing stream, whenever the transport asks for a message, takes every
//! answer ready at that moment (up to a cap) as one [`ReplyBatch`]: a busy stream sends few large messages, an
//! idle one sends each answer as soon as it exists.
//!
//! Dropping the outgoing stream (the client went away, or the connection broke) aborts the reader and closes
//! every slot: their holders see it ([`AnswerSlot::is_closed`]) and drop them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pbft_types::wire::{Refusal, ReplyBatch, RequestBatch, SignedEnvelope};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// How much one stream may hold in the replica.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests read and not yet answered (being handled, or answered but not yet taken into a batch). A request
    /// batch with more requests than this is refused whole.
    pub in_flight: usize,
    /// Answers in one batch at most.
    pub batch_answers: usize,
    /// A batch takes no further answer once its replies reach this many bytes (so it may exceed it by one reply).
    pub batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            in_flight: 4096,
            batch_answers: 1024,
            batch_bytes: 1 << 20,
        }
    }
}

/// The most `Limits::in_flight` may be: far beyond any use, and within what one semaphore call can take.
const MAX_IN_FLIGHT: usize = 1 << 24;

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Reply(SignedEnvelope),
    Refused(Refusal),
}

/// An answer and the permit its request held, released once the answer is in a batch.
type Ready = (Answer, OwnedSemaphorePermit);

/// The way back for one entry of a request batch: answering it puts the answer into the stream's next reply
/// batch.
pub struct AnswerSlot {
    permit: OwnedSemaphorePermit,
    answers: mpsc::UnboundedSender<Ready>,
}

impl AnswerSlot {
    pub fn answer(self, answer: Answer) {
        // Fails only when the outgoing stream is gone, and then nobody waits for the answer.
        let _ = self.answers.send((answer, self.permit));
    }

    /// Whether the outgoing stream is gone, so that an answer would go nowhere.
    pub fn is_closed(&self) -> bool {
        self.answers.is_closed()
    }
}

/// Serves one stream: `handle` takes each batch of `incoming` with one slot per entry (first the batch's
/// requests, then its awaited replies, each in the batch's order), and returns once it has handed the batch on;
/// each slot is answered later, by whoever has its answer. The returned stream yields the reply batches.
pub fn serve_batches<S, H, B>(incoming: S, handle: H, limits: Limits) -> ReplyStream
where
    S: Stream<Item = Result<RequestBatch, Status>> + Send + Unpin + 'static,
    H: Fn(RequestBatch, Vec<AnswerSlot>) -> B + Send + 'static,
    B: Future<Output = ()> + Send + 'static,
{
    let limits = Limits {
        in_flight: limits.in_flight.clamp(1, MAX_IN_FLIGHT),
        batch_answers: limits.batch_answers.max(1),
        ..limits
    };
    // Every answer in the channel holds a permit, so it never holds more than `in_flight`.
    let (answers, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read(incoming, handle, limits.in_flight, answers));
    ReplyStream { rx, reader, limits }
}

/// Reads batches while permits last and hands each on; once the client's side ends (or breaks, or sends a batch
/// it may not), returns, and the stream ends when the last slot was answered.
async fn read<S, H, B>(
    mut incoming: S,
    handle: H,
    in_flight: usize,
    answers: mpsc::UnboundedSender<Ready>,
) where
    S: Stream<Item = Result<RequestBatch, Status>> + Unpin,
    H: Fn(RequestBatch, Vec<AnswerSlot>) -> B,
    B: Future<Output = ()>,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    loop {
        // Backpressure: no permit, no reading. The batch's first entry takes this one.
        let Ok(mut permit) = Arc::clone(&permits).acquire_owned().await else {
            return; // never closed
        };
        match incoming.next().await {
            Some(Ok(batch)) => {
                let count = batch.requests.len() + batch.awaited.len();
                if count == 0 {
                    continue;
                }
                if count > in_flight {
                    // Its permits could never all be free at once: waiting for them would stall the stream for
                    // good. Like a message over the size limit, it ends the stream.
                    let refusal = Refusal::from_status(
                        0,
                        0,
                        &Status::resource_exhausted(format!(
                            "a batch of {count} requests; a stream handles at most {in_flight} at once"
                        )),
                    );
                    let _ = answers.send((Answer::Refused(refusal), permit));
                    return;
                }
                if count > 1 {
                    // `count - 1 < in_flight <= MAX_IN_FLIGHT`, which fits a u32.
                    let more = u32::try_from(count - 1).unwrap_or(u32::MAX);
                    let Ok(rest) = Arc::clone(&permits).acquire_many_owned(more).await else {
                        return; // never closed
                    };
                    permit.merge(rest);
                }
                let slots = (0..count)
                    .filter_map(|_| {
                        // One permit per entry: `count` were taken, so none is missing.
                        let permit = permit.split(1)?;
                        Some(AnswerSlot {
                            permit,
                            answers: answers.clone(),
                        })
                    })
                    .collect();
                handle(batch, slots).await;
            }
            Some(Err(status)) => {
                // A message that could not be decoded (over the size limit, or not a RequestBatch): its ids
                // cannot be read, and the stream cannot be trusted to frame the next one; answer what was read.
                let refusal = Refusal::from_status(0, 0, &status);
                let _ = answers.send((Answer::Refused(refusal), permit));
                return;
            }
            None => return,
        }
    }
}

/// The outgoing half of a stream: a batch of whatever answers are ready each time the transport asks.
pub struct ReplyStream {
    rx: mpsc::UnboundedReceiver<Ready>,
    reader: JoinHandle<()>,
    limits: Limits,
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        // Closes the slots too: their holders drop them, and so their requests' waits.
        self.reader.abort();
    }
}

impl Stream for ReplyStream {
    type Item = Result<ReplyBatch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(first)) => {
                Poll::Ready(Some(Ok(collect(first, &mut this.rx, this.limits))))
            }
            // The reader ended (the client's side ended) and every slot was answered.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `first` and every answer already waiting in `rx`, up to the limits; never waits for more.
fn collect(first: Ready, rx: &mut mpsc::UnboundedReceiver<Ready>, limits: Limits) -> ReplyBatch {
    let mut batch = ReplyBatch::default();
    // Takes an answer into the batch (dropping its permit) and returns its size.
    let add = |batch: &mut ReplyBatch, (answer, _permit): Ready| match answer {
        Answer::Reply(envelope) => {
            let size = envelope.encoded_len();
            batch.replies.push(envelope);
            size
        }
        Answer::Refused(refusal) => {
            let size = refusal.encoded_len();
            batch.refusals.push(refusal);
            size
        }
    };
    let mut bytes = add(&mut batch, first);
    while batch.replies.len() + batch.refusals.len() < limits.batch_answers
        && bytes < limits.batch_bytes
    {
        match rx.try_recv() {
            Ok(ready) => bytes += add(&mut batch, ready),
            Err(_) => break,
        }
    }
    batch
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    fn envelope(i: u64, size: usize) -> SignedEnvelope {
        SignedEnvelope {
            body: Bytes::from(vec![0; size]),
            signature: Bytes::from(i.to_le_bytes().to_vec()),
            ..SignedEnvelope::default()
        }
    }

    fn number(e: &SignedEnvelope) -> u64 {
        u64::from_le_bytes(e.signature.as_ref().try_into().unwrap())
    }

    /// Serves a stream with `handle` answering each request of each batch on its own, on a task of its own (the
    /// tests send no awaited replies).
    fn serve<S, H, F>(incoming: S, handle: H, limits: Limits) -> ReplyStream
    where
        S: Stream<Item = Result<RequestBatch, Status>> + Send + Unpin + 'static,
        H: Fn(SignedEnvelope) -> F + Send + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let each = move |batch: RequestBatch, slots: Vec<AnswerSlot>| {
            for (envelope, slot) in batch.requests.into_iter().zip(slots) {
                let answer = handle(envelope);
                tokio::spawn(async move { slot.answer(answer.await) });
            }
            std::future::ready(())
        };
        serve_batches(incoming, each, limits)
    }

    /// Answers filled into a channel the way request tasks fill it.
    fn ready(answers: impl IntoIterator<Item = Answer>) -> mpsc::UnboundedReceiver<Ready> {
        let answers: Vec<Answer> = answers.into_iter().collect();
        let permits = Arc::new(Semaphore::new(answers.len()));
        let (tx, rx) = mpsc::unbounded_channel();
        for a in answers {
            tx.send((a, Arc::clone(&permits).try_acquire_owned().unwrap()))
                .unwrap();
        }
        rx
    }

    #[tokio::test]
    async fn a_batch_takes_every_ready_answer_up_to_the_count_cap() {
        let limits = Limits {
            batch_answers: 4,
            ..Limits::default()
        };
        let mut rx = ready((0..6).map(|i| Answer::Reply(envelope(i, 10))));
        let first = rx.recv().await.unwrap();
        let batch = collect(first, &mut rx, limits);
        assert_eq!(
            batch.replies.iter().map(number).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let first = rx.recv().await.unwrap();
        let batch = collect(first, &mut rx, limits);
        assert_eq!(batch.replies.iter().map(number).collect::<Vec<_>>(), [4, 5]);
    }

    #[tokio::test]
    async fn a_batch_closes_once_it_reaches_the_byte_cap() {
        let limits = Limits {
            batch_bytes: 250,
            ..Limits::default()
        };
        let mut rx = ready((0..5).map(|i| Answer::Reply(envelope(i, 100))));
        let first = rx.recv().await.unwrap();
        // Each reply is a little over 100 bytes: the third one takes the batch past 250.
        assert_eq!(collect(first, &mut rx, limits).replies.len(), 3);
    }

    #[tokio::test]
    async fn refusals_travel_beside_replies() {
        let refusal = Refusal::from_status(3, 4, &Status::deadline_exceeded("late"));
        let mut rx = ready([
            Answer::Reply(envelope(1, 1)),
            Answer::Refused(refusal.clone()),
        ]);
        let first = rx.recv().await.unwrap();
        let batch = collect(first, &mut rx, Limits::default());
        assert_eq!(batch.replies.len(), 1);
        assert_eq!(batch.refusals, [refusal]);
    }

    type Incoming = Result<RequestBatch, Status>;

    /// A request batch of envelopes numbered `numbers`.
    fn batch(numbers: impl IntoIterator<Item = u64>) -> Incoming {
        Ok(RequestBatch {
            requests: numbers.into_iter().map(|i| envelope(i, 1)).collect(),
            awaited: Vec::new(),
        })
    }

    /// Every answer until the stream ends (it must end within seconds): the numbers replied to, and the refusals.
    async fn drain(out: &mut ReplyStream) -> (Vec<u64>, Vec<Refusal>) {
        let mut replies = Vec::new();
        let mut refusals = Vec::new();
        while let Some(batch) = tokio::time::timeout(Duration::from_secs(5), out.next())
            .await
            .unwrap()
        {
            let batch = batch.unwrap();
            replies.extend(batch.replies.iter().map(number));
            refusals.extend(batch.refusals);
        }
        (replies, refusals)
    }

    /// An input stream the test writes into, as a client's side of a stream.
    fn input(capacity: usize) -> (mpsc::Sender<Incoming>, ReceiverStream<Incoming>) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ReceiverStream::new(rx))
    }

    #[tokio::test]
    async fn an_answer_goes_out_at_once_without_waiting_to_fill_a_batch() {
        let (tx, incoming) = input(8);
        let mut out = serve(
            incoming,
            |e| async move { Answer::Reply(e) },
            Limits::default(),
        );
        tx.send(batch([7])).await.unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(5), out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(batch.replies.iter().map(number).collect::<Vec<_>>(), [7]);
        // The client's side is still open: the stream stays open too.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), out.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn answers_ready_together_travel_together_in_any_order() {
        let (tx, incoming) = input(16);
        let gate = Arc::new(tokio::sync::Notify::new());
        let opened = Arc::clone(&gate);
        let mut out = serve(
            incoming,
            move |e| {
                let gate = Arc::clone(&opened);
                async move {
                    // Request 0 waits until the test lets it go; the others answer at once.
                    if number(&e) == 0 {
                        gate.notified().await;
                    }
                    Answer::Reply(e)
                }
            },
            Limits::default(),
        );
        // The slow one shares its batch with four quick ones; five more come alone.
        tx.send(batch(0..5)).await.unwrap();
        for i in 5..10 {
            tx.send(batch([i])).await.unwrap();
        }
        // Let the nine quick ones finish before the transport asks for a message.
        while tx.capacity() < 16 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batch = out.next().await.unwrap().unwrap();
        let mut got: Vec<u64> = batch.replies.iter().map(number).collect();
        got.sort_unstable();
        assert_eq!(got, (1..10).collect::<Vec<_>>());
        gate.notify_one();
        let batch = out.next().await.unwrap().unwrap();
        assert_eq!(batch.replies.iter().map(number).collect::<Vec<_>>(), [0]);
    }

    #[tokio::test]
    async fn reading_stops_while_every_permit_is_taken() {
        let (tx, incoming) = input(64);
        let limits = Limits {
            in_flight: 4,
            ..Limits::default()
        };
        // Nothing is ever answered.
        let _out = serve(incoming, |_| std::future::pending(), limits);
        for i in 0..10 {
            tx.send(batch([i])).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Four read and held; the reader waits for a permit before it reads the fifth.
        assert_eq!(tx.max_capacity() - tx.capacity(), 6);
    }

    #[tokio::test]
    async fn a_client_that_reads_no_answers_is_held_at_the_bound() {
        let (tx, incoming) = input(64);
        let limits = Limits {
            in_flight: 4,
            ..Limits::default()
        };
        let _out = serve(incoming, |e| async move { Answer::Reply(e) }, limits);
        for i in 0..10 {
            tx.send(batch([i])).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Answered but never taken: the answers keep their permits.
        assert_eq!(tx.max_capacity() - tx.capacity(), 6);
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_every_slot() {
        let (tx, incoming) = input(8);
        let held: Arc<std::sync::Mutex<Vec<AnswerSlot>>> = Arc::default();
        let keep = Arc::clone(&held);
        let out = serve_batches(
            incoming,
            move |_, slots| {
                keep.lock().unwrap().extend(slots);
                std::future::ready(())
            },
            Limits::default(),
        );
        tx.send(batch(0..3)).await.unwrap();
        tx.send(batch(3..5)).await.unwrap();
        while held.lock().unwrap().len() < 5 {
            tokio::task::yield_now().await;
        }
        assert!(held.lock().unwrap().iter().all(|slot| !slot.is_closed()));
        drop(out);
        assert!(held.lock().unwrap().iter().all(AnswerSlot::is_closed));
    }

    #[tokio::test]
    async fn a_broken_input_is_refused_after_the_answers_due() {
        let (tx, incoming) = input(8);
        let mut out = serve(
            incoming,
            |e| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Answer::Reply(e)
            },
            Limits::default(),
        );
        tx.send(batch([1])).await.unwrap();
        tx.send(Err(Status::out_of_range("too large")))
            .await
            .unwrap();
        let (replies, refusals) = drain(&mut out).await;
        // The stream ended on its own although the test still holds the input open.
        assert_eq!(replies, [1]);
        assert_eq!(refusals.len(), 1);
        assert_eq!(
            (
                refusals[0].client,
                refusals[0].timestamp,
                refusals[0].code.as_str()
            ),
            (0, 0, "OUT_OF_RANGE")
        );
        drop(tx);
    }

    #[tokio::test]
    async fn the_stream_ends_once_the_client_closed_and_everything_is_answered() {
        let (tx, incoming) = input(8);
        let mut out = serve(
            incoming,
            |e| async move { Answer::Reply(e) },
            Limits::default(),
        );
        tx.send(batch([1])).await.unwrap();
        tx.send(batch([2, 3])).await.unwrap();
        drop(tx);
        let mut n = 0;
        while let Some(batch) = out.next().await {
            n += batch.unwrap().replies.len();
        }
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn every_request_of_a_batch_is_answered_as_it_completes() {
        let (tx, incoming) = input(8);
        let mut out = serve(
            incoming,
            |e| async move {
                // Later requests finish first, 10 ms apart.
                let wait = (20 - number(&e)) * 10;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Answer::Reply(e)
            },
            Limits::default(),
        );
        tx.send(batch(0..20)).await.unwrap();
        drop(tx);
        let (replies, refusals) = drain(&mut out).await;
        assert!(refusals.is_empty(), "{refusals:?}");
        // Each went out when it was ready, not when the batch was done: the first ones out are the quickest.
        assert_eq!(replies.first(), Some(&19));
        let mut sorted = replies.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_batch_is_read_only_once_there_is_a_permit_for_each_of_its_requests() {
        let (tx, incoming) = input(64);
        let limits = Limits {
            in_flight: 4,
            ..Limits::default()
        };
        let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = Arc::clone(&handled);
        // Nothing is ever answered.
        let _out = serve(
            incoming,
            move |_| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending()
            },
            limits,
        );
        tx.send(batch(0..3)).await.unwrap();
        tx.send(batch(3..6)).await.unwrap();
        tx.send(batch(6..7)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The second batch was read on the one permit left and waits for two more; the third is not read.
        assert_eq!(tx.max_capacity() - tx.capacity(), 1);
        assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_in_flight_bound_is_refused_and_ends_the_stream() {
        let (tx, incoming) = input(8);
        let limits = Limits {
            in_flight: 4,
            ..Limits::default()
        };
        let mut out = serve(incoming, |e| async move { Answer::Reply(e) }, limits);
        tx.send(batch([])).await.unwrap();
        tx.send(batch(0..4)).await.unwrap();
        tx.send(batch(4..9)).await.unwrap();
        tx.send(batch([9])).await.unwrap();
        let (mut replies, refusals) = drain(&mut out).await;
        // The empty batch is nothing, a full one is served, the one beyond is refused whole and nothing after it
        // is read.
        replies.sort_unstable();
        assert_eq!(replies, [0, 1, 2, 3]);
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        let refusal = &refusals[0];
        assert_eq!(
            (refusal.client, refusal.timestamp, refusal.code.as_str()),
            (0, 0, "RESOURCE_EXHAUSTED")
        );
        assert!(refusal.message.contains("5 requests"), "{refusal:?}");
        drop(tx);
    }
}
