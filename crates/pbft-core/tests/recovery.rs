//! Crash recovery from the journal (`Output::Persist`): a recovered replica has the state it had, never
//! contradicts a message it sent, and never goes back to a view it left.

mod support;

use pbft_core::{Input, JournalEntry, RecoveryError, Timer};
use pbft_types::{Digest, ReplicaMsg, SeqNo, View};

use support::{Cluster, Out, digest_of, small_params};

/// n = 4 with the small parameters (K = 2, L = 4); the replica under test is backup 3 unless said otherwise.
fn cluster() -> Cluster {
    Cluster::new(4, small_params())
}

fn view_changes(outs: &[Out]) -> Vec<(View, usize)> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Send(_, ReplicaMsg::ViewChange(vc)) => {
                Some((vc.value().new_view, vc.value().prepared.len()))
            }
            _ => None,
        })
        .collect()
}

fn sends_status(outs: &[Out]) -> bool {
    outs.iter()
        .any(|o| matches!(o, Out::Send(_, ReplicaMsg::Status(_))))
}

#[test]
fn a_recovered_backup_has_executed_what_it_had() {
    let c = cluster();
    let mut node = c.restorable_node(3);
    for seq in 1..=3 {
        let batch = [c.request(seq, 1, &format!("op{seq}"))];
        c.run_slot(&mut node, seq, &batch);
    }
    let executed = node
        .persisted
        .iter()
        .filter(|e| matches!(e, JournalEntry::Executed { .. }))
        .count();
    assert_eq!(executed, 3, "one Executed entry per batch");
    let status_before = node.replica.status();

    let (recovered, outs) = c
        .recovered_node(3, &node.persisted)
        .expect("the journal recovers");
    assert_eq!(recovered.executed_ops(), node.executed_ops());
    assert_eq!(recovered.replica.status().last_executed, SeqNo(3));
    assert_eq!(recovered.replica.status().view, status_before.view);
    assert!(sends_status(&outs), "it asks its peers for what it missed");
}

#[test]
fn after_a_stable_checkpoint_recovery_starts_from_its_snapshot() {
    let c = cluster();
    let mut node = c.restorable_node(3);
    let mut digests = Vec::new();
    for seq in 1..=3 {
        let batch = [c.request(seq, 1, &format!("op{seq}"))];
        let outs = c.run_slot(&mut node, seq, &batch);
        digests.extend(support::sent_checkpoints(&outs));
    }
    let (seq, d) = digests[0];
    assert_eq!(seq, SeqNo(2));
    for voter in [0, 1] {
        node.step(c.deliver(voter, c.checkpoint(voter, 2, d)));
    }
    assert_eq!(node.replica.status().low_watermark, SeqNo(2));
    let stable = node
        .persisted
        .iter()
        .filter(|e| matches!(e, JournalEntry::Stable { seq: SeqNo(2), .. }))
        .count();
    assert_eq!(
        stable, 1,
        "the stable checkpoint is journalled with its snapshot"
    );

    // What a store keeps: the stable checkpoint, and the entries above it.
    let kept: Vec<JournalEntry> = node
        .persisted
        .iter()
        .filter(|e| e.seq().is_none_or(|s| s > SeqNo(2)))
        .cloned()
        .collect();
    let (recovered, _) = c.recovered_node(3, &kept).expect("the journal recovers");
    let status = recovered.replica.status();
    assert_eq!(status.low_watermark, SeqNo(2));
    assert_eq!(status.last_executed, SeqNo(3));
    assert_eq!(recovered.executed_ops(), node.executed_ops());
    assert_eq!(recovered.replica.stable_checkpoint().digest, d);
}

#[test]
fn a_recovered_backup_refuses_a_conflicting_pre_prepare_for_what_it_prepared() {
    let c = cluster();
    let mut node = c.node(3);
    let first = [c.request(1, 1, "a")];
    node.step(c.deliver(0, c.pre_prepare(0, 0, 1, &first)));
    let (mut recovered, _) = c.recovered_node(3, &node.persisted).expect("recovers");

    // The primary now signs another batch for (view 0, seq 1): the recovered backup knows its first choice, so
    // this is evidence against the primary, not a second PREPARE.
    let second = [c.request(2, 1, "b")];
    let outs = recovered.step(c.deliver(0, c.pre_prepare(0, 0, 1, &second)));
    assert!(
        outs.iter().any(|o| matches!(o, Out::Evidence(..))),
        "{outs:?}"
    );
    assert!(
        !outs.iter().any(|o| matches!(
            o,
            Out::Send(_, ReplicaMsg::Prepare(p)) if p.value().digest == digest_of(&second)
        )),
        "it must not prepare a second batch for the same sequence number: {outs:?}"
    );
}

#[test]
fn a_replica_that_was_changing_view_asks_for_the_same_view_again_and_refuses_the_old_one() {
    let c = cluster();
    let mut node = c.node(3);
    let batch = [c.request(1, 1, "a")];
    // Prepared at 1 in view 0, then the primary goes quiet and the request times out.
    node.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch)));
    let digest = digest_of(&batch);
    for r in [1, 2] {
        node.step(c.deliver(r, c.prepare(r, 0, 1, digest)));
    }
    let outs = node.step(Input::TimerFired(Timer::ViewChange));
    assert_eq!(view_changes(&outs), vec![(View(1), 1)]);

    let (mut recovered, outs) = c.recovered_node(3, &node.persisted).expect("recovers");
    // The same view asked for, with the prepared certificate still in it.
    assert_eq!(view_changes(&outs), vec![(View(1), 1)]);
    let status = recovered.replica.status();
    assert_eq!((status.view, status.changing_view), (View(1), true));
    // Normal-case messages of the view it left are refused.
    let outs = recovered.step(c.deliver(1, c.commit(1, 0, 1, digest)));
    assert!(
        outs.iter().all(|o| matches!(o, Out::Rejected(_))),
        "{outs:?}"
    );
}

#[test]
fn a_prepared_certificate_survives_and_travels_in_the_next_view_change() {
    let c = cluster();
    let mut node = c.node(3);
    let batch = [c.request(1, 1, "a")];
    node.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch)));
    let digest = digest_of(&batch);
    for r in [1, 2] {
        node.step(c.deliver(r, c.prepare(r, 0, 1, digest)));
    }
    let (mut recovered, outs) = c.recovered_node(3, &node.persisted).expect("recovers");
    assert!(view_changes(&outs).is_empty(), "it was not changing view");
    // Just recovered, it first asks its peers where they are (a timeout then is held back: it may merely be
    // behind). Two peers answer that they are where it is; once it stopped asking, its timer fires and its
    // VIEW-CHANGE carries the certificate.
    let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
    assert!(view_changes(&outs).is_empty(), "{outs:?}");
    for r in [1, 2] {
        recovered.step(c.deliver(r, c.status(r, 0, 0, 0)));
    }
    for _ in 0..10 {
        recovered.step(Input::TimerFired(Timer::Status));
    }
    let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
    assert_eq!(view_changes(&outs), vec![(View(1), 1)]);
}

/// Backup 3 accepted the PRE-PREPARE of one request (view 0, seq 1), crashed before it executed, and recovered:
/// it holds the request again.
fn recovered_holding_a_request(c: &Cluster) -> (support::Node, Vec<Out>) {
    let mut node = c.node(3);
    let batch = [c.request(1, 1, "a")];
    node.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch)));
    c.recovered_node(3, &node.persisted).expect("recovers")
}

/// Rounds of asking that reach no one (after a restart its peers reconnect with back-off) do not count: a
/// recovered replica holds its request timer until q - 1 peers answered, and for ten status rounds after that,
/// then times its requests out as usual (a faulty primary cannot keep it asking).
#[test]
fn a_recovered_replica_holds_its_requests_until_q_minus_1_peers_answered() {
    let c = cluster();
    let (mut recovered, outs) = recovered_holding_a_request(&c);
    assert!(
        outs.contains(&c.view_timer()),
        "it times the request it held: {outs:?}"
    );
    assert!(
        outs.contains(&support::to_all(c.status_asking(3, 0, 0, 0))),
        "{outs:?}"
    );
    let holds = |recovered: &mut support::Node| {
        let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
        assert!(view_changes(&outs).is_empty(), "{outs:?}");
        assert!(
            outs.contains(&c.view_timer()),
            "it times the request again: {outs:?}"
        );
    };
    // Fifty rounds and timeouts with no answer: it holds on.
    for _ in 0..50 {
        let outs = recovered.step(Input::TimerFired(Timer::Status));
        assert!(
            outs.contains(&support::to_all(c.status_asking(3, 0, 0, 0))),
            "{outs:?}"
        );
        holds(&mut recovered);
    }
    // One peer answers, and the same peer again: not yet q - 1 of them.
    for _ in 0..2 {
        recovered.step(c.deliver(1, c.status(1, 0, 0, 0)));
    }
    for _ in 0..20 {
        recovered.step(Input::TimerFired(Timer::Status));
    }
    holds(&mut recovered);
    // A second peer answers: ten rounds later it stops asking and times the request out.
    recovered.step(c.deliver(2, c.status(2, 0, 0, 0)));
    for round in 0..10 {
        holds(&mut recovered);
        let outs = recovered.step(Input::TimerFired(Timer::Status));
        assert!(!outs.is_empty(), "round {round}: it still asks");
    }
    let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
    assert_eq!(view_changes(&outs), vec![(View(1), 0)]);
}

/// Of the q - 1 peers that answered, one may be faulty and claim to be where the replica is while the correct one
/// is ahead: the replica keeps asking (and holding its request timer) past the ten rounds until f+1 peers report
/// no further than it, or for thirty rounds at most.
#[test]
fn a_recovered_replica_asks_until_f_plus_1_peers_are_not_ahead_of_it_or_for_a_bounded_time() {
    for third_peer_answers in [true, false] {
        let c = cluster();
        let (mut recovered, _) = recovered_holding_a_request(&c);
        // Replica 1 (correct) has executed further; replica 2 (faulty, say) claims to be where it is.
        recovered.step(c.deliver(1, c.status(1, 0, 0, 5)));
        recovered.step(c.deliver(2, c.status(2, 0, 0, 0)));
        let mut round = 0;
        while round < 20 {
            let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
            assert!(view_changes(&outs).is_empty(), "round {round}: {outs:?}");
            recovered.step(Input::TimerFired(Timer::Status));
            round += 1;
        }
        if third_peer_answers {
            // Replica 0 answers too, no further than it: f+1 peers say it caught up, and the next round ends it.
            recovered.step(c.deliver(0, c.status(0, 0, 0, 0)));
        } else {
            while round < 29 {
                let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
                assert!(view_changes(&outs).is_empty(), "round {round}: {outs:?}");
                recovered.step(Input::TimerFired(Timer::Status));
                round += 1;
            }
        }
        recovered.step(Input::TimerFired(Timer::Status));
        let outs = recovered.step(Input::TimerFired(Timer::ViewChange));
        assert_eq!(
            view_changes(&outs),
            vec![(View(1), 0)],
            "third peer answers: {third_peer_answers}"
        );
    }
}

/// A replica answers a STATUS marked asking with its own at its next status round, even when it has nothing
/// unfinished and the asking replica is not behind: only so does a recovered replica learn that its peers are
/// there, and stop holding back.
#[test]
fn a_replica_answers_an_asking_status_even_when_idle() {
    let c = cluster();
    let mut node = c.node(1);
    let outs = node.step(c.deliver(3, c.status_asking(3, 0, 0, 0)));
    assert!(outs.contains(&c.status_timer()), "{outs:?}");
    let outs = node.step(Input::TimerFired(Timer::Status));
    assert_eq!(outs, vec![support::to_replica(3, c.status(1, 0, 0, 0))]);
    // Answered once: nothing more is owed.
    let outs = node.step(Input::TimerFired(Timer::Status));
    assert!(outs.is_empty(), "{outs:?}");
}

#[test]
fn a_recovered_primary_never_assigns_a_sequence_number_twice() {
    let c = cluster();
    let mut primary = c.node(0);
    let outs = primary.step(Input::Request(c.request(1, 1, "a")));
    assert!(outs.iter().any(|o| matches!(
        o,
        Out::Send(_, ReplicaMsg::PrePrepare { header, .. }) if header.value().seq == SeqNo(1)
    )));
    let (mut recovered, _) = c.recovered_node(0, &primary.persisted).expect("recovers");
    // Batch 1 is still in flight, so the next request waits for the batch timer.
    recovered.step(Input::Request(c.request(2, 1, "b")));
    let outs = recovered.step(Input::TimerFired(Timer::Batch));
    let assigned: Vec<SeqNo> = outs
        .iter()
        .filter_map(|o| match o {
            Out::Send(_, ReplicaMsg::PrePrepare { header, .. }) => Some(header.value().seq),
            _ => None,
        })
        .collect();
    assert_eq!(assigned, vec![SeqNo(2)]);
}

#[test]
fn a_journal_with_a_gap_or_a_snapshot_that_does_not_match_is_refused() {
    let c = cluster();
    let mut node = c.restorable_node(3);
    for seq in 1..=3 {
        let batch = [c.request(seq, 1, &format!("op{seq}"))];
        c.run_slot(&mut node, seq, &batch);
    }
    // Without the entry for batch 2, batch 3 cannot be executed again.
    let gap: Vec<JournalEntry> = node
        .persisted
        .iter()
        .filter(|e| !matches!(e, JournalEntry::Executed { header, .. } if header.seq == SeqNo(2)))
        .cloned()
        .collect();
    assert_eq!(
        c.recovered_node(3, &gap).err(),
        Some(RecoveryError::Gap {
            last: SeqNo(1),
            next: SeqNo(3)
        })
    );

    // Without the requests of batch 2 (its `Accepted` entry), it cannot be executed again either.
    let no_batch: Vec<JournalEntry> = node
        .persisted
        .iter()
        .filter(|e| !matches!(e, JournalEntry::Accepted { header, .. } if header.seq == SeqNo(2)))
        .cloned()
        .collect();
    assert_eq!(
        c.recovered_node(3, &no_batch).err(),
        Some(RecoveryError::MissingBatch { seq: SeqNo(2) })
    );

    let forged = vec![JournalEntry::Stable {
        seq: SeqNo(2),
        digest: Digest([1; 32]),
        proof: Vec::new(),
        snapshot: bytes::Bytes::from_static(b"not the state at 2"),
    }];
    assert_eq!(
        c.recovered_node(3, &forged).err(),
        Some(RecoveryError::BadSnapshot { seq: SeqNo(2) })
    );
}

/// A batch accepted in an earlier view is still served after recovery: a NEW-VIEW names the batches it carries
/// over by digest only, and after a crash of the whole cluster the replicas' disks are the only place they are.
/// (Found by `pbft sim --seed 332 --replicas 7 --partition --byzantine random --crash random`.)
#[test]
fn a_batch_of_an_earlier_view_is_served_after_recovery() {
    let c = cluster();
    let mut node = c.node(3);
    let batch = [c.request(1, 1, "a")];
    let digest = digest_of(&batch);
    node.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch)));
    node.step(Input::TimerFired(Timer::ViewChange));
    assert!(node.replica.status().changing_view);

    let (mut recovered, _) = c.recovered_node(3, &node.persisted).expect("recovers");
    assert_eq!(recovered.replica.status().view, View(1));
    let outs = recovered.step(c.deliver(1, c.fetch_batch(1, 1, digest)));
    assert_eq!(
        outs,
        vec![support::to_replica(1, c.batch_data(3, 1, digest, &batch))]
    );
}

/// A replica that executed a batch before the crash resends its COMMIT for it to a peer that restarted behind it:
/// without it, peers that lost the others' COMMITs could never commit that batch in the view.
#[test]
fn a_recovered_replica_resends_its_commit_for_what_it_executed() {
    let c = cluster();
    let mut node = c.node(3);
    let batch = [c.request(1, 1, "a")];
    c.run_slot(&mut node, 1, &batch);
    assert_eq!(node.replica.status().last_executed, SeqNo(1));
    let (mut recovered, _) = c.recovered_node(3, &node.persisted).expect("recovers");
    let outs = recovered.step(c.deliver(1, c.status(1, 0, 0, 0)));
    let commit = support::to_replica(1, c.commit(3, 0, 1, digest_of(&batch)));
    assert!(outs.contains(&commit), "{outs:?}");
}

/// The primary of a new view keeps its NEW-VIEW in the journal: restarted (after a crash of the whole cluster,
/// say), it can still resend it to a replica that missed it, which otherwise would stay in the old view.
#[test]
fn a_restarted_primary_still_resends_its_new_view() {
    let c = cluster();
    let mut primary = c.restorable_node(1);
    for r in [2, 3] {
        primary.step(c.deliver(
            r,
            pbft_types::ReplicaMsg::ViewChange(c.empty_view_change(r, 1)),
        ));
    }
    assert_eq!(
        (
            primary.replica.status().view,
            primary.replica.status().changing_view
        ),
        (View(1), false),
        "q VIEW-CHANGEs made it enter view 1"
    );
    let (mut recovered, _) = c
        .recovered_node(1, &primary.persisted)
        .expect("the journal recovers");
    assert_eq!(recovered.replica.status().view, View(1));
    // Replica 0 missed the NEW-VIEW and still speaks from view 0.
    let outs = recovered.step(c.deliver(0, c.status(0, 0, 0, 0)));
    let resent = outs.iter().any(|o| {
        matches!(o, Out::Send(pbft_core::Dest::Replica(to), ReplicaMsg::NewView(nv))
            if *to == pbft_types::ReplicaId(0) && nv.value().view == View(1))
    });
    assert!(resent, "{outs:?}");
}
