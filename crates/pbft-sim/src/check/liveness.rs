//! Liveness: once the network has healed, every request completes within a bounded (virtual) time.
//!
//! A request issued before the heal time has until `heal_at + bound`; one issued later has until its issue time
//! plus `bound`. Before the heal time nothing is owed: a network that loses everything may stop any protocol.

use std::collections::BTreeMap;
use std::time::Duration;

use pbft_types::{ClientId, Timestamp};

#[derive(Clone, Debug)]
pub struct Liveness {
    heal_at: Duration,
    bound: Duration,
    /// Each client's outstanding request and when it was issued.
    outstanding: BTreeMap<ClientId, (Timestamp, Duration)>,
}

impl Liveness {
    pub fn new(heal_at: Duration, bound: Duration) -> Liveness {
        Liveness {
            heal_at,
            bound,
            outstanding: BTreeMap::new(),
        }
    }

    pub fn heal_at(&self) -> Duration {
        self.heal_at
    }

    /// A client sent a request. A retransmission of the outstanding one keeps its original issue time.
    pub fn issued(&mut self, client: ClientId, timestamp: Timestamp, at: Duration) {
        match self.outstanding.get(&client) {
            Some((t, _)) if *t == timestamp => {}
            _ => {
                self.outstanding.insert(client, (timestamp, at));
            }
        }
    }

    pub fn completed(&mut self, client: ClientId, timestamp: Timestamp) {
        if matches!(self.outstanding.get(&client), Some((t, _)) if *t == timestamp) {
            self.outstanding.remove(&client);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.outstanding.is_empty()
    }

    fn deadline(&self, issued: Duration) -> Duration {
        issued.max(self.heal_at).saturating_add(self.bound)
    }

    /// The earliest time by which some outstanding request must have completed.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.outstanding
            .values()
            .map(|(_, at)| self.deadline(*at))
            .min()
    }

    /// Whether some request is overdue at `now`.
    pub fn overdue(&self, now: Duration) -> bool {
        self.next_deadline().is_some_and(|d| now > d)
    }

    /// The outstanding requests in words, for a stall report.
    pub fn describe(&self, now: Duration) -> String {
        if self.outstanding.is_empty() {
            return "nothing".to_string();
        }
        self.outstanding
            .iter()
            .map(|(client, (t, at))| {
                let overdue = if now > self.deadline(*at) {
                    ", overdue"
                } else {
                    ""
                };
                format!("client {client} t {t} (issued at {at:?}{overdue})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_request_is_owed_only_after_the_heal_time() {
        let mut l = Liveness::new(s(10), s(60));
        l.issued(ClientId(1), Timestamp(1), s(1));
        assert_eq!(l.next_deadline(), Some(s(70)));
        assert!(!l.overdue(s(70)));
        assert!(l.overdue(s(71)));
        assert!(l.describe(s(71)).contains("client 1 t 1"));
    }

    #[test]
    fn a_retransmission_keeps_the_issue_time_and_completion_clears() {
        let mut l = Liveness::new(s(0), s(5));
        l.issued(ClientId(1), Timestamp(1), s(1));
        l.issued(ClientId(1), Timestamp(1), s(4));
        assert_eq!(l.next_deadline(), Some(s(6)));
        // A completion of some other timestamp does not clear the outstanding request.
        l.completed(ClientId(1), Timestamp(7));
        assert!(!l.is_idle());
        l.completed(ClientId(1), Timestamp(1));
        assert!(l.is_idle());
        assert!(!l.overdue(s(100)));
        l.issued(ClientId(1), Timestamp(2), s(50));
        assert_eq!(l.next_deadline(), Some(s(55)));
    }
}
