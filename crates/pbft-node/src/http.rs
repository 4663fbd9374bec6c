//! The HTTP/JSON API of a replica:
//!
//! - `GET /v1/status`: who the replica is and where it stands (view, executed, checkpoint, counters).
//! - `POST /v1/requests` with `{"request": "<hex of a signed REQUEST envelope>"}`: submits a client's request
//!   and answers with this replica's signed reply once it executed it. Requests are signed by their client
//!   (`pbft client` does it); the replica checks the signature against the cluster's client keys. A client
//!   accepts a result once f+1 replicas answered the same.
//! - `GET /metrics`: the replica's metrics in the Prometheus text format.
//!
//! A replica that runs the ledger also serves its chain (blocks carry their commit certificates):
//!
//! - `GET /v1/ledger/head`: the latest block's height and hash.
//! - `GET /v1/ledger/blocks/{latest|HEIGHT|HASH}`, `GET /v1/ledger/blocks?from=A&to=B` (at most 256).
//! - `GET /v1/ledger/transactions/{REQUEST_DIGEST}`: an executed request with its Merkle path.
//! - `GET /v1/ledger/accounts/{PUBLIC_KEY}`: an account's balance and nonce, as this replica's state has it.
//!
//! Binary fields travel as hex, so that `curl` and a shell are enough to use the API.

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use pbft_apps::ledger::{CertifiedBlock, Entry, LedgerOp, LedgerResult};
use pbft_types::Digest;

use crate::api::{ApiError, ClientApi};
use crate::ledger::LedgerService;

/// The answer to `GET /v1/status`.
pub use crate::api::StatusView as StatusBody;

#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitBody {
    /// Hex of an encoded `SignedEnvelope` holding the client's REQUEST.
    pub request: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyBody {
    pub replica: u64,
    pub view: u64,
    pub client: u64,
    pub timestamp: u64,
    /// Hex of the application's result.
    pub result: String,
    /// Hex of the encoded `SignedEnvelope` of the REPLY, for the client to verify.
    pub reply: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

type Failure = (StatusCode, Json<ErrorBody>);

fn fail(status: StatusCode, error: impl ToString) -> Failure {
    (
        status,
        Json(ErrorBody {
            error: error.to_string(),
        }),
    )
}

/// The API's routes, ready to serve; with the ledger's when the replica runs it.
pub fn router(api: ClientApi, ledger: Option<LedgerService>) -> Router {
    // Hex doubles the size, and the JSON around it is small.
    let body_limit = api.max_request().saturating_mul(2).saturating_add(1024);
    let router = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/requests", post(submit))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api);
    match ledger {
        Some(ledger) => router.merge(ledger_router(ledger)),
        None => router,
    }
}

async fn status(State(api): State<ClientApi>) -> Json<StatusBody> {
    Json(api.status())
}

async fn metrics(State(api): State<ClientApi>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.render_metrics(),
    )
}

async fn submit(
    State(api): State<ClientApi>,
    Json(body): Json<SubmitBody>,
) -> Result<Json<ReplyBody>, Failure> {
    let bytes = hex::decode(body.request.trim())
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request is not hex: {e}")))?;
    let reply = api.submit(&bytes).await.map_err(|e| {
        let status = match e {
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Stopped(_) | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyFromClient { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Stale(_) => StatusCode::CONFLICT,
        };
        fail(status, e)
    })?;
    let r = reply.value();
    Ok(Json(ReplyBody {
        replica: r.replica.0,
        view: r.view.0,
        client: r.client.0,
        timestamp: r.timestamp.0,
        result: hex::encode(&r.result),
        reply: hex::encode(reply.encode()),
    }))
}

/// A block as `GET /v1/ledger/blocks/...` shows it. `encoded` is the whole certified block (hex of a
/// `CertifiedBlock`), which is what to check: the rest is a readable copy.
#[derive(Debug, Serialize, Deserialize)]
pub struct BlockBody {
    pub height: u64,
    pub hash: String,
    pub previous: String,
    /// The view of its commit certificate.
    pub view: Option<u64>,
    pub batch_digest: String,
    pub entries_root: String,
    pub state_root: String,
    pub entries: Vec<EntryBody>,
    /// The replicas whose COMMITs certify the block.
    pub certified_by: Vec<u64>,
    pub encoded: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EntryBody {
    pub request_digest: String,
    pub client: Option<u64>,
    pub timestamp: Option<u64>,
    pub operation: String,
    /// `None`: not executed (its client had a newer request executed already).
    pub result: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeadBody {
    pub height: u64,
    pub hash: String,
    /// Every block from here to `height` is held (backfill after a state transfer may still be running).
    pub contiguous_from: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProofBody {
    pub height: u64,
    pub index: usize,
    pub block_hash: String,
    pub entries_root: String,
    pub entry: EntryBody,
    /// From the leaf up: each sibling and whether it is on the left.
    pub path: Vec<(String, bool)>,
    /// Whether the path leads from the entry to the block's entries root (checked here; check it yourself too).
    pub holds: bool,
    /// Hex of the encoded `EntryProof`.
    pub encoded: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AccountBody {
    pub account: String,
    pub balance: u64,
    pub nonce: u64,
    /// The block the answer is as of. One replica's view: query through the protocol for one f+1 vouch for.
    pub height: u64,
}

fn entry_body(entry: &Entry) -> EntryBody {
    let request = ledger_request(&entry.request);
    EntryBody {
        request_digest: entry.request_digest().to_string(),
        client: request.as_ref().map(|r| r.client.0),
        timestamp: request.as_ref().map(|r| r.timestamp.0),
        operation: match &request {
            Some(r) => match LedgerOp::decode(&r.operation) {
                Ok(op) => op.to_string(),
                Err(refusal) => format!("not a ledger operation ({})", refusal.detail),
            },
            None => "not a request".to_string(),
        },
        result: entry
            .result
            .as_ref()
            .map(|r| match LedgerResult::decode(r) {
                Some(result) => result.to_string(),
                None => format!("hex {}", hex::encode(r)),
            }),
    }
}

fn ledger_request(body: &[u8]) -> Option<pbft_types::Request> {
    use pbft_types::Body;
    use prost::Message;
    let kind = pbft_types::wire::SignedBody::decode(body).ok()?.kind?;
    pbft_types::Request::from_wire(kind).ok()
}

pub fn block_body(block: &CertifiedBlock) -> BlockBody {
    let h = &block.header;
    BlockBody {
        height: h.height,
        hash: block.hash().to_string(),
        previous: h.previous.to_string(),
        view: block.view().map(|v| v.0),
        batch_digest: h.batch_digest.to_string(),
        entries_root: h.entries_root.to_string(),
        state_root: h.state_root.to_string(),
        entries: block.entries.iter().map(entry_body).collect(),
        certified_by: block.commits.iter().map(|c| c.value().replica.0).collect(),
        encoded: hex::encode(block.encode()),
    }
}

fn hex32(what: &str, text: &str) -> Result<[u8; 32], Failure> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("{what} must be 64 hex digits"),
            )
        })
}

fn internal(e: crate::ledger::LedgerError) -> Failure {
    fail(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// The ledger's routes (`/v1/ledger/...`), for a replica that runs the ledger.
fn ledger_router(ledger: LedgerService) -> Router {
    Router::new()
        .route("/v1/ledger/head", get(ledger_head))
        .route("/v1/ledger/blocks", get(ledger_blocks))
        .route("/v1/ledger/blocks/{id}", get(ledger_block))
        .route("/v1/ledger/transactions/{digest}", get(ledger_transaction))
        .route("/v1/ledger/accounts/{account}", get(ledger_account))
        .with_state(ledger)
}

async fn ledger_head(State(ledger): State<LedgerService>) -> Result<Json<HeadBody>, Failure> {
    let (height, hash) = ledger.head();
    Ok(Json(HeadBody {
        height,
        hash: hash.to_string(),
        contiguous_from: ledger
            .off_thread(LedgerService::contiguous_from)
            .await
            .map_err(internal)?,
    }))
}

#[derive(Debug, Deserialize)]
struct RangeQuery {
    from: Option<u64>,
    to: Option<u64>,
}

async fn ledger_blocks(
    State(ledger): State<LedgerService>,
    Query(range): Query<RangeQuery>,
) -> Result<Json<Vec<BlockBody>>, Failure> {
    let from = range.from.unwrap_or(1);
    let to = range.to.unwrap_or(u64::MAX);
    let blocks = ledger
        .off_thread(move |l| l.blocks(from, to, 0))
        .await
        .map_err(internal)?;
    Ok(Json(blocks.iter().map(block_body).collect()))
}

/// `latest`, a height, or a block hash (64 hex digits).
async fn ledger_block(
    State(ledger): State<LedgerService>,
    Path(id): Path<String>,
) -> Result<Json<BlockBody>, Failure> {
    let block = if id == "latest" {
        let height = ledger.head().0;
        ledger.off_thread(move |l| l.block(height)).await
    } else if let Ok(height) = id.parse::<u64>() {
        ledger.off_thread(move |l| l.block(height)).await
    } else {
        let hash = Digest(hex32("a block hash", &id)?);
        ledger.off_thread(move |l| l.block_by_hash(&hash)).await
    }
    .map_err(internal)?;
    block
        .map(|b| Json(block_body(&b)))
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no block {id} here")))
}

async fn ledger_transaction(
    State(ledger): State<LedgerService>,
    Path(digest): Path<String>,
) -> Result<Json<ProofBody>, Failure> {
    let d = Digest(hex32("a request digest", &digest)?);
    let proof = ledger
        .off_thread(move |l| l.entry(&d))
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                format!("no executed request with digest {digest} here"),
            )
        })?;
    Ok(Json(ProofBody {
        height: proof.header.height,
        index: proof.index,
        block_hash: proof.block_hash().to_string(),
        entries_root: proof.header.entries_root.to_string(),
        entry: entry_body(&proof.entry),
        path: proof
            .path
            .iter()
            .map(|s| (s.sibling.to_string(), s.sibling_on_left))
            .collect(),
        holds: proof.holds(),
        encoded: hex::encode(prost::Message::encode_to_vec(&proof.to_wire())),
    }))
}

async fn ledger_account(
    State(ledger): State<LedgerService>,
    Path(account): Path<String>,
) -> Result<Json<AccountBody>, Failure> {
    let key = hex32("an account", &account)?;
    let (state, height) = ledger.account(&key);
    Ok(Json(AccountBody {
        account: hex::encode(key),
        balance: state.balance,
        nonce: state.nonce,
        height,
    }))
}
