//! The simulated network: it decides, for each message sent, whether it arrives, how many times and when.
//!
//! Until the heal time it drops and duplicates messages at the configured rates and cuts the links of partitioned
//! replicas; every copy gets its own random delay, so messages overtake each other. From the heal time on it
//! delivers every message exactly once within the maximum delay: the "eventually synchronous" network under which
//! liveness can be asserted.

use std::collections::BTreeSet;
use std::time::Duration;

use pbft_types::{ClientId, ReplicaId};
use rand::{Rng, RngExt};

/// One end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Replica(ReplicaId),
    Client(ClientId),
}

/// A set of replicas cut off from everyone else (replicas and clients) during `[start, end)`. Messages among the
/// isolated replicas still flow, and so do messages between them and clients if `spares_clients` is set: a
/// replica whose links to its peers are down (a restarted replica whose peers have not reconnected yet) while
/// clients still reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub isolated: BTreeSet<ReplicaId>,
    pub start: Duration,
    pub end: Duration,
    pub spares_clients: bool,
}

impl Partition {
    fn isolates(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::Replica(r) if self.isolated.contains(&r))
    }

    /// Whether this partition separates `a` from `b` at time `now`.
    pub fn cuts(&self, a: Endpoint, b: Endpoint, now: Duration) -> bool {
        let client_link = matches!(a, Endpoint::Client(_)) || matches!(b, Endpoint::Client(_));
        self.start <= now
            && now < self.end
            && self.isolates(a) != self.isolates(b)
            && !(client_link && self.spares_clients)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// Probability that a message is lost, before the heal time.
    pub drop: f64,
    /// Probability that a message is delivered twice, before the heal time.
    pub duplicate: f64,
    /// Every copy takes a delay drawn uniformly from `[min_delay, max_delay]`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// From this time on there are no losses, duplicates or partitions.
    pub heal_at: Duration,
    pub partitions: Vec<Partition>,
}

/// What the network did, for the run's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Messages handed to the network (one per destination).
    pub sent: u64,
    /// Messages that never arrive: lost or cut by a partition.
    pub dropped: u64,
    /// Of which cut by a partition.
    pub partitioned: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

pub struct Network {
    config: NetworkConfig,
    stats: NetworkStats,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Network {
        Network {
            config,
            stats: NetworkStats::default(),
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// Whether faults may still happen at `now`.
    pub fn faulty_at(&self, now: Duration) -> bool {
        now < self.config.heal_at
    }

    /// Sends one message from `from` to `to` at `now` and returns the times at which its copies arrive: none if it
    /// is lost, two if it is duplicated.
    pub fn route(
        &mut self,
        from: Endpoint,
        to: Endpoint,
        now: Duration,
        rng: &mut impl Rng,
    ) -> Vec<Duration> {
        self.stats.sent += 1;
        let faulty = self.faulty_at(now);
        if faulty && self.config.partitions.iter().any(|p| p.cuts(from, to, now)) {
            self.stats.dropped += 1;
            self.stats.partitioned += 1;
            return Vec::new();
        }
        if faulty && self.config.drop > 0.0 && rng.random_bool(self.config.drop) {
            self.stats.dropped += 1;
            return Vec::new();
        }
        let copies =
            if faulty && self.config.duplicate > 0.0 && rng.random_bool(self.config.duplicate) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
        (0..copies).map(|_| now + self.delay(rng)).collect()
    }

    fn delay(&self, rng: &mut impl Rng) -> Duration {
        let min = self.config.min_delay.as_micros() as u64;
        let max = (self.config.max_delay.as_micros() as u64).max(min);
        Duration::from_micros(rng.random_range(min..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const R0: Endpoint = Endpoint::Replica(ReplicaId(0));
    const R1: Endpoint = Endpoint::Replica(ReplicaId(1));
    const R2: Endpoint = Endpoint::Replica(ReplicaId(2));
    const C0: Endpoint = Endpoint::Client(ClientId(0));

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(drop: f64, duplicate: f64) -> NetworkConfig {
        NetworkConfig {
            drop,
            duplicate,
            min_delay: ms(1),
            max_delay: ms(5),
            heal_at: ms(1000),
            partitions: Vec::new(),
        }
    }

    #[test]
    fn a_perfect_network_delivers_once_within_the_delay_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut net = Network::new(config(0.0, 0.0));
        for i in 0..1000 {
            let now = ms(i);
            let arrivals = net.route(R0, R1, now, &mut rng);
            assert_eq!(arrivals.len(), 1);
            assert!(arrivals[0] >= now + ms(1) && arrivals[0] <= now + ms(5));
        }
        assert_eq!(net.stats().sent, 1000);
        assert_eq!(net.stats().dropped, 0);
    }

    #[test]
    fn random_delays_reorder_messages() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut net = Network::new(config(0.0, 0.0));
        let arrivals: Vec<Duration> = (0..100)
            .map(|i| net.route(R0, R1, Duration::from_micros(i * 100), &mut rng)[0])
            .collect();
        assert!(
            arrivals.windows(2).any(|w| w[1] < w[0]),
            "a later message should sometimes overtake an earlier one"
        );
    }

    #[test]
    fn losses_and_duplicates_follow_their_rates_until_the_heal_time() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut net = Network::new(config(0.2, 0.1));
        let copies: usize = (0..10_000)
            .map(|i| net.route(R0, R1, Duration::from_micros(i), &mut rng).len())
            .sum();
        let stats = net.stats();
        assert!((1700..2300).contains(&stats.dropped), "{stats:?}");
        assert!((600..1000).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(copies as u64, stats.sent - stats.dropped + stats.duplicated);
        // After the heal time every message arrives exactly once.
        for i in 0..1000 {
            assert_eq!(net.route(R0, R1, ms(1000 + i), &mut rng).len(), 1);
        }
    }

    #[test]
    fn a_partition_cuts_only_across_it_and_only_while_it_lasts() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut cfg = config(0.0, 0.0);
        cfg.partitions.push(Partition {
            isolated: BTreeSet::from([ReplicaId(1), ReplicaId(2)]),
            start: ms(100),
            end: ms(200),
            spares_clients: false,
        });
        let mut net = Network::new(cfg);
        assert_eq!(net.route(R0, R1, ms(99), &mut rng).len(), 1);
        assert!(net.route(R0, R1, ms(100), &mut rng).is_empty());
        assert!(net.route(R1, R0, ms(150), &mut rng).is_empty());
        assert!(net.route(C0, R2, ms(150), &mut rng).is_empty());
        assert_eq!(net.route(R1, R2, ms(150), &mut rng).len(), 1);
        assert_eq!(net.route(C0, R0, ms(150), &mut rng).len(), 1);
        assert_eq!(net.route(R1, R0, ms(200), &mut rng).len(), 1);
        assert_eq!(net.stats().partitioned, 3);
        assert_eq!(net.stats().dropped, 3);
    }

    #[test]
    fn a_partition_that_spares_clients_cuts_only_replica_links() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut cfg = config(0.0, 0.0);
        cfg.partitions.push(Partition {
            isolated: BTreeSet::from([ReplicaId(2)]),
            start: ms(100),
            end: ms(200),
            spares_clients: true,
        });
        let mut net = Network::new(cfg);
        assert!(net.route(R0, R2, ms(150), &mut rng).is_empty());
        assert!(net.route(R2, R1, ms(150), &mut rng).is_empty());
        assert_eq!(net.route(C0, R2, ms(150), &mut rng).len(), 1);
        assert_eq!(net.route(R2, C0, ms(150), &mut rng).len(), 1);
        assert_eq!(net.route(R0, R2, ms(200), &mut rng).len(), 1);
        assert_eq!(net.stats().partitioned, 2);
    }

    #[test]
    fn the_same_seed_routes_the_same_way() {
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut net = Network::new(config(0.3, 0.3));
            (0..200)
                .map(|i| net.route(R0, R2, ms(i), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
