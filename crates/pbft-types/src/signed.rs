//! `Signed<T>`: a message together with the exact bytes its seal covers.
//!
//! The seal is an ed25519 signature, or, for a client's request and a replica's reply to it, a MAC authenticator
//! (see `pbft-crypto`'s `mac` module). A `Signed<T>` proves nothing by itself: anyone can build one. Only
//! `pbft-crypto` turns it into a `Verified<T>`, after checking the seal against the sender's keys.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::error::DecodeError;
use crate::message::{Body, kind_name};
use crate::wire;

/// An ed25519 signature, as its 64 encoded bytes.
pub type SignatureBytes = [u8; 64];

/// The length of one MAC in an authenticator: HMAC-SHA256 truncated to 128 bits.
pub const MAC_LEN: usize = 16;

/// The most MACs an authenticator may hold (one per replica); anything longer is refused before it is used.
pub const MAX_AUTHENTICATOR_MACS: usize = 1024;

/// What authenticates a message's body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seal {
    /// An ed25519 signature by the sender: anyone with the cluster's public keys can check it.
    Signature(SignatureBytes),
    /// MAC_LEN-byte MACs, one per receiver that shares a session key with the sender: a request's authenticator
    /// holds one per replica (entry i for replica i), a reply's holds one, for its client. Only a receiver can
    /// check its own entry, so an authenticated message convinces nobody else.
    Authenticator(Bytes),
    /// None of its own: the replica-to-replica connection it arrived on authenticates it (mutually authenticated
    /// TLS, whose records carry MACs under the session's keys). Only for a COMMIT, in a cluster whose
    /// `replica_auth` is "macs"; it convinces its receiver, who knows which peer sent it, and nobody else.
    Link,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    body: Bytes,
    seal: Seal,
    value: T,
    body_digest: BodyDigest,
}

/// The SHA-256 of a `Signed`'s body, computed at most once: a request's MAC check and the digest of every batch
/// it travels in both need it, and on a busy replica recomputing it was 2 to 3% of the CPU. It is a function of
/// the body, so it never makes two `Signed`s differ.
#[derive(Clone, Default)]
struct BodyDigest(OnceLock<[u8; 32]>);

impl PartialEq for BodyDigest {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for BodyDigest {}

impl fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
    }
}

impl<T: Body> Signed<T> {
    /// Pairs a value with the bytes it was encoded to and a signature over them. Used by the signer, which
    /// encodes the value itself, and by decoding.
    pub fn from_parts(body: Bytes, signature: SignatureBytes, value: T) -> Self {
        Signed {
            body,
            seal: Seal::Signature(signature),
            value,
            body_digest: BodyDigest::default(),
        }
    }

    /// Pairs a value with the bytes it was encoded to and a MAC authenticator over them.
    pub fn from_authenticated_parts(body: Bytes, authenticator: Bytes, value: T) -> Self {
        Signed {
            body,
            seal: Seal::Authenticator(authenticator),
            value,
            body_digest: BodyDigest::default(),
        }
    }

    /// The holder's own message, sealed by nothing but the connection it will travel on (see `Seal::Link`).
    pub fn link_sealed(body: Bytes, value: T) -> Self {
        Signed {
            body,
            seal: Seal::Link,
            value,
            body_digest: BodyDigest::default(),
        }
    }

    /// Decodes an envelope received from the network. The seal is not checked here, only its shape: at most one
    /// of a 64-byte signature or a non-empty authenticator of whole MACs, an authenticator only on the kinds of
    /// message that may carry one (requests and replies), and neither only on those that may travel unsealed
    /// (commits).
    pub fn from_envelope(envelope: wire::SignedEnvelope) -> Result<Self, DecodeError> {
        let body = wire::SignedBody::decode(envelope.body.clone())?;
        let kind = body.kind.ok_or(DecodeError::Missing("kind"))?;
        let seal = match (
            envelope.signature.is_empty(),
            envelope.authenticator.is_empty(),
        ) {
            (false, true) => Seal::Signature(
                <SignatureBytes>::try_from(envelope.signature.as_ref()).map_err(|_| {
                    DecodeError::BadLength {
                        field: "signature",
                        expected: 64,
                        got: envelope.signature.len(),
                    }
                })?,
            ),
            (true, false) => {
                if !T::MAY_CARRY_AUTHENTICATOR {
                    return Err(DecodeError::AuthenticatorNotAllowed(kind_name(&kind)));
                }
                let len = envelope.authenticator.len();
                if !len.is_multiple_of(MAC_LEN) || len / MAC_LEN > MAX_AUTHENTICATOR_MACS {
                    return Err(DecodeError::BadAuthenticator(len));
                }
                Seal::Authenticator(envelope.authenticator)
            }
            (true, true) if T::MAY_TRAVEL_UNSEALED => Seal::Link,
            (true, true) => return Err(DecodeError::Missing("signature or authenticator")),
            (false, false) => return Err(DecodeError::TwoSeals),
        };
        let value = T::from_wire(kind)?;
        Ok(Signed {
            body: envelope.body,
            seal,
            value,
            body_digest: BodyDigest::default(),
        })
    }

    /// Decodes an encoded `SignedEnvelope`, refusing anything larger than `limit` bytes before parsing it.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Self::from_envelope(wire::SignedEnvelope::decode(bytes)?)
    }

    pub fn to_envelope(&self) -> wire::SignedEnvelope {
        let (signature, authenticator) = match &self.seal {
            Seal::Signature(s) => (Bytes::copy_from_slice(s), Bytes::new()),
            Seal::Authenticator(a) => (Bytes::new(), a.clone()),
            Seal::Link => (Bytes::new(), Bytes::new()),
        };
        wire::SignedEnvelope {
            body: self.body.clone(),
            signature,
            authenticator,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_envelope().encode_to_vec()
    }
}

impl<T> Signed<T> {
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The signed bytes, exactly as they were received or produced.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// SHA-256 of the body: what a MAC covers, and a request's part of its batch's digest.
    pub fn body_digest(&self) -> [u8; 32] {
        *self
            .body_digest
            .0
            .get_or_init(|| Sha256::digest(&self.body).into())
    }

    pub fn seal(&self) -> &Seal {
        &self.seal
    }

    /// The signature, if the seal is one (always, for the messages replicas exchange, but for link-sealed
    /// commits).
    pub fn signature(&self) -> Option<&SignatureBytes> {
        match &self.seal {
            Seal::Signature(s) => Some(s),
            Seal::Authenticator(_) | Seal::Link => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientId, Digest, Prepare, ReplicaId, Request, SeqNo, Timestamp, View};

    fn envelope(body: Bytes, signature: &[u8], authenticator: &[u8]) -> Vec<u8> {
        wire::SignedEnvelope {
            body,
            signature: Bytes::copy_from_slice(signature),
            authenticator: Bytes::copy_from_slice(authenticator),
        }
        .encode_to_vec()
    }

    fn request() -> Bytes {
        Request {
            client: ClientId(1),
            timestamp: Timestamp(1),
            operation: Bytes::from_static(b"op"),
        }
        .encode_body()
    }

    #[test]
    fn the_body_digest_is_sha256_of_the_body_and_never_makes_two_envelopes_differ() {
        let bytes = envelope(request(), &[], &[7; MAC_LEN * 4]);
        let a = Signed::<Request>::decode(&bytes, 1 << 20).unwrap();
        let b = a.clone();
        let expected: [u8; 32] = Sha256::digest(a.body()).into();
        assert_eq!(a.body_digest(), expected);
        // `a` has computed it and `b` (cloned before) has not: still equal, as are their digests.
        assert_eq!(a, b);
        assert_eq!(b.body_digest(), expected);
        assert_eq!(a.clone().body_digest(), expected);
    }

    #[test]
    fn a_request_carries_a_signature_or_an_authenticator_of_whole_macs() {
        let signed = Signed::<Request>::decode(&envelope(request(), &[1; 64], &[]), 1 << 20);
        assert!(matches!(signed.unwrap().seal(), Seal::Signature(_)));
        let sealed = Signed::<Request>::decode(&envelope(request(), &[], &[2; 64]), 1 << 20);
        assert!(matches!(sealed.unwrap().seal(), Seal::Authenticator(a) if a.len() == 64));
        for (signature, authenticator, error) in [
            (
                &[][..],
                &[][..],
                DecodeError::Missing("signature or authenticator"),
            ),
            (&[1; 64][..], &[2; 16][..], DecodeError::TwoSeals),
            (&[][..], &[2; 17][..], DecodeError::BadAuthenticator(17)),
            (
                &[][..],
                &[2; MAC_LEN * (MAX_AUTHENTICATOR_MACS + 1)][..],
                DecodeError::BadAuthenticator(MAC_LEN * (MAX_AUTHENTICATOR_MACS + 1)),
            ),
        ] {
            assert_eq!(
                Signed::<Request>::decode(&envelope(request(), signature, authenticator), 1 << 20),
                Err(error)
            );
        }
    }

    #[test]
    fn messages_between_replicas_must_be_signed() {
        let prepare = Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([3; 32]),
            replica: ReplicaId(1),
        }
        .encode_body();
        assert_eq!(
            Signed::<Prepare>::decode(&envelope(prepare, &[], &[2; 64]), 1 << 20),
            Err(DecodeError::AuthenticatorNotAllowed("PREPARE"))
        );
    }
}
