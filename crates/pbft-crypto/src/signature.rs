//! ed25519 signature checks, one at a time or many together, under one rule: ZIP 215, as ed25519-zebra
//! implements it.
//!
//! Why one rule matters: correct replicas pass on what they accepted (a PREPARE inside a VIEW-CHANGE, a request
//! inside a PRE-PREPARE, a COMMIT inside a ledger block), and others check it again, alone or in a batch of a
//! different make-up. If a batch could accept what a check on its own refuses, a faulty signer could make correct
//! replicas disagree about the same bytes. ed25519-dalek's `verify_batch` can: its equation has no cofactor, so a
//! signature whose nonce point carries a small torsion component passes some batches and not others. ZIP 215
//! multiplies both equations by the cofactor, which removes any torsion component, so a batch accepts exactly
//! what every signature accepts on its own (but with probability 2^-128, set by the random coefficients).
//!
//! ZIP 215 also accepts what `verify_strict` refused: non-canonical point encodings and small-order nonce points.
//! Only the signer can make such a signature for its own key (the nonce point is hashed into the challenge), so
//! it can prove no more than an ordinary signature of the signer's; small-order keys, which would let one
//! signature pass for many messages, are still refused when a key is loaded.

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_zebra::batch;
use ed25519_zebra::{Signature, VerificationKey, VerificationKeyBytes};
use pbft_types::{Principal, PublicKeyBytes, SignatureBytes};
use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::SeedableRng;

/// Why bytes are not a public key this crate checks signatures with.
pub(crate) enum KeyFault {
    NotAPoint,
    /// A key of small order would let one signature verify for many messages.
    SmallOrder,
}

/// A public key: a point on the curve, not of small order.
pub(crate) fn parse_key(bytes: &PublicKeyBytes) -> Result<VerificationKey, KeyFault> {
    let point = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyFault::NotAPoint)?;
    if point.is_weak() {
        return Err(KeyFault::SmallOrder);
    }
    VerificationKey::try_from(*bytes).map_err(|_| KeyFault::NotAPoint)
}

/// Checks one signature.
pub(crate) fn verify_one(key: &VerificationKey, body: &[u8], signature: &SignatureBytes) -> bool {
    key.verify(&Signature::from_bytes(signature), body).is_ok()
}

/// The fewest signatures worth a batch check. Measured here (release build, 120-byte messages, four keys):
/// 32 us for a signature checked alone, and per signature 32 us in a batch of 2, 26 in one of 3, 23 of 4, 16 of
/// 8 and 10 of 64.
const SMALLEST_BATCH: usize = 3;

/// One signature waiting for a batch check.
struct Pending {
    signer: Principal,
    key: VerificationKey,
    body: Bytes,
    signature: SignatureBytes,
}

/// Signatures gathered to be checked together, which costs about half as much per signature as checking each.
#[derive(Default)]
pub(crate) struct SignatureBatch {
    pending: Vec<Pending>,
}

impl SignatureBatch {
    pub(crate) fn push(
        &mut self,
        signer: Principal,
        key: &VerificationKey,
        body: &Bytes,
        signature: &SignatureBytes,
    ) {
        self.pending.push(Pending {
            signer,
            key: *key,
            body: body.clone(),
            signature: *signature,
        });
    }

    /// Checks every gathered signature and adds the valid ones to `checked`. One batch equation checks them all;
    /// only if it fails is each checked on its own, to tell the valid ones from the others. Fewer than
    /// `SMALLEST_BATCH` are left to the caller, which checks each where it meets it.
    pub(crate) fn check_into(self, checked: &mut Checked) {
        if self.pending.len() < SMALLEST_BATCH {
            return;
        }
        let mut verifier = batch::Verifier::new();
        for p in &self.pending {
            verifier.queue((
                VerificationKeyBytes::from(p.key),
                Signature::from_bytes(&p.signature),
                &p.body[..],
            ));
        }
        let all_valid = verifier.verify(batch_rng()).is_ok();
        for p in self.pending {
            if all_valid || verify_one(&p.key, &p.body, &p.signature) {
                checked.valid.insert(p.signature, (p.signer, p.body));
            }
        }
    }
}

/// The source of a batch's random coefficients. They must be unpredictable to whoever made the signatures, or a
/// forged signature could be made to cancel out in the sum; a generator seeded from the operating system for each
/// batch is. (ChaCha12 is what the `rand` crate's own generator uses.)
fn batch_rng() -> ChaCha12Rng {
    let mut seed = [0u8; 32];
    // Without the operating system's randomness no coefficient is safe, and this process cannot go on safely.
    getrandom::fill(&mut seed).unwrap_or_else(|e| panic!("no randomness from the OS: {e}"));
    ChaCha12Rng::from_seed(seed)
}

/// Signatures a batch check found valid. A signature counts as checked only for the same signer and the very same
/// body bytes it was checked over; anything else is checked on its own where it is met, so a signature the batch
/// never saw can never pass unchecked.
#[derive(Default)]
pub(crate) struct Checked {
    valid: HashMap<SignatureBytes, (Principal, Bytes)>,
}

impl Checked {
    /// Whether `signature` by `signer` over `body` is among the valid ones.
    pub(crate) fn contains(
        &self,
        signer: Principal,
        body: &Bytes,
        signature: &SignatureBytes,
    ) -> bool {
        self.valid
            .get(signature)
            .is_some_and(|(s, b)| *s == signer && b == body)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyPair;

    fn signed(
        seed: u8,
        body: &'static [u8],
    ) -> (Principal, VerificationKey, Bytes, SignatureBytes) {
        let key = KeyPair::from_seed([seed; 32]);
        let public = VerificationKey::try_from(key.public_key()).expect("a valid key");
        let signature = key.sign_bytes(body);
        (
            Principal::Replica(pbft_types::ReplicaId(u64::from(seed))),
            public,
            Bytes::from_static(body),
            signature,
        )
    }

    #[test]
    fn a_batch_of_valid_signatures_marks_each_checked_for_its_own_signer_and_body_only() {
        let items = [signed(1, b"one"), signed(2, b"two"), signed(3, b"three")];
        let mut batch = SignatureBatch::default();
        for (signer, key, body, signature) in &items {
            batch.push(*signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        for (signer, _, body, signature) in &items {
            assert!(checked.contains(*signer, body, signature));
        }
        let (signer, _, body, signature) = &items[0];
        assert!(!checked.contains(*signer, &Bytes::from_static(b"other"), signature));
        assert!(!checked.contains(items[1].0, body, signature));
    }

    #[test]
    fn a_bad_signature_fails_only_itself() {
        let mut items = vec![signed(1, b"one"), signed(2, b"two"), signed(3, b"three")];
        items[1].3[5] ^= 1;
        let mut batch = SignatureBatch::default();
        for (signer, key, body, signature) in &items {
            batch.push(*signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        let verdicts: Vec<bool> = items
            .iter()
            .map(|(signer, _, body, signature)| checked.contains(*signer, body, signature))
            .collect();
        assert_eq!(verdicts, [true, false, true]);
    }

    #[test]
    fn fewer_signatures_than_a_batch_are_left_to_their_own_checks() {
        let items = [signed(1, b"one"), signed(2, b"two")];
        assert_eq!(items.len(), SMALLEST_BATCH - 1);
        let mut batch = SignatureBatch::default();
        for (signer, key, body, signature) in &items {
            batch.push(*signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        assert!(checked.is_empty());
        for (_, key, body, signature) in &items {
            assert!(verify_one(key, body, signature));
        }
    }
}
