//! What the simulated clients ask for: random puts, gets and deletes over a handful of keys, so that operations
//! of different clients touch the same keys and their results depend on the order they execute in.

use bytes::Bytes;
use pbft_apps::KvOp;
use rand::{Rng, RngExt};

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    keys: u32,
}

impl Workload {
    /// Operations over `keys` distinct keys (at least one).
    pub fn new(keys: u32) -> Workload {
        Workload { keys: keys.max(1) }
    }

    pub fn next_op(&self, rng: &mut impl Rng) -> KvOp {
        let key = Bytes::from(format!("k{}", rng.random_range(0..self.keys)));
        // Puts dominate so that gets and deletes usually find something.
        match rng.random_range(0..10u32) {
            0..5 => KvOp::Put {
                key,
                value: Bytes::from(format!("v{}", rng.random::<u16>())),
            },
            5..8 => KvOp::Get { key },
            _ => KvOp::Delete { key },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeSet;

    #[test]
    fn every_kind_of_operation_over_the_key_space() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let workload = Workload::new(3);
        let (mut puts, mut gets, mut deletes) = (0, 0, 0);
        let mut keys = BTreeSet::new();
        for _ in 0..1000 {
            let key = match workload.next_op(&mut rng) {
                KvOp::Put { key, .. } => {
                    puts += 1;
                    key
                }
                KvOp::Get { key } => {
                    gets += 1;
                    key
                }
                KvOp::Delete { key } => {
                    deletes += 1;
                    key
                }
            };
            keys.insert(key);
        }
        assert!(puts > gets && gets > deletes && deletes > 0);
        let expected: BTreeSet<Bytes> = ["k0", "k1", "k2"].into_iter().map(Bytes::from).collect();
        assert_eq!(keys, expected);
    }
}
