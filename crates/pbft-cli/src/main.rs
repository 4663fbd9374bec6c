//! `pbft`: the command-line tool of the PBFT replication system.

mod bench;
mod client;
mod demo;
mod demo_ledger;
mod keygen;
mod ledger;
mod replica;
mod sim;
mod testnet;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pbft",
    version,
    about = "PBFT (Castro and Liskov) Byzantine fault tolerant replication"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a 4-replica cluster on this machine, run a client workload, stop a backup and then the primary,
    /// bring them back, and show that the cluster kept committing. Needs no arguments.
    Demo(demo::DemoArgs),
    /// Run the deterministic simulator over many seeds and check the protocol's invariants.
    Sim(sim::SimArgs),
    /// Make an ed25519 key pair: the secret in a file, the public key on standard output.
    Keygen(keygen::KeygenArgs),
    /// Write keys and configuration files for a cluster (loopback by default, other hosts by flag).
    Testnet(testnet::TestnetArgs),
    /// Run one replica (its transport to the others, the protocol, the key-value store, the gRPC and HTTP APIs).
    Replica(replica::ReplicaArgs),
    /// Measure a cluster under load: throughput, latency percentiles, CPU and bytes per request (JSON, CSV, SVG).
    Bench(bench::BenchArgs),
    /// Put, get and delete keys in the replicated key-value store; read the replicas' status.
    Client(client::ClientArgs),
    /// The replicated ledger: transfers and balances, blocks and proofs, and exporting and verifying the chain.
    Ledger(ledger::LedgerArgs),
}

/// Runs `f` to completion on a new multi-threaded tokio runtime; a runtime that cannot start is an error.
fn with_runtime<F: std::future::Future<Output = ExitCode>>(f: impl FnOnce() -> F) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(f()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `job` in a new temporary directory (named `prefix...`) for the replica processes it starts, until it ends
/// or Ctrl-C interrupts it; the processes are started with kill_on_drop, so none outlives it. The directory, with
/// the replicas' logs, is kept and named when `keep` says so for the outcome (`true`: success).
fn run_in_cluster_dir<Fut>(
    prefix: &str,
    keep: impl Fn(bool) -> bool,
    job: impl FnOnce(std::path::PathBuf) -> Fut,
) -> ExitCode
where
    Fut: std::future::Future<Output = Result<(), String>>,
{
    with_runtime(|| async {
        let dir = match tempfile::Builder::new().prefix(prefix).tempdir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("error: cannot make a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = tokio::select! {
            outcome = job(dir.path().to_path_buf()) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        };
        let succeeded = outcome.is_ok();
        if let Err(e) = outcome {
            eprintln!("\nerror: {e}");
        }
        if keep(succeeded) {
            let kept = dir.keep();
            eprintln!(
                "The cluster's files and replica logs are kept in {}",
                kept.display()
            );
        }
        if succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Keygen(args) => keygen::run(&args),
        Command::Testnet(args) => testnet::run(&args),
        Command::Replica(args) => replica::run(&args),
        Command::Client(args) => client::run(&args),
        Command::Ledger(args) => ledger::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
