//! The HTTP/JSON API of a replica:
//!
//! - `GET /v1/status`: who the replica is and where it stands (view, executed, checkpoint, counters).
//! - `POST /v1/requests` with `{"request": "<hex of a signed REQUEST envelope>"}`: submits a client's request
//!   and answers with this replica's signed reply once it executed it. Requests are signed by their client
//!   (`pbft client` does it); the replica checks the signature against the cluster's client keys. A client
//!   accepts a result once f+1 replicas answered the same.
//!
//! Binary fields travel as hex, so that `curl` and a shell are enough to use the API.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use pbft_crypto::Keyring;
use pbft_types::{Request, Signed};
use serde::{Deserialize, Serialize};

use crate::runtime::{NodeHandle, SubmitError};

#[derive(Clone)]
struct Api {
    node: NodeHandle,
    keyring: std::sync::Arc<Keyring>,
    max_request: usize,
    timeout: Duration,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusBody {
    pub replica: u64,
    pub view: u64,
    pub changing_view: bool,
    pub last_executed: u64,
    pub stable_checkpoint: u64,
    pub high_watermark: u64,
    pub batches_committed: u64,
    pub requests_executed: u64,
    pub view_changes: u64,
    pub inputs_refused: u64,
    pub messages_unauthenticated: u64,
}

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

/// The API's routes, ready to serve. `max_request` bounds the encoded request; `timeout` how long a submission
/// waits for this replica to execute it.
pub fn router(node: NodeHandle, keyring: Keyring, max_request: usize, timeout: Duration) -> Router {
    let api = Api {
        node,
        keyring: std::sync::Arc::new(keyring),
        max_request,
        timeout,
    };
    // Hex doubles the size, and the JSON around it is small.
    let body_limit = max_request.saturating_mul(2).saturating_add(1024);
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/requests", post(submit))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
}

async fn status(State(api): State<Api>) -> Json<StatusBody> {
    let s = api.node.status();
    let c = api.node.counters();
    Json(StatusBody {
        replica: s.id.0,
        view: s.view.0,
        changing_view: s.changing_view,
        last_executed: s.last_executed.0,
        stable_checkpoint: s.low_watermark.0,
        high_watermark: s.high_watermark.0,
        batches_committed: c.batches_committed,
        requests_executed: c.requests_executed,
        view_changes: c.view_changes,
        inputs_refused: c.inputs_refused,
        messages_unauthenticated: c.messages_unauthenticated,
    })
}

async fn submit(
    State(api): State<Api>,
    Json(body): Json<SubmitBody>,
) -> Result<Json<ReplyBody>, Failure> {
    let bytes = hex::decode(body.request.trim())
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request is not hex: {e}")))?;
    let signed = Signed::<Request>::decode(&bytes, api.max_request)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request: {e}")))?;
    let request = api
        .keyring
        .verify(signed)
        .map_err(|e| fail(StatusCode::UNAUTHORIZED, e))?;
    let reply = api
        .node
        .submit(request, api.timeout)
        .await
        .map_err(|e| match e {
            SubmitError::Timeout(_) => fail(StatusCode::GATEWAY_TIMEOUT, e),
            SubmitError::Stopped => fail(StatusCode::SERVICE_UNAVAILABLE, e),
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
