//! The rules of VIEW-CHANGE and NEW-VIEW that need no replica state: whether a VIEW-CHANGE proves what it claims,
//! how the new primary computes O from V, and how a backup checks a NEW-VIEW by computing O itself.
//!
//! Signatures were checked by the keyring before anything here runs (a `Verified<ViewChange>` holds verified
//! certificates); what is checked here is their meaning: enough distinct signers, matching views, sequence
//! numbers and digests, the right primaries.

use std::collections::{BTreeMap, BTreeSet};

use pbft_crypto::{Verified, VerifiedPrepared};
use pbft_types::{
    Checkpoint, ClusterConfig, Digest, NewView, PrePrepare, ReplicaId, SeqNo, View, ViewChange,
};
use thiserror::Error;

/// Why a VIEW-CHANGE is not valid.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidViewChange {
    #[error("stable checkpoint {0} is not a multiple of the checkpoint interval")]
    NotACheckpoint(SeqNo),
    #[error(
        "the proof of checkpoint {seq} has {got} distinct matching CHECKPOINTs, {needed} needed"
    )]
    CheckpointProofTooSmall {
        seq: SeqNo,
        got: usize,
        needed: usize,
    },
    #[error("the proof of checkpoint {seq} holds a CHECKPOINT for another sequence or digest")]
    CheckpointProofMismatch { seq: SeqNo },
    #[error("the initial checkpoint needs no proof, but one was given")]
    UnexpectedCheckpointProof,
    #[error("prepared certificate for {seq}: {reason}")]
    BadPrepared { seq: SeqNo, reason: &'static str },
    #[error("two prepared certificates for sequence {0}")]
    DuplicatePrepared(SeqNo),
}

/// Why a NEW-VIEW is not valid.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidNewView {
    #[error("V holds {got} VIEW-CHANGEs from distinct replicas, {needed} needed")]
    TooFewViewChanges { got: usize, needed: usize },
    #[error("V holds two VIEW-CHANGEs from replica {0}")]
    DuplicateSender(ReplicaId),
    #[error("V holds a VIEW-CHANGE for view {got}, not {expected}")]
    WrongViewInV { got: View, expected: View },
    #[error("V lacks the new primary's own VIEW-CHANGE")]
    PrimaryMissing,
    #[error("the VIEW-CHANGE of replica {replica} in V is invalid: {reason}")]
    InvalidViewChange {
        replica: ReplicaId,
        reason: InvalidViewChange,
    },
    #[error("O holds {got} PRE-PREPAREs, V calls for {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("O's PRE-PREPARE number {index} is not the one V calls for")]
    WrongEntry { index: usize },
}

/// What V implies for the new view: the checkpoint it starts from (min-s) and the PRE-PREPAREs of O, in
/// sequence order (the null batch's digest where no certificate prepared a sequence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewPlan {
    /// min-s, its digest, and its proof (empty for the initial state).
    pub stable_seq: SeqNo,
    pub stable_digest: Option<Digest>,
    pub stable_proof: Vec<Verified<Checkpoint>>,
    /// O, as (n, d) for every n in (min-s, max-s].
    pub entries: Vec<(SeqNo, Digest)>,
}

/// Checks that a VIEW-CHANGE's checkpoint proof and prepared certificates prove what they claim.
pub fn validate_view_change(
    config: &ClusterConfig,
    vc: &Verified<ViewChange>,
) -> Result<(), InvalidViewChange> {
    let params = &config.params;
    let stable = vc.stable_seq;
    if !stable.0.is_multiple_of(params.checkpoint_interval) {
        return Err(InvalidViewChange::NotACheckpoint(stable));
    }
    checkpoint_certificate(config, stable, &vc.checkpoint_proof())?;
    let high = SeqNo(stable.0.saturating_add(params.window));
    let mut seen = BTreeSet::new();
    for cert in vc.prepared_certificates() {
        let seq = cert.pre_prepare.seq;
        let bad = |reason| InvalidViewChange::BadPrepared { seq, reason };
        if !(stable < seq && seq <= high) {
            return Err(bad("sequence outside the sender's watermarks"));
        }
        if cert.pre_prepare.view >= vc.new_view {
            return Err(bad("PRE-PREPARE not from an earlier view"));
        }
        prepared_certificate(config, &cert).map_err(bad)?;
        if !seen.insert(seq) {
            return Err(InvalidViewChange::DuplicatePrepared(seq));
        }
    }
    Ok(())
}

/// The digest a checkpoint proof certifies at `seq` (`None` for the initial state, which needs no proof).
fn checkpoint_certificate(
    config: &ClusterConfig,
    seq: SeqNo,
    proof: &[Verified<Checkpoint>],
) -> Result<Option<Digest>, InvalidViewChange> {
    if seq == SeqNo(0) {
        return match proof.is_empty() {
            true => Ok(None),
            false => Err(InvalidViewChange::UnexpectedCheckpointProof),
        };
    }
    let Some(first) = proof.first() else {
        return Err(InvalidViewChange::CheckpointProofTooSmall {
            seq,
            got: 0,
            needed: config.quorum(),
        });
    };
    let digest = first.digest;
    if proof.iter().any(|c| c.seq != seq || c.digest != digest) {
        return Err(InvalidViewChange::CheckpointProofMismatch { seq });
    }
    let signers: BTreeSet<ReplicaId> = proof.iter().map(|c| c.replica).collect();
    if signers.len() < config.quorum() || signers.len() != proof.len() {
        return Err(InvalidViewChange::CheckpointProofTooSmall {
            seq,
            got: signers.len(),
            needed: config.quorum(),
        });
    }
    Ok(Some(digest))
}

/// A PRE-PREPARE from the primary of its view and q-1 matching PREPAREs from distinct backups.
pub fn prepared_certificate(
    config: &ClusterConfig,
    cert: &VerifiedPrepared,
) -> Result<(), &'static str> {
    let pp = &cert.pre_prepare;
    let primary = config.primary(pp.view);
    if pp.replica != primary {
        return Err("PRE-PREPARE not signed by the primary of its view");
    }
    let mut backups = BTreeSet::new();
    for p in &cert.prepares {
        if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest) {
            return Err("a PREPARE does not match the PRE-PREPARE");
        }
        if p.replica == primary {
            return Err("a PREPARE from the primary");
        }
        if !backups.insert(p.replica) {
            return Err("two PREPAREs from one replica");
        }
    }
    if backups.len() < config.quorum() - 1 {
        return Err("too few PREPAREs");
    }
    Ok(())
}

/// Computes O from V (PROTOCOL.md, view change): min-s is the highest stable checkpoint in V, max-s the highest
/// prepared sequence; every n between gets the digest of its certificate from the highest view, or the null
/// batch. V must hold only valid VIEW-CHANGEs.
pub fn compute_plan(views: &[Verified<ViewChange>], null_digest: Digest) -> NewViewPlan {
    let mut stable_seq = SeqNo(0);
    let mut stable_proof = Vec::new();
    for vc in views {
        if vc.stable_seq > stable_seq {
            stable_seq = vc.stable_seq;
            stable_proof = vc.checkpoint_proof();
        }
    }
    // For each sequence above min-s, the certificate of the highest view (the first such one in V's order).
    let mut chosen: BTreeMap<SeqNo, (View, Digest)> = BTreeMap::new();
    for vc in views {
        for cert in vc.prepared_certificates() {
            let pp = &cert.pre_prepare;
            if pp.seq <= stable_seq {
                continue;
            }
            let better = chosen.get(&pp.seq).is_none_or(|(v, _)| pp.view > *v);
            if better {
                chosen.insert(pp.seq, (pp.view, pp.digest));
            }
        }
    }
    let max_s = chosen.keys().next_back().copied().unwrap_or(stable_seq);
    let entries = (stable_seq.0 + 1..=max_s.0)
        .map(SeqNo)
        .map(|n| (n, chosen.get(&n).map_or(null_digest, |(_, d)| *d)))
        .collect();
    NewViewPlan {
        stable_seq,
        stable_digest: stable_proof.first().map(|c| c.digest),
        stable_proof,
        entries,
    }
}

/// A backup's check of NEW-VIEW(v, V, O): V holds q valid VIEW-CHANGEs for v from distinct replicas, the new
/// primary's among them, and O is exactly what V implies. Returns the plan and O's verified PRE-PREPAREs.
pub fn validate_new_view(
    config: &ClusterConfig,
    nv: &Verified<NewView>,
    null_digest: Digest,
) -> Result<(NewViewPlan, Vec<Verified<PrePrepare>>), InvalidNewView> {
    let primary = config.primary(nv.view);
    let views = nv.view_change_messages();
    let mut senders = BTreeSet::new();
    for vc in &views {
        if vc.new_view != nv.view {
            return Err(InvalidNewView::WrongViewInV {
                got: vc.new_view,
                expected: nv.view,
            });
        }
        if !senders.insert(vc.replica) {
            return Err(InvalidNewView::DuplicateSender(vc.replica));
        }
        validate_view_change(config, vc).map_err(|reason| InvalidNewView::InvalidViewChange {
            replica: vc.replica,
            reason,
        })?;
    }
    if senders.len() < config.quorum() {
        return Err(InvalidNewView::TooFewViewChanges {
            got: senders.len(),
            needed: config.quorum(),
        });
    }
    if !senders.contains(&primary) {
        return Err(InvalidNewView::PrimaryMissing);
    }
    let plan = compute_plan(&views, null_digest);
    let o = nv.pre_prepare_messages();
    if o.len() != plan.entries.len() {
        return Err(InvalidNewView::WrongLength {
            got: o.len(),
            expected: plan.entries.len(),
        });
    }
    for (index, (pp, (seq, digest))) in o.iter().zip(&plan.entries).enumerate() {
        if (pp.view, pp.seq, pp.digest, pp.replica) != (nv.view, *seq, *digest, primary) {
            return Err(InvalidNewView::WrongEntry { index });
        }
    }
    Ok((plan, o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::{KeyPair, Signer};
    use pbft_types::{ClientInfo, Params, PreparedProof, Principal, Signed};

    const N: u64 = 4;

    fn key(r: u64) -> KeyPair {
        KeyPair::from_seed([r as u8 + 1; 32])
    }

    fn config() -> ClusterConfig {
        ClusterConfig {
            replicas: (0..N).map(|r| key(r).public_key()).collect(),
            clients: Vec::<ClientInfo>::new(),
            params: Params {
                checkpoint_interval: 4,
                window: 8,
                ..Params::default()
            },
        }
    }

    /// A prepared certificate for (view, seq, digest byte): the PRE-PREPARE of the view's primary and the PREPAREs
    /// of the given backups.
    fn cert(view: u64, seq: u64, d: u8, backups: &[u64]) -> PreparedProof {
        let primary = view % N;
        let digest = Digest([d; 32]);
        PreparedProof {
            pre_prepare: key(primary).sign(PrePrepare {
                view: View(view),
                seq: SeqNo(seq),
                digest,
                replica: ReplicaId(primary),
            }),
            prepares: backups
                .iter()
                .map(|b| {
                    key(*b).sign(pbft_types::Prepare {
                        view: View(view),
                        seq: SeqNo(seq),
                        digest,
                        replica: ReplicaId(*b),
                    })
                })
                .collect(),
        }
    }

    fn checkpoints(seq: u64, d: u8, signers: &[u64]) -> Vec<Signed<Checkpoint>> {
        signers
            .iter()
            .map(|r| {
                key(*r).sign(Checkpoint {
                    seq: SeqNo(seq),
                    digest: Digest([d; 32]),
                    replica: ReplicaId(*r),
                })
            })
            .collect()
    }

    fn vc(
        from: u64,
        new_view: u64,
        stable: u64,
        proof: Vec<Signed<Checkpoint>>,
        prepared: Vec<PreparedProof>,
    ) -> Verified<ViewChange> {
        Signer::new(Principal::Replica(ReplicaId(from)), key(from)).sign(ViewChange {
            new_view: View(new_view),
            stable_seq: SeqNo(stable),
            checkpoint_proof: proof,
            prepared,
            replica: ReplicaId(from),
        })
    }

    const NULL: Digest = Digest([0xee; 32]);

    #[test]
    fn o_takes_the_highest_view_certificate_and_fills_gaps_with_null() {
        let v = vec![
            vc(
                1,
                3,
                4,
                checkpoints(4, 9, &[0, 1, 2]),
                vec![cert(0, 5, 1, &[1, 2]), cert(0, 7, 2, &[1, 2])],
            ),
            vc(
                2,
                3,
                0,
                vec![],
                vec![cert(1, 5, 3, &[0, 2]), cert(1, 3, 4, &[0, 2])],
            ),
            vc(3, 3, 4, checkpoints(4, 9, &[1, 2, 3]), vec![]),
        ];
        for vc in &v {
            assert_eq!(validate_view_change(&config(), vc), Ok(()));
        }
        let plan = compute_plan(&v, NULL);
        assert_eq!(plan.stable_seq, SeqNo(4));
        assert_eq!(plan.stable_digest, Some(Digest([9; 32])));
        // 3 is below min-s and dropped; 5 takes view 1's digest; 6 is a gap; 7 the only certificate.
        assert_eq!(
            plan.entries,
            vec![
                (SeqNo(5), Digest([3; 32])),
                (SeqNo(6), NULL),
                (SeqNo(7), Digest([2; 32])),
            ]
        );
    }

    #[test]
    fn with_no_certificate_o_is_empty() {
        let v = vec![vc(1, 1, 0, vec![], vec![]), vc(2, 1, 0, vec![], vec![])];
        let plan = compute_plan(&v, NULL);
        assert_eq!((plan.stable_seq, plan.entries.len()), (SeqNo(0), 0));
    }

    #[test]
    fn a_view_change_must_prove_what_it_claims() {
        let c = config();
        let check = |vc: Verified<ViewChange>| validate_view_change(&c, &vc);
        assert_eq!(
            check(vc(1, 1, 3, vec![], vec![])),
            Err(InvalidViewChange::NotACheckpoint(SeqNo(3)))
        );
        assert_eq!(
            check(vc(1, 1, 4, checkpoints(4, 9, &[0, 1]), vec![])),
            Err(InvalidViewChange::CheckpointProofTooSmall {
                seq: SeqNo(4),
                got: 2,
                needed: 3
            })
        );
        assert_eq!(
            check(vc(1, 1, 4, checkpoints(4, 9, &[0, 1, 1]), vec![])),
            Err(InvalidViewChange::CheckpointProofTooSmall {
                seq: SeqNo(4),
                got: 2,
                needed: 3
            })
        );
        let mut mixed = checkpoints(4, 9, &[0, 1]);
        mixed.extend(checkpoints(4, 8, &[2]));
        assert_eq!(
            check(vc(1, 1, 4, mixed, vec![])),
            Err(InvalidViewChange::CheckpointProofMismatch { seq: SeqNo(4) })
        );
        assert_eq!(
            check(vc(1, 1, 0, checkpoints(0, 9, &[0, 1, 2]), vec![])),
            Err(InvalidViewChange::UnexpectedCheckpointProof)
        );
        let bad = |p: PreparedProof| check(vc(1, 2, 0, vec![], vec![p]));
        let reason = |seq: u64, reason| {
            Err(InvalidViewChange::BadPrepared {
                seq: SeqNo(seq),
                reason,
            })
        };
        assert_eq!(bad(cert(0, 1, 1, &[1])), reason(1, "too few PREPAREs"));
        assert_eq!(
            bad(cert(0, 1, 1, &[0, 1])),
            reason(1, "a PREPARE from the primary")
        );
        assert_eq!(
            bad(cert(0, 1, 1, &[1, 1])),
            reason(1, "two PREPAREs from one replica")
        );
        assert_eq!(
            bad(cert(0, 9, 1, &[1, 2])),
            reason(9, "sequence outside the sender's watermarks")
        );
        assert_eq!(
            bad(cert(2, 1, 1, &[1, 3])),
            reason(1, "PRE-PREPARE not from an earlier view")
        );
        let mut mismatched = cert(0, 1, 1, &[1]);
        mismatched.prepares.extend(cert(0, 1, 2, &[2]).prepares);
        assert_eq!(
            bad(mismatched),
            reason(1, "a PREPARE does not match the PRE-PREPARE")
        );
        let mut not_primary = cert(0, 1, 1, &[2, 3]);
        not_primary.pre_prepare = key(1).sign(PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([1; 32]),
            replica: ReplicaId(1),
        });
        assert_eq!(
            bad(not_primary),
            reason(1, "PRE-PREPARE not signed by the primary of its view")
        );
        assert_eq!(
            check(vc(
                1,
                2,
                0,
                vec![],
                vec![cert(0, 1, 1, &[1, 2]), cert(1, 1, 2, &[0, 2])]
            )),
            Err(InvalidViewChange::DuplicatePrepared(SeqNo(1)))
        );
    }
}
