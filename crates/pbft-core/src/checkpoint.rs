//! Checkpoints: this replica's own every K sequence numbers, the votes of the others, and the last stable one.

use std::collections::BTreeMap;

use bytes::Bytes;
use pbft_crypto::Verified;
use pbft_types::{Checkpoint, Digest, SeqNo};

use crate::quorum::{Insert, VoteSet};

/// A checkpoint this replica took after executing its sequence number.
#[derive(Clone, Debug)]
pub struct Taken {
    pub digest: Digest,
    /// The encoded state snapshot, served to replicas that fetch this checkpoint.
    pub snapshot: Bytes,
    /// The CHECKPOINT this replica signed for it, kept to resend to peers that missed it.
    pub message: Verified<Checkpoint>,
}

/// The last stable checkpoint and its proof: q matching CHECKPOINTs from distinct replicas.
#[derive(Clone, Debug)]
pub struct Stable {
    pub seq: SeqNo,
    pub digest: Digest,
    pub proof: Vec<Verified<Checkpoint>>,
}

#[derive(Debug)]
pub struct Checkpoints {
    stable: Stable,
    /// Checkpoints taken at or above the stable one (the stable one included, once there is one).
    taken: BTreeMap<SeqNo, Taken>,
    /// Votes for checkpoints above the stable one: all of those within the window, and a few per replica above
    /// it (evidence that this replica is behind, bounded so that a faulty replica cannot fill memory).
    votes: BTreeMap<SeqNo, VoteSet<Checkpoint>>,
}

impl Checkpoints {
    /// Starts from the initial state, which every replica shares: sequence 0 is stable by definition.
    pub fn new(initial: Digest) -> Checkpoints {
        Checkpoints {
            stable: Stable {
                seq: SeqNo(0),
                digest: initial,
                proof: Vec::new(),
            },
            taken: BTreeMap::new(),
            votes: BTreeMap::new(),
        }
    }

    pub fn stable(&self) -> &Stable {
        &self.stable
    }

    /// Records a checkpoint this replica took (or installed), and its own vote for it unless it is stable
    /// already (an installed one is stable on its certificate, and a vote for it would never be settled).
    pub fn record_own(&mut self, taken: Taken) {
        let message = taken.message.clone();
        self.taken.insert(message.seq, taken);
        if message.seq > self.stable.seq {
            self.votes.entry(message.seq).or_default().insert(message);
        }
    }

    /// Records another replica's vote for a checkpoint above the stable one. Above the high watermark `high`
    /// each replica keeps at most `cap` votes, its highest.
    pub fn add_vote(&mut self, vote: Verified<Checkpoint>, high: SeqNo, cap: usize) -> Insert {
        let (seq, voter) = (vote.seq, vote.replica);
        let outcome = self.votes.entry(seq).or_default().insert(vote);
        if outcome == Insert::New && seq > high {
            let above: Vec<SeqNo> = self
                .votes
                .range(high.next()..)
                .filter(|(_, v)| v.get(voter).is_some())
                .map(|(s, _)| *s)
                .collect();
            for s in above.iter().take(above.len().saturating_sub(cap)) {
                if let Some(v) = self.votes.get_mut(s) {
                    v.remove(voter);
                    if v.is_empty() {
                        self.votes.remove(s);
                    }
                }
            }
        }
        outcome
    }

    /// The highest checkpoint above `seq` that `quorum` replicas certify with one digest, with their votes. The
    /// stable checkpoint counts too: a replica can hold its certificate (from a NEW-VIEW) without its state.
    pub fn certified_above(&self, seq: SeqNo, quorum: usize) -> Option<Stable> {
        let voted = self.votes.range(seq.next()..).rev().find_map(|(s, votes)| {
            let digest = votes.agreed(quorum)?;
            Some(Stable {
                seq: *s,
                digest,
                proof: votes.matching(&digest).cloned().collect(),
            })
        });
        let stable = &self.stable;
        voted.or_else(|| (stable.seq > seq && !stable.proof.is_empty()).then(|| stable.clone()))
    }

    /// Makes `seq` stable on the strength of its certificate alone (from a NEW-VIEW or a state transfer), whether
    /// or not this replica took that checkpoint itself. Returns false if it is not above the stable one.
    pub fn adopt_stable(
        &mut self,
        seq: SeqNo,
        digest: Digest,
        proof: Vec<Verified<Checkpoint>>,
    ) -> bool {
        if seq <= self.stable.seq {
            return false;
        }
        self.stable = Stable { seq, digest, proof };
        self.taken = self.taken.split_off(&seq);
        self.taken.retain(|s, t| *s != seq || t.digest == digest);
        self.votes = self.votes.split_off(&seq.next());
        true
    }

    /// The highest checkpoint above the stable one that this replica took and that `quorum` replicas confirm
    /// with the same digest.
    pub fn newly_stable(&self, quorum: usize) -> Option<SeqNo> {
        self.taken
            .range(self.stable.seq.next()..)
            .rev()
            .find(|(seq, t)| {
                self.votes
                    .get(seq)
                    .is_some_and(|v| v.count(&t.digest) >= quorum)
            })
            .map(|(seq, _)| *seq)
    }

    /// Makes the taken checkpoint at `seq` stable and forgets everything older.
    pub fn make_stable(&mut self, seq: SeqNo) {
        let Some(taken) = self.taken.get(&seq) else {
            return;
        };
        let digest = taken.digest;
        let proof = self
            .votes
            .get(&seq)
            .map(|v| v.matching(&digest).cloned().collect())
            .unwrap_or_default();
        self.stable = Stable { seq, digest, proof };
        self.taken = self.taken.split_off(&seq);
        self.votes = self.votes.split_off(&seq.next());
    }

    /// This replica's own CHECKPOINT messages above `seq`, the stable one included.
    pub fn taken(&self, seq: SeqNo) -> Option<&Taken> {
        self.taken.get(&seq)
    }

    pub fn own_messages_above(&self, seq: SeqNo) -> impl Iterator<Item = &Verified<Checkpoint>> {
        self.taken.range(seq.next()..).map(|(_, t)| &t.message)
    }

    /// Whether some checkpoint has votes that are not yet stable: work that STATUS messages help finish.
    pub fn unstable_pending(&self) -> bool {
        !self.votes.is_empty()
    }
}

/// The digest a CHECKPOINT certifies: the sequence number, the application's digest and the client table's.
pub fn checkpoint_digest(seq: SeqNo, app: Digest, clients: Digest) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"pbft/checkpoint/v1");
    h.update(seq.0.to_le_bytes());
    h.update(app.as_bytes());
    h.update(clients.as_bytes());
    Digest(h.finalize().into())
}
