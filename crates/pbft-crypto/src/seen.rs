//! Client requests whose signatures this process already checked. A request reaches every replica twice: from its
//! client, and again inside the primary's PRE-PREPARE (or a BATCH-DATA). Checking its ed25519 signature once is
//! enough: the second time only a SHA-256 of the exact bytes is computed and looked up.
//!
//! An entry is the SHA-256 of a request's signature and signed body, so a request with the same body but any
//! other signature is not found and is checked in full. The keys of the cluster never change while a keyring
//! lives, so a pair that verified once verifies again. The set is bounded; the oldest entries go first.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use pbft_types::{Request, Seal, Signed};
use sha2::{Digest as _, Sha256};

/// Requests remembered at most: a few seconds of requests at the rates this system aims for.
const CAPACITY: usize = 1 << 18;

pub(crate) type SeenKey = [u8; 32];

#[derive(Debug, Default)]
pub(crate) struct SeenRequests {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    set: HashSet<SeenKey>,
    order: VecDeque<SeenKey>,
}

pub(crate) fn key_of(request: &Signed<Request>) -> SeenKey {
    let mut h = Sha256::new();
    match request.seal() {
        Seal::Signature(s) => h.update(s),
        Seal::Authenticator(a) => h.update(a),
        // Never a request's: decoding refuses it, and so does every check of a request.
        Seal::Link => {}
    }
    h.update(request.body());
    h.finalize().into()
}

impl SeenRequests {
    pub(crate) fn contains(&self, key: &SeenKey) -> bool {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.set.contains(key)
    }

    pub(crate) fn insert(&self, key: SeenKey) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.set.insert(key) {
            return;
        }
        inner.order.push_back(key);
        if inner.order.len() > CAPACITY
            && let Some(oldest) = inner.order.pop_front()
        {
            inner.set.remove(&oldest);
        }
    }
}
