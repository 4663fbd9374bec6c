//! What a replica must remember across a crash (PROTOCOL.md: a replica never contradicts a message it sent, and
//! nothing acknowledged to a client is lost), as the entries the core hands its driver in `Output::Persist`.
//!
//! The driver keeps the entries durably and gives them back to `Replica::recover` after a restart. It must make
//! every entry of a step durable before it carries out any `Send` or `Reply` of that step: a message that leaves
//! is then always backed by what the replica remembers, so a recovered replica can never send one that
//! contradicts it. The exception is a step whose only entries are `Executed` records and that sends no
//! CHECKPOINT (see `JournalEntry::gates_outputs` and `Output::waits_for_journal`). What is kept, and why:
//!
//! - `View`: the view, and whether the replica sent VIEW-CHANGE for it. A recovered replica never goes back to a
//!   view it left, and re-sends its VIEW-CHANGE if it was waiting for a NEW-VIEW.
//! - `Accepted`: each PRE-PREPARE the replica accepted (and prepared for) or, as primary, sent. After recovery it
//!   refuses a conflicting PRE-PREPARE for the same view and sequence number, and a primary never assigns a
//!   sequence number twice.
//! - `Prepared`: each prepared certificate it formed, so that its VIEW-CHANGEs still carry it.
//! - `Executed`: each batch it executed, in order, named by its PRE-PREPARE: the requests are in the `Accepted`
//!   entry written for the same sequence number and digest before it, so the batch reaches the disk once.
//!   Replayed on top of the stable checkpoint, they rebuild the application state and the client table without
//!   asking anyone. They may reach the disk after the step's replies left, in order with the entries after them:
//!   a request whose reply left survives even a restart of every replica through the `Prepared` entries of the
//!   replicas that committed it (see `gates_outputs`).
//! - `Stable`: each stable checkpoint with its proof and the state snapshot at it. Everything filed at or below
//!   it is obsolete; the driver may delete it.
//! - `NewView`: the NEW-VIEW of the view the replica entered last. A primary that restarts can resend it to a
//!   peer that missed it; otherwise, after a crash of the whole cluster, no one could, and that peer would stay in
//!   the old view.
//!
//! Messages from peers are not kept: they resend what a replica lacks when it asks (STATUS).

use bytes::Bytes;
use pbft_crypto::{Keyring, Verified, VerifiedPrepared};
use pbft_types::wire::{self, journal_record};
use pbft_types::{
    Checkpoint, DecodeError, DecodeLimits, Digest, NewView, PrePrepare, PreparedProof, Request,
    SeqNo, Signed, View,
};
use prost::Message;
use thiserror::Error;

use crate::io::Batch;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalEntry {
    /// The replica is in `view`; `changing`: it sent VIEW-CHANGE for it and waits for the NEW-VIEW. Replaces the
    /// previous `View` entry.
    View {
        view: View,
        changing: bool,
    },
    /// A PRE-PREPARE the replica accepted or sent, with its requests when it has them (a NEW-VIEW names batches by
    /// digest only; the requests may come later, in another `Accepted` entry).
    Accepted {
        header: Verified<PrePrepare>,
        batch: Option<Batch>,
    },
    Prepared(VerifiedPrepared),
    /// The batch `header` names was executed at `header.seq`. Its requests are in an earlier `Accepted` entry.
    Executed {
        header: Verified<PrePrepare>,
    },
    /// A stable checkpoint: q CHECKPOINTs (none for the initial state) and the encoded `StateSnapshot` at it.
    Stable {
        seq: SeqNo,
        digest: Digest,
        proof: Vec<Verified<Checkpoint>>,
        snapshot: Bytes,
    },
    /// The NEW-VIEW of the view the replica entered (sent or accepted). Replaces the previous one.
    NewView(Verified<NewView>),
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal record: {0}")]
    Decode(#[from] DecodeError),
    #[error("journal record: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("journal record: a signature does not verify: {0}")]
    Auth(#[from] pbft_crypto::AuthError),
    #[error("journal record: {0} is missing")]
    Missing(&'static str),
}

impl JournalEntry {
    /// The sequence number the entry is about. A stable checkpoint at or above it makes the entry obsolete;
    /// `None` for `View` and `NewView` (each replaces the previous) and `Stable` (each replaces the previous and
    /// collects).
    pub fn seq(&self) -> Option<SeqNo> {
        match self {
            JournalEntry::View { .. } | JournalEntry::Stable { .. } | JournalEntry::NewView(_) => {
                None
            }
            JournalEntry::Accepted { header, .. } | JournalEntry::Executed { header } => {
                Some(header.seq)
            }
            JournalEntry::Prepared(cert) => Some(cert.pre_prepare.seq),
        }
    }

    /// Whether the step's messages and replies must wait until this entry is durable. Every entry must, except
    /// `Executed`: it records what this replica did, not a message it sent, and everything its replies depend on
    /// was durable before its COMMIT left (the `Accepted` and `Prepared` entries). A replica that loses it in a
    /// crash recovers with the batch prepared, and commits and executes it again, to the same state and the same
    /// replies (or fetches a checkpoint past it). The one message that depends on it is the CHECKPOINT, whose
    /// step waits anyway (`Output::waits_for_journal`). The driver writes an `Executed` entry no later than the
    /// next step that waits for the journal, and in order with it; it may lose it, and every entry after it, in
    /// a crash. Leaving it out of the step's synced write spares the disk one sync per batch, and the replies
    /// that sync's wait.
    pub fn gates_outputs(&self) -> bool {
        !matches!(self, JournalEntry::Executed { .. })
    }

    pub fn encode(&self) -> Vec<u8> {
        let kind = match self {
            JournalEntry::View { view, changing } => {
                journal_record::Kind::View(wire::JournalView {
                    view: view.0,
                    changing: *changing,
                })
            }
            JournalEntry::Accepted { header, batch } => {
                journal_record::Kind::Accepted(batch_record(header, batch.as_ref()))
            }
            JournalEntry::Prepared(cert) => {
                let proof = cert.to_proof();
                journal_record::Kind::Prepared(wire::PreparedProof {
                    pre_prepare: Some(proof.pre_prepare.to_envelope()),
                    prepares: proof.prepares.iter().map(Signed::to_envelope).collect(),
                })
            }
            JournalEntry::Executed { header } => {
                journal_record::Kind::Executed(batch_record(header, None))
            }
            JournalEntry::Stable {
                seq,
                digest,
                proof,
                snapshot,
            } => journal_record::Kind::Stable(wire::JournalStable {
                sequence: seq.0,
                digest: Bytes::copy_from_slice(&digest.0),
                proof: proof.iter().map(|c| c.signed().to_envelope()).collect(),
                snapshot: snapshot.clone(),
            }),
            JournalEntry::NewView(nv) => journal_record::Kind::NewView(nv.signed().to_envelope()),
        };
        wire::JournalRecord { kind: Some(kind) }.encode_to_vec()
    }

    /// Decodes an entry and verifies every signature in it again: a journal is data from disk, trusted no more
    /// than data from the network.
    pub fn decode(
        bytes: &[u8],
        keyring: &Keyring,
        limits: DecodeLimits,
    ) -> Result<JournalEntry, JournalError> {
        let record = wire::JournalRecord::decode(bytes)?;
        let kind = record.kind.ok_or(JournalError::Missing("kind"))?;
        Ok(match kind {
            journal_record::Kind::View(v) => JournalEntry::View {
                view: View(v.view),
                changing: v.changing,
            },
            journal_record::Kind::Accepted(b) => {
                let (header, batch) = decode_batch(b, keyring, limits)?;
                JournalEntry::Accepted { header, batch }
            }
            journal_record::Kind::Executed(mut b) => {
                // Journals written before the batch was left out carry it here too; the `Accepted` entry has it.
                b.batch.clear();
                b.batch_known = false;
                let (header, _) = decode_batch(b, keyring, limits)?;
                JournalEntry::Executed { header }
            }
            journal_record::Kind::Prepared(p) => {
                let pre_prepare = Signed::from_envelope(
                    p.pre_prepare
                        .ok_or(JournalError::Missing("the certificate's PRE-PREPARE"))?,
                )?;
                let prepares = p
                    .prepares
                    .into_iter()
                    .map(Signed::from_envelope)
                    .collect::<Result<Vec<_>, _>>()?;
                JournalEntry::Prepared(keyring.verify_prepared(PreparedProof {
                    pre_prepare,
                    prepares,
                })?)
            }
            journal_record::Kind::Stable(s) => {
                let digest = Digest(<[u8; 32]>::try_from(s.digest.as_ref()).map_err(|_| {
                    DecodeError::BadLength {
                        field: "digest",
                        expected: 32,
                        got: s.digest.len(),
                    }
                })?);
                let proof = s
                    .proof
                    .into_iter()
                    .map(|e| {
                        let signed = Signed::<Checkpoint>::from_envelope(e)?;
                        Ok(keyring.verify(signed)?)
                    })
                    .collect::<Result<Vec<_>, JournalError>>()?;
                JournalEntry::Stable {
                    seq: SeqNo(s.sequence),
                    digest,
                    proof,
                    snapshot: s.snapshot,
                }
            }
            journal_record::Kind::NewView(envelope) => {
                let nv = Signed::<NewView>::from_envelope(envelope)?;
                JournalEntry::NewView(keyring.verify(nv)?)
            }
        })
    }
}

/// An `Accepted` entry whose batch is unknown is written with `batch_known` false, so that it is not mistaken for
/// a batch with no requests (a null request).
fn batch_record(header: &Verified<PrePrepare>, batch: Option<&Batch>) -> wire::JournalBatch {
    wire::JournalBatch {
        pre_prepare: Some(header.signed().to_envelope()),
        batch: batch
            .map(|b| b.iter().map(|r| r.signed().to_envelope()).collect())
            .unwrap_or_default(),
        batch_known: batch.is_some(),
    }
}

fn decode_batch(
    record: wire::JournalBatch,
    keyring: &Keyring,
    limits: DecodeLimits,
) -> Result<(Verified<PrePrepare>, Option<Batch>), JournalError> {
    let header = Signed::<PrePrepare>::from_envelope(
        record
            .pre_prepare
            .ok_or(JournalError::Missing("the PRE-PREPARE"))?,
    )?;
    let header = keyring.verify(header)?;
    if !record.batch_known {
        return Ok((header, None));
    }
    if record.batch.len() > limits.max_batch_size {
        return Err(DecodeError::TooLarge {
            size: record.batch.len(),
            limit: limits.max_batch_size,
        }
        .into());
    }
    let requests = record
        .batch
        .into_iter()
        .map(Signed::<Request>::from_envelope)
        .collect::<Result<Vec<_>, _>>()?;
    // The replica took this batch once: a request its own MAC did not pass may have come in a certified batch.
    let batch = keyring.verify_certified_requests(requests)?;
    Ok((header, Some(Batch::from(batch))))
}
