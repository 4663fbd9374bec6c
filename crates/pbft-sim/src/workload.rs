//! What the simulated clients ask for. For the key-value store: random puts, gets and deletes over a handful of
//! keys, so that operations of different clients touch the same keys and their results depend on the order they
//! execute in. For the ledger: transfers between a handful of accounts, some overdrawn, some forged, some with a
//! stale nonce (clients race for the same accounts), and balance queries.

use bytes::Bytes;
use pbft_apps::ledger::{LedgerOp, Transfer};
use pbft_apps::{Genesis, KvOp, KvStore, Ledger};
use pbft_core::StateMachine;
use pbft_crypto::KeyPair;
use rand::{Rng, RngExt};

/// The replicated application of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimApp {
    #[default]
    Kv,
    Ledger,
}

/// The ledger's accounts in the simulator: fixed keys, so that runs replay from their seed alone.
const LEDGER_ACCOUNTS: u8 = 4;
const LEDGER_BALANCE: u64 = 1_000;

fn account(i: u8) -> KeyPair {
    KeyPair::from_seed([0xa0 + i; 32])
}

/// The genesis every simulated ledger starts from.
pub fn ledger_genesis() -> Genesis {
    // Distinct seeds give distinct keys, so the genesis is well formed.
    Genesis::new((0..LEDGER_ACCOUNTS).map(|i| (account(i).public_key(), LEDGER_BALANCE)))
        .unwrap_or_default()
}

impl SimApp {
    /// The application at its initial state.
    pub fn new_state_machine(self) -> Box<dyn StateMachine> {
        match self {
            SimApp::Kv => Box::new(KvStore::new()),
            SimApp::Ledger => Box::new(Ledger::new(&ledger_genesis())),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Workload {
    app: SimApp,
    keys: u32,
    /// The nonce each ledger account's next transfer is issued with (clients race, so some turn out stale).
    nonces: Vec<u64>,
    accounts: Vec<KeyPair>,
}

impl Workload {
    /// Operations over `keys` distinct keys (at least one) for the key-value store.
    pub fn new(app: SimApp, keys: u32) -> Workload {
        Workload {
            app,
            keys: keys.max(1),
            nonces: vec![0; usize::from(LEDGER_ACCOUNTS)],
            accounts: (0..LEDGER_ACCOUNTS).map(account).collect(),
        }
    }

    /// The next operation, encoded for `Request.operation`.
    pub fn next_op(&mut self, rng: &mut impl Rng) -> Bytes {
        match self.app {
            SimApp::Kv => self.next_kv(rng).encode(),
            SimApp::Ledger => self.next_ledger(rng).encode(),
        }
    }

    fn next_kv(&self, rng: &mut impl Rng) -> KvOp {
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

    fn next_ledger(&mut self, rng: &mut impl Rng) -> LedgerOp {
        let n = self.accounts.len();
        let from = rng.random_range(0..n);
        let to = (from + rng.random_range(1..n)) % n;
        match rng.random_range(0..10u32) {
            0..2 => LedgerOp::Balance {
                account: self.accounts[from].public_key(),
            },
            kind => {
                let transfer = Transfer {
                    from: self.accounts[from].public_key(),
                    to: self.accounts[to].public_key(),
                    // Up to 60% of a starting balance: accounts do run dry.
                    amount: rng.random_range(0..=LEDGER_BALANCE * 6 / 10),
                    nonce: self.nonces[from],
                };
                self.nonces[from] += 1;
                // One in ten is signed by the wrong account.
                let signer = if kind == 2 { to } else { from };
                LedgerOp::Transfer(transfer.sign(&self.accounts[signer]))
            }
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
        let mut workload = Workload::new(SimApp::Kv, 3);
        let (mut puts, mut gets, mut deletes) = (0, 0, 0);
        let mut keys = BTreeSet::new();
        for _ in 0..1000 {
            let op = KvOp::decode(&workload.next_op(&mut rng)).expect("a key-value operation");
            let key = match op {
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

    #[test]
    fn ledger_operations_include_transfers_forgeries_and_queries() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut w = Workload::new(SimApp::Ledger, 1);
        let (mut transfers, mut forged, mut queries) = (0, 0, 0);
        for _ in 0..200 {
            match LedgerOp::decode(&w.next_op(&mut rng)).expect("a ledger operation") {
                LedgerOp::Transfer(t) if t.signature_holds() => transfers += 1,
                LedgerOp::Transfer(_) => forged += 1,
                LedgerOp::Balance { .. } => queries += 1,
            }
        }
        assert!(transfers > 0 && forged > 0 && queries > 0);
    }
}
