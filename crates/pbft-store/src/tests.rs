use super::*;

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

    let path = dir.path().join("replica.redb");
    let (mut store, _) = Store::open(&path, ME).expect("a new store");
    let payload = "x".repeat(200);
    for seq in 1..50 {
        store
            .write(&batch(&[(seq, payload.as_str())]))
            .expect("written");
    }
    drop(store);
    let good = std::fs::read(&path).expect("read");

    let truncated = dir.path().join("truncated.redb");
    std::fs::write(&truncated, &good[..good.len() / 3]).expect("written");
    assert!(
        Store::open(&truncated, ME).is_err(),
        "a truncated file is refused"
    );

    // Flip one byte of a stored record: it is found wherever it is.
    let at = good
        .windows(payload.len())
        .position(|w| w == payload.as_bytes())
        .expect("the payload is in the file");
    let mut flipped = good.clone();
    flipped[at + 10] ^= 0x01;
    let corrupted = dir.path().join("corrupted.redb");
    std::fs::write(&corrupted, &flipped).expect("written");
    match Store::open(&corrupted, ME) {
        Err(StoreError::Corrupt { .. } | StoreError::Open { .. }) => {}
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok((_, recovered)) => {
            // redb may hold older copies of a page; a record that comes back must then be intact.
            assert!(
                recovered
                    .records
                    .iter()
                    .all(|r| r.bytes == payload.as_bytes()),
                "a corrupted record was returned"
            );
        }
    }
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
    let path = dir.path().join("replica.redb");
    let (mut store, _) = Store::open(&path, ME).expect("a new store");
    let mut b = batch(&[(1, "executed 1")]);
    b.archive(item(1, "block 1", 1));
    store.write(&b).expect("written");
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
