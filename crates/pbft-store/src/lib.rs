//! The durable state of one replica: an append-only log (`log`) and a redb database beside it.
//!
//! The store knows nothing of the protocol: it keeps opaque records, each filed under a sequence number, at most
//! one stable checkpoint (also opaque, with its sequence number), and named values that each write replaces
//! (such as the current view). What makes it fit for PBFT:
//!
//! - **One sync per group.** `write` appends a whole `WriteBatch` to the log as one frame and syncs it
//!   (`fdatasync`) before it returns: the driver groups everything a step of the protocol must remember, and
//!   sends the messages that depend on it only afterwards.
//! - **Garbage collection with the checkpoint.** Writing a stable checkpoint at sequence number s deletes every
//!   record filed at or below s (those of the same write included): recovery no longer returns them, and log
//!   segments that hold nothing else are deleted.
//! - **Recovery in write order.** `open` returns the checkpoint and the records in the order they were written.
//! - **An archive beside the journal.** Items that must outlive checkpoints (the ledger's blocks) are kept in the
//!   database, indexed, and read by other tasks (see `archive`). A write's items are in its log frame too, so a
//!   crash between the log's sync and the database's loses none: `open` files them again.
//! - **Refusing bad state.** Files made for another cluster or another replica, of an unknown format, truncated,
//!   or whose records fail their checksum are refused with an error that says so; the replica must not run on
//!   them. The one exception is a torn last write, which a crash leaves and which was never synced (see `log`).
//!
//! Databases of the first format kept the records in redb tables; `open` moves them into a log once.

mod archive;
mod log;

pub use archive::{Archive, ArchiveItem, Found};
pub use log::DEFAULT_SEGMENT_SIZE;

use log::Log;

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
        "{path}: this file belongs to another cluster (its configuration changed, or the file was copied from \
         elsewhere); refusing to start on it"
    )]
    OtherCluster { path: PathBuf },
    #[error(
        "{path}: this file belongs to replica {found}, not to replica {expected}; refusing to start on it"
    )]
    OtherReplica {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "{path}: not a replica journal or database of a format this version knows ({found}); refusing to start on it"
    )]
    UnknownFormat { path: PathBuf, found: String },
    #[error("{path}: corrupted: {reason}; refusing to start on it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: write failed (is the disk full?): {reason}")]
    Write { path: PathBuf, reason: String },
}

/// The database's format: the second keeps the journal in a log beside it.
const FORMAT: &str = "pbft-store/2";
/// The first format, whose records, checkpoint and values were in the tables below; still read, to convert it.
const FORMAT_TABLES: &str = "pbft-store/1";
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Records by (sequence number, write counter), in the first format.
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

/// How a store lays out its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// The size of a new log segment (a single larger write gets a larger one).
    pub segment_size: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

/// One replica's store.
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    log: Log,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("log", &self.log)
            .finish()
    }
}

impl Store {
    /// Opens the store whose database is at `path` (its log segments beside it), creating it for `identity` if
    /// there is none, and returns what it holds.
    pub fn open(path: &Path, identity: Identity) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(path, identity, StoreOptions::default())
    }

    /// `open`, with options.
    pub fn open_with(
        path: &Path,
        identity: Identity,
        options: StoreOptions,
    ) -> Result<(Store, Recovered), StoreError> {
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
        let db = Arc::new(db);
        if fresh {
            initialise(&db, &path, identity)?;
        }
        let prefix = Log::prefix_for(&path);
        let format = check_meta(&db, &path, identity)?;
        if format == FORMAT_TABLES {
            convert(&db, &path, identity, options)?;
        }
        let (log, replayed) = Log::open(prefix, identity, options.segment_size)?;
        if !replayed.archive.is_empty() {
            put_archive(&db, &path, &replayed.archive)?;
        }
        let store = Store { db, path, log };
        Ok((
            store,
            Recovered {
                stable: replayed.stable,
                records: replayed.records,
                values: replayed.values,
            },
        ))
    }

    /// Makes the whole batch durable: one frame appended to the log and synced, then its archived items filed
    /// in the database (synced too). On error the batch must be taken as not written; the caller stops.
    pub fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        let stable = batch
            .stable
            .as_ref()
            .filter(|s| self.log.stable_seq().is_none_or(|have| have <= s.seq));
        if batch.records.is_empty()
            && stable.is_none()
            && batch.values.is_empty()
            && batch.archive.is_empty()
        {
            return Ok(());
        }
        self.log.append(batch, stable)?;
        if !batch.archive.is_empty() {
            put_archive(&self.db, &self.path, &batch.archive)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on the store's archive, for other tasks.
    pub fn archive(&self) -> Archive {
        Archive::new(self.db.clone(), self.path.clone())
    }

    #[cfg(test)]
    fn segment_paths(&self) -> Vec<PathBuf> {
        self.log.segment_paths()
    }
}

fn write_error(path: &Path, reason: impl ToString) -> StoreError {
    StoreError::Write {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn put_archive(db: &Database, path: &Path, items: &[ArchiveItem]) -> Result<(), StoreError> {
    let fail = |e: String| write_error(path, e);
    let tx = db.begin_write().map_err(|e| fail(e.to_string()))?;
    archive::write_items(&tx, items).map_err(|e| fail(e.to_string()))?;
    tx.commit().map_err(|e| fail(e.to_string()))
}

fn initialise(db: &Database, path: &Path, identity: Identity) -> Result<(), StoreError> {
    let fail = |e: String| write_error(path, e);
    let tx = db.begin_write().map_err(|e| fail(e.to_string()))?;
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
        tx.open_table(archive::ITEMS)
            .map_err(|e| fail(e.to_string()))?;
        tx.open_table(archive::INDEX)
            .map_err(|e| fail(e.to_string()))?;
    }
    tx.commit().map_err(|e| fail(e.to_string()))
}

/// Checks the database's metadata against `identity` and returns its format.
fn check_meta(db: &Database, path: &Path, identity: Identity) -> Result<&'static str, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let tx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let meta = tx.open_table(META).map_err(|_| StoreError::UnknownFormat {
        path: path.to_path_buf(),
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
    let format = [FORMAT, FORMAT_TABLES]
        .into_iter()
        .find(|known| known.as_bytes() == format)
        .ok_or_else(|| StoreError::UnknownFormat {
            path: path.to_path_buf(),
            found: String::from_utf8_lossy(&format).into_owned(),
        })?;
    if field("cluster")? != identity.cluster {
        return Err(StoreError::OtherCluster {
            path: path.to_path_buf(),
        });
    }
    let replica = field("replica")?;
    let found = <[u8; 8]>::try_from(replica.as_slice())
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("metadata field replica has the wrong length".to_string()))?;
    if found != identity.replica {
        return Err(StoreError::OtherReplica {
            path: path.to_path_buf(),
            found,
            expected: identity.replica,
        });
    }
    Ok(format)
}

/// What a database of the first format holds in its tables.
fn load_tables(db: &Database, path: &Path) -> Result<Recovered, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let tx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
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

/// Moves a first-format database's records, checkpoint and values into a new log, then marks the database as
/// of the second format and drops its tables, in one transaction. A crash before that transaction leaves the
/// first format in place, and the next open starts the conversion over, from an empty log.
fn convert(
    db: &Database,
    path: &Path,
    identity: Identity,
    options: StoreOptions,
) -> Result<(), StoreError> {
    let old = load_tables(db, path)?;
    let prefix = Log::prefix_for(path);
    Log::remove_all(&prefix).map_err(|e| write_error(path, e))?;
    let (mut log, _) = Log::open(prefix, identity, options.segment_size)?;
    let batch = WriteBatch {
        records: old.records,
        stable: None,
        values: old.values,
        archive: Vec::new(),
    };
    log.append(&batch, old.stable.as_ref())?;
    drop(log);
    let fail = |e: String| write_error(path, e);
    let tx = db.begin_write().map_err(|e| fail(e.to_string()))?;
    {
        let mut meta = tx.open_table(META).map_err(|e| fail(e.to_string()))?;
        meta.insert("format", sealed(FORMAT.as_bytes()).as_slice())
            .map_err(|e| fail(e.to_string()))?;
    }
    tx.delete_table(RECORDS).map_err(|e| fail(e.to_string()))?;
    tx.delete_table(STABLE).map_err(|e| fail(e.to_string()))?;
    tx.delete_table(VALUES).map_err(|e| fail(e.to_string()))?;
    tx.commit().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests;
