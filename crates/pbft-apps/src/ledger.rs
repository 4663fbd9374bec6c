//! The replicated ledger: accounts named by ed25519 public keys, transfers signed by the paying account, and a
//! hash chain of blocks, one per executed batch, each kept with the commit certificate that proves the cluster
//! ordered it. Anyone with the cluster's public keys and the genesis can check the chain offline
//! (`verify::ChainVerifier`), down to every result and state root, by replaying it.
//!
//! The state the replicas agree on (and transfer) is the accounts and the chain's head (height and hash); the
//! blocks themselves leave the application at the end of each batch (`StateMachine::end_batch`) and are kept by
//! the node with their certificates, outside the replicated state.

mod block;
pub mod export;
mod merkle;
mod op;
mod verify;

pub use block::{
    BlockFault, BlockHeader, CertificateFault, CertifiedBlock, Entry, EntryProof, check_certificate,
};
pub use merkle::Step as MerkleStep;
pub use op::{
    AccountKey, AccountState, LedgerOp, LedgerResult, Refusal, RefusalReason, SignedTransfer,
    Transfer,
};
pub use verify::{BadBlock, ChainVerifier};

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use pbft_core::{ExecContext, ExecutedBatch, RestoreError, StateMachine};
use pbft_types::{Digest, wire};
use prost::Message;
use sha2::{Digest as _, Sha256};

use block::encode_block;

/// The accounts the chain starts with, and their balances. Every replica and every verifier must use the same:
/// its hash is the `previous` of block 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Genesis {
    accounts: BTreeMap<AccountKey, u64>,
}

impl Genesis {
    /// Refuses an account listed twice: which balance it starts with would be ambiguous.
    pub fn new(accounts: impl IntoIterator<Item = (AccountKey, u64)>) -> Result<Genesis, String> {
        let mut map = BTreeMap::new();
        for (key, balance) in accounts {
            if map.insert(key, balance).is_some() {
                return Err(format!(
                    "genesis account {} is listed twice",
                    hex::encode(key)
                ));
            }
        }
        Ok(Genesis { accounts: map })
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&AccountKey, &u64)> {
        self.accounts.iter()
    }

    pub fn hash(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"pbft/ledger/genesis/v1");
        for (key, balance) in &self.accounts {
            h.update(key);
            h.update(balance.to_be_bytes());
        }
        Digest(h.finalize().into())
    }
}

/// The replicated state: accounts and the head of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    accounts: BTreeMap<AccountKey, AccountState>,
    height: u64,
    head: Digest,
}

impl State {
    fn state_root(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"pbft/ledger/state/v1");
        for (key, account) in &self.accounts {
            h.update(key);
            h.update(account.balance.to_be_bytes());
            h.update(account.nonce.to_be_bytes());
        }
        Digest(h.finalize().into())
    }

    fn account(&self, key: &AccountKey) -> AccountState {
        self.accounts.get(key).copied().unwrap_or_default()
    }

    fn apply(&mut self, op: LedgerOp) -> LedgerResult {
        match op {
            LedgerOp::Balance { account } => LedgerResult::Balance {
                account,
                state: self.account(&account),
            },
            LedgerOp::Transfer(signed) => match self.transfer(&signed) {
                Ok(result) => result,
                Err(refusal) => LedgerResult::Refused(refusal),
            },
        }
    }

    fn transfer(&mut self, signed: &SignedTransfer) -> Result<LedgerResult, Refusal> {
        let t = signed.transfer;
        let refuse = |reason, detail: String| Refusal { reason, detail };
        if t.from == t.to {
            return Err(refuse(
                RefusalReason::SelfTransfer,
                "from and to are the same account".into(),
            ));
        }
        // A transfer of nothing would create the receiving account for free.
        if t.amount == 0 {
            return Err(refuse(
                RefusalReason::ZeroAmount,
                "a transfer must move at least 1".into(),
            ));
        }
        if !signed.signature_holds() {
            return Err(refuse(
                RefusalReason::BadSignature,
                format!("not signed by {}", hex::encode(t.from)),
            ));
        }
        let from = self.account(&t.from);
        if t.nonce != from.nonce {
            return Err(refuse(
                RefusalReason::BadNonce,
                format!("nonce {}, the account's next is {}", t.nonce, from.nonce),
            ));
        }
        if from.balance < t.amount {
            return Err(refuse(
                RefusalReason::InsufficientFunds,
                format!("balance {}, transfer of {}", from.balance, t.amount),
            ));
        }
        let to = self.account(&t.to);
        let Some(to_balance) = to.balance.checked_add(t.amount) else {
            return Err(refuse(
                RefusalReason::Overflow,
                "the receiver's balance would overflow".into(),
            ));
        };
        let from_balance = from.balance - t.amount;
        self.accounts.insert(
            t.from,
            AccountState {
                balance: from_balance,
                nonce: from.nonce + 1,
            },
        );
        self.accounts.insert(
            t.to,
            AccountState {
                balance: to_balance,
                nonce: to.nonce,
            },
        );
        Ok(LedgerResult::Transfer {
            from_balance,
            to_balance,
        })
    }
}

/// The ledger application. It shares its state, read-only, with `LedgerReader`s (the node answers balance
/// queries from it), which is why the state sits behind a lock that only the ledger ever writes through.
#[derive(Debug)]
pub struct Ledger {
    state: Arc<RwLock<State>>,
}

/// A read-only view of a running ledger's state.
#[derive(Clone, Debug)]
pub struct LedgerReader {
    state: Arc<RwLock<State>>,
}

impl LedgerReader {
    /// An account as of the latest block, and that block's height.
    pub fn account(&self, key: &AccountKey) -> (AccountState, u64) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (state.account(key), state.height)
    }

    /// The height and hash of the latest block (the genesis hash at height 0).
    pub fn head(&self) -> (u64, Digest) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (state.height, state.head)
    }
}

impl Ledger {
    pub fn new(genesis: &Genesis) -> Ledger {
        let state = State {
            accounts: genesis
                .accounts
                .iter()
                .map(|(key, balance)| {
                    (
                        *key,
                        AccountState {
                            balance: *balance,
                            nonce: 0,
                        },
                    )
                })
                .collect(),
            height: 0,
            head: genesis.hash(),
        };
        Ledger {
            state: Arc::new(RwLock::new(state)),
        }
    }

    /// An independent copy of this ledger's state (the chain verifier replays a block on one, so that a bad
    /// block changes nothing).
    pub(crate) fn fork(&self) -> Ledger {
        Ledger {
            state: Arc::new(RwLock::new(self.read().clone())),
        }
    }

    pub fn reader(&self) -> LedgerReader {
        LedgerReader {
            state: self.state.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Executes one operation (the bytes of `Request.operation`).
    pub fn execute_operation(&mut self, operation: &[u8]) -> Bytes {
        let result = match LedgerOp::decode(operation) {
            Ok(op) => self.write().apply(op),
            Err(refusal) => LedgerResult::Refused(refusal),
        };
        result.encode()
    }

    /// Closes block `height` over the requests just executed, whose batch digest is `batch_digest` (the
    /// caller has it: the replicas agreed on it, or a verifier checked it), and moves the head to it.
    pub fn close_block(
        &mut self,
        height: u64,
        batch_digest: Digest,
        entries: Vec<Entry>,
    ) -> CertifiedBlock {
        let mut state = self.write();
        let leaves: Vec<Digest> = entries.iter().map(Entry::leaf).collect();
        let header = BlockHeader {
            height,
            previous: state.head,
            batch_digest,
            entries_root: merkle::root(&leaves),
            state_root: state.state_root(),
            entries: entries.len() as u64,
        };
        let block = CertifiedBlock::new(header, entries, Vec::new());
        state.height = height;
        state.head = block.hash();
        block
    }

    /// The account as the state has it now.
    pub fn account(&self, key: &AccountKey) -> AccountState {
        self.read().account(key)
    }

    pub fn head(&self) -> (u64, Digest) {
        let state = self.read();
        (state.height, state.head)
    }
}

impl StateMachine for Ledger {
    fn execute(&mut self, _ctx: ExecContext, operation: &[u8]) -> Bytes {
        self.execute_operation(operation)
    }

    fn digest(&self) -> Digest {
        let state = self.read();
        let mut h = Sha256::new();
        h.update(b"pbft/ledger/v1");
        h.update(state.height.to_be_bytes());
        h.update(state.head.as_bytes());
        h.update(state.state_root().as_bytes());
        Digest(h.finalize().into())
    }

    fn snapshot(&self) -> Bytes {
        let state = self.read();
        wire::LedgerSnapshot {
            accounts: state
                .accounts
                .iter()
                .map(|(key, account)| op::account_to_wire(key, account))
                .collect(),
            height: state.height,
            head: Bytes::copy_from_slice(state.head.as_bytes()),
        }
        .encode_to_vec()
        .into()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let w = wire::LedgerSnapshot::decode(snapshot)
            .map_err(|e| RestoreError(format!("malformed ledger snapshot: {e}")))?;
        let head = Digest::from_slice(&w.head)
            .ok_or_else(|| RestoreError("ledger snapshot: the head is not 32 bytes".into()))?;
        let mut accounts = BTreeMap::new();
        for a in &w.accounts {
            let (key, account) = op::account_from_wire(a)
                .map_err(|r| RestoreError(format!("ledger snapshot: {}", r.detail)))?;
            if accounts
                .last_key_value()
                .is_some_and(|(last, _)| *last >= key)
            {
                return Err(RestoreError(
                    "ledger snapshot: accounts are not in strictly increasing key order".into(),
                ));
            }
            accounts.insert(key, account);
        }
        *self.write() = State {
            accounts,
            height: w.height,
            head,
        };
        Ok(())
    }

    fn needs_signed_commits(&self) -> bool {
        true
    }

    fn end_batch(&mut self, batch: ExecutedBatch<'_>) -> Option<Bytes> {
        let entries = batch
            .requests
            .iter()
            .zip(batch.results)
            .map(|(request, result)| Entry {
                request: request.signed().body().clone(),
                result: result.clone(),
            })
            .collect();
        let block = self.close_block(batch.seq.0, batch.digest, entries);
        Some(encode_block(block.header_bytes(), &block.entries))
    }
}

#[cfg(test)]
mod tests;
