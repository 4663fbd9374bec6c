//! The message log: one slot per sequence number within the watermarks (h, h + L].

use std::collections::BTreeMap;

use pbft_crypto::{Unvouched, Verified};
use pbft_types::{Commit, Digest, PrePrepare, Prepare, SeqNo};

use crate::io::Batch;
use crate::quorum::VoteSet;

/// Everything a replica knows about one sequence number in the current view.
#[derive(Debug, Default)]
pub struct Slot {
    /// The accepted PRE-PREPARE (for the primary: the one it proposed; after a view change: the one of O).
    pub pre_prepare: Option<Verified<PrePrepare>>,
    /// Its requests. Known with the PRE-PREPARE in the normal case; fetched by digest when a NEW-VIEW named
    /// a batch this replica had not seen.
    pub batch: Option<Batch>,
    /// PREPAREs from backups, this replica's own included once it sent one.
    pub prepares: VoteSet<Prepare>,
    /// COMMITs, this replica's own included once it sent one.
    pub commits: VoteSet<Commit>,
    /// prepared(v, n, d) holds.
    pub prepared: bool,
    /// committed-local(v, n, d) holds.
    pub committed: bool,
    /// The primary's PRE-PREPARE while this replica could not check its own MAC of some request in it: accepted
    /// (moved to `pre_prepare` and `batch`) once f backups' PREPAREs vouch for it. Only while `pre_prepare` is
    /// empty, so a slot never holds more than one batch.
    pub unvouched: Option<Unvouched>,
}

impl Slot {
    pub fn digest(&self) -> Option<Digest> {
        self.pre_prepare.as_ref().map(|p| p.digest)
    }
}

#[derive(Debug)]
pub struct Log {
    low: SeqNo,
    window: u64,
    slots: BTreeMap<SeqNo, Slot>,
}

impl Log {
    pub fn new(window: u64) -> Log {
        Log {
            low: SeqNo(0),
            window,
            slots: BTreeMap::new(),
        }
    }

    /// h, the low watermark.
    pub fn low(&self) -> SeqNo {
        self.low
    }

    /// H = h + L, the high watermark.
    pub fn high(&self) -> SeqNo {
        SeqNo(self.low.0.saturating_add(self.window))
    }

    /// h < n <= H: only these sequence numbers are stored, which bounds the log by the window.
    pub fn in_window(&self, seq: SeqNo) -> bool {
        self.low < seq && seq <= self.high()
    }

    pub fn get(&self, seq: SeqNo) -> Option<&Slot> {
        self.slots.get(&seq)
    }

    /// The slot for `seq`, created if needed; `None` outside the watermarks.
    pub fn slot_mut(&mut self, seq: SeqNo) -> Option<&mut Slot> {
        if !self.in_window(seq) {
            return None;
        }
        Some(self.slots.entry(seq).or_default())
    }

    /// Discards every slot at or below the new low watermark `seq` and moves the window.
    pub fn advance(&mut self, seq: SeqNo) {
        if seq <= self.low {
            return;
        }
        self.low = seq;
        self.slots = self.slots.split_off(&seq.next());
    }

    /// Forgets every slot: a new view starts with only the PRE-PREPAREs of its NEW-VIEW.
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn range(&self) -> Option<(SeqNo, SeqNo)> {
        Some((*self.slots.keys().next()?, *self.slots.keys().next_back()?))
    }

    /// Slots above `seq`, in order.
    pub fn above(&self, seq: SeqNo) -> impl Iterator<Item = (&SeqNo, &Slot)> {
        self.slots.range(seq.next()..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_window_is_stored() {
        let mut log = Log::new(4);
        assert!(log.slot_mut(SeqNo(0)).is_none());
        assert!(log.slot_mut(SeqNo(1)).is_some());
        assert!(log.slot_mut(SeqNo(4)).is_some());
        assert!(log.slot_mut(SeqNo(5)).is_none());
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn advancing_discards_old_slots_and_moves_the_window() {
        let mut log = Log::new(4);
        for n in 1..=4 {
            log.slot_mut(SeqNo(n));
        }
        log.advance(SeqNo(2));
        assert_eq!(log.range(), Some((SeqNo(3), SeqNo(4))));
        assert_eq!((log.low(), log.high()), (SeqNo(2), SeqNo(6)));
        assert!(log.slot_mut(SeqNo(6)).is_some());
        log.advance(SeqNo(1));
        assert_eq!(log.low(), SeqNo(2), "the window never moves back");
    }
}
