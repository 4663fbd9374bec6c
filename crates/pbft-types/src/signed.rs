//! `Signed<T>`: a message together with the exact bytes its signature covers.
//!
//! A `Signed<T>` proves nothing by itself: anyone can build one. Only `pbft-crypto` turns it into a
//! `Verified<T>`, after checking the signature against the signer's key.

use bytes::Bytes;
use prost::Message;

use crate::error::DecodeError;
use crate::message::Body;
use crate::wire;

/// An ed25519 signature, as its 64 encoded bytes.
pub type SignatureBytes = [u8; 64];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    body: Bytes,
    signature: SignatureBytes,
    value: T,
}

impl<T: Body> Signed<T> {
    /// Pairs a value with the bytes it was encoded to and a signature over them. Used by the signer, which
    /// encodes the value itself, and by decoding.
    pub fn from_parts(body: Bytes, signature: SignatureBytes, value: T) -> Self {
        Signed {
            body,
            signature,
            value,
        }
    }

    /// Decodes an envelope received from the network. The signature is not checked here.
    pub fn from_envelope(envelope: wire::SignedEnvelope) -> Result<Self, DecodeError> {
        let signature = <SignatureBytes>::try_from(envelope.signature.as_ref()).map_err(|_| {
            DecodeError::BadLength {
                field: "signature",
                expected: 64,
                got: envelope.signature.len(),
            }
        })?;
        let body = wire::SignedBody::decode(envelope.body.clone())?;
        let kind = body.kind.ok_or(DecodeError::Missing("kind"))?;
        let value = T::from_wire(kind)?;
        Ok(Signed {
            body: envelope.body,
            signature,
            value,
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
        wire::SignedEnvelope {
            body: self.body.clone(),
            signature: Bytes::copy_from_slice(&self.signature),
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

    pub fn signature(&self) -> &SignatureBytes {
        &self.signature
    }
}
