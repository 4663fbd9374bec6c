//! `pbft ledger`: transfers and balances through the protocol, blocks and proofs from a replica, and exporting
//! and verifying the whole chain offline against the cluster's public keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use pbft_apps::Genesis;
use pbft_apps::ledger::export::{ExportReader, append};
use pbft_apps::ledger::{
    AccountKey, BlockFault, CertifiedBlock, ChainVerifier, EntryProof, LedgerOp, LedgerResult,
    Transfer,
};
use pbft_client::net::NetClient;
use pbft_crypto::{KeyPair, Keyring};
use pbft_node::config::{App, Cluster, ClusterFile};
use pbft_node::ledger::{MAX_BLOCKS_PER_QUERY, RESPONSE_BYTES, block_limit, fetch};
use pbft_store::Archive;
use pbft_types::wire;

#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Transfer AMOUNT from the account whose key is in --from to --to, through the protocol.
    Transfer {
        /// The client's configuration file (`client-N.toml`).
        #[arg(long)]
        config: PathBuf,
        /// The paying account's key file (`account-J.key`).
        #[arg(long)]
        from: PathBuf,
        /// The receiving account: 64 hex digits, or a key file.
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        /// The paying account's nonce (its transfers so far); asked of the cluster when left out.
        #[arg(long)]
        nonce: Option<u64>,
    },
    /// Print an account's balance and nonce, read through the protocol (f+1 replicas vouch for it).
    Balance {
        #[arg(long)]
        config: PathBuf,
        /// 64 hex digits, or a key file.
        account: String,
    },
    /// Print a block from a replica (`latest`, a height or a hash) as JSON, after checking its certificate.
    Block {
        #[arg(long)]
        cluster: PathBuf,
        /// The replica to ask.
        #[arg(long, default_value_t = 0)]
        replica: usize,
        #[arg(default_value = "latest")]
        block: String,
    },
    /// Print an executed request with its Merkle path from a replica, and check the path and the block's
    /// certificate.
    Tx {
        #[arg(long)]
        cluster: PathBuf,
        #[arg(long, default_value_t = 0)]
        replica: usize,
        /// The request digest (SHA-256 of the signed request body), 64 hex digits.
        digest: String,
    },
    /// Write the chain to FILE, as `pbft ledger verify --from FILE` reads it.
    Export {
        #[arg(long)]
        cluster: PathBuf,
        /// A replica's gRPC API (`http://HOST:PORT`) or the data directory of a stopped replica.
        #[arg(long)]
        from: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a whole chain against the cluster's public keys and genesis: every commit certificate, Merkle root
    /// and link, and, by replaying it, every result and state root. Prints the first bad block, if any.
    Verify {
        #[arg(long)]
        cluster: PathBuf,
        /// An export file, a replica's gRPC API (`http://HOST:PORT`), or a stopped replica's data directory.
        #[arg(long)]
        from: String,
        /// The hash the chain must end with (64 hex digits; `pbft ledger block latest` on replicas you trust
        /// prints it). Without it, a chain cut short also verifies: verify checks what is there, not what is not.
        #[arg(long)]
        head: Option<String>,
    },
}

pub fn run(args: &LedgerArgs) -> ExitCode {
    crate::with_runtime(|| async {
        let outcome = match &args.command {
            LedgerCommand::Transfer {
                config,
                from,
                to,
                amount,
                nonce,
            } => transfer(config, from, to, *amount, *nonce).await,
            LedgerCommand::Balance { config, account } => balance(config, account).await,
            LedgerCommand::Block {
                cluster,
                replica,
                block,
            } => show_block(cluster, *replica, block).await,
            LedgerCommand::Tx {
                cluster,
                replica,
                digest,
            } => show_entry(cluster, *replica, digest).await,
            LedgerCommand::Export { cluster, from, out } => export(cluster, from, out).await,
            LedgerCommand::Verify {
                cluster,
                from,
                head,
            } => verify(cluster, from, head.as_deref()).await,
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// An account named by 64 hex digits or by a key file.
fn account(text: &str) -> Result<AccountKey, String> {
    if let Some(key) = hex::decode(text)
        .ok()
        .and_then(|b| AccountKey::try_from(b).ok())
    {
        return Ok(key);
    }
    KeyPair::load(Path::new(text))
        .map(|k| k.public_key())
        .map_err(|e| format!("{text} is neither 64 hex digits nor a key file: {e}"))
}

fn client(config: &Path) -> Result<NetClient, String> {
    let setup = pbft_node::config::ClientFile::load(config).map_err(|e| e.to_string())?;
    crate::client::connect(&setup, Duration::from_secs(30))
}

pub(crate) async fn submit(client: &mut NetClient, op: LedgerOp) -> Result<LedgerResult, String> {
    let result = client
        .submit(op.encode())
        .await
        .map_err(|e| e.to_string())?;
    LedgerResult::decode(&result).ok_or_else(|| {
        "the replicas agreed on a result that is not a ledger result: is this a ledger cluster?"
            .to_string()
    })
}

async fn transfer(
    config: &Path,
    from: &Path,
    to: &str,
    amount: u64,
    nonce: Option<u64>,
) -> Result<(), String> {
    let key = KeyPair::load(from).map_err(|e| e.to_string())?;
    let to = account(to)?;
    let mut client = client(config)?;
    let nonce = match nonce {
        Some(n) => n,
        None => match submit(
            &mut client,
            LedgerOp::Balance {
                account: key.public_key(),
            },
        )
        .await?
        {
            LedgerResult::Balance { state, .. } => state.nonce,
            other => return Err(format!("asked for the nonce, got: {other}")),
        },
    };
    let op = LedgerOp::Transfer(
        Transfer {
            from: key.public_key(),
            to,
            amount,
            nonce,
        }
        .sign(&key),
    );
    match submit(&mut client, op).await? {
        LedgerResult::Refused(refusal) => Err(refusal.to_string()),
        result => {
            println!("{result}");
            Ok(())
        }
    }
}

async fn balance(config: &Path, text: &str) -> Result<(), String> {
    let account = account(text)?;
    let mut client = client(config)?;
    println!(
        "{}",
        submit(&mut client, LedgerOp::Balance { account }).await?
    );
    Ok(())
}

/// The cluster file, which must describe a ledger cluster, and its genesis.
pub(crate) fn ledger_cluster(path: &Path) -> Result<(Cluster, Genesis), String> {
    let cluster = ClusterFile::load(path).map_err(|e| e.to_string())?;
    match &cluster.app {
        App::Ledger(genesis) => {
            let genesis = genesis.clone();
            Ok((cluster, genesis))
        }
        App::Kv => Err(format!(
            "{} describes a key-value cluster, not a ledger",
            path.display()
        )),
    }
}

fn api_url(cluster: &Cluster, replica: usize) -> Result<String, String> {
    cluster
        .addresses
        .get(replica)
        .map(|a| format!("http://{}", a.api))
        .ok_or_else(|| format!("the cluster has no replica {replica}"))
}

pub(crate) async fn ledger_client(
    url: &str,
    limit: usize,
) -> Result<wire::ledger_api_client::LedgerApiClient<tonic::transport::Channel>, String> {
    Ok(
        wire::ledger_api_client::LedgerApiClient::connect(url.to_string())
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .max_decoding_message_size(limit),
    )
}

fn check_block(cluster: &Cluster, block: &CertifiedBlock) -> String {
    let keyring = match Keyring::new(&cluster.config) {
        Ok(k) => k,
        Err(e) => return format!("cannot check: {e}"),
    };
    match block.check(&keyring, cluster.config.quorum()) {
        Ok(view) => format!(
            "certificate holds: {} replicas committed it in view {view}",
            block.commits.len()
        ),
        Err(fault) => format!("DOES NOT HOLD: {fault}"),
    }
}

async fn show_block(path: &Path, replica: usize, id: &str) -> Result<(), String> {
    let (cluster, _) = ledger_cluster(path)?;
    let url = api_url(&cluster, replica)?;
    let limit = block_limit(cluster.config.params.max_message_size);
    let mut api = ledger_client(&url, limit).await?;
    let block = if let Ok(height) = id.parse::<u64>() {
        fetch(&url, height, height, limit).await?.pop()
    } else if id == "latest" {
        let head = api
            .get_head(wire::HeadQuery {})
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        fetch(&url, head.height, head.height, limit).await?.pop()
    } else {
        let hash =
            hex::decode(id).map_err(|_| format!("{id} is not a height, latest or a hash"))?;
        let block = api
            .get_block_by_hash(wire::BlockHash { hash: hash.into() })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        Some(CertifiedBlock::from_wire(block).map_err(|e| e.to_string())?)
    };
    let block = block.ok_or_else(|| format!("replica {replica} has no block {id}"))?;
    // The replica is not trusted to answer the question asked: a faulty one could send another valid block.
    let answers = match id.parse::<u64>() {
        Ok(height) => block.height() == height,
        Err(_) if id == "latest" => true,
        Err(_) => block.hash().to_string() == id.to_lowercase(),
    };
    if !answers {
        return Err(format!(
            "replica {replica} answered with block {} ({}), not block {id}",
            block.height(),
            block.hash()
        ));
    }
    let body = pbft_node::http::block_body(&block);
    println!(
        "{}",
        serde_json::to_string_pretty(&body).map_err(|e| e.to_string())?
    );
    eprintln!("{}", check_block(&cluster, &block));
    Ok(())
}

async fn show_entry(path: &Path, replica: usize, digest: &str) -> Result<(), String> {
    let (cluster, _) = ledger_cluster(path)?;
    let url = api_url(&cluster, replica)?;
    let limit = block_limit(cluster.config.params.max_message_size);
    let digest = hex::decode(digest).map_err(|_| "the digest must be 64 hex digits".to_string())?;
    let mut api = ledger_client(&url, limit).await?;
    let proof = api
        .get_entry(wire::EntryQuery {
            request_digest: digest.clone().into(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let proof = EntryProof::from_wire(proof).map_err(|e| e.to_string())?;
    if proof.entry.request_digest().0[..] != digest[..] {
        return Err(format!(
            "replica {replica} answered with request {}, not the one asked for",
            proof.entry.request_digest()
        ));
    }
    let height = proof.header.height;
    println!(
        "request {} is entry {} of block {height} ({})",
        proof.entry.request_digest(),
        proof.index,
        proof.block_hash()
    );
    if let Some(result) = proof
        .entry
        .result
        .as_ref()
        .and_then(|r| LedgerResult::decode(r))
    {
        println!("result: {result}");
    }
    for (i, step) in proof.path.iter().enumerate() {
        let side = if step.sibling_on_left {
            "left"
        } else {
            "right"
        };
        println!("  step {i}: sibling {} on the {side}", step.sibling);
    }
    if !proof.holds() {
        return Err("the Merkle path does not lead to the block's entries root".into());
    }
    println!("the Merkle path leads to the block's entries root");
    let block = fetch(&url, height, height, limit)
        .await?
        .pop()
        .ok_or_else(|| format!("replica {replica} has no block {height}"))?;
    if block.hash() != proof.block_hash() {
        return Err(format!("block {height} is not the block the proof names"));
    }
    println!("block {height}: {}", check_block(&cluster, &block));
    Ok(())
}

/// Where a chain is read from.
enum Source {
    /// A replica's gRPC API.
    Url { url: String, head: u64 },
    /// A stopped replica's database.
    Archive { archive: Archive, head: u64 },
    /// An export: length-delimited `CertifiedBlock`s, in height order.
    File(Bytes),
}

/// A block, or why the bytes at its place are not one.
type Read = Result<CertifiedBlock, BlockFault>;

impl Source {
    async fn open(from: &str, limit: usize) -> Result<Source, String> {
        if from.starts_with("http://") || from.starts_with("https://") {
            let head = ledger_client(from, limit)
                .await?
                .get_head(wire::HeadQuery {})
                .await
                .map_err(|e| format!("{from}: {}", e.message()))?
                .into_inner();
            if head.contiguous_from > 1 && head.height > 0 {
                return Err(format!(
                    "{from} holds blocks {}..={} only (it is still fetching the ones it skipped by state \
                     transfer): try again shortly, or another replica",
                    head.contiguous_from, head.height
                ));
            }
            return Ok(Source::Url {
                url: from.to_string(),
                head: head.height,
            });
        }
        let path = Path::new(from);
        if path.is_dir() {
            let databases: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{from}: {e}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "redb"))
                .collect();
            let [db] = databases.as_slice() else {
                return Err(format!(
                    "{from} holds {} replica databases (replica-N.redb); give the data directory of one replica",
                    databases.len()
                ));
            };
            let archive = Archive::open_existing(db).map_err(|e| {
                format!("{e} (a running replica keeps its database open: use its gRPC API, http://HOST:PORT)")
            })?;
            let head = archive.last().map_err(|e| e.to_string())?.unwrap_or(0);
            return Ok(Source::Archive { archive, head });
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{from}: {e}"))?;
        Ok(Source::File(bytes.into()))
    }

    /// Reads every block, in order, handing each to `f` until it says stop (returns false).
    async fn each(self, limit: usize, mut f: impl FnMut(u64, Read) -> bool) -> Result<(), String> {
        let chunk = MAX_BLOCKS_PER_QUERY as u64;
        match self {
            Source::Url { url, head } => {
                let mut from = 1;
                while from <= head {
                    let to = head.min(from + chunk - 1);
                    let blocks = fetch(&url, from, to, limit).await?;
                    if blocks.is_empty() {
                        return Err(format!("{url} sent no blocks for {from}..={to}"));
                    }
                    for block in blocks {
                        from = block.height() + 1;
                        if !f(block.height(), Ok(block)) {
                            return Ok(());
                        }
                    }
                }
            }
            Source::Archive { archive, head } => {
                let mut from = 1;
                while from <= head {
                    let items = archive
                        .range(from, head, MAX_BLOCKS_PER_QUERY, RESPONSE_BYTES)
                        .map_err(|e| e.to_string())?;
                    for (height, bytes) in items {
                        from = height + 1;
                        if !f(height, CertifiedBlock::decode(&bytes, limit)) {
                            return Ok(());
                        }
                    }
                }
            }
            Source::File(bytes) => {
                for (height, read) in ExportReader::new(bytes, limit) {
                    if !f(height, read) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The chain read from `from` (see `Source::open`), as an export file's bytes, and how many blocks it holds.
pub(crate) async fn export_chain(cluster: &Cluster, from: &str) -> Result<(Vec<u8>, u64), String> {
    let limit = block_limit(cluster.config.params.max_message_size);
    let source = Source::open(from, limit).await?;
    let mut file = Vec::new();
    let mut count = 0u64;
    let mut failure = None;
    source
        .each(limit, |height, read| match read {
            Ok(block) => {
                append(&mut file, &block);
                count += 1;
                true
            }
            Err(fault) => {
                failure = Some(format!("block {height}: {fault}"));
                false
            }
        })
        .await?;
    match failure {
        Some(failure) => Err(failure),
        None => Ok((file, count)),
    }
}

async fn export(path: &Path, from: &str, out: &Path) -> Result<(), String> {
    let (cluster, _) = ledger_cluster(path)?;
    let (file, count) = export_chain(&cluster, from).await?;
    std::fs::write(out, &file).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "exported {count} blocks ({} bytes) to {}",
        file.len(),
        out.display()
    );
    Ok(())
}

/// A chain that verified: its height, head hash and number of requests.
pub(crate) struct Verified {
    pub height: u64,
    pub head: pbft_types::Digest,
    pub entries: usize,
}

/// Checks the chain read from `from`; the error names the first bad block.
pub(crate) async fn verify_chain(
    cluster: &Cluster,
    genesis: &Genesis,
    from: &str,
) -> Result<Verified, String> {
    let limit = block_limit(cluster.config.params.max_message_size);
    let mut verifier = ChainVerifier::new(&cluster.config, genesis).map_err(|e| e.to_string())?;
    let source = Source::open(from, limit).await?;
    let mut bad = None;
    let mut entries = 0usize;
    source
        .each(limit, |height, read| {
            let outcome = read
                .map_err(|fault| format!("block {height}: {fault}"))
                .and_then(|block| {
                    entries += block.entries.len();
                    verifier.push(&block).map_err(|e| e.to_string())
                });
            match outcome {
                Ok(_) => true,
                Err(e) => {
                    bad = Some(e);
                    false
                }
            }
        })
        .await?;
    let (height, head) = verifier.head();
    match bad {
        Some(bad) => Err(format!(
            "the chain is NOT valid: {bad} (blocks 1..={height} are valid)"
        )),
        None => Ok(Verified {
            height,
            head,
            entries,
        }),
    }
}

async fn verify(path: &Path, from: &str, head: Option<&str>) -> Result<(), String> {
    let (cluster, genesis) = ledger_cluster(path)?;
    let v = verify_chain(&cluster, &genesis, from).await?;
    if let Some(head) = head
        && v.head.to_string() != head.to_lowercase()
    {
        return Err(format!(
            "the chain is valid up to block {} (hash {}), but it does not end with the head {head} given",
            v.height, v.head
        ));
    }
    println!(
        "the chain is valid: {} blocks, {} requests; every commit certificate holds ({} of {} replicas), every \
         Merkle root and link, and replaying it gives every result and state root",
        v.height,
        v.entries,
        cluster.config.quorum(),
        cluster.config.n()
    );
    println!("head: block {}, hash {}", v.height, v.head);
    if head.is_none() {
        println!(
            "(a chain cut short verifies too: pass --head with the latest hash from replicas you trust to rule \
             that out)"
        );
    }
    Ok(())
}
