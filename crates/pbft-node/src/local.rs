//! A cluster of replica runtimes inside one process, joined by a channel mesh: for tests of the runtime and the
//! APIs, without sockets or processes.

use std::sync::Arc;

use pbft_core::{Replica, StateMachine};
use pbft_crypto::{KeyPair, Keyring, SessionKeys, Signer};
use pbft_types::{
    ClientAuth, ClientId, ClientInfo, ClusterConfig, DecodeLimits, Params, Principal, ReplicaId,
};

use crate::link::Mesh;
use crate::runtime::{NodeHandle, start};

pub struct LocalCluster {
    pub config: ClusterConfig,
    pub keyring: Keyring,
    /// What each replica verifies with: `keyring`, with the replica's session keys when clients seal requests
    /// with MACs (`client_auth = macs`).
    pub replica_keyrings: Vec<Keyring>,
    pub nodes: Vec<NodeHandle>,
    pub mesh: Arc<Mesh>,
    /// Client i's signer (client ids 0..clients).
    pub clients: Vec<Signer>,
    /// Client i's session keys with the replicas, when clients seal requests with MACs; empty otherwise.
    pub client_sessions: Vec<SessionKeys>,
}

impl LocalCluster {
    /// Starts `n` replicas, each with the application `app()` makes, and keys for `clients` clients. Keys are
    /// derived from fixed seeds: this is for tests. Must be called within a tokio runtime.
    pub fn start(
        n: usize,
        clients: usize,
        params: Params,
        app: impl Fn() -> Box<dyn StateMachine>,
    ) -> Result<LocalCluster, String> {
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        let client_keys: Vec<KeyPair> = (0..clients)
            .map(|j| KeyPair::from_seed([200u8.wrapping_add(j as u8); 32]))
            .collect();
        let config = ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: client_keys
                .iter()
                .enumerate()
                .map(|(j, k)| ClientInfo {
                    id: ClientId(j as u64),
                    public_key: k.public_key(),
                })
                .collect(),
            params,
        };
        let keyring = Keyring::new(&config).map_err(|e| e.to_string())?;
        let limits = DecodeLimits {
            max_message_size: config.params.max_message_size,
            max_batch_size: config.params.max_batch_size,
        };
        let (mesh, inboxes) = Mesh::new(n, 4096);
        let macs = config.params.client_auth == ClientAuth::Macs;
        let replica_keyrings = (0..n)
            .map(|i| {
                if !macs {
                    return Ok(keyring.clone());
                }
                let sessions = SessionKeys::for_replica(&config, ReplicaId(i as u64), &keys[i])
                    .map_err(|e| e.to_string())?;
                Ok(keyring.clone().with_sessions(sessions))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let client_sessions = match macs {
            true => client_keys
                .iter()
                .enumerate()
                .map(|(j, k)| SessionKeys::for_client(&config, ClientId(j as u64), k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?,
            false => Vec::new(),
        };
        let mut nodes = Vec::new();
        for (i, inbox) in inboxes.into_iter().enumerate() {
            let id = ReplicaId(i as u64);
            let signer = Signer::new(Principal::Replica(id), keys[i].clone());
            let replica =
                Replica::new(config.clone(), id, signer, app()).map_err(|e| e.to_string())?;
            let link = Arc::new(mesh.link(id));
            nodes.push(start(
                replica,
                keys[i].clone(),
                replica_keyrings[i].clone(),
                limits,
                link,
                inbox,
                None,
                Vec::new(),
            ));
        }
        let clients = client_keys
            .into_iter()
            .enumerate()
            .map(|(j, k)| Signer::new(Principal::Client(ClientId(j as u64)), k))
            .collect();
        Ok(LocalCluster {
            config,
            keyring,
            replica_keyrings,
            nodes,
            mesh,
            clients,
            client_sessions,
        })
    }
}
