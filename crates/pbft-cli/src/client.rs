//! `pbft client`: operations on the replicated key-value store, through the replicas' gRPC API, accepted once
//! f+1 replicas signed the same result.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use pbft_apps::{KvOp, KvResult};
use pbft_client::net::{Connections, NetClient, NetClientConfig};
use pbft_crypto::Signer;
use pbft_node::config::{ClientFile, ClientSetup};
use pbft_types::{Principal, ReplicaId, Request, Timestamp};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The client's configuration file (`client-N.toml`, as `pbft testnet` writes it).
    #[arg(long)]
    config: PathBuf,
    /// How long to wait for f+1 matching replies, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    op: ClientOp,
}

#[derive(Debug, Subcommand)]
enum ClientOp {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (exit status 1 if it is absent).
    Get { key: String },
    /// Remove KEY (exit status 1 if it was absent).
    Delete { key: String },
    /// Print every replica's status (view, last executed sequence, stable checkpoint, peers connected).
    Status,
    /// Print, without sending it, the JSON body of a signed request for `POST /v1/requests` (for curl).
    Request {
        #[command(subcommand)]
        op: RequestOp,
    },
}

#[derive(Debug, Subcommand)]
enum RequestOp {
    /// A request that sets KEY to VALUE.
    Put { key: String, value: String },
    /// A request that reads KEY.
    Get { key: String },
    /// A request that removes KEY.
    Delete { key: String },
}

fn kv_op(op: &RequestOp) -> KvOp {
    match op {
        RequestOp::Put { key, value } => KvOp::Put {
            key: key.clone().into_bytes().into(),
            value: value.clone().into_bytes().into(),
        },
        RequestOp::Get { key } => KvOp::Get {
            key: key.clone().into_bytes().into(),
        },
        RequestOp::Delete { key } => KvOp::Delete {
            key: key.clone().into_bytes().into(),
        },
    }
}

/// The settings of a network client of a client configuration.
fn settings(setup: &ClientSetup, deadline: Duration) -> NetClientConfig {
    NetClientConfig {
        config: setup.cluster.config.clone(),
        id: setup.id,
        key: setup.key.clone(),
        replicas: setup.cluster.addresses.iter().map(|a| a.api).collect(),
        retransmit_after: Duration::from_millis(500),
        deadline,
    }
}

/// The network client of a client configuration.
pub fn connect(setup: &ClientSetup, deadline: Duration) -> Result<NetClient, String> {
    NetClient::new(settings(setup, deadline)).map_err(|e| e.to_string())
}

/// A network client of a client configuration that calls the replicas over `connections`, shared with others.
pub fn connect_shared(
    setup: &ClientSetup,
    deadline: Duration,
    connections: &Connections,
) -> Result<NetClient, String> {
    NetClient::with_connections(settings(setup, deadline), connections).map_err(|e| e.to_string())
}

pub fn run(args: &ClientArgs) -> ExitCode {
    let setup = match ClientFile::load(&args.config) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let op = match &args.op {
        ClientOp::Put { key, value } => RequestOp::Put {
            key: key.clone(),
            value: value.clone(),
        },
        ClientOp::Get { key } => RequestOp::Get { key: key.clone() },
        ClientOp::Delete { key } => RequestOp::Delete { key: key.clone() },
        ClientOp::Request { op } => return print_request(&setup, op),
        ClientOp::Status => return crate::with_runtime(|| status(&setup, args.timeout)),
    };
    crate::with_runtime(|| async move {
        let mut client = match connect(&setup, Duration::from_secs(args.timeout)) {
            Ok(client) => client,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = match client.submit(kv_op(&op).encode()).await {
            Ok(result) => result,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match KvResult::decode(&result) {
            Ok(KvResult::Done) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Ok(KvResult::Value(value)) => {
                println!("{}", String::from_utf8_lossy(&value));
                ExitCode::SUCCESS
            }
            Ok(KvResult::NotFound) => {
                eprintln!("not found");
                ExitCode::from(1)
            }
            Ok(KvResult::Error(reason)) => {
                eprintln!("error: the store refused the operation: {reason}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!(
                    "error: the replicas agreed on a result that is not a key-value result: {e}"
                );
                ExitCode::FAILURE
            }
        }
    })
}

async fn status(setup: &ClientSetup, timeout: u64) -> ExitCode {
    let client = match connect(setup, Duration::from_secs(timeout)) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("replica  view  executed  checkpoint  peers  state");
    let mut reachable = 0;
    for i in 0..setup.cluster.config.n() {
        let replica = ReplicaId(i as u64);
        match client.status(replica).await {
            Ok(s) => {
                reachable += 1;
                let state = if s.changing_view {
                    "changing view"
                } else {
                    "normal"
                };
                println!(
                    "{:>7}  {:>4}  {:>8}  {:>10}  {:>5}  {state}",
                    s.replica, s.view, s.last_executed, s.stable_checkpoint, s.peers_connected
                );
            }
            Err(e) => println!("{i:>7}  unreachable: {e}"),
        }
    }
    if reachable == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_request(setup: &ClientSetup, op: &RequestOp) -> ExitCode {
    let signer = Signer::new(Principal::Client(setup.id), setup.key.clone());
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let signed = signer.sign(Request {
        client: setup.id,
        timestamp: Timestamp(micros),
        operation: kv_op(op).encode(),
    });
    println!(
        "{{\"request\": \"{}\"}}",
        hex::encode(signed.into_signed().encode())
    );
    ExitCode::SUCCESS
}
