//! What the replica takes in and what it asks its driver to do. The driver (the simulator or the node) owns all
//! IO: it feeds `Input`s to `Replica::step` and carries out the `Output`s in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pbft_crypto::{Verified, VerifiedMsg};
use pbft_types::{
    Commit, Digest, PrePrepare, Prepare, Principal, ReplicaId, ReplicaMsg, Reply, Request, SeqNo,
    Timestamp, View,
};

use crate::view_change::{InvalidNewView, InvalidViewChange};

/// The requests of one batch, in the order they execute. Shared, because the same batch sits in the log, goes
/// out in PRE-PREPAREs and is handed to the driver when it commits.
pub type Batch = Arc<[Verified<Request>]>;

#[derive(Clone, Debug)]
pub enum Input {
    /// An authenticated message from replica `from` (the transport authenticated the connection, the keyring the
    /// signatures).
    Message { from: ReplicaId, msg: VerifiedMsg },
    /// An authenticated request straight from its client.
    Request(Verified<Request>),
    /// A timer the replica set has expired.
    TimerFired(Timer),
}

/// The replica's timers. Each is either set or not; setting one that is set restarts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The primary proposes a partial batch when this fires.
    Batch,
    /// A replica with unfinished work tells its peers what it has when this fires.
    Status,
    /// A replica behind a certified checkpoint starts, or retries, fetching its state when this fires.
    StateTransfer,
    /// The replica moves to the next view when this fires: a request it holds did not execute in time (the
    /// request timer), or the NEW-VIEW it waits for did not come.
    ViewChange,
    /// A backup forwards to the primary the client requests it has not seen in a PRE-PREPARE when this fires.
    Relay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every replica but the sender.
    AllReplicas,
    Replica(ReplicaId),
}

/// A batch that committed and executed, with the proof that it committed: q COMMITs from distinct replicas for
/// (view, seq, digest). Drivers record it; checkers verify it; the ledger turns it into a block's certificate.
#[derive(Clone, Debug)]
pub struct Committed {
    pub seq: SeqNo,
    pub view: View,
    pub digest: Digest,
    pub batch: Batch,
    /// One entry per request of the batch, in order: its result, or `None` when it was not executed because its
    /// client had already had a request with that timestamp or a later one executed.
    pub results: Vec<Option<Bytes>>,
    pub certificate: Vec<Verified<Commit>>,
    /// The prepared certificate it committed on: q - 1 PREPAREs from distinct backups for (view, seq, digest).
    pub prepared: Vec<Verified<Prepare>>,
    /// What the application returned at the end of the batch (`StateMachine::end_batch`): the ledger's block.
    pub record: Option<Bytes>,
}

#[derive(Clone, Debug)]
pub enum Output {
    /// Send a message. It is signed already; the driver encodes and transmits it.
    Send {
        to: Dest,
        msg: ReplicaMsg,
    },
    /// Send this reply to its client; the driver authenticates it (it is not part of any certificate).
    Reply(Reply),
    /// Start (or restart) a timer.
    SetTimer {
        timer: Timer,
        after: Duration,
    },
    CancelTimer(Timer),
    /// Batch `seq` committed and executed.
    Committed(Committed),
    /// Remember this across a crash (see `journal`). When the step waits for the journal (see
    /// `Output::waits_for_journal`), every `Persist` of it, and every one before it, must be durable before any
    /// `Send` or `Reply` of the step is carried out.
    Persist(crate::journal::JournalEntry),
    /// The replica installed the certified state of checkpoint `seq` fetched from a peer, skipping the
    /// execution of every batch up to it.
    StateInstalled {
        seq: SeqNo,
        digest: Digest,
    },
    /// The replica entered `view` (it accepted or sent the NEW-VIEW).
    EnteredView(View),
    /// Two PRE-PREPAREs signed by one primary for the same view and sequence with different digests: proof that
    /// the primary is faulty. The replica moved to the next view; the driver records the pair.
    Evidence {
        first: Verified<PrePrepare>,
        second: Verified<PrePrepare>,
    },
    /// An input was refused; nothing changed.
    Rejected(Rejection),
}

impl Output {
    /// Whether the step this output belongs to waits for the journal: its messages and replies leave only once
    /// its `Persist` entries, and all entries before them, are durable. So does a step with an entry that gates
    /// outputs (`JournalEntry::gates_outputs`, every kind but `Executed`), and a step that sends a CHECKPOINT: that
    /// message vouches for the state after the batches executed, so their `Executed` records must be on the disk
    /// first. Otherwise a crash of the whole cluster could leave a replica behind its own vote, in a checkpoint
    /// its peers certified and collected the log below, and it would have to wait for a view change to catch up.
    /// That costs one sync per checkpoint interval, not per batch.
    pub fn waits_for_journal(&self) -> bool {
        match self {
            Output::Persist(entry) => entry.gates_outputs(),
            Output::Send {
                msg: ReplicaMsg::Checkpoint(_),
                ..
            } => true,
            _ => false,
        }
    }
}

/// Why the replica refused an input. Reported as an output so that drivers can count rejections by reason and
/// tests can assert them; the replica's state is unchanged by a rejected input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub from: Principal,
    pub kind: &'static str,
    pub reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The message is for another view than the replica's.
    WrongView {
        got: View,
        current: View,
    },
    /// A PRE-PREPARE from a replica that is not the primary of its view.
    NotFromPrimary {
        primary: ReplicaId,
    },
    /// A PREPARE from the primary, which sends none (its PRE-PREPARE stands for its vote).
    PrepareFromPrimary,
    /// The sequence number is at or below the last stable checkpoint: a late message, harmless.
    Obsolete {
        seq: SeqNo,
        low: SeqNo,
    },
    /// The sequence number lies above the high watermark H.
    OutsideWatermarks {
        seq: SeqNo,
        low: SeqNo,
        high: SeqNo,
    },
    /// A PRE-PREPARE for a (view, sequence) that already has one with a different digest.
    ConflictingDigest {
        accepted: Digest,
        got: Digest,
    },
    /// The PRE-PREPARE's digest is not the digest of its batch.
    BatchDigestMismatch,
    BatchTooLarge {
        size: usize,
        limit: usize,
    },
    RequestTooLarge {
        size: usize,
        limit: usize,
    },
    /// The same message from the same sender again.
    Duplicate,
    /// A second vote from one replica for the same slot, with another digest.
    ConflictingVote,
    /// A CHECKPOINT at a sequence number that is not a multiple of the checkpoint interval.
    NotACheckpoint,
    /// A request older than the last one its client had executed (its timestamp), which will never execute.
    StaleRequest {
        timestamp: Timestamp,
    },
    /// A forwarded request reached a replica that is not the primary.
    NotPrimary,
    /// A STATE-CHUNK that is not the next one expected from the current source, or a FETCH-STATE for a
    /// checkpoint this replica does not hold.
    UnexpectedStateTransfer,
    /// The sender id is not a replica of the cluster, or is this replica itself.
    UnknownSender,
    /// A PRE-PREPARE, PREPARE or COMMIT while the replica waits for a NEW-VIEW.
    ChangingView,
    InvalidViewChange(InvalidViewChange),
    InvalidNewView(InvalidNewView),
    /// A FETCH-BATCH for a batch this replica does not hold, or a BATCH-DATA nobody asked for or that does not
    /// match the digest it claims.
    UnexpectedBatch,
}

impl RejectReason {
    /// A short, stable name for the kind of refusal, for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            RejectReason::WrongView { .. } => "wrong_view",
            RejectReason::NotFromPrimary { .. } => "not_from_primary",
            RejectReason::PrepareFromPrimary => "prepare_from_primary",
            RejectReason::Obsolete { .. } => "obsolete",
            RejectReason::OutsideWatermarks { .. } => "outside_watermarks",
            RejectReason::ConflictingDigest { .. } => "conflicting_digest",
            RejectReason::BatchDigestMismatch => "batch_digest_mismatch",
            RejectReason::BatchTooLarge { .. } => "batch_too_large",
            RejectReason::RequestTooLarge { .. } => "request_too_large",
            RejectReason::Duplicate => "duplicate",
            RejectReason::ConflictingVote => "conflicting_vote",
            RejectReason::NotACheckpoint => "not_a_checkpoint",
            RejectReason::StaleRequest { .. } => "stale_request",
            RejectReason::NotPrimary => "not_primary",
            RejectReason::UnexpectedStateTransfer => "unexpected_state_transfer",
            RejectReason::UnknownSender => "unknown_sender",
            RejectReason::ChangingView => "changing_view",
            RejectReason::InvalidViewChange(_) => "invalid_view_change",
            RejectReason::InvalidNewView(_) => "invalid_new_view",
            RejectReason::UnexpectedBatch => "unexpected_batch",
        }
    }
}
