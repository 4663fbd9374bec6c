//! `pbft replica --config FILE`: runs one replica until interrupted.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use pbft_node::config::ReplicaFile;
use pbft_node::node::start_replica;

#[derive(Debug, Args)]
pub struct ReplicaArgs {
    /// The replica's configuration file (`replica-N.toml`, as `pbft testnet` writes it).
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: &ReplicaArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let setup = match ReplicaFile::load(&args.config) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::with_runtime(|| async {
        let id = setup.id;
        let node = match start_replica(setup).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            replica = id,
            peers = %node.transport.local_addr(),
            http = %node.http_addr,
            "replica running; Ctrl-C stops it"
        );
        let code = tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                if let Err(e) = interrupted {
                    eprintln!("error: cannot wait for Ctrl-C: {e}");
                }
                ExitCode::SUCCESS
            }
            reason = node.handle.failed() => {
                eprintln!("error: {reason}");
                ExitCode::FAILURE
            }
        };
        node.shutdown().await;
        code
    })
}
