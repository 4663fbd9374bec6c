//! The event queue: events ordered by virtual time. Events due at the same instant come out in the order they were
//! scheduled, so a run never depends on how the heap happens to order equal keys, and a seed replays exactly.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

struct Scheduled<E> {
    at: Duration,
    /// How many events were scheduled before this one: the tie-breaker for equal times.
    order: u64,
    event: E,
}

impl<E> Scheduled<E> {
    fn key(&self) -> (Duration, u64) {
        (self.at, self.order)
    }
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap; reversing makes the earliest (time, order) come out first.
        other.key().cmp(&self.key())
    }
}

/// A queue of events in virtual time. `now` is the time of the last event taken out.
pub struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    scheduled: u64,
    now: Duration,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            scheduled: 0,
            now: Duration::ZERO,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The virtual time: that of the event last taken out, zero before the first.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Schedules `event` at `at`. Time never runs backwards: an event scheduled in the past happens now.
    pub fn schedule(&mut self, at: Duration, event: E) {
        let order = self.scheduled;
        self.scheduled += 1;
        self.heap.push(Scheduled {
            at: at.max(self.now),
            order,
            event,
        });
    }

    pub fn schedule_after(&mut self, delay: Duration, event: E) {
        self.schedule(self.now.saturating_add(delay), event);
    }

    /// Takes out the next event and advances the clock to its time.
    pub fn pop(&mut self) -> Option<E> {
        let next = self.heap.pop()?;
        self.now = next.at;
        Some(next.event)
    }

    /// When the next event is due, if there is one.
    pub fn next_time(&self) -> Option<Duration> {
        self.heap.peek().map(|s| s.at)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn events_come_out_in_time_order_and_advance_the_clock() {
        let mut q = EventQueue::new();
        q.schedule(ms(30), "c");
        q.schedule(ms(10), "a");
        q.schedule(ms(20), "b");
        assert_eq!(q.next_time(), Some(ms(10)));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.now(), ms(10));
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.pop(), Some("c"));
        assert_eq!(q.now(), ms(30));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn equal_times_keep_the_order_of_scheduling() {
        let mut q = EventQueue::new();
        for i in 0..100 {
            q.schedule(ms(5), i);
        }
        q.schedule(ms(1), -1);
        let order: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        let expected: Vec<i32> = std::iter::once(-1).chain(0..100).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn the_past_is_now() {
        let mut q = EventQueue::new();
        q.schedule(ms(10), 1);
        assert_eq!(q.pop(), Some(1));
        q.schedule(ms(3), 2);
        q.schedule_after(ms(1), 3);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.now(), ms(10));
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.now(), ms(11));
    }
}
