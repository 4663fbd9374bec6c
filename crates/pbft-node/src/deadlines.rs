//! When each of the replica's running timers fires. The replica task sleeps until the earliest and hands the core
//! those that are due, one at a time; setting a timer again only moves its deadline, and cancelling one forgets
//! it.
//!
//! Before, each `SetTimer` spawned a task that slept and then sent the timer back through the event queue, where
//! a generation number told whether it was still wanted. Under load the request timer and the batch timer are
//! set again about once a batch, so a replica spawned hundreds of tasks a second, and each of them woke the replica
//! task once more when its stale timer came back.

use pbft_core::Timer;
use tokio::time::Instant;

/// The deadlines of the running timers: at most one per kind, and there are five kinds.
#[derive(Debug, Default)]
pub struct Deadlines {
    running: Vec<(Timer, Instant)>,
}

impl Deadlines {
    /// Starts `timer`, or restarts it if it runs: it fires at `at`.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        match self.running.iter_mut().find(|(t, _)| *t == timer) {
            Some(entry) => entry.1 = at,
            None => self.running.push((timer, at)),
        }
    }

    pub fn cancel(&mut self, timer: Timer) {
        self.running.retain(|(t, _)| *t != timer);
    }

    /// The earliest deadline, if any timer runs.
    pub fn next(&self) -> Option<Instant> {
        self.running.iter().map(|(_, at)| *at).min()
    }

    /// The earliest timer due at `now`, which no longer runs. One at a time: a timer that fires may cancel or
    /// restart another that is due as well, and then that one must not fire.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (index, _) = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, (_, at))| *at <= now)
            .min_by_key(|(_, (_, at))| *at)?;
        Some(self.running.swap_remove(index).0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timers_fire_once_each_at_their_latest_deadline_and_earliest_first() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut deadlines = Deadlines::default();
        assert_eq!(deadlines.next(), None);
        deadlines.set(Timer::ViewChange, ms(1000));
        deadlines.set(Timer::Batch, ms(2));
        deadlines.set(Timer::Status, ms(100));
        // Restarted: only the new deadline counts.
        deadlines.set(Timer::ViewChange, ms(50));
        assert_eq!(deadlines.next(), Some(ms(2)));
        assert_eq!(deadlines.pop_due(ms(1)), None);
        assert_eq!(deadlines.pop_due(ms(60)), Some(Timer::Batch));
        assert_eq!(deadlines.pop_due(ms(60)), Some(Timer::ViewChange));
        assert_eq!(deadlines.pop_due(ms(60)), None);
        assert_eq!(deadlines.next(), Some(ms(100)));
        assert_eq!(deadlines.pop_due(ms(5000)), Some(Timer::Status));
        assert_eq!(deadlines.next(), None);
    }

    #[test]
    fn a_cancelled_timer_does_not_fire() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        deadlines.set(Timer::Relay, start + Duration::from_millis(10));
        deadlines.set(Timer::StateTransfer, start + Duration::from_millis(20));
        deadlines.cancel(Timer::Relay);
        // Cancelling a timer that does not run changes nothing.
        deadlines.cancel(Timer::Batch);
        assert_eq!(deadlines.next(), Some(start + Duration::from_millis(20)));
        let later = start + Duration::from_secs(1);
        assert_eq!(deadlines.pop_due(later), Some(Timer::StateTransfer));
        assert_eq!(deadlines.pop_due(later), None);
    }

    #[test]
    fn a_due_timer_that_an_earlier_one_cancelled_does_not_fire() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        deadlines.set(Timer::ViewChange, start + Duration::from_millis(1));
        deadlines.set(Timer::Batch, start + Duration::from_millis(2));
        let now = start + Duration::from_millis(10);
        assert_eq!(deadlines.pop_due(now), Some(Timer::ViewChange));
        // The view change's step cancels the batch timer, due as well.
        deadlines.cancel(Timer::Batch);
        assert_eq!(deadlines.pop_due(now), None);
    }
}
