//! Transports on loopback: exchange, authentication failures on both sides, garbage, restarts, full queues.
//!
//! Every listener is bound (port 0) before any transport starts, so that each knows the others' addresses.
//! Nothing sleeps for a fixed time: conditions are polled with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pbft_crypto::KeyPair;
use pbft_types::{PublicKeyBytes, ReplicaId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

const DEADLINE: Duration = Duration::from_secs(5);
const MAX_FRAME: usize = 1024;

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed([seed; 32])
}

fn cluster(n: usize) -> (Vec<KeyPair>, Vec<PublicKeyBytes>) {
    let keys: Vec<KeyPair> = (0..n).map(|i| key(i as u8 + 1)).collect();
    let public = keys.iter().map(KeyPair::public_key).collect();
    (keys, public)
}

async fn bind() -> (TcpListener, SocketAddr) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

fn config(
    me: u64,
    key: &KeyPair,
    replicas: &[PublicKeyBytes],
    peers: &[(u64, SocketAddr)],
) -> TransportConfig {
    TransportConfig {
        me: ReplicaId(me),
        key: key.clone(),
        replicas: replicas.to_vec(),
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|&(id, a)| (ReplicaId(id), a)).collect(),
        max_frame: MAX_FRAME,
        queue_depth: 64,
    }
}

/// Every replica of `keys` dials every other, at the addresses of `sockets`.
async fn start_all(
    keys: &[KeyPair],
    replicas: &[PublicKeyBytes],
) -> Vec<(Transport, mpsc::Receiver<Inbound>)> {
    let mut sockets = Vec::new();
    for _ in keys {
        sockets.push(bind().await);
    }
    let addrs: Vec<SocketAddr> = sockets.iter().map(|(_, a)| *a).collect();
    let mut started = Vec::new();
    for (i, (socket, _)) in sockets.into_iter().enumerate() {
        let peers: Vec<(u64, SocketAddr)> = (0..keys.len())
            .filter(|&j| j != i)
            .map(|j| (j as u64, addrs[j]))
            .collect();
        let config = config(i as u64, &keys[i], replicas, &peers);
        started.push(
            Transport::start_with_listener(config, socket)
                .await
                .unwrap(),
        );
    }
    started
}

/// Polls `condition` until it holds, failing the test after `DEADLINE`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn recv(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("timed out waiting for a frame")
        .expect("inbound channel closed")
}

/// Nothing arrives within a short while (used after the interesting events have been waited for).
async fn nothing_more(rx: &mut mpsc::Receiver<Inbound>) {
    let got = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
    assert!(got.is_err(), "unexpected frame: {:?}", got);
}

fn frame(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[tokio::test]
async fn three_replicas_exchange_frames_both_ways_and_broadcast() {
    let (keys, replicas) = cluster(3);
    let mut nodes = start_all(&keys, &replicas).await;
    for (i, (t, _)) in nodes.iter().enumerate() {
        for j in 0..3u64 {
            if j != i as u64 {
                t.send(ReplicaId(j), frame(&format!("{i}->{j}")));
            }
        }
        // Through the runtime's interface.
        let link: Arc<dyn PeerLink> = Arc::new(t.link());
        link.broadcast(frame(&format!("all from {i}")));
    }
    for (j, (_, rx)) in nodes.iter_mut().enumerate() {
        let mut got: Vec<(u64, Bytes)> = Vec::new();
        for _ in 0..4 {
            let inbound = recv(rx).await;
            got.push((inbound.from.0, inbound.frame));
        }
        got.sort();
        let mut want: Vec<(u64, Bytes)> = (0..3u64)
            .filter(|&i| i != j as u64)
            .flat_map(|i| {
                [
                    (i, frame(&format!("{i}->{j}"))),
                    (i, frame(&format!("all from {i}"))),
                ]
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "replica {j}");
        nothing_more(rx).await;
    }
    for (t, _) in &nodes {
        let t = t.link();
        eventually("every replica connected to both peers", || {
            t.stats().peers_connected == 2
        })
        .await;
        let stats = t.stats();
        assert_eq!(
            (
                stats.frames_sent,
                stats.frames_received,
                stats.frames_dropped
            ),
            (4, 4, 0)
        );
        // Two 4-byte frames and a 10-byte broadcast to two peers, each with a 4-byte length prefix.
        assert_eq!(stats.bytes_sent, 2 * (4 + 4) + 2 * (10 + 4));
        assert_eq!((stats.auth_failures, stats.garbage_connections), (0, 0));
    }
    for (t, _) in nodes {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_dialer_whose_key_is_not_in_the_cluster_is_refused_and_counted() {
    let (keys, replicas) = cluster(2);
    let mut nodes = start_all(&keys, &replicas).await;
    let a_link = nodes[0].0.link();
    // The outsider believes it is replica 1 of a cluster with replica 0's real key: it dials replica 0, which
    // passes its check of the listener, but its own certificate carries a key replica 0 does not know.
    let outsider_key = key(99);
    let (socket, _) = bind().await;
    let outsider_cluster = [replicas[0], outsider_key.public_key()];
    let (outsider, _outsider_rx) = Transport::start_with_listener(
        config(
            1,
            &outsider_key,
            &outsider_cluster,
            &[(0, nodes[0].0.local_addr())],
        ),
        socket,
    )
    .await
    .unwrap();
    outsider.send(ReplicaId(0), frame("let me in"));
    eventually("the listener counts the refused dialer", || {
        a_link.stats().auth_failures >= 1
    })
    .await;

    // The real replica 1 is still served, and only its frame arrives.
    nodes[1].0.send(ReplicaId(0), frame("from the real 1"));
    let (_, a_rx) = &mut nodes[0];
    let inbound = recv(a_rx).await;
    assert_eq!(
        (inbound.from, inbound.frame),
        (ReplicaId(1), frame("from the real 1"))
    );
    nothing_more(a_rx).await;
    assert_eq!(a_link.stats().frames_received, 1);
    outsider.shutdown().await;
    for (t, _) in nodes {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_listener_impersonating_the_replica_dialed_is_refused_and_counted() {
    let (keys, replicas) = cluster(3);
    let (socket_b, _) = bind().await;
    let (socket_c, addr_c) = bind().await;
    // Replica 0 is told that replica 1 is at replica 2's address: replica 2 answers there with its own (valid)
    // certificate, which is not replica 1's.
    let (a, _a_rx) = Transport::start_with_listener(
        config(0, &keys[0], &replicas, &[(1, addr_c), (2, addr_c)]),
        bind().await.0,
    )
    .await
    .unwrap();
    let (b, _b_rx) = Transport::start_with_listener(config(1, &keys[1], &replicas, &[]), socket_b)
        .await
        .unwrap();
    let (c, mut c_rx) =
        Transport::start_with_listener(config(2, &keys[2], &replicas, &[]), socket_c)
            .await
            .unwrap();
    a.send(ReplicaId(1), frame("for 1 only"));
    a.send(ReplicaId(2), frame("for 2"));
    let inbound = recv(&mut c_rx).await;
    assert_eq!(
        (inbound.from, inbound.frame),
        (ReplicaId(0), frame("for 2"))
    );
    let link = a.link();
    eventually("the dialer counts the impostor", || {
        link.stats().auth_failures >= 1
    })
    .await;
    nothing_more(&mut c_rx).await;
    let stats = a.stats();
    assert_eq!(stats.peers_connected, 1, "{stats:?}");
    for t in [a, b, c] {
        t.shutdown().await;
    }
}

/// A TLS connection to `to` authenticated as replica `me` of `keys`, writing raw bytes.
async fn raw_tls(
    me: u64,
    keys: &[KeyPair],
    to: u64,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let identity = tls::Identity::new(ReplicaId(me), &keys[me as usize]).unwrap();
    let config =
        tls::client_config(&identity, ReplicaId(to), keys[to as usize].public_key()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::server_name(ReplicaId(to)).unwrap(), tcp)
        .await
        .unwrap()
}

/// Waits until the other side closes `stream` (end of stream or an error). What arrives before is ignored: a TLS
/// listener answers bytes that are not TLS with an alert before it closes.
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 64];
    let closed = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("the connection was not dropped");
}

#[tokio::test]
async fn oversized_empty_and_non_tls_frames_drop_the_connection_and_are_counted() {
    // Replicas 0 to 2 run; the raw connections authenticate as replica 3, which has no transport (a newer
    // connection from a replica replaces its older one, so a running replica 3 would compete with them).
    let (keys, replicas) = cluster(4);
    let mut nodes = start_all(&keys[..3], &replicas).await;
    let addr = nodes[0].0.local_addr();
    let link = nodes[0].0.link();

    // A good frame, then one announcing more than the maximum: the first is delivered, then the connection
    // is dropped without waiting for (or allocating) the body.
    let mut conn = raw_tls(3, &keys, 0, addr).await;
    conn.write_all(&[0, 0, 0, 2, b'o', b'k']).await.unwrap();
    conn.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    conn.flush().await.unwrap();
    let inbound = recv(&mut nodes[0].1).await;
    assert_eq!((inbound.from, inbound.frame), (ReplicaId(3), frame("ok")));
    closed_by_peer(&mut conn).await;
    eventually("oversized frame counted", || {
        link.stats().garbage_connections == 1
    })
    .await;

    let mut conn = raw_tls(3, &keys, 0, addr).await;
    conn.write_all(&[0, 0, 0, 0]).await.unwrap();
    conn.flush().await.unwrap();
    closed_by_peer(&mut conn).await;
    eventually("empty frame counted", || {
        link.stats().garbage_connections == 2
    })
    .await;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: replica\r\n\r\n")
        .await
        .unwrap();
    closed_by_peer(&mut tcp).await;
    eventually("non-TLS bytes counted", || {
        link.stats().garbage_connections == 3
    })
    .await;

    // The replica carries on: its real peers' frames still arrive.
    nodes[1].0.send(ReplicaId(0), frame("still there?"));
    nodes[2].0.send(ReplicaId(0), frame("yes"));
    let mut got = [recv(&mut nodes[0].1).await, recv(&mut nodes[0].1).await];
    got.sort_by_key(|i| i.from);
    assert_eq!(
        got.iter()
            .map(|i| (i.from, i.frame.clone()))
            .collect::<Vec<_>>(),
        [
            (ReplicaId(1), frame("still there?")),
            (ReplicaId(2), frame("yes"))
        ]
    );
    assert_eq!(link.stats().auth_failures, 0);

    // Frames this side could never send are dropped before they leave.
    let before = link.stats().frames_dropped;
    link.send(ReplicaId(1), Bytes::new());
    link.send(ReplicaId(1), Bytes::from(vec![0u8; MAX_FRAME + 1]));
    link.send(ReplicaId(0), frame("to myself"));
    link.send(ReplicaId(7), frame("to nobody"));
    assert_eq!(link.stats().frames_dropped, before + 4);
    for (t, _) in nodes {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected_and_receives_later_frames() {
    let (keys, replicas) = cluster(2);
    let mut nodes = start_all(&keys, &replicas).await;
    let (b, mut b_rx) = nodes.pop().unwrap();
    let (a, _a_rx) = nodes.pop().unwrap();
    let b_addr = b.local_addr();
    a.send(ReplicaId(1), frame("before"));
    assert_eq!(recv(&mut b_rx).await.frame, frame("before"));

    b.shutdown().await;
    drop(b_rx);
    let link = a.link();
    eventually("the dialer notices the peer is gone", || {
        link.stats().peers_connected == 0
    })
    .await;
    // Queued while the peer is down, delivered once it is back.
    a.send(ReplicaId(1), frame("while down"));

    let socket = TcpListener::bind(b_addr).await.unwrap();
    let (b, mut b_rx) = Transport::start_with_listener(config(1, &keys[1], &replicas, &[]), socket)
        .await
        .unwrap();
    eventually("the dialer reconnects", || {
        link.stats().peers_connected == 1
    })
    .await;
    a.send(ReplicaId(1), frame("after"));
    assert_eq!(recv(&mut b_rx).await.frame, frame("while down"));
    assert_eq!(recv(&mut b_rx).await.frame, frame("after"));
    assert_eq!(a.stats().frames_dropped, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_frames_without_blocking_and_other_peers_are_served() {
    let (keys, replicas) = cluster(3);
    // Replica 1's socket is bound but nobody accepts on it yet: replica 0's dialer is stuck in its handshake,
    // so its queue for replica 1 fills. Replica 2 is up.
    let (socket_b, addr_b) = bind().await;
    let (socket_c, addr_c) = bind().await;
    let depth = 8;
    let mut a_config = config(0, &keys[0], &replicas, &[(1, addr_b), (2, addr_c)]);
    a_config.queue_depth = depth;
    let (a, _a_rx) = Transport::start_with_listener(a_config, bind().await.0)
        .await
        .unwrap();
    let (c, mut c_rx) =
        Transport::start_with_listener(config(2, &keys[2], &replicas, &[]), socket_c)
            .await
            .unwrap();

    let sends = 1000;
    let started = Instant::now();
    for i in 0..sends {
        a.send(ReplicaId(1), frame(&format!("{i}")));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(200),
        "sending took {elapsed:?}"
    );
    assert_eq!(a.stats().frames_dropped, (sends - depth) as u64);

    a.send(ReplicaId(2), frame("not held up"));
    assert_eq!(recv(&mut c_rx).await.frame, frame("not held up"));

    // Once replica 1 accepts, it gets the newest frames, in order.
    let (b, mut b_rx) =
        Transport::start_with_listener(config(1, &keys[1], &replicas, &[]), socket_b)
            .await
            .unwrap();
    for i in sends - depth..sends {
        assert_eq!(recv(&mut b_rx).await.frame, frame(&format!("{i}")));
    }
    nothing_more(&mut b_rx).await;
    for t in [a, b, c] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_configuration_that_cannot_work_is_refused() {
    let (keys, replicas) = cluster(2);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let cases = [
        config(0, &keys[1], &replicas, &[]),
        config(2, &keys[0], &replicas, &[]),
        config(0, &keys[0], &replicas, &[(0, addr)]),
        config(0, &keys[0], &replicas, &[(5, addr)]),
        TransportConfig {
            max_frame: 0,
            ..config(0, &keys[0], &replicas, &[])
        },
        TransportConfig {
            queue_depth: 0,
            ..config(0, &keys[0], &replicas, &[])
        },
    ];
    for case in cases {
        let result = Transport::start(case.clone()).await;
        assert!(
            matches!(result, Err(TransportError::Config(_))),
            "{case:?} was accepted"
        );
    }
}

#[test]
fn a_certificate_carries_the_replica_key() {
    let k = key(7);
    let identity = tls::Identity::new(ReplicaId(3), &k).unwrap();
    assert_eq!(tls::ed25519_key(&identity.cert).unwrap(), k.public_key());
    let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert!(tls::ed25519_key(&garbage).is_err());
}

#[tokio::test]
async fn connections_beyond_the_handshake_cap_are_closed_at_once_and_peers_still_connect() {
    // Replicas 0 and 1 run; the connections that never start their handshake hold replica 0's room.
    let (keys, replicas) = cluster(4);
    let mut nodes = start_all(&keys[..2], &replicas).await;
    let addr = nodes[0].0.local_addr();
    let link = nodes[0].0.link();
    let mut idle = Vec::new();
    for _ in 0..listener::MAX_HANDSHAKES {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the listener time to take them all in before the one too many.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    closed_by_peer(&mut extra).await;
    eventually("the refused connection counted", || {
        link.stats().garbage_connections >= 1
    })
    .await;
    // Once the idle ones are gone, a replica authenticates again: a raw TLS connection as replica 3.
    drop(idle);
    let mut conn = raw_tls(3, &keys, 0, addr).await;
    conn.write_all(&[0, 0, 0, 2, b'o', b'k']).await.unwrap();
    conn.flush().await.unwrap();
    let inbound = recv(&mut nodes[0].1).await;
    assert_eq!((inbound.from, inbound.frame), (ReplicaId(3), frame("ok")));
    for (t, _) in nodes {
        t.shutdown().await;
    }
}
