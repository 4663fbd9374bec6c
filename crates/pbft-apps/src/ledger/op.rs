//! The ledger's operations and results, and their encoding as the protobuf messages `LedgerOperation` and
//! `LedgerResult` of `proto/pbft.proto`. Decoding never panics: malformed bytes are a `Refusal`.

use bytes::Bytes;
use pbft_crypto::{KeyPair, verify_bytes};
use pbft_types::wire::{self, ledger_operation, ledger_refusal, ledger_result};
use prost::Message;

/// An account: the 32 bytes of its owner's ed25519 public key.
pub type AccountKey = [u8; 32];

/// What a transfer's signature covers, after this tag: the encoded `Transfer`.
const TRANSFER_TAG: &[u8] = b"pbft/ledger/transfer/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: AccountKey,
    pub to: AccountKey,
    pub amount: u64,
    pub nonce: u64,
}

/// A transfer with the bytes its signature covers, as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransfer {
    pub transfer: Transfer,
    body: Bytes,
    signature: [u8; 64],
}

impl Transfer {
    fn encode(&self) -> Bytes {
        wire::Transfer {
            from: Bytes::copy_from_slice(&self.from),
            to: Bytes::copy_from_slice(&self.to),
            amount: self.amount,
            nonce: self.nonce,
        }
        .encode_to_vec()
        .into()
    }

    /// Signs the transfer with the sending account's key. A key that is not `from`'s makes a transfer the ledger
    /// refuses (which is how tests forge one).
    pub fn sign(self, key: &KeyPair) -> SignedTransfer {
        let body = self.encode();
        let signature = key.sign_bytes(&signed_bytes(&body));
        SignedTransfer {
            transfer: self,
            body,
            signature,
        }
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    [TRANSFER_TAG, body].concat()
}

impl SignedTransfer {
    /// Whether `from` signed exactly these bytes.
    pub fn signature_holds(&self) -> bool {
        verify_bytes(
            &self.transfer.from,
            &signed_bytes(&self.body),
            &self.signature,
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerOp {
    Transfer(SignedTransfer),
    Balance { account: AccountKey },
}

/// An account as the state has it. An account nobody ever paid has balance 0 and nonce 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    pub balance: u64,
    /// Transfers the account made so far: the nonce its next transfer must carry.
    pub nonce: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    Malformed,
    BadSignature,
    BadNonce,
    InsufficientFunds,
    Overflow,
    SelfTransfer,
    ZeroAmount,
}

/// An operation that changed nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn malformed(detail: impl ToString) -> Refusal {
        Refusal {
            reason: RefusalReason::Malformed,
            detail: detail.to_string(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = match self.reason {
            RefusalReason::Malformed => "malformed",
            RefusalReason::BadSignature => "bad signature",
            RefusalReason::BadNonce => "bad nonce",
            RefusalReason::InsufficientFunds => "insufficient funds",
            RefusalReason::Overflow => "overflow",
            RefusalReason::SelfTransfer => "transfer to itself",
            RefusalReason::ZeroAmount => "zero amount",
        };
        write!(f, "refused ({reason}): {}", self.detail)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerResult {
    Transfer {
        from_balance: u64,
        to_balance: u64,
    },
    Balance {
        account: AccountKey,
        state: AccountState,
    },
    Refused(Refusal),
}

fn account_key(field: &str, bytes: &[u8]) -> Result<AccountKey, Refusal> {
    AccountKey::try_from(bytes).map_err(|_| {
        Refusal::malformed(format!(
            "{field} must be a 32-byte public key, not {} bytes",
            bytes.len()
        ))
    })
}

impl LedgerOp {
    /// The bytes a client puts in `Request.operation`.
    pub fn encode(&self) -> Bytes {
        let op = match self {
            LedgerOp::Transfer(t) => ledger_operation::Op::Transfer(wire::SignedTransfer {
                transfer: t.body.clone(),
                signature: Bytes::copy_from_slice(&t.signature),
            }),
            LedgerOp::Balance { account } => ledger_operation::Op::Balance(wire::BalanceQuery {
                account: Bytes::copy_from_slice(account),
            }),
        };
        wire::LedgerOperation { op: Some(op) }
            .encode_to_vec()
            .into()
    }

    pub fn decode(bytes: &[u8]) -> Result<LedgerOp, Refusal> {
        // The details of a refusal are part of its result, which every replica must produce byte for byte: they
        // never quote the protobuf library's own error text, which may change between its versions.
        let op = wire::LedgerOperation::decode(bytes)
            .map_err(|_| Refusal::malformed("not a ledger operation"))?
            .op
            .ok_or_else(|| Refusal::malformed("the operation names no kind"))?;
        match op {
            ledger_operation::Op::Transfer(signed) => {
                let t = wire::Transfer::decode(signed.transfer.clone())
                    .map_err(|_| Refusal::malformed("not a transfer"))?;
                let signature = <[u8; 64]>::try_from(signed.signature.as_ref()).map_err(|_| {
                    Refusal::malformed(format!(
                        "the signature must be 64 bytes, not {}",
                        signed.signature.len()
                    ))
                })?;
                Ok(LedgerOp::Transfer(SignedTransfer {
                    transfer: Transfer {
                        from: account_key("from", &t.from)?,
                        to: account_key("to", &t.to)?,
                        amount: t.amount,
                        nonce: t.nonce,
                    },
                    body: signed.transfer,
                    signature,
                }))
            }
            ledger_operation::Op::Balance(q) => Ok(LedgerOp::Balance {
                account: account_key("account", &q.account)?,
            }),
        }
    }
}

impl LedgerResult {
    pub fn encode(&self) -> Bytes {
        let outcome = match self {
            LedgerResult::Transfer {
                from_balance,
                to_balance,
            } => ledger_result::Outcome::Transfer(wire::TransferDone {
                from_balance: *from_balance,
                to_balance: *to_balance,
            }),
            LedgerResult::Balance { account, state } => {
                ledger_result::Outcome::Balance(account_to_wire(account, state))
            }
            LedgerResult::Refused(r) => ledger_result::Outcome::Refused(wire::LedgerRefusal {
                reason: match r.reason {
                    RefusalReason::Malformed => ledger_refusal::Reason::Malformed,
                    RefusalReason::BadSignature => ledger_refusal::Reason::BadSignature,
                    RefusalReason::BadNonce => ledger_refusal::Reason::BadNonce,
                    RefusalReason::InsufficientFunds => ledger_refusal::Reason::InsufficientFunds,
                    RefusalReason::Overflow => ledger_refusal::Reason::Overflow,
                    RefusalReason::SelfTransfer => ledger_refusal::Reason::SelfTransfer,
                    RefusalReason::ZeroAmount => ledger_refusal::Reason::ZeroAmount,
                } as i32,
                detail: r.detail.clone(),
            }),
        };
        wire::LedgerResult {
            outcome: Some(outcome),
        }
        .encode_to_vec()
        .into()
    }

    /// Decodes a result a replica sent. `None` for bytes that are not a ledger result.
    pub fn decode(bytes: &[u8]) -> Option<LedgerResult> {
        let outcome = wire::LedgerResult::decode(bytes).ok()?.outcome?;
        Some(match outcome {
            ledger_result::Outcome::Transfer(t) => LedgerResult::Transfer {
                from_balance: t.from_balance,
                to_balance: t.to_balance,
            },
            ledger_result::Outcome::Balance(a) => {
                let (account, state) = account_from_wire(&a).ok()?;
                LedgerResult::Balance { account, state }
            }
            ledger_result::Outcome::Refused(r) => LedgerResult::Refused(Refusal {
                reason: match ledger_refusal::Reason::try_from(r.reason).ok()? {
                    ledger_refusal::Reason::Unspecified => return None,
                    ledger_refusal::Reason::Malformed => RefusalReason::Malformed,
                    ledger_refusal::Reason::BadSignature => RefusalReason::BadSignature,
                    ledger_refusal::Reason::BadNonce => RefusalReason::BadNonce,
                    ledger_refusal::Reason::InsufficientFunds => RefusalReason::InsufficientFunds,
                    ledger_refusal::Reason::Overflow => RefusalReason::Overflow,
                    ledger_refusal::Reason::SelfTransfer => RefusalReason::SelfTransfer,
                    ledger_refusal::Reason::ZeroAmount => RefusalReason::ZeroAmount,
                },
                detail: r.detail,
            }),
        })
    }
}

impl std::fmt::Display for LedgerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerOp::Transfer(t) => write!(
                f,
                "transfer {} from {} to {} (nonce {})",
                t.transfer.amount,
                hex::encode(t.transfer.from),
                hex::encode(t.transfer.to),
                t.transfer.nonce
            ),
            LedgerOp::Balance { account } => write!(f, "balance of {}", hex::encode(account)),
        }
    }
}

impl std::fmt::Display for LedgerResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerResult::Transfer {
                from_balance,
                to_balance,
            } => write!(
                f,
                "transferred: sender now holds {from_balance}, receiver {to_balance}"
            ),
            LedgerResult::Balance { account, state } => write!(
                f,
                "account {}: balance {}, next nonce {}",
                hex::encode(account),
                state.balance,
                state.nonce
            ),
            LedgerResult::Refused(r) => r.fmt(f),
        }
    }
}

pub(crate) fn account_to_wire(account: &AccountKey, state: &AccountState) -> wire::AccountState {
    wire::AccountState {
        account: Bytes::copy_from_slice(account),
        balance: state.balance,
        nonce: state.nonce,
    }
}

pub(crate) fn account_from_wire(
    a: &wire::AccountState,
) -> Result<(AccountKey, AccountState), Refusal> {
    Ok((
        account_key("account", &a.account)?,
        AccountState {
            balance: a.balance,
            nonce: a.nonce,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyPair {
        KeyPair::from_seed([n; 32])
    }

    #[test]
    fn a_signed_transfer_survives_encoding_and_its_signature_holds() {
        let t = Transfer {
            from: key(1).public_key(),
            to: key(2).public_key(),
            amount: 5,
            nonce: 0,
        };
        let op = LedgerOp::Transfer(t.sign(&key(1)));
        let decoded = LedgerOp::decode(&op.encode()).expect("decodes");
        assert_eq!(decoded, op);
        let LedgerOp::Transfer(signed) = decoded else {
            panic!("a transfer")
        };
        assert!(signed.signature_holds());
    }

    #[test]
    fn a_transfer_signed_by_another_key_does_not_hold() {
        let t = Transfer {
            from: key(1).public_key(),
            to: key(2).public_key(),
            amount: 5,
            nonce: 0,
        };
        let LedgerOp::Transfer(signed) =
            LedgerOp::decode(&LedgerOp::Transfer(t.sign(&key(2))).encode()).expect("decodes")
        else {
            panic!("a transfer")
        };
        assert!(!signed.signature_holds());
    }

    #[test]
    fn garbage_is_refused_as_malformed() {
        for bytes in [&b"\xff\xff\xff"[..], b"", &[0x0a, 0x02, 0x0a, 0x01]] {
            if let Err(r) = LedgerOp::decode(bytes) {
                assert_eq!(r.reason, RefusalReason::Malformed);
            } else {
                panic!("{bytes:?} decoded");
            }
        }
    }

    #[test]
    fn results_survive_encoding() {
        let results = [
            LedgerResult::Transfer {
                from_balance: 1,
                to_balance: 2,
            },
            LedgerResult::Balance {
                account: [3; 32],
                state: AccountState {
                    balance: 4,
                    nonce: 5,
                },
            },
            LedgerResult::Refused(Refusal {
                reason: RefusalReason::BadNonce,
                detail: "x".into(),
            }),
        ];
        for r in results {
            assert_eq!(LedgerResult::decode(&r.encode()), Some(r));
        }
    }
}
