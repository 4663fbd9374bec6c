//! A whole replica process: the transport to its peers, the runtime that drives the protocol, the key-value
//! store it replicates, and the HTTP/JSON API, all started from its configuration file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pbft_apps::KvStore;
use pbft_core::Replica;
use pbft_crypto::{Keyring, Signer};
use pbft_types::{DecodeLimits, Principal, ReplicaId};
use thiserror::Error;

use crate::config::ReplicaSetup;
use crate::runtime::{NodeHandle, start};
use crate::transport::{Transport, TransportConfig, TransportError};

/// Frames queued per peer (and received frames waiting for verification) before the oldest are dropped.
const QUEUE_DEPTH: usize = 4096;

/// How long an HTTP submission waits for this replica to execute the request.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("HTTP API on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A started replica. Dropping it stops nothing by itself; `shutdown` closes its connections.
pub struct RunningNode {
    pub handle: NodeHandle,
    pub transport: Transport,
    pub http_addr: std::net::SocketAddr,
}

impl RunningNode {
    pub async fn shutdown(self) {
        self.transport.shutdown().await;
    }
}

/// Starts replica `setup.id` as its configuration says. Must run within a tokio runtime.
pub async fn start_replica(setup: ReplicaSetup) -> Result<RunningNode, NodeError> {
    let config = setup.cluster.config.clone();
    let id = ReplicaId(setup.id);
    let me = setup
        .cluster
        .addresses
        .get(id.index())
        .copied()
        .ok_or_else(|| NodeError::Config(format!("no addresses for replica {id}")))?;
    let peers: BTreeMap<ReplicaId, std::net::SocketAddr> = setup
        .cluster
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| (ReplicaId(i as u64), a.peer))
        .filter(|(r, _)| *r != id)
        .collect();
    let params = &config.params;
    let (transport, inbound) = Transport::start(TransportConfig {
        me: id,
        key: setup.key.clone(),
        replicas: config.replicas.clone(),
        listen: me.peer,
        peers,
        max_frame: params.max_message_size,
        queue_depth: QUEUE_DEPTH,
    })
    .await?;
    let keyring = Keyring::new(&config).map_err(|e| NodeError::Config(e.to_string()))?;
    let limits = DecodeLimits {
        max_message_size: params.max_message_size,
        max_batch_size: params.max_batch_size,
    };
    let signer = Signer::new(Principal::Replica(id), setup.key.clone());
    let replica = Replica::new(config.clone(), id, signer, Box::new(KvStore::new()))
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let handle = start(
        replica,
        setup.key.clone(),
        keyring.clone(),
        limits,
        Arc::new(transport.link()),
        inbound,
    );
    let listener = tokio::net::TcpListener::bind(me.http)
        .await
        .map_err(|source| NodeError::Http {
            addr: me.http,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| NodeError::Http {
        addr: me.http,
        source,
    })?;
    let app = crate::http::router(
        handle.clone(),
        keyring,
        params.max_request_size.saturating_add(1024),
        SUBMIT_TIMEOUT,
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    Ok(RunningNode {
        handle,
        transport,
        http_addr,
    })
}
