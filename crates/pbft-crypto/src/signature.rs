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
/// 8 and 10 of 64. With a different key for each signature: 38 us alone, 34 in a batch of 2, 29 of 3, 24 of 8.
const SMALLEST_BATCH: usize = 3;

/// One signature waiting for a batch check.
struct Pending {
    source: Principal,
    signer: Principal,
    key: VerificationKey,
    body: Bytes,
    signature: SignatureBytes,
}

/// Signatures gathered to be checked together, which costs less per signature than checking each: about 40%
/// less for signatures by as many keys, up to 70% less for many signatures by a few keys (replicas), whose terms
/// ed25519-zebra merges.
#[derive(Default)]
pub(crate) struct SignatureBatch {
    pending: Vec<Pending>,
}

impl SignatureBatch {
    /// Adds `signature` by `signer` over `body`, handed over by `source`: the peer whose frame carried it, or
    /// whoever else vouches for it (its signer, when nobody else does). A batch that fails is checked again per
    /// source, so one faulty source costs the others little.
    pub(crate) fn push(
        &mut self,
        source: Principal,
        signer: Principal,
        key: &VerificationKey,
        body: &Bytes,
        signature: &SignatureBytes,
    ) {
        self.pending.push(Pending {
            source,
            signer,
            key: *key,
            body: body.clone(),
            signature: *signature,
        });
    }

    /// The verdicts on every gathered signature (see `check_into`).
    pub(crate) fn checked(self) -> Checked {
        let mut checked = Checked::default();
        self.check_into(&mut checked);
        checked
    }

    /// Checks every gathered signature and records each verdict in `checked`. One batch equation checks them
    /// all. If it fails, each source's signatures are checked again together, and those of a source whose batch
    /// fails one by one, which tells the valid from the others. Fewer than `SMALLEST_BATCH` are left to the
    /// caller, which checks each where it meets it.
    pub(crate) fn check_into(self, checked: &mut Checked) {
        if self.pending.len() < SMALLEST_BATCH {
            return;
        }
        let Some(mut rng) = batch_rng() else {
            return;
        };
        if batch_holds(&self.pending, &mut rng) {
            checked.record_valid(self.pending);
            return;
        }
        let mut by_source: HashMap<Principal, Vec<Pending>> = HashMap::new();
        for p in self.pending {
            by_source.entry(p.source).or_default().push(p);
        }
        let several = by_source.len() > 1;
        for (_, group) in by_source {
            if several && group.len() >= SMALLEST_BATCH && batch_holds(&group, &mut rng) {
                checked.record_valid(group);
                continue;
            }
            for p in group {
                let valid = verify_one(&p.key, &p.body, &p.signature);
                checked.record(p, valid);
            }
        }
    }
}

/// Whether every signature of `pending` is valid, by one batch equation with coefficients from `rng`.
fn batch_holds(pending: &[Pending], rng: &mut ChaCha12Rng) -> bool {
    let mut verifier = batch::Verifier::new();
    for p in pending {
        verifier.queue((
            VerificationKeyBytes::from(p.key),
            Signature::from_bytes(&p.signature),
            &p.body[..],
        ));
    }
    verifier.verify(rng).is_ok()
}

/// The source of a batch's random coefficients, or None if the operating system has no randomness to seed it
/// (then every signature is checked on its own, which needs none). The coefficients must be unpredictable to
/// whoever made the signatures, or a forged signature could be made to cancel out in the sum; a generator
/// seeded from the operating system for each batch is. (ChaCha12 is what the `rand` crate's own generator uses.)
fn batch_rng() -> Option<ChaCha12Rng> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).ok()?;
    Some(ChaCha12Rng::from_seed(seed))
}

/// Verdicts on signatures, from batch checks and the checks that follow a failed one. A verdict holds only for
/// the same signer and the very same body bytes; anything else is checked on its own where it is met, so a
/// signature no check saw never passes.
#[derive(Default)]
pub(crate) struct Checked {
    verdicts: HashMap<SignatureBytes, (Principal, Bytes, bool)>,
}

impl Checked {
    fn record(&mut self, p: Pending, valid: bool) {
        // Two signatures with the same bytes keep the later verdict: the other is checked again where it is met.
        self.verdicts.insert(p.signature, (p.signer, p.body, valid));
    }

    fn record_valid(&mut self, pending: Vec<Pending>) {
        for p in pending {
            self.record(p, true);
        }
    }

    /// The verdict on `signature` by `signer` over `body`, if a check here judged it.
    pub(crate) fn verdict(
        &self,
        signer: Principal,
        body: &Bytes,
        signature: &SignatureBytes,
    ) -> Option<bool> {
        self.verdicts
            .get(signature)
            .filter(|(s, b, _)| *s == signer && b == body)
            .map(|(_, _, valid)| *valid)
    }

    /// Whether `signature` by `signer` (whose key is `key`) over `body` is valid: as judged here, or checked now.
    pub(crate) fn holds(
        &self,
        signer: Principal,
        key: &VerificationKey,
        body: &Bytes,
        signature: &SignatureBytes,
    ) -> bool {
        self.verdict(signer, body, signature)
            .unwrap_or_else(|| verify_one(key, body, signature))
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
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
            batch.push(*signer, *signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        for (signer, _, body, signature) in &items {
            assert!(checked.verdict(*signer, body, signature) == Some(true));
        }
        let (signer, _, body, signature) = &items[0];
        assert_eq!(
            checked.verdict(*signer, &Bytes::from_static(b"other"), signature),
            None
        );
        assert_eq!(checked.verdict(items[1].0, body, signature), None);
    }

    #[test]
    fn a_bad_signature_fails_only_itself() {
        let mut items = vec![signed(1, b"one"), signed(2, b"two"), signed(3, b"three")];
        items[1].3[5] ^= 1;
        let mut batch = SignatureBatch::default();
        for (signer, key, body, signature) in &items {
            batch.push(*signer, *signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        let verdicts: Vec<Option<bool>> = items
            .iter()
            .map(|(signer, _, body, signature)| checked.verdict(*signer, body, signature))
            .collect();
        assert_eq!(verdicts, [Some(true), Some(false), Some(true)]);
    }

    /// One source hands over a bad signature among good ones; another source's signatures are all good. After
    /// the whole batch fails, every signature still gets its own right verdict.
    #[test]
    fn a_failed_batch_is_judged_again_per_source() {
        let faulty = Principal::Replica(pbft_types::ReplicaId(9));
        let correct = Principal::Replica(pbft_types::ReplicaId(8));
        let mut items = vec![
            (faulty, signed(1, b"a")),
            (faulty, signed(2, b"b")),
            (faulty, signed(3, b"c")),
            (correct, signed(1, b"d")),
            (correct, signed(2, b"e")),
            (correct, signed(3, b"f")),
        ];
        items[1].1.3[40] ^= 1;
        let mut batch = SignatureBatch::default();
        for (source, (signer, key, body, signature)) in &items {
            batch.push(*source, *signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        let verdicts: Vec<Option<bool>> = items
            .iter()
            .map(|(_, (signer, _, body, signature))| checked.verdict(*signer, body, signature))
            .collect();
        let mut expected = vec![Some(true); 6];
        expected[1] = Some(false);
        assert_eq!(verdicts, expected);
    }

    #[test]
    fn fewer_signatures_than_a_batch_are_left_to_their_own_checks() {
        let items = [signed(1, b"one"), signed(2, b"two")];
        assert_eq!(items.len(), SMALLEST_BATCH - 1);
        let mut batch = SignatureBatch::default();
        for (signer, key, body, signature) in &items {
            batch.push(*signer, *signer, key, body, signature);
        }
        let mut checked = Checked::default();
        batch.check_into(&mut checked);
        assert!(checked.is_empty());
        for (_, key, body, signature) in &items {
            assert!(verify_one(key, body, signature));
        }
    }
}
