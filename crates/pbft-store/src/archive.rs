//! The archive: items kept for good, numbered (the ledger's blocks, by height), each findable by 32-byte keys (a
//! block by its hash, a transaction by its request digest). Unlike journal records, a stable checkpoint never
//! collects them.
//!
//! The replica task files items in the same transaction as the journal entries of their step (`WriteBatch::
//! archive`), so a block is on disk exactly when the batch it records is. Other tasks read through an `Archive`
//! handle, and the node's backfill writes blocks it fetched from peers through it as well.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{StoreError, sealed, unsealed};

pub(crate) const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("archive");
/// Key -> (item number, position within the item; `u64::MAX` for the item itself).
pub(crate) const INDEX: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("archive_index");

/// An item to archive, with the keys that find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveItem {
    pub number: u64,
    pub bytes: Vec<u8>,
    /// (key, position): the item is found by each key, with its position (`u64::MAX`: the item as a whole).
    pub keys: Vec<([u8; 32], u64)>,
}

/// Where a key points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub number: u64,
    pub position: Option<u64>,
}

/// Reads and fills the archive of an open store; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Archive {
    db: Db,
    path: PathBuf,
}

#[derive(Clone)]
enum Db {
    /// The replica's own store, open for writing.
    Store(Arc<Database>),
    /// A stopped replica's file, opened to read it only.
    ReadOnly(Arc<ReadOnlyDatabase>),
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Store(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
    }
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("path", &self.path).finish()
    }
}

pub(crate) fn write_items(
    tx: &redb::WriteTransaction,
    items: &[ArchiveItem],
) -> Result<(), redb::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(ITEMS)?;
    let mut index = tx.open_table(INDEX)?;
    for item in items {
        table.insert(item.number, sealed(&item.bytes).as_slice())?;
        for (key, position) in &item.keys {
            index.insert(key.as_slice(), (item.number, *position))?;
        }
    }
    Ok(())
}

impl Archive {
    pub(crate) fn new(db: Arc<Database>, path: PathBuf) -> Archive {
        Archive {
            db: Db::Store(db),
            path,
        }
    }

    /// Opens, to read it, the archive of a replica database that no process has open (a stopped replica's). The
    /// file is opened read-only unless it needs the repair a killed replica leaves behind.
    pub fn open_existing(path: &Path) -> Result<Archive, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        let open_error = |e: redb::DatabaseError| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        match ReadOnlyDatabase::open(path) {
            Ok(db) => Ok(Archive {
                db: Db::ReadOnly(Arc::new(db)),
                path: path.to_path_buf(),
            }),
            // A replica that was killed left the file to be repaired, which only a writer may do; the replica
            // itself does the same when it restarts, and committed transactions survive it.
            Err(redb::DatabaseError::RepairAborted) => {
                let db = Database::open(path).map_err(open_error)?;
                Ok(Archive::new(Arc::new(db), path.to_path_buf()))
            }
            Err(e) => Err(open_error(e)),
        }
    }

    fn corrupt(&self, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Files items in one synced transaction (items already there are replaced).
    pub fn put(&self, items: &[ArchiveItem]) -> Result<(), StoreError> {
        let fail = |e: String| StoreError::Write {
            path: self.path.clone(),
            reason: e,
        };
        let Db::Store(db) = &self.db else {
            return Err(fail("opened read-only".to_string()));
        };
        let tx = db.begin_write().map_err(|e| fail(e.to_string()))?;
        write_items(&tx, items).map_err(|e| fail(e.to_string()))?;
        tx.commit().map_err(|e| fail(e.to_string()))
    }

    fn unseal(&self, number: u64, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        unsealed(value)
            .ok_or_else(|| self.corrupt(format!("archived item {number} fails its checksum")))
    }

    /// Items numbered `from..=to`, in increasing order (numbers with no item are skipped): at most `limit` of
    /// them, and no more once `max_bytes` are collected (the first item is returned whatever its size).
    pub fn range(
        &self,
        from: u64,
        to: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = match tx.open_table(ITEMS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.corrupt(e)),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in table.range(from..=to).map_err(|e| self.corrupt(e))? {
            let (number, value) = entry.map_err(|e| self.corrupt(e))?;
            let item = self.unseal(number.value(), value.value())?;
            bytes = bytes.saturating_add(item.len());
            out.push((number.value(), item));
            if out.len() >= limit || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    pub fn get(&self, number: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .range(number, number, 1, usize::MAX)?
            .pop()
            .map(|(_, b)| b))
    }

    /// The highest number in `floor + 1..=up_to` that has no item, walking down from `up_to` (so the cost is the
    /// distance to that gap); `None` if each of them has one. A caller that knows every number up to some height
    /// is filled passes it as `floor`.
    pub fn highest_missing(&self, floor: u64, up_to: u64) -> Result<Option<u64>, StoreError> {
        if up_to <= floor {
            return Ok(None);
        }
        let tx = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = match tx.open_table(ITEMS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Some(up_to)),
            Err(e) => return Err(self.corrupt(e)),
        };
        let mut expected = up_to;
        for entry in table
            .range(floor + 1..=up_to)
            .map_err(|e| self.corrupt(e))?
            .rev()
        {
            let (number, _) = entry.map_err(|e| self.corrupt(e))?;
            if number.value() != expected {
                return Ok(Some(expected));
            }
            expected -= 1;
            if expected == floor {
                return Ok(None);
            }
        }
        Ok(Some(expected))
    }

    /// The highest number with an item.
    pub fn last(&self) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = match tx.open_table(ITEMS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.corrupt(e)),
        };
        let last = table.last().map_err(|e| self.corrupt(e))?;
        Ok(last.map(|(number, _)| number.value()))
    }

    pub fn lookup(&self, key: &[u8; 32]) -> Result<Option<Found>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = match tx.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.corrupt(e)),
        };
        let found = table.get(key.as_slice()).map_err(|e| self.corrupt(e))?;
        Ok(found.map(|v| {
            let (number, position) = v.value();
            Found {
                number,
                position: (position != u64::MAX).then_some(position),
            }
        }))
    }
}
