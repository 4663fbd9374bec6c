//! A replica's disk in the simulator: the journal entries it persisted, kept with the semantics of the node's
//! store (`pbft-store` through `pbft-node`'s `durable`): the latest view replaces the previous one, a stable
//! checkpoint replaces the previous one and collects every entry at or below it, and the rest is kept in write
//! order.
//!
//! The node makes a step's entries durable before any message of that step leaves, and the simulator models
//! exactly that contract: the entries of a step are on the disk when its messages are scheduled, so a crash,
//! which happens between steps, loses the replica's memory (timers, queued requests, peers' votes) but nothing it
//! persisted.

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
}

impl Disk {
    pub fn persist(&mut self, entry: &JournalEntry) {
        match entry {
            JournalEntry::View { .. } => self.view = Some(entry.encode()),
            JournalEntry::NewView(_) => self.new_view = Some(entry.encode()),
            JournalEntry::Stable { seq, .. } => {
                if self.stable.as_ref().is_none_or(|(s, _)| s <= seq) {
                    self.stable = Some((*seq, entry.encode()));
                    self.records.retain(|(s, _)| s > seq);
                }
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
