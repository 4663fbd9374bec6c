//! Coming back after a crash: the replica is rebuilt from its journal (see `crate::journal`), then asks its peers
//! for what it missed.

use pbft_crypto::{Verified, VerifiedPrepared};
use pbft_types::{Commit, SeqNo, View};
use thiserror::Error;

use super::Replica;
use crate::io::{Batch, Dest, Output};
use crate::journal::JournalEntry;
use crate::view_change::compute_plan;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("the journal's stable checkpoint at {seq} does not restore to its certified digest")]
    BadSnapshot { seq: SeqNo },
    #[error(
        "the journal is missing executed batches: it executed up to {last} and then holds batch {next}"
    )]
    Gap { last: SeqNo, next: SeqNo },
    #[error("the journal holds no requests for the batch it executed at {seq}")]
    MissingBatch { seq: SeqNo },
}

impl Replica {
    /// Rebuilds the replica from the entries its driver kept, in the order they were written (entries a later
    /// stable checkpoint made obsolete may be among them; they are skipped). Returns the replica and what to do
    /// at once: re-send its VIEW-CHANGE if it was waiting for a NEW-VIEW, and a STATUS, so that its peers send
    /// it what it missed while it was down.
    ///
    /// `self` must be a replica freshly made by `Replica::new` with the same configuration, id, key and an
    /// application at its initial state.
    pub fn recover(
        mut self,
        journal: Vec<JournalEntry>,
    ) -> Result<(Replica, Vec<Output>), RecoveryError> {
        let stable = journal
            .iter()
            .filter_map(|e| match e {
                JournalEntry::Stable { seq, .. } => Some(*seq),
                _ => None,
            })
            .max();
        let view = journal.iter().rev().find_map(|e| match e {
            JournalEntry::View { view, changing } => Some((*view, *changing)),
            _ => None,
        });
        let new_view = journal.iter().rev().find_map(|e| match e {
            JournalEntry::NewView(nv) => Some(nv.clone()),
            _ => None,
        });
        if let Some(seq) = stable {
            self.recover_stable(&journal, seq)?;
        }
        let (view, changing) = view.unwrap_or((View(0), false));
        self.view = view;
        // The NEW-VIEW of the view it is in, so that as its primary it can resend it to a peer that missed it.
        self.new_view = new_view.filter(|nv| nv.view == view && !changing);
        for entry in journal {
            match entry {
                JournalEntry::Accepted { header, batch } => self.recover_accepted(header, batch),
                JournalEntry::Prepared(cert) => self.recover_prepared(cert),
                JournalEntry::Executed { header } => self.recover_executed(header)?,
                JournalEntry::View { .. }
                | JournalEntry::Stable { .. }
                | JournalEntry::NewView(_) => {}
            }
        }
        self.readopt_new_view_checkpoint();
        // Slots of the current view that prepared before the crash: this replica sent its COMMIT for them.
        let seqs: Vec<SeqNo> = self.log.above(self.log.low()).map(|(s, _)| *s).collect();
        for seq in seqs {
            self.advance(seq);
        }
        // What replaying produced was done before the crash: none of it is to be done again.
        self.out.clear();
        // A checkpoint adopted from the NEW-VIEW whose state it has not installed yet: fetch it (again).
        self.transfer_timer_set = false;
        self.schedule_transfer();
        if changing {
            // It had asked for `view` and waits for the NEW-VIEW: ask again (the same view, never an older one).
            self.changing = false;
            self.start_view_change(view);
        }
        self.ask_peers();
        self.send_status_to(Dest::AllReplicas);
        self.refresh_request_timer();
        self.arm_status_timer();
        let out = std::mem::take(&mut self.out);
        Ok((self, out))
    }

    /// The stable checkpoint that the NEW-VIEW of the current view carried, adopted again if it is above the
    /// state the journal restored. Entering the view adopted it, but the journal keeps a stable checkpoint only
    /// with its state, and this replica may have crashed before it fetched that state. Without it, the prepared
    /// certificates it formed above that checkpoint would lie outside its watermarks, and every VIEW-CHANGE it
    /// sends would be refused.
    fn readopt_new_view_checkpoint(&mut self) {
        let Some(nv) = &self.new_view else {
            return;
        };
        // It was checked when it came, and its signatures again when read from the journal: only its plan is
        // needed, min-s and its proof.
        let plan = compute_plan(&nv.view_change_messages(), self.null_digest);
        if let Some(digest) = plan.stable_digest
            && plan.stable_seq > self.checkpoints.stable().seq
            && self
                .checkpoints
                .adopt_stable(plan.stable_seq, digest, plan.stable_proof)
        {
            self.discard_below(plan.stable_seq);
        }
    }

    fn recover_stable(&mut self, journal: &[JournalEntry], at: SeqNo) -> Result<(), RecoveryError> {
        let Some((digest, proof, snapshot)) = journal.iter().find_map(|e| match e {
            JournalEntry::Stable {
                seq,
                digest,
                proof,
                snapshot,
            } if *seq == at => Some((*digest, proof.clone(), snapshot.clone())),
            _ => None,
        }) else {
            return Ok(());
        };
        let clients = self
            .restore_checked(at, digest, &snapshot)
            .ok_or(RecoveryError::BadSnapshot { seq: at })?;
        self.clients = clients;
        self.last_executed = at;
        if self.checkpoints.adopt_stable(at, digest, proof) {
            self.discard_below(at);
        }
        // Its own CHECKPOINT for it, so that it can serve the snapshot to a peer that is behind.
        self.record_checkpoint(at, digest, snapshot);
        Ok(())
    }

    /// A PRE-PREPARE of the current view that the replica accepted or sent goes back into its slot, with the
    /// replica's PREPARE (a backup sent one) and, for the primary, the sequence number counted as assigned.
    fn recover_accepted(&mut self, header: Verified<pbft_types::PrePrepare>, batch: Option<Batch>) {
        let (view, seq, digest) = (header.view, header.seq, header.digest);
        if !self.log.in_window(seq) {
            return;
        }
        // A batch of any view is kept: a NEW-VIEW names the batches it carries over by digest only, and after a
        // crash of the whole cluster the replicas' disks are the only place they are.
        if let Some(batch) = &batch {
            self.batches.insert(seq, digest, batch.clone());
        }
        if view != self.view {
            return;
        }
        if let Some(batch) = &batch {
            self.account_for(batch);
        }
        let prepare = self.backup_prepare(view, seq, digest);
        if self.is_primary() {
            self.last_assigned = self.last_assigned.max(seq);
        }
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        if slot
            .pre_prepare
            .as_ref()
            .is_some_and(|h| h.digest != digest)
        {
            return;
        }
        slot.pre_prepare = Some(header);
        if batch.is_some() {
            slot.batch = batch;
        }
        if let Some(prepare) = prepare {
            slot.prepares.insert(prepare);
        }
    }

    /// A prepared certificate goes back among those its VIEW-CHANGEs carry and, if it is of the current view,
    /// its PREPAREs into the slot (where `advance` finds the slot prepared, as it was before the crash).
    fn recover_prepared(&mut self, cert: VerifiedPrepared) {
        let (view, seq, digest) = (
            cert.pre_prepare.view,
            cert.pre_prepare.seq,
            cert.pre_prepare.digest,
        );
        if seq <= self.log.low() {
            return;
        }
        if view == self.view
            && let Some(slot) = self.log.slot_mut(seq)
            && slot.digest() == Some(digest)
        {
            for prepare in &cert.prepares {
                slot.prepares.insert(prepare.clone());
            }
        }
        if self
            .prepared
            .get(&seq)
            .is_none_or(|c| c.pre_prepare.view <= view)
        {
            self.prepared.insert(seq, cert);
        }
    }

    /// Executes a batch again, in order, on top of the recovered checkpoint. Its requests come from the `Accepted`
    /// entry written before it (replayed into `batches`).
    fn recover_executed(
        &mut self,
        header: Verified<pbft_types::PrePrepare>,
    ) -> Result<(), RecoveryError> {
        let seq = header.seq;
        if seq <= self.last_executed {
            return Ok(());
        }
        if seq != self.last_executed.next() {
            return Err(RecoveryError::Gap {
                last: self.last_executed,
                next: seq,
            });
        }
        let batch = if header.digest == self.null_digest {
            Batch::from(Vec::new())
        } else {
            self.batches
                .get(seq, &header.digest)
                .ok_or(RecoveryError::MissingBatch { seq })?
        };
        // The block the application makes again was kept by the driver with the batch before the crash.
        let _ = self.execute_batch(seq, header.digest, &batch);
        self.last_executed = seq;
        if seq.0.is_multiple_of(self.config.params.checkpoint_interval) {
            self.take_checkpoint(seq);
        }
        // In the current view, the slot gets back this replica's COMMIT (it sent one before executing): peers
        // that restarted behind it may need it resent to commit the same batch.
        let commit = Commit {
            view: header.view,
            seq,
            digest: header.digest,
            replica: self.id,
        };
        let commit = Self::own_commit(&self.signer, self.config.params.replica_auth, commit);
        if let Some(slot) = self.log.slot_mut(seq)
            && slot.digest() == Some(header.digest)
        {
            slot.commits.insert(commit);
            slot.committed = true;
            slot.prepared = true;
        }
        Ok(())
    }
}
