//! The retransmission timeout: doubled at every expiry, so that a client waiting out a view change does not flood
//! the replicas, and capped, so that it still retries often enough once the cluster has recovered.

use std::time::Duration;

/// The longest timeout, as a multiple of the first one.
const CAP_FACTOR: u32 = 8;

#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration) -> Backoff {
        Backoff {
            initial,
            current: initial,
        }
    }

    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// Doubles the timeout (up to the cap) and returns the new value.
    pub(crate) fn grow(&mut self) -> Duration {
        let cap = self.initial.saturating_mul(CAP_FACTOR);
        self.current = self.current.saturating_mul(2).min(cap);
        self.current
    }

    /// Back to the first timeout: the cluster answered, so the next request starts with fresh patience.
    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_eight_times_the_initial_value_then_resets() {
        let mut b = Backoff::new(Duration::from_millis(10));
        assert_eq!(b.current(), Duration::from_millis(10));
        let grown: Vec<u64> = (0..5).map(|_| b.grow().as_millis() as u64).collect();
        assert_eq!(grown, vec![20, 40, 80, 80, 80]);
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(10));
    }

    #[test]
    fn a_huge_timeout_saturates_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX);
        assert_eq!(b.grow(), Duration::MAX);
    }
}
