//! Keys, signatures and digests for the PBFT replication system.
//!
//! This crate is the trust boundary: [`Verified<T>`] can only be constructed here, by checking a signature with
//! the [`Keyring`] or by signing with one's own [`Signer`]. Rust's privacy is per crate, which is why
//! `Verified<T>` lives here rather than in `pbft-types`: defined anywhere else, something other than the verifier
//! could make one.

mod digest;
mod keyfile;
mod keyring;
mod mac;
mod seen;
mod signature;
mod signer;
mod verified;
mod vouch;

pub use digest::{batch_digest, batch_digest_of_bodies, digest_of, request_digest};
pub use keyfile::KeyFileError;
pub use keyring::{AuthError, KeyError, Keyring, VerifiedMsg};
pub use mac::SessionKeys;
pub use signer::{KeyPair, Signer, verify_bytes};
pub use verified::{Verified, VerifiedPrepared};
pub use vouch::{Unvouched, VouchError};
