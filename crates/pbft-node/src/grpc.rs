//! The gRPC client API of a replica (`service ReplicaApi` in `proto/pbft.proto`), over the same `ClientApi` as
//! the HTTP one, and, on a ledger replica, `service LedgerApi`. Clients in any language generate their stubs
//! from the schema.

use pbft_apps::ledger::AccountKey;
use pbft_types::Digest;
use pbft_types::wire::ledger_api_server::{LedgerApi, LedgerApiServer};
use pbft_types::wire::replica_api_server::{ReplicaApi, ReplicaApiServer};
use pbft_types::wire::{
    AccountAtHeight, BalanceQuery, BlockHash, BlockRange, CertifiedBlock as CertifiedBlockMsg,
    ChainHead, EntryQuery, HeadQuery, Refusal, ReplicaStatus, RequestBatch, SignedEnvelope,
    StatusQuery,
};
use pbft_types::{Request as ClientRequest, Signed};
use tonic::{Request, Response, Status, Streaming};

use crate::api::{ApiError, ClientApi, SubmissionSink};
use crate::ledger::LedgerService;
use crate::submit_stream::{self, Answer, AnswerSlot, Limits, ReplyStream};

/// Room for the envelope's own fields around a request of the largest allowed size.
const ENVELOPE_OVERHEAD: usize = 1024;

/// The largest `RequestBatch` a stream takes (as `proto/pbft.proto` states), unless one request of the largest
/// allowed size is larger. Big enough that a packed batch costs little per request, small enough that a stream's
/// one batch read ahead of its permits (see `submit_stream`) holds little memory.
const BATCH_BYTES: usize = 4 << 20;

/// The gRPC service, ready to be added to a `tonic` server.
pub fn service(api: ClientApi) -> ReplicaApiServer<GrpcApi> {
    // One limit covers both calls: a unary request is a single envelope and gets no further than
    // `submit_envelope`'s size check, which bounds every request of a batch as well.
    let limit = api
        .max_request()
        .saturating_add(ENVELOPE_OVERHEAD)
        .max(BATCH_BYTES);
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
            .map_err(|e| status(&e))?;
        Ok(Response::new(reply.to_envelope()))
    }

    type SubmitStreamStream = ReplyStream;

    async fn submit_stream(
        &self,
        request: Request<Streaming<RequestBatch>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let api = self.api.clone();
        // Each request of a batch goes through the checks a unary Submit passes (size limit, decoding,
        // authentication, its client's slots), and the batch's admitted requests reach the replica in one
        // hand-off; the tonic decoder has bounded the batch as a whole (see `service`).
        let handle = move |batch: RequestBatch, mut slots: Vec<AnswerSlot>| {
            let api = api.clone();
            // The slots come in the batch's order: its requests' first, then its awaited replies'.
            let awaited_slots = slots.split_off(batch.requests.len().min(slots.len()));
            let awaited = entries(
                batch.awaited.iter().map(|a| Asked::Reply {
                    client: a.client,
                    timestamp: a.timestamp,
                }),
                awaited_slots,
            );
            api.await_replies_to(batch.awaited, awaited);
            // Bytes fields: the copies share the buffers; one is read only if its request is refused.
            let requests = entries(batch.requests.iter().cloned().map(Asked::Request), slots);
            async move { api.submit_envelopes_to(batch.requests, requests).await }
        };
        Ok(Response::new(submit_stream::serve_batches(
            request.into_inner(),
            handle,
            Limits::default(),
        )))
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

/// The status a unary Submit answers an error with.
fn status(e: &ApiError) -> Status {
    match e {
        ApiError::Malformed(_) => Status::invalid_argument(e.to_string()),
        ApiError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
        ApiError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        ApiError::Stopped(_) => Status::unavailable(e.to_string()),
        ApiError::Overloaded { .. } | ApiError::TooManyFromClient { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        ApiError::Stale(_) => Status::failed_precondition(e.to_string()),
    }
}

/// One entry of a stream's batch, waiting for its answer.
struct StreamEntry {
    slot: AnswerSlot,
    asked: Asked,
}

impl SubmissionSink for StreamEntry {
    fn answer(self, outcome: Result<Signed<pbft_types::Reply>, ApiError>) {
        self.slot.answer(match outcome {
            Ok(reply) => Answer::Reply(reply.to_envelope()),
            Err(e) => Answer::Refused(refusal(self.asked, &e)),
        });
    }

    fn is_closed(&self) -> bool {
        self.slot.is_closed()
    }
}

/// Each entry of a batch, in order, with its slot.
fn entries(asked: impl Iterator<Item = Asked>, slots: Vec<AnswerSlot>) -> Vec<StreamEntry> {
    asked
        .zip(slots)
        .map(|(asked, slot)| StreamEntry { slot, asked })
        .collect()
}

/// What one entry of a stream's batch asked for.
enum Asked {
    Request(SignedEnvelope),
    Reply { client: u64, timestamp: u64 },
}

/// The refusal of a streamed entry, naming the request's client and timestamp when they can be read (a malformed
/// request may still name them; one that is not a signed REQUEST at all is refused as client 0).
fn refusal(asked: Asked, e: &ApiError) -> Refusal {
    let (client, timestamp) = match asked {
        Asked::Request(envelope) => Signed::<ClientRequest>::from_envelope(envelope)
            .map_or((0, 0), |r| (r.value().client.0, r.value().timestamp.0)),
        Asked::Reply { client, timestamp } => (client, timestamp),
    };
    Refusal::from_status(client, timestamp, &status(e))
}

/// The ledger's gRPC service (`service LedgerApi`), for a replica that runs the ledger.
pub fn ledger_service(ledger: LedgerService) -> LedgerApiServer<GrpcLedger> {
    LedgerApiServer::new(GrpcLedger { ledger })
}

pub struct GrpcLedger {
    ledger: LedgerService,
}

fn internal(e: crate::ledger::LedgerError) -> Status {
    Status::internal(e.to_string())
}

fn digest(field: &str, bytes: &[u8]) -> Result<Digest, Status> {
    Digest::from_slice(bytes)
        .ok_or_else(|| Status::invalid_argument(format!("{field} must be 32 bytes")))
}

#[tonic::async_trait]
impl LedgerApi for GrpcLedger {
    type GetBlocksStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<CertifiedBlockMsg, Status>>>;

    async fn get_blocks(
        &self,
        request: Request<BlockRange>,
    ) -> Result<Response<Self::GetBlocksStream>, Status> {
        let r = request.into_inner();
        let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
        let blocks = self
            .ledger
            .off_thread(move |l| l.blocks(r.from, r.to, limit))
            .await
            .map_err(internal)?;
        let items: Vec<_> = blocks.iter().map(|b| Ok(b.to_wire())).collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }

    async fn get_head(&self, _request: Request<HeadQuery>) -> Result<Response<ChainHead>, Status> {
        let (height, hash) = self.ledger.head();
        Ok(Response::new(ChainHead {
            height,
            hash: hash.0.to_vec().into(),
            contiguous_from: self
                .ledger
                .off_thread(LedgerService::contiguous_from)
                .await
                .map_err(internal)?,
        }))
    }

    async fn get_block_by_hash(
        &self,
        request: Request<BlockHash>,
    ) -> Result<Response<CertifiedBlockMsg>, Status> {
        let hash = digest("hash", &request.into_inner().hash)?;
        let found = self
            .ledger
            .off_thread(move |l| l.block_by_hash(&hash))
            .await
            .map_err(internal)?;
        match found {
            Some(block) => Ok(Response::new(block.to_wire())),
            None => Err(Status::not_found(format!("no block with hash {hash}"))),
        }
    }

    async fn get_entry(
        &self,
        request: Request<EntryQuery>,
    ) -> Result<Response<pbft_types::wire::EntryProof>, Status> {
        let d = digest("request_digest", &request.into_inner().request_digest)?;
        let found = self
            .ledger
            .off_thread(move |l| l.entry(&d))
            .await
            .map_err(internal)?;
        match found {
            Some(proof) => Ok(Response::new(proof.to_wire())),
            None => Err(Status::not_found(format!(
                "no executed request with digest {d}"
            ))),
        }
    }

    async fn get_account(
        &self,
        request: Request<BalanceQuery>,
    ) -> Result<Response<AccountAtHeight>, Status> {
        let account = request.into_inner().account;
        let key = AccountKey::try_from(account.as_ref())
            .map_err(|_| Status::invalid_argument("account must be 32 bytes"))?;
        let (state, height) = self.ledger.account(&key);
        Ok(Response::new(AccountAtHeight {
            account: Some(pbft_types::wire::AccountState {
                account,
                balance: state.balance,
                nonce: state.nonce,
            }),
            height,
        }))
    }
}
