use super::*;

use std::path::Path;

const ME: Identity = Identity {
    cluster: [7; 32],
    replica: 2,
};

fn records(items: &[(u64, &str)]) -> Vec<Record> {
    items
        .iter()
        .map(|(seq, text)| Record {
            seq: *seq,
            bytes: text.as_bytes().to_vec(),
        })
        .collect()
}

fn batch(items: &[(u64, &str)]) -> WriteBatch {
    let mut b = WriteBatch::new();
    for (seq, text) in items {
        b.record(*seq, text.as_bytes().to_vec());
    }
    b
}

#[test]
fn a_new_store_is_empty_and_records_come_back_in_write_order() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("replica.redb");
    let (mut store, recovered) = Store::open(&path, ME).expect("a new store");
    assert_eq!(recovered, Recovered::default());
    // Filed out of sequence order on purpose: recovery must give the write order.
    store
        .write(&batch(&[(5, "pre-prepare 5"), (3, "prepare 3")]))
        .expect("written");
    store.write(&batch(&[(4, "commit 4")])).expect("written");
    drop(store);
    let (mut store, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(
        recovered.records,
        records(&[(5, "pre-prepare 5"), (3, "prepare 3"), (4, "commit 4")])
    );
    // Named values: the last one set wins.
    let mut b = WriteBatch::new();
    b.set("view", b"1".to_vec());
    store.write(&b).expect("written");
    let mut b = WriteBatch::new();
    b.set("view", b"2".to_vec());
    store.write(&b).expect("written");
    drop(store);
    let (mut store, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(recovered.values.get("view"), Some(&b"2".to_vec()));
    // Records written after a reopen come after the old ones.
    store.write(&batch(&[(1, "late")])).expect("written");
    drop(store);
    let (_, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(recovered.records.last(), records(&[(1, "late")]).last());
}

#[test]
fn a_stable_checkpoint_replaces_the_previous_one_and_collects_records_at_or_below_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("replica.redb");
    let (mut store, _) = Store::open(&path, ME).expect("a new store");
    store
        .write(&batch(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]))
        .expect("written");
    let mut b = batch(&[(2, "in the same batch, below"), (5, "e")]);
    b.stable(2, b"checkpoint 2".to_vec());
    store.write(&b).expect("written");
    let mut b = WriteBatch::new();
    b.stable(3, b"checkpoint 3".to_vec());
    store.write(&b).expect("written");
    // An older checkpoint than the stored one changes nothing.
    let mut b = WriteBatch::new();
    b.stable(1, b"checkpoint 1".to_vec());
    store.write(&b).expect("written");
    drop(store);
    let (_, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(
        recovered.stable,
        Some(Record {
            seq: 3,
            bytes: b"checkpoint 3".to_vec()
        })
    );
    assert_eq!(recovered.records, records(&[(4, "d"), (5, "e")]));
}

#[test]
fn a_database_of_another_cluster_or_replica_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("replica.redb");
    let (mut store, _) = Store::open(&path, ME).expect("a new store");
    store.write(&batch(&[(1, "a")])).expect("written");
    drop(store);
    let other_cluster = Identity {
        cluster: [8; 32],
        ..ME
    };
    assert!(matches!(
        Store::open(&path, other_cluster),
        Err(StoreError::OtherCluster { .. })
    ));
    let other_replica = Identity { replica: 3, ..ME };
    let err = Store::open(&path, other_replica).expect_err("refused");
    assert!(
        matches!(
            err,
            StoreError::OtherReplica {
                found: 2,
                expected: 3,
                ..
            }
        ),
        "{err}"
    );
    // Refusing changed nothing.
    let (_, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(recovered.records, records(&[(1, "a")]));
}

/// Segments small enough for a test to fill.
const SMALL: StoreOptions = StoreOptions {
    segment_size: 64 << 10,
};

/// A store with 49 records of `payload` (one write each), closed; returns its database path.
fn store_with_records(dir: &Path, payload: &str) -> PathBuf {
    let path = dir.join("replica.redb");
    let (mut store, _) = Store::open_with(&path, ME, SMALL).expect("a new store");
    for seq in 1..50 {
        store.write(&batch(&[(seq, payload)])).expect("written");
    }
    path
}

fn only_segment(path: &Path) -> PathBuf {
    let (segments, _) = log::tests_list(path);
    assert_eq!(segments.len(), 1, "one segment: {segments:?}");
    segments[0].clone()
}

#[test]
fn garbage_truncated_or_corrupted_files_are_refused_not_run_on() {
    let dir = tempfile::tempdir().expect("a temp dir");

    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a; 100_000]).expect("written");
    let err = Store::open(&garbage, ME).expect_err("garbage refused");
    assert!(
        matches!(err, StoreError::Open { .. } | StoreError::Corrupt { .. }),
        "{err}"
    );

    let payload = "x".repeat(200);
    let path = store_with_records(dir.path(), &payload);
    let segment = only_segment(&path);
    let good = std::fs::read(&segment).expect("read");
    let refused = |bytes: &[u8], case: &str| {
        std::fs::write(&segment, bytes).expect("written");
        let err = Store::open(&path, ME).expect_err(case);
        std::fs::write(&segment, &good).expect("restored");
        err
    };

    let err = refused(&good[..good.len() / 3], "a truncated segment");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let err = refused(&good[..100], "a segment cut inside its first write");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    // One byte of the first record flipped: later writes follow it, so it cannot be a torn last write.
    let at = good
        .windows(payload.len())
        .position(|w| w == payload.as_bytes())
        .expect("the payload is in the segment");
    let mut flipped = good.clone();
    flipped[at + 10] ^= 0x01;
    let err = refused(&flipped, "a flipped byte in a record");
    assert!(
        matches!(err, StoreError::Corrupt { ref reason, .. } if reason.contains("checksum")),
        "{err}"
    );

    let err = refused(&vec![0x5a; good.len()], "noise");
    assert!(matches!(err, StoreError::UnknownFormat { .. }), "{err}");

    // A segment of the older log format (SHA-256 checksums) is named as such.
    let mut format_1 = good.clone();
    format_1[..8].copy_from_slice(b"PBFTLOG1");
    let err = refused(&format_1, "a segment of log format 1");
    assert!(
        matches!(err, StoreError::UnknownFormat { ref found, .. } if found.contains("log format 1")),
        "{err}"
    );

    // Another replica's segment under this one's name.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("a dir");
    let other_path = other.join("replica.redb");
    let (mut store, _) = Store::open(&other_path, Identity { replica: 3, ..ME }).expect("a store");
    store.write(&batch(&[(1, "theirs")])).expect("written");
    drop(store);
    let theirs = std::fs::read(only_segment(&other_path)).expect("read");
    let err = refused(&theirs, "another replica's segment");
    assert!(
        matches!(
            err,
            StoreError::OtherReplica {
                found: 3,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );

    // After all that, the good segment still opens.
    let (_, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(recovered.records.len(), 49);
}

#[test]
fn a_torn_last_write_is_dropped_and_the_log_goes_on_after_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let payload = "y".repeat(300);
    let path = store_with_records(dir.path(), &payload);
    let segment = only_segment(&path);
    let mut bytes = std::fs::read(&segment).expect("read");
    // The last record's payload, damaged as a crash in the middle of its write would leave it.
    let at = bytes
        .windows(payload.len())
        .rposition(|w| w == payload.as_bytes())
        .expect("the payload is in the segment");
    for b in &mut bytes[at + 100..at + payload.len()] {
        *b = 0;
    }
    std::fs::write(&segment, &bytes).expect("written");

    let (mut store, recovered) =
        Store::open_with(&path, ME, SMALL).expect("a torn tail is not corruption");
    assert_eq!(recovered.records.len(), 48, "the torn write is dropped");
    assert_eq!(recovered.records.last().map(|r| r.seq), Some(48));
    // What comes after it is written where it was, and the torn bytes do not come back as corruption once
    // the segment is no longer the newest.
    store.write(&batch(&[(60, "after")])).expect("written");
    let big = "b".repeat(SMALL.segment_size as usize);
    store.write(&batch(&[(61, big.as_str())])).expect("written");
    assert_eq!(
        store.segment_paths().len(),
        2,
        "the big write started a segment"
    );
    drop(store);
    let (_, recovered) = Store::open_with(&path, ME, SMALL).expect("reopened");
    let seqs: Vec<u64> = recovered.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), 50);
    assert_eq!(&seqs[47..], &[48, 60, 61]);
}

#[test]
fn segments_rotate_and_are_deleted_once_a_checkpoint_covers_them() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("replica.redb");
    let options = StoreOptions { segment_size: 4096 };
    let (mut store, _) = Store::open_with(&path, ME, options).expect("a new store");
    let payload = "z".repeat(500);
    let mut most_segments = 0;
    for seq in 1..=200u64 {
        let mut b = batch(&[(seq, payload.as_str())]);
        b.set("view", seq.to_le_bytes().to_vec());
        if seq % 20 == 0 {
            // The checkpoint lags ten sequence numbers behind, as a window does.
            b.stable(seq - 10, format!("checkpoint {}", seq - 10).into_bytes());
        }
        store.write(&b).expect("written");
        most_segments = most_segments.max(store.segment_paths().len());
    }
    // One write larger than a segment gets a segment of its own size.
    let big = "b".repeat(10_000);
    store
        .write(&batch(&[(201, big.as_str())]))
        .expect("written");
    let live = store.segment_paths();
    assert!(
        most_segments <= 6,
        "segments are collected: at most {most_segments}"
    );
    assert!(live.iter().all(|p| p.exists()));
    drop(store);
    let (segments, _) = log::tests_list(&path);
    assert_eq!(segments, live, "collected segments are gone from the disk");

    let (_, recovered) = Store::open_with(&path, ME, options).expect("reopened");
    assert_eq!(
        recovered.stable,
        Some(Record {
            seq: 190,
            bytes: b"checkpoint 190".to_vec()
        })
    );
    let seqs: Vec<u64> = recovered.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (191..=201).collect::<Vec<_>>());
    assert_eq!(
        recovered.records.last().map(|r| r.bytes.len()),
        Some(10_000)
    );
    assert_eq!(
        recovered.values.get("view"),
        Some(&200u64.to_le_bytes().to_vec())
    );
}

#[test]
fn a_database_of_the_first_format_is_converted_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("replica.redb");
    // A database as the first format wrote it: everything in tables.
    {
        let db = Database::create(&path).expect("a database");
        let tx = db.begin_write().expect("a transaction");
        {
            let mut meta = tx.open_table(META).expect("meta");
            meta.insert("format", sealed(FORMAT_TABLES.as_bytes()).as_slice())
                .expect("insert");
            meta.insert("cluster", sealed(&ME.cluster).as_slice())
                .expect("insert");
            meta.insert("replica", sealed(&ME.replica.to_be_bytes()).as_slice())
                .expect("insert");
            let mut records = tx.open_table(RECORDS).expect("records");
            // Filed out of order; the counter gives the write order.
            records
                .insert((7, 1), sealed(b"second").as_slice())
                .expect("insert");
            records
                .insert((9, 0), sealed(b"first").as_slice())
                .expect("insert");
            let mut stable = tx.open_table(STABLE).expect("stable");
            stable
                .insert(5, sealed(b"checkpoint 5").as_slice())
                .expect("insert");
            let mut values = tx.open_table(VALUES).expect("values");
            values
                .insert("view", sealed(b"3").as_slice())
                .expect("insert");
        }
        tx.commit().expect("committed");
    }
    let expected = Recovered {
        stable: Some(Record {
            seq: 5,
            bytes: b"checkpoint 5".to_vec(),
        }),
        records: records(&[(9, "first"), (7, "second")]),
        values: BTreeMap::from([("view".to_string(), b"3".to_vec())]),
    };
    let (mut store, recovered) = Store::open(&path, ME).expect("converted");
    assert_eq!(recovered, expected);
    store.write(&batch(&[(10, "new")])).expect("written");
    drop(store);
    let (_, recovered) = Store::open(&path, ME).expect("reopened");
    assert_eq!(recovered.records.len(), 3, "converted once, not twice");
    let db = Database::create(&path).expect("the database");
    let tx = db.begin_read().expect("a transaction");
    assert!(tx.open_table(RECORDS).is_err(), "the old tables are gone");
}

#[test]
fn archived_items_lost_by_a_crash_before_the_database_synced_are_filed_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (path, store) = store_with_block_1(dir.path());
    drop(store);
    // As if the process died after the log's sync and before the database's.
    {
        let db = Database::create(&path).expect("the database");
        let tx = db.begin_write().expect("a transaction");
        tx.open_table(archive::ITEMS)
            .expect("items")
            .remove(1)
            .expect("removed");
        tx.commit().expect("committed");
    }
    let (store, _) = Store::open(&path, ME).expect("reopened");
    assert_eq!(
        store.archive().get(1).expect("read"),
        Some(b"block 1".to_vec())
    );
}

/// A new store in `dir` whose first write executed a batch and archived its block, item 1.
fn store_with_block_1(dir: &Path) -> (PathBuf, Store) {
    let path = dir.join("replica.redb");
    let (mut store, _) = Store::open(&path, ME).expect("a new store");
    let mut b = batch(&[(1, "executed 1")]);
    b.archive(item(1, "block 1", 1));
    store.write(&b).expect("written");
    (path, store)
}

fn item(number: u64, text: &str, key: u8) -> ArchiveItem {
    ArchiveItem {
        number,
        bytes: text.as_bytes().to_vec(),
        keys: vec![([key; 32], u64::MAX), ([key + 100; 32], 3)],
    }
}

#[test]
fn archived_items_outlive_checkpoints_and_restarts_and_are_found_by_key() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (path, mut store) = store_with_block_1(dir.path());
    let archive = store.archive();
    archive
        .put(&[item(2, "block 2", 2), item(4, "block 4", 4)])
        .expect("written");
    let mut b = WriteBatch::new();
    b.stable(4, b"checkpoint 4".to_vec());
    store.write(&b).expect("written");
    drop((store, archive));

    let (store, recovered) = Store::open(&path, ME).expect("reopened");
    assert!(recovered.records.is_empty());
    let archive = store.archive();
    let texts = |items: Vec<(u64, Vec<u8>)>| {
        items
            .into_iter()
            .map(|(n, b)| (n, String::from_utf8(b).expect("text")))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(archive.range(1, 10, 100, usize::MAX).expect("read")),
        vec![
            (1, "block 1".to_string()),
            (2, "block 2".to_string()),
            (4, "block 4".to_string())
        ]
    );
    assert_eq!(
        texts(archive.range(2, 10, 1, usize::MAX).expect("read")).len(),
        1
    );
    // A byte budget stops the range after the item that reaches it, but never before the first.
    assert_eq!(archive.range(1, 10, 100, 8).expect("read").len(), 2);
    assert_eq!(archive.range(1, 10, 100, 1).expect("read").len(), 1);
    assert_eq!(archive.last().expect("read"), Some(4));
    assert_eq!(archive.highest_missing(0, 4).expect("read"), Some(3));
    assert_eq!(archive.highest_missing(0, 2).expect("read"), None);
    assert_eq!(archive.highest_missing(0, 6).expect("read"), Some(6));
    assert_eq!(archive.highest_missing(3, 4).expect("read"), None);
    assert_eq!(archive.highest_missing(4, 4).expect("read"), None);
    assert_eq!(
        archive.lookup(&[2; 32]).expect("read"),
        Some(Found {
            number: 2,
            position: None
        })
    );
    assert_eq!(
        archive.lookup(&[104; 32]).expect("read"),
        Some(Found {
            number: 4,
            position: Some(3)
        })
    );
    assert_eq!(archive.lookup(&[3; 32]).expect("read"), None);
}
