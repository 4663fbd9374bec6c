//! Vote counting: one vote per replica id, whatever the network duplicates or a faulty replica repeats.

use std::collections::BTreeMap;

use pbft_crypto::Verified;
use pbft_types::{Checkpoint, Commit, Digest, Prepare, ReplicaId};

/// A statement some replica makes about a digest: PREPARE, COMMIT or CHECKPOINT.
pub trait Vote {
    fn voter(&self) -> ReplicaId;
    fn digest(&self) -> Digest;
}

impl Vote for Prepare {
    fn voter(&self) -> ReplicaId {
        self.replica
    }
    fn digest(&self) -> Digest {
        self.digest
    }
}

impl Vote for Commit {
    fn voter(&self) -> ReplicaId {
        self.replica
    }
    fn digest(&self) -> Digest {
        self.digest
    }
}

impl Vote for Checkpoint {
    fn voter(&self) -> ReplicaId {
        self.replica
    }
    fn digest(&self) -> Digest {
        self.digest
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The replica's first vote here: counted.
    New,
    /// The same vote again (a retransmission or a duplicated packet): ignored.
    Duplicate,
    /// The replica already voted for another digest: ignored, the first vote stands.
    Conflicting,
}

/// The votes for one slot (one view and sequence number, or one checkpoint), at most one per replica.
#[derive(Clone, Debug)]
pub struct VoteSet<T> {
    votes: BTreeMap<ReplicaId, Verified<T>>,
}

impl<T> Default for VoteSet<T> {
    fn default() -> Self {
        VoteSet {
            votes: BTreeMap::new(),
        }
    }
}

impl<T: Vote> VoteSet<T> {
    pub fn insert(&mut self, vote: Verified<T>) -> Insert {
        match self.votes.get(&vote.voter()) {
            Some(existing) if existing.digest() == vote.digest() => Insert::Duplicate,
            Some(_) => Insert::Conflicting,
            None => {
                self.votes.insert(vote.voter(), vote);
                Insert::New
            }
        }
    }

    /// How many distinct replicas voted for `digest`.
    pub fn count(&self, digest: &Digest) -> usize {
        self.matching(digest).count()
    }

    pub fn matching<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> impl Iterator<Item = &'a Verified<T>> + 'a {
        self.votes.values().filter(move |v| v.digest() == *digest)
    }

    pub fn get(&self, voter: ReplicaId) -> Option<&Verified<T>> {
        self.votes.get(&voter)
    }

    pub fn remove(&mut self, voter: ReplicaId) {
        self.votes.remove(&voter);
    }

    pub fn is_empty(&self) -> bool {
        self.votes.is_empty()
    }

    /// The digest that at least `threshold` distinct replicas voted for, if any.
    pub fn agreed(&self, threshold: usize) -> Option<Digest> {
        let mut tally: BTreeMap<Digest, usize> = BTreeMap::new();
        for vote in self.votes.values() {
            let count = tally.entry(vote.digest()).or_default();
            *count += 1;
            if *count >= threshold {
                return Some(vote.digest());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::{KeyPair, Signer};
    use pbft_types::{Principal, SeqNo, View};

    fn prepare(replica: u64, digest: u8) -> Verified<Prepare> {
        let signer = Signer::new(
            Principal::Replica(ReplicaId(replica)),
            KeyPair::from_seed([replica as u8; 32]),
        );
        signer.sign(Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([digest; 32]),
            replica: ReplicaId(replica),
        })
    }

    #[test]
    fn a_replica_counts_once() {
        let mut votes = VoteSet::default();
        assert_eq!(votes.insert(prepare(1, 7)), Insert::New);
        assert_eq!(votes.insert(prepare(1, 7)), Insert::Duplicate);
        assert_eq!(votes.count(&Digest([7; 32])), 1);
        assert_eq!(votes.insert(prepare(2, 7)), Insert::New);
        assert_eq!(votes.count(&Digest([7; 32])), 2);
    }

    #[test]
    fn agreement_needs_the_threshold_on_one_digest() {
        let mut votes = VoteSet::default();
        votes.insert(prepare(0, 1));
        votes.insert(prepare(1, 2));
        votes.insert(prepare(2, 1));
        assert_eq!(votes.agreed(3), None);
        assert_eq!(votes.agreed(2), Some(Digest([1; 32])));
        votes.insert(prepare(3, 1));
        assert_eq!(votes.agreed(3), Some(Digest([1; 32])));
        votes.remove(ReplicaId(3));
        assert_eq!(votes.agreed(3), None);
    }

    #[test]
    fn a_second_digest_from_one_replica_is_not_counted() {
        let mut votes = VoteSet::default();
        votes.insert(prepare(1, 7));
        assert_eq!(votes.insert(prepare(1, 8)), Insert::Conflicting);
        assert_eq!(votes.count(&Digest([8; 32])), 0);
        assert_eq!(votes.count(&Digest([7; 32])), 1);
    }
}
