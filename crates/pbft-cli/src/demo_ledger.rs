//! `pbft demo --app ledger`: four replicas run the ledger. Transfers commit as blocks, refused ones are
//! recorded too, a backup is stopped while the chain moves past its window and comes back by state transfer and
//! by fetching the blocks it skipped, every replica ends with the same chain, and the chain is exported and
//! verified offline (and refused with one byte flipped).

use std::path::Path;
use std::time::{Duration, Instant};

use pbft_apps::ledger::{CertifiedBlock, LedgerOp, LedgerResult, Transfer};
use pbft_client::net::NetClient;
use pbft_crypto::KeyPair;
use pbft_node::config::{AppKind, ClusterFile, ParamsFile};
use pbft_node::ledger::{block_limit, fetch};
use pbft_node::testnet::{GENESIS_BALANCE, TestnetSpec, write};
use pbft_types::wire;

use crate::client::connect;
use crate::demo::{Cluster, REPLICAS, catch_up, count_errors, free_base_port};
use crate::ledger::{export_chain, ledger_client, submit, verify_chain};

const ACCOUNTS: usize = 4;

/// A paying account: its key and the nonce of its next transfer.
struct Payer {
    key: KeyPair,
    nonce: u64,
}

fn short(hash: impl std::fmt::Display) -> String {
    hash.to_string().chars().take(12).collect()
}

async fn pay(
    client: &mut NetClient,
    payer: &mut Payer,
    to: &KeyPair,
    amount: u64,
) -> Result<LedgerResult, String> {
    let op = LedgerOp::Transfer(
        Transfer {
            from: payer.key.public_key(),
            to: to.public_key(),
            amount,
            nonce: payer.nonce,
        }
        .sign(&payer.key),
    );
    let result = submit(client, op).await?;
    if let LedgerResult::Transfer { .. } = result {
        payer.nonce += 1;
    }
    Ok(result)
}

/// The height of replica `i`'s head, and from which height on it holds every block.
async fn head(url: &str, limit: usize) -> Option<(u64, String, u64)> {
    let mut api = ledger_client(url, limit).await.ok()?;
    let h = api.get_head(wire::HeadQuery {}).await.ok()?.into_inner();
    Some((h.height, hex::encode(&h.hash), h.contiguous_from))
}

/// Transfers round the accounts for `duration`, one client per account (each pays from its own account, so
/// nonces never collide); hands the clients and payers back with how many transfers committed.
async fn load(
    workers: Vec<(NetClient, Payer)>,
    keys: &[KeyPair],
    duration: Duration,
) -> Result<(Vec<(NetClient, Payer)>, u64), String> {
    let until = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let count = workers.len();
    for (index, (mut client, mut payer)) in workers.into_iter().enumerate() {
        let to = keys[(index + 1) % keys.len()].clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                match pay(&mut client, &mut payer, &to, 1).await? {
                    LedgerResult::Transfer { .. } => done += 1,
                    other => return Err(format!("a transfer of 1 was not made: {other}")),
                }
            }
            Ok::<_, String>((index, client, payer, done))
        });
    }
    let mut back: Vec<Option<(NetClient, Payer)>> = (0..count).map(|_| None).collect();
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        let (index, client, payer, done) = joined.map_err(|e| e.to_string())??;
        back[index] = Some((client, payer));
        total += done;
    }
    Ok((back.into_iter().flatten().collect(), total))
}

pub async fn demo(scene_seconds: u64, dir: &Path) -> Result<(), String> {
    println!(
        "PBFT ledger demo: four replicas (tolerating one faulty one) keep a hash-chained ledger. Every \
         executed batch becomes a block carrying the signed COMMITs of 2f+1 = 3 replicas, so anyone with the \
         cluster's public keys can check it offline.\n"
    );
    let base_port = free_base_port()?;
    // A short checkpoint interval and window, so that a replica stopped for a few seconds falls behind the
    // window and has to catch up by state transfer.
    let params = ParamsFile {
        checkpoint_interval: Some(16),
        window: Some(32),
        ..ParamsFile::default()
    };
    let net = write(
        &TestnetSpec {
            replicas: REPLICAS,
            clients: ACCOUNTS,
            hosts: Vec::new(),
            base_port,
            params,
            app: AppKind::Ledger,
            accounts: ACCOUNTS,
        },
        dir,
    )
    .map_err(|e| e.to_string())?;
    let cluster_config = ClusterFile::load(&net.cluster_file).map_err(|e| e.to_string())?;
    let genesis = match &cluster_config.app {
        pbft_node::config::App::Ledger(g) => g.clone(),
        pbft_node::config::App::Kv => return Err("the testnet is not a ledger".into()),
    };
    let limit = block_limit(cluster_config.config.params.max_message_size);
    let keys = net
        .account_files
        .iter()
        .map(|p| KeyPair::load(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "1. Made a ledger testnet in {}: replica and client keys, and {ACCOUNTS} accounts (ed25519 keys) that \
         each start with {GENESIS_BALANCE} in the genesis written into cluster.toml.",
        dir.display()
    );
    let setups = net.client_setups().map_err(|e| e.to_string())?;
    let mut cluster = Cluster::launch(dir, &setups[0]).await?;
    println!("2. Started {REPLICAS} replicas, each running the ledger.\n");
    let mut workers = setups
        .iter()
        .zip(&keys)
        .map(|(s, k)| {
            let payer = Payer {
                key: k.clone(),
                nonce: 0,
            };
            Ok((connect(s, Duration::from_secs(30))?, payer))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let url = |i: usize| format!("http://127.0.0.1:{}", base_port as usize + 100 + i);

    println!(
        "Scene 1: transfers, signed by the paying account and accepted once f+1 = 2 replicas sent the same \
         signed result."
    );
    let (c, p) = &mut workers[0];
    let r = pay(c, p, &keys[1], 250).await?;
    println!("   account 0 pays account 1 250:               {r}");
    let next_nonce = p.nonce;
    let (c, p) = &mut workers[1];
    let r = pay(c, p, &keys[2], 75).await?;
    println!("   account 1 pays account 2 75:                {r}");
    let r = pay(c, p, &keys[3], 10 * GENESIS_BALANCE).await?;
    println!("   account 1 pays account 3 10x its balance:   {r}");
    let forged = LedgerOp::Transfer(
        Transfer {
            from: keys[0].public_key(),
            to: keys[2].public_key(),
            amount: 1000,
            nonce: next_nonce,
        }
        .sign(&keys[2]),
    );
    let r = submit(&mut workers[2].0, forged).await?;
    println!("   account 2 signs a transfer from account 0:  {r}");
    let (height, _, _) = head(&url(0), limit)
        .await
        .ok_or("replica 0 does not answer")?;
    println!("   The chain is at block {height}. Its last blocks, as replica 0 serves them:");
    let from = height.saturating_sub(3).max(1);
    for block in fetch(&url(0), from, height, limit).await? {
        describe(&block);
    }

    println!(
        "\nScene 2: {ACCOUNTS} clients make transfers for {scene_seconds}s while replica 3, a backup, is \
         stopped."
    );
    cluster.stop(3).await;
    let (back, done) = load(workers, &keys, Duration::from_secs(scene_seconds)).await?;
    workers = back;
    let (height, _, _) = head(&url(0), limit)
        .await
        .ok_or("replica 0 does not answer")?;
    println!("   {done} transfers committed; the chain is at block {height}.");

    println!(
        "\nScene 3: replica 3 comes back. The chain moved past its window, so it installs a checkpoint that \
         2f+1 replicas signed, then fetches the blocks it skipped from its peers, taking each only if its hash \
         is the one the next block names and its certificate holds."
    );
    cluster.start(3)?;
    let started = Instant::now();
    // Some traffic, so that the others tell it where they are.
    let (back, _) = load(workers, &keys, Duration::from_millis(500)).await?;
    drop(back);
    catch_up(&mut cluster, 3).await?;
    let give_up = Instant::now() + Duration::from_secs(60);
    let top = loop {
        let mut heads = Vec::new();
        for i in 0..REPLICAS {
            heads.push(head(&url(i), limit).await);
        }
        let first = heads[0].clone();
        if let Some((h, hash, 1)) = &first
            && heads.iter().all(|x| {
                x.as_ref()
                    .is_some_and(|x| x.0 == *h && x.1 == *hash && x.2 == 1)
            })
        {
            break (*h, hash.clone());
        }
        if Instant::now() > give_up {
            return Err(format!("the replicas' chains did not meet: {heads:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "   Replica 3 holds the whole chain again after {:.1?}.",
        started.elapsed()
    );
    let mut chains = Vec::new();
    for i in 0..REPLICAS {
        let mut hashes = Vec::new();
        let mut from = 1;
        while from <= top.0 {
            let blocks = fetch(&url(i), from, top.0, limit).await?;
            if blocks.is_empty() {
                return Err(format!("replica {i} sent no block from {from}"));
            }
            from += blocks.len() as u64;
            hashes.extend(blocks.iter().map(CertifiedBlock::hash));
        }
        chains.push(hashes);
    }
    if chains.iter().any(|c| *c != chains[0]) {
        return Err("the replicas' chains differ".into());
    }
    println!(
        "   All {REPLICAS} replicas hold the same {} blocks, block for block; head {}.",
        top.0,
        short(&top.1)
    );

    println!("\nScene 4: the chain is exported from replica 3 and checked offline.");
    let (file, count) = export_chain(&cluster_config, &url(3)).await?;
    let export = dir.join("chain.bin");
    std::fs::write(&export, &file).map_err(|e| format!("{}: {e}", export.display()))?;
    let export_text = export.display().to_string();
    let verified = verify_chain(&cluster_config, &genesis, &export_text).await?;
    println!(
        "   pbft ledger export wrote {count} blocks ({} bytes); pbft ledger verify: {} blocks and {} requests \
         check out (certificates, Merkle roots, links, and a replay of every transfer), head {}.",
        file.len(),
        verified.height,
        verified.entries,
        short(verified.head)
    );
    let mut tampered = file.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    let bad = dir.join("chain-tampered.bin");
    std::fs::write(&bad, &tampered).map_err(|e| format!("{}: {e}", bad.display()))?;
    match verify_chain(&cluster_config, &genesis, &bad.display().to_string()).await {
        Ok(_) => return Err("a tampered chain passed verification".into()),
        Err(e) => println!("   With byte {at} flipped, verify says: {e}"),
    }

    cluster.check_alive()?;
    cluster.stop_all().await;
    let errors = count_errors(dir);
    if errors > 0 {
        return Err(format!("the replica logs hold {errors} ERROR lines"));
    }
    let d = dir.display();
    println!(
        "\nWith --keep, the cluster's directory stays, and you can check its chain yourself:\n   pbft ledger \
         export --cluster {d}/cluster.toml --from {d}/data/replica-0 --out chain.bin\n   pbft ledger verify \
         --cluster {d}/cluster.toml --from chain.bin\nFor a cluster of your own: `pbft testnet --app ledger --out \
         DIR`, start the replicas, then `pbft ledger transfer`, `block`, `tx`, `export` and `verify`.\n\nAll \
         replica processes are stopped. No errors."
    );
    Ok(())
}

fn describe(block: &CertifiedBlock) {
    let certified: Vec<String> = block
        .commits
        .iter()
        .map(|c| c.value().replica.0.to_string())
        .collect();
    println!(
        "   block {:>3}  hash {}  previous {}  {} request(s)  certified by replicas {} in view {}",
        block.height(),
        short(block.hash()),
        short(block.header.previous),
        block.entries.len(),
        certified.join(","),
        block.view().map_or(0, |v| v.0)
    );
    for entry in &block.entries {
        if let Some(result) = entry.result.as_ref().and_then(|r| LedgerResult::decode(r)) {
            println!("              -> {result}");
        }
    }
}
