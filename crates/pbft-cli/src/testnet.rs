//! `pbft testnet`: keys and configuration files for a whole cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use pbft_node::config::{AppKind, AuthFile, ParamsFile};
use pbft_node::testnet::{TestnetSpec, write};

#[derive(Debug, Args)]
pub struct TestnetArgs {
    /// Number of replicas (at least 4: n = 3f + 1 tolerates f faulty ones).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Number of clients to make keys for.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Directory to write into (created if needed; must not hold a cluster already).
    #[arg(long)]
    out: PathBuf,
    /// One host name or address per replica, comma-separated, for a cluster on several machines. Without it,
    /// every replica listens on 127.0.0.1.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Replica i listens for peers on BASE+i, for gRPC on BASE+100+i, for HTTP on BASE+200+i.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// The application the cluster replicates: the key-value store or the ledger.
    #[arg(long, value_enum, default_value_t = AppChoice::Kv)]
    app: AppChoice,
    /// For the ledger: accounts to make keys for (`account-J.key`), each starting with 1,000,000 in the genesis.
    #[arg(long, default_value_t = 4)]
    accounts: usize,
    /// How clients authenticate requests (and replicas their replies): ed25519 signatures, which anyone can
    /// check and no client can abuse, or MAC authenticators, about 100 times cheaper; a faulty client can force
    /// view changes with a wrong authenticator.
    #[arg(long, value_enum, default_value_t = AuthChoice::Signatures)]
    client_auth: AuthChoice,
    /// How replicas authenticate their COMMITs to each other: ed25519 signatures, or ("macs") only by the
    /// mutually authenticated TLS connection they travel on, which spares a signature and n-1 checks per replica
    /// and batch. Everything a third party may check stays signed. Not with `--app ledger`.
    #[arg(long, value_enum, default_value_t = AuthChoice::Signatures)]
    replica_auth: AuthChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthChoice {
    Signatures,
    Macs,
}

impl AuthChoice {
    pub fn file(self) -> AuthFile {
        match self {
            AuthChoice::Signatures => AuthFile::Signatures,
            AuthChoice::Macs => AuthFile::Macs,
        }
    }
}

impl From<AuthChoice> for pbft_types::ClientAuth {
    fn from(choice: AuthChoice) -> Self {
        choice.file().into()
    }
}

impl From<AuthChoice> for pbft_types::ReplicaAuth {
    fn from(choice: AuthChoice) -> Self {
        choice.file().into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppChoice {
    Kv,
    Ledger,
}

impl AppChoice {
    pub fn kind(self) -> AppKind {
        match self {
            AppChoice::Kv => AppKind::Kv,
            AppChoice::Ledger => AppKind::Ledger,
        }
    }
}

pub fn run(args: &TestnetArgs) -> ExitCode {
    let spec = TestnetSpec {
        replicas: args.replicas,
        clients: args.clients,
        hosts: args.hosts.clone(),
        base_port: args.base_port,
        params: ParamsFile {
            client_auth: Some(args.client_auth.file()),
            replica_auth: Some(args.replica_auth.file()),
            ..ParamsFile::default()
        },
        app: args.app.kind(),
        accounts: args.accounts,
    };
    match write(&spec, &args.out) {
        Ok(net) => {
            println!("cluster:  {}", net.cluster_file.display());
            for path in &net.replica_files {
                println!("replica:  {}", path.display());
            }
            for path in &net.client_files {
                println!("client:   {}", path.display());
            }
            for path in &net.account_files {
                println!("account:  {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
