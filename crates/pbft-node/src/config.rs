//! Configuration files, in TOML.
//!
//! - `cluster.toml` is shared by every replica and client: each replica's id, public key and addresses, the
//!   clients' public keys, the protocol's parameters, and the application the cluster replicates (`[app]`:
//!   `kind = "kv"`, the default, or `kind = "ledger"` with its genesis accounts).
//! - `replica-N.toml` is one replica's own: its id, its secret key file and where the cluster file is.
//! - `client.toml` is a client's own: its id, its key file and the cluster file.
//!
//! Loading checks everything a replica would otherwise trip over later (ids in order, keys that parse,
//! addresses that resolve, parameters that make sense) and names the file and the field at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pbft_apps::Genesis;
use pbft_crypto::{KeyFileError, KeyPair};
use pbft_types::{
    ClientAuth, ClientId, ClientInfo, ClusterConfig, ConfigError, Params, PublicKeyBytes,
    ReplicaAuth,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Cluster { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Key(#[from] KeyFileError),
}

/// `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// In id order: the replica with id i is entry i.
    pub replicas: Vec<ReplicaEntry>,
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
    #[serde(default)]
    pub params: ParamsFile,
    #[serde(default)]
    pub app: AppFile,
}

/// `[app]`: what the cluster replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    #[serde(default)]
    pub kind: AppKind,
    /// The ledger's genesis: the accounts it starts with (`[[app.accounts]]`). Only for `kind = "ledger"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountEntry>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    #[default]
    Kv,
    Ledger,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    /// The account's ed25519 public key, 64 hex digits.
    pub public_key: String,
    pub balance: u64,
}

/// The application, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum App {
    Kv,
    Ledger(Genesis),
}

impl App {
    pub fn name(&self) -> &'static str {
        match self {
            App::Kv => "kv",
            App::Ledger(_) => "ledger",
        }
    }

    /// Whether the application can run with these parameters, checked when the cluster file is read so that the
    /// error names the file. (`Replica::new` refuses the same, whoever sets the cluster up.)
    pub fn check_params(&self, params: &Params) -> Result<(), ConfigError> {
        match (self, params.replica_auth) {
            (App::Ledger(_), ReplicaAuth::Macs) => Err(ConfigError::UnsignedCommitCertificates),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    pub id: u64,
    /// The ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Where the other replicas reach it (TLS).
    pub peer_address: String,
    /// Where clients reach its gRPC API.
    pub api_address: String,
    /// Where its HTTP/JSON API and `/metrics` are served.
    pub http_address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: u64,
    pub public_key: String,
}

/// The protocol's parameters; any left out take the defaults of `Params::default()`. Durations in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamsFile {
    pub checkpoint_interval: Option<u64>,
    pub window: Option<u64>,
    pub max_batch_size: Option<usize>,
    pub batch_delay_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub view_change_timeout_ms: Option<u64>,
    pub status_interval_ms: Option<u64>,
    pub max_request_size: Option<usize>,
    pub max_message_size: Option<usize>,
    /// "signatures" (the default) or "macs": how clients authenticate requests and replicas their replies.
    pub client_auth: Option<AuthFile>,
    /// "signatures" (the default) or "macs": whether replicas sign their COMMITs or let their authenticated
    /// connections vouch for them. Not with the ledger, whose blocks carry signed commit certificates.
    pub replica_auth: Option<AuthFile>,
}

/// `client_auth` and `replica_auth` as the cluster file spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthFile {
    Signatures,
    Macs,
}

impl From<AuthFile> for ClientAuth {
    fn from(file: AuthFile) -> ClientAuth {
        match file {
            AuthFile::Signatures => ClientAuth::Signatures,
            AuthFile::Macs => ClientAuth::Macs,
        }
    }
}

impl From<AuthFile> for ReplicaAuth {
    fn from(file: AuthFile) -> ReplicaAuth {
        match file {
            AuthFile::Signatures => ReplicaAuth::Signatures,
            AuthFile::Macs => ReplicaAuth::Macs,
        }
    }
}

impl From<ClientAuth> for AuthFile {
    fn from(auth: ClientAuth) -> AuthFile {
        match auth {
            ClientAuth::Signatures => AuthFile::Signatures,
            ClientAuth::Macs => AuthFile::Macs,
        }
    }
}

impl ParamsFile {
    pub fn to_params(&self) -> Params {
        let d = Params::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        Params {
            checkpoint_interval: self.checkpoint_interval.unwrap_or(d.checkpoint_interval),
            window: self.window.unwrap_or(d.window),
            max_batch_size: self.max_batch_size.unwrap_or(d.max_batch_size),
            batch_delay: ms(self.batch_delay_ms, d.batch_delay),
            request_timeout: ms(self.request_timeout_ms, d.request_timeout),
            view_change_timeout: ms(self.view_change_timeout_ms, d.view_change_timeout),
            status_interval: ms(self.status_interval_ms, d.status_interval),
            max_request_size: self.max_request_size.unwrap_or(d.max_request_size),
            max_message_size: self.max_message_size.unwrap_or(d.max_message_size),
            client_auth: self.client_auth.map_or(d.client_auth, ClientAuth::from),
            replica_auth: self.replica_auth.map_or(d.replica_auth, ReplicaAuth::from),
            ..d
        }
    }
}

/// A replica's addresses, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaAddresses {
    pub peer: SocketAddr,
    pub api: SocketAddr,
    pub http: SocketAddr,
}

/// A loaded and checked cluster file.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    /// Index = replica id.
    pub addresses: Vec<ReplicaAddresses>,
    pub app: App,
}

fn read(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    toml::from_str(&read(path)?).map_err(|source| ConfigFileError::Toml {
        path: path.to_path_buf(),
        source,
    })
}

fn public_key(hex_key: &str) -> Option<PublicKeyBytes> {
    hex::decode(hex_key).ok()?.try_into().ok()
}

fn address(text: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs().ok()?.next()
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<Cluster, ConfigFileError> {
        parse::<ClusterFile>(path)?.check(path)
    }

    /// Checks the file's content and turns it into the cluster's configuration.
    pub fn check(&self, path: &Path) -> Result<Cluster, ConfigFileError> {
        let invalid = |message: String| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut replicas = Vec::new();
        let mut addresses = Vec::new();
        for (index, r) in self.replicas.iter().enumerate() {
            if r.id != index as u64 {
                return Err(invalid(format!(
                    "replicas must be listed in id order 0, 1, 2, ...: entry {index} has id {}",
                    r.id
                )));
            }
            let key = public_key(&r.public_key).ok_or_else(|| {
                invalid(format!("replica {}: public_key is not 64 hex digits", r.id))
            })?;
            replicas.push(key);
            let resolve = |field: &str, text: &str| {
                address(text).ok_or_else(|| {
                    invalid(format!(
                        "replica {}: {field} `{text}` is not a host:port",
                        r.id
                    ))
                })
            };
            addresses.push(ReplicaAddresses {
                peer: resolve("peer_address", &r.peer_address)?,
                api: resolve("api_address", &r.api_address)?,
                http: resolve("http_address", &r.http_address)?,
            });
        }
        let clients = self
            .clients
            .iter()
            .map(|c| {
                let key = public_key(&c.public_key).ok_or_else(|| {
                    invalid(format!("client {}: public_key is not 64 hex digits", c.id))
                })?;
                Ok(ClientInfo {
                    id: ClientId(c.id),
                    public_key: key,
                })
            })
            .collect::<Result<_, ConfigFileError>>()?;
        let app = match self.app.kind {
            AppKind::Kv if !self.app.accounts.is_empty() => {
                return Err(invalid(
                    "[[app.accounts]] is a ledger's genesis; the key-value store (kind = \"kv\") has none"
                        .to_string(),
                ));
            }
            AppKind::Kv => App::Kv,
            AppKind::Ledger => {
                let accounts = self
                    .app
                    .accounts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let key = public_key(&a.public_key).ok_or_else(|| {
                            invalid(format!(
                                "app.accounts[{i}]: public_key is not 64 hex digits"
                            ))
                        })?;
                        Ok((key, a.balance))
                    })
                    .collect::<Result<Vec<_>, ConfigFileError>>()?;
                App::Ledger(Genesis::new(accounts).map_err(invalid)?)
            }
        };
        let config = ClusterConfig {
            replicas,
            clients,
            params: self.params.to_params(),
        };
        app.check_params(&config.params)
            .map_err(|e| invalid(e.to_string()))?;
        config
            .validate()
            .map_err(|source| ConfigFileError::Cluster {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Cluster {
            config,
            addresses,
            app,
        })
    }
}

/// `replica-N.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    pub id: u64,
    /// Relative paths are relative to this file's directory.
    pub key_file: PathBuf,
    pub cluster_file: PathBuf,
    /// Where the replica keeps its journal (created if missing). The replica recovers from it after a crash.
    pub data_dir: PathBuf,
}

/// What a replica process needs to start.
pub struct ReplicaSetup {
    pub id: u64,
    pub key: KeyPair,
    pub cluster: Cluster,
    /// Where its journal lives.
    pub data_dir: PathBuf,
}

/// `client.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub id: u64,
    pub key_file: PathBuf,
    pub cluster_file: PathBuf,
}

/// What a client needs to talk to the cluster.
pub struct ClientSetup {
    pub id: ClientId,
    pub key: KeyPair,
    pub cluster: Cluster,
}

fn beside(file: &Path, path: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

impl ReplicaFile {
    pub fn load(path: &Path) -> Result<ReplicaSetup, ConfigFileError> {
        let file: ReplicaFile = parse(path)?;
        let cluster = ClusterFile::load(&beside(path, &file.cluster_file))?;
        let key = KeyPair::load(&beside(path, &file.key_file))?;
        let invalid = |message: String| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let Some(expected) = usize::try_from(file.id)
            .ok()
            .and_then(|i| cluster.config.replicas.get(i))
        else {
            return Err(invalid(format!(
                "id {} is not a replica of the cluster",
                file.id
            )));
        };
        if *expected != key.public_key() {
            return Err(invalid(format!(
                "the key in {} is not the key of replica {} in the cluster file",
                file.key_file.display(),
                file.id
            )));
        }
        Ok(ReplicaSetup {
            id: file.id,
            key,
            cluster,
            data_dir: beside(path, &file.data_dir),
        })
    }
}

impl ClientFile {
    pub fn load(path: &Path) -> Result<ClientSetup, ConfigFileError> {
        let file: ClientFile = parse(path)?;
        let cluster = ClusterFile::load(&beside(path, &file.cluster_file))?;
        let key = KeyPair::load(&beside(path, &file.key_file))?;
        let known = cluster
            .config
            .clients
            .iter()
            .any(|c| c.id == ClientId(file.id) && c.public_key == key.public_key());
        if !known {
            return Err(ConfigFileError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "client {} with this key is not in the cluster file: the replicas would refuse it",
                    file.id
                ),
            });
        }
        Ok(ClientSetup {
            id: ClientId(file.id),
            key,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_needs_signed_commits_and_the_key_value_store_does_not() {
        let macs = Params {
            replica_auth: ReplicaAuth::Macs,
            ..Params::default()
        };
        let ledger = App::Ledger(Genesis::new(Vec::new()).unwrap());
        let refused = ledger.check_params(&macs).unwrap_err().to_string();
        assert!(refused.contains("replica_auth"), "{refused}");
        assert_eq!(ledger.check_params(&Params::default()), Ok(()));
        assert_eq!(App::Kv.check_params(&macs), Ok(()));
    }
}
