//! Four replica runtimes in one process, joined by channels: requests submitted through their handles commit
//! with f+1 matching signed replies, and a primary cut off from the others is replaced by a view change.

use std::time::Duration;

use bytes::Bytes;
use pbft_apps::{KvOp, KvResult, KvStore};
use pbft_node::local::LocalCluster;
use pbft_types::{ClientId, MAC_LEN, Params, ReplicaId, Request, Seal, Signed, Timestamp, View};

const N: usize = 4;

fn cluster() -> LocalCluster {
    LocalCluster::start(N, 1, params(), || Box::new(KvStore::new())).expect("a valid cluster")
}

fn params() -> Params {
    Params {
        checkpoint_interval: 4,
        window: 8,
        request_timeout: Duration::from_millis(300),
        view_change_timeout: Duration::from_millis(300),
        status_interval: Duration::from_millis(50),
        ..Params::default()
    }
}

/// Submits a put through every replica not in `skip` and returns the results of the replies that came back.
async fn put(c: &LocalCluster, timestamp: u64, key: &str, skip: &[usize]) -> Vec<KvResult> {
    let request = c.clients[0].sign(Request {
        client: ClientId(0),
        timestamp: Timestamp(timestamp),
        operation: KvOp::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        }
        .encode(),
    });
    let calls = c
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(_, node)| {
            let (node, request) = (node.clone(), request.clone());
            tokio::spawn(async move { node.submit(request, Duration::from_secs(10)).await })
        })
        .collect::<Vec<_>>();
    let mut results = Vec::new();
    for call in calls {
        if let Ok(Ok(reply)) = call.await {
            assert_eq!(reply.value().timestamp, Timestamp(timestamp));
            results.push(KvResult::decode(&reply.value().result).expect("a kv result"));
        }
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_commit_with_matching_replies_from_every_replica() {
    let c = cluster();
    for t in 1..=10 {
        let results = put(&c, t, &format!("k{t}"), &[]).await;
        assert_eq!(results, vec![KvResult::Done; N], "request {t}");
    }
    let status = c.nodes[3]
        .wait_for(Duration::from_secs(5), |s| s.last_executed.0 >= 10)
        .await;
    assert!(status.last_executed.0 >= 10, "{status:?}");
    assert!(
        status.low_watermark.0 >= 4,
        "checkpoints became stable: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_is_replaced_and_requests_still_commit() {
    let c = cluster();
    assert_eq!(put(&c, 1, "a", &[]).await, vec![KvResult::Done; N]);
    c.mesh.set_cut(ReplicaId(0), true);
    let results = put(&c, 2, "b", &[0]).await;
    assert_eq!(results, vec![KvResult::Done; N - 1]);
    let status = c.nodes[1].status();
    assert!(status.view >= View(1), "a view change happened: {status:?}");
    assert!(c.nodes[1].counters().view_changes >= 1);
}

/// With MAC authenticators, a client spoils replica 3's MAC while replica 2 is cut off: replica 3's verifier tasks
/// hand the primary's PRE-PREPARE to the core unvouched, the core takes it once replica 1's PREPARE vouches for it,
/// and replica 3's vote completes the quorum that replicas 0 and 1 alone could not make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_one_backup_cannot_check_commits_while_another_is_down() {
    let params = Params {
        client_auth: pbft_types::ClientAuth::Macs,
        ..params()
    };
    let c =
        LocalCluster::start(N, 1, params, || Box::new(KvStore::new())).expect("a valid cluster");
    c.mesh.set_cut(ReplicaId(2), true);
    let request = Request {
        client: ClientId(0),
        timestamp: Timestamp(1),
        operation: KvOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }
        .encode(),
    };
    let sealed = c.client_sessions[0].seal_request(request.clone());
    let Seal::Authenticator(authenticator) = sealed.seal() else {
        panic!("sealed with MACs")
    };
    let mut authenticator = authenticator.to_vec();
    authenticator[3 * MAC_LEN] ^= 1;
    let spoiled =
        Signed::from_authenticated_parts(sealed.body().clone(), authenticator.into(), request);
    assert!(c.replica_keyrings[3].verify(spoiled.clone()).is_err());
    let calls: Vec<_> = [0, 1]
        .into_iter()
        .map(|i| {
            let verified = c.replica_keyrings[i]
                .verify(spoiled.clone())
                .expect("the MACs of replicas 0 and 1 are right");
            let node = c.nodes[i].clone();
            tokio::spawn(async move { node.submit(verified, Duration::from_secs(10)).await })
        })
        .collect();
    for call in calls {
        let reply = call.await.expect("joined").expect("a reply");
        assert_eq!(
            KvResult::decode(&reply.value().result).expect("a kv result"),
            KvResult::Done
        );
    }
    let status = c.nodes[3]
        .wait_for(Duration::from_secs(5), |s| s.last_executed.0 >= 1)
        .await;
    assert_eq!(status.last_executed.0, 1, "{status:?}");
}
