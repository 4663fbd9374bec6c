//! Checkpoints (PROTOCOL.md, "Checkpoints, garbage collection, watermarks"): taking them every K sequence
//! numbers, counting the others' votes, and moving the watermarks when one becomes stable.

use bytes::Bytes;
use pbft_crypto::Verified;
use pbft_types::{Checkpoint, Digest, Principal, ReplicaId, ReplicaMsg, SeqNo};

use super::Replica;
use crate::checkpoint::{Taken, checkpoint_digest};
use crate::io::{Dest, RejectReason};
use crate::journal::JournalEntry;
use crate::quorum::Insert;
use crate::state_transfer::encode_snapshot;

impl Replica {
    /// Every K sequence numbers: record the state's digest and a snapshot, and tell the others.
    pub(super) fn take_checkpoint(&mut self, seq: SeqNo) {
        let digest = checkpoint_digest(seq, self.app.digest(), self.clients.digest());
        let snapshot = encode_snapshot(self.app.snapshot(), &self.clients);
        self.record_checkpoint(seq, digest, snapshot);
    }

    pub(super) fn record_checkpoint(&mut self, seq: SeqNo, digest: Digest, snapshot: Bytes) {
        let message = self.signer.sign(Checkpoint {
            seq,
            digest,
            replica: self.id,
        });
        self.send(
            Dest::AllReplicas,
            ReplicaMsg::Checkpoint(message.signed().clone()),
        );
        self.checkpoints.record_own(Taken {
            digest,
            snapshot,
            message,
        });
        self.try_stabilize();
    }

    pub(super) fn on_checkpoint(&mut self, from: ReplicaId, checkpoint: Verified<Checkpoint>) {
        let from = Principal::Replica(from);
        let seq = checkpoint.seq;
        if seq <= self.log.low() {
            return self.reject(from, "CHECKPOINT", self.outside(seq));
        }
        let interval = self.config.params.checkpoint_interval;
        if !seq.0.is_multiple_of(interval) {
            return self.reject(from, "CHECKPOINT", RejectReason::NotACheckpoint);
        }
        // Votes above the window are how a replica learns it is behind; a few per replica are enough.
        let cap = (self.config.params.window / interval) as usize + 1;
        match self.checkpoints.add_vote(checkpoint, self.log.high(), cap) {
            Insert::New => {
                self.try_stabilize();
                self.schedule_transfer();
            }
            Insert::Duplicate => self.reject(from, "CHECKPOINT", RejectReason::Duplicate),
            Insert::Conflicting => self.reject(from, "CHECKPOINT", RejectReason::ConflictingVote),
        }
    }

    /// A checkpoint confirmed by q replicas becomes stable: the log below it is discarded and the watermarks move.
    pub(super) fn try_stabilize(&mut self) {
        if let Some(seq) = self.checkpoints.newly_stable(self.quorum()) {
            self.checkpoints.make_stable(seq);
            self.persist_stable();
            self.discard_below(seq);
            self.propose(false);
        }
    }

    /// Journals the stable checkpoint with the snapshot this replica holds for it.
    pub(super) fn persist_stable(&mut self) {
        let stable = self.checkpoints.stable().clone();
        if let Some(taken) = self.checkpoints.taken(stable.seq) {
            let snapshot = taken.snapshot.clone();
            self.persist(JournalEntry::Stable {
                seq: stable.seq,
                digest: stable.digest,
                proof: stable.proof,
                snapshot,
            });
        }
    }

    /// Garbage collection: everything at or below the stable checkpoint `seq` is settled.
    pub(super) fn discard_below(&mut self, seq: SeqNo) {
        self.log.advance(seq);
        self.batches.truncate(seq);
        self.prepared = self.prepared.split_off(&seq.next());
    }
}
