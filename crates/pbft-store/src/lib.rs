//! The durable state of one replica, in a redb database file.
//!
//! The store knows nothing of the protocol: it keeps opaque records, each filed under a sequence number, at most
//! one stable checkpoint (also opaque, with its sequence number), and named values that each write replaces
//! (such as the current view). What makes it fit for PBFT:
//!
//! - **One sync per group.** `write` applies a whole `WriteBatch` in one redb transaction, committed durably
//!   (fsync) before it returns: the driver groups everything a step of the protocol must remember, and sends the
//!   messages that depend on it only afterwards.
//! - **Garbage collection with the checkpoint.** Writing a stable checkpoint at sequence number s deletes every
//!   record filed at or below s, in the same transaction, so the file holds what lies above the last stable
//!   checkpoint and nothing more.
//! - **Recovery in write order.** `open` returns the checkpoint and the records in the order they were written.
//! - **An archive beside the journal.** Items that must outlive checkpoints (the ledger's blocks) are filed in
//!   the same transaction as the journal entries of their step, and read by other tasks (see `archive`).
//! - **Refusing bad state.** A file made for another cluster or another replica, of an unknown format, or whose
//!   records fail their checksum is refused with an error that says so; the replica must not run on it.

mod archive;

pub use archive::{Archive, ArchiveItem, Found};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// What the file belongs to: the digest of the cluster's configuration and the replica's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster: [u8; 32],
    pub replica: u64,
}

/// A record as it was written, filed under `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// Everything the store held when it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last stable checkpoint written, if any: its sequence number and its bytes.
    pub stable: Option<Record>,
    /// Every record above the stable checkpoint, in the order they were written.
    pub records: Vec<Record>,
    /// The named values, by name.
    pub values: BTreeMap<String, Vec<u8>>,
}

/// Writes that become durable together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    records: Vec<Record>,
    stable: Option<Record>,
    values: BTreeMap<String, Vec<u8>>,
    archive: Vec<ArchiveItem>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Files a record under `seq`; it lives until a stable checkpoint at `seq` or above is written.
    pub fn record(&mut self, seq: u64, bytes: Vec<u8>) {
        self.records.push(Record { seq, bytes });
    }

    /// Makes `(seq, bytes)` the stable checkpoint, replacing the previous one and deleting every record at or below
    /// `seq` (those of this batch included). A checkpoint older than the stored one is ignored.
    pub fn stable(&mut self, seq: u64, bytes: Vec<u8>) {
        if self.stable.as_ref().is_none_or(|s| s.seq <= seq) {
            self.stable = Some(Record { seq, bytes });
        }
    }

    /// Sets the value named `name`, replacing the one stored.
    pub fn set(&mut self, name: &str, bytes: Vec<u8>) {
        self.values.insert(name.to_string(), bytes);
    }

    /// Archives an item (kept for good; see `Archive`).
    pub fn archive(&mut self, item: ArchiveItem) {
        self.archive.push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.stable.is_none()
            && self.values.is_empty()
            && self.archive.is_empty()
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: cannot open the replica's database: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "{path}: this database belongs to another cluster (its configuration changed, or the file was copied from \
         elsewhere); refusing to start on it"
    )]
    OtherCluster { path: PathBuf },
    #[error(
        "{path}: this database belongs to replica {found}, not to replica {expected}; refusing to start on it"
    )]
    OtherReplica {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{path}: not a replica database of a format this version knows ({found})")]
    UnknownFormat { path: PathBuf, found: String },
    #[error("{path}: corrupted: {reason}; refusing to start on it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: write failed (is the disk full?): {reason}")]
    Write { path: PathBuf, reason: String },
}

const FORMAT: &str = "pbft-store/1";
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Records by (sequence number, write counter): the first part lets a checkpoint delete a range, the second
/// keeps the write order.
const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("records");
/// The stable checkpoint, under its sequence number (one entry at most).
const STABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("stable");
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");

/// Bytes of SHA-256 kept in front of every stored value, to detect a corrupted page.
const CHECK: usize = 8;

pub(crate) fn sealed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECK + bytes.len());
    out.extend_from_slice(&Sha256::digest(bytes)[..CHECK]);
    out.extend_from_slice(bytes);
    out
}

pub(crate) fn unsealed(value: &[u8]) -> Option<Vec<u8>> {
    let (check, bytes) = value.split_at_checked(CHECK)?;
    (Sha256::digest(bytes)[..CHECK] == *check).then(|| bytes.to_vec())
}

/// One replica's database.
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// The write counter of the next record.
    next: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("next", &self.next)
            .finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it for `identity` if there is none, and returns what it holds.
    pub fn open(path: &Path, identity: Identity) -> Result<(Store, Recovered), StoreError> {
        let path = path.to_path_buf();
        let open_error = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let fresh = !path.exists();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => corrupt(reason),
            e => open_error(e.to_string()),
        })?;
        let mut store = Store {
            db: Arc::new(db),
            path,
            next: 0,
        };
        if fresh {
            store.initialise(identity)?;
        }
        let recovered = store.load(identity)?;
        Ok((store, recovered))
    }

    fn initialise(&self, identity: Identity) -> Result<(), StoreError> {
        let fail = |e: String| self.write_error(e);
        let tx = self.db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| fail(e.to_string()))?;
            let entries: [(&str, Vec<u8>); 3] = [
                ("format", sealed(FORMAT.as_bytes())),
                ("cluster", sealed(&identity.cluster)),
                ("replica", sealed(&identity.replica.to_be_bytes())),
            ];
            for (key, value) in entries {
                meta.insert(key, value.as_slice())
                    .map_err(|e| fail(e.to_string()))?;
            }
            tx.open_table(RECORDS).map_err(|e| fail(e.to_string()))?;
            tx.open_table(STABLE).map_err(|e| fail(e.to_string()))?;
            tx.open_table(VALUES).map_err(|e| fail(e.to_string()))?;
            tx.open_table(archive::ITEMS)
                .map_err(|e| fail(e.to_string()))?;
            tx.open_table(archive::INDEX)
                .map_err(|e| fail(e.to_string()))?;
        }
        tx.commit().map_err(|e| fail(e.to_string()))
    }

    fn load(&mut self, identity: Identity) -> Result<Recovered, StoreError> {
        let path = self.path.clone();
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let tx = self.db.begin_read().map_err(|e| corrupt(e.to_string()))?;
        let meta = tx.open_table(META).map_err(|_| StoreError::UnknownFormat {
            path: path.clone(),
            found: "no metadata table".to_string(),
        })?;
        let field = |key: &str| -> Result<Vec<u8>, StoreError> {
            let value = meta
                .get(key)
                .map_err(|e| corrupt(e.to_string()))?
                .ok_or_else(|| corrupt(format!("metadata field {key} is missing")))?;
            unsealed(value.value())
                .ok_or_else(|| corrupt(format!("metadata field {key} fails its checksum")))
        };
        let format = field("format")?;
        if format != FORMAT.as_bytes() {
            return Err(StoreError::UnknownFormat {
                path: path.clone(),
                found: String::from_utf8_lossy(&format).into_owned(),
            });
        }
        if field("cluster")? != identity.cluster {
            return Err(StoreError::OtherCluster { path: path.clone() });
        }
        let replica = field("replica")?;
        let found = <[u8; 8]>::try_from(replica.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("metadata field replica has the wrong length".to_string()))?;
        if found != identity.replica {
            return Err(StoreError::OtherReplica {
                path: path.clone(),
                found,
                expected: identity.replica,
            });
        }

        let stable_table = tx.open_table(STABLE).map_err(|e| corrupt(e.to_string()))?;
        let mut stable = None;
        for entry in stable_table.iter().map_err(|e| corrupt(e.to_string()))? {
            let (seq, value) = entry.map_err(|e| corrupt(e.to_string()))?;
            let bytes = unsealed(value.value()).ok_or_else(|| {
                corrupt(format!(
                    "the checkpoint at {} fails its checksum",
                    seq.value()
                ))
            })?;
            stable = Some(Record {
                seq: seq.value(),
                bytes,
            });
        }

        let records_table = tx.open_table(RECORDS).map_err(|e| corrupt(e.to_string()))?;
        let mut records = Vec::new();
        for entry in records_table.iter().map_err(|e| corrupt(e.to_string()))? {
            let (key, value) = entry.map_err(|e| corrupt(e.to_string()))?;
            let (seq, counter) = key.value();
            let bytes = unsealed(value.value()).ok_or_else(|| {
                corrupt(format!(
                    "record {counter} at sequence {seq} fails its checksum"
                ))
            })?;
            self.next = self.next.max(counter.saturating_add(1));
            records.push((counter, Record { seq, bytes }));
        }
        records.sort_by_key(|(counter, _)| *counter);

        let values_table = tx.open_table(VALUES).map_err(|e| corrupt(e.to_string()))?;
        let mut values = BTreeMap::new();
        for entry in values_table.iter().map_err(|e| corrupt(e.to_string()))? {
            let (name, value) = entry.map_err(|e| corrupt(e.to_string()))?;
            let bytes = unsealed(value.value())
                .ok_or_else(|| corrupt(format!("value {} fails its checksum", name.value())))?;
            values.insert(name.value().to_string(), bytes);
        }
        Ok(Recovered {
            stable,
            records: records.into_iter().map(|(_, r)| r).collect(),
            values,
        })
    }

    fn write_error(&self, reason: String) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            reason,
        }
    }

    /// Makes the whole batch durable, in one transaction and one sync. On error nothing of it was applied.
    pub fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let fail = |e: String| self.write_error(e);
        let tx = self.db.begin_write().map_err(|e| fail(e.to_string()))?;
        let mut next = self.next;
        {
            let mut records = tx.open_table(RECORDS).map_err(|e| fail(e.to_string()))?;
            for record in &batch.records {
                records
                    .insert((record.seq, next), sealed(&record.bytes).as_slice())
                    .map_err(|e| fail(e.to_string()))?;
                next += 1;
            }
            let mut values = tx.open_table(VALUES).map_err(|e| fail(e.to_string()))?;
            for (name, bytes) in &batch.values {
                values
                    .insert(name.as_str(), sealed(bytes).as_slice())
                    .map_err(|e| fail(e.to_string()))?;
            }
            if let Some(stable) = &batch.stable {
                let mut table = tx.open_table(STABLE).map_err(|e| fail(e.to_string()))?;
                let newer = table
                    .iter()
                    .map_err(|e| fail(e.to_string()))?
                    .filter_map(Result::ok)
                    .all(|(seq, _)| seq.value() <= stable.seq);
                if newer {
                    table
                        .retain(|_, _| false)
                        .map_err(|e| fail(e.to_string()))?;
                    table
                        .insert(stable.seq, sealed(&stable.bytes).as_slice())
                        .map_err(|e| fail(e.to_string()))?;
                    records
                        .retain_in((0, 0)..=(stable.seq, u64::MAX), |_, _| false)
                        .map_err(|e| fail(e.to_string()))?;
                }
            }
        }
        archive::write_items(&tx, &batch.archive).map_err(|e| fail(e.to_string()))?;
        tx.commit().map_err(|e| fail(e.to_string()))?;
        self.next = next;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on the store's archive, for other tasks.
    pub fn archive(&self) -> Archive {
        Archive::new(self.db.clone(), self.path.clone())
    }
}

#[cfg(test)]
mod tests;
