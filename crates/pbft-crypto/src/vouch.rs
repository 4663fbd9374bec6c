//! A PRE-PREPARE this replica cannot fully check, and how other replicas' PREPAREs vouch for it.
//!
//! With MAC authenticators each replica can check only its own MAC of a request. A client that spoils one
//! replica's entry makes that replica unable to accept a PRE-PREPARE the others accept; with f replicas down as
//! well, too few remain to commit it. As in Castro's thesis, the replica holds such a PRE-PREPARE and takes it
//! once f backups other than the primary sent matching PREPAREs: with the primary that makes f+1 replicas, at
//! least one of them correct, and a correct replica prepares only requests it checked (itself, or by the same
//! rule). Fewer would let a faulty primary and f-1 faulty backups slip a forged request past a correct replica.

use std::collections::BTreeSet;

use pbft_types::{PrePrepare, Prepare, ReplicaId, Request, Signed};
use thiserror::Error;

use crate::digest::batch_digest;
use crate::verified::Verified;

/// A PRE-PREPARE whose header signature verified and whose requests are all well formed (signed ones verified,
/// MAC-sealed ones from a known client with one MAC per replica), but where the verifying replica's own MAC of
/// some MAC-sealed request did not verify. Only the keyring makes one; `vouch` turns it into a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unvouched {
    header: Verified<PrePrepare>,
    batch: Vec<Signed<Request>>,
    /// The replica whose own MACs failed: its PREPARE would vouch for nothing it checked.
    verifier: ReplicaId,
    /// f of the cluster, taken from the keyring so that no caller can lower it.
    f: usize,
}

/// Why the PREPAREs offered do not vouch for an `Unvouched` PRE-PREPARE (yet).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum VouchError {
    #[error("the batch's digest is not the one the PRE-PREPARE names")]
    BatchDigestMismatch,
    #[error("{got} backups vouch for the batch, {needed} needed")]
    TooFewVouchers { got: usize, needed: usize },
}

impl Unvouched {
    pub(crate) fn new(
        header: Verified<PrePrepare>,
        batch: Vec<Signed<Request>>,
        verifier: ReplicaId,
        f: usize,
    ) -> Unvouched {
        Unvouched {
            header,
            batch,
            verifier,
            f,
        }
    }

    pub fn header(&self) -> &Verified<PrePrepare> {
        &self.header
    }

    /// The requests as they arrived: not authenticated for this replica, so for sizes and digests only.
    pub fn requests(&self) -> &[Signed<Request>] {
        &self.batch
    }

    /// How many backups must vouch: f.
    pub fn needed(&self) -> usize {
        self.f
    }

    /// The batch as authentic requests, if `prepares` hold f PREPAREs for the header's view, sequence number
    /// and digest from distinct replicas, none of them the PRE-PREPARE's signer (the primary, whose vote the
    /// PRE-PREPARE already is) nor the verifier. PREPAREs that do not qualify are not counted.
    pub fn vouch<'a>(
        &self,
        prepares: impl IntoIterator<Item = &'a Verified<Prepare>>,
    ) -> Result<Vec<Verified<Request>>, VouchError> {
        let header = &self.header;
        if batch_digest(&self.batch) != header.digest {
            return Err(VouchError::BatchDigestMismatch);
        }
        let vouchers: BTreeSet<ReplicaId> = prepares
            .into_iter()
            .filter(|p| {
                p.view == header.view
                    && p.seq == header.seq
                    && p.digest == header.digest
                    && p.replica != header.replica
                    && p.replica != self.verifier
            })
            .map(|p| p.replica)
            .collect();
        if vouchers.len() < self.f {
            return Err(VouchError::TooFewVouchers {
                got: vouchers.len(),
                needed: self.f,
            });
        }
        Ok(self.batch.iter().cloned().map(Verified::new).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyPair;
    use crate::{AuthError, Keyring, SessionKeys, VerifiedMsg};
    use bytes::Bytes;
    use pbft_types::{
        ClientId, ClientInfo, ClusterConfig, Digest, MAC_LEN, Params, ReplicaMsg, Seal, SeqNo,
        Timestamp, View,
    };

    /// Seven replicas (f = 2); replica 0 is the primary and replica 3 the one whose MAC the client spoils.
    struct Setup {
        replicas: Vec<KeyPair>,
        config: ClusterConfig,
        client: SessionKeys,
    }

    const VICTIM: u64 = 3;

    fn setup() -> Setup {
        let replicas: Vec<KeyPair> = (0..7).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let client_key = KeyPair::from_seed([90; 32]);
        let config = ClusterConfig {
            replicas: replicas.iter().map(KeyPair::public_key).collect(),
            clients: vec![ClientInfo {
                id: ClientId(1),
                public_key: client_key.public_key(),
            }],
            params: Params::default(),
        };
        let client = SessionKeys::for_client(&config, ClientId(1), &client_key).unwrap();
        Setup {
            replicas,
            config,
            client,
        }
    }

    impl Setup {
        fn keyring_of(&self, replica: u64) -> Keyring {
            let id = ReplicaId(replica);
            let keys = SessionKeys::for_replica(&self.config, id, &self.replicas[replica as usize])
                .unwrap();
            Keyring::new(&self.config).unwrap().with_sessions(keys)
        }

        /// A request of the client with the victim's MAC spoiled.
        fn spoiled(&self, ts: u64) -> Signed<Request> {
            let request = Request {
                client: ClientId(1),
                timestamp: Timestamp(ts),
                operation: Bytes::from_static(b"put x 1"),
            };
            let sealed = self.client.seal_request(request.clone());
            let Seal::Authenticator(auth) = sealed.seal() else {
                panic!("sealed with MACs")
            };
            let mut auth = auth.to_vec();
            auth[VICTIM as usize * MAC_LEN] ^= 1;
            Signed::from_authenticated_parts(sealed.body().clone(), auth.into(), request)
        }

        fn pre_prepare(&self, digest: Digest, batch: Vec<Signed<Request>>) -> ReplicaMsg {
            ReplicaMsg::PrePrepare {
                header: self.replicas[0].sign(PrePrepare {
                    view: View(0),
                    seq: SeqNo(1),
                    digest,
                    replica: ReplicaId(0),
                }),
                batch,
            }
        }

        /// The PRE-PREPARE of `batch` (under its own digest) as the victim's keyring returns it.
        fn held(&self, batch: Vec<Signed<Request>>) -> Unvouched {
            let digest = batch_digest(&batch);
            self.held_with_digest(digest, batch)
        }

        fn held_with_digest(&self, digest: Digest, batch: Vec<Signed<Request>>) -> Unvouched {
            let msg = self.pre_prepare(digest, batch);
            match self
                .keyring_of(VICTIM)
                .verify_replica_msg(ReplicaId(0), msg)
            {
                Ok(VerifiedMsg::UnvouchedPrePrepare(held)) => held,
                other => panic!("expected an unvouched PRE-PREPARE, got {other:?}"),
            }
        }

        fn prepare(&self, signer: u64, view: u64, seq: u64, digest: Digest) -> Verified<Prepare> {
            let signed = self.replicas[signer as usize].sign(Prepare {
                view: View(view),
                seq: SeqNo(seq),
                digest,
                replica: ReplicaId(signer),
            });
            Keyring::new(&self.config).unwrap().verify(signed).unwrap()
        }

        /// PREPAREs for the held PRE-PREPARE (view 0, sequence 1, its digest) from `signers`.
        fn prepares(&self, held: &Unvouched, signers: &[u64]) -> Vec<Verified<Prepare>> {
            let digest = held.header().digest;
            signers
                .iter()
                .map(|s| self.prepare(*s, 0, 1, digest))
                .collect()
        }
    }

    #[test]
    fn f_prepares_from_backups_other_than_the_primary_vouch_for_the_batch() {
        let s = setup();
        let batch = vec![s.spoiled(1), s.spoiled(2)];
        let held = s.held(batch.clone());
        assert_eq!(held.needed(), 2);
        let taken = held.vouch(&s.prepares(&held, &[1, 5])).unwrap();
        let signed: Vec<_> = taken.into_iter().map(Verified::into_signed).collect();
        assert_eq!(signed, batch);
        // More than f, and ones that do not count among them, change nothing.
        assert!(held.vouch(&s.prepares(&held, &[0, 1, 2, 6])).is_ok());
    }

    #[test]
    fn f_minus_one_prepares_are_refused() {
        let s = setup();
        let held = s.held(vec![s.spoiled(1)]);
        assert_eq!(
            held.vouch(&s.prepares(&held, &[1])),
            Err(VouchError::TooFewVouchers { got: 1, needed: 2 })
        );
        assert_eq!(
            held.vouch([]),
            Err(VouchError::TooFewVouchers { got: 0, needed: 2 })
        );
    }

    #[test]
    fn the_primarys_prepare_does_not_count() {
        let s = setup();
        let held = s.held(vec![s.spoiled(1)]);
        // The primary already vouches by its PRE-PREPARE: f + 1 replicas must include f others.
        assert_eq!(
            held.vouch(&s.prepares(&held, &[0, 1])),
            Err(VouchError::TooFewVouchers { got: 1, needed: 2 })
        );
    }

    #[test]
    fn the_verifiers_own_prepare_does_not_count() {
        let s = setup();
        let held = s.held(vec![s.spoiled(1)]);
        assert_eq!(
            held.vouch(&s.prepares(&held, &[VICTIM, 1])),
            Err(VouchError::TooFewVouchers { got: 1, needed: 2 })
        );
    }

    #[test]
    fn one_replica_counts_once() {
        let s = setup();
        let held = s.held(vec![s.spoiled(1)]);
        assert_eq!(
            held.vouch(&s.prepares(&held, &[1, 1, 1])),
            Err(VouchError::TooFewVouchers { got: 1, needed: 2 })
        );
    }

    #[test]
    fn prepares_for_another_view_sequence_or_digest_do_not_count() {
        let s = setup();
        let held = s.held(vec![s.spoiled(1)]);
        let digest = held.header().digest;
        let good = s.prepare(1, 0, 1, digest);
        for other in [
            s.prepare(2, 1, 1, digest),
            s.prepare(2, 0, 2, digest),
            s.prepare(2, 0, 1, Digest([9; 32])),
        ] {
            assert_eq!(
                held.vouch([&good, &other]),
                Err(VouchError::TooFewVouchers { got: 1, needed: 2 }),
                "{:?}",
                *other
            );
        }
        assert!(held.vouch([&good, &s.prepare(2, 0, 1, digest)]).is_ok());
    }

    #[test]
    fn a_batch_that_is_not_the_headers_is_refused_however_many_vouch() {
        let s = setup();
        let claimed = Digest([4; 32]);
        let held = s.held_with_digest(claimed, vec![s.spoiled(1)]);
        let prepares: Vec<_> = (1..7).map(|r| s.prepare(r, 0, 1, claimed)).collect();
        assert_eq!(held.vouch(&prepares), Err(VouchError::BatchDigestMismatch));
    }

    #[test]
    fn only_a_wrong_own_mac_makes_a_pre_prepare_unvouched() {
        let s = setup();
        let victim = s.keyring_of(VICTIM);
        let spoiled = s.spoiled(1);
        let verify = |batch: Vec<Signed<Request>>| {
            victim.verify_replica_msg(ReplicaId(0), s.pre_prepare(batch_digest(&batch), batch))
        };
        // Every other replica checks its own MAC, which is right.
        let other = s.keyring_of(1).verify_replica_msg(
            ReplicaId(0),
            s.pre_prepare(batch_digest([&spoiled]), vec![spoiled.clone()]),
        );
        assert!(matches!(other, Ok(VerifiedMsg::PrePrepare { .. })));
        assert!(matches!(
            verify(vec![spoiled.clone()]),
            Ok(VerifiedMsg::UnvouchedPrePrepare(_))
        ));
        // Malformed requests still fail the whole PRE-PREPARE: a short authenticator, or a forged signature.
        let Seal::Authenticator(auth) = spoiled.seal() else {
            panic!("sealed with MACs")
        };
        let short = Signed::from_authenticated_parts(
            spoiled.body().clone(),
            auth.slice(..MAC_LEN),
            spoiled.value().clone(),
        );
        assert!(matches!(
            verify(vec![spoiled.clone(), short]),
            Err(AuthError::BadRequestInBatch { index: 1, .. })
        ));
        let forged = Signed::from_parts(spoiled.body().clone(), [7; 64], spoiled.value().clone());
        assert!(matches!(
            verify(vec![spoiled.clone(), forged]),
            Err(AuthError::BadRequestInBatch { index: 1, .. })
        ));
        // A keyring that takes no MACs takes none unvouched either.
        let plain = Keyring::new(&s.config).unwrap();
        assert!(matches!(
            plain.verify_replica_msg(
                ReplicaId(0),
                s.pre_prepare(batch_digest([&spoiled]), vec![spoiled])
            ),
            Err(AuthError::BadRequestInBatch { index: 0, .. })
        ));
    }
}
