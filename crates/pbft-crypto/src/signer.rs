use ed25519_dalek::{Signer as _, SigningKey};
use pbft_types::{Body, Principal, PublicKeyBytes, SignatureBytes, Signed};

use crate::verified::Verified;

/// An ed25519 key pair.
#[derive(Clone)]
pub struct KeyPair(SigningKey);

impl KeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<KeyPair, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(KeyPair::from_seed(seed))
    }

    /// The key derived from a 32-byte secret seed. The simulator derives its keys from its run seed this way.
    pub fn from_seed(seed: [u8; 32]) -> KeyPair {
        KeyPair(SigningKey::from_bytes(&seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The ed25519 key itself, for deriving MAC session keys from it.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    pub fn public_key(&self) -> PublicKeyBytes {
        self.0.verifying_key().to_bytes()
    }

    /// Signs the encoded body of `value`. The result is a `Signed<T>`, not a `Verified<T>`: nothing checks that
    /// this key belongs to the body's signer. Adversaries in the simulator use it to forge.
    pub fn sign<T: Body>(&self, value: T) -> Signed<T> {
        let body = value.encode_body();
        let signature = self.0.sign(&body).to_bytes();
        Signed::from_parts(body, signature, value)
    }

    /// Signs arbitrary bytes, for statements outside the protocol's messages (a ledger transfer). The caller puts
    /// a domain tag in front, so that such a signature can never pass for a protocol message's.
    pub fn sign_bytes(&self, message: &[u8]) -> SignatureBytes {
        self.0.sign(message).to_bytes()
    }
}

/// Checks `signature` over `message` by the holder of `public_key` with `verify_strict`, which refuses
/// non-canonical encodings, small-order nonce points and small-order keys.
///
/// Not the keyring's rule (ZIP 215), on purpose: the ledger's transfers are checked with this, inside the
/// replicated state machine and again by anyone who verifies an exported chain, so what it accepts is part of the
/// ledger's definition. It was `verify_strict` when the first chains were written, common ed25519 libraries agree
/// with it, and it is never batched, so ZIP 215 would buy nothing here.
pub fn verify_bytes(
    public_key: &PublicKeyBytes,
    message: &[u8],
    signature: &SignatureBytes,
) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    !key.is_weak()
        && key
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", hex::encode(self.public_key()))
    }
}

/// A principal and its own key: what a replica or client signs its messages with. What it signs is authentic by
/// construction, so it comes back as a `Verified<T>`.
#[derive(Clone, Debug)]
pub struct Signer {
    principal: Principal,
    key: KeyPair,
}

impl Signer {
    pub fn new(principal: Principal, key: KeyPair) -> Signer {
        Signer { principal, key }
    }

    pub fn principal(&self) -> Principal {
        self.principal
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// Signs a message of this principal's own.
    ///
    /// # Panics
    /// If `value` names another signer: that is a bug in the caller, never a consequence of input.
    pub fn sign<T: Body>(&self, value: T) -> Verified<T> {
        assert_eq!(
            value.signer(),
            self.principal,
            "a signer signs only its own messages"
        );
        Verified::new(self.key.sign(value))
    }

    /// Seals a message of this principal's own for its replica links only, with no signature (`Seal::Link`):
    /// a COMMIT in a cluster whose `replica_auth` is "macs". The authenticated connection it is sent on vouches
    /// for it at the receiver, and nothing else ever will.
    ///
    /// # Panics
    /// If `value` names another signer, or is of a kind that must always be signed: bugs in the caller.
    pub fn seal_for_link<T: Body>(&self, value: T) -> Verified<T> {
        assert_eq!(
            value.signer(),
            self.principal,
            "a signer seals only its own messages"
        );
        assert!(
            T::MAY_TRAVEL_UNSEALED,
            "only a COMMIT may travel sealed by its link"
        );
        let body = value.encode_body();
        Verified::new(Signed::link_sealed(body, value))
    }
}
