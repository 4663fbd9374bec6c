//! The protocol's messages as typed values, and their conversion from and to the wire schema.
//!
//! Conversion from the wire is where malformed input is turned away: a missing field, a digest of the wrong
//! length or a message of the wrong kind is a `DecodeError`, never a panic.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::ids::{ClientId, Digest, Principal, ReplicaId, SeqNo, Timestamp, View};
use crate::wire::{self, signed_body::Kind};

/// REQUEST(o, t, c).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub client: ClientId,
    pub timestamp: Timestamp,
    pub operation: Bytes,
}

/// PRE-PREPARE(v, n, d), the signed header; the batch travels beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrePrepare {
    pub view: View,
    pub seq: SeqNo,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// PREPARE(v, n, d, i).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepare {
    pub view: View,
    pub seq: SeqNo,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// COMMIT(v, n, d, i).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub view: View,
    pub seq: SeqNo,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// REPLY(v, t, c, i, r).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub view: View,
    pub timestamp: Timestamp,
    pub client: ClientId,
    pub replica: ReplicaId,
    pub result: Bytes,
}

/// CHECKPOINT(n, d, i).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: SeqNo,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// STATUS(v, h, e, i): what replica i has, so that its peers can resend what it lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub view: View,
    pub stable: SeqNo,
    pub executed: SeqNo,
    pub replica: ReplicaId,
}

/// FETCH-STATE(n, d, o, i): replica i asks for the snapshot of checkpoint (n, d) from byte `offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchState {
    pub seq: SeqNo,
    pub digest: Digest,
    pub offset: u64,
    pub replica: ReplicaId,
}

/// STATE-CHUNK(n, d, o, t, data, i): a piece of the snapshot of checkpoint (n, d).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChunk {
    pub seq: SeqNo,
    pub digest: Digest,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
    pub replica: ReplicaId,
}

/// A message that is signed on its own: it knows its signer and converts from and to its `SignedBody` variant.
pub trait Body: Sized {
    /// The principal whose key must have signed this body.
    fn signer(&self) -> Principal;
    fn to_wire(&self) -> Kind;
    fn from_wire(kind: Kind) -> Result<Self, DecodeError>;

    /// The exact bytes that are signed: this body wrapped in its `SignedBody` variant.
    fn encode_body(&self) -> Bytes {
        use prost::Message;
        Bytes::from(
            wire::SignedBody {
                kind: Some(self.to_wire()),
            }
            .encode_to_vec(),
        )
    }
}

fn digest(field: &'static str, bytes: &[u8]) -> Result<Digest, DecodeError> {
    Digest::from_slice(bytes).ok_or(DecodeError::BadLength {
        field,
        expected: 32,
        got: bytes.len(),
    })
}

fn wrong_kind(expected: &'static str, got: &Kind) -> DecodeError {
    DecodeError::UnexpectedKind {
        expected,
        got: kind_name(got),
    }
}

pub(crate) fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Request(_) => "REQUEST",
        Kind::PrePrepare(_) => "PRE-PREPARE",
        Kind::Prepare(_) => "PREPARE",
        Kind::Commit(_) => "COMMIT",
        Kind::Reply(_) => "REPLY",
        Kind::Checkpoint(_) => "CHECKPOINT",
        Kind::Status(_) => "STATUS",
        Kind::FetchState(_) => "FETCH-STATE",
        Kind::StateChunk(_) => "STATE-CHUNK",
    }
}

impl Body for Request {
    fn signer(&self) -> Principal {
        Principal::Client(self.client)
    }
    fn to_wire(&self) -> Kind {
        Kind::Request(wire::Request {
            client: self.client.0,
            timestamp: self.timestamp.0,
            operation: self.operation.clone(),
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::Request(m) => Ok(Request {
                client: ClientId(m.client),
                timestamp: Timestamp(m.timestamp),
                operation: m.operation,
            }),
            other => Err(wrong_kind("REQUEST", &other)),
        }
    }
}

/// PRE-PREPARE, PREPARE and COMMIT share one shape: (v, n, d, i).
macro_rules! vote_body {
    ($ty:ident, $variant:ident, $name:literal) => {
        impl Body for $ty {
            fn signer(&self) -> Principal {
                Principal::Replica(self.replica)
            }
            fn to_wire(&self) -> Kind {
                Kind::$variant(wire::$ty {
                    view: self.view.0,
                    sequence: self.seq.0,
                    digest: Bytes::copy_from_slice(self.digest.as_bytes()),
                    replica: self.replica.0,
                })
            }
            fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
                match kind {
                    Kind::$variant(m) => Ok($ty {
                        view: View(m.view),
                        seq: SeqNo(m.sequence),
                        digest: digest("digest", &m.digest)?,
                        replica: ReplicaId(m.replica),
                    }),
                    other => Err(wrong_kind($name, &other)),
                }
            }
        }
    };
}

vote_body!(PrePrepare, PrePrepare, "PRE-PREPARE");
vote_body!(Prepare, Prepare, "PREPARE");
vote_body!(Commit, Commit, "COMMIT");

impl Body for Reply {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::Reply(wire::Reply {
            view: self.view.0,
            timestamp: self.timestamp.0,
            client: self.client.0,
            replica: self.replica.0,
            result: self.result.clone(),
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::Reply(m) => Ok(Reply {
                view: View(m.view),
                timestamp: Timestamp(m.timestamp),
                client: ClientId(m.client),
                replica: ReplicaId(m.replica),
                result: m.result,
            }),
            other => Err(wrong_kind("REPLY", &other)),
        }
    }
}

impl Body for Checkpoint {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::Checkpoint(wire::Checkpoint {
            sequence: self.seq.0,
            digest: Bytes::copy_from_slice(self.digest.as_bytes()),
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::Checkpoint(m) => Ok(Checkpoint {
                seq: SeqNo(m.sequence),
                digest: digest("digest", &m.digest)?,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("CHECKPOINT", &other)),
        }
    }
}

impl Body for Status {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::Status(wire::Status {
            view: self.view.0,
            stable: self.stable.0,
            executed: self.executed.0,
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::Status(m) => Ok(Status {
                view: View(m.view),
                stable: SeqNo(m.stable),
                executed: SeqNo(m.executed),
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("STATUS", &other)),
        }
    }
}

impl Body for FetchState {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::FetchState(wire::FetchState {
            sequence: self.seq.0,
            digest: Bytes::copy_from_slice(self.digest.as_bytes()),
            offset: self.offset,
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::FetchState(m) => Ok(FetchState {
                seq: SeqNo(m.sequence),
                digest: digest("digest", &m.digest)?,
                offset: m.offset,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("FETCH-STATE", &other)),
        }
    }
}

impl Body for StateChunk {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::StateChunk(wire::StateChunk {
            sequence: self.seq.0,
            digest: Bytes::copy_from_slice(self.digest.as_bytes()),
            offset: self.offset,
            total: self.total,
            data: self.data.clone(),
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::StateChunk(m) => Ok(StateChunk {
                seq: SeqNo(m.sequence),
                digest: digest("digest", &m.digest)?,
                offset: m.offset,
                total: m.total,
                data: m.data,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("STATE-CHUNK", &other)),
        }
    }
}
