//! A replica's disk in the simulator: the journal entries it persisted, kept with the semantics of the node's
//! store (`pbft-store` through `pbft-node`'s `durable`): the latest view replaces the previous one, a stable
//! checkpoint replaces the previous one and collects every entry at or below it, and the rest is kept in write
//! order.
//!
//! The node makes a step's entries durable before any message of that step leaves, and the simulator models
//! exactly that contract: the entries of a step are on the disk when its messages are scheduled, so a crash,
//! which happens between steps, loses the replica's memory (timers, queued requests, peers' votes) but nothing it
//! persisted. The exception is a step that need not wait for the journal (`Output::waits_for_journal`: its only
//! entries are `Executed` records, and it sends no CHECKPOINT): the node writes its entries with the next step
//! that waits, so they stay pending until then, and a crash loses them. (The node also writes them once they have
//! waited 100 ms; the simulator does not, which only makes it lose more.)

use pbft_core::JournalEntry;
use pbft_crypto::Keyring;
use pbft_types::{DecodeLimits, SeqNo};

/// What one simulated replica has on disk. Entries are kept encoded, as the node keeps them, and decoded and
/// verified again on recovery, so that a restart in the simulator exercises the same code as one in the node.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    view: Option<Vec<u8>>,
    new_view: Option<Vec<u8>>,
    stable: Option<(SeqNo, Vec<u8>)>,
    records: Vec<(SeqNo, Vec<u8>)>,
    /// Entries of steps that did not wait for the journal, in order, not yet on the disk.
    pending: Vec<JournalEntry>,
    /// Up to where the entries on the disk say the replica executed: what it recovers to.
    executed: SeqNo,
}

impl Disk {
    /// Keeps `entry`, persisted by a step that waits for the journal (`waits`) or not: then it stays pending until
    /// a step that waits.
    pub fn persist(&mut self, entry: &JournalEntry, waits: bool) {
        if !waits {
            self.pending.push(entry.clone());
            return;
        }
        for pending in std::mem::take(&mut self.pending) {
            self.write(&pending);
        }
        self.write(entry);
    }

    /// The last sequence number executed according to the disk: its stable checkpoint, or the last `Executed`
    /// record above it.
    pub fn executed(&self) -> SeqNo {
        self.executed
    }

    /// The replica crashed: what was still pending never reached the disk.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    fn write(&mut self, entry: &JournalEntry) {
        match entry {
            JournalEntry::View { .. } => self.view = Some(entry.encode()),
            JournalEntry::NewView(_) => self.new_view = Some(entry.encode()),
            JournalEntry::Stable { seq, .. } => {
                if self.stable.as_ref().is_none_or(|(s, _)| s <= seq) {
                    self.stable = Some((*seq, entry.encode()));
                    self.records.retain(|(s, _)| s > seq);
                    self.executed = self.executed.max(*seq);
                }
            }
            JournalEntry::Executed { header } => {
                self.executed = self.executed.max(header.seq);
                self.records.push((header.seq, entry.encode()));
            }
            _ => {
                if let Some(seq) = entry.seq() {
                    self.records.push((seq, entry.encode()));
                }
            }
        }
    }

    /// Entries kept, excluding the view and the checkpoint: what a replica's disk grows with.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// The entries in the order `Replica::recover` takes them, decoded and verified.
    pub fn read(
        &self,
        keyring: &Keyring,
        limits: DecodeLimits,
    ) -> Result<Vec<JournalEntry>, String> {
        let stable = self.stable.iter().map(|(_, bytes)| bytes);
        let all = stable
            .chain(self.view.iter())
            .chain(self.new_view.iter())
            .chain(self.records.iter().map(|(_, bytes)| bytes));
        all.map(|bytes| JournalEntry::decode(bytes, keyring, limits).map_err(|e| e.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::KeyPair;
    use pbft_types::{ClusterConfig, Digest, Params, PrePrepare, ReplicaId, View};

    const LIMITS: DecodeLimits = DecodeLimits {
        max_message_size: 4096,
        max_batch_size: 8,
    };

    fn keyring() -> (KeyPair, Keyring) {
        let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let config = ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: Vec::new(),
            params: Params::default(),
        };
        let keyring = Keyring::new(&config).expect("a valid cluster");
        (keys[0].clone(), keyring)
    }

    fn executed(key: &KeyPair, keyring: &Keyring, seq: u64) -> JournalEntry {
        let header = key.sign(PrePrepare {
            view: View(0),
            seq: SeqNo(seq),
            digest: Digest([seq as u8; 32]),
            replica: ReplicaId(0),
        });
        JournalEntry::Executed {
            header: keyring.verify(header).expect("signed by replica 0"),
        }
    }

    fn view(v: u64) -> JournalEntry {
        JournalEntry::View {
            view: View(v),
            changing: false,
        }
    }

    #[test]
    fn an_executed_record_reaches_the_disk_with_the_next_step_that_waits_for_the_journal() {
        let (key, keyring) = keyring();
        let limits = LIMITS;
        let mut disk = Disk::default();
        disk.persist(&executed(&key, &keyring, 1), false);
        disk.persist(&executed(&key, &keyring, 2), false);
        assert_eq!((disk.records(), disk.executed()), (0, SeqNo(0)));
        disk.persist(&view(1), true);
        assert_eq!((disk.records(), disk.executed()), (2, SeqNo(2)));
        let read = disk.read(&keyring, limits).expect("readable");
        assert_eq!(
            read.iter().map(JournalEntry::seq).collect::<Vec<_>>(),
            vec![None, Some(SeqNo(1)), Some(SeqNo(2))]
        );
    }

    #[test]
    fn a_step_that_waits_writes_all_its_entries_even_an_executed_record_after_the_others() {
        let (key, keyring) = keyring();
        let mut disk = Disk::default();
        disk.persist(&view(1), true);
        disk.persist(&executed(&key, &keyring, 1), true);
        disk.crash();
        assert_eq!((disk.records(), disk.executed()), (1, SeqNo(1)));
    }

    #[test]
    fn a_crash_loses_the_executed_records_still_pending_and_nothing_else() {
        let (key, keyring) = keyring();
        let limits = LIMITS;
        let mut disk = Disk::default();
        disk.persist(&executed(&key, &keyring, 1), false);
        disk.persist(&view(1), true);
        disk.persist(&executed(&key, &keyring, 2), false);
        disk.crash();
        assert_eq!(disk.executed(), SeqNo(1));
        disk.persist(&view(2), true);
        let read = disk.read(&keyring, limits).expect("readable");
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], view(2));
        assert_eq!(read[1].seq(), Some(SeqNo(1)));
    }
}
