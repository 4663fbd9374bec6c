//! The commit certificate of every committed batch: q COMMITs for its (view, seq, digest), from q distinct
//! replicas, each with a signature that verifies. A core that counts one replica's vote twice, or commits on
//! fewer than q votes, hands over a certificate that fails here.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use pbft_core::Committed;
use pbft_crypto::Keyring;
use pbft_types::{ReplicaId, SignatureBytes};

use crate::violation::Violation;

pub struct CertificateChecker {
    keyring: Keyring,
    quorum: usize,
    /// COMMITs whose signature already verified, by exact signed bytes and signature: every replica's certificate
    /// for a sequence number holds mostly the same COMMITs, and checking each once is enough.
    verified: HashSet<(Bytes, SignatureBytes)>,
}

impl CertificateChecker {
    pub fn new(keyring: Keyring, quorum: usize) -> CertificateChecker {
        CertificateChecker {
            keyring,
            quorum,
            verified: HashSet::new(),
        }
    }

    /// Checks the certificate `replica` produced for `committed`.
    pub fn check(&mut self, replica: ReplicaId, committed: &Committed) -> Result<(), Violation> {
        let seq = committed.seq;
        let mut voters = BTreeSet::new();
        for vote in &committed.certificate {
            if (vote.view, vote.seq, vote.digest) != (committed.view, seq, committed.digest) {
                return Err(Violation::MismatchedVote {
                    replica,
                    view: committed.view,
                    seq,
                    digest: committed.digest,
                    voter: vote.replica,
                    vote_view: vote.view,
                    vote_seq: vote.seq,
                    vote_digest: vote.digest,
                });
            }
            if !voters.insert(vote.replica) {
                return Err(Violation::DuplicateVote {
                    replica,
                    seq,
                    voter: vote.replica,
                });
            }
            let signed = vote.signed();
            let key = (signed.body().clone(), *signed.signature());
            if !self.verified.contains(&key) {
                self.keyring
                    .verify(signed.clone())
                    .map_err(|e| Violation::ForgedVote {
                        replica,
                        seq,
                        voter: vote.replica,
                        reason: e.to_string(),
                    })?;
                self.verified.insert(key);
            }
        }
        if voters.len() < self.quorum {
            return Err(Violation::ShortCertificate {
                replica,
                seq,
                votes: voters.len(),
                quorum: self.quorum,
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
    use pbft_types::{ClusterConfig, Commit, Digest, Params, Principal, SeqNo, View};

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
            checker: CertificateChecker::new(keyring, config.quorum()),
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

    fn committed(certificate: Vec<Verified<Commit>>) -> Committed {
        Committed {
            seq: SeqNo(1),
            view: View(0),
            digest: Digest([1; 32]),
            batch: Arc::from(Vec::new()),
            results: Vec::new(),
            certificate,
        }
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
