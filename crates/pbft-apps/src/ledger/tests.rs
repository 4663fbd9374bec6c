use super::*;
use pbft_crypto::KeyPair;
use pbft_types::{
    ClientId, ClientInfo, ClusterConfig, Commit, Params, ReplicaId, SeqNo, Signed, Timestamp, View,
};

fn replica_key(i: u64) -> KeyPair {
    KeyPair::from_seed([10 + i as u8; 32])
}

fn account(i: u8) -> KeyPair {
    KeyPair::from_seed([100 + i; 32])
}

fn config() -> ClusterConfig {
    ClusterConfig {
        replicas: (0..4).map(|i| replica_key(i).public_key()).collect(),
        clients: vec![ClientInfo {
            id: ClientId(1),
            public_key: KeyPair::from_seed([1; 32]).public_key(),
        }],
        params: Params::default(),
    }
}

fn genesis() -> Genesis {
    Genesis::new([
        (account(0).public_key(), 1_000),
        (account(1).public_key(), 50),
    ])
    .expect("distinct accounts")
}

fn transfer(from: u8, to: u8, amount: u64, nonce: u64) -> Bytes {
    LedgerOp::Transfer(
        Transfer {
            from: account(from).public_key(),
            to: account(to).public_key(),
            amount,
            nonce,
        }
        .sign(&account(from)),
    )
    .encode()
}

fn request_body(timestamp: u64, operation: Bytes) -> Bytes {
    use pbft_types::Body;
    pbft_types::Request {
        client: ClientId(1),
        timestamp: Timestamp(timestamp),
        operation,
    }
    .encode_body()
}

/// The batch digest of `entries`' requests, as the replicas would have agreed on it.
fn digest_of(entries: &[Entry]) -> Digest {
    pbft_crypto::batch_digest_of_bodies(entries.iter().map(|e| e.request.as_ref()))
}

fn commits(height: u64, digest: Digest, signers: &[u64]) -> Vec<Signed<Commit>> {
    signers
        .iter()
        .map(|&i| {
            replica_key(i).sign(Commit {
                view: View(0),
                seq: SeqNo(height),
                digest,
                replica: ReplicaId(i),
            })
        })
        .collect()
}

/// A chain of blocks as replicas make it: each block holds `per_block` transfers of 1 from account 0 to 1.
fn chain(blocks: u64, per_block: u64) -> Vec<CertifiedBlock> {
    let mut ledger = Ledger::new(&genesis());
    let mut timestamp = 0;
    (1..=blocks)
        .map(|height| {
            let entries: Vec<Entry> = (0..per_block)
                .map(|_| {
                    timestamp += 1;
                    let op = transfer(0, 1, 1, timestamp - 1);
                    let result = ledger.execute_operation(&op);
                    Entry {
                        request: request_body(timestamp, op),
                        result: Some(result),
                    }
                })
                .collect();
            let mut block = ledger.close_block(height, digest_of(&entries), entries);
            block.commits = commits(height, block.header.batch_digest, &[0, 1, 2]);
            block
        })
        .collect()
}

fn verify(blocks: &[CertifiedBlock]) -> Result<(), BadBlock> {
    let mut verifier = ChainVerifier::new(&config(), &genesis()).expect("valid keys");
    for block in blocks {
        verifier.push(block)?;
    }
    Ok(())
}

fn fault_of(blocks: &[CertifiedBlock]) -> (u64, BlockFault) {
    let bad = verify(blocks).expect_err("the chain must be refused");
    (bad.height, bad.fault)
}

#[test]
fn a_chain_as_replicas_make_it_verifies_and_ends_at_their_head() {
    let blocks = chain(4, 3);
    let mut verifier = ChainVerifier::new(&config(), &genesis()).expect("valid keys");
    for block in &blocks {
        assert_eq!(verifier.push(block), Ok(View(0)));
    }
    assert_eq!(verifier.head(), (4, blocks[3].hash()));
    // Every block survives its encoding.
    for block in &blocks {
        assert_eq!(
            CertifiedBlock::decode(&block.encode(), 1 << 20).as_ref(),
            Ok(block)
        );
    }
}

#[test]
fn transfers_move_money_once_and_refuse_cleanly() {
    let mut ledger = Ledger::new(&genesis());
    let decode = |b: Bytes| LedgerResult::decode(&b).expect("a ledger result");
    assert_eq!(
        decode(ledger.execute_operation(&transfer(1, 2, 20, 0))),
        LedgerResult::Transfer {
            from_balance: 30,
            to_balance: 20
        }
    );
    let refused = |r: LedgerResult| match r {
        LedgerResult::Refused(r) => r.reason,
        other => panic!("expected a refusal, got {other}"),
    };
    // The same transfer again: its nonce is spent.
    assert_eq!(
        refused(decode(ledger.execute_operation(&transfer(1, 2, 20, 0)))),
        RefusalReason::BadNonce
    );
    assert_eq!(
        refused(decode(ledger.execute_operation(&transfer(1, 2, 31, 1)))),
        RefusalReason::InsufficientFunds
    );
    assert_eq!(
        refused(decode(ledger.execute_operation(&transfer(1, 1, 1, 1)))),
        RefusalReason::SelfTransfer
    );
    // Nothing moved: the receiver is not created for free.
    assert_eq!(
        refused(decode(ledger.execute_operation(&transfer(1, 3, 0, 1)))),
        RefusalReason::ZeroAmount
    );
    let forged = LedgerOp::Transfer(
        Transfer {
            from: account(0).public_key(),
            to: account(2).public_key(),
            amount: 500,
            nonce: 0,
        }
        .sign(&account(2)),
    )
    .encode();
    assert_eq!(
        refused(decode(ledger.execute_operation(&forged))),
        RefusalReason::BadSignature
    );
    assert_eq!(
        refused(decode(ledger.execute_operation(b"\x08"))),
        RefusalReason::Malformed
    );
    // Refusals changed nothing.
    assert_eq!(ledger.account(&account(0).public_key()).balance, 1_000);
    assert_eq!(
        ledger.account(&account(1).public_key()),
        AccountState {
            balance: 30,
            nonce: 1
        }
    );
    assert_eq!(ledger.account(&account(2).public_key()).balance, 20);
    assert_eq!(
        ledger.reader().account(&account(3).public_key()).0,
        AccountState::default()
    );
    assert_eq!(ledger.snapshot(), {
        let mut same = Ledger::new(&genesis());
        same.execute_operation(&transfer(1, 2, 20, 0));
        same.snapshot()
    });
}

#[test]
fn a_snapshot_restores_the_same_state_and_head() {
    let blocks = chain(3, 2);
    let mut ledger = Ledger::new(&genesis());
    let mut other = Ledger::new(&genesis());
    for block in &blocks {
        for e in &block.entries {
            let op = verify::decode_request(&e.request)
                .expect("a request")
                .operation;
            ledger.execute_operation(&op);
        }
        ledger.close_block(
            block.height(),
            digest_of(&block.entries),
            block.entries.clone(),
        );
    }
    assert_eq!(ledger.head(), (3, blocks[2].hash()));
    other.restore(&ledger.snapshot()).expect("restores");
    assert_eq!(other.digest(), ledger.digest());
    assert_eq!(other.head(), ledger.head());
    assert!(other.restore(b"\xff\xff").is_err());
    assert_eq!(other.digest(), ledger.digest());
}

#[test]
fn a_tampered_result_or_state_root_is_named() {
    let mut blocks = chain(3, 2);
    blocks[1].entries[1].result = Some(
        LedgerResult::Transfer {
            from_balance: 1_000_000,
            to_balance: 0,
        }
        .encode(),
    );
    // The entries no longer match the header's Merkle root.
    assert_eq!(fault_of(&blocks), (2, BlockFault::EntriesRoot));

    let mut blocks = chain(3, 2);
    let mut header = blocks[2].header;
    header.state_root = Digest([7; 32]);
    let commits = blocks[2].commits.clone();
    blocks[2] = CertifiedBlock::new(header, blocks[2].entries.clone(), commits);
    assert_eq!(fault_of(&blocks), (3, BlockFault::StateRoot));
}

#[test]
fn a_consistent_forgery_of_results_is_caught_by_the_replay() {
    // The forger recomputes the Merkle root, so only executing the request again shows the lie.
    let mut blocks = chain(2, 1);
    let mut entries = blocks[1].entries.clone();
    entries[0].result = Some(
        LedgerResult::Transfer {
            from_balance: 5,
            to_balance: 5,
        }
        .encode(),
    );
    let leaves: Vec<Digest> = entries.iter().map(Entry::leaf).collect();
    let mut header = blocks[1].header;
    header.entries_root = merkle::root(&leaves);
    let commits = blocks[1].commits.clone();
    blocks[1] = CertifiedBlock::new(header, entries, commits);
    assert_eq!(fault_of(&blocks), (2, BlockFault::WrongResult { index: 0 }));
}

#[test]
fn a_broken_link_or_a_missing_block_is_named() {
    let mut blocks = chain(3, 1);
    blocks.remove(1);
    assert_eq!(
        fault_of(&blocks),
        (
            2,
            BlockFault::Height {
                expected: 2,
                found: 3
            }
        )
    );
    let mut blocks = chain(3, 1);
    let mut header = blocks[2].header;
    header.previous = Digest([9; 32]);
    let commits = blocks[2].commits.clone();
    blocks[2] = CertifiedBlock::new(header, blocks[2].entries.clone(), commits);
    let (height, fault) = fault_of(&blocks);
    assert_eq!(height, 3);
    assert!(matches!(fault, BlockFault::BrokenLink { .. }), "{fault}");
}

#[test]
fn certificates_with_too_few_duplicated_forged_or_foreign_commits_are_refused() {
    let certificate_fault = |commits: Vec<Signed<Commit>>| {
        let mut blocks = chain(2, 1);
        blocks[1].commits = commits;
        match fault_of(&blocks) {
            (2, BlockFault::Certificate(f)) => f,
            other => panic!("expected a certificate fault at block 2, got {other:?}"),
        }
    };
    let digest = chain(2, 1)[1].header.batch_digest;
    assert_eq!(
        certificate_fault(commits(2, digest, &[0, 1])),
        CertificateFault::TooFew {
            distinct: 2,
            needed: 3
        }
    );
    assert_eq!(
        certificate_fault(commits(2, digest, &[0, 1, 1])),
        CertificateFault::Duplicate {
            replica: ReplicaId(1)
        }
    );
    let mut forged = commits(2, digest, &[0, 1]);
    forged.push(KeyPair::from_seed([66; 32]).sign(Commit {
        view: View(0),
        seq: SeqNo(2),
        digest,
        replica: ReplicaId(3),
    }));
    assert!(matches!(
        certificate_fault(forged),
        CertificateFault::Forged { index: 2, .. }
    ));
    assert!(matches!(
        certificate_fault(commits(2, Digest([1; 32]), &[0, 1, 2])),
        CertificateFault::OtherBlock { index: 0, .. }
    ));
    let mut mixed = commits(2, digest, &[0, 1]);
    mixed.push(replica_key(2).sign(Commit {
        view: View(1),
        seq: SeqNo(2),
        digest,
        replica: ReplicaId(2),
    }));
    assert!(matches!(
        certificate_fault(mixed),
        CertificateFault::MixedViews { index: 2, .. }
    ));
}

#[test]
fn an_entry_proves_its_inclusion_and_a_wrong_path_does_not() {
    let blocks = chain(1, 5);
    let block = &blocks[0];
    for index in 0..5 {
        let proof = block.proof(index).expect("an entry");
        assert!(proof.holds());
        let back = EntryProof::from_wire(proof.to_wire()).expect("decodes");
        assert!(back.holds());
        assert_eq!(back.block_hash(), block.hash());
    }
    let mut proof = block.proof(2).expect("an entry");
    proof.path[0].sibling = Digest([0; 32]);
    assert!(!proof.holds());
    let mut proof = block.proof(2).expect("an entry");
    proof.entry = block.entries[3].clone();
    assert!(!proof.holds());
    // The right entry and path, claimed at another position.
    let mut proof = block.proof(2).expect("an entry");
    proof.index = 3;
    assert!(!proof.holds());
    assert!(block.proof(5).is_none());
}

#[test]
fn flipping_any_byte_of_an_encoded_block_is_caught() {
    let blocks = chain(2, 2);
    let encoded = blocks[1].encode();
    for at in 0..encoded.len() {
        let mut bytes = encoded.clone();
        bytes[at] ^= 0x01;
        let refused = match CertifiedBlock::decode(&bytes, 1 << 20) {
            Err(_) => true,
            Ok(block) => verify(&[blocks[0].clone(), block]).is_err(),
        };
        assert!(refused, "a flip at byte {at} went unnoticed");
    }
}

#[test]
fn an_export_reads_back_and_flipping_any_byte_of_it_names_a_block() {
    let blocks = chain(3, 2);
    let mut file = Vec::new();
    for block in &blocks {
        export::append(&mut file, block);
    }
    let read: Vec<_> = export::ExportReader::new(file.clone().into(), 1 << 20)
        .map(|(height, block)| (height, block.expect("a block")))
        .collect();
    assert_eq!(read.len(), 3);
    assert!(
        read.iter()
            .zip(&blocks)
            .all(|((h, a), b)| *h == b.height() && a == b)
    );

    let check = |bytes: Vec<u8>| -> Result<u64, u64> {
        let mut verifier = ChainVerifier::new(&config(), &genesis()).expect("valid keys");
        for (height, block) in export::ExportReader::new(bytes.into(), 1 << 20) {
            let block = block.map_err(|_| height)?;
            verifier.push(&block).map_err(|bad| bad.height)?;
        }
        Ok(verifier.head().0)
    };
    assert_eq!(check(file.clone()), Ok(3));
    let mut first_of_block = Vec::new();
    for at in 0..file.len() {
        let mut bytes = file.clone();
        bytes[at] ^= 0x20;
        match check(bytes) {
            Ok(head) => panic!("a flip at byte {at} went unnoticed (head {head})"),
            Err(height) => {
                if first_of_block.last() != Some(&height) {
                    first_of_block.push(height);
                }
            }
        }
    }
    // Every block was named by some flip, in file order.
    assert_eq!(first_of_block, vec![1, 2, 3]);
}
