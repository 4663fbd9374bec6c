//! View change, message by message (PROTOCOL.md, "View change"): the request timer and its expiry, VIEW-CHANGE
//! and what makes one valid, the new primary's NEW-VIEW and its O, a backup's check of a NEW-VIEW, entering the new
//! view (PREPAREs for O, fetching batches and checkpoints it lacks), and the liveness rules (the NEW-VIEW timer,
//! its doubling, joining f+1 replicas that moved on).
//!
//! As in the other files, one replica is driven by hand with messages signed by the others' keys and
//! authenticated by the keyring, and each step's outputs are compared whole with what the protocol says they must
//! be. n = 4 (f = 1, q = 3) unless a test says otherwise: the primary of view v is replica v mod 4.

mod support;

use std::slice::from_ref as one;

use bytes::Bytes;
use pbft_core::Input;
use pbft_core::{InvalidNewView, InvalidViewChange, RejectReason, Timer};
use pbft_types::{Digest, PreparedProof, ReplicaId, ReplicaMsg, SeqNo, Signed, View, ViewChange};

use support::{
    Cluster, Node, Out, committed_in as committed, digest_of, null_digest, rejected_from_replica,
    reply_in as reply, sent_checkpoints, to_all, to_replica,
};

fn invalid_view_change(from: u64, reason: InvalidViewChange) -> Out {
    rejected_from_replica(from, "VIEW-CHANGE", RejectReason::InvalidViewChange(reason))
}

fn bad_prepared(seq: u64, reason: &'static str) -> InvalidViewChange {
    InvalidViewChange::BadPrepared {
        seq: SeqNo(seq),
        reason,
    }
}

fn wrong_view(got: u64, current: u64) -> RejectReason {
    RejectReason::WrongView {
        got: View(got),
        current: View(current),
    }
}

/// Delivers `msg` from `from` to `node`.
fn deliver(c: &Cluster, node: &mut Node, from: u64, msg: ReplicaMsg) -> Vec<Out> {
    node.step(c.deliver(from, msg))
}

/// The (view, changing_view) a replica reports.
fn view_of(node: &Node) -> (View, bool) {
    let status = node.replica.status();
    (status.view, status.changing_view)
}

mod request_timer {
    use super::*;

    /// The timer starts when the backup holds a request and stops when it executes; a late expiry is ignored.
    #[test]
    fn a_held_request_starts_the_timer_and_its_execution_stops_it() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        assert_eq!(
            backup.step(Input::Request(r.clone())),
            vec![
                Out::SetTimer(Timer::Relay, c.params().request_timeout / 4),
                c.view_timer(),
                c.status_timer()
            ]
        );
        // The same request in the primary's PRE-PREPARE: the timer already runs.
        assert_eq!(
            deliver(&c, &mut backup, 0, c.pre_prepare(0, 0, 1, one(&r))),
            vec![to_all(c.prepare(1, 0, 1, d))]
        );
        deliver(&c, &mut backup, 2, c.prepare(2, 0, 1, d));
        deliver(&c, &mut backup, 0, c.commit(0, 0, 1, d));
        assert_eq!(
            deliver(&c, &mut backup, 2, c.commit(2, 0, 1, d)),
            vec![
                reply(0, 1, 1, 1, "1:a"),
                committed(&c, 0, 1, one(&r), &["1:a"], &[0, 1, 2]),
                c.cancel_view_timer(),
            ]
        );
        // An expiry that raced with the cancellation changes nothing.
        assert_eq!(backup.step(Input::TimerFired(Timer::ViewChange)), vec![]);
        assert_eq!(view_of(&backup), (View(0), false));
    }

    /// When the request it watches executes and another is still waiting, the timer starts again for that one.
    #[test]
    fn the_timer_restarts_for_a_request_still_waiting() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let (b1, b2) = ([c.request(1, 1, "a")], [c.request(2, 1, "b")]);
        assert_eq!(
            deliver(&c, &mut backup, 0, c.pre_prepare(0, 0, 1, &b1)),
            vec![
                to_all(c.prepare(1, 0, 1, digest_of(&b1))),
                c.view_timer(),
                c.status_timer()
            ]
        );
        assert_eq!(
            deliver(&c, &mut backup, 0, c.pre_prepare(0, 0, 2, &b2)),
            vec![to_all(c.prepare(1, 0, 2, digest_of(&b2)))]
        );
        let d1 = digest_of(&b1);
        deliver(&c, &mut backup, 2, c.prepare(2, 0, 1, d1));
        deliver(&c, &mut backup, 0, c.commit(0, 0, 1, d1));
        assert_eq!(
            deliver(&c, &mut backup, 2, c.commit(2, 0, 1, d1)),
            vec![
                reply(0, 1, 1, 1, "1:a"),
                committed(&c, 0, 1, &b1, &["1:a"], &[0, 1, 2]),
                c.cancel_view_timer(),
                c.view_timer(),
            ]
        );
    }

    /// A replica holds one request per client, its newest: a client sends its next request only once f+1
    /// replicas executed the previous one, so a newer request means the older one is done somewhere. Here a
    /// lagging backup watches client 1's t = 1 and gets the PRE-PREPARE of t = 2 before t = 1 executes: the
    /// timer moves to t = 2 (a full period again), and t = 1's execution leaves it alone. A faulty client can
    /// restart the timer this way only while its own request is the oldest held, so it cannot starve another.
    #[test]
    fn a_newer_request_of_the_watched_client_takes_over_the_timer() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let (b1, b2) = ([c.request(1, 1, "a")], [c.request(1, 2, "a2")]);
        let d1 = digest_of(&b1);
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &b1)));
        assert_eq!(
            deliver(&c, &mut backup, 0, c.pre_prepare(0, 0, 2, &b2)),
            vec![
                to_all(c.prepare(1, 0, 2, digest_of(&b2))),
                c.cancel_view_timer(),
                c.view_timer(),
            ]
        );
        deliver(&c, &mut backup, 2, c.prepare(2, 0, 1, d1));
        deliver(&c, &mut backup, 0, c.commit(0, 0, 1, d1));
        assert_eq!(
            deliver(&c, &mut backup, 2, c.commit(2, 0, 1, d1)),
            vec![
                reply(0, 1, 1, 1, "1:a"),
                committed(&c, 0, 1, &b1, &["1:a"], &[0, 1, 2]),
            ]
        );
    }

    /// Backup 1 having executed slots 1 and 2 (checkpoint 2 stable with the votes of 0 and 2), prepared slot 3 and
    /// accepted slot 4 without preparing it. Returns the stable checkpoint's digest.
    fn backup_with_history(c: &Cluster) -> (Node, Digest) {
        let mut backup = c.node(1);
        c.run_slot(&mut backup, 1, &[c.request(1, 1, "a")]);
        let outs = c.run_slot(&mut backup, 2, &[c.request(2, 1, "b")]);
        let cp = sent_checkpoints(&outs)[0].1;
        deliver(c, &mut backup, 0, c.checkpoint(0, 2, cp));
        deliver(c, &mut backup, 2, c.checkpoint(2, 2, cp));
        assert_eq!(backup.replica.status().low_watermark, SeqNo(2));
        let (b3, b4) = ([c.request(3, 1, "c")], [c.request(4, 1, "d")]);
        deliver(c, &mut backup, 0, c.pre_prepare(0, 0, 3, &b3));
        assert_eq!(
            deliver(c, &mut backup, 2, c.prepare(2, 0, 3, digest_of(&b3))),
            vec![to_all(c.commit(1, 0, 3, digest_of(&b3)))]
        );
        deliver(c, &mut backup, 0, c.pre_prepare(0, 0, 4, &b4));
        (backup, cp)
    }

    #[test]
    fn expiry_sends_view_change_with_the_stable_checkpoint_its_proof_and_the_prepared_certificates()
    {
        let c = Cluster::four();
        let (mut backup, cp) = backup_with_history(&c);
        let d3 = digest_of(&[c.request(3, 1, "c")]);

        // C: the three CHECKPOINTs that made 2 stable (its own among them). P: slot 3 only (slot 4 never
        // prepared, slots 1 and 2 are below the checkpoint), its PRE-PREPARE and the PREPAREs of 1 and 2.
        let vc = c.view_change(
            1,
            1,
            2,
            c.checkpoint_proof(2, cp, &[0, 1, 2]),
            vec![c.prepared_proof(0, 3, d3, &[1, 2])],
        );
        assert_eq!(
            backup.step(Input::TimerFired(Timer::ViewChange)),
            vec![to_all(vc)]
        );
        let status = backup.replica.status();
        assert_eq!(
            (
                status.view,
                status.changing_view,
                status.low_watermark,
                status.log_slots,
                status.last_executed
            ),
            (View(1), true, SeqNo(2), 0, SeqNo(2))
        );
        // Firing again while it waits for the NEW-VIEW (no NEW-VIEW timer was set): nothing.
        assert_eq!(backup.step(Input::TimerFired(Timer::ViewChange)), vec![]);
        assert_eq!(view_of(&backup), (View(1), true));
    }

    #[test]
    fn while_changing_normal_case_messages_are_refused_checkpoints_and_requests_are_not() {
        let c = Cluster::four();
        let (mut backup, cp) = backup_with_history(&c);
        backup.step(Input::TimerFired(Timer::ViewChange));
        let r = c.request(5, 1, "e");
        let d = digest_of(one(&r));

        let changing = |from, kind| rejected_from_replica(from, kind, RejectReason::ChangingView);
        let refused = [
            (0, c.pre_prepare(0, 0, 5, one(&r)), "PRE-PREPARE"),
            (2, c.pre_prepare(2, 2, 3, one(&r)), "PRE-PREPARE"),
            (2, c.prepare(2, 0, 4, d), "PREPARE"),
            (2, c.prepare(2, 1, 3, d), "PREPARE"),
            (0, c.commit(0, 0, 3, d), "COMMIT"),
            (3, c.commit(3, 1, 3, d), "COMMIT"),
        ];
        for (from, msg, kind) in refused {
            assert_eq!(
                deliver(&c, &mut backup, from, msg),
                vec![changing(from, kind)]
            );
        }
        assert_eq!(backup.replica.status().log_slots, 0);

        // CHECKPOINT goes on: votes for checkpoint 4 are counted (three of them certify it, the replica is behind).
        let d4 = Digest([4; 32]);
        assert_eq!(deliver(&c, &mut backup, 0, c.checkpoint(0, 4, d4)), vec![]);
        assert_eq!(deliver(&c, &mut backup, 2, c.checkpoint(2, 4, d4)), vec![]);
        assert_eq!(
            deliver(&c, &mut backup, 3, c.checkpoint(3, 4, d4)),
            vec![Out::SetTimer(
                Timer::StateTransfer,
                c.params().status_interval
            )]
        );
        // A client's request is held for the new primary, not forwarded to the old one, and sets no timer.
        assert_eq!(backup.step(Input::Request(r)), vec![]);
        let status = backup.replica.status();
        assert_eq!(
            (status.view, status.changing_view, status.low_watermark),
            (View(1), true, SeqNo(2))
        );
        assert_eq!(backup.replica.stable_checkpoint().digest, cp);
    }
}

mod view_change_validity {
    use super::*;

    const CP: Digest = Digest([7; 32]);

    /// Replica 2, in view 0, is sent `vc` by replica 0.
    fn refused(c: &Cluster, vc: ReplicaMsg, reason: InvalidViewChange) {
        let mut node = c.node(2);
        let before = node.replica.status();
        assert_eq!(
            deliver(c, &mut node, 0, vc),
            vec![invalid_view_change(0, reason.clone())],
            "{reason}"
        );
        assert_eq!(node.replica.status(), before);
    }

    #[test]
    fn a_checkpoint_proof_must_prove_the_stable_checkpoint() {
        let c = Cluster::four();
        let vc = |stable, proof| c.view_change(0, 1, stable, proof, vec![]);
        refused(
            &c,
            vc(3, c.checkpoint_proof(3, CP, &[0, 1, 2])),
            InvalidViewChange::NotACheckpoint(SeqNo(3)),
        );
        let too_small = |got| InvalidViewChange::CheckpointProofTooSmall {
            seq: SeqNo(2),
            got,
            needed: 3,
        };
        refused(&c, vc(2, vec![]), too_small(0));
        refused(&c, vc(2, c.checkpoint_proof(2, CP, &[0, 1])), too_small(2));
        // Three CHECKPOINTs, two signers.
        refused(
            &c,
            vc(2, c.checkpoint_proof(2, CP, &[0, 1, 1])),
            too_small(2),
        );
        let mismatch = InvalidViewChange::CheckpointProofMismatch { seq: SeqNo(2) };
        let mut other_digest = c.checkpoint_proof(2, CP, &[0, 1]);
        other_digest.push(c.signed_checkpoint(3, 2, Digest([8; 32])));
        refused(&c, vc(2, other_digest), mismatch.clone());
        let mut other_seq = c.checkpoint_proof(2, CP, &[0, 1]);
        other_seq.push(c.signed_checkpoint(3, 4, CP));
        refused(&c, vc(2, other_seq), mismatch);
        refused(
            &c,
            vc(0, c.checkpoint_proof(0, CP, &[0, 1, 2])),
            InvalidViewChange::UnexpectedCheckpointProof,
        );
    }

    #[test]
    fn a_prepared_certificate_must_be_one() {
        let c = Cluster::four();
        let d = Digest([1; 32]);
        let vc = |prepared: Vec<PreparedProof>| c.view_change(0, 1, 0, vec![], prepared);
        refused(
            &c,
            vc(vec![c.prepared_proof(0, 1, d, &[1])]),
            bad_prepared(1, "too few PREPAREs"),
        );
        refused(
            &c,
            vc(vec![c.prepared_proof(0, 1, d, &[0, 1])]),
            bad_prepared(1, "a PREPARE from the primary"),
        );
        refused(
            &c,
            vc(vec![c.prepared_proof(0, 1, d, &[1, 1])]),
            bad_prepared(1, "two PREPAREs from one replica"),
        );
        let mut other_digest = c.prepared_proof(0, 1, d, &[1]);
        other_digest
            .prepares
            .push(c.signed_prepare(2, 0, 1, Digest([2; 32])));
        refused(
            &c,
            vc(vec![other_digest]),
            bad_prepared(1, "a PREPARE does not match the PRE-PREPARE"),
        );
        let mut other_seq = c.prepared_proof(0, 1, d, &[1]);
        other_seq.prepares.push(c.signed_prepare(2, 0, 2, d));
        refused(
            &c,
            vc(vec![other_seq]),
            bad_prepared(1, "a PREPARE does not match the PRE-PREPARE"),
        );
        // A PRE-PREPARE signed by backup 1 for view 0, whose primary is 0.
        let not_primary = PreparedProof {
            pre_prepare: c.signed_pre_prepare(1, 0, 1, d),
            prepares: vec![c.signed_prepare(2, 0, 1, d), c.signed_prepare(3, 0, 1, d)],
        };
        refused(
            &c,
            vc(vec![not_primary]),
            bad_prepared(1, "PRE-PREPARE not signed by the primary of its view"),
        );
        // A certificate of view 1 (or later) cannot back a VIEW-CHANGE to view 1.
        for view in [1, 2] {
            refused(
                &c,
                vc(vec![c.prepared_proof(view, 1, d, &[0, 3])]),
                bad_prepared(1, "PRE-PREPARE not from an earlier view"),
            );
        }
        // Outside (h, h + L] = (0, 4], and with stable checkpoint 2, (2, 6].
        for seq in [0, 5] {
            refused(
                &c,
                vc(vec![c.prepared_proof(0, seq, d, &[1, 2])]),
                bad_prepared(seq, "sequence outside the sender's watermarks"),
            );
        }
        let above_2 = |seq| {
            c.view_change(
                0,
                1,
                2,
                c.checkpoint_proof(2, CP, &[0, 1, 2]),
                vec![c.prepared_proof(0, seq, d, &[1, 2])],
            )
        };
        for seq in [2, 7] {
            refused(
                &c,
                above_2(seq),
                bad_prepared(seq, "sequence outside the sender's watermarks"),
            );
        }
        // Two certificates for one sequence number, even for one digest.
        refused(
            &c,
            vc(vec![
                c.prepared_proof(0, 1, d, &[1, 2]),
                c.prepared_proof(0, 1, d, &[2, 3]),
            ]),
            InvalidViewChange::DuplicatePrepared(SeqNo(1)),
        );
    }

    /// The edges that are valid: a proof of exactly q, certificates at h + 1 and H, of views below the new one.
    #[test]
    fn a_valid_view_change_is_kept_and_counted() {
        let c = Cluster::four();
        let mut node = c.node(2);
        let d = Digest([1; 32]);
        let vc0 = c.view_change(
            0,
            2,
            2,
            c.checkpoint_proof(2, CP, &[0, 1, 3]),
            vec![
                c.prepared_proof(0, 3, d, &[1, 2]),
                c.prepared_proof(1, 6, d, &[0, 3]),
            ],
        );
        assert_eq!(deliver(&c, &mut node, 0, vc0.clone()), vec![]);
        // Kept: the same one again is a duplicate.
        assert_eq!(
            deliver(&c, &mut node, 0, vc0),
            vec![rejected_from_replica(
                0,
                "VIEW-CHANGE",
                RejectReason::Duplicate
            )]
        );
        assert_eq!(view_of(&node), (View(0), false));
    }

    /// A refused VIEW-CHANGE leaves no trace: after refusals from replicas 0 and 3, their valid ones still make
    /// replica 2 join view 1 (f + 1 = 2 of them) and start its NEW-VIEW timer (q = 3 with its own).
    #[test]
    fn refused_view_changes_leave_no_trace() {
        let c = Cluster::four();
        let mut node = c.node(2);
        let d = Digest([1; 32]);
        for from in [0, 3] {
            let bad = c.view_change(from, 1, 0, vec![], vec![c.prepared_proof(0, 1, d, &[1])]);
            assert_eq!(
                deliver(&c, &mut node, from, bad),
                vec![invalid_view_change(
                    from,
                    bad_prepared(1, "too few PREPAREs")
                )]
            );
        }
        assert_eq!(view_of(&node), (View(0), false));
        let good = |from| ReplicaMsg::ViewChange(c.empty_view_change(from, 1));
        assert_eq!(deliver(&c, &mut node, 0, good(0)), vec![]);
        assert_eq!(
            deliver(&c, &mut node, 3, good(3)),
            vec![to_all(good(2)), c.new_view_timer(), c.status_timer()]
        );
        assert_eq!(view_of(&node), (View(1), true));
    }

    #[test]
    fn a_view_change_for_a_view_already_entered_or_left_is_refused() {
        let c = Cluster::four();
        let mut node = c.node(3);
        let vc = |from, view| ReplicaMsg::ViewChange(c.empty_view_change(from, view));
        // View 0 is the current view, entered without a view change.
        assert_eq!(
            deliver(&c, &mut node, 0, vc(0, 0)),
            vec![rejected_from_replica(0, "VIEW-CHANGE", wrong_view(0, 0))]
        );
        // Replica 3 moves to view 2 by the f + 1 rule; a VIEW-CHANGE for view 1 is then stale.
        deliver(&c, &mut node, 0, vc(0, 2));
        deliver(&c, &mut node, 1, vc(1, 2));
        assert_eq!(view_of(&node), (View(2), true));
        assert_eq!(
            deliver(&c, &mut node, 2, vc(2, 1)),
            vec![rejected_from_replica(2, "VIEW-CHANGE", wrong_view(1, 2))]
        );
        // A replica whose latest VIEW-CHANGE is for view 3 cannot go back to one for view 2.
        assert_eq!(deliver(&c, &mut node, 2, vc(2, 3)), vec![]);
        assert_eq!(
            deliver(&c, &mut node, 2, vc(2, 2)),
            vec![rejected_from_replica(
                2,
                "VIEW-CHANGE",
                RejectReason::Duplicate
            )]
        );
        assert_eq!(view_of(&node), (View(2), true));
    }
}

mod new_primary {
    use super::*;

    /// Replica 2, the primary of view 2, joins view 2 when replicas 0 and 3 ask for it (f + 1), and with its
    /// own VIEW-CHANGE holds q: it sends NEW-VIEW at once. V = its own, then 0's, then 3's. O, for min-s = 0 and
    /// max-s = 3: seq 1 prepared in view 1 (0's certificate) and in view 0 with another digest (3's
    /// certificate), so the view-1 digest; seq 2 prepared nowhere, so the null batch; seq 3 the one certificate.
    #[test]
    fn q_view_changes_make_the_new_primary_send_new_view_with_o_and_enter_the_view() {
        let c = Cluster::four();
        let mut primary = c.node(2);
        let (da, db, dc) = (
            digest_of(&[c.request(1, 1, "a")]),
            digest_of(&[c.request(2, 1, "b")]),
            digest_of(&[c.request(3, 1, "c")]),
        );
        // The higher-view certificate comes first in V, so that "the last one wins" would pick the wrong one.
        let vc0 = c.signed_view_change(0, 2, 0, vec![], vec![c.prepared_proof(1, 1, db, &[0, 3])]);
        let vc3 = c.signed_view_change(
            3,
            2,
            0,
            vec![],
            vec![
                c.prepared_proof(0, 1, da, &[1, 3]),
                c.prepared_proof(0, 3, dc, &[1, 3]),
            ],
        );
        assert_eq!(
            deliver(&c, &mut primary, 0, ReplicaMsg::ViewChange(vc0.clone())),
            vec![]
        );
        assert_eq!(view_of(&primary), (View(0), false));

        let own = c.empty_view_change(2, 2);
        let o = c.o(2, &[(1, db), (2, null_digest()), (3, dc)]);
        let nv = c.new_view(2, 2, vec![own.clone(), vc0, vc3.clone()], o);
        assert_eq!(
            deliver(&c, &mut primary, 3, ReplicaMsg::ViewChange(vc3)),
            vec![
                to_all(ReplicaMsg::ViewChange(own)),
                to_all(nv.clone()),
                Out::EnteredView(View(2)),
                // It has neither batch that O names (the null batch needs no fetching).
                to_all(c.fetch_batch(2, 1, db)),
                to_all(c.fetch_batch(2, 3, dc)),
                c.status_timer(),
            ]
        );
        let status = primary.replica.status();
        assert_eq!(
            (status.view, status.changing_view, status.log_range),
            (View(2), false, Some((SeqNo(1), SeqNo(3))))
        );

        // A replica that missed the NEW-VIEW gets it again, whether it says so by VIEW-CHANGE or by STATUS.
        assert_eq!(
            deliver(
                &c,
                &mut primary,
                1,
                ReplicaMsg::ViewChange(c.empty_view_change(1, 2))
            ),
            vec![
                to_replica(1, nv.clone()),
                rejected_from_replica(1, "VIEW-CHANGE", wrong_view(2, 2))
            ]
        );
        assert_eq!(
            deliver(&c, &mut primary, 1, c.status(1, 0, 0, 0)),
            vec![to_replica(1, nv.clone())]
        );
        // (A STATUS is answered once per status interval.)
        primary.step(Input::TimerFired(Timer::Status));
        assert_eq!(
            deliver(&c, &mut primary, 1, c.status_changing(1, 2, 0, 0, true)),
            vec![to_replica(1, nv)]
        );
    }

    /// The new primary proposes the requests it held after the last sequence number of O. Replica 1 holds client
    /// 5's request, times out, and becomes primary of view 1 with the VIEW-CHANGEs of 2 and 3.
    #[test]
    fn the_new_primary_proposes_the_requests_it_held_after_o() {
        let c = Cluster::four();
        let mut node = c.node(1);
        let r = c.request(5, 1, "e");
        let b = [c.request(2, 1, "b")];
        let db = digest_of(&b);
        node.step(Input::Request(r.clone()));
        let own = c.empty_view_change(1, 1);
        assert_eq!(
            node.step(Input::TimerFired(Timer::ViewChange)),
            vec![to_all(ReplicaMsg::ViewChange(own.clone()))]
        );
        let vc2 = c.empty_view_change(2, 1);
        let vc3 = c.signed_view_change(3, 1, 0, vec![], vec![c.prepared_proof(0, 2, db, &[2, 3])]);
        assert_eq!(
            deliver(&c, &mut node, 2, ReplicaMsg::ViewChange(vc2.clone())),
            vec![]
        );
        let nv = c.new_view(
            1,
            1,
            vec![own, vc2, vc3.clone()],
            c.o(1, &[(1, null_digest()), (2, db)]),
        );
        assert_eq!(
            deliver(&c, &mut node, 3, ReplicaMsg::ViewChange(vc3)),
            vec![
                to_all(nv),
                Out::EnteredView(View(1)),
                to_all(c.fetch_batch(1, 2, db)),
                // Batches 1 and 2 are in flight: the held request waits for a fuller batch or the batch timer.
                Out::SetTimer(Timer::Batch, c.params().batch_delay),
                c.view_timer(),
            ]
        );
        assert_eq!(node.replica.status().pending_requests, 1);
        assert_eq!(
            node.step(Input::TimerFired(Timer::Batch)),
            vec![to_all(c.pre_prepare(1, 1, 3, one(&r)))]
        );
        assert_eq!(node.replica.status().pending_requests, 0);
    }

    /// A request that O carries is in flight at the new primary, so a retransmission of it is a duplicate, not
    /// proposed again at another sequence number; also when the primary lacked the batch at NEW-VIEW time and
    /// fetched it afterwards.
    #[test]
    fn a_request_of_a_fetched_batch_of_o_is_not_proposed_again_by_the_new_primary() {
        let c = Cluster::four();
        let mut node = c.node(1);
        let b = [c.request(2, 1, "b")];
        let db = digest_of(&b);
        node.step(Input::Request(c.request(5, 1, "e")));
        node.step(Input::TimerFired(Timer::ViewChange));
        let vc3 = c.signed_view_change(3, 1, 0, vec![], vec![c.prepared_proof(0, 2, db, &[2, 3])]);
        deliver(
            &c,
            &mut node,
            2,
            ReplicaMsg::ViewChange(c.empty_view_change(2, 1)),
        );
        deliver(&c, &mut node, 3, ReplicaMsg::ViewChange(vc3));
        assert_eq!(view_of(&node), (View(1), false));
        assert_eq!(
            deliver(&c, &mut node, 3, c.batch_data(3, 2, db, &b)),
            vec![]
        );
        assert_eq!(
            node.step(Input::Request(b[0].clone())),
            vec![support::rejected_request(2, RejectReason::Duplicate)]
        );
    }
}

mod new_view_acceptance {
    use super::*;

    /// Backup 2 accepted slot 1 (client 1's "a") in view 0 and prepared it; the primary went silent. It times out,
    /// gathers q VIEW-CHANGEs (its NEW-VIEW timer starts), and accepts the NEW-VIEW of primary 1, whose O carries
    /// slot 1 and slot 2 (client 2's "b", prepared by 1 and 3, never seen by 2). It prepares both, fetches batch 2,
    /// and both execute in view 1.
    #[test]
    fn a_backup_accepts_new_view_prepares_o_fetches_what_it_lacks_and_executes() {
        let c = Cluster::four();
        let mut backup = c.node(2);
        let (a, b) = ([c.request(1, 1, "a")], [c.request(2, 1, "b")]);
        let (da, db) = (digest_of(&a), digest_of(&b));
        deliver(&c, &mut backup, 0, c.pre_prepare(0, 0, 1, &a));
        assert_eq!(
            deliver(&c, &mut backup, 3, c.prepare(3, 0, 1, da)),
            vec![to_all(c.commit(2, 0, 1, da))]
        );

        let vc2 = c.signed_view_change(2, 1, 0, vec![], vec![c.prepared_proof(0, 1, da, &[2, 3])]);
        assert_eq!(
            backup.step(Input::TimerFired(Timer::ViewChange)),
            vec![to_all(ReplicaMsg::ViewChange(vc2.clone()))]
        );
        let vc3 = c.signed_view_change(
            3,
            1,
            0,
            vec![],
            vec![
                c.prepared_proof(0, 1, da, &[2, 3]),
                c.prepared_proof(0, 2, db, &[1, 3]),
            ],
        );
        let vc1 = c.empty_view_change(1, 1);
        assert_eq!(
            deliver(&c, &mut backup, 3, ReplicaMsg::ViewChange(vc3.clone())),
            vec![]
        );
        // The q-th VIEW-CHANGE for view 1 starts the NEW-VIEW timer.
        assert_eq!(
            deliver(&c, &mut backup, 1, ReplicaMsg::ViewChange(vc1.clone())),
            vec![c.new_view_timer()]
        );

        let nv = c.new_view(1, 1, vec![vc1, vc2, vc3], c.o(1, &[(1, da), (2, db)]));
        assert_eq!(
            deliver(&c, &mut backup, 1, nv.clone()),
            vec![
                c.cancel_view_timer(),
                Out::EnteredView(View(1)),
                to_all(c.prepare(2, 1, 1, da)),
                to_all(c.prepare(2, 1, 2, db)),
                to_all(c.fetch_batch(2, 2, db)),
                // Client 1's request, re-proposed by O, is watched again in the new view.
                c.view_timer(),
            ]
        );
        let status = backup.replica.status();
        assert_eq!(
            (status.view, status.changing_view, status.log_range),
            (View(1), false, Some((SeqNo(1), SeqNo(2))))
        );
        // The same NEW-VIEW again: the view is entered already.
        assert_eq!(
            deliver(&c, &mut backup, 1, nv),
            vec![rejected_from_replica(1, "NEW-VIEW", wrong_view(1, 1))]
        );

        // BATCH-DATA that does not match the digest, or for a slot whose batch it has, is refused.
        let unexpected =
            |from| rejected_from_replica(from, "BATCH-DATA", RejectReason::UnexpectedBatch);
        assert_eq!(
            deliver(&c, &mut backup, 3, c.batch_data(3, 2, db, &a)),
            vec![unexpected(3)]
        );
        assert_eq!(
            deliver(&c, &mut backup, 3, c.batch_data(3, 1, da, &a)),
            vec![unexpected(3)]
        );
        assert_eq!(
            deliver(&c, &mut backup, 3, c.batch_data(3, 2, db, &b)),
            vec![]
        );
        assert_eq!(
            deliver(&c, &mut backup, 0, c.batch_data(0, 2, db, &b)),
            vec![unexpected(0)]
        );

        for (seq, d) in [(1, da), (2, db)] {
            assert_eq!(
                deliver(&c, &mut backup, 3, c.prepare(3, 1, seq, d)),
                vec![to_all(c.commit(2, 1, seq, d))]
            );
            assert_eq!(deliver(&c, &mut backup, 1, c.commit(1, 1, seq, d)), vec![]);
        }
        assert_eq!(
            deliver(&c, &mut backup, 3, c.commit(3, 1, 1, da)),
            vec![
                reply(1, 1, 1, 2, "1:a"),
                committed(&c, 1, 1, &a, &["1:a"], &[1, 2, 3]),
                c.cancel_view_timer(),
                c.view_timer(),
            ]
        );
        let outs = deliver(&c, &mut backup, 3, c.commit(3, 1, 2, db));
        let cp = sent_checkpoints(&outs)
            .first()
            .map(|(_, d)| *d)
            .expect("a CHECKPOINT at 2");
        assert_eq!(
            outs,
            vec![
                reply(1, 2, 1, 2, "2:b"),
                committed(&c, 1, 2, &b, &["2:b"], &[1, 2, 3]),
                to_all(c.checkpoint(2, 2, cp)),
                c.cancel_view_timer(),
            ]
        );
        assert_eq!(
            backup.executed_ops(),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
    }

    /// A slot that executed in view 0 is agreed on again in view 1 (O carries it) but does not execute twice, and
    /// until it commits in view 1 STATUS reports it unsettled, so that peers resend their votes for it. A request
    /// held in view 0 that O does not carry goes to the new primary.
    #[test]
    fn a_slot_executed_before_the_view_change_is_agreed_again_not_executed_again() {
        let c = Cluster::four();
        let mut backup = c.node(2);
        let (a, b) = ([c.request(1, 1, "a")], [c.request(2, 1, "b")]);
        let da = digest_of(&a);
        c.run_slot(&mut backup, 1, &a);
        deliver(&c, &mut backup, 0, c.pre_prepare(0, 0, 2, &b));

        // run_slot had backup 1's PREPARE complete backup 2's certificate.
        let vc2 = c.signed_view_change(2, 1, 0, vec![], vec![c.prepared_proof(0, 1, da, &[1, 2])]);
        assert_eq!(
            backup.step(Input::TimerFired(Timer::ViewChange)),
            vec![to_all(ReplicaMsg::ViewChange(vc2.clone()))]
        );
        let (vc1, vc3) = (c.empty_view_change(1, 1), c.empty_view_change(3, 1));
        deliver(&c, &mut backup, 1, ReplicaMsg::ViewChange(vc1.clone()));
        deliver(&c, &mut backup, 3, ReplicaMsg::ViewChange(vc3.clone()));
        let nv = c.new_view(1, 1, vec![vc1, vc2, vc3], c.o(1, &[(1, da)]));
        assert_eq!(
            deliver(&c, &mut backup, 1, nv),
            vec![
                c.cancel_view_timer(),
                Out::EnteredView(View(1)),
                to_all(c.prepare(2, 1, 1, da)),
                to_replica(1, ReplicaMsg::Request(b[0].signed().clone())),
                c.view_timer(),
            ]
        );
        assert_eq!(
            backup.step(Input::TimerFired(Timer::Status)),
            vec![to_all(c.status(2, 1, 0, 0)), c.status_timer()]
        );
        assert_eq!(
            deliver(&c, &mut backup, 3, c.prepare(3, 1, 1, da)),
            vec![to_all(c.commit(2, 1, 1, da))]
        );
        assert_eq!(deliver(&c, &mut backup, 1, c.commit(1, 1, 1, da)), vec![]);
        assert_eq!(deliver(&c, &mut backup, 3, c.commit(3, 1, 1, da)), vec![]);
        assert_eq!(
            backup.step(Input::TimerFired(Timer::Status)),
            vec![to_all(c.status(2, 1, 0, 1)), c.status_timer()]
        );
        assert_eq!(backup.executed_ops(), vec![Bytes::from("a")]);
        assert_eq!(backup.replica.status().last_executed, SeqNo(1));
    }

    /// A replica serves the batches it saw proposed, whatever the view; it refuses to serve one it does not have.
    #[test]
    fn fetch_batch_is_answered_from_the_batches_seen_proposed() {
        let c = Cluster::four();
        let mut node = c.node(3);
        let b = [c.request(2, 1, "b")];
        let db = digest_of(&b);
        deliver(&c, &mut node, 0, c.pre_prepare(0, 0, 2, &b));
        // It moves to view 1 (its view-0 log is gone), and still serves the batch.
        node.step(Input::TimerFired(Timer::ViewChange));
        assert_eq!(view_of(&node), (View(1), true));
        assert_eq!(
            deliver(&c, &mut node, 2, c.fetch_batch(2, 2, db)),
            vec![to_replica(2, c.batch_data(3, 2, db, &b))]
        );
        let unexpected = rejected_from_replica(2, "FETCH-BATCH", RejectReason::UnexpectedBatch);
        assert_eq!(
            deliver(&c, &mut node, 2, c.fetch_batch(2, 1, db)),
            vec![unexpected.clone()]
        );
        assert_eq!(
            deliver(&c, &mut node, 2, c.fetch_batch(2, 2, Digest([9; 32]))),
            vec![unexpected]
        );
    }
}

mod new_view_refusals {
    use super::*;

    /// The NEW-VIEW for view 1 as the primary (replica 1) would build it from the VIEW-CHANGEs of 1, 0 and 2:
    /// replica 0 prepared seq 1 (batch A) and seq 3 (batch C) in view 0, nobody seq 2, so O = A, null, C.
    struct Fixture {
        c: Cluster,
        vc1: Signed<ViewChange>,
        vc0: Signed<ViewChange>,
        vc2: Signed<ViewChange>,
        da: Digest,
        dc: Digest,
    }

    impl Fixture {
        fn new() -> Fixture {
            let c = Cluster::four();
            let da = digest_of(&[c.request(1, 1, "a")]);
            let dc = digest_of(&[c.request(3, 1, "c")]);
            let vc0 = c.signed_view_change(
                0,
                1,
                0,
                vec![],
                vec![
                    c.prepared_proof(0, 1, da, &[1, 2]),
                    c.prepared_proof(0, 3, dc, &[1, 2]),
                ],
            );
            Fixture {
                vc1: c.empty_view_change(1, 1),
                vc2: c.empty_view_change(2, 1),
                vc0,
                da,
                dc,
                c,
            }
        }

        fn v(&self) -> Vec<Signed<ViewChange>> {
            vec![self.vc1.clone(), self.vc0.clone(), self.vc2.clone()]
        }

        fn o_entries(&self) -> Vec<(u64, Digest)> {
            vec![(1, self.da), (2, null_digest()), (3, self.dc)]
        }

        fn o(&self) -> Vec<Signed<pbft_types::PrePrepare>> {
            self.c.o(1, &self.o_entries())
        }

        /// Backup 3, in view 0, is sent `nv` by `from` and refuses it for `reason`, changing nothing.
        fn refused(&self, from: u64, nv: ReplicaMsg, reason: RejectReason) {
            let mut node = self.c.node(3);
            let before = node.replica.status();
            assert_eq!(
                deliver(&self.c, &mut node, from, nv),
                vec![rejected_from_replica(from, "NEW-VIEW", reason.clone())],
                "{reason:?}"
            );
            assert_eq!(node.replica.status(), before);
        }

        fn refused_v(&self, v: Vec<Signed<ViewChange>>, reason: InvalidNewView) {
            let nv = self.c.new_view(1, 1, v, self.o());
            self.refused(1, nv, RejectReason::InvalidNewView(reason));
        }

        fn refused_o(&self, o: Vec<Signed<pbft_types::PrePrepare>>, reason: InvalidNewView) {
            let nv = self.c.new_view(1, 1, self.v(), o);
            self.refused(1, nv, RejectReason::InvalidNewView(reason));
        }
    }

    /// The fixture's NEW-VIEW is valid: a backup that never took part in the view change enters view 1, prepares
    /// all of O (the null batch too) and fetches the two batches it lacks.
    #[test]
    fn the_valid_new_view_is_accepted() {
        let f = Fixture::new();
        let c = &f.c;
        let mut node = c.node(3);
        assert_eq!(
            deliver(c, &mut node, 1, c.new_view(1, 1, f.v(), f.o())),
            vec![
                Out::EnteredView(View(1)),
                to_all(c.prepare(3, 1, 1, f.da)),
                to_all(c.prepare(3, 1, 2, null_digest())),
                to_all(c.prepare(3, 1, 3, f.dc)),
                to_all(c.fetch_batch(3, 1, f.da)),
                to_all(c.fetch_batch(3, 3, f.dc)),
                c.status_timer(),
            ]
        );
        assert_eq!(view_of(&node), (View(1), false));
        // V in another order, more than q VIEW-CHANGEs: the same O.
        let mut node = c.node(3);
        let vc3 = c.empty_view_change(3, 1);
        let v = vec![f.vc2.clone(), vc3, f.vc0.clone(), f.vc1.clone()];
        let outs = deliver(c, &mut node, 1, c.new_view(1, 1, v, f.o()));
        assert_eq!(outs[0], Out::EnteredView(View(1)));
    }

    /// Two certificates for seq 1 disagree: view 0 prepared batch A (replica 0's), view 1 batch B (replica 2's, a
    /// later view). O must carry B in whichever order V lists them, and a NEW-VIEW whose O carries A is refused.
    /// The NEW-VIEW is for view 2 (primary 2), so that a view-1 certificate may back it.
    #[test]
    fn o_takes_the_certificate_of_the_highest_view_in_whatever_order_v_lists_them() {
        let f = Fixture::new();
        let c = &f.c;
        let db = digest_of(&[c.request(2, 1, "b")]);
        let vc0 =
            c.signed_view_change(0, 2, 0, vec![], vec![c.prepared_proof(0, 1, f.da, &[1, 3])]);
        let vc2 = c.empty_view_change(2, 2);
        let vc3 = c.signed_view_change(3, 2, 0, vec![], vec![c.prepared_proof(1, 1, db, &[0, 3])]);
        for v in [
            vec![vc2.clone(), vc0.clone(), vc3.clone()],
            vec![vc3.clone(), vc2.clone(), vc0.clone()],
        ] {
            let mut node = c.node(1);
            let lower = c.new_view(2, 2, v.clone(), c.o(2, &[(1, f.da)]));
            assert_eq!(
                deliver(c, &mut node, 2, lower),
                vec![rejected_from_replica(
                    2,
                    "NEW-VIEW",
                    RejectReason::InvalidNewView(InvalidNewView::WrongEntry { index: 0 })
                )]
            );
            let higher = c.new_view(2, 2, v, c.o(2, &[(1, db)]));
            assert_eq!(
                deliver(c, &mut node, 2, higher),
                vec![
                    Out::EnteredView(View(2)),
                    to_all(c.prepare(1, 2, 1, db)),
                    to_all(c.fetch_batch(1, 1, db)),
                    c.status_timer(),
                ]
            );
        }
    }

    #[test]
    fn v_must_hold_q_distinct_view_changes_for_the_view_the_primarys_among_them() {
        let f = Fixture::new();
        let c = &f.c;
        // O computed from what remains is what the primary would send; only V is wrong.
        let nv_with = |v: Vec<Signed<ViewChange>>| c.new_view(1, 1, v, f.o());
        f.refused(
            1,
            nv_with(vec![f.vc1.clone(), f.vc0.clone()]),
            RejectReason::InvalidNewView(InvalidNewView::TooFewViewChanges { got: 2, needed: 3 }),
        );
        f.refused_v(
            vec![f.vc1.clone(), f.vc0.clone(), f.vc0.clone()],
            InvalidNewView::DuplicateSender(ReplicaId(0)),
        );
        f.refused_v(
            vec![f.vc1.clone(), f.vc0.clone(), c.empty_view_change(2, 2)],
            InvalidNewView::WrongViewInV {
                got: View(2),
                expected: View(1),
            },
        );
        f.refused_v(
            vec![f.vc0.clone(), f.vc2.clone(), c.empty_view_change(3, 1)],
            InvalidNewView::PrimaryMissing,
        );
        // A VIEW-CHANGE in V that is itself invalid.
        let bad = c.signed_view_change(2, 1, 0, vec![], vec![c.prepared_proof(0, 1, f.da, &[1])]);
        f.refused_v(
            vec![f.vc1.clone(), f.vc0.clone(), bad],
            InvalidNewView::InvalidViewChange {
                replica: ReplicaId(2),
                reason: bad_prepared(1, "too few PREPAREs"),
            },
        );
    }

    /// A VIEW-CHANGE in V is checked as thoroughly as one received alone: every way it can fail to prove its
    /// checkpoint or its certificates makes the whole NEW-VIEW invalid (a faulty one in V could otherwise move
    /// min-s or put a batch into O that never prepared).
    #[test]
    fn every_kind_of_invalid_view_change_in_v_is_refused() {
        let f = Fixture::new();
        let c = &f.c;
        let cp = Digest([7; 32]);
        let d = Digest([1; 32]);
        let in_v = |vc: Signed<ViewChange>, reason: InvalidViewChange| {
            f.refused_v(
                vec![f.vc1.clone(), f.vc0.clone(), vc],
                InvalidNewView::InvalidViewChange {
                    replica: ReplicaId(2),
                    reason,
                },
            );
        };
        let vc2 = |stable, proof, prepared| c.signed_view_change(2, 1, stable, proof, prepared);
        in_v(
            vc2(3, c.checkpoint_proof(3, cp, &[0, 1, 2]), vec![]),
            InvalidViewChange::NotACheckpoint(SeqNo(3)),
        );
        in_v(
            vc2(2, c.checkpoint_proof(2, cp, &[0, 1]), vec![]),
            InvalidViewChange::CheckpointProofTooSmall {
                seq: SeqNo(2),
                got: 2,
                needed: 3,
            },
        );
        let mut mismatched = c.checkpoint_proof(2, cp, &[0, 1]);
        mismatched.push(c.signed_checkpoint(2, 4, cp));
        in_v(
            vc2(2, mismatched, vec![]),
            InvalidViewChange::CheckpointProofMismatch { seq: SeqNo(2) },
        );
        in_v(
            vc2(0, c.checkpoint_proof(0, cp, &[0, 1, 2]), vec![]),
            InvalidViewChange::UnexpectedCheckpointProof,
        );
        // The window is 4: a certificate for seq 5 is beyond the sender's high watermark.
        in_v(
            vc2(0, vec![], vec![c.prepared_proof(0, 5, d, &[1, 2])]),
            bad_prepared(5, "sequence outside the sender's watermarks"),
        );
        in_v(
            vc2(0, vec![], vec![c.prepared_proof(1, 1, d, &[2, 3])]),
            bad_prepared(1, "PRE-PREPARE not from an earlier view"),
        );
        in_v(
            vc2(0, vec![], vec![c.prepared_proof(0, 1, d, &[0, 1])]),
            bad_prepared(1, "a PREPARE from the primary"),
        );
        let mut not_primary = c.prepared_proof(0, 1, d, &[1, 2]);
        not_primary.pre_prepare = c.signed_pre_prepare(2, 0, 1, d);
        in_v(
            vc2(0, vec![], vec![not_primary]),
            bad_prepared(1, "PRE-PREPARE not signed by the primary of its view"),
        );
        in_v(
            vc2(
                0,
                vec![],
                vec![
                    c.prepared_proof(0, 1, d, &[1, 2]),
                    c.prepared_proof(0, 1, Digest([2; 32]), &[1, 2]),
                ],
            ),
            InvalidViewChange::DuplicatePrepared(SeqNo(1)),
        );
    }

    #[test]
    fn o_must_be_exactly_what_v_implies() {
        let f = Fixture::new();
        let c = &f.c;
        let null = null_digest();
        let wrong_length = |got| InvalidNewView::WrongLength { got, expected: 3 };
        // A missing entry: the last, or the gap's null batch in the middle.
        f.refused_o(c.o(1, &[(1, f.da), (2, null)]), wrong_length(2));
        f.refused_o(c.o(1, &[(1, f.da), (3, f.dc)]), wrong_length(2));
        f.refused_o(c.o(1, &[]), wrong_length(0));
        // An extra entry.
        f.refused_o(
            c.o(1, &[(1, f.da), (2, null), (3, f.dc), (4, null)]),
            wrong_length(4),
        );
        let wrong_entry = |index| InvalidNewView::WrongEntry { index };
        // A wrong digest, the null batch where a certificate exists, a certificate's digest in the gap.
        f.refused_o(c.o(1, &[(1, f.dc), (2, null), (3, f.dc)]), wrong_entry(0));
        f.refused_o(c.o(1, &[(1, f.da), (2, null), (3, null)]), wrong_entry(2));
        f.refused_o(c.o(1, &[(1, f.da), (2, f.da), (3, f.dc)]), wrong_entry(1));
        // Entries out of order.
        f.refused_o(c.o(1, &[(2, null), (1, f.da), (3, f.dc)]), wrong_entry(0));
        // An entry for another view, or signed by another replica than the new primary.
        let mut other_view = f.o();
        other_view[1] = c.signed_pre_prepare(1, 2, 2, null);
        f.refused_o(other_view, wrong_entry(1));
        let mut old_view = f.o();
        old_view[0] = c.signed_pre_prepare(0, 0, 1, f.da);
        f.refused_o(old_view, wrong_entry(0));
        let mut other_signer = f.o();
        other_signer[2] = c.signed_pre_prepare(2, 1, 3, f.dc);
        f.refused_o(other_signer, wrong_entry(2));
    }

    #[test]
    fn a_new_view_from_another_replica_than_the_primary_or_for_a_past_view_is_refused() {
        let f = Fixture::new();
        let c = &f.c;
        // Replica 2 sends (and signs) a NEW-VIEW for view 1, whose primary is 1.
        f.refused(
            2,
            c.new_view(2, 1, f.v(), f.o()),
            RejectReason::NotFromPrimary {
                primary: ReplicaId(1),
            },
        );
        // Replica 0 signs one for view 0, its own view, which needs none.
        f.refused(0, c.new_view(0, 0, vec![], vec![]), wrong_view(0, 0));
    }
}

mod liveness {
    use super::*;

    /// Backup 3 times out in view 0. With q VIEW-CHANGEs for view 1 (its own, 0's, 2's) it starts the NEW-VIEW
    /// timer; the primary of view 1 stays silent and the timer expires: it moves to view 2, where the NEW-VIEW timer
    /// runs twice as long. The NEW-VIEW of view 2 comes; the request timer keeps the doubled timeout until a batch
    /// executes, then goes back to the configured one.
    #[test]
    fn the_new_view_timer_starts_at_q_and_its_expiry_moves_to_the_next_view_with_twice_the_timeout()
    {
        let c = Cluster::four();
        let timeout = c.params().view_change_timeout;
        let mut backup = c.node(3);
        let r = c.request(1, 1, "a");
        backup.step(Input::Request(r.clone()));
        let own1 = c.empty_view_change(3, 1);
        assert_eq!(
            backup.step(Input::TimerFired(Timer::ViewChange)),
            vec![to_all(ReplicaMsg::ViewChange(own1))]
        );
        assert_eq!(
            deliver(
                &c,
                &mut backup,
                0,
                ReplicaMsg::ViewChange(c.empty_view_change(0, 1))
            ),
            vec![]
        );
        assert_eq!(
            deliver(
                &c,
                &mut backup,
                2,
                ReplicaMsg::ViewChange(c.empty_view_change(2, 1))
            ),
            vec![c.new_view_timer()]
        );
        // More VIEW-CHANGEs do not restart it.
        assert_eq!(
            deliver(
                &c,
                &mut backup,
                1,
                ReplicaMsg::ViewChange(c.empty_view_change(1, 1))
            ),
            vec![]
        );

        let own2 = c.empty_view_change(3, 2);
        assert_eq!(
            backup.step(Input::TimerFired(Timer::ViewChange)),
            vec![to_all(ReplicaMsg::ViewChange(own2.clone()))]
        );
        assert_eq!(view_of(&backup), (View(2), true));
        let vc0 = c.empty_view_change(0, 2);
        let vc2 = c.empty_view_change(2, 2);
        assert_eq!(
            deliver(&c, &mut backup, 0, ReplicaMsg::ViewChange(vc0.clone())),
            vec![]
        );
        // Replica 2, the primary of view 2, is one of the q: it will send the NEW-VIEW; the others wait for it.
        assert_eq!(
            deliver(&c, &mut backup, 2, ReplicaMsg::ViewChange(vc2.clone())),
            vec![c.view_timer_after(timeout * 2)]
        );

        let nv = c.new_view(2, 2, vec![vc2, vc0, own2], vec![]);
        assert_eq!(
            deliver(&c, &mut backup, 2, nv),
            vec![
                c.cancel_view_timer(),
                Out::EnteredView(View(2)),
                // The request it held goes to the new primary and is watched again, by the request timer
                // (the doubling applies to the wait for a NEW-VIEW).
                to_replica(2, ReplicaMsg::Request(r.signed().clone())),
                c.view_timer(),
            ]
        );

        let d = digest_of(one(&r));
        assert_eq!(
            deliver(&c, &mut backup, 2, c.pre_prepare(2, 2, 1, one(&r))),
            vec![to_all(c.prepare(3, 2, 1, d))]
        );
        deliver(&c, &mut backup, 0, c.prepare(0, 2, 1, d));
        deliver(&c, &mut backup, 0, c.commit(0, 2, 1, d));
        assert_eq!(
            deliver(&c, &mut backup, 2, c.commit(2, 2, 1, d)),
            vec![
                reply(2, 1, 1, 3, "1:a"),
                committed(&c, 2, 1, one(&r), &["1:a"], &[0, 2, 3]),
                c.cancel_view_timer(),
            ]
        );
        // A request of the new view goes to its primary, 2, once the relay timer (still running since the
        // first request) fires without a PRE-PREPARE for it.
        let next = c.request(2, 1, "b");
        assert_eq!(
            backup.step(Input::Request(next.clone())),
            vec![c.view_timer()]
        );
        assert_eq!(
            backup.step(Input::TimerFired(Timer::Relay)),
            vec![to_replica(2, ReplicaMsg::Request(next.signed().clone()))]
        );
    }

    /// Each NEW-VIEW that does not come doubles the timeout again. n = 7 (q = 5), so that backup 6 is the primary
    /// of none of views 1 to 4; in each, the VIEW-CHANGEs of four others (never that view's primary, which stays
    /// silent) complete the quorum.
    #[test]
    fn the_timeout_doubles_with_every_new_view_that_does_not_come() {
        let c = Cluster::seven();
        let timeout = c.params().view_change_timeout;
        let mut backup = c.node(6);
        backup.step(Input::Request(c.request(1, 1, "a")));
        backup.step(Input::TimerFired(Timer::ViewChange));
        for (view, factor) in [(1, 1), (2, 2), (3, 4), (4, 8)] {
            let others = (0..6).filter(|r| *r != c.primary_of(view)).take(4);
            let mut outs = Vec::new();
            for r in others {
                let vc = ReplicaMsg::ViewChange(c.empty_view_change(r, view));
                outs.extend(deliver(&c, &mut backup, r, vc));
            }
            assert_eq!(
                outs,
                vec![c.view_timer_after(timeout * factor)],
                "view {view}"
            );
            assert_eq!(
                backup.step(Input::TimerFired(Timer::ViewChange)),
                vec![to_all(ReplicaMsg::ViewChange(
                    c.empty_view_change(6, view + 1)
                ))]
            );
        }
        assert_eq!(view_of(&backup), (View(5), true));
    }

    /// f + 1 valid VIEW-CHANGEs for views above its own make a replica join the smallest of those views, even
    /// with no timer expired; f of them do not.
    #[test]
    fn f_plus_one_view_changes_for_higher_views_make_a_replica_join_the_smallest() {
        let c = Cluster::four();
        let mut node = c.node(3);
        assert_eq!(
            deliver(
                &c,
                &mut node,
                0,
                ReplicaMsg::ViewChange(c.empty_view_change(0, 3))
            ),
            vec![]
        );
        assert_eq!(view_of(&node), (View(0), false));
        assert_eq!(
            deliver(
                &c,
                &mut node,
                1,
                ReplicaMsg::ViewChange(c.empty_view_change(1, 2))
            ),
            vec![
                to_all(ReplicaMsg::ViewChange(c.empty_view_change(3, 2))),
                c.status_timer()
            ]
        );
        assert_eq!(view_of(&node), (View(2), true));
        // Its own and 1's: two of the q = 3 for view 2. Replica 2's completes them; 2 is view 2's primary.
        assert_eq!(
            deliver(
                &c,
                &mut node,
                2,
                ReplicaMsg::ViewChange(c.empty_view_change(2, 2))
            ),
            vec![c.new_view_timer()]
        );
        assert_eq!(view_of(&node), (View(2), true));
    }

    /// n = 7, f = 2: two replicas asking for later views are not enough, the third is.
    #[test]
    fn with_n_7_it_takes_three() {
        let c = Cluster::seven();
        let mut node = c.node(6);
        for (from, view) in [(0, 4), (1, 3)] {
            assert_eq!(
                deliver(
                    &c,
                    &mut node,
                    from,
                    ReplicaMsg::ViewChange(c.empty_view_change(from, view))
                ),
                vec![]
            );
        }
        assert_eq!(view_of(&node), (View(0), false));
        assert_eq!(
            deliver(
                &c,
                &mut node,
                2,
                ReplicaMsg::ViewChange(c.empty_view_change(2, 5))
            ),
            vec![
                to_all(ReplicaMsg::ViewChange(c.empty_view_change(6, 3))),
                c.status_timer()
            ]
        );
        assert_eq!(view_of(&node), (View(3), true));
    }

    /// A replica waiting for a NEW-VIEW makes sure peers behind it or waiting with it have its VIEW-CHANGE.
    #[test]
    fn a_changing_replica_resends_its_view_change_to_peers_that_are_behind_or_waiting_too() {
        let c = Cluster::four();
        let mut node = c.node(3);
        node.step(Input::Request(c.request(1, 1, "a")));
        node.step(Input::TimerFired(Timer::ViewChange));
        let own = ReplicaMsg::ViewChange(c.empty_view_change(3, 1));
        assert_eq!(
            deliver(&c, &mut node, 2, c.status(2, 0, 0, 0)),
            vec![to_replica(2, own.clone())]
        );
        // Once per status interval at most.
        assert_eq!(deliver(&c, &mut node, 2, c.status(2, 0, 0, 0)), vec![]);
        node.step(Input::TimerFired(Timer::Status));
        assert_eq!(
            deliver(&c, &mut node, 2, c.status_changing(2, 1, 0, 0, true)),
            vec![to_replica(2, own)]
        );
        // A peer already further: this replica says where it is.
        assert_eq!(
            deliver(&c, &mut node, 2, c.status_changing(2, 2, 0, 0, true)),
            vec![to_replica(2, c.status_changing(3, 1, 0, 0, true))]
        );
    }
}

mod checkpoint_in_new_view {
    use super::*;

    /// NEW-VIEW's min-s is checkpoint 2, certified by 0, 1 and 2; backup 3 executed nothing. It adopts checkpoint 2
    /// as stable (moving its watermarks), prepares O above it, and fetches the state of checkpoint 2 from a
    /// replica that certified it, which then installs.
    #[test]
    fn a_new_view_above_the_replicas_state_makes_it_adopt_the_checkpoint_and_fetch_the_state() {
        let c = Cluster::four();
        // Replica 0 executes slots 1 and 2 and takes checkpoint 2: the state backup 3 will fetch.
        let mut source = c.restorable_node(0);
        let (a, b) = ([c.request(1, 1, "a")], [c.request(2, 1, "b")]);
        source.step(Input::Request(a[0].clone()));
        c.run_slot(&mut source, 1, &a);
        source.step(Input::Request(b[0].clone()));
        let outs = c.run_slot(&mut source, 2, &b);
        let cp = sent_checkpoints(&outs)[0].1;

        let dc = digest_of(&[c.request(3, 1, "c")]);
        let proof = c.checkpoint_proof(2, cp, &[0, 1, 2]);
        let vc0 = c.signed_view_change(
            0,
            1,
            2,
            proof.clone(),
            vec![c.prepared_proof(0, 3, dc, &[1, 2])],
        );
        let vc2 = c.signed_view_change(2, 1, 2, proof.clone(), vec![]);
        // Replica 1 is behind checkpoint 2 and still holds a certificate for slot 1, below min-s: O leaves it out.
        let da = digest_of(&a);
        let vc1 = c.signed_view_change(1, 1, 0, vec![], vec![c.prepared_proof(0, 1, da, &[1, 2])]);
        let nv = c.new_view(1, 1, vec![vc1, vc0, vc2], c.o(1, &[(3, dc)]));

        let mut node = c.restorable_node(3);
        assert_eq!(
            deliver(&c, &mut node, 1, nv),
            vec![
                Out::EnteredView(View(1)),
                to_all(c.prepare(3, 1, 3, dc)),
                to_all(c.fetch_batch(3, 3, dc)),
                Out::SetTimer(Timer::StateTransfer, c.params().status_interval),
                c.status_timer(),
            ]
        );
        let status = node.replica.status();
        assert_eq!(
            (
                status.low_watermark,
                status.high_watermark,
                status.last_executed,
                status.log_range
            ),
            (SeqNo(2), SeqNo(6), SeqNo(0), Some((SeqNo(3), SeqNo(3))))
        );
        let stable = node.replica.stable_checkpoint();
        let adopted: Vec<_> = stable.proof.iter().map(|p| p.signed().clone()).collect();
        assert_eq!((stable.seq, stable.digest, adopted), (SeqNo(2), cp, proof));

        // A crash before the state came: the journal holds no stable checkpoint at 2 (only one with its state is
        // kept), but the NEW-VIEW it keeps carries it, and the recovered replica adopts it again and fetches it.
        let (recovered, outs) = c
            .recovered_node(3, &node.persisted)
            .expect("the journal recovers");
        let stable = recovered.replica.stable_checkpoint();
        assert_eq!((stable.seq, stable.digest), (SeqNo(2), cp));
        assert_eq!(recovered.replica.status().low_watermark, SeqNo(2));
        assert!(
            outs.contains(&Out::SetTimer(
                Timer::StateTransfer,
                c.params().status_interval
            )),
            "{outs:?}"
        );

        assert_eq!(
            node.step(Input::TimerFired(Timer::StateTransfer)),
            vec![
                to_replica(0, c.fetch_state(3, 2, cp, 0)),
                Out::SetTimer(Timer::StateTransfer, c.params().request_timeout)
            ]
        );
        let served = deliver(&c, &mut source, 3, c.fetch_state(3, 2, cp, 0));
        let [Out::Send(_, chunk)] = &served[..] else {
            panic!("one STATE-CHUNK: {served:?}")
        };
        assert_eq!(
            deliver(&c, &mut node, 0, chunk.clone()),
            vec![
                Out::CancelTimer(Timer::StateTransfer),
                Out::StateInstalled(SeqNo(2), cp),
                to_all(c.checkpoint(3, 2, cp)),
            ]
        );
        assert_eq!(node.replica.status().last_executed, SeqNo(2));
        assert_eq!(
            node.executed_ops(),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
    }
}
