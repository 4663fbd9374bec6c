//! The ledger with real `pbft replica` processes: transfers commit as blocks, a replica that was down while the
//! chain moved on past its window catches up by state transfer and fetches the blocks it skipped, every replica
//! ends with the same chain, and `pbft ledger export` / `verify` accept it and refuse it with one byte flipped.

#![allow(clippy::unwrap_used)] // tests

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, PATIENCE, PBFT, http};
use pbft_apps::ledger::{LedgerOp, LedgerResult, Transfer};
use pbft_crypto::KeyPair;
use pbft_node::config::{AppKind, ParamsFile};

/// Port ranges (e2e.rs uses 21000..23400, durability.rs 24000..25800).
const CHAIN: u16 = 26000;
const KILLED: u16 = 26300;

fn head(cluster: &Cluster, i: usize) -> Option<(u64, String, u64)> {
    let (status, body) = http(cluster.http_addr(i), "GET", "/v1/ledger/head", None);
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        v["height"].as_u64()?,
        v["hash"].as_str()?.to_string(),
        v["contiguous_from"].as_u64()?,
    ))
}

/// Every block hash replica `i` holds from 1 to `to`, in order.
fn hashes(cluster: &Cluster, i: usize, to: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 1;
    while from <= to {
        let path = format!("/v1/ledger/blocks?from={from}&to={to}");
        let (status, body) = http(cluster.http_addr(i), "GET", &path, None);
        assert_eq!(status, 200, "replica {i}: {body}");
        let blocks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert!(!blocks.is_empty(), "replica {i} has no block from {from}");
        for b in blocks {
            assert_eq!(b["height"].as_u64(), Some(from), "replica {i}: a gap");
            out.push(b["hash"].as_str().unwrap().to_string());
            from += 1;
        }
    }
    out
}

fn pbft(args: &[&str]) -> (bool, String) {
    let out = Command::new(PBFT).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn chains_agree_after_a_restart_past_the_window_and_verify_offline() {
    // A small window, so that a replica down for a few dozen batches must catch up by state transfer.
    let params = ParamsFile {
        checkpoint_interval: Some(4),
        window: Some(8),
        ..ParamsFile::default()
    };
    let mut cluster = Cluster::create_app(CHAIN, 1, params, AppKind::Ledger);
    for i in 0..4 {
        cluster.spawn(i);
    }
    cluster.wait_connected();
    let accounts: Vec<KeyPair> = (0..4)
        .map(|j| KeyPair::load(&cluster.path().join(format!("account-{j}.key"))).unwrap())
        .collect();
    let mut client = cluster.client();
    let mut nonces = [0u64; 4];
    let mut transfer = |cluster: &Cluster, from: usize, to: usize, amount: u64| {
        let op = LedgerOp::Transfer(
            Transfer {
                from: accounts[from].public_key(),
                to: accounts[to].public_key(),
                amount,
                nonce: nonces[from],
            }
            .sign(&accounts[from]),
        );
        let result = cluster.rt.block_on(client.submit(op.encode())).unwrap();
        match LedgerResult::decode(&result) {
            Some(LedgerResult::Transfer { .. }) => nonces[from] += 1,
            other => panic!("transfer {from} -> {to}: {other:?}"),
        }
    };
    for k in 0..6 {
        transfer(&cluster, k % 4, (k + 1) % 4, 10 + k as u64);
    }
    cluster.kill(3);
    for k in 0..30 {
        transfer(&cluster, k % 3, (k + 1) % 3, 1);
    }
    cluster.spawn(3);
    cluster.wait_connected();
    // Traffic after the restart shows the replica where the others are.
    for k in 0..6 {
        transfer(&cluster, k % 4, (k + 2) % 4, 2);
    }

    // Replica 3 reaches the others' head and holds every block below it.
    let top = chains_meet(&cluster);
    let log = cluster.log(3);
    assert!(
        log.contains("installed the state of a certified checkpoint"),
        "replica 3 was expected to catch up by state transfer:\n{log}"
    );
    assert!(
        log.contains("fetched blocks skipped by state transfer"),
        "replica 3 was expected to fetch the blocks it skipped:\n{log}"
    );
    let reference = hashes(&cluster, 0, top);
    for i in 1..4 {
        assert_eq!(hashes(&cluster, i, top), reference, "replica {i}'s chain");
    }

    // The query API: a block by hash, an entry with a Merkle path that holds, an account's balance.
    let get = |i: usize, path: &str| {
        let (status, body) = http(cluster.http_addr(i), "GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let block = get(3, &format!("/v1/ledger/blocks/{}", reference[9]));
    assert_eq!(block["height"].as_u64(), Some(10));
    let digest = block["entries"][0]["request_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let proof = get(3, &format!("/v1/ledger/transactions/{digest}"));
    assert_eq!(proof["height"].as_u64(), Some(10));
    assert_eq!(proof["holds"].as_bool(), Some(true));
    assert_eq!(proof["block_hash"].as_str(), Some(reference[9].as_str()));
    let latest = get(1, "/v1/ledger/blocks/latest");
    assert_eq!(
        latest["hash"].as_str(),
        reference.last().map(String::as_str)
    );
    let (status, _) = http(
        cluster.http_addr(0),
        "GET",
        "/v1/ledger/blocks/not-a-block",
        None,
    );
    assert_eq!(status, 400);
    // Every transfer kept the total; the genesis gave each of the 4 accounts the same balance.
    let total: u64 = accounts
        .iter()
        .map(|k| {
            let a = get(
                3,
                &format!("/v1/ledger/accounts/{}", hex::encode(k.public_key())),
            );
            a["balance"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(total, 4 * pbft_node::testnet::GENESIS_BALANCE);

    // Export from the restarted replica; verify accepts it and refuses it with any one byte flipped.
    let cluster_file = cluster.path().join("cluster.toml");
    let cluster_file = cluster_file.to_str().unwrap();
    let export = cluster.path().join("chain.bin");
    let url = format!("http://127.0.0.1:{}", CHAIN + 100 + 3);
    let (ok, out) = pbft(&[
        "ledger",
        "export",
        "--cluster",
        cluster_file,
        "--from",
        &url,
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    // `pbft ledger verify --cluster ... --from FROM [--head HEAD]`.
    let verify = |from: &std::path::Path, head: Option<&str>| {
        let mut args = vec![
            "ledger",
            "verify",
            "--cluster",
            cluster_file,
            "--from",
            from.to_str().unwrap(),
        ];
        args.extend(head.map(|h| ["--head", h]).into_iter().flatten());
        pbft(&args)
    };
    let (ok, out) = verify(&export, None);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{top} blocks")), "{out}");
    let (ok, out) = verify(&export, reference.last().map(String::as_str));
    assert!(ok, "{out}");
    let (ok, out) = verify(&export, Some(&reference[0]));
    assert!(!ok && out.contains("does not end with the head"), "{out}");
    let bytes = std::fs::read(&export).unwrap();
    let flipped = cluster.path().join("flipped.bin");
    for at in [0, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let mut copy = bytes.clone();
        copy[at] ^= 0x04;
        std::fs::write(&flipped, &copy).unwrap();
        let (ok, out) = verify(&flipped, None);
        assert!(!ok, "a flip at byte {at} was accepted: {out}");
        assert!(out.contains("NOT valid: block "), "{out}");
    }

    // A stopped replica's data directory verifies too.
    cluster.kill(2);
    let (ok, out) = verify(&cluster.path().join("data/replica-2"), None);
    assert!(ok, "{out}");
}

/// Waits until every replica's head is the same height and each holds every block below it; returns the height.
fn chains_meet(cluster: &Cluster) -> u64 {
    let start = Instant::now();
    loop {
        let heads: Vec<_> = (0..4).map(|i| head(cluster, i)).collect();
        let top = heads[0].as_ref().map(|h| h.0).unwrap_or(0);
        if top > 0
            && heads
                .iter()
                .all(|h| h.as_ref().is_some_and(|h| h.0 == top && h.2 == 1))
        {
            return top;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the replicas' chains did not meet: {heads:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_replica_killed_within_the_window_keeps_its_blocks_on_disk() {
    // Blocks are archived in the same write as the journal entries of their batch: a replica that restarts
    // from its journal has every block it executed and fetches none.
    let mut cluster = Cluster::create_app(KILLED, 1, ParamsFile::default(), AppKind::Ledger);
    for i in 0..4 {
        cluster.spawn(i);
    }
    cluster.wait_connected();
    let payer = KeyPair::load(&cluster.path().join("account-0.key")).unwrap();
    let payee = KeyPair::load(&cluster.path().join("account-1.key")).unwrap();
    let mut client = cluster.client();
    let mut nonce = 0;
    let mut pay = |cluster: &Cluster| {
        let op = LedgerOp::Transfer(
            Transfer {
                from: payer.public_key(),
                to: payee.public_key(),
                amount: 1,
                nonce,
            }
            .sign(&payer),
        );
        let result = cluster.rt.block_on(client.submit(op.encode())).unwrap();
        assert!(matches!(
            LedgerResult::decode(&result),
            Some(LedgerResult::Transfer { .. })
        ));
        nonce += 1;
    };
    for _ in 0..20 {
        pay(&cluster);
    }
    cluster.kill(1);
    for _ in 0..10 {
        pay(&cluster);
    }
    cluster.spawn(1);
    cluster.wait_connected();
    for _ in 0..5 {
        pay(&cluster);
    }
    let top = chains_meet(&cluster);
    let log = cluster.log(1);
    assert!(log.contains("recovered from the journal"), "{log}");
    assert!(
        !log.contains("fetched blocks skipped by state transfer"),
        "replica 1 had to fetch blocks it had executed:\n{log}"
    );
    let reference = hashes(&cluster, 0, top);
    assert_eq!(hashes(&cluster, 1, top), reference);
}

#[test]
fn the_ledger_demo_runs_to_the_end_without_errors() {
    let (ok, out) = pbft(&["demo", "--app", "ledger", "--scene-seconds", "1"]);
    assert!(ok, "{out}");
    for expected in [
        "refused (insufficient funds)",
        "refused (bad signature)",
        "block for block",
        "the chain is NOT valid: block ",
        "No errors.",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}
