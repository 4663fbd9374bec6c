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

fn api(c: &LocalCluster, replica: usize) -> ClientApi {
    ClientApi::new(
        c.nodes[replica].clone(),
        c.keyring.clone(),
        64 * 1024,
        Duration::from_secs(5),
    )
}

async fn call(
    c: &LocalCluster,
    replica: usize,
    request: HttpRequest<Body>,
) -> (StatusCode, serde_json::Value) {
    call_api(api(c, replica), request).await
}

async fn call_api(api: ClientApi, request: HttpRequest<Body>) -> (StatusCode, serde_json::Value) {
    let app = router(api, None);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_over_the_clusters_limit_is_refused_at_once() {
    let c = cluster();
    let small = ClientApi::new(
        c.nodes[0].clone(),
        c.keyring.clone(),
        4,
        Duration::from_secs(5),
    );
    let started = std::time::Instant::now();
    let body = format!(r#"{{"request": "{}"}}"#, put_request(&c, 1));
    let (status, json) = call_api(small, post(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(
        json["error"].as_str().unwrap_or("").contains("limit of 4"),
        "{json}"
    );
    // Refused by the API, not left to time out in the replica.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_too_many_bytes_waiting_refuses_more_and_takes_them_back_once_answered() {
    let c = cluster();
    // Less than one request's weight: refused at once, nothing executed.
    let full = api(&c, 0).with_waiting_limit(100);
    let body = format!(r#"{{"request": "{}"}}"#, put_request(&c, 1));
    let (status, json) = call_api(full, post(body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert!(
        json["error"].as_str().unwrap_or("").contains("overloaded"),
        "{json}"
    );
    // Room for one request at a time: each answered request gives its room back to the next.
    let one_at_a_time = api(&c, 0).with_waiting_limit(4096);
    for t in 2..6 {
        let body = format!(r#"{{"request": "{}"}}"#, put_request(&c, t));
        for replica in 1..4 {
            // The other replicas take part too, so that the request commits.
            let _ = call(&c, replica, post(body.clone())).await;
        }
        let (status, json) = call_api(one_at_a_time.clone(), post(body)).await;
        assert_eq!(status, StatusCode::OK, "request {t}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_request_is_answered_at_once_not_held_until_the_timeout() {
    let c = cluster();
    let body = format!(r#"{{"request": "{}"}}"#, put_request(&c, 5));
    let (status, json) = call(&c, 0, post(body)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // An older request of the same client (a replay, say) will never execute: the replica says so at once
    // instead of holding it, and its place among the waiting bytes, for the whole timeout.
    let started = std::time::Instant::now();
    let body = format!(r#"{{"request": "{}"}}"#, put_request(&c, 3));
    let (status, json) = call(&c, 0, post(body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert!(
        json["error"].as_str().unwrap_or("").contains("older than"),
        "{json}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_its_limit_of_requests_waiting_is_refused_more_until_one_is_answered() {
    let c = cluster();
    // Replica 1 is a backup: a request sent to it alone waits until it forwards it to the primary (a quarter of
    // the request timeout), long enough to submit a second one meanwhile.
    let limited = api(&c, 1).with_client_limit(1);
    let first = tokio::spawn(call_api(
        limited.clone(),
        post(format!(r#"{{"request": "{}"}}"#, put_request(&c, 1))),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, json) = call_api(
        limited.clone(),
        post(format!(r#"{{"request": "{}"}}"#, put_request(&c, 2))),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap_or("")
            .contains("requests waiting at this replica"),
        "{json}"
    );
    let (status, json) = first.await.expect("the first call ends");
    assert_eq!(status, StatusCode::OK, "the first request: {json}");
    // Its slot is back.
    let (status, json) = call_api(
        limited,
        post(format!(r#"{{"request": "{}"}}"#, put_request(&c, 3))),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "after the first was answered: {json}"
    );
}

/// A submission's outcome.
type Outcome = Result<pbft_types::Signed<pbft_types::Reply>, pbft_node::api::ApiError>;

/// Where a submission's outcome arrives in these tests.
type Answered = tokio::sync::oneshot::Receiver<Outcome>;

/// One oneshot channel per entry, as the sinks the API takes, and the ends their outcomes arrive at.
fn sinks(n: usize) -> (Vec<tokio::sync::oneshot::Sender<Outcome>>, Vec<Answered>) {
    (0..n).map(|_| tokio::sync::oneshot::channel()).unzip()
}

/// Submits `envelopes` together, as a stream's batch does.
async fn submitted(
    api: &ClientApi,
    envelopes: Vec<pbft_types::wire::SignedEnvelope>,
) -> Vec<Answered> {
    let (tx, rx) = sinks(envelopes.len());
    api.submit_envelopes_to(envelopes, tx).await;
    rx
}

/// Asks for the replies `wishes` name, as a stream's batch does.
fn awaited(api: &ClientApi, wishes: Vec<pbft_types::wire::AwaitedReply>) -> Vec<Answered> {
    let (tx, rx) = sinks(wishes.len());
    api.await_replies_to(wishes, tx);
    rx
}

/// The requests of one stream batch reach the replica together; each gets its own answer, in the batch's order,
/// and a malformed one among them is refused without holding up the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_envelopes_is_answered_request_by_request_in_order() {
    let c = cluster();
    let envelope = |timestamp: u64| {
        c.clients[0]
            .sign(Request {
                client: ClientId(0),
                timestamp: Timestamp(timestamp),
                operation: KvOp::Put {
                    key: Bytes::from(format!("k{timestamp}")),
                    value: Bytes::from_static(b"v"),
                }
                .encode(),
            })
            .signed()
            .to_envelope()
    };
    let garbage = pbft_types::wire::SignedEnvelope {
        body: Bytes::from_static(b"not a request"),
        ..Default::default()
    };
    // Replica 0 is the primary: it proposes what it is given, and the others execute it from its PRE-PREPARE.
    // Room for exactly the batch's two requests of client 0.
    let two = api(&c, 0).with_client_limit(2);
    let answers = submitted(&two, vec![envelope(1), garbage, envelope(2)]).await;
    assert_eq!(answers.len(), 3);
    let mut results = Vec::new();
    for answer in answers {
        results.push(answer.await.expect("every entry is answered"));
    }
    let timestamp = |r: &Result<_, _>| match r {
        Ok(reply) => {
            let reply: &pbft_types::Signed<pbft_types::Reply> = reply;
            Some(reply.value().timestamp.0)
        }
        Err(_) => None,
    };
    assert_eq!(timestamp(&results[0]), Some(1), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(pbft_node::api::ApiError::Malformed(_))),
        "{:?}",
        results[1]
    );
    assert_eq!(timestamp(&results[2]), Some(2), "{:?}", results[2]);
    // Nothing is left waiting: the client's slots the batch held are free again.
    let (status, json) = call_api(
        two,
        post(format!(r#"{{"request": "{}"}}"#, put_request(&c, 3))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

/// A cluster of four whose clients seal with MACs.
fn mac_cluster() -> LocalCluster {
    let params = Params {
        client_auth: pbft_types::ClientAuth::Macs,
        ..Params::default()
    };
    LocalCluster::start(4, 1, params, || Box::new(KvStore::new())).expect("a cluster")
}

/// Client 0's wish, for `replica`, for the reply to its request `timestamp`.
fn wish(
    sessions: &pbft_crypto::SessionKeys,
    replica: u64,
    timestamp: u64,
) -> pbft_types::wire::AwaitedReply {
    pbft_types::wire::AwaitedReply {
        client: 0,
        timestamp,
        mac: sessions
            .awaited_mac(pbft_types::ReplicaId(replica), Timestamp(timestamp))
            .expect("a replica of the cluster")
            .to_vec()
            .into(),
    }
}

/// A client that sends its request to the primary only asks the backups for their replies with an
/// `AwaitedReply`: each answers with its own reply once the primary's PRE-PREPARE made it execute the request, a
/// late wish is answered from the reply given, and a wish without the client's MAC is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_answers_an_awaited_reply_with_its_own_reply() {
    let c = mac_cluster();
    let api_of = |replica: usize| {
        ClientApi::new(
            c.nodes[replica].clone(),
            c.replica_keyrings[replica].clone(),
            64 * 1024,
            Duration::from_secs(5),
        )
    };
    let sessions = &c.client_sessions[0];
    let wish = |replica: u64, timestamp: u64| wish(sessions, replica, timestamp);
    let request = sessions.seal_request(Request {
        client: ClientId(0),
        timestamp: Timestamp(1),
        operation: KvOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }
        .encode(),
    });
    // Replica 1 waits before the request exists anywhere; a wish carrying replica 2's MAC is not replica 1's.
    let mut early = awaited(&api_of(1), vec![wish(1, 1), wish(2, 1)]);
    let forged = early.pop().expect("two answers").await.expect("answered");
    assert!(
        matches!(forged, Err(pbft_node::api::ApiError::Unauthenticated(_))),
        "{forged:?}"
    );
    let primary = submitted(&api_of(0), vec![request.to_envelope()])
        .await
        .pop()
        .expect("one answer")
        .await
        .expect("answered")
        .expect("the primary's reply");
    let backup = early
        .pop()
        .expect("one answer")
        .await
        .expect("answered")
        .expect("replica 1's reply");
    assert_eq!(backup.value().replica.0, 1);
    assert_eq!(backup.value().result, primary.value().result);
    // Replica 2 executed the request before it was asked: it answers from the reply it gave.
    c.nodes[2]
        .wait_for(Duration::from_secs(5), |s| s.last_executed.0 >= 1)
        .await;
    let late = awaited(&api_of(2), vec![wish(2, 1)])
        .pop()
        .expect("one answer")
        .await
        .expect("answered")
        .expect("replica 2's reply");
    assert_eq!(late.value().replica.0, 2);
    assert_eq!(late.value().result, primary.value().result);
}

/// A stream that goes away while its entries wait frees what they held at the next sweep: its client is not
/// refused for waits nobody listens to any longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waits_of_a_stream_that_went_away_free_their_client_slots() {
    let c = mac_cluster();
    let api = ClientApi::new(
        c.nodes[1].clone(),
        c.replica_keyrings[1].clone(),
        64 * 1024,
        Duration::from_secs(30),
    )
    .with_client_limit(1);
    let sessions = &c.client_sessions[0];
    let wish = |timestamp: u64| wish(sessions, 1, timestamp);
    // Wishes for requests never sent: each would wait 30 s.
    let gone = awaited(&api, vec![wish(1)]);
    let refused = awaited(&api, vec![wish(2)])
        .pop()
        .expect("one answer")
        .await
        .expect("answered");
    assert!(
        matches!(
            refused,
            Err(pbft_node::api::ApiError::TooManyFromClient { .. })
        ),
        "{refused:?}"
    );
    // Its listener goes, as a dropped stream's slots do.
    drop(gone);
    tokio::time::sleep(pbft_node::waiters::SWEEP_EVERY * 3).await;
    let mut admitted = awaited(&api, vec![wish(3)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        matches!(
            admitted[0].try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "the third wish was not admitted"
    );
}
