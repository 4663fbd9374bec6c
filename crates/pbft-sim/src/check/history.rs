//! Agreement and total order as one hash-chained history (the approach of TigerBeetle's state checker).
//!
//! The first replica to commit sequence number n appends it to the global history; every other replica that
//! commits n must commit exactly what the history holds there. A replica may only extend its own history by one
//! sequence number at a time, so executing out of order, or skipping a batch, is caught on the spot. Each entry
//! carries the chain hash of everything up to it, so "replica r's history is a prefix of the global one" is one
//! comparison, whatever the length of the run.

use bytes::Bytes;
use pbft_types::{Digest, ReplicaId, SeqNo, View};
use sha2::{Digest as _, Sha256};

use crate::violation::{Violation, describe_optional};

/// What executed at one sequence number, as the first replica to commit it reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: SeqNo,
    pub view: View,
    pub digest: Digest,
    pub results: Vec<Option<Bytes>>,
    pub first: ReplicaId,
    /// Hash of the previous entry's chain, this seq, the batch digest and the results.
    pub chain: Digest,
}

/// Where one replica stands in the history.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    last: SeqNo,
    chain: Digest,
}

/// Whether a commit appended to the history or matched what was there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// This replica is the first to commit this sequence number.
    Extended,
    /// Another replica committed it before, identically.
    Matched,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    entries: Vec<HistoryEntry>,
    cursors: Vec<Cursor>,
}

fn chain(previous: &Digest, seq: SeqNo, digest: &Digest, results: &[Option<Bytes>]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"pbft-sim/history/v1");
    h.update(previous.as_bytes());
    h.update(seq.0.to_le_bytes());
    h.update(digest.as_bytes());
    h.update((results.len() as u64).to_le_bytes());
    for r in results {
        match r {
            Some(bytes) => {
                h.update([1]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            }
            None => h.update([0]),
        }
    }
    Digest(h.finalize().into())
}

impl History {
    pub fn new(replicas: usize) -> History {
        History {
            entries: Vec::new(),
            cursors: vec![Cursor::default(); replicas],
        }
    }

    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// The chain hash of the whole history: equal for two runs exactly when their histories are equal.
    pub fn head(&self) -> Digest {
        self.entries.last().map(|e| e.chain).unwrap_or_default()
    }

    /// The last sequence number `replica` committed.
    pub fn last_committed(&self, replica: ReplicaId) -> SeqNo {
        self.cursors
            .get(replica.index())
            .map(|c| c.last)
            .unwrap_or_default()
    }

    /// Records that `replica` committed and executed `digest` at `seq` with these results.
    pub fn record(
        &mut self,
        replica: ReplicaId,
        seq: SeqNo,
        view: View,
        digest: Digest,
        results: &[Option<Bytes>],
    ) -> Result<Recorded, Violation> {
        let Some(cursor) = self.cursors.get(replica.index()).copied() else {
            return Err(Violation::Driver(format!(
                "a commit from unknown replica {replica}"
            )));
        };
        if seq != cursor.last.next() {
            return Err(Violation::OutOfOrder {
                replica,
                seq,
                last: cursor.last,
            });
        }
        let linked = chain(&cursor.chain, seq, &digest, results);
        let recorded = match self.entries.get(index(seq)) {
            Some(entry) if entry.chain == linked => Recorded::Matched,
            Some(entry) => return Err(mismatch(replica, entry, digest, results)),
            None => {
                // The replica extended its history by one, so the global history reached seq - 1 already.
                self.entries.push(HistoryEntry {
                    seq,
                    view,
                    digest,
                    results: results.to_vec(),
                    first: replica,
                    chain: linked,
                });
                Recorded::Extended
            }
        };
        self.cursors[replica.index()] = Cursor {
            last: seq,
            chain: linked,
        };
        Ok(recorded)
    }
}

impl History {
    /// Records that `replica` installed, by state transfer, the state after `seq`. Its history jumps to the
    /// global one at `seq`, which must exist: a certified checkpoint is one that correct replicas executed to.
    pub fn installed(&mut self, replica: ReplicaId, seq: SeqNo) -> Result<(), Violation> {
        let Some(cursor) = self.cursors.get(replica.index()).copied() else {
            return Err(Violation::Driver(format!(
                "a state install at unknown replica {replica}"
            )));
        };
        let Some(entry) = self.entries.get(index(seq)).filter(|_| seq > cursor.last) else {
            return Err(Violation::InstalledUnexecuted {
                replica,
                seq,
                last: cursor.last,
                history: SeqNo(self.entries.len() as u64),
            });
        };
        self.cursors[replica.index()] = Cursor {
            last: seq,
            chain: entry.chain,
        };
        Ok(())
    }
}

impl History {
    /// Records that `replica` restarted from its disk with the state after `seq`. Its last executed batches may
    /// not have reached the disk (`JournalEntry::gates_outputs`): it executes them again, and each must match
    /// what it executed before. It cannot come back ahead of where it was.
    pub fn restarted(&mut self, replica: ReplicaId, seq: SeqNo) -> Result<(), Violation> {
        let Some(cursor) = self.cursors.get(replica.index()).copied() else {
            return Err(Violation::Driver(format!(
                "a restart of unknown replica {replica}"
            )));
        };
        if seq > cursor.last {
            return Err(Violation::Driver(format!(
                "replica {replica} restarted with the state after seq {seq}, but executed only up to {}",
                cursor.last
            )));
        }
        // The history reaches `cursor.last`, so it holds `seq`.
        let chain = match seq {
            SeqNo(0) => Digest::default(),
            _ => self
                .entries
                .get(index(seq))
                .map(|e| e.chain)
                .unwrap_or_default(),
        };
        self.cursors[replica.index()] = Cursor { last: seq, chain };
        Ok(())
    }
}

/// Sequence numbers start at 1.
fn index(seq: SeqNo) -> usize {
    seq.0.saturating_sub(1) as usize
}

/// Says how a commit differs from the history entry at its sequence number. The replica's earlier entries
/// matched (each was checked when committed), so the difference is in this entry.
fn mismatch(
    replica: ReplicaId,
    entry: &HistoryEntry,
    digest: Digest,
    results: &[Option<Bytes>],
) -> Violation {
    if entry.digest != digest {
        return Violation::Disagreement {
            replica,
            seq: entry.seq,
            got: digest,
            expected: entry.digest,
            first: entry.first,
        };
    }
    let index = (0..results.len().max(entry.results.len()))
        .find(|&i| results.get(i) != entry.results.get(i))
        .unwrap_or(0);
    let describe = |r: Option<&Option<Bytes>>| {
        r.map(describe_optional)
            .unwrap_or_else(|| "missing".to_string())
    };
    Violation::ResultsDiverge {
        replica,
        seq: entry.seq,
        index,
        got: describe(results.get(index)),
        expected: describe(entry.results.get(index)),
        first: entry.first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R0: ReplicaId = ReplicaId(0);
    const R1: ReplicaId = ReplicaId(1);

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn ok() -> Vec<Option<Bytes>> {
        vec![Some(Bytes::from_static(b"ok"))]
    }

    #[test]
    fn replicas_that_commit_the_same_sequence_agree() {
        let mut h = History::new(4);
        assert_eq!(
            h.record(R0, SeqNo(1), View(0), d(1), &ok()),
            Ok(Recorded::Extended)
        );
        assert_eq!(
            h.record(R0, SeqNo(2), View(0), d(2), &ok()),
            Ok(Recorded::Extended)
        );
        assert_eq!(
            h.record(R1, SeqNo(1), View(0), d(1), &ok()),
            Ok(Recorded::Matched)
        );
        assert_eq!(
            h.record(R1, SeqNo(2), View(0), d(2), &ok()),
            Ok(Recorded::Matched)
        );
        assert_eq!(
            h.record(R1, SeqNo(3), View(0), d(3), &ok()),
            Ok(Recorded::Extended)
        );
        assert_eq!(h.entries().len(), 3);
        assert_eq!(h.entries()[2].first, R1);
        assert_eq!(h.last_committed(R0), SeqNo(2));
    }

    #[test]
    fn a_commit_at_seq_3_after_seq_1_is_out_of_order() {
        let mut h = History::new(4);
        h.record(R0, SeqNo(1), View(0), d(1), &ok()).unwrap();
        assert_eq!(
            h.record(R0, SeqNo(3), View(0), d(3), &ok()),
            Err(Violation::OutOfOrder {
                replica: R0,
                seq: SeqNo(3),
                last: SeqNo(1)
            })
        );
        // Committing a sequence number twice is out of order too.
        assert!(matches!(
            h.record(R0, SeqNo(1), View(0), d(1), &ok()),
            Err(Violation::OutOfOrder { .. })
        ));
        // The first commit must be seq 1.
        assert!(matches!(
            h.record(R1, SeqNo(2), View(0), d(2), &ok()),
            Err(Violation::OutOfOrder { .. })
        ));
    }

    #[test]
    fn a_restarted_replica_executes_again_what_its_disk_lost_and_only_that() {
        let mut h = History::new(4);
        for seq in 1..=3 {
            h.record(R0, SeqNo(seq), View(0), d(seq as u8), &ok())
                .unwrap();
        }
        // Its disk kept seq 1 only: seqs 2 and 3 come again, and must be what they were.
        assert_eq!(h.restarted(R0, SeqNo(1)), Ok(()));
        assert_eq!(h.last_committed(R0), SeqNo(1));
        assert_eq!(
            h.record(R0, SeqNo(2), View(0), d(2), &ok()),
            Ok(Recorded::Matched)
        );
        assert!(matches!(
            h.record(R0, SeqNo(3), View(0), d(9), &ok()),
            Err(Violation::Disagreement { .. })
        ));
        // From nothing at all, too.
        assert_eq!(h.restarted(R0, SeqNo(0)), Ok(()));
        assert_eq!(
            h.record(R0, SeqNo(1), View(0), d(1), &ok()),
            Ok(Recorded::Matched)
        );
        // Not ahead of where it was.
        assert!(matches!(
            h.restarted(R1, SeqNo(1)),
            Err(Violation::Driver(_))
        ));
    }

    #[test]
    fn two_digests_at_one_sequence_number_disagree() {
        let mut h = History::new(4);
        h.record(R0, SeqNo(1), View(0), d(1), &ok()).unwrap();
        assert_eq!(
            h.record(R1, SeqNo(1), View(0), d(9), &ok()),
            Err(Violation::Disagreement {
                replica: R1,
                seq: SeqNo(1),
                got: d(9),
                expected: d(1),
                first: R0
            })
        );
    }

    #[test]
    fn different_results_for_the_same_batch_diverge() {
        let mut h = History::new(4);
        let two = vec![Some(Bytes::from_static(b"a")), None];
        h.record(R0, SeqNo(1), View(0), d(1), &two).unwrap();
        let other = vec![
            Some(Bytes::from_static(b"a")),
            Some(Bytes::from_static(b"b")),
        ];
        assert!(matches!(
            h.record(R1, SeqNo(1), View(0), d(1), &other),
            Err(Violation::ResultsDiverge { index: 1, .. })
        ));
    }

    #[test]
    fn the_head_hash_depends_on_the_whole_history() {
        let run = |digests: &[u8]| {
            let mut h = History::new(1);
            for (i, n) in digests.iter().enumerate() {
                h.record(R0, SeqNo(i as u64 + 1), View(0), d(*n), &ok())
                    .unwrap();
            }
            h.head()
        };
        assert_eq!(run(&[1, 2, 3]), run(&[1, 2, 3]));
        assert_ne!(run(&[1, 2, 3]), run(&[1, 4, 3]));
        assert_ne!(run(&[1, 2]), run(&[1, 2, 3]));
    }
}
