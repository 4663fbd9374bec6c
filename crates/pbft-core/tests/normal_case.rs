//! The normal case, message by message: for each input in each relevant state, the exact outputs the core emits.
//!
//! Every test drives one replica by hand with messages signed by the other replicas' keys and authenticated by the
//! keyring, and compares the whole `Vec<Output>` of a step with what PROTOCOL.md says it must be. Thresholds are
//! walked vote by vote: the step before a quorum must produce nothing, the step that completes it exactly one
//! COMMIT (or one execution), and later votes nothing more.

mod support;

use std::slice::from_ref as one;

use bytes::Bytes;
use pbft_core::{Input, RejectReason, Timer};
use pbft_crypto::{AuthError, Verified};
use pbft_types::{
    Digest, Params, PrePrepare, Prepare, Principal, ReplicaId, ReplicaMsg, Request, SeqNo, View,
};

use support::{
    Cluster, Node, Out, digest_of, executed, rejected_from_replica, rejected_request,
    sent_checkpoints, small_params, to_all, to_replica,
};

/// REPLY(v = 0, t, c, i, r).
fn reply(client: u64, timestamp: u64, replica: u64, result: &str) -> Out {
    support::reply_in(0, client, timestamp, replica, result)
}

/// The execution of batch `seq` of view 0 with the given results, certified by the COMMITs of `certifiers`.
fn committed(
    c: &Cluster,
    seq: u64,
    batch: &[Verified<Request>],
    results: &[&str],
    certifiers: &[u64],
) -> Out {
    support::committed_in(c, 0, seq, batch, results, certifiers)
}

/// Parameters with one request per batch, so that every request gets its own sequence number.
fn one_per_batch() -> Params {
    Params {
        max_batch_size: 1,
        ..small_params()
    }
}

/// Backup 1 having executed seq 1 (client 1's "a") and seq 2 (client 2's "b"), so it has taken checkpoint 2 but
/// nobody else confirmed it yet. Returns the checkpoint's digest.
fn backup_at_checkpoint_2(c: &Cluster) -> (Node, Digest) {
    let mut node = c.node(1);
    c.run_slot(&mut node, 1, &[c.request(1, 1, "a")]);
    let outs = c.run_slot(&mut node, 2, &[c.request(2, 1, "b")]);
    let checkpoints = sent_checkpoints(&outs);
    assert_eq!(checkpoints.len(), 1, "one CHECKPOINT after seq 2: {outs:?}");
    assert_eq!(checkpoints[0].0, SeqNo(2));
    (node, checkpoints[0].1)
}

mod request {
    use super::*;

    #[test]
    fn an_idle_primary_proposes_a_request_at_once() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let r = c.request(1, 1, "a");

        let outs = primary.step(Input::Request(r.clone()));

        let header = c.keys[0].sign(PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: pbft_crypto::batch_digest([r.signed()]),
            replica: ReplicaId(0),
        });
        let pre_prepare = ReplicaMsg::PrePrepare {
            header,
            batch: vec![r.signed().clone()],
        };
        // The primary holds the request it proposed until it executes, watched by the view-change timer.
        assert_eq!(
            outs,
            vec![to_all(pre_prepare), c.view_timer(), c.status_timer()]
        );
        assert_eq!(primary.replica.status().pending_requests, 0);
    }

    #[test]
    fn with_a_batch_in_flight_requests_wait_for_a_full_batch() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let (r1, r2, r3) = (
            c.request(1, 1, "a"),
            c.request(2, 1, "b"),
            c.request(3, 1, "c"),
        );
        let outs = primary.step(Input::Request(r1.clone()));
        assert_eq!(outs[0], to_all(c.pre_prepare(0, 0, 1, &[r1])));

        let outs = primary.step(Input::Request(r2.clone()));
        assert_eq!(
            outs,
            vec![Out::SetTimer(Timer::Batch, c.params().batch_delay)]
        );
        assert_eq!(primary.replica.status().pending_requests, 1);

        // The second request fills a batch (max_batch_size = 2): proposed at once, the timer is no longer needed.
        let outs = primary.step(Input::Request(r3.clone()));
        assert_eq!(
            outs,
            vec![
                to_all(c.pre_prepare(0, 0, 2, &[r2, r3])),
                Out::CancelTimer(Timer::Batch)
            ]
        );
        assert_eq!(primary.replica.status().pending_requests, 0);
    }

    #[test]
    fn the_batch_timer_proposes_a_partial_batch() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let (r1, r2) = (c.request(1, 1, "a"), c.request(2, 1, "b"));
        primary.step(Input::Request(r1));
        assert_eq!(
            primary.step(Input::Request(r2.clone())),
            vec![Out::SetTimer(Timer::Batch, c.params().batch_delay)]
        );

        let outs = primary.step(Input::TimerFired(Timer::Batch));
        assert_eq!(outs, vec![to_all(c.pre_prepare(0, 0, 2, &[r2]))]);
        // Nothing is left to propose.
        assert_eq!(primary.step(Input::TimerFired(Timer::Batch)), vec![]);
    }

    #[test]
    fn a_request_too_large_is_rejected_and_one_at_the_limit_is_not() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let too_large = c.request(1, 1, &"x".repeat(65));
        assert_eq!(
            primary.step(Input::Request(too_large)),
            vec![rejected_request(
                1,
                RejectReason::RequestTooLarge {
                    size: 65,
                    limit: 64
                }
            )]
        );
        assert_eq!(primary.replica.status().pending_requests, 0);

        let at_limit = c.request(1, 1, &"x".repeat(64));
        assert_eq!(
            primary.step(Input::Request(at_limit.clone())),
            vec![
                to_all(c.pre_prepare(0, 0, 1, &[at_limit])),
                c.view_timer(),
                c.status_timer()
            ]
        );
    }

    #[test]
    fn a_request_already_proposed_is_a_duplicate() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let r = c.request(1, 1, "a");
        primary.step(Input::Request(r.clone()));

        assert_eq!(
            primary.step(Input::Request(r.clone())),
            vec![rejected_request(1, RejectReason::Duplicate)]
        );
        // The same request forwarded by a backup is refused too, and counted against the backup.
        let forwarded = c.deliver(2, ReplicaMsg::Request(r.signed().clone()));
        assert_eq!(
            primary.step(forwarded),
            vec![rejected_from_replica(2, "REQUEST", RejectReason::Duplicate)]
        );
        assert_eq!(primary.replica.status().pending_requests, 0);
    }

    #[test]
    fn a_queued_request_is_a_duplicate_and_proposed_once() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let (r1, r2) = (c.request(1, 1, "a"), c.request(2, 1, "b"));
        primary.step(Input::Request(r1));
        primary.step(Input::Request(r2.clone()));

        assert_eq!(
            primary.step(Input::Request(r2.clone())),
            vec![rejected_request(2, RejectReason::Duplicate)]
        );
        assert_eq!(primary.replica.status().pending_requests, 1);
        assert_eq!(
            primary.step(Input::TimerFired(Timer::Batch)),
            vec![to_all(c.pre_prepare(0, 0, 2, &[r2]))]
        );
    }

    fn relay_timer(c: &Cluster) -> Out {
        Out::SetTimer(Timer::Relay, c.params().request_timeout / 4)
    }

    #[test]
    fn a_backup_forwards_a_client_request_the_primary_did_not_propose_in_time() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        // Until the request executes, the backup watches it with the view-change timer and keeps asking its peers
        // for what it may have missed. The primary most likely got the request from the client too: the backup
        // waits a while before it forwards it.
        assert_eq!(
            backup.step(Input::Request(r.clone())),
            vec![relay_timer(&c), c.view_timer(), c.status_timer()]
        );
        assert_eq!(backup.replica.status().pending_requests, 0);
        // A second request while the relay timer runs does not set it again.
        let r2 = c.request(2, 1, "b");
        assert_eq!(backup.step(Input::Request(r2.clone())), vec![]);
        // The primary proposed neither: both go to it.
        let outs = backup.step(Input::TimerFired(Timer::Relay));
        assert_eq!(outs.len(), 2, "{outs:?}");
        assert!(outs.contains(&to_replica(0, ReplicaMsg::Request(r.signed().clone()))));
        assert!(outs.contains(&to_replica(0, ReplicaMsg::Request(r2.signed().clone()))));
        // Forwarded once only.
        assert_eq!(backup.step(Input::TimerFired(Timer::Relay)), vec![]);
    }

    #[test]
    fn a_backup_does_not_forward_a_request_the_primary_proposed() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let r2 = c.request(2, 1, "b");
        backup.step(Input::Request(r.clone()));
        backup.step(Input::Request(r2.clone()));
        // The primary's PRE-PREPARE carries the first: only the second is forwarded.
        let outs = backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&r))));
        assert!(!outs.is_empty());
        assert_eq!(
            backup.step(Input::TimerFired(Timer::Relay)),
            vec![to_replica(0, ReplicaMsg::Request(r2.signed().clone()))]
        );
    }

    #[test]
    fn a_forwarded_request_is_refused_by_a_backup_and_proposed_by_the_primary() {
        let c = Cluster::four();
        let r = c.request(1, 1, "a");
        let forwarded = || c.deliver(2, ReplicaMsg::Request(r.signed().clone()));

        let mut backup = c.node(1);
        assert_eq!(
            backup.step(forwarded()),
            vec![rejected_from_replica(
                2,
                "REQUEST",
                RejectReason::NotPrimary
            )]
        );

        let mut primary = c.node(0);
        assert_eq!(
            primary.step(forwarded()),
            vec![
                to_all(c.pre_prepare(0, 0, 1, one(&r))),
                c.view_timer(),
                c.status_timer()
            ]
        );
    }

    #[test]
    fn an_executed_request_is_answered_from_the_client_table() {
        let c = Cluster::four();
        let r = c.request(1, 5, "a");

        let mut primary = c.node(0);
        primary.step(Input::Request(r.clone()));
        let outs = c.run_slot(&mut primary, 1, one(&r));
        assert_eq!(executed(&outs).len(), 1);

        // No new PRE-PREPARE, no execution: the cached reply only.
        assert_eq!(
            primary.step(Input::Request(r.clone())),
            vec![reply(1, 5, 0, "1:a")]
        );
        assert_eq!(primary.executed_ops(), vec![Bytes::from("a")]);
        assert_eq!(primary.replica.status().last_executed, SeqNo(1));
        assert_eq!(primary.replica.status().pending_requests, 0);

        // A backup that executed it answers too, instead of forwarding it.
        let mut backup = c.node(1);
        c.run_slot(&mut backup, 1, one(&r));
        assert_eq!(
            backup.step(Input::Request(r.clone())),
            vec![reply(1, 5, 1, "1:a")]
        );
        assert_eq!(backup.executed_ops(), vec![Bytes::from("a")]);
    }

    #[test]
    fn a_request_older_than_the_last_executed_is_stale() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let r = c.request(1, 5, "a");
        primary.step(Input::Request(r.clone()));
        c.run_slot(&mut primary, 1, &[r]);

        assert_eq!(
            primary.step(Input::Request(c.request(1, 4, "old"))),
            vec![rejected_request(
                1,
                RejectReason::StaleRequest {
                    timestamp: pbft_types::Timestamp(4)
                }
            )]
        );
        assert_eq!(primary.executed_ops(), vec![Bytes::from("a")]);
    }
}

mod pre_prepare {
    use super::*;

    const KIND: &str = "PRE-PREPARE";

    #[test]
    fn a_backup_accepts_it_and_sends_its_prepare() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let outs = backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&r))));
        assert_eq!(
            outs,
            vec![
                to_all(c.prepare(1, 0, 1, digest_of(&[r]))),
                c.view_timer(),
                c.status_timer()
            ]
        );
        assert_eq!(
            backup.replica.status().log_range,
            Some((SeqNo(1), SeqNo(1)))
        );
    }

    #[test]
    fn one_for_another_view_is_refused() {
        let c = Cluster::four();
        let r = c.request(1, 1, "a");
        // From the primary of view 1, which is not this replica's view.
        let mut backup = c.node(2);
        assert_eq!(
            backup.step(c.deliver(1, c.pre_prepare(1, 1, 1, one(&r)))),
            vec![rejected_from_replica(
                1,
                KIND,
                RejectReason::WrongView {
                    got: View(1),
                    current: View(0)
                }
            )]
        );
        // From this view's primary, for view 1.
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 1, 1, &[r]))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::WrongView {
                    got: View(1),
                    current: View(0)
                }
            )]
        );
        assert_eq!(backup.replica.status().log_slots, 0);
    }

    #[test]
    fn one_from_a_backup_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        assert_eq!(
            backup.step(c.deliver(2, c.pre_prepare(2, 0, 1, one(&r)))),
            vec![rejected_from_replica(
                2,
                KIND,
                RejectReason::NotFromPrimary {
                    primary: ReplicaId(0)
                }
            )]
        );
        // Nothing was kept: the genuine one is accepted as if it came first.
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&r)))),
            vec![
                to_all(c.prepare(1, 0, 1, digest_of(&[r]))),
                c.view_timer(),
                c.status_timer()
            ]
        );
    }

    #[test]
    fn the_watermarks_bound_its_sequence_number() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 0, one(&r)))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::Obsolete {
                    seq: SeqNo(0),
                    low: SeqNo(0)
                }
            )]
        );
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 5, one(&r)))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::OutsideWatermarks {
                    seq: SeqNo(5),
                    low: SeqNo(0),
                    high: SeqNo(4)
                }
            )]
        );
        assert_eq!(backup.replica.status().log_slots, 0);
        // H itself is inside.
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 4, one(&r)))),
            vec![
                to_all(c.prepare(1, 0, 4, digest_of(&[r]))),
                c.view_timer(),
                c.status_timer()
            ]
        );
    }

    /// Two PRE-PREPAREs signed by the primary for one (v, n) with different digests prove it faulty: the backup
    /// records the pair and leaves the view at once (PROTOCOL.md, view change, "Evidence").
    #[test]
    fn a_second_one_with_another_digest_is_evidence_and_starts_a_view_change() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let (a, b) = (c.request(1, 1, "a"), c.request(1, 1, "b"));
        let (da, db) = (digest_of(one(&a)), digest_of(one(&b)));
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[a]))),
            vec![
                to_all(c.prepare(1, 0, 1, da)),
                c.view_timer(),
                c.status_timer()
            ]
        );

        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[b]))),
            vec![
                Out::Evidence(
                    c.signed_pre_prepare(0, 0, 1, da),
                    c.signed_pre_prepare(0, 0, 1, db)
                ),
                c.cancel_view_timer(),
                // Nothing prepared, nothing stable beyond the initial state: an empty VIEW-CHANGE for view 1.
                to_all(c.view_change(1, 1, 0, vec![], vec![])),
            ]
        );
        let status = backup.replica.status();
        assert_eq!(
            (status.view, status.changing_view, status.log_slots),
            (View(1), true, 0)
        );
        // Neither assignment prepares: view 0's PREPAREs are refused while the backup waits for NEW-VIEW.
        for (from, d) in [(2, da), (3, da), (2, db)] {
            assert_eq!(
                backup.step(c.deliver(from, c.prepare(from, 0, 1, d))),
                vec![rejected_from_replica(
                    from,
                    "PREPARE",
                    RejectReason::ChangingView
                )]
            );
        }
        assert_eq!(backup.replica.status().log_slots, 0);
        assert_eq!(backup.replica.status().last_executed, SeqNo(0));
    }

    /// The batch's digest is checked before the slot is looked at: a second PRE-PREPARE whose header names another
    /// digest than its batch's is no evidence (the primary's signature covers the header only), merely refused.
    #[test]
    fn a_second_one_whose_digest_is_not_its_batchs_is_refused_not_evidence() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let (a, b) = (c.request(1, 1, "a"), c.request(1, 1, "b"));
        let da = digest_of(one(&a));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&a))));
        let lying = c.pre_prepare_with_digest(0, 0, 1, Digest([9; 32]), &[b]);
        assert_eq!(
            backup.step(c.deliver(0, lying)),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::BatchDigestMismatch
            )]
        );
        let status = backup.replica.status();
        assert_eq!((status.view, status.changing_view), (View(0), false));
        // The first assignment stands and prepares.
        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 1, da))),
            vec![to_all(c.commit(1, 0, 1, da))]
        );
    }

    #[test]
    fn the_same_one_again_is_a_duplicate() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&r))));
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[r]))),
            vec![rejected_from_replica(0, KIND, RejectReason::Duplicate)]
        );
    }

    #[test]
    fn a_digest_that_is_not_the_batchs_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let (a, b) = (c.request(1, 1, "a"), c.request(1, 1, "b"));
        let lying = c.pre_prepare_with_digest(0, 0, 1, digest_of(one(&a)), &[b]);
        assert_eq!(
            backup.step(c.deliver(0, lying)),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::BatchDigestMismatch
            )]
        );
        // The slot was not claimed by the refused message.
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&a)))),
            vec![
                to_all(c.prepare(1, 0, 1, digest_of(&[a]))),
                c.view_timer(),
                c.status_timer()
            ]
        );
    }

    #[test]
    fn a_batch_above_the_limit_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let batch: Vec<_> = (1..=3).map(|i| c.request(i, 1, "op")).collect();
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::BatchTooLarge { size: 3, limit: 2 }
            )]
        );
        // A batch at the limit is fine.
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch[..2]))),
            vec![
                to_all(c.prepare(1, 0, 1, digest_of(&batch[..2]))),
                c.view_timer(),
                c.status_timer()
            ]
        );
    }

    #[test]
    fn a_batch_holding_a_request_above_the_limit_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let batch = [c.request(1, 1, "a"), c.request(2, 1, &"x".repeat(65))];
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::RequestTooLarge {
                    size: 65,
                    limit: 64
                }
            )]
        );
        assert_eq!(backup.replica.status().log_slots, 0);
    }
}

mod prepare {
    use super::*;

    const KIND: &str = "PREPARE";

    /// n = 4, q = 3: prepared needs the PRE-PREPARE and q - 1 = 2 PREPAREs from distinct backups. A backup's own
    /// PREPARE is one of them, so one other backup's completes the certificate.
    #[test]
    fn at_a_backup_its_own_prepare_and_one_other_make_it_prepared() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[r])));

        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 1, d))),
            vec![to_all(c.commit(1, 0, 1, d))]
        );
        // Prepared once: a later PREPARE sends no second COMMIT.
        assert_eq!(backup.step(c.deliver(3, c.prepare(3, 0, 1, d))), vec![]);
    }

    /// A duplicate must not count even when something else makes the replica look at the slot again: here a
    /// COMMIT arrives after backup 1's PREPARE came twice, and the slot is still one PREPARE short.
    #[test]
    fn a_duplicate_prepare_does_not_count_when_the_slot_is_looked_at_again() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        primary.step(Input::Request(r));
        primary.step(c.deliver(1, c.prepare(1, 0, 1, d)));
        primary.step(c.deliver(1, c.prepare(1, 0, 1, d)));
        assert_eq!(primary.step(c.deliver(2, c.commit(2, 0, 1, d))), vec![]);
        assert_eq!(primary.step(c.deliver(3, c.commit(3, 0, 1, d))), vec![]);
        // The second distinct PREPARE completes it: COMMIT goes out and, with the COMMITs already held, it executes.
        let outs = primary.step(c.deliver(2, c.prepare(2, 0, 1, d)));
        assert_eq!(outs.first(), Some(&to_all(c.commit(0, 0, 1, d))));
        assert_eq!(primary.replica.status().last_executed, SeqNo(1));
    }

    /// The primary sends no PREPARE, so it needs two distinct backups' PREPAREs; the same backup's twice is one.
    #[test]
    fn a_duplicate_prepare_does_not_count_twice() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        primary.step(Input::Request(r));

        assert_eq!(primary.step(c.deliver(1, c.prepare(1, 0, 1, d))), vec![]);
        assert_eq!(
            primary.step(c.deliver(1, c.prepare(1, 0, 1, d))),
            vec![rejected_from_replica(1, KIND, RejectReason::Duplicate)]
        );
        assert_eq!(
            primary.step(c.deliver(2, c.prepare(2, 0, 1, d))),
            vec![to_all(c.commit(0, 0, 1, d))]
        );
        assert_eq!(primary.step(c.deliver(3, c.prepare(3, 0, 1, d))), vec![]);
    }

    #[test]
    fn a_prepare_from_the_primary_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[r])));
        // Counted, it would complete the certificate (own + primary's) and a COMMIT would follow.
        assert_eq!(
            backup.step(c.deliver(0, c.prepare(0, 0, 1, d))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::PrepareFromPrimary
            )]
        );
    }

    #[test]
    fn a_prepare_for_another_view_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[r])));
        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 1, 1, d))),
            vec![rejected_from_replica(
                2,
                KIND,
                RejectReason::WrongView {
                    got: View(1),
                    current: View(0)
                }
            )]
        );
    }

    #[test]
    fn a_prepare_outside_the_watermarks_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let d = Digest([7; 32]);
        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 0, d))),
            vec![rejected_from_replica(
                2,
                KIND,
                RejectReason::Obsolete {
                    seq: SeqNo(0),
                    low: SeqNo(0)
                }
            )]
        );
        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 5, d))),
            vec![rejected_from_replica(
                2,
                KIND,
                RejectReason::OutsideWatermarks {
                    seq: SeqNo(5),
                    low: SeqNo(0),
                    high: SeqNo(4)
                }
            )]
        );
        assert_eq!(backup.replica.status().log_slots, 0);
    }

    #[test]
    fn a_conflicting_vote_is_refused_and_the_first_vote_stands() {
        let c = Cluster::four();
        let mut primary = c.node(0);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        primary.step(Input::Request(r));

        assert_eq!(
            primary.step(c.deliver(1, c.prepare(1, 0, 1, Digest([9; 32])))),
            vec![]
        );
        assert_eq!(
            primary.step(c.deliver(1, c.prepare(1, 0, 1, d))),
            vec![rejected_from_replica(
                1,
                KIND,
                RejectReason::ConflictingVote
            )]
        );
        // Replica 1's vote is for another digest: replica 2 alone is not enough, replica 3 completes it.
        assert_eq!(primary.step(c.deliver(2, c.prepare(2, 0, 1, d))), vec![]);
        assert_eq!(
            primary.step(c.deliver(3, c.prepare(3, 0, 1, d))),
            vec![to_all(c.commit(0, 0, 1, d))]
        );
    }

    #[test]
    fn prepares_before_the_pre_prepare_are_kept_and_counted() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));

        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 1, d))),
            vec![c.status_timer()]
        );
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[r]))),
            vec![
                to_all(c.prepare(1, 0, 1, d)),
                to_all(c.commit(1, 0, 1, d)),
                c.view_timer()
            ]
        );
    }
}

mod commit {
    use super::*;

    const KIND: &str = "COMMIT";

    /// Backup 1 with the PRE-PREPARE for `batch` at seq 1 and prepared (its COMMIT sent).
    fn prepared_backup(c: &Cluster, batch: &[Verified<Request>]) -> Node {
        let mut backup = c.node(1);
        let d = digest_of(batch);
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, batch)));
        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 1, d))),
            vec![to_all(c.commit(1, 0, 1, d))]
        );
        backup
    }

    #[test]
    fn a_quorum_of_commits_executes_the_batch() {
        let c = Cluster::four();
        let batch = [c.request(1, 1, "a"), c.request(2, 1, "b")];
        let d = digest_of(&batch);
        let mut backup = prepared_backup(&c, &batch);

        assert_eq!(backup.step(c.deliver(0, c.commit(0, 0, 1, d))), vec![]);
        assert_eq!(
            backup.step(c.deliver(2, c.commit(2, 0, 1, d))),
            vec![
                reply(1, 1, 1, "1:a"),
                reply(2, 1, 1, "2:b"),
                committed(&c, 1, &batch, &["1:a", "2:b"], &[0, 1, 2]),
                // Nothing is left waiting: the view-change timer stops.
                c.cancel_view_timer(),
            ]
        );
        assert_eq!(
            backup.executed_ops(),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
        // Committed once: a later COMMIT executes nothing again.
        assert_eq!(backup.step(c.deliver(3, c.commit(3, 0, 1, d))), vec![]);
        assert_eq!(backup.executed_ops().len(), 2);
        assert_eq!(backup.replica.status().last_executed, SeqNo(1));
    }

    #[test]
    fn a_duplicate_commit_does_not_count_twice() {
        let c = Cluster::four();
        let batch = [c.request(1, 1, "a")];
        let d = digest_of(&batch);
        let mut backup = prepared_backup(&c, &batch);

        // Own COMMIT + replica 0's = 2 < q = 3, however often replica 0 repeats it.
        assert_eq!(backup.step(c.deliver(0, c.commit(0, 0, 1, d))), vec![]);
        assert_eq!(
            backup.step(c.deliver(0, c.commit(0, 0, 1, d))),
            vec![rejected_from_replica(0, KIND, RejectReason::Duplicate)]
        );
        assert_eq!(backup.replica.status().last_executed, SeqNo(0));
        assert_eq!(
            backup.step(c.deliver(3, c.commit(3, 0, 1, d))),
            vec![
                reply(1, 1, 1, "1:a"),
                committed(&c, 1, &batch, &["1:a"], &[0, 1, 3]),
                c.cancel_view_timer(),
            ]
        );
    }

    #[test]
    fn a_conflicting_commit_is_refused_and_not_counted() {
        let c = Cluster::four();
        let batch = [c.request(1, 1, "a")];
        let d = digest_of(&batch);
        let mut backup = prepared_backup(&c, &batch);

        assert_eq!(
            backup.step(c.deliver(0, c.commit(0, 0, 1, Digest([9; 32])))),
            vec![]
        );
        assert_eq!(
            backup.step(c.deliver(0, c.commit(0, 0, 1, d))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::ConflictingVote
            )]
        );
        assert_eq!(backup.step(c.deliver(2, c.commit(2, 0, 1, d))), vec![]);
        assert_eq!(
            backup.step(c.deliver(3, c.commit(3, 0, 1, d))),
            vec![
                reply(1, 1, 1, "1:a"),
                committed(&c, 1, &batch, &["1:a"], &[1, 2, 3]),
                c.cancel_view_timer(),
            ]
        );
    }

    #[test]
    fn commits_before_prepared_are_kept_and_execution_follows_prepared() {
        let c = Cluster::four();
        let batch = [c.request(1, 1, "a")];
        let d = digest_of(&batch);
        let mut backup = c.node(1);
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch)));

        assert_eq!(backup.step(c.deliver(0, c.commit(0, 0, 1, d))), vec![]);
        assert_eq!(backup.step(c.deliver(2, c.commit(2, 0, 1, d))), vec![]);
        assert_eq!(backup.replica.status().last_executed, SeqNo(0));
        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 1, d))),
            vec![
                to_all(c.commit(1, 0, 1, d)),
                reply(1, 1, 1, "1:a"),
                committed(&c, 1, &batch, &["1:a"], &[0, 1, 2]),
                c.cancel_view_timer(),
            ]
        );
    }

    #[test]
    fn votes_before_the_pre_prepare_are_kept_and_counted() {
        let c = Cluster::four();
        let batch = [c.request(1, 1, "a")];
        let d = digest_of(&batch);
        let mut backup = c.node(1);

        assert_eq!(
            backup.step(c.deliver(0, c.commit(0, 0, 1, d))),
            vec![c.status_timer()]
        );
        assert_eq!(backup.step(c.deliver(2, c.commit(2, 0, 1, d))), vec![]);
        assert_eq!(backup.step(c.deliver(2, c.prepare(2, 0, 1, d))), vec![]);
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch))),
            vec![
                to_all(c.prepare(1, 0, 1, d)),
                to_all(c.commit(1, 0, 1, d)),
                reply(1, 1, 1, "1:a"),
                committed(&c, 1, &batch, &["1:a"], &[0, 1, 2]),
            ]
        );
    }

    #[test]
    fn a_commit_for_another_view_or_outside_the_watermarks_is_refused() {
        let c = Cluster::four();
        let batch = [c.request(1, 1, "a")];
        let d = digest_of(&batch);
        let mut backup = prepared_backup(&c, &batch);
        assert_eq!(
            backup.step(c.deliver(0, c.commit(0, 1, 1, d))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::WrongView {
                    got: View(1),
                    current: View(0)
                }
            )]
        );
        assert_eq!(
            backup.step(c.deliver(0, c.commit(0, 0, 5, d))),
            vec![rejected_from_replica(
                0,
                KIND,
                RejectReason::OutsideWatermarks {
                    seq: SeqNo(5),
                    low: SeqNo(0),
                    high: SeqNo(4)
                }
            )]
        );
        // Neither counted: one more COMMIT is still needed.
        assert_eq!(backup.replica.status().last_executed, SeqNo(0));
    }
}

mod exactly_once {
    use super::*;

    /// A faulty primary may order a request twice; the client table makes the second a no-op (result `None`,
    /// no reply), within one batch and across batches.
    #[test]
    fn a_request_ordered_twice_executes_once() {
        let c = Cluster::four();
        let r = c.request(1, 1, "a");
        let twice = [r.clone(), r.clone()];
        let mut backup = c.node(1);

        let outs = c.run_slot(&mut backup, 1, &twice);
        let done = executed(&outs);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].results, vec![Some(Bytes::from("1:a")), None]);
        let replies: Vec<_> = outs.iter().filter(|o| matches!(o, Out::Reply(_))).collect();
        assert_eq!(replies, vec![&reply(1, 1, 1, "1:a")]);

        let outs = c.run_slot(&mut backup, 2, one(&r));
        assert!(!outs.iter().any(|o| matches!(o, Out::Reply(_))), "{outs:?}");
        assert_eq!(executed(&outs)[0].results, vec![None]);
        assert_eq!(backup.executed_ops(), vec![Bytes::from("a")]);
        assert_eq!(backup.replica.status().last_executed, SeqNo(2));
    }
}

mod execution_order {
    use super::*;

    #[test]
    fn a_batch_committed_early_waits_for_the_one_below() {
        // No checkpoint at 2, so that only executions appear.
        let c = Cluster::new(
            4,
            Params {
                checkpoint_interval: 4,
                window: 8,
                ..small_params()
            },
        );
        let mut backup = c.node(1);
        let (b1, b2) = ([c.request(1, 1, "a")], [c.request(2, 1, "b")]);
        let (d1, d2) = (digest_of(&b1), digest_of(&b2));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &b1)));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 2, &b2)));

        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 2, d2))),
            vec![to_all(c.commit(1, 0, 2, d2))]
        );
        assert_eq!(backup.step(c.deliver(0, c.commit(0, 0, 2, d2))), vec![]);
        // Seq 2 is committed here, but seq 1 is not: nothing executes.
        assert_eq!(backup.step(c.deliver(2, c.commit(2, 0, 2, d2))), vec![]);
        assert_eq!(backup.replica.status().last_executed, SeqNo(0));
        assert!(backup.executed_ops().is_empty());

        assert_eq!(
            backup.step(c.deliver(2, c.prepare(2, 0, 1, d1))),
            vec![to_all(c.commit(1, 0, 1, d1))]
        );
        assert_eq!(backup.step(c.deliver(0, c.commit(0, 0, 1, d1))), vec![]);
        assert_eq!(
            backup.step(c.deliver(2, c.commit(2, 0, 1, d1))),
            vec![
                reply(1, 1, 1, "1:a"),
                committed(&c, 1, &b1, &["1:a"], &[0, 1, 2]),
                reply(2, 1, 1, "2:b"),
                committed(&c, 2, &b2, &["2:b"], &[0, 1, 2]),
                c.cancel_view_timer(),
            ]
        );
        assert_eq!(backup.replica.status().last_executed, SeqNo(2));
    }
}

mod checkpoint {
    use super::*;

    const KIND: &str = "CHECKPOINT";

    #[test]
    fn executing_a_checkpoint_sequence_sends_a_checkpoint() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let (b1, b2) = ([c.request(1, 1, "a")], [c.request(2, 1, "b")]);
        let outs = c.run_slot(&mut backup, 1, &b1);
        assert_eq!(sent_checkpoints(&outs), vec![]);

        let d2 = digest_of(&b2);
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 2, &b2)));
        backup.step(c.deliver(2, c.prepare(2, 0, 2, d2)));
        backup.step(c.deliver(0, c.commit(0, 0, 2, d2)));
        let outs = backup.step(c.deliver(2, c.commit(2, 0, 2, d2)));
        let digest = sent_checkpoints(&outs)
            .first()
            .map(|(_, d)| *d)
            .expect("a CHECKPOINT");
        assert_eq!(
            outs,
            vec![
                reply(2, 1, 1, "2:b"),
                committed(&c, 2, &b2, &["2:b"], &[0, 1, 2]),
                to_all(c.checkpoint(1, 2, digest)),
                c.cancel_view_timer(),
            ]
        );

        // Every replica that executed the same batches certifies the same state.
        let mut other = c.node(3);
        c.run_slot(&mut other, 1, &b1);
        let outs = c.run_slot(&mut other, 2, &b2);
        assert_eq!(sent_checkpoints(&outs), vec![(SeqNo(2), digest)]);
        // Not stable yet: one vote of the three needed.
        assert_eq!(backup.replica.status().low_watermark, SeqNo(0));
    }

    #[test]
    fn a_quorum_of_matching_checkpoints_makes_it_stable() {
        let c = Cluster::four();
        let (mut backup, d) = backup_at_checkpoint_2(&c);
        assert_eq!(backup.replica.status().log_slots, 2);

        assert_eq!(backup.step(c.deliver(0, c.checkpoint(0, 2, d))), vec![]);
        let status = backup.replica.status();
        assert_eq!(
            (status.low_watermark, status.high_watermark),
            (SeqNo(0), SeqNo(4))
        );
        assert_eq!(status.log_slots, 2);

        assert_eq!(backup.step(c.deliver(2, c.checkpoint(2, 2, d))), vec![]);
        let status = backup.replica.status();
        assert_eq!(
            (status.low_watermark, status.high_watermark),
            (SeqNo(2), SeqNo(6))
        );
        assert_eq!(status.log_slots, 0);
        assert_eq!(status.log_range, None);
        let stable = backup.replica.stable_checkpoint();
        assert_eq!((stable.seq, stable.digest), (SeqNo(2), d));
        let proof: Vec<_> = stable.proof.iter().map(|v| v.signed().clone()).collect();
        assert_eq!(
            proof,
            vec![
                c.signed_checkpoint(0, 2, d),
                c.signed_checkpoint(1, 2, d),
                c.signed_checkpoint(2, 2, d)
            ]
        );
    }

    #[test]
    fn a_checkpoint_with_another_digest_does_not_help() {
        let c = Cluster::four();
        let (mut backup, d) = backup_at_checkpoint_2(&c);

        assert_eq!(
            backup.step(c.deliver(0, c.checkpoint(0, 2, Digest([9; 32])))),
            vec![]
        );
        assert_eq!(backup.step(c.deliver(2, c.checkpoint(2, 2, d))), vec![]);
        assert_eq!(backup.replica.status().low_watermark, SeqNo(0));
        assert_eq!(backup.step(c.deliver(3, c.checkpoint(3, 2, d))), vec![]);
        assert_eq!(backup.replica.status().low_watermark, SeqNo(2));
        let signers: Vec<_> = backup
            .replica
            .stable_checkpoint()
            .proof
            .iter()
            .map(|v| v.replica)
            .collect();
        assert_eq!(signers, vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
    }

    #[test]
    fn votes_that_arrive_before_the_replicas_own_checkpoint_count_when_it_is_taken() {
        let c = Cluster::four();
        let (_, d) = backup_at_checkpoint_2(&c);
        let mut backup = c.node(2);
        c.run_slot(&mut backup, 1, &[c.request(1, 1, "a")]);
        assert_eq!(backup.step(c.deliver(0, c.checkpoint(0, 2, d))), vec![]);
        assert_eq!(backup.step(c.deliver(1, c.checkpoint(1, 2, d))), vec![]);
        assert_eq!(backup.replica.status().low_watermark, SeqNo(0));

        c.run_slot(&mut backup, 2, &[c.request(2, 1, "b")]);
        assert_eq!(backup.replica.status().low_watermark, SeqNo(2));
        assert_eq!(backup.replica.stable_checkpoint().proof.len(), 3);
    }

    #[test]
    fn a_checkpoint_off_the_interval_or_below_the_window_is_refused() {
        let c = Cluster::four();
        let (mut backup, d) = backup_at_checkpoint_2(&c);
        assert_eq!(
            backup.step(c.deliver(0, c.checkpoint(0, 3, d))),
            vec![rejected_from_replica(0, KIND, RejectReason::NotACheckpoint)]
        );
        // A vote above the window is kept: it is how a replica learns it fell behind (see state transfer).
        assert_eq!(backup.step(c.deliver(0, c.checkpoint(0, 6, d))), vec![]);

        backup.step(c.deliver(0, c.checkpoint(0, 2, d)));
        backup.step(c.deliver(2, c.checkpoint(2, 2, d)));
        // The last vote arrives after the checkpoint became stable.
        assert_eq!(
            backup.step(c.deliver(3, c.checkpoint(3, 2, d))),
            vec![rejected_from_replica(
                3,
                KIND,
                RejectReason::Obsolete {
                    seq: SeqNo(2),
                    low: SeqNo(2)
                }
            )]
        );
    }

    #[test]
    fn a_stable_checkpoint_moves_the_watermarks() {
        let c = Cluster::four();
        let (mut backup, d) = backup_at_checkpoint_2(&c);
        backup.step(c.deliver(0, c.checkpoint(0, 2, d)));
        backup.step(c.deliver(2, c.checkpoint(2, 2, d)));

        let r = c.request(3, 1, "c");
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 6, one(&r)))),
            vec![
                to_all(c.prepare(1, 0, 6, digest_of(one(&r)))),
                c.view_timer()
            ]
        );
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 7, one(&r)))),
            vec![rejected_from_replica(
                0,
                "PRE-PREPARE",
                RejectReason::OutsideWatermarks {
                    seq: SeqNo(7),
                    low: SeqNo(2),
                    high: SeqNo(6)
                }
            )]
        );
        assert_eq!(
            backup.step(c.deliver(0, c.pre_prepare(0, 0, 2, one(&r)))),
            vec![rejected_from_replica(
                0,
                "PRE-PREPARE",
                RejectReason::Obsolete {
                    seq: SeqNo(2),
                    low: SeqNo(2)
                }
            )]
        );
        assert_eq!(
            backup.step(c.deliver(3, c.prepare(3, 0, 1, Digest([1; 32])))),
            vec![rejected_from_replica(
                3,
                "PREPARE",
                RejectReason::Obsolete {
                    seq: SeqNo(1),
                    low: SeqNo(2)
                }
            )]
        );
        assert_eq!(
            backup.replica.status().log_range,
            Some((SeqNo(6), SeqNo(6)))
        );
    }

    #[test]
    fn the_primary_never_proposes_beyond_the_high_watermark() {
        let c = Cluster::new(4, one_per_batch());
        let mut primary = c.node(0);
        let requests: Vec<_> = (1..=5).map(|i| c.request(i, 1, "op")).collect();

        assert_eq!(
            primary.step(Input::Request(requests[0].clone())),
            vec![
                to_all(c.pre_prepare(0, 0, 1, &requests[..1])),
                c.view_timer(),
                c.status_timer()
            ]
        );
        for (i, r) in requests.iter().enumerate().take(4).skip(1) {
            let seq = i as u64 + 1;
            assert_eq!(
                primary.step(Input::Request(r.clone())),
                vec![to_all(c.pre_prepare(0, 0, seq, one(r)))]
            );
        }
        // H = 4 is reached: the fifth request waits, with no batch timer (firing it could not help).
        assert_eq!(primary.step(Input::Request(requests[4].clone())), vec![]);
        assert_eq!(primary.replica.status().pending_requests, 1);
        assert_eq!(primary.step(Input::TimerFired(Timer::Batch)), vec![]);

        let mut outs = c.run_slot(&mut primary, 1, &requests[0..1]);
        outs.extend(c.run_slot(&mut primary, 2, &requests[1..2]));
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Out::Send(_, ReplicaMsg::PrePrepare { .. }))),
            "no proposal while the window is full: {outs:?}"
        );
        let d = sent_checkpoints(&outs)[0].1;

        assert_eq!(primary.step(c.deliver(1, c.checkpoint(1, 2, d))), vec![]);
        // Checkpoint 2 becomes stable, H moves to 6: the queued request goes out at once.
        assert_eq!(
            primary.step(c.deliver(2, c.checkpoint(2, 2, d))),
            vec![to_all(c.pre_prepare(0, 0, 5, &requests[4..5]))]
        );
        let status = primary.replica.status();
        assert_eq!(
            (status.low_watermark, status.high_watermark),
            (SeqNo(2), SeqNo(6))
        );
        assert_eq!(status.pending_requests, 0);
    }
}

mod boundary {
    use super::*;

    fn prepare_body(replica: u64) -> Prepare {
        Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([5; 32]),
            replica: ReplicaId(replica),
        }
    }

    #[test]
    fn a_prepare_signed_with_another_replicas_key_is_refused() {
        let c = Cluster::four();
        let forged = ReplicaMsg::Prepare(c.keys[3].sign(prepare_body(2)));
        assert_eq!(
            c.keyring.verify_replica_msg(ReplicaId(2), forged),
            Err(AuthError::BadSignature(Principal::Replica(ReplicaId(2))))
        );
    }

    #[test]
    fn a_prepare_on_another_replicas_connection_is_refused() {
        let c = Cluster::four();
        let genuine = ReplicaMsg::Prepare(c.keys[2].sign(prepare_body(2)));
        assert_eq!(
            c.keyring.verify_replica_msg(ReplicaId(3), genuine),
            Err(AuthError::SenderMismatch {
                signer: Principal::Replica(ReplicaId(2)),
                sender: ReplicaId(3)
            })
        );
    }

    #[test]
    fn a_pre_prepare_forged_in_the_primarys_name_is_refused() {
        let c = Cluster::four();
        let r = c.request(1, 1, "a");
        let header = c.keys[2].sign(PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: digest_of(one(&r)),
            replica: ReplicaId(0),
        });
        let forged = ReplicaMsg::PrePrepare {
            header,
            batch: vec![r.signed().clone()],
        };
        assert_eq!(
            c.keyring.verify_replica_msg(ReplicaId(0), forged),
            Err(AuthError::BadSignature(Principal::Replica(ReplicaId(0))))
        );
    }

    /// The core's own last line: a message the driver attributes to this replica itself or to no replica.
    #[test]
    fn a_message_from_itself_or_from_outside_the_cluster_is_refused() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        let own = c
            .keyring
            .verify_replica_msg(ReplicaId(1), c.prepare(1, 0, 1, Digest([5; 32])))
            .expect("genuine");
        assert_eq!(
            backup.step(Input::Message {
                from: ReplicaId(1),
                msg: own
            }),
            vec![rejected_from_replica(
                1,
                "PREPARE",
                RejectReason::UnknownSender
            )]
        );
        let other = c
            .keyring
            .verify_replica_msg(ReplicaId(2), c.prepare(2, 0, 1, Digest([5; 32])))
            .expect("genuine");
        assert_eq!(
            backup.step(Input::Message {
                from: ReplicaId(9),
                msg: other
            }),
            vec![rejected_from_replica(
                9,
                "PREPARE",
                RejectReason::UnknownSender
            )]
        );
        assert_eq!(backup.replica.status().log_slots, 0);
    }
}

mod status {
    use super::*;

    /// A peer in a later view may be the one that is ahead: the replica, which with nothing unfinished would
    /// never time out, answers with its own STATUS so that the peer sends what lets it into that view. It resends
    /// none of its view-0 messages, which the peer could not use.
    #[test]
    fn a_status_from_a_higher_view_is_answered_with_the_replicas_own_status() {
        let c = Cluster::four();
        let mut backup = c.node(1);
        assert_eq!(
            backup.step(c.deliver(2, c.status(2, 1, 0, 0))),
            vec![to_replica(2, c.status(1, 0, 0, 0))]
        );
        // With a slot of view 0 in its log, still only its STATUS, reporting what it has (nothing executed).
        let r = c.request(1, 1, "a");
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, one(&r))));
        assert_eq!(
            backup.step(c.deliver(3, c.status_changing(3, 2, 0, 0, true))),
            vec![to_replica(3, c.status(1, 0, 0, 0))]
        );
        let status = backup.replica.status();
        assert_eq!((status.view, status.changing_view), (View(0), false));
    }

    #[test]
    fn the_primary_resends_its_pre_prepares_commits_and_checkpoints() {
        let c = Cluster::new(4, one_per_batch());
        let mut primary = c.node(0);
        let requests: Vec<_> = (1..=3).map(|i| c.request(i, 1, "op")).collect();
        for r in &requests {
            primary.step(Input::Request(r.clone()));
        }
        c.run_slot(&mut primary, 1, &requests[0..1]);
        let outs = c.run_slot(&mut primary, 2, &requests[1..2]);
        let cp = sent_checkpoints(&outs)[0].1;
        let d: Vec<Digest> = requests.iter().map(|r| digest_of(one(r))).collect();
        // Seq 3 prepared, not committed.
        primary.step(c.deliver(1, c.prepare(1, 0, 3, d[2])));
        primary.step(c.deliver(2, c.prepare(2, 0, 3, d[2])));

        assert_eq!(
            primary.step(c.deliver(3, c.status(3, 0, 0, 0))),
            vec![
                to_replica(3, c.pre_prepare(0, 0, 1, &requests[0..1])),
                to_replica(3, c.commit(0, 0, 1, d[0])),
                to_replica(3, c.pre_prepare(0, 0, 2, &requests[1..2])),
                to_replica(3, c.commit(0, 0, 2, d[1])),
                to_replica(3, c.pre_prepare(0, 0, 3, &requests[2..3])),
                to_replica(3, c.commit(0, 0, 3, d[2])),
                to_replica(3, c.checkpoint(0, 2, cp)),
            ]
        );
        // The same STATUS again within the status interval: it was answered already (a faulty peer cannot make
        // the primary send its window again and again).
        assert_eq!(primary.step(c.deliver(3, c.status(3, 0, 0, 0))), vec![]);
        primary.step(Input::TimerFired(Timer::Status));
        // A peer that executed 2 and holds checkpoint 2 as stable needs only slot 3.
        assert_eq!(
            primary.step(c.deliver(3, c.status(3, 0, 2, 2))),
            vec![
                to_replica(3, c.pre_prepare(0, 0, 3, &requests[2..3])),
                to_replica(3, c.commit(0, 0, 3, d[2])),
            ]
        );
    }

    #[test]
    fn a_backup_resends_its_own_prepares_commits_and_checkpoints_only() {
        let c = Cluster::four();
        let (mut backup, cp) = backup_at_checkpoint_2(&c);
        let (d1, d2) = (
            digest_of(&[c.request(1, 1, "a")]),
            digest_of(&[c.request(2, 1, "b")]),
        );
        let r3 = [c.request(3, 1, "c")];
        let d3 = digest_of(&r3);
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 3, &r3)));

        assert_eq!(
            backup.step(c.deliver(3, c.status(3, 0, 0, 0))),
            vec![
                to_replica(3, c.prepare(1, 0, 1, d1)),
                to_replica(3, c.commit(1, 0, 1, d1)),
                to_replica(3, c.prepare(1, 0, 2, d2)),
                to_replica(3, c.commit(1, 0, 2, d2)),
                to_replica(3, c.prepare(1, 0, 3, d3)),
                to_replica(3, c.checkpoint(1, 2, cp)),
            ]
        );
        assert_eq!(
            backup.step(c.deliver(2, c.status(2, 0, 2, 2))),
            vec![to_replica(2, c.prepare(1, 0, 3, d3))]
        );
    }

    #[test]
    fn the_status_timer_tells_the_peers_what_the_replica_has() {
        let c = Cluster::four();
        let mut idle = c.node(1);
        assert_eq!(idle.step(Input::TimerFired(Timer::Status)), vec![]);

        let mut busy = c.node(1);
        busy.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[c.request(1, 1, "a")])));
        assert_eq!(
            busy.step(Input::TimerFired(Timer::Status)),
            vec![to_all(c.status(1, 0, 0, 0)), c.status_timer()]
        );
    }
}

/// n = 7, f = 2, q = 5: prepared needs q - 1 = 4 PREPAREs from distinct backups (a backup's own among them), and
/// committed q = 5 COMMITs (its own among them).
mod seven {
    use super::*;

    #[test]
    fn a_backup_needs_its_own_prepare_and_three_others() {
        let c = Cluster::seven();
        let mut backup = c.node(1);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &[r])));

        assert_eq!(backup.step(c.deliver(2, c.prepare(2, 0, 1, d))), vec![]);
        assert_eq!(backup.step(c.deliver(3, c.prepare(3, 0, 1, d))), vec![]);
        assert_eq!(
            backup.step(c.deliver(3, c.prepare(3, 0, 1, d))),
            vec![rejected_from_replica(3, "PREPARE", RejectReason::Duplicate)]
        );
        assert_eq!(
            backup.step(c.deliver(4, c.prepare(4, 0, 1, d))),
            vec![to_all(c.commit(1, 0, 1, d))]
        );
        assert_eq!(backup.step(c.deliver(5, c.prepare(5, 0, 1, d))), vec![]);
    }

    #[test]
    fn the_primary_needs_four_backups_prepares() {
        let c = Cluster::seven();
        let mut primary = c.node(0);
        let r = c.request(1, 1, "a");
        let d = digest_of(one(&r));
        primary.step(Input::Request(r));

        for i in 1..=3 {
            assert_eq!(primary.step(c.deliver(i, c.prepare(i, 0, 1, d))), vec![]);
        }
        assert_eq!(
            primary.step(c.deliver(3, c.prepare(3, 0, 1, d))),
            vec![rejected_from_replica(3, "PREPARE", RejectReason::Duplicate)]
        );
        assert_eq!(
            primary.step(c.deliver(4, c.prepare(4, 0, 1, d))),
            vec![to_all(c.commit(0, 0, 1, d))]
        );
    }

    #[test]
    fn five_distinct_commits_execute_and_four_do_not() {
        let c = Cluster::seven();
        let mut backup = c.node(1);
        let batch = [c.request(1, 1, "a")];
        let d = digest_of(&batch);
        backup.step(c.deliver(0, c.pre_prepare(0, 0, 1, &batch)));
        for i in 2..=4 {
            backup.step(c.deliver(i, c.prepare(i, 0, 1, d)));
        }

        // Own COMMIT + three others = 4 < 5.
        for i in [0, 2, 3] {
            assert_eq!(backup.step(c.deliver(i, c.commit(i, 0, 1, d))), vec![]);
        }
        assert_eq!(
            backup.step(c.deliver(3, c.commit(3, 0, 1, d))),
            vec![rejected_from_replica(3, "COMMIT", RejectReason::Duplicate)]
        );
        assert_eq!(backup.replica.status().last_executed, SeqNo(0));
        assert_eq!(
            backup.step(c.deliver(4, c.commit(4, 0, 1, d))),
            vec![
                reply(1, 1, 1, "1:a"),
                committed(&c, 1, &batch, &["1:a"], &[0, 1, 2, 3, 4]),
                c.cancel_view_timer(),
            ]
        );
    }

    #[test]
    fn a_checkpoint_needs_five_matching_votes() {
        let c = Cluster::seven();
        let (mut backup, d) = backup_at_checkpoint_2(&c);
        for i in [0, 2, 3] {
            assert_eq!(backup.step(c.deliver(i, c.checkpoint(i, 2, d))), vec![]);
            assert_eq!(backup.replica.status().low_watermark, SeqNo(0));
        }
        assert_eq!(backup.step(c.deliver(4, c.checkpoint(4, 2, d))), vec![]);
        let status = backup.replica.status();
        assert_eq!(
            (status.low_watermark, status.high_watermark),
            (SeqNo(2), SeqNo(6))
        );
        assert_eq!(status.log_slots, 0);
        let signers: Vec<_> = backup
            .replica
            .stable_checkpoint()
            .proof
            .iter()
            .map(|v| v.replica)
            .collect();
        assert_eq!(signers, (0..5).map(ReplicaId).collect::<Vec<_>>());
    }

    #[test]
    fn run_slot_reaches_execution_with_exactly_a_quorum() {
        // The helper the other tests rely on sends just enough votes: q commits in the certificate.
        let c = Cluster::seven();
        let mut backup = c.node(6);
        let batch = [c.request(1, 1, "a")];
        let outs = c.run_slot(&mut backup, 1, &batch);
        let done = executed(&outs);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].certificate.len(), c.quorum());
    }
}

mod catching_up_when_idle {
    use super::*;

    /// Replica 3 restarted with nothing unfinished while the others are ahead and idle: nothing would tell it. A
    /// peer that receives its STATUS answers with its own, and once f+1 peers report being ahead, replica 3
    /// keeps asking (its status timer runs) until it has caught up.
    #[test]
    fn a_replica_that_f_plus_1_peers_report_ahead_keeps_asking_until_it_caught_up() {
        // Checkpoints far apart, so that an unstable checkpoint does not keep the replica asking by itself.
        let params = Params {
            checkpoint_interval: 64,
            window: 128,
            ..one_per_batch()
        };
        let c = Cluster::new(4, params);
        let mut lagging = c.node(3);
        assert_eq!(lagging.step(Input::TimerFired(Timer::Status)), vec![]);
        // One peer's claim is not enough: it could be a faulty replica's.
        assert_eq!(lagging.step(c.deliver(1, c.status(1, 0, 0, 2))), vec![]);
        // A second one is: at least one correct replica executed beyond it.
        assert_eq!(
            lagging.step(c.deliver(2, c.status(2, 0, 0, 2))),
            vec![c.status_timer()]
        );
        assert_eq!(
            lagging.step(Input::TimerFired(Timer::Status)),
            vec![to_all(c.status(3, 0, 0, 0)), c.status_timer()]
        );
        // Once it executed as far as they reported, it stops asking.
        let requests: Vec<_> = (1..=2).map(|i| c.request(i, 1, "op")).collect();
        c.run_slot(&mut lagging, 1, &requests[0..1]);
        c.run_slot(&mut lagging, 2, &requests[1..2]);
        assert_eq!(lagging.replica.status().last_executed, SeqNo(2));
        assert_eq!(lagging.step(Input::TimerFired(Timer::Status)), vec![]);
    }

    /// The answer to a peer that is behind waits for the status timer: answering at once could echo without end
    /// with a peer that answers in kind.
    #[test]
    fn a_peer_behind_gets_this_replicas_status_when_the_status_timer_fires() {
        let params = Params {
            checkpoint_interval: 64,
            window: 128,
            ..one_per_batch()
        };
        let c = Cluster::new(4, params);
        let mut ahead = c.node(1);
        let requests: Vec<_> = (1..=2).map(|i| c.request(i, 1, "op")).collect();
        c.run_slot(&mut ahead, 1, &requests[0..1]);
        c.run_slot(&mut ahead, 2, &requests[1..2]);
        let outs = ahead.step(c.deliver(3, c.status(3, 0, 0, 0)));
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Out::Send(_, ReplicaMsg::Status(_)))),
            "not at once: {outs:?}"
        );
        // A second STATUS before the timer fires changes nothing: one answer per period.
        ahead.step(c.deliver(3, c.status(3, 0, 0, 0)));
        let statuses: Vec<Out> = ahead
            .step(Input::TimerFired(Timer::Status))
            .into_iter()
            .filter(|o| matches!(o, Out::Send(_, ReplicaMsg::Status(_))))
            .collect();
        assert_eq!(statuses, vec![to_replica(3, c.status(1, 0, 0, 2))]);
    }
}

/// MAC authenticators: a PRE-PREPARE whose only fault is this replica's own MAC of a request (a faulty client may
/// spoil it) is held, and accepted once f backups other than the primary vouch for its batch with PREPAREs.
mod vouching {
    use super::*;
    use pbft_crypto::{VerifiedMsg, batch_digest};
    use pbft_types::{ClientAuth, Signed};

    const VICTIM: u64 = 1;

    fn macs(n: usize) -> Cluster {
        Cluster::new(
            n,
            Params {
                client_auth: ClientAuth::Macs,
                ..small_params()
            },
        )
    }

    /// `msg` from replica `from` as the victim's keyring hands it to the core.
    fn deliver(c: &Cluster, from: u64, msg: ReplicaMsg) -> Input {
        let msg = c
            .replica_keyring(VICTIM)
            .verify_replica_msg(ReplicaId(from), msg)
            .expect("authentic");
        Input::Message {
            from: ReplicaId(from),
            msg,
        }
    }

    /// Client 1's request with the victim's MAC spoiled, and the primary's PRE-PREPARE of it at seq 1.
    fn spoiled_pre_prepare(c: &Cluster) -> (Vec<Signed<Request>>, Digest, ReplicaMsg) {
        let batch = vec![c.sealed_request(1, 1, "a", &[VICTIM])];
        let digest = batch_digest(&batch);
        let msg = ReplicaMsg::PrePrepare {
            header: c.signed_pre_prepare(0, 0, 1, digest),
            batch: batch.clone(),
        };
        (batch, digest, msg)
    }

    #[test]
    fn a_backup_that_cannot_check_its_own_mac_prepares_once_f_backups_vouch() {
        for n in [4, 7] {
            let c = macs(n);
            let f = c.config.f() as u64;
            let (batch, digest, pre_prepare) = spoiled_pre_prepare(&c);
            let held = deliver(&c, 0, pre_prepare);
            assert!(matches!(
                held,
                Input::Message {
                    msg: VerifiedMsg::UnvouchedPrePrepare(_),
                    ..
                }
            ));
            let mut victim = c.node(VICTIM);
            assert_eq!(victim.step(held), vec![c.status_timer()], "n = {n}");
            assert_eq!(victim.replica.status().log_slots, 1);
            // The primary's PREPARE is refused as always; a PREPARE for another digest does not vouch.
            assert_eq!(
                victim.step(deliver(&c, 0, c.prepare(0, 0, 1, digest))),
                vec![rejected_from_replica(
                    0,
                    "PREPARE",
                    RejectReason::PrepareFromPrimary
                )]
            );
            let last = n as u64 - 1;
            assert_eq!(
                victim.step(deliver(&c, last, c.prepare(last, 0, 1, Digest([9; 32])))),
                vec![]
            );
            // f - 1 backups: nothing yet.
            for r in 2..1 + f {
                assert_eq!(
                    victim.step(deliver(&c, r, c.prepare(r, 0, 1, digest))),
                    vec![],
                    "n = {n}, PREPARE of {r}"
                );
            }
            // The f-th: the victim accepts the batch and sends its PREPARE (and, when it and the f vouchers are
            // already q - 1 backups, its COMMIT).
            let outs = victim.step(deliver(&c, 1 + f, c.prepare(1 + f, 0, 1, digest)));
            let mut expected = vec![to_all(c.prepare(VICTIM, 0, 1, digest))];
            if (f as usize + 1) >= c.quorum() - 1 {
                expected.push(to_all(c.commit(VICTIM, 0, 1, digest)));
            }
            expected.push(c.view_timer());
            assert_eq!(outs, expected, "n = {n}");
            assert_eq!(victim.replica.status().log_slots, 1);

            // From there it is an ordinary batch: it prepares, commits and executes.
            let mut outs = Vec::new();
            for r in 2 + f..last {
                outs.extend(victim.step(deliver(&c, r, c.prepare(r, 0, 1, digest))));
            }
            for r in (0..n as u64).filter(|r| *r != VICTIM).take(c.quorum() - 1) {
                outs.extend(victim.step(deliver(&c, r, c.commit(r, 0, 1, digest))));
            }
            let done = executed(&outs);
            assert_eq!(done.len(), 1, "n = {n}: {outs:?}");
            assert_eq!(done[0].batch, batch);
            assert_eq!(victim.executed_ops(), vec![Bytes::from_static(b"a")]);
        }
    }

    #[test]
    fn prepares_that_came_first_vouch_at_once() {
        let c = macs(4);
        let (_, digest, pre_prepare) = spoiled_pre_prepare(&c);
        let mut victim = c.node(VICTIM);
        victim.step(deliver(&c, 3, c.prepare(3, 0, 1, digest)));
        assert_eq!(
            victim.step(deliver(&c, 0, pre_prepare)),
            vec![
                to_all(c.prepare(VICTIM, 0, 1, digest)),
                to_all(c.commit(VICTIM, 0, 1, digest)),
                c.view_timer()
            ]
        );
    }

    #[test]
    fn a_held_pre_prepare_is_not_accepted_twice_and_a_conflicting_one_is_evidence() {
        let c = macs(4);
        let (_, digest, pre_prepare) = spoiled_pre_prepare(&c);
        let mut victim = c.node(VICTIM);
        victim.step(deliver(&c, 0, pre_prepare.clone()));
        assert_eq!(
            victim.step(deliver(&c, 0, pre_prepare)),
            vec![rejected_from_replica(
                0,
                "PRE-PREPARE",
                RejectReason::Duplicate
            )]
        );
        // The primary signs another batch for the same slot, one the victim can check.
        let other = c.request(2, 1, "b");
        let outs = victim.step(deliver(&c, 0, c.pre_prepare(0, 0, 1, one(&other))));
        assert_eq!(
            outs.first(),
            Some(&Out::Evidence(
                c.signed_pre_prepare(0, 0, 1, digest),
                c.signed_pre_prepare(0, 0, 1, digest_of(one(&other)))
            ))
        );
        assert!(victim.replica.status().changing_view);
        assert_eq!(victim.replica.status().log_slots, 0);
    }

    #[test]
    fn a_view_change_drops_a_held_pre_prepare() {
        let c = macs(4);
        let (_, digest, pre_prepare) = spoiled_pre_prepare(&c);
        let mut victim = c.node(VICTIM);
        victim.step(deliver(&c, 0, pre_prepare));
        // f + 1 VIEW-CHANGEs for view 2 (whose primary is not the victim): the victim follows them.
        for r in [2, 3] {
            victim.step(deliver(
                &c,
                r,
                ReplicaMsg::ViewChange(c.empty_view_change(r, 2)),
            ));
        }
        let status = victim.replica.status();
        assert!(status.changing_view && status.view == View(2), "{status:?}");
        assert_eq!(status.log_slots, 0);
        // Votes of view 0 arriving late change nothing.
        assert_eq!(
            victim.step(deliver(&c, 2, c.prepare(2, 0, 1, digest))),
            vec![rejected_from_replica(
                2,
                "PREPARE",
                RejectReason::ChangingView
            )]
        );
    }
}
