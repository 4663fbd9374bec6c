//! State transfer, message by message: serving FETCH-STATE, learning from q CHECKPOINT votes that the replica is
//! behind, fetching the snapshot chunk by chunk, installing it only if it reproduces the certified digest, and
//! moving on from sources that lie or stay silent.
//!
//! Snapshots are small (a checkpoint every 2 sequence numbers, 16-byte chunks), so each takes several chunks. Slot
//! k executes one request of client k with timestamp 1 and operation `OPS[k - 1]`, so every replica that executed
//! slots 1..=k holds the same state, and the tests can build its snapshot byte for byte.

mod support;

use bytes::Bytes;
use pbft_core::{Input, RejectReason, Timer};
use pbft_crypto::Verified;
use pbft_types::{
    ClientId, Digest, Params, ReplicaId, ReplicaMsg, Reply, Request, SeqNo, Timestamp, View, wire,
};
use prost::Message;

use support::{
    Cluster, Executed, Node, Out, executed, journal_snapshot, rejected_from_replica,
    sent_checkpoints, small_params, to_all, to_replica,
};

const CHUNK: usize = 16;
const MAX_SNAPSHOT: u64 = 4096;
const OPS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn params() -> Params {
    Params {
        state_chunk_size: CHUNK,
        max_snapshot_size: MAX_SNAPSHOT,
        ..small_params()
    }
}

/// n = 4, f = 1, q = 3: the replica under test is backup 3, the voters (and sources) 0, 1 and 2.
fn cluster() -> Cluster {
    Cluster::new(4, params())
}

/// The batch of slot `seq`: client `seq`'s request with timestamp 1.
fn batch(c: &Cluster, seq: u64) -> Vec<Verified<Request>> {
    vec![c.request(seq, 1, OPS[seq as usize - 1])]
}

/// Replica `id` (primary or backup) after executing slots 1..=`upto` by itself, each of its checkpoints made
/// stable by two other replicas' votes, with the digests of those checkpoints, in order.
fn executed_to(c: &Cluster, id: u64, upto: u64) -> (Node, Vec<Digest>) {
    let mut node = c.restorable_node(id);
    let mut digests = Vec::new();
    for seq in 1..=upto {
        let batch = batch(c, seq);
        if id == c.primary() {
            node.step(Input::Request(batch[0].clone()));
        }
        let outs = c.run_slot(&mut node, seq, &batch);
        for (_, d) in sent_checkpoints(&outs) {
            digests.push(d);
            for voter in (0..4).filter(|r| *r != id).take(2) {
                node.step(c.deliver(voter, c.checkpoint(voter, seq, d)));
            }
            assert_eq!(node.replica.status().low_watermark, SeqNo(seq));
        }
    }
    assert_eq!(node.replica.status().last_executed, SeqNo(upto));
    (node, digests)
}

/// The snapshot of the state after executing the requests `ops` of clients 1, 2, ... in order: the journal and
/// the client table, encoded as the wire's StateSnapshot.
fn snapshot_of(ops: &[&str]) -> Vec<u8> {
    wire::StateSnapshot {
        application: journal_snapshot(ops),
        clients: ops
            .iter()
            .enumerate()
            .map(|(i, op)| wire::ClientRecord {
                client: i as u64 + 1,
                timestamp: 1,
                result: Bytes::from(format!("{}:{op}", i + 1)),
            })
            .collect(),
    }
    .encode_to_vec()
}

fn fetch(c: &Cluster, to: u64, seq: u64, digest: Digest, offset: u64) -> Out {
    to_replica(to, c.fetch_state(3, seq, digest, offset))
}

fn transfer_timer(c: &Cluster) -> Out {
    Out::SetTimer(Timer::StateTransfer, c.params().status_interval)
}

fn retry_timer(c: &Cluster) -> Out {
    Out::SetTimer(Timer::StateTransfer, c.params().request_timeout)
}

fn unexpected_chunk(from: u64) -> Out {
    rejected_from_replica(from, "STATE-CHUNK", RejectReason::UnexpectedStateTransfer)
}

/// Delivers CHECKPOINT(seq, digest) from each of `voters` to `node`; returns the outputs of each delivery.
fn votes(c: &Cluster, node: &mut Node, seq: u64, digest: Digest, voters: &[u64]) -> Vec<Vec<Out>> {
    voters
        .iter()
        .map(|v| node.step(c.deliver(*v, c.checkpoint(*v, seq, digest))))
        .collect()
}

/// Replica 3 at the initial state, certified by 0, 1 and 2 to be behind checkpoint (seq, digest), after its
/// transfer timer fired once: it has asked replica 0 for the first chunk.
fn fetching(c: &Cluster, seq: u64, digest: Digest) -> Node {
    let mut node = c.restorable_node(3);
    votes(c, &mut node, seq, digest, &[0, 1, 2]);
    assert_eq!(
        node.step(Input::TimerFired(Timer::StateTransfer)),
        vec![fetch(c, 0, seq, digest, 0), retry_timer(c)]
    );
    node
}

/// Plays `source` sending `bytes` as the snapshot of (seq, digest) to replica 3, chunk by chunk, checking that each
/// chunk but the last makes replica 3 ask `source` for the next one. Returns the outputs of the last chunk.
fn feed(
    c: &Cluster,
    node: &mut Node,
    source: u64,
    seq: u64,
    digest: Digest,
    bytes: &[u8],
) -> Vec<Out> {
    let total = bytes.len() as u64;
    let mut offset = 0;
    loop {
        let end = (offset + CHUNK).min(bytes.len());
        let chunk = c.state_chunk(
            source,
            seq,
            digest,
            offset as u64,
            total,
            &bytes[offset..end],
        );
        let outs = node.step(c.deliver(source, chunk));
        if end == bytes.len() {
            return outs;
        }
        assert_eq!(
            outs,
            vec![fetch(c, source, seq, digest, end as u64)],
            "after the chunk at {offset}"
        );
        offset = end;
    }
}

/// Runs a whole transfer between a real `source` and replica 3: each FETCH-STATE goes to the source, which must
/// answer with exactly the next slice of `expected` addressed to 3, and each chunk goes back to 3, which must ask
/// for the following one. Returns replica 3's outputs for the last chunk.
fn transfer(
    c: &Cluster,
    source: &mut Node,
    node: &mut Node,
    seq: u64,
    digest: Digest,
    expected: &[u8],
) -> Vec<Out> {
    let src = source.id.0;
    let total = expected.len() as u64;
    let mut offset = 0;
    loop {
        let served = source.step(c.deliver(3, c.fetch_state(3, seq, digest, offset as u64)));
        let end = (offset + CHUNK).min(expected.len());
        let chunk = c.state_chunk(
            src,
            seq,
            digest,
            offset as u64,
            total,
            &expected[offset..end],
        );
        assert_eq!(
            served,
            vec![to_replica(3, chunk.clone())],
            "serving offset {offset}"
        );
        let outs = node.step(c.deliver(src, chunk));
        if end == expected.len() {
            return outs;
        }
        assert_eq!(outs, vec![fetch(c, src, seq, digest, end as u64)]);
        offset = end;
    }
}

fn reply(client: u64, result: &str) -> Out {
    Out::Reply(Reply {
        view: View(0),
        timestamp: Timestamp(1),
        client: ClientId(client),
        replica: ReplicaId(3),
        result: Bytes::copy_from_slice(result.as_bytes()),
    })
}

fn ops(node: &Node) -> Vec<Bytes> {
    node.executed_ops()
}

fn bytes_of(ops: &[&str]) -> Vec<Bytes> {
    ops.iter()
        .map(|o| Bytes::copy_from_slice(o.as_bytes()))
        .collect()
}

mod serving {
    use super::*;

    #[test]
    fn a_held_checkpoint_is_served_chunk_by_chunk_to_the_requester_only() {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 1, 2);
        let expected = snapshot_of(&OPS[..2]);
        assert!(
            expected.len() > 2 * CHUNK,
            "the snapshot takes at least three chunks"
        );
        let total = expected.len() as u64;

        for offset in [0, CHUNK, 2 * CHUNK] {
            let end = (offset + CHUNK).min(expected.len());
            let outs = source.step(c.deliver(3, c.fetch_state(3, 2, digests[0], offset as u64)));
            let chunk = c.state_chunk(
                1,
                2,
                digests[0],
                offset as u64,
                total,
                &expected[offset..end],
            );
            assert_eq!(outs, vec![to_replica(3, chunk)], "offset {offset}");
        }
        // Another requester gets its chunk, from any offset.
        let outs = source.step(c.deliver(0, c.fetch_state(0, 2, digests[0], 5)));
        let chunk = c.state_chunk(1, 2, digests[0], 5, total, &expected[5..5 + CHUNK]);
        assert_eq!(outs, vec![to_replica(0, chunk)]);
    }

    #[test]
    fn an_unknown_checkpoint_or_an_offset_past_the_end_is_rejected() {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 1, 2);
        let total = snapshot_of(&OPS[..2]).len() as u64;
        let rejected = vec![rejected_from_replica(
            3,
            "FETCH-STATE",
            RejectReason::UnexpectedStateTransfer,
        )];

        for (seq, digest, offset) in [
            (2, Digest([9; 32]), 0), // another digest for a held sequence number
            (4, digests[0], 0),      // a checkpoint not taken yet
            (2, digests[0], total + 1),
            (2, digests[0], u64::MAX),
        ] {
            let outs = source.step(c.deliver(3, c.fetch_state(3, seq, digest, offset)));
            assert_eq!(outs, rejected, "FETCH-STATE({seq}, {digest:?}, {offset})");
        }
    }
}

mod learning {
    use super::*;

    #[test]
    fn q_votes_for_one_digest_above_last_executed_set_the_transfer_timer() {
        let c = cluster();
        let mut node = c.restorable_node(3);
        let d = Digest([7; 32]);
        assert_eq!(
            votes(&c, &mut node, 2, d, &[0, 1, 2]),
            vec![vec![c.status_timer()], vec![], vec![transfer_timer(&c)]]
        );
        // More votes neither restart nor duplicate the timer.
        assert_eq!(node.step(c.deliver(0, c.checkpoint(0, 4, d))), vec![]);
    }

    #[test]
    fn votes_above_the_high_watermark_count_too() {
        let c = cluster();
        let mut node = c.restorable_node(3);
        assert_eq!(node.replica.status().high_watermark, SeqNo(4));
        let d = Digest([7; 32]);
        assert_eq!(
            votes(&c, &mut node, 6, d, &[0, 1, 2]),
            vec![vec![c.status_timer()], vec![], vec![transfer_timer(&c)]]
        );
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(&c, 0, 6, d, 0), retry_timer(&c)]
        );
    }

    #[test]
    fn fewer_than_q_votes_do_not_and_the_qth_does() {
        let c = cluster();
        let mut node = c.restorable_node(3);
        let d = Digest([7; 32]);
        // Its own CHECKPOINT echoed back is no vote.
        assert_eq!(
            node.step(c.deliver(3, c.checkpoint(3, 2, d))),
            vec![rejected_from_replica(
                3,
                "CHECKPOINT",
                RejectReason::UnknownSender
            )]
        );
        assert_eq!(
            votes(&c, &mut node, 2, d, &[0, 1]),
            vec![vec![c.status_timer()], vec![]]
        );
        // A timer that fires anyway finds nothing certified: no fetch, no timer.
        assert_eq!(node.step(Input::TimerFired(Timer::StateTransfer)), vec![]);
        assert_eq!(
            votes(&c, &mut node, 2, d, &[2]),
            vec![vec![transfer_timer(&c)]]
        );
    }

    #[test]
    fn q_votes_split_across_two_digests_do_not() {
        // n = 7, q = 5: six votes, three for each digest.
        let c = Cluster::new(7, params());
        let mut node = c.restorable_node(6);
        let (d, other) = (Digest([7; 32]), Digest([8; 32]));
        let mut outs = Vec::new();
        for v in 0..3 {
            outs.extend(node.step(c.deliver(v, c.checkpoint(v, 2, d))));
        }
        for v in 3..6 {
            outs.extend(node.step(c.deliver(v, c.checkpoint(v, 2, other))));
        }
        assert_eq!(outs, vec![c.status_timer()]);
        assert_eq!(node.step(Input::TimerFired(Timer::StateTransfer)), vec![]);
    }

    #[test]
    fn votes_for_a_checkpoint_already_executed_make_it_stable_not_a_transfer() {
        let c = cluster();
        let mut node = c.restorable_node(3);
        c.run_slot(&mut node, 1, &batch(&c, 1));
        let outs = c.run_slot(&mut node, 2, &batch(&c, 2));
        let (_, d) = sent_checkpoints(&outs)[0];
        // Two votes and its own make it stable; the third is late.
        let late = rejected_from_replica(
            2,
            "CHECKPOINT",
            RejectReason::Obsolete {
                seq: SeqNo(2),
                low: SeqNo(2),
            },
        );
        assert_eq!(
            votes(&c, &mut node, 2, d, &[0, 1, 2]),
            vec![vec![], vec![], vec![late]]
        );
        assert_eq!(node.replica.status().low_watermark, SeqNo(2));
        assert_eq!(node.step(Input::TimerFired(Timer::StateTransfer)), vec![]);
    }

    #[test]
    fn a_higher_certified_checkpoint_replaces_the_transfer_in_progress() {
        let c = cluster();
        let (d2, d4) = (Digest([7; 32]), Digest([8; 32]));
        let mut node = fetching(&c, 2, d2);
        assert_eq!(
            votes(&c, &mut node, 4, d4, &[2, 1, 0]),
            vec![vec![], vec![], vec![]]
        );
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(&c, 0, 4, d4, 0), retry_timer(&c)]
        );
        let old = c.state_chunk(0, 2, d2, 0, 3, b"abc");
        assert_eq!(node.step(c.deliver(0, old)), vec![unexpected_chunk(0)]);
    }

    #[test]
    fn a_silent_source_is_replaced_by_the_next_voter_never_the_replica_itself() {
        let c = cluster();
        let d = Digest([7; 32]);
        let mut node = fetching(&c, 2, d);
        for source in [1, 2, 0, 1] {
            assert_eq!(
                node.step(Input::TimerFired(Timer::StateTransfer)),
                vec![fetch(&c, source, 2, d, 0), retry_timer(&c)]
            );
        }
    }
}

mod fetching {
    use super::*;

    #[test]
    fn the_snapshot_is_fetched_in_order_and_installed() {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let mut node = fetching(&c, 2, d);

        let outs = transfer(&c, &mut source, &mut node, 2, d, &snapshot_of(&OPS[..2]));

        assert_eq!(
            outs,
            vec![
                Out::CancelTimer(Timer::StateTransfer),
                Out::StateInstalled(SeqNo(2), d),
                to_all(c.checkpoint(3, 2, d)),
            ]
        );
        let status = node.replica.status();
        assert_eq!(
            (
                status.last_executed,
                status.low_watermark,
                status.high_watermark
            ),
            (SeqNo(2), SeqNo(2), SeqNo(6))
        );
        // Stable at once on the certificate it fetched against: the q votes that certified it.
        let stable = node.replica.stable_checkpoint();
        assert_eq!((stable.seq, stable.digest), (SeqNo(2), d));
        let proof: Vec<_> = stable.proof.iter().map(|p| p.signed().clone()).collect();
        assert_eq!(proof, c.checkpoint_proof(2, d, &[0, 1, 2]));
        assert_eq!(ops(&node), bytes_of(&OPS[..2]));

        // Exactly-once survives the transfer: client 1's request is in the installed client table, so a
        // retransmission is answered from it and not executed again.
        assert_eq!(
            node.step(Input::Request(batch(&c, 1)[0].clone())),
            vec![reply(1, "1:a")]
        );
        assert_eq!(ops(&node), bytes_of(&OPS[..2]));
        // The timer is gone with the transfer: firing now fetches nothing.
        assert_eq!(node.step(Input::TimerFired(Timer::StateTransfer)), vec![]);
        // It serves the checkpoint it installed, byte for byte, to the next replica behind.
        let expected = snapshot_of(&OPS[..2]);
        let outs = node.step(c.deliver(1, c.fetch_state(1, 2, d, 0)));
        let chunk = c.state_chunk(3, 2, d, 0, expected.len() as u64, &expected[..CHUNK]);
        assert_eq!(outs, vec![to_replica(1, chunk)]);
    }

    /// Once installed, the checkpoint is stable and the replica has nothing unfinished of its own; but it has just
    /// jumped, and an idle cluster would tell it nothing of what was executed above the checkpoint, so it asks its
    /// peers for a few status rounds, then stops. (Its own CHECKPOINT for the installed, already stable,
    /// checkpoint must not linger as an unstable vote, which would keep it asking for ever.)
    #[test]
    fn an_installed_replica_asks_its_peers_for_a_few_rounds_then_stops() {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let mut node = fetching(&c, 2, d);
        transfer(&c, &mut source, &mut node, 2, d, &snapshot_of(&OPS[..2]));
        assert_eq!(node.replica.status().last_executed, SeqNo(2));

        // Two peers (q - 1) answer that they are where it is.
        for r in [1, 2] {
            node.step(c.deliver(r, c.status(r, 0, 2, 2)));
        }
        let mut rounds = 0;
        loop {
            let outs = node.step(Input::TimerFired(Timer::Status));
            if outs.is_empty() {
                break;
            }
            assert!(
                outs.contains(&to_all(c.status_asking(3, 0, 2, 2))),
                "round {rounds}: {outs:?}"
            );
            rounds += 1;
            assert!(rounds <= 10, "it must stop asking");
        }
        assert!(rounds >= 1, "it asks at least once");
    }

    #[test]
    fn a_checkpoint_above_the_high_watermark_is_fetched_and_installed() {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 0, 6);
        let d6 = digests[2];
        let mut node = fetching(&c, 6, d6);
        assert_eq!(node.replica.status().high_watermark, SeqNo(4));

        let outs = transfer(&c, &mut source, &mut node, 6, d6, &snapshot_of(&OPS));

        assert_eq!(
            outs,
            vec![
                Out::CancelTimer(Timer::StateTransfer),
                Out::StateInstalled(SeqNo(6), d6),
                to_all(c.checkpoint(3, 6, d6)),
            ]
        );
        let status = node.replica.status();
        assert_eq!(
            (
                status.last_executed,
                status.low_watermark,
                status.high_watermark
            ),
            (SeqNo(6), SeqNo(6), SeqNo(10))
        );
        assert_eq!(ops(&node), bytes_of(&OPS));
    }

    #[test]
    fn committed_slots_above_the_installed_checkpoint_then_execute() {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let mut node = c.restorable_node(3);
        // Slot 3 commits here but cannot execute: slots 1 and 2 never reached this replica.
        let outs = c.run_slot(&mut node, 3, &batch(&c, 3));
        assert_eq!(executed(&outs), Vec::<&Executed>::new());
        votes(&c, &mut node, 2, d, &[0, 1, 2]);
        node.step(Input::TimerFired(Timer::StateTransfer));

        let outs = transfer(&c, &mut source, &mut node, 2, d, &snapshot_of(&OPS[..2]));

        let slot3 = batch(&c, 3);
        let digest3 = support::digest_of(&slot3);
        let committed = Out::Committed(Executed {
            seq: SeqNo(3),
            view: View(0),
            digest: digest3,
            batch: slot3.iter().map(|r| r.signed().clone()).collect(),
            results: vec![Some(Bytes::from_static(b"3:c"))],
            certificate: [0, 1, 3]
                .iter()
                .map(|i| c.signed_commit(*i, 0, 3, digest3))
                .collect(),
        });
        assert_eq!(
            outs,
            vec![
                Out::CancelTimer(Timer::StateTransfer),
                Out::StateInstalled(SeqNo(2), d),
                to_all(c.checkpoint(3, 2, d)),
                reply(3, "3:c"),
                committed,
                // Slot 3's request was held since its PRE-PREPARE; it executed, nothing else waits.
                c.cancel_view_timer(),
            ]
        );
        assert_eq!(node.replica.status().last_executed, SeqNo(3));
        assert_eq!(ops(&node), bytes_of(&OPS[..3]));
    }

    #[test]
    fn a_source_that_keeps_sending_is_kept_when_the_timer_fires() {
        let c = cluster();
        let (_, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let snapshot = snapshot_of(&OPS[..2]);
        let total = snapshot.len() as u64;
        let mut node = fetching(&c, 2, d);
        node.step(c.deliver(0, c.state_chunk(0, 2, d, 0, total, &snapshot[..CHUNK])));

        // A chunk arrived since the timer was armed: ask the same source again from where it is.
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(&c, 0, 2, d, CHUNK as u64), retry_timer(&c)]
        );
        // Nothing since: the next voter, from the start.
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(&c, 1, 2, d, 0), retry_timer(&c)]
        );
    }
}

mod faulty_source {
    use super::*;

    /// Replica 3 after executing slots 1 and 2 by itself, certified by 0, 1 and 2 to be behind checkpoint 4 (whose
    /// real digest it returns), after its transfer timer fired: it has asked replica 0 for the first chunk.
    fn behind_checkpoint_4(c: &Cluster) -> (Node, Digest) {
        let (_, digests) = executed_to(c, 1, 4);
        let d4 = digests[1];
        let (mut node, _) = executed_to(c, 3, 2);
        assert_eq!(
            votes(c, &mut node, 4, d4, &[0, 1, 2]),
            vec![vec![], vec![], vec![transfer_timer(c)]]
        );
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(c, 0, 4, d4, 0), retry_timer(c)]
        );
        (node, d4)
    }

    #[test]
    fn a_snapshot_that_does_not_match_the_digest_is_not_installed_and_the_next_voter_is_asked() {
        let c = cluster();
        let (mut node, d4) = behind_checkpoint_4(&c);
        let before = node.replica.status();

        // A well-formed snapshot of another state: it restores, but its digest is not the certified one.
        let forged = snapshot_of(&["a", "b", "c", "X"]);
        assert_eq!(
            feed(&c, &mut node, 0, 4, d4, &forged),
            vec![fetch(&c, 1, 4, d4, 0)]
        );
        assert_eq!(node.replica.status(), before);
        assert_eq!(
            ops(&node),
            bytes_of(&OPS[..2]),
            "the application is put back"
        );

        // Bytes that are no snapshot at all.
        let garbage = b"not a snapshot, not even protobuf".to_vec();
        assert_eq!(
            feed(&c, &mut node, 1, 4, d4, &garbage),
            vec![fetch(&c, 2, 4, d4, 0)]
        );
        assert_eq!(node.replica.status(), before);

        // A snapshot whose application part the application refuses.
        let refused = wire::StateSnapshot {
            application: Bytes::from_static(&[5, 0, 0]),
            clients: Vec::new(),
        }
        .encode_to_vec();
        assert_eq!(
            feed(&c, &mut node, 2, 4, d4, &refused),
            vec![fetch(&c, 0, 4, d4, 0)]
        );
        assert_eq!(node.replica.status(), before);
        assert_eq!(ops(&node), bytes_of(&OPS[..2]));

        // An honest source at last.
        let (mut source, _) = executed_to(&c, 0, 4);
        let outs = transfer(&c, &mut source, &mut node, 4, d4, &snapshot_of(&OPS[..4]));
        assert_eq!(
            outs,
            vec![
                Out::CancelTimer(Timer::StateTransfer),
                Out::StateInstalled(SeqNo(4), d4),
                to_all(c.checkpoint(3, 4, d4)),
            ]
        );
        let status = node.replica.status();
        assert_eq!(
            (status.last_executed, status.low_watermark),
            (SeqNo(4), SeqNo(4))
        );
        assert_eq!(ops(&node), bytes_of(&OPS[..4]));
    }

    #[test]
    fn a_chunk_that_lies_about_sizes_makes_the_replica_switch_source() {
        let c = cluster();
        let d = Digest([7; 32]);
        let mut node = fetching(&c, 2, d);
        let data = [1u8; CHUNK];

        // A total at the limit is believable.
        let outs = node.step(c.deliver(0, c.state_chunk(0, 2, d, 0, MAX_SNAPSHOT, &data)));
        assert_eq!(outs, vec![fetch(&c, 0, 2, d, CHUNK as u64)]);
        // More bytes than the total it announces: the next voter, from the start.
        let outs = node.step(c.deliver(0, c.state_chunk(0, 2, d, CHUNK as u64, 20, &data)));
        assert_eq!(outs, vec![fetch(&c, 1, 2, d, 0)]);
        // A total above max_snapshot_size.
        let outs = node.step(c.deliver(1, c.state_chunk(1, 2, d, 0, MAX_SNAPSHOT + 1, &data)));
        assert_eq!(outs, vec![fetch(&c, 2, 2, d, 0)]);
        // An empty chunk before the end.
        let outs = node.step(c.deliver(2, c.state_chunk(2, 2, d, 0, 40, &[])));
        assert_eq!(outs, vec![fetch(&c, 0, 2, d, 0)]);
        assert_eq!(node.replica.status().last_executed, SeqNo(0));
        assert_eq!(ops(&node), Vec::<Bytes>::new());
    }

    #[test]
    fn chunks_from_another_replica_or_at_the_wrong_offset_are_rejected_and_change_nothing() {
        let c = cluster();
        let (_, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let snapshot = snapshot_of(&OPS[..2]);
        let total = snapshot.len() as u64;
        let mut node = fetching(&c, 2, d);
        let first = c.state_chunk(0, 2, d, 0, total, &snapshot[..CHUNK]);
        assert_eq!(
            node.step(c.deliver(0, first.clone())),
            vec![fetch(&c, 0, 2, d, CHUNK as u64)]
        );
        // The timer fires with progress: the source stays, and no progress is counted from here on.
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(&c, 0, 2, d, CHUNK as u64), retry_timer(&c)]
        );

        let second = &snapshot[CHUNK..2 * CHUNK];
        let wrong = [
            // The right bytes from voters that are not the current source.
            (1, c.state_chunk(1, 2, d, CHUNK as u64, total, second)),
            (2, c.state_chunk(2, 2, d, CHUNK as u64, total, second)),
            // The source, repeating the first chunk.
            (0, first),
            // The source, skipping ahead.
            (
                0,
                c.state_chunk(0, 2, d, 2 * CHUNK as u64, total, &snapshot[2 * CHUNK..]),
            ),
            // The source, for another checkpoint.
            (0, c.state_chunk(0, 4, d, CHUNK as u64, total, second)),
            (
                0,
                c.state_chunk(0, 2, Digest([8; 32]), CHUNK as u64, total, second),
            ),
        ];
        for (from, chunk) in wrong {
            assert_eq!(
                node.step(c.deliver(from, chunk)),
                vec![unexpected_chunk(from)]
            );
        }
        // None of them counted as progress.
        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![fetch(&c, 1, 2, d, 0), retry_timer(&c)]
        );
        // The new source's chunks assemble from scratch, unspoiled by what was rejected.
        let (mut source1, _) = executed_to(&c, 1, 2);
        let outs = transfer(&c, &mut source1, &mut node, 2, d, &snapshot);
        assert_eq!(outs[1], Out::StateInstalled(SeqNo(2), d));
        assert_eq!(ops(&node), bytes_of(&OPS[..2]));
    }

    #[test]
    fn a_chunk_without_a_transfer_is_rejected() {
        let c = cluster();
        let mut node = c.restorable_node(3);
        let chunk = c.state_chunk(0, 2, Digest([7; 32]), 0, 3, b"abc");
        assert_eq!(node.step(c.deliver(0, chunk)), vec![unexpected_chunk(0)]);
    }
}

mod catching_up {
    use super::*;

    #[test]
    fn a_log_that_catches_up_before_the_snapshot_completes_drops_it() {
        let c = cluster();
        let (_, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let snapshot = snapshot_of(&OPS[..2]);
        let total = snapshot.len() as u64;
        let mut node = fetching(&c, 2, d);
        let first = c.state_chunk(0, 2, d, 0, total, &snapshot[..CHUNK]);
        assert_eq!(
            node.step(c.deliver(0, first)),
            vec![fetch(&c, 0, 2, d, CHUNK as u64)]
        );

        // The missing slots arrive after all: the replica executes them and takes checkpoint 2 itself.
        c.run_slot(&mut node, 1, &batch(&c, 1));
        let outs = c.run_slot(&mut node, 2, &batch(&c, 2));
        assert_eq!(sent_checkpoints(&outs), vec![(SeqNo(2), d)]);
        let status = node.replica.status();
        assert_eq!(
            (status.last_executed, status.low_watermark),
            (SeqNo(2), SeqNo(2))
        );

        // The rest of the snapshot is not installed.
        let mut outs = Vec::new();
        for offset in (CHUNK..snapshot.len()).step_by(CHUNK) {
            let end = (offset + CHUNK).min(snapshot.len());
            let chunk = c.state_chunk(0, 2, d, offset as u64, total, &snapshot[offset..end]);
            outs.extend(node.step(c.deliver(0, chunk)));
        }
        assert!(
            !outs.iter().any(|o| matches!(
                o,
                Out::StateInstalled(..)
                    | Out::Send(_, ReplicaMsg::Checkpoint(_))
                    | Out::Committed(_)
            )),
            "{outs:?}"
        );
        assert_eq!(node.replica.status(), status);
        assert_eq!(ops(&node), bytes_of(&OPS[..2]));
        // The transfer is over: the timer fetches nothing, and further chunks are unexpected.
        assert_eq!(node.step(Input::TimerFired(Timer::StateTransfer)), vec![]);
        let chunk = c.state_chunk(0, 2, d, 0, total, &snapshot[..CHUNK]);
        assert_eq!(node.step(c.deliver(0, chunk)), vec![unexpected_chunk(0)]);
    }

    #[test]
    fn a_log_that_catches_up_before_the_timer_fires_fetches_nothing() {
        let c = cluster();
        let (_, digests) = executed_to(&c, 0, 2);
        let d = digests[0];
        let mut node = c.restorable_node(3);
        votes(&c, &mut node, 2, d, &[0, 1, 2]);
        c.run_slot(&mut node, 1, &batch(&c, 1));
        c.run_slot(&mut node, 2, &batch(&c, 2));
        assert_eq!(node.step(Input::TimerFired(Timer::StateTransfer)), vec![]);
        assert_eq!(node.replica.status().last_executed, SeqNo(2));
    }
}

mod request_timer {
    use super::*;

    fn starts_a_view_change(outs: &[Out]) -> bool {
        outs.iter()
            .any(|o| matches!(o, Out::Send(_, ReplicaMsg::ViewChange(_))))
    }

    #[test]
    fn a_replica_fetching_state_does_not_time_its_requests_out_and_times_them_afresh_once_caught_up()
     {
        let c = cluster();
        let (mut source, digests) = executed_to(&c, 0, 2);
        let mut node = fetching(&c, 2, digests[0]);
        // A client's request reaches the lagging backup, which forwards it and times it.
        let outs = node.step(Input::Request(c.request(3, 1, "late")));
        assert!(outs.contains(&c.view_timer()), "{outs:?}");

        // The timer fires while the snapshot is still on its way: the replica is behind its peers, so the
        // primary is not to blame. It times the request again instead of asking for view 1.
        let outs = node.step(Input::TimerFired(Timer::ViewChange));
        assert!(!starts_a_view_change(&outs), "{outs:?}");
        assert!(outs.contains(&c.view_timer()), "{outs:?}");
        assert!(!node.replica.status().changing_view);

        // Once the state is installed the request gets a full timeout from then.
        let outs = transfer(
            &c,
            &mut source,
            &mut node,
            2,
            digests[0],
            &snapshot_of(&OPS[..2]),
        );
        assert!(outs.contains(&c.view_timer()), "{outs:?}");
        assert_eq!(node.replica.status().last_executed, SeqNo(2));

        // A replica that is not behind (q - 1 peers answered where they are, and it asked for its rounds) still
        // asks for a view change when the request does not execute.
        for r in [1, 2] {
            node.step(c.deliver(r, c.status(r, 0, 2, 2)));
        }
        for _ in 0..10 {
            node.step(Input::TimerFired(Timer::Status));
        }
        let outs = node.step(Input::TimerFired(Timer::ViewChange));
        assert!(starts_a_view_change(&outs), "{outs:?}");
        assert!(node.replica.status().changing_view);
    }

    /// Before the fetch even starts (the transfer timer has not fired), q votes for a checkpoint above what the
    /// replica executed already say that it is behind. (Found by `pbft demo`: a restarted primary, far behind,
    /// timed its requests out between learning of the checkpoint and fetching it, and went alone into a later
    /// view.)
    #[test]
    fn a_replica_that_learnt_of_a_certified_checkpoint_above_it_holds_back_too() {
        let c = cluster();
        let mut node = c.restorable_node(3);
        let outs = node.step(Input::Request(c.request(3, 1, "late")));
        assert!(outs.contains(&c.view_timer()), "{outs:?}");
        votes(&c, &mut node, 2, Digest([7; 32]), &[0, 1, 2]);
        let outs = node.step(Input::TimerFired(Timer::ViewChange));
        assert!(!starts_a_view_change(&outs), "{outs:?}");
        assert!(outs.contains(&c.view_timer()), "{outs:?}");
    }
}
