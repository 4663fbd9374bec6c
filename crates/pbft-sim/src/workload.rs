//! What the simulated clients ask for. For the key-value store: random puts, gets and deletes over a handful of
//! keys, so that operations of different clients touch the same keys and their results depend on the order they
//! execute in. For the ledger: transfers between a handful of accounts with the nonce the committed history
//! gives (clients race for the same accounts, so some lose), a few overdrawn, forged or with a stale or future
//! nonce on purpose, and balance queries.

use bytes::Bytes;
use pbft_apps::ledger::{LedgerOp, Transfer};
use pbft_apps::{Genesis, KvOp, KvStore, Ledger, LedgerReader};
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
    /// A result of this application in words (for traces).
    pub fn describe_result(self, result: &Bytes) -> String {
        match self {
            SimApp::Kv => crate::violation::describe_result(result),
            SimApp::Ledger => match pbft_apps::ledger::LedgerResult::decode(result) {
                Some(r) => r.to_string(),
                None => format!("bytes {}", hex::encode(result)),
            },
        }
    }

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
    accounts: Vec<KeyPair>,
}

impl Workload {
    /// Operations over `keys` distinct keys (at least one) for the key-value store.
    pub fn new(app: SimApp, keys: u32) -> Workload {
        Workload {
            app,
            keys: keys.max(1),
            accounts: (0..LEDGER_ACCOUNTS).map(account).collect(),
        }
    }

    /// The next operation, encoded for `Request.operation`. `ledger` is the state of the committed history (the
    /// reference model's), where a ledger client looks up its account's next nonce.
    pub fn next_op(&self, rng: &mut impl Rng, ledger: Option<&LedgerReader>) -> Bytes {
        match self.app {
            SimApp::Kv => self.next_kv(rng).encode(),
            SimApp::Ledger => self.next_ledger(rng, ledger).encode(),
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

    fn next_ledger(&self, rng: &mut impl Rng, ledger: Option<&LedgerReader>) -> LedgerOp {
        let n = self.accounts.len();
        let from = rng.random_range(0..n);
        let to = (from + rng.random_range(1..n)) % n;
        let (state, _) = ledger
            .map(|l| l.account(&self.accounts[from].public_key()))
            .unwrap_or_default();
        let kind = rng.random_range(0..20u32);
        if kind < 4 {
            return LedgerOp::Balance {
                account: self.accounts[from].public_key(),
            };
        }
        let nonce = match kind {
            4 => state.nonce.saturating_sub(1),
            5 => state.nonce + 1,
            _ => state.nonce,
        };
        let amount = match kind {
            6 => state.balance.saturating_mul(2).max(1),
            _ => rng.random_range(1..=LEDGER_BALANCE / 10),
        };
        let transfer = Transfer {
            from: self.accounts[from].public_key(),
            to: self.accounts[to].public_key(),
            amount,
            nonce,
        };
        // One in twenty is signed by the receiving account instead.
        let signer = if kind == 7 { to } else { from };
        LedgerOp::Transfer(transfer.sign(&self.accounts[signer]))
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
        let workload = Workload::new(SimApp::Kv, 3);
        let (mut puts, mut gets, mut deletes) = (0, 0, 0);
        let mut keys = BTreeSet::new();
        for _ in 0..1000 {
            let op =
                KvOp::decode(&workload.next_op(&mut rng, None)).expect("a key-value operation");
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
        let w = Workload::new(SimApp::Ledger, 1);
        let (mut transfers, mut forged, mut queries) = (0, 0, 0);
        for _ in 0..200 {
            match LedgerOp::decode(&w.next_op(&mut rng, None)).expect("a ledger operation") {
                LedgerOp::Transfer(t) if t.signature_holds() => transfers += 1,
                LedgerOp::Transfer(_) => forged += 1,
                LedgerOp::Balance { .. } => queries += 1,
            }
        }
        assert!(transfers > 0 && forged > 0 && queries > 0);
    }
}
