//! The replica's journal on disk: the core's `Output::Persist` entries kept in a `pbft_store::Store`, and read
//! back, verified, to recover the replica after a crash.

use std::path::Path;

use pbft_core::{JournalEntry, JournalError, Output};
use pbft_crypto::Keyring;
use pbft_store::{Archive, Identity, Store, StoreError, WriteBatch};
use pbft_types::{ClusterConfig, DecodeLimits, ReplicaId};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::config::App;

/// The names under which the store keeps the latest `JournalEntry::View` and `JournalEntry::NewView`.
const VIEW: &str = "view";
const NEW_VIEW: &str = "new_view";

#[derive(Debug, Error)]
pub enum DurableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {error}; refusing to start on it")]
    Entry { path: String, error: JournalError },
    #[error("cannot create {path}: {error}")]
    Directory { path: String, error: std::io::Error },
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// A replica's journal, open.
#[derive(Debug)]
pub struct Journal {
    store: Store,
    /// The largest block record accepted from the application (see `ledger::block_limit`).
    block_limit: usize,
}

/// What identifies a cluster for its replicas' databases: the replicas' keys (in order), the parameters that
/// shape durable state (the checkpoint interval and the window) and the application (a ledger with its genesis).
/// Clients may come and go.
pub fn cluster_identity(config: &ClusterConfig, app: &App) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"pbft/cluster/v1");
    hash.update((config.replicas.len() as u64).to_be_bytes());
    for key in &config.replicas {
        hash.update(key);
    }
    hash.update(config.params.checkpoint_interval.to_be_bytes());
    hash.update(config.params.window.to_be_bytes());
    // The key-value store adds nothing, so that its databases from before the ledger existed still open.
    if let App::Ledger(genesis) = app {
        hash.update(b"ledger");
        hash.update(genesis.hash().as_bytes());
    }
    hash.finalize().into()
}

impl Journal {
    /// Opens (or creates) the journal of replica `id` in `dir` and returns its entries, verified, in the order
    /// `Replica::recover` takes them.
    pub fn open(
        dir: &Path,
        config: &ClusterConfig,
        app: &App,
        id: ReplicaId,
        keyring: &Keyring,
        limits: DecodeLimits,
    ) -> Result<(Journal, Vec<JournalEntry>), DurableError> {
        std::fs::create_dir_all(dir).map_err(|error| DurableError::Directory {
            path: dir.display().to_string(),
            error,
        })?;
        let path = dir.join(format!("replica-{}.redb", id.0));
        let identity = Identity {
            cluster: cluster_identity(config, app),
            replica: id.0,
        };
        let (store, recovered) = Store::open(&path, identity)?;
        let decode = |bytes: &[u8]| {
            JournalEntry::decode(bytes, keyring, limits).map_err(|error| DurableError::Entry {
                path: path.display().to_string(),
                error,
            })
        };
        let mut entries = Vec::with_capacity(recovered.records.len() + 2);
        if let Some(stable) = &recovered.stable {
            entries.push(decode(&stable.bytes)?);
        }
        for name in [VIEW, NEW_VIEW] {
            if let Some(value) = recovered.values.get(name) {
                entries.push(decode(value)?);
            }
        }
        for record in &recovered.records {
            entries.push(decode(&record.bytes)?);
        }
        let block_limit = crate::ledger::block_limit(limits.max_message_size);
        Ok((Journal { store, block_limit }, entries))
    }

    /// The archive of the ledger's blocks, for the tasks that read it and fill its gaps.
    pub fn archive(&self) -> Archive {
        self.store.archive()
    }

    /// Makes the journal entries among `outputs` durable, with the blocks of the batches they committed, in one
    /// synced write.
    pub fn persist(&mut self, outputs: &[Output]) -> Result<(), DurableError> {
        let mut batch = WriteBatch::new();
        for output in outputs {
            if let Output::Committed(committed) = output
                && let Some(item) = crate::ledger::archive_item(committed, self.block_limit)?
            {
                batch.archive(item);
            }
            let Output::Persist(entry) = output else {
                continue;
            };
            match entry {
                JournalEntry::View { .. } => batch.set(VIEW, entry.encode()),
                JournalEntry::NewView(_) => batch.set(NEW_VIEW, entry.encode()),
                JournalEntry::Stable { seq, .. } => batch.stable(seq.0, entry.encode()),
                _ => {
                    if let Some(seq) = entry.seq() {
                        batch.record(seq.0, entry.encode());
                    }
                }
            }
        }
        Ok(self.store.write(&batch)?)
    }
}
