//! `pbft testnet`: keys and configuration files for a whole cluster, ready to start.
//!
//! Replica i listens for peers on `base_port + i`, for gRPC clients on `base_port + 100 + i` and for HTTP on
//! `base_port + 200 + i`, on its host (loopback unless hosts are given, one per replica). A ledger testnet also
//! gets account keys (`account-J.key`), each account starting with `GENESIS_BALANCE` in the genesis.

use std::path::{Path, PathBuf};

use pbft_crypto::KeyPair;
use thiserror::Error;

use crate::config::{
    AccountEntry, AppFile, AppKind, ClientEntry, ClientFile, ClusterFile, ConfigFileError,
    ParamsFile, ReplicaEntry, ReplicaFile,
};

/// What each account of a ledger testnet starts with.
pub const GENESIS_BALANCE: u64 = 1_000_000;

#[derive(Debug, Error)]
pub enum TestnetError {
    #[error("{0} already holds a cluster.toml; choose an empty directory")]
    NotEmpty(PathBuf),
    #[error(
        "{given} hosts given for {replicas} replicas: give one per replica, or none for loopback"
    )]
    Hosts { given: usize, replicas: usize },
    #[error("ports from {base} on do not fit below 65536 for {replicas} replicas")]
    Ports { base: u16, replicas: usize },
    #[error("no randomness to make keys from: {0}")]
    Random(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    #[error(transparent)]
    Key(#[from] pbft_crypto::KeyFileError),
}

#[derive(Clone, Debug)]
pub struct TestnetSpec {
    pub replicas: usize,
    pub clients: usize,
    /// One per replica; empty for 127.0.0.1.
    pub hosts: Vec<String>,
    pub base_port: u16,
    pub params: ParamsFile,
    pub app: AppKind,
    /// Accounts in a ledger's genesis (ignored for the key-value store).
    pub accounts: usize,
}

/// What `write` produced.
#[derive(Clone, Debug)]
pub struct Testnet {
    pub cluster_file: PathBuf,
    pub replica_files: Vec<PathBuf>,
    pub client_files: Vec<PathBuf>,
    /// The ledger accounts' key files (none for the key-value store).
    pub account_files: Vec<PathBuf>,
}

impl Testnet {
    /// Every client's configuration, loaded.
    pub fn client_setups(&self) -> Result<Vec<crate::config::ClientSetup>, ConfigFileError> {
        self.client_files
            .iter()
            .map(|p| ClientFile::load(p))
            .collect()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestnetError + '_ {
    move |source| TestnetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn toml_text<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; an empty file would be refused at load with a clear error.
    toml::to_string_pretty(value).unwrap_or_default()
}

fn generate() -> Result<KeyPair, TestnetError> {
    KeyPair::generate().map_err(|e| TestnetError::Random(e.to_string()))
}

/// Writes keys and configuration for a cluster into `out` (created if needed) and checks that what it wrote
/// loads.
pub fn write(spec: &TestnetSpec, out: &Path) -> Result<Testnet, TestnetError> {
    let n = spec.replicas;
    if !spec.hosts.is_empty() && spec.hosts.len() != n {
        return Err(TestnetError::Hosts {
            given: spec.hosts.len(),
            replicas: n,
        });
    }
    if usize::from(spec.base_port) + 200 + n > usize::from(u16::MAX) {
        return Err(TestnetError::Ports {
            base: spec.base_port,
            replicas: n,
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let cluster_file = out.join("cluster.toml");
    if cluster_file.exists() {
        return Err(TestnetError::NotEmpty(out.to_path_buf()));
    }
    let port = |offset: usize, i: usize| usize::from(spec.base_port) + offset + i;
    // Everything is made and checked in memory first, so that a refused spec leaves nothing behind.
    let replica_keys = (0..n).map(|_| generate()).collect::<Result<Vec<_>, _>>()?;
    let client_keys = (0..spec.clients)
        .map(|_| generate())
        .collect::<Result<Vec<_>, _>>()?;
    let replicas = replica_keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let host = spec.hosts.get(i).map_or("127.0.0.1", String::as_str);
            ReplicaEntry {
                id: i as u64,
                public_key: hex::encode(key.public_key()),
                peer_address: format!("{host}:{}", port(0, i)),
                api_address: format!("{host}:{}", port(100, i)),
                http_address: format!("{host}:{}", port(200, i)),
            }
        })
        .collect();
    let clients = client_keys
        .iter()
        .enumerate()
        .map(|(j, key)| ClientEntry {
            id: j as u64,
            public_key: hex::encode(key.public_key()),
        })
        .collect();
    let account_keys = match spec.app {
        AppKind::Kv => Vec::new(),
        AppKind::Ledger => (0..spec.accounts)
            .map(|_| generate())
            .collect::<Result<Vec<_>, _>>()?,
    };
    let cluster = ClusterFile {
        replicas,
        clients,
        params: spec.params.clone(),
        app: AppFile {
            kind: spec.app,
            accounts: account_keys
                .iter()
                .map(|key| AccountEntry {
                    public_key: hex::encode(key.public_key()),
                    balance: GENESIS_BALANCE,
                })
                .collect(),
        },
    };
    cluster.check(&cluster_file)?;

    let mut replica_files = Vec::new();
    for (i, key) in replica_keys.iter().enumerate() {
        let key_name = format!("replica-{i}.key");
        key.save(&out.join(&key_name))?;
        let path = out.join(format!("replica-{i}.toml"));
        let file = ReplicaFile {
            id: i as u64,
            key_file: key_name.into(),
            cluster_file: "cluster.toml".into(),
            data_dir: format!("data/replica-{i}").into(),
        };
        std::fs::write(&path, toml_text(&file)).map_err(io(&path))?;
        replica_files.push(path);
    }
    let mut client_files = Vec::new();
    for (j, key) in client_keys.iter().enumerate() {
        let key_name = format!("client-{j}.key");
        key.save(&out.join(&key_name))?;
        let path = out.join(format!("client-{j}.toml"));
        let file = ClientFile {
            id: j as u64,
            key_file: key_name.into(),
            cluster_file: "cluster.toml".into(),
        };
        std::fs::write(&path, toml_text(&file)).map_err(io(&path))?;
        client_files.push(path);
    }
    let mut account_files = Vec::new();
    for (j, key) in account_keys.iter().enumerate() {
        let path = out.join(format!("account-{j}.key"));
        key.save(&path)?;
        account_files.push(path);
    }
    std::fs::write(&cluster_file, toml_text(&cluster)).map_err(io(&cluster_file))?;
    for path in &replica_files {
        ReplicaFile::load(path)?;
    }
    for path in &client_files {
        ClientFile::load(path)?;
    }
    Ok(Testnet {
        cluster_file,
        replica_files,
        client_files,
        account_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: usize) -> TestnetSpec {
        TestnetSpec {
            replicas,
            clients: 2,
            hosts: vec![],
            base_port: 7000,
            params: ParamsFile::default(),
            app: AppKind::Kv,
            accounts: 0,
        }
    }

    #[test]
    fn a_written_testnet_loads_and_each_replica_holds_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let net = write(&spec(4), dir.path()).unwrap();
        assert_eq!(net.replica_files.len(), 4);
        for (i, path) in net.replica_files.iter().enumerate() {
            let setup = ReplicaFile::load(path).unwrap();
            assert_eq!(setup.id, i as u64);
            assert_eq!(setup.cluster.config.replicas[i], setup.key.public_key());
            assert_eq!(setup.cluster.addresses[i].peer.port(), 7000 + i as u16);
            assert_eq!(setup.cluster.addresses[i].api.port(), 7100 + i as u16);
        }
        let client = ClientFile::load(&net.client_files[1]).unwrap();
        assert_eq!(client.id, pbft_types::ClientId(1));
    }

    #[test]
    fn a_ledger_testnet_has_account_keys_in_its_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = spec(4);
        ledger.app = AppKind::Ledger;
        ledger.accounts = 3;
        let net = write(&ledger, dir.path()).unwrap();
        assert_eq!(net.account_files.len(), 3);
        let cluster = ClusterFile::load(&net.cluster_file).unwrap();
        let crate::config::App::Ledger(genesis) = cluster.app else {
            panic!("a ledger cluster")
        };
        let key = KeyPair::load(&net.account_files[2]).unwrap().public_key();
        assert!(
            genesis
                .accounts()
                .any(|(k, b)| *k == key && *b == GENESIS_BALANCE)
        );
    }

    #[test]
    fn it_refuses_to_overwrite_a_cluster_and_bad_host_lists() {
        let dir = tempfile::tempdir().unwrap();
        write(&spec(4), dir.path()).unwrap();
        assert!(matches!(
            write(&spec(4), dir.path()),
            Err(TestnetError::NotEmpty(_))
        ));
        let mut bad = spec(4);
        bad.hosts = vec!["a".into()];
        assert!(matches!(
            write(&bad, &dir.path().join("x")),
            Err(TestnetError::Hosts {
                given: 1,
                replicas: 4
            })
        ));
    }

    #[test]
    fn a_cluster_file_with_a_broken_field_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let net = write(&spec(4), dir.path()).unwrap();
        let text = std::fs::read_to_string(&net.cluster_file).unwrap();
        let broken = text.replacen("public_key = \"", "public_key = \"zz", 1);
        std::fs::write(&net.cluster_file, broken).unwrap();
        let error = ClusterFile::load(&net.cluster_file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("replica 0: public_key is not 64 hex digits"),
            "{error}"
        );
    }

    #[test]
    fn a_cluster_too_small_to_tolerate_a_fault_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = write(&spec(3), dir.path()).unwrap_err().to_string();
        assert!(error.contains("cluster.toml"), "{error}");
        assert!(error.contains('3'), "{error}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(
            left.is_empty(),
            "a refused testnet writes nothing: {left:?}"
        );
    }
}
