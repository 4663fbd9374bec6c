//! Four replica runtimes in one process, joined by channels: requests submitted through their handles commit
//! with f+1 matching signed replies, and a primary cut off from the others is replaced by a view change.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pbft_apps::{KvOp, KvResult, KvStore};
use pbft_core::Replica;
use pbft_crypto::{KeyPair, Keyring, Signer};
use pbft_node::{Mesh, NodeHandle, start};
use pbft_types::{
    ClientId, ClientInfo, ClusterConfig, DecodeLimits, Params, Principal, ReplicaId, Request,
    Timestamp, View,
};

const N: usize = 4;

struct Cluster {
    nodes: Vec<NodeHandle>,
    mesh: Arc<Mesh>,
    client: Signer,
}

fn cluster() -> Cluster {
    let keys: Vec<KeyPair> = (0..N)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect();
    let client_key = KeyPair::from_seed([99; 32]);
    let config = ClusterConfig {
        replicas: keys.iter().map(KeyPair::public_key).collect(),
        clients: vec![ClientInfo {
            id: ClientId(1),
            public_key: client_key.public_key(),
        }],
        params: Params {
            checkpoint_interval: 4,
            window: 8,
            request_timeout: Duration::from_millis(300),
            view_change_timeout: Duration::from_millis(300),
            status_interval: Duration::from_millis(50),
            ..Params::default()
        },
    };
    let keyring = Keyring::new(&config).expect("valid keys");
    let limits = DecodeLimits {
        max_message_size: config.params.max_message_size,
        max_batch_size: config.params.max_batch_size,
    };
    let (mesh, inboxes) = Mesh::new(N, 1024);
    let nodes = inboxes
        .into_iter()
        .enumerate()
        .map(|(i, inbox)| {
            let id = ReplicaId(i as u64);
            let signer = Signer::new(Principal::Replica(id), keys[i].clone());
            let replica = Replica::new(config.clone(), id, signer, Box::new(KvStore::new()))
                .expect("valid config");
            let link = Arc::new(mesh.link(id));
            start(
                replica,
                keys[i].clone(),
                keyring.clone(),
                limits,
                link,
                inbox,
            )
        })
        .collect();
    Cluster {
        nodes,
        mesh,
        client: Signer::new(Principal::Client(ClientId(1)), client_key),
    }
}

/// Submits a put through every replica not in `skip` and returns the results of the replies that came back.
async fn put(c: &Cluster, timestamp: u64, key: &str, skip: &[usize]) -> Vec<KvResult> {
    let request = c.client.sign(Request {
        client: ClientId(1),
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
