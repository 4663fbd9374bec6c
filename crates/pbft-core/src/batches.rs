//! The batches a replica has seen proposed for each sequence number above its stable checkpoint, in any view.
//!
//! A NEW-VIEW names the batches of O by digest only. A replica looks them up here, and answers peers' FETCH-BATCH
//! from here, so a batch outlives the view that proposed it. A batch is found by (sequence, digest) and trusted
//! because its digest matches, whoever held it.

use std::collections::BTreeMap;

use pbft_crypto::{Verified, batch_digest};
use pbft_types::{Digest, SeqNo};

use crate::io::Batch;

/// Distinct batches kept per sequence number. A correct replica accepts one per view; keeping the latest few
/// covers the views a NEW-VIEW can draw a certificate from, and bounds what a run of faulty primaries can add.
const PER_SEQUENCE: usize = 4;

#[derive(Debug, Default)]
pub struct Batches {
    by_seq: BTreeMap<SeqNo, Vec<(Digest, Batch)>>,
}

impl Batches {
    pub fn insert(&mut self, seq: SeqNo, digest: Digest, batch: Batch) {
        let known = self.by_seq.entry(seq).or_default();
        if known.iter().any(|(d, _)| *d == digest) {
            return;
        }
        if known.len() == PER_SEQUENCE {
            known.remove(0);
        }
        known.push((digest, batch));
    }

    pub fn get(&self, seq: SeqNo, digest: &Digest) -> Option<Batch> {
        self.by_seq
            .get(&seq)?
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b.clone())
    }

    /// Forgets every batch at or below the stable checkpoint `seq`.
    pub fn truncate(&mut self, seq: SeqNo) {
        self.by_seq = self.by_seq.split_off(&seq.next());
    }
}

/// The digest of the null batch, which a NEW-VIEW assigns to sequence numbers no certificate prepared.
pub fn null_digest() -> Digest {
    batch_digest(std::iter::empty::<&pbft_types::Signed<pbft_types::Request>>())
}

/// Whether `batch` is the batch `digest` names.
pub fn matches(batch: &[Verified<pbft_types::Request>], digest: &Digest) -> bool {
    batch_digest(batch.iter().map(Verified::signed)) == *digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_few_batches_per_sequence_and_forgets_below_the_checkpoint() {
        let mut batches = Batches::default();
        let empty: Batch = Vec::new().into();
        for d in 0..6u8 {
            batches.insert(SeqNo(3), Digest([d; 32]), empty.clone());
        }
        assert!(batches.get(SeqNo(3), &Digest([0; 32])).is_none());
        assert!(batches.get(SeqNo(3), &Digest([5; 32])).is_some());
        batches.insert(SeqNo(4), Digest([1; 32]), empty);
        batches.truncate(SeqNo(3));
        assert!(batches.get(SeqNo(3), &Digest([5; 32])).is_none());
        assert!(batches.get(SeqNo(4), &Digest([1; 32])).is_some());
    }
}
