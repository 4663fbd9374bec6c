use std::ops::Deref;

use pbft_types::{Checkpoint, NewView, PrePrepare, Prepare, PreparedProof, Signed, ViewChange};

/// A message whose signature has been checked against its signer's key in the cluster's keyring (or that this
/// replica signed itself). Only this crate can make one, so a function that takes a `Verified<T>` cannot be handed
/// an unauthenticated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(Signed<T>);

impl<T> Verified<T> {
    pub(crate) fn new(signed: Signed<T>) -> Self {
        Verified(signed)
    }

    /// The signed envelope, for forwarding or for a certificate that others will verify.
    pub fn signed(&self) -> &Signed<T> {
        &self.0
    }

    pub fn into_signed(self) -> Signed<T> {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.value()
    }
}

/// A prepared certificate whose signatures were checked: the PRE-PREPARE and the matching PREPAREs as they were
/// signed. Whether they form a certificate (enough of them, matching, from the right replicas) is the protocol
/// core's question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPrepared {
    pub pre_prepare: Verified<PrePrepare>,
    pub prepares: Vec<Verified<Prepare>>,
}

impl VerifiedPrepared {
    /// The certificate as it travels inside a VIEW-CHANGE.
    pub fn to_proof(&self) -> PreparedProof {
        PreparedProof {
            pre_prepare: self.pre_prepare.signed().clone(),
            prepares: self.prepares.iter().map(|p| p.signed().clone()).collect(),
        }
    }
}

// `Keyring::verify` checks the signature of every message nested in a VIEW-CHANGE or NEW-VIEW, so the parts of a
// verified one are verified too.
impl Verified<ViewChange> {
    /// C, the CHECKPOINTs that prove the sender's stable checkpoint.
    pub fn checkpoint_proof(&self) -> Vec<Verified<Checkpoint>> {
        self.checkpoint_proof
            .iter()
            .cloned()
            .map(Verified)
            .collect()
    }

    /// P, the sender's prepared certificates.
    pub fn prepared_certificates(&self) -> Vec<VerifiedPrepared> {
        self.prepared
            .iter()
            .map(|p| VerifiedPrepared {
                pre_prepare: Verified(p.pre_prepare.clone()),
                prepares: p.prepares.iter().cloned().map(Verified).collect(),
            })
            .collect()
    }
}

impl Verified<NewView> {
    /// V, the VIEW-CHANGEs the new primary gathered.
    pub fn view_change_messages(&self) -> Vec<Verified<ViewChange>> {
        self.view_changes.iter().cloned().map(Verified).collect()
    }

    /// O, the PRE-PREPAREs of the new view.
    pub fn pre_prepare_messages(&self) -> Vec<Verified<PrePrepare>> {
        self.pre_prepares.iter().cloned().map(Verified).collect()
    }
}
