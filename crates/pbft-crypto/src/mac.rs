//! MAC authenticators for client requests and replies, as in the PBFT papers: a request carries one MAC per
//! replica, a reply one MAC for its client. A MAC costs two SHA-256 compressions on top of the body's digest,
//! against about 70 us of CPU for an ed25519 signature and its check.
//!
//! Every client shares a session key with every replica, derived from the ed25519 keys the cluster file already
//! lists, so no key exchange is needed: each side converts the other's public key to its X25519 (Montgomery)
//! form and multiplies it by its own secret scalar; both get the same point. HKDF turns that point into one key
//! per direction, bound to both ids and both public keys. Using one key pair for signatures and Diffie-Hellman
//! is the same construction as libsodium's `crypto_sign_ed25519_pk_to_curve25519`; it is shown to be sound by
//! Thormarker, "On using the same key pair for Ed25519 and an X25519 based KEM" (2021).
//!
//! The exact derivation and encoding are written in `proto/pbft.proto` (`SignedEnvelope`), for clients in other
//! languages.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use ed25519_dalek::VerifyingKey;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use pbft_types::{
    Body, ClientId, ClusterConfig, MAC_LEN, Principal, PublicKeyBytes, ReplicaId, Reply, Request,
    Signed, Timestamp,
};
use sha2::{Digest as _, Sha256};

use crate::keyring::{AuthError, KeyError};
use crate::signer::KeyPair;

type HmacSha256 = Hmac<Sha256>;

const SALT: &[u8] = b"pbft/mac/v1";

/// Prefixes what an `AwaitedReply`'s MAC covers, so that it can never pass for a request's MAC or the reverse.
const AWAITED_TAG: &[u8] = b"pbft/awaited/v1";

/// The two keys of one client-replica session, ready to MAC (the HMAC key schedule is done once, here).
#[derive(Clone)]
struct Session {
    request: HmacSha256,
    reply: HmacSha256,
}

/// One principal's session keys with the principals it talks to: a client's with every replica, a replica's
/// with every client of the cluster.
#[derive(Clone)]
pub struct SessionKeys {
    holder: Principal,
    n: usize,
    sessions: HashMap<Principal, Session>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SessionKeys({}, {} sessions)",
            self.holder,
            self.sessions.len()
        )
    }
}

fn parse(principal: Principal, bytes: &PublicKeyBytes) -> Result<VerifyingKey, KeyError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Invalid(principal))?;
    if key.is_weak() {
        return Err(KeyError::Weak(principal));
    }
    Ok(key)
}

/// The session of `client` and `replica`, computed by either end from its own key pair and the other's public key.
fn session(
    own: &KeyPair,
    other: &VerifyingKey,
    client: (ClientId, PublicKeyBytes),
    replica: (ReplicaId, PublicKeyBytes),
) -> Session {
    let shared = other
        .to_montgomery()
        .mul_clamped(own.signing_key().to_scalar_bytes());
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), shared.as_bytes());
    let key = |direction: &[u8]| {
        let mut info = Vec::with_capacity(direction.len() + 16 + 64);
        info.extend_from_slice(direction);
        info.extend_from_slice(&client.0.0.to_le_bytes());
        info.extend_from_slice(&replica.0.0.to_le_bytes());
        info.extend_from_slice(&client.1);
        info.extend_from_slice(&replica.1);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
        let expanded = hkdf.expand(&info, &mut okm);
        debug_assert!(expanded.is_ok());
        // HMAC takes keys of any length.
        HmacSha256::new_from_slice(&okm)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    };
    Session {
        request: key(b"request"),
        reply: key(b"reply"),
    }
}

/// The MAC of a body under one session key: HMAC-SHA256 over the body's SHA-256, truncated to MAC_LEN bytes.
fn mac(key: &HmacSha256, body_digest: &[u8; 32]) -> [u8; MAC_LEN] {
    let mut m = key.clone();
    m.update(body_digest);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

fn check(key: &HmacSha256, body_digest: &[u8; 32], tag: &[u8]) -> bool {
    let mut m = key.clone();
    m.update(body_digest);
    // Constant time, on the leftmost MAC_LEN bytes.
    m.verify_truncated_left(tag).is_ok()
}

/// What an `AwaitedReply` MAC is computed over (see `proto/pbft.proto`).
fn awaited_digest(client: ClientId, timestamp: Timestamp) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(AWAITED_TAG);
    hasher.update(client.0.to_le_bytes());
    hasher.update(timestamp.0.to_le_bytes());
    hasher.finalize().into()
}

impl SessionKeys {
    /// A client's sessions with every replica.
    pub fn for_client(
        config: &ClusterConfig,
        id: ClientId,
        key: &KeyPair,
    ) -> Result<SessionKeys, KeyError> {
        let own = (id, key.public_key());
        let sessions = config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, public)| {
                let replica = ReplicaId(i as u64);
                let other = parse(Principal::Replica(replica), public)?;
                let s = session(key, &other, own, (replica, *public));
                Ok((Principal::Replica(replica), s))
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(SessionKeys {
            holder: Principal::Client(id),
            n: config.n(),
            sessions,
        })
    }

    /// A replica's sessions with every client of the cluster.
    pub fn for_replica(
        config: &ClusterConfig,
        id: ReplicaId,
        key: &KeyPair,
    ) -> Result<SessionKeys, KeyError> {
        if id.index() >= config.n() {
            return Err(KeyError::NotInCluster(Principal::Replica(id)));
        }
        let own = (id, key.public_key());
        let sessions = config
            .clients
            .iter()
            .map(|c| {
                let other = parse(Principal::Client(c.id), &c.public_key)?;
                let s = session(key, &other, (c.id, c.public_key), own);
                Ok((Principal::Client(c.id), s))
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(SessionKeys {
            holder: Principal::Replica(id),
            n: config.n(),
            sessions,
        })
    }

    pub fn holder(&self) -> Principal {
        self.holder
    }

    /// Seals a request of the holding client with an authenticator: one MAC per replica, in replica order.
    ///
    /// # Panics
    /// If the holder is not the request's client: a bug in the caller, never a consequence of input.
    pub fn seal_request(&self, request: Request) -> Signed<Request> {
        assert_eq!(
            request.signer(),
            self.holder,
            "a client seals only its own requests"
        );
        let body = request.encode_body();
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let mut authenticator = BytesMut::with_capacity(self.n * MAC_LEN);
        for i in 0..self.n {
            let session = &self.sessions[&Principal::Replica(ReplicaId(i as u64))];
            authenticator.put_slice(&mac(&session.request, &digest));
        }
        Signed::from_authenticated_parts(body, authenticator.freeze(), request)
    }

    /// Seals the holding replica's reply to a client with the MAC of their session, or says the client is not
    /// one this replica shares a session with.
    pub fn seal_reply(&self, reply: Reply) -> Result<Signed<Reply>, AuthError> {
        let client = Principal::Client(reply.client);
        let session = self
            .sessions
            .get(&client)
            .ok_or(AuthError::UnknownSigner(client))?;
        let body = reply.encode_body();
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let tag = mac(&session.reply, &digest);
        Ok(Signed::from_authenticated_parts(
            body,
            Bytes::copy_from_slice(&tag),
            reply,
        ))
    }

    /// The MAC with which the holding client asks `replica` for its reply to the client's request `timestamp`
    /// (an `AwaitedReply`), or None if the holder is not a client or `replica` is not in its cluster.
    pub fn awaited_mac(&self, replica: ReplicaId, timestamp: Timestamp) -> Option<[u8; MAC_LEN]> {
        let Principal::Client(client) = self.holder else {
            return None;
        };
        let session = self.sessions.get(&Principal::Replica(replica))?;
        Some(mac(&session.request, &awaited_digest(client, timestamp)))
    }

    /// Checks, at the holding replica, that `client` itself asked for the reply to its request `timestamp`.
    pub fn check_awaited(
        &self,
        client: ClientId,
        timestamp: Timestamp,
        tag: &[u8],
    ) -> Result<(), AuthError> {
        let sender = Principal::Client(client);
        let session = match self.holder {
            Principal::Replica(_) => self.sessions.get(&sender),
            Principal::Client(_) => None,
        }
        .ok_or(AuthError::UnknownSigner(sender))?;
        if tag.len() != MAC_LEN {
            return Err(AuthError::BadAuthenticatorLength {
                sender,
                got: tag.len(),
                expected: MAC_LEN,
            });
        }
        if check(&session.request, &awaited_digest(client, timestamp), tag) {
            Ok(())
        } else {
            Err(AuthError::BadMac(sender))
        }
    }

    /// Checks the holder's entry of an authenticator sent by `sender`: at a replica, a request's entry for this
    /// replica (the authenticator must hold exactly n MACs); at a client, a reply's single MAC.
    pub(crate) fn check(
        &self,
        sender: Principal,
        body_digest: &[u8; 32],
        authenticator: &[u8],
    ) -> Result<(), AuthError> {
        let session = self
            .sessions
            .get(&sender)
            .ok_or(AuthError::UnknownSigner(sender))?;
        let (key, tag) = match (self.holder, sender) {
            (Principal::Replica(me), Principal::Client(_)) => {
                if authenticator.len() != self.n * MAC_LEN {
                    return Err(AuthError::BadAuthenticatorLength {
                        sender,
                        got: authenticator.len(),
                        expected: self.n * MAC_LEN,
                    });
                }
                let at = me.index() * MAC_LEN;
                (&session.request, &authenticator[at..at + MAC_LEN])
            }
            (Principal::Client(_), Principal::Replica(_)) => {
                if authenticator.len() != MAC_LEN {
                    return Err(AuthError::BadAuthenticatorLength {
                        sender,
                        got: authenticator.len(),
                        expected: MAC_LEN,
                    });
                }
                (&session.reply, authenticator)
            }
            // Sessions only join a client and a replica, so no other pair has one (refused above).
            _ => return Err(AuthError::UnknownSigner(sender)),
        };
        if check(key, body_digest, tag) {
            Ok(())
        } else {
            Err(AuthError::BadMac(sender))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keyring;
    use pbft_types::{ClientInfo, Params, Seal, Timestamp, View};

    struct Cluster {
        config: ClusterConfig,
        replicas: Vec<KeyPair>,
        clients: Vec<KeyPair>,
    }

    fn cluster(n: u8) -> Cluster {
        let replicas: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let clients: Vec<KeyPair> = (0..2).map(|i| KeyPair::from_seed([200 + i; 32])).collect();
        let config = ClusterConfig {
            replicas: replicas.iter().map(KeyPair::public_key).collect(),
            clients: clients
                .iter()
                .enumerate()
                .map(|(i, k)| ClientInfo {
                    id: ClientId(i as u64 + 1),
                    public_key: k.public_key(),
                })
                .collect(),
            params: Params::default(),
        };
        Cluster {
            config,
            replicas,
            clients,
        }
    }

    impl Cluster {
        fn client(&self, i: usize) -> SessionKeys {
            SessionKeys::for_client(&self.config, ClientId(i as u64 + 1), &self.clients[i]).unwrap()
        }
        fn replica(&self, i: usize) -> SessionKeys {
            SessionKeys::for_replica(&self.config, ReplicaId(i as u64), &self.replicas[i]).unwrap()
        }
        /// What replica `i` accepts.
        fn replica_keyring(&self, i: usize) -> Keyring {
            Keyring::new(&self.config)
                .unwrap()
                .with_sessions(self.replica(i))
        }
        fn client_keyring(&self, i: usize) -> Keyring {
            Keyring::new(&self.config)
                .unwrap()
                .with_sessions(self.client(i))
        }
    }

    fn request(client: u64, ts: u64) -> Request {
        Request {
            client: ClientId(client),
            timestamp: Timestamp(ts),
            operation: Bytes::from_static(b"put x 1"),
        }
    }

    fn reply(replica: u64, client: u64) -> Reply {
        Reply {
            view: View(0),
            timestamp: Timestamp(7),
            client: ClientId(client),
            replica: ReplicaId(replica),
            result: Bytes::from_static(b"ok"),
        }
    }

    fn authenticator(signed: &Signed<impl Body>) -> Bytes {
        match signed.seal() {
            Seal::Authenticator(a) => a.clone(),
            other => panic!("not sealed with an authenticator: {other:?}"),
        }
    }

    #[test]
    fn every_replica_accepts_its_entry_of_a_clients_authenticator() {
        for n in [4u8, 7] {
            let c = cluster(n);
            let sealed = c.client(0).seal_request(request(1, 1));
            assert_eq!(authenticator(&sealed).len(), n as usize * MAC_LEN);
            for i in 0..n as usize {
                c.replica_keyring(i).verify_request(sealed.clone()).unwrap();
            }
        }
    }

    #[test]
    fn a_sealed_request_survives_the_wire() {
        let c = cluster(4);
        let sealed = c.client(0).seal_request(request(1, 1));
        let decoded = Signed::<Request>::decode(&sealed.encode(), 1 << 20).unwrap();
        assert_eq!(decoded, sealed);
        c.replica_keyring(3).verify_request(decoded).unwrap();
    }

    #[test]
    fn a_changed_body_or_mac_is_refused() {
        let c = cluster(4);
        let sealed = c.client(0).seal_request(request(1, 1));
        let auth = authenticator(&sealed);
        // Another body under the same authenticator.
        let other = request(1, 2);
        let moved = Signed::from_authenticated_parts(other.encode_body(), auth.clone(), other);
        assert_eq!(
            c.replica_keyring(0).verify_request(moved),
            Err(AuthError::BadMac(Principal::Client(ClientId(1))))
        );
        // Every bit of replica 2's entry matters; the other entries are not its concern.
        for byte in 0..auth.len() {
            let mut bad = auth.to_vec();
            bad[byte] ^= 1;
            let tampered = Signed::from_authenticated_parts(
                sealed.body().clone(),
                Bytes::from(bad),
                request(1, 1),
            );
            let result = c.replica_keyring(2).verify_request(tampered);
            if (2 * MAC_LEN..3 * MAC_LEN).contains(&byte) {
                assert!(result.is_err(), "byte {byte}");
            } else {
                assert!(result.is_ok(), "byte {byte}");
            }
        }
        // Entries in the wrong places.
        let mut swapped = auth.to_vec();
        swapped.rotate_left(MAC_LEN);
        let swapped = Signed::from_authenticated_parts(
            sealed.body().clone(),
            Bytes::from(swapped),
            request(1, 1),
        );
        assert!(c.replica_keyring(1).verify_request(swapped).is_err());
    }

    #[test]
    fn an_authenticator_of_the_wrong_size_is_refused() {
        let c = cluster(4);
        let sealed = c.client(0).seal_request(request(1, 1));
        let auth = authenticator(&sealed);
        let short = Signed::from_authenticated_parts(
            sealed.body().clone(),
            auth.slice(..3 * MAC_LEN),
            request(1, 1),
        );
        assert_eq!(
            c.replica_keyring(0).verify_request(short),
            Err(AuthError::BadAuthenticatorLength {
                sender: Principal::Client(ClientId(1)),
                got: 3 * MAC_LEN,
                expected: 4 * MAC_LEN,
            })
        );
    }

    #[test]
    fn a_client_cannot_seal_for_another() {
        let c = cluster(4);
        // Client 2's keys over a request that names client 1: its MACs are under the wrong sessions.
        let other = c.client(1);
        let sealed = SessionKeys {
            holder: Principal::Client(ClientId(1)),
            ..other
        }
        .seal_request(request(1, 1));
        assert_eq!(
            c.replica_keyring(0).verify_request(sealed),
            Err(AuthError::BadMac(Principal::Client(ClientId(1))))
        );
    }

    #[test]
    fn without_session_keys_only_signatures_are_accepted() {
        let c = cluster(4);
        let sealed = c.client(0).seal_request(request(1, 1));
        let plain = Keyring::new(&c.config).unwrap();
        assert_eq!(
            plain.verify_request(sealed),
            Err(AuthError::MacsNotAccepted(Principal::Client(ClientId(1))))
        );
        // A signed request still passes a keyring that has sessions.
        let signed = c.clients[0].sign(request(1, 1));
        c.replica_keyring(0).verify_request(signed).unwrap();
    }

    #[test]
    fn a_request_of_an_unknown_client_is_refused() {
        let c = cluster(4);
        let stranger = KeyPair::from_seed([77; 32]);
        let mut config = c.config.clone();
        config.clients.push(ClientInfo {
            id: ClientId(9),
            public_key: stranger.public_key(),
        });
        let keys = SessionKeys::for_client(&config, ClientId(9), &stranger).unwrap();
        let sealed = keys.seal_request(request(9, 1));
        assert_eq!(
            c.replica_keyring(0).verify_request(sealed),
            Err(AuthError::UnknownSigner(Principal::Client(ClientId(9))))
        );
    }

    #[test]
    fn a_reply_is_accepted_by_its_client_only() {
        let c = cluster(4);
        let sealed = c.replica(2).seal_reply(reply(2, 1)).unwrap();
        assert_eq!(authenticator(&sealed).len(), MAC_LEN);
        let decoded = Signed::<Reply>::decode(&sealed.encode(), 1 << 20).unwrap();
        c.client_keyring(0).verify(decoded.clone()).unwrap();
        // Client 2 shares another key with replica 2.
        assert_eq!(
            c.client_keyring(1).verify(decoded),
            Err(AuthError::BadMac(Principal::Replica(ReplicaId(2))))
        );
        // Replica 1 claiming replica 2's reply: its MAC is under its own session.
        let mut forged = reply(2, 1);
        forged.result = Bytes::from_static(b"forged");
        let by_other = c.replica(1).seal_reply(forged).unwrap();
        assert!(c.client_keyring(0).verify(by_other).is_err());
    }

    #[test]
    fn a_replica_cannot_pass_a_mac_to_another_replica() {
        // Replica keys hold sessions with clients only: a MAC-sealed reply offered to a replica is refused.
        let c = cluster(4);
        let sealed = c.replica(2).seal_reply(reply(2, 1)).unwrap();
        assert!(c.replica_keyring(0).verify(sealed).is_err());
    }

    /// Client 1's request sealed by it, and the same with replica 3's MAC spoiled.
    fn spoiled_for_replica_3(c: &Cluster) -> (Signed<Request>, Signed<Request>) {
        let sealed = c.client(0).seal_request(request(1, 1));
        let mut auth = authenticator(&sealed).to_vec();
        auth[3 * MAC_LEN] ^= 1;
        let spoiled = Signed::from_authenticated_parts(
            sealed.body().clone(),
            Bytes::from(auth),
            request(1, 1),
        );
        (sealed, spoiled)
    }

    #[test]
    fn a_certified_batch_is_taken_even_with_this_replicas_entry_spoiled_but_not_malformed() {
        let c = cluster(4);
        let (sealed, spoiled) = spoiled_for_replica_3(&c);
        // Replica 3 refuses it from the client...
        assert!(
            c.replica_keyring(3)
                .verify_request(spoiled.clone())
                .is_err()
        );
        // ... but takes it in a batch that q replicas prepared.
        let taken = c
            .replica_keyring(3)
            .verify_certified_requests(vec![spoiled.clone()])
            .unwrap();
        assert_eq!(taken[0].signed(), &spoiled);
        // The shape is still checked, and a cluster of signatures takes no MACs at all.
        let short = Signed::from_authenticated_parts(
            sealed.body().clone(),
            authenticator(&sealed).slice(..MAC_LEN),
            request(1, 1),
        );
        assert!(matches!(
            c.replica_keyring(3).verify_certified_requests(vec![short]),
            Err(AuthError::BadRequestInBatch { index: 0, .. })
        ));
        let plain = Keyring::new(&c.config).unwrap();
        assert!(plain.verify_certified_requests(vec![spoiled]).is_err());
        // Signed requests in such a batch are verified as always.
        let forged = Signed::from_parts(sealed.body().clone(), [7; 64], request(1, 1));
        let good = c
            .replica_keyring(3)
            .verify_certified_requests(vec![c.clients[0].sign(request(1, 2)), forged]);
        assert!(matches!(
            good,
            Err(AuthError::BadRequestInBatch { index: 1, .. })
        ));
    }

    #[test]
    fn a_spoiled_entry_is_held_unvouched_in_a_pre_prepare_but_taken_in_a_batch_data() {
        use pbft_types::{BatchData, Digest, PrePrepare, ReplicaMsg, SeqNo};
        let c = cluster(4);
        let (_, spoiled) = spoiled_for_replica_3(&c);
        let digest = Digest([5; 32]);
        let pre_prepare = ReplicaMsg::PrePrepare {
            header: c.replicas[0].sign(PrePrepare {
                view: View(0),
                seq: SeqNo(1),
                digest,
                replica: ReplicaId(0),
            }),
            batch: vec![spoiled.clone()],
        };
        // Held until f backups vouch for it (see `vouch`).
        assert!(matches!(
            c.replica_keyring(3)
                .verify_replica_msg(ReplicaId(0), pre_prepare),
            Ok(crate::VerifiedMsg::UnvouchedPrePrepare(_))
        ));
        // The answer to FETCH-BATCH: the core takes it only for a digest a NEW-VIEW assigned.
        let batch_data = ReplicaMsg::BatchData {
            header: c.replicas[1].sign(BatchData {
                seq: SeqNo(1),
                digest,
                replica: ReplicaId(1),
            }),
            batch: vec![spoiled],
        };
        assert!(
            c.replica_keyring(3)
                .verify_replica_msg(ReplicaId(1), batch_data)
                .is_ok()
        );
    }

    #[test]
    fn an_awaited_reply_is_asked_for_by_its_client_only() {
        let c = cluster(4);
        let client = c.client(0);
        let ts = Timestamp(9);
        for i in 0..4 {
            let tag = client.awaited_mac(ReplicaId(i as u64), ts).unwrap();
            c.replica(i).check_awaited(ClientId(1), ts, &tag).unwrap();
            // Bound to the replica, the timestamp and the client.
            let other = (i + 1) % 4;
            assert_eq!(
                c.replica(other).check_awaited(ClientId(1), ts, &tag),
                Err(AuthError::BadMac(Principal::Client(ClientId(1))))
            );
            assert!(
                c.replica(i)
                    .check_awaited(ClientId(1), Timestamp(10), &tag)
                    .is_err()
            );
            assert!(c.replica(i).check_awaited(ClientId(2), ts, &tag).is_err());
            assert!(matches!(
                c.replica(i).check_awaited(ClientId(1), ts, &tag[..8]),
                Err(AuthError::BadAuthenticatorLength { .. })
            ));
            assert_eq!(
                c.replica(i).check_awaited(ClientId(77), ts, &tag),
                Err(AuthError::UnknownSigner(Principal::Client(ClientId(77))))
            );
        }
        // Neither a replica nor a client checks with the other's role, and no replica outside the cluster has one.
        assert!(c.replica(0).awaited_mac(ReplicaId(0), ts).is_none());
        assert!(client.awaited_mac(ReplicaId(4), ts).is_none());
        let tag = client.awaited_mac(ReplicaId(0), ts).unwrap();
        assert!(c.client(1).check_awaited(ClientId(1), ts, &tag).is_err());
    }

    #[test]
    fn a_requests_mac_does_not_pass_for_an_awaited_reply() {
        let c = cluster(4);
        let sealed = c.client(0).seal_request(request(1, 5));
        let entry = &authenticator(&sealed)[..MAC_LEN];
        assert!(
            c.replica(0)
                .check_awaited(ClientId(1), Timestamp(5), entry)
                .is_err()
        );
    }

    #[test]
    fn a_replica_id_outside_the_cluster_has_no_sessions() {
        let c = cluster(4);
        assert_eq!(
            SessionKeys::for_replica(&c.config, ReplicaId(4), &c.replicas[0]).unwrap_err(),
            KeyError::NotInCluster(Principal::Replica(ReplicaId(4)))
        );
    }
}
