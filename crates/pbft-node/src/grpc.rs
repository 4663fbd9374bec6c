//! The gRPC client API of a replica (`service ReplicaApi` in `proto/pbft.proto`), over the same `ClientApi` as
//! the HTTP one. Clients in any language generate their stubs from the schema.

use pbft_types::wire::replica_api_server::{ReplicaApi, ReplicaApiServer};
use pbft_types::wire::{ReplicaStatus, SignedEnvelope, StatusQuery};
use tonic::{Request, Response, Status};

use crate::api::{ApiError, ClientApi};

/// Room for the envelope's own fields around a request of the largest allowed size.
const ENVELOPE_OVERHEAD: usize = 1024;

/// The gRPC service, ready to be added to a `tonic` server.
pub fn service(api: ClientApi) -> ReplicaApiServer<GrpcApi> {
    let limit = api.max_request().saturating_add(ENVELOPE_OVERHEAD);
    ReplicaApiServer::new(GrpcApi { api }).max_decoding_message_size(limit)
}

pub struct GrpcApi {
    api: ClientApi,
}

#[tonic::async_trait]
impl ReplicaApi for GrpcApi {
    async fn submit(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<SignedEnvelope>, Status> {
        let reply = self
            .api
            .submit_envelope(request.into_inner())
            .await
            .map_err(|e| match e {
                ApiError::Malformed(_) => Status::invalid_argument(e.to_string()),
                ApiError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
                ApiError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
                ApiError::Stopped(_) => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(reply.to_envelope()))
    }

    async fn get_status(
        &self,
        _request: Request<StatusQuery>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        let s = self.api.status();
        Ok(Response::new(ReplicaStatus {
            replica: s.replica,
            view: s.view,
            changing_view: s.changing_view,
            last_executed: s.last_executed,
            stable_checkpoint: s.stable_checkpoint,
            high_watermark: s.high_watermark,
            batches_committed: s.batches_committed,
            requests_executed: s.requests_executed,
            view_changes: s.view_changes,
            peers_connected: s.peers_connected,
            peer_auth_failures: s.peer_auth_failures,
            peer_garbage_connections: s.peer_garbage_connections,
        }))
    }
}
