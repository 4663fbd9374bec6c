//! The HTTP/JSON API on an in-process cluster: a signed request submitted through every replica's API gets
//! f+1 (here all) matching replies; bad input gets a clear error and changes nothing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use bytes::Bytes;
use pbft_apps::{KvOp, KvResult, KvStore};
use pbft_crypto::KeyPair;
use pbft_node::api::ClientApi;
use pbft_node::http::{ReplyBody, StatusBody, router};
use pbft_node::local::LocalCluster;
use pbft_types::{ClientId, Params, Request, Timestamp};
use tower::ServiceExt;

fn cluster() -> LocalCluster {
    LocalCluster::start(4, 1, Params::default(), || Box::new(KvStore::new())).expect("a cluster")
}

async fn call(
    c: &LocalCluster,
    replica: usize,
    request: HttpRequest<Body>,
) -> (StatusCode, serde_json::Value) {
    let app = router(
        ClientApi::new(
            c.nodes[replica].clone(),
            c.keyring.clone(),
            64 * 1024,
            Duration::from_secs(5),
        ),
        None,
    );
    let response = app.oneshot(request).await.expect("the router answers");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    // The API answers JSON; the HTTP layer's own refusals (a body over the limit) are plain text.
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    (status, json)
}

fn post(json: String) -> HttpRequest<Body> {
    HttpRequest::post("/v1/requests")
        .header("content-type", "application/json")
        .body(Body::from(json))
        .expect("a request")
}

fn put_request(c: &LocalCluster, timestamp: u64) -> String {
    let signed = c.clients[0].sign(Request {
        client: ClientId(0),
        timestamp: Timestamp(timestamp),
        operation: KvOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }
        .encode(),
    });
    hex::encode(signed.signed().encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_commits_through_every_replicas_api() {
    let c = cluster();
    let body = format!(r#"{{"request": "{}"}}"#, put_request(&c, 1));
    let mut replies = Vec::new();
    for replica in 0..4 {
        let (status, json) = call(&c, replica, post(body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let reply: ReplyBody = serde_json::from_value(json).expect("a reply");
        assert_eq!(reply.replica, replica as u64);
        replies.push(reply.result);
    }
    let done = hex::encode(KvResult::Done.encode());
    assert_eq!(replies, vec![done; 4]);
    let (status, json) = call(
        &c,
        2,
        HttpRequest::get("/v1/status")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let s: StatusBody = serde_json::from_value(json).expect("a status");
    assert_eq!((s.replica, s.last_executed, s.requests_executed), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_reason() {
    let c = cluster();
    let (status, json) = call(&c, 0, post(r#"{"request": "zz"}"#.into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(
        json["error"].as_str().unwrap_or("").contains("not hex"),
        "{json}"
    );

    let (status, json) = call(&c, 0, post(r#"{"request": "0102"}"#.into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");

    // Signed by a key that is not client 0's.
    let stranger = KeyPair::from_seed([7; 32]).sign(Request {
        client: ClientId(0),
        timestamp: Timestamp(1),
        operation: Bytes::from_static(b"x"),
    });
    let body = format!(r#"{{"request": "{}"}}"#, hex::encode(stranger.encode()));
    let (status, json) = call(&c, 0, post(body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");

    let (status, _) = call(
        &c,
        0,
        post(format!("{{\"request\": \"{}\"}}", "00".repeat(200 * 1024))),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (_, json) = call(
        &c,
        0,
        HttpRequest::get("/v1/status")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(json["last_executed"], 0, "nothing was executed: {json}");
}
