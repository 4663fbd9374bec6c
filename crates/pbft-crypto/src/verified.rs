use std::ops::Deref;

use pbft_types::Signed;

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
