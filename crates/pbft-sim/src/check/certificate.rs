//! The certificates of every committed batch: q COMMITs for its (view, seq, digest) from q distinct replicas, and
//! the prepared certificate it rests on, q - 1 PREPAREs from distinct backups (never the primary), each with a
//! signature that verifies (a COMMIT sealed only by its link, where the cluster allows it, cannot be checked here).
//! A core that counts one replica's vote twice, or moves on with fewer than the quorum, hands over a certificate
//! that fails here.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use pbft_core::Committed;
use pbft_crypto::{Keyring, Verified};
use pbft_types::{Body, Commit, Digest, Prepare, ReplicaId, Seal, SeqNo, View};

use crate::violation::Violation;

/// PREPARE and COMMIT: a vote of one replica for (view, seq, digest).
trait Vote: Body + Clone {
    const KIND: &'static str;
    fn fields(&self) -> (View, SeqNo, Digest, ReplicaId);
}

impl Vote for Prepare {
    const KIND: &'static str = "PREPARE";
    fn fields(&self) -> (View, SeqNo, Digest, ReplicaId) {
        (self.view, self.seq, self.digest, self.replica)
    }
}

impl Vote for Commit {
    const KIND: &'static str = "COMMIT";
    fn fields(&self) -> (View, SeqNo, Digest, ReplicaId) {
        (self.view, self.seq, self.digest, self.replica)
    }
}

pub struct CertificateChecker {
    keyring: Keyring,
    replicas: usize,
    quorum: usize,
    /// Votes whose signature already verified, by exact signed bytes and signature: every replica's certificate
    /// for a sequence number holds mostly the same votes, and checking each once is enough.
    verified: HashSet<(Bytes, Seal)>,
}

impl CertificateChecker {
    pub fn new(keyring: Keyring, replicas: usize, quorum: usize) -> CertificateChecker {
        CertificateChecker {
            keyring,
            replicas,
            quorum,
            verified: HashSet::new(),
        }
    }

    /// Checks the certificates `replica` produced for `committed`.
    pub fn check(&mut self, replica: ReplicaId, committed: &Committed) -> Result<(), Violation> {
        self.check_votes(replica, committed, &committed.certificate, self.quorum)?;
        let primary = ReplicaId(committed.view.0 % self.replicas as u64);
        if committed.prepared.iter().any(|p| p.replica == primary) {
            return Err(Violation::PrepareFromPrimary {
                replica,
                seq: committed.seq,
                primary,
            });
        }
        self.check_votes(replica, committed, &committed.prepared, self.quorum - 1)
    }

    fn check_votes<T: Vote>(
        &mut self,
        replica: ReplicaId,
        committed: &Committed,
        votes: &[Verified<T>],
        needed: usize,
    ) -> Result<(), Violation> {
        let (kind, seq) = (T::KIND, committed.seq);
        let mut voters = BTreeSet::new();
        for vote in votes {
            let (vote_view, vote_seq, vote_digest, voter) = vote.fields();
            if (vote_view, vote_seq, vote_digest) != (committed.view, seq, committed.digest) {
                return Err(Violation::MismatchedVote {
                    kind,
                    replica,
                    view: committed.view,
                    seq,
                    digest: committed.digest,
                    voter,
                    vote_view,
                    vote_seq,
                    vote_digest,
                });
            }
            if !voters.insert(voter) {
                return Err(Violation::DuplicateVote {
                    kind,
                    replica,
                    seq,
                    voter,
                });
            }
            let signed = vote.signed();
            let key = (signed.body().clone(), signed.seal().clone());
            // A COMMIT sealed by its link (`replica_auth = "macs"`) convinced the replica's boundary, which knew
            // the link it came on; no one can check it again here. Counting and matching still apply.
            let link_sealed = *signed.seal() == Seal::Link && T::MAY_TRAVEL_UNSEALED;
            if !link_sealed && !self.verified.contains(&key) {
                self.keyring
                    .verify(signed.clone())
                    .map_err(|e| Violation::ForgedVote {
                        kind,
                        replica,
                        seq,
                        voter,
                        reason: e.to_string(),
                    })?;
                self.verified.insert(key);
            }
        }
        if voters.len() < needed {
            return Err(Violation::ShortCertificate {
                kind,
                replica,
                seq,
                votes: voters.len(),
                quorum: needed,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use pbft_crypto::{KeyPair, Signer, Verified};
    use pbft_types::{ClusterConfig, Commit, Digest, Params, Prepare, Principal, SeqNo, View};

    struct Fixture {
        signers: Vec<Signer>,
        checker: CertificateChecker,
    }

    fn fixture() -> Fixture {
        let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 10; 32])).collect();
        let config = ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: Vec::new(),
            params: Params::default(),
        };
        let keyring = Keyring::new(&config).unwrap();
        let signers = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| Signer::new(Principal::Replica(ReplicaId(i as u64)), k))
            .collect();
        Fixture {
            signers,
            checker: CertificateChecker::new(keyring, config.n(), config.quorum()),
        }
    }

    fn commit(signer: &Signer, seq: u64, digest: u8) -> Verified<Commit> {
        let Principal::Replica(replica) = signer.principal() else {
            panic!("replica signers only");
        };
        signer.sign(Commit {
            view: View(0),
            seq: SeqNo(seq),
            digest: Digest([digest; 32]),
            replica,
        })
    }

    fn prepare(signer: &Signer, digest: u8) -> Verified<Prepare> {
        let Principal::Replica(replica) = signer.principal() else {
            panic!("replica signers only");
        };
        signer.sign(Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([digest; 32]),
            replica,
        })
    }

    fn with_prepared(
        certificate: Vec<Verified<Commit>>,
        prepared: Vec<Verified<Prepare>>,
    ) -> Committed {
        Committed {
            seq: SeqNo(1),
            view: View(0),
            digest: Digest([1; 32]),
            batch: Arc::from(Vec::new()),
            results: Vec::new(),
            certificate,
            prepared,
            record: None,
        }
    }

    /// A batch committed on `certificate`, prepared on PREPAREs from backups 1 and 2.
    fn committed(certificate: Vec<Verified<Commit>>) -> Committed {
        let f = fixture();
        let prepared = vec![prepare(&f.signers[1], 1), prepare(&f.signers[2], 1)];
        with_prepared(certificate, prepared)
    }

    #[test]
    fn a_prepare_counted_twice_is_reported() {
        let mut f = fixture();
        let cert = (0..3).map(|i| commit(&f.signers[i], 1, 1)).collect();
        let doubled = vec![prepare(&f.signers[1], 1), prepare(&f.signers[1], 1)];
        assert_eq!(
            f.checker.check(ReplicaId(0), &with_prepared(cert, doubled)),
            Err(Violation::DuplicateVote {
                kind: "PREPARE",
                replica: ReplicaId(0),
                seq: SeqNo(1),
                voter: ReplicaId(1)
            })
        );
    }

    #[test]
    fn a_short_prepared_certificate_or_a_prepare_from_the_primary_is_reported() {
        let mut f = fixture();
        let cert: Vec<_> = (0..3).map(|i| commit(&f.signers[i], 1, 1)).collect();
        let short = vec![prepare(&f.signers[1], 1)];
        assert_eq!(
            f.checker
                .check(ReplicaId(0), &with_prepared(cert.clone(), short)),
            Err(Violation::ShortCertificate {
                kind: "PREPARE",
                replica: ReplicaId(0),
                seq: SeqNo(1),
                votes: 1,
                quorum: 2
            })
        );
        let from_primary = vec![prepare(&f.signers[0], 1), prepare(&f.signers[1], 1)];
        assert_eq!(
            f.checker
                .check(ReplicaId(2), &with_prepared(cert, from_primary)),
            Err(Violation::PrepareFromPrimary {
                replica: ReplicaId(2),
                seq: SeqNo(1),
                primary: ReplicaId(0)
            })
        );
    }

    #[test]
    fn a_quorum_of_distinct_verified_commits_passes() {
        let mut f = fixture();
        let cert = (0..3).map(|i| commit(&f.signers[i], 1, 1)).collect();
        assert_eq!(f.checker.check(ReplicaId(0), &committed(cert)), Ok(()));
        let all = (0..4).map(|i| commit(&f.signers[i], 1, 1)).collect();
        assert_eq!(f.checker.check(ReplicaId(1), &committed(all)), Ok(()));
    }

    #[test]
    fn the_same_replica_twice_is_reported() {
        let mut f = fixture();
        let cert = vec![
            commit(&f.signers[0], 1, 1),
            commit(&f.signers[1], 1, 1),
            commit(&f.signers[1], 1, 1),
        ];
        assert_eq!(
            f.checker.check(ReplicaId(2), &committed(cert)),
            Err(Violation::DuplicateVote {
                kind: "COMMIT",
                replica: ReplicaId(2),
                seq: SeqNo(1),
                voter: ReplicaId(1)
            })
        );
    }

    #[test]
    fn fewer_than_a_quorum_is_reported() {
        let mut f = fixture();
        let cert = (0..2).map(|i| commit(&f.signers[i], 1, 1)).collect();
        assert_eq!(
            f.checker.check(ReplicaId(0), &committed(cert)),
            Err(Violation::ShortCertificate {
                kind: "COMMIT",
                replica: ReplicaId(0),
                seq: SeqNo(1),
                votes: 2,
                quorum: 3
            })
        );
    }

    #[test]
    fn a_commit_for_another_digest_or_seq_is_reported() {
        let mut f = fixture();
        let cert = vec![
            commit(&f.signers[0], 1, 1),
            commit(&f.signers[1], 1, 2),
            commit(&f.signers[2], 1, 1),
        ];
        assert!(matches!(
            f.checker.check(ReplicaId(0), &committed(cert)),
            Err(Violation::MismatchedVote {
                voter: ReplicaId(1),
                ..
            })
        ));
        let cert = vec![
            commit(&f.signers[0], 1, 1),
            commit(&f.signers[1], 1, 1),
            commit(&f.signers[2], 2, 1),
        ];
        assert!(matches!(
            f.checker.check(ReplicaId(0), &committed(cert)),
            Err(Violation::MismatchedVote {
                voter: ReplicaId(2),
                ..
            })
        ));
    }

    #[test]
    fn a_commit_signed_by_another_key_is_reported() {
        let mut f = fixture();
        // Replica 3 signs a COMMIT that claims to be replica 2's.
        let forged = Signer::new(Principal::Replica(ReplicaId(2)), f.signers[3].key().clone())
            .sign(Commit {
                view: View(0),
                seq: SeqNo(1),
                digest: Digest([1; 32]),
                replica: ReplicaId(2),
            });
        let cert = vec![
            commit(&f.signers[0], 1, 1),
            commit(&f.signers[1], 1, 1),
            forged,
        ];
        assert!(matches!(
            f.checker.check(ReplicaId(0), &committed(cert)),
            Err(Violation::ForgedVote {
                voter: ReplicaId(2),
                ..
            })
        ));
    }
}
