//! The HTTP/JSON API of a replica:
//!
//! - `GET /v1/status`: who the replica is and where it stands (view, executed, checkpoint, counters).
//! - `POST /v1/requests` with `{"request": "<hex of a signed REQUEST envelope>"}`: submits a client's request
//!   and answers with this replica's signed reply once it executed it. Requests are signed by their client
//!   (`pbft client` does it); the replica checks the signature against the cluster's client keys. A client
//!   accepts a result once f+1 replicas answered the same.
//! - `GET /metrics`: the replica's metrics in the Prometheus text format.
//!
//! Binary fields travel as hex, so that `curl` and a shell are enough to use the API.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ClientApi};

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

/// The API's routes, ready to serve.
pub fn router(api: ClientApi) -> Router {
    // Hex doubles the size, and the JSON around it is small.
    let body_limit = api.max_request().saturating_mul(2).saturating_add(1024);
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/requests", post(submit))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
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
            ApiError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
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
