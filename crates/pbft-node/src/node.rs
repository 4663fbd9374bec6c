//! A whole replica process: the transport to its peers, the runtime that drives the protocol, the application it
//! replicates (the key-value store or the ledger), and the client APIs (gRPC, and HTTP/JSON with the metrics),
//! all started from its configuration file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pbft_apps::{KvStore, Ledger};
use pbft_core::{Replica, StateMachine};
use pbft_crypto::{Keyring, SessionKeys, Signer};
use pbft_types::{ClientAuth, DecodeLimits, Principal, ReplicaId};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::api::ClientApi;
use crate::config::{App, ReplicaSetup};
use crate::durable::{DurableError, Journal};
use crate::ledger::{LedgerService, block_limit};
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
    #[error("{0}")]
    Journal(#[from] DurableError),
    #[error("recovering from the journal: {0}")]
    Recovery(String),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("cannot listen for the {api} API on {addr}: {source}")]
    Listen {
        api: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started replica. Dropping it stops nothing by itself; `shutdown` stops its APIs and closes its connections.
pub struct RunningNode {
    pub handle: NodeHandle,
    pub transport: Transport,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl RunningNode {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.transport.shutdown().await;
    }
}

async fn listen(api: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Listen { api, addr, source })
}

fn local_addr(
    api: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, NodeError> {
    listener
        .local_addr()
        .map_err(|source| NodeError::Listen { api, addr, source })
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
    let peers: BTreeMap<ReplicaId, SocketAddr> = setup
        .cluster
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| (ReplicaId(i as u64), a.peer))
        .filter(|(r, _)| *r != id)
        .collect();
    let params = &config.params;
    let mut keyring = Keyring::new(&config).map_err(|e| NodeError::Config(e.to_string()))?;
    if params.client_auth == ClientAuth::Macs {
        let sessions = SessionKeys::for_replica(&config, id, &setup.key)
            .map_err(|e| NodeError::Config(e.to_string()))?;
        keyring = keyring.with_sessions(sessions);
    }
    let limits = DecodeLimits {
        max_message_size: params.max_message_size,
        max_batch_size: params.max_batch_size,
    };
    // The journal first: a replica that cannot trust its own disk must not join the cluster.
    let app_config = &setup.cluster.app;
    let (journal, entries) =
        Journal::open(&setup.data_dir, &config, app_config, id, &keyring, limits)?;
    let recovering = !entries.is_empty();
    let signer = Signer::new(Principal::Replica(id), setup.key.clone());
    let (app, ledger): (Box<dyn StateMachine>, _) = match app_config {
        App::Kv => (Box::new(KvStore::new()), None),
        App::Ledger(genesis) => {
            let ledger = Ledger::new(genesis);
            let service = LedgerService::new(
                journal.archive(),
                ledger.reader(),
                keyring.clone(),
                config.quorum(),
                block_limit(params.max_message_size),
            );
            (Box::new(ledger), Some(service))
        }
    };
    let replica = Replica::new(config.clone(), id, signer, app)
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let (replica, initial) = replica
        .recover(entries)
        .map_err(|e| NodeError::Recovery(e.to_string()))?;
    if recovering {
        let status = replica.status();
        tracing::info!(
            view = %status.view,
            executed = %status.last_executed,
            stable = %status.low_watermark,
            "recovered from the journal"
        );
    }
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
    let handle = start(
        replica,
        setup.key.clone(),
        keyring.clone(),
        limits,
        Arc::new(transport.link()),
        inbound,
        Some(journal),
        initial,
    );
    let http = listen("HTTP", me.http).await?;
    let http_addr = local_addr("HTTP", &http, me.http)?;
    let grpc = listen("gRPC", me.api).await?;
    let grpc_addr = local_addr("gRPC", &grpc, me.api)?;
    let peer_stats = transport.link();
    let api = ClientApi::new(
        handle.clone(),
        keyring,
        params.max_request_size,
        SUBMIT_TIMEOUT,
    )
    .with_peer_stats(Arc::new(move || peer_stats.stats()));
    let (stop, stopped) = watch::channel(false);
    if let Some(ledger) = &ledger {
        let peers = setup
            .cluster
            .addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != id.index())
            .map(|(_, a)| format!("http://{}", a.api))
            .collect();
        tokio::spawn(crate::ledger::backfill(ledger.clone(), peers));
    }
    let app = crate::http::router(api.clone(), ledger.clone());
    let mut http_stop = stopped.clone();
    tokio::spawn(async move {
        let served = axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    let mut grpc_stop = stopped;
    tokio::spawn(async move {
        let server = tonic::transport::Server::builder().add_service(crate::grpc::service(api));
        let server = match ledger {
            Some(ledger) => server.add_service(crate::grpc::ledger_service(ledger)),
            None => server,
        };
        let served = server
            // Without TCP_NODELAY a small answer written while an earlier one is unacknowledged waits for the
            // client's delayed ACK (Nagle's algorithm), tens of milliseconds.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc).with_nodelay(Some(true)),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the gRPC API stopped");
        }
    });
    Ok(RunningNode {
        handle,
        transport,
        http_addr,
        grpc_addr,
        stop,
    })
}
