//! The protocol's messages as typed values, and their conversion from and to the wire schema.
//!
//! Conversion from the wire is where malformed input is turned away: a missing field, a digest of the wrong
//! length or a message of the wrong kind is a `DecodeError`, never a panic.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::ids::{ClientId, Digest, Principal, ReplicaId, SeqNo, Timestamp, View};
use crate::signed::Signed;
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
    /// The replica sent VIEW-CHANGE for `view` and still waits for its NEW-VIEW.
    pub changing_view: bool,
    /// The replica just jumped (recovered from its journal, or installed a checkpoint) and does not know yet where
    /// its peers are: each answers with its own STATUS.
    pub asking: bool,
}

/// FETCH-BATCH(n, d, i): replica i knows that batch `digest` is assigned to `seq` but lacks its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchBatch {
    pub seq: SeqNo,
    pub digest: Digest,
    pub replica: ReplicaId,
}

/// BATCH-DATA(n, d, i), the signed header of an answer to FETCH-BATCH; the requests travel beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchData {
    pub seq: SeqNo,
    pub digest: Digest,
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

/// A prepared certificate: the PRE-PREPARE and q-1 matching PREPAREs from distinct backups, as they were signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedProof {
    pub pre_prepare: Signed<PrePrepare>,
    pub prepares: Vec<Signed<Prepare>>,
}

/// VIEW-CHANGE(v+1, n, C, P, i).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    pub new_view: View,
    pub stable_seq: SeqNo,
    /// C: the CHECKPOINTs that make `stable_seq` stable.
    pub checkpoint_proof: Vec<Signed<Checkpoint>>,
    /// P: a prepared certificate for each sequence above `stable_seq` that the sender prepared.
    pub prepared: Vec<PreparedProof>,
    pub replica: ReplicaId,
}

/// NEW-VIEW(v+1, V, O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewView {
    pub view: View,
    /// V: q VIEW-CHANGEs for `view`, the new primary's own among them.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// O: the PRE-PREPAREs of `view` computed from V.
    pub pre_prepares: Vec<Signed<PrePrepare>>,
    pub replica: ReplicaId,
}

/// One signed message carried inside another, as its verifier needs it.
#[derive(Clone, Copy, Debug)]
pub struct NestedSignature<'a> {
    pub signer: Principal,
    pub body: &'a Bytes,
    /// None when the carried message has no signature (never true of a message that decoded).
    pub signature: Option<&'a crate::signed::SignatureBytes>,
}

impl<'a, T: Body> From<&'a Signed<T>> for NestedSignature<'a> {
    fn from(signed: &'a Signed<T>) -> Self {
        NestedSignature {
            signer: signed.value().signer(),
            body: signed.body(),
            signature: signed.signature(),
        }
    }
}

/// A message that is signed on its own: it knows its signer and converts from and to its `SignedBody` variant.
pub trait Body: Sized {
    /// Whether this kind of message may be sealed with a MAC authenticator instead of a signature: only a
    /// client's request and a replica's reply to it, which convince their receiver and nobody else.
    const MAY_CARRY_AUTHENTICATOR: bool = false;

    /// Whether this kind of message may travel between replicas with no seal of its own, authenticated by the
    /// connection it arrives on (`Seal::Link`): only a COMMIT, which no third party ever needs to check unless
    /// the ledger puts it in a block's certificate (the cluster's `replica_auth` says which).
    const MAY_TRAVEL_UNSEALED: bool = false;

    /// The principal whose key must have signed this body.
    fn signer(&self) -> Principal;
    fn to_wire(&self) -> Kind;
    fn from_wire(kind: Kind) -> Result<Self, DecodeError>;

    /// The signed messages this one carries inside it (a VIEW-CHANGE's certificates, a NEW-VIEW's V and O), at
    /// every depth. A verifier checks them together with the outer signature.
    fn nested(&self) -> Vec<NestedSignature<'_>> {
        Vec::new()
    }

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
        Kind::ViewChange(_) => "VIEW-CHANGE",
        Kind::NewView(_) => "NEW-VIEW",
        Kind::FetchBatch(_) => "FETCH-BATCH",
        Kind::BatchData(_) => "BATCH-DATA",
    }
}

impl Body for Request {
    const MAY_CARRY_AUTHENTICATOR: bool = true;
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
    ($ty:ident, $variant:ident, $name:literal, $unsealed:literal) => {
        impl Body for $ty {
            const MAY_TRAVEL_UNSEALED: bool = $unsealed;
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

// PRE-PREPAREs and PREPAREs are signed always: a VIEW-CHANGE carries them as proof that a batch prepared.
vote_body!(PrePrepare, PrePrepare, "PRE-PREPARE", false);
vote_body!(Prepare, Prepare, "PREPARE", false);
vote_body!(Commit, Commit, "COMMIT", true);

impl Body for Reply {
    const MAY_CARRY_AUTHENTICATOR: bool = true;
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
            changing_view: self.changing_view,
            asking: self.asking,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::Status(m) => Ok(Status {
                view: View(m.view),
                stable: SeqNo(m.stable),
                executed: SeqNo(m.executed),
                replica: ReplicaId(m.replica),
                changing_view: m.changing_view,
                asking: m.asking,
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

impl Body for FetchBatch {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::FetchBatch(wire::FetchBatch {
            sequence: self.seq.0,
            digest: Bytes::copy_from_slice(self.digest.as_bytes()),
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::FetchBatch(m) => Ok(FetchBatch {
                seq: SeqNo(m.sequence),
                digest: digest("digest", &m.digest)?,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("FETCH-BATCH", &other)),
        }
    }
}

impl Body for BatchData {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn to_wire(&self) -> Kind {
        Kind::BatchData(wire::BatchData {
            sequence: self.seq.0,
            digest: Bytes::copy_from_slice(self.digest.as_bytes()),
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::BatchData(m) => Ok(BatchData {
                seq: SeqNo(m.sequence),
                digest: digest("digest", &m.digest)?,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("BATCH-DATA", &other)),
        }
    }
}

fn envelopes<T: Body>(items: &[Signed<T>]) -> Vec<wire::SignedEnvelope> {
    items.iter().map(Signed::to_envelope).collect()
}

fn from_envelopes<T: Body>(
    items: Vec<wire::SignedEnvelope>,
) -> Result<Vec<Signed<T>>, DecodeError> {
    items.into_iter().map(Signed::from_envelope).collect()
}

impl Body for ViewChange {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn nested(&self) -> Vec<NestedSignature<'_>> {
        let mut nested: Vec<NestedSignature<'_>> =
            self.checkpoint_proof.iter().map(Into::into).collect();
        for proof in &self.prepared {
            nested.push((&proof.pre_prepare).into());
            nested.extend(proof.prepares.iter().map(NestedSignature::from));
        }
        nested
    }
    fn to_wire(&self) -> Kind {
        Kind::ViewChange(wire::ViewChange {
            new_view: self.new_view.0,
            stable_sequence: self.stable_seq.0,
            checkpoint_proof: envelopes(&self.checkpoint_proof),
            prepared: self
                .prepared
                .iter()
                .map(|p| wire::PreparedProof {
                    pre_prepare: Some(p.pre_prepare.to_envelope()),
                    prepares: envelopes(&p.prepares),
                })
                .collect(),
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::ViewChange(m) => Ok(ViewChange {
                new_view: View(m.new_view),
                stable_seq: SeqNo(m.stable_sequence),
                checkpoint_proof: from_envelopes(m.checkpoint_proof)?,
                prepared: m
                    .prepared
                    .into_iter()
                    .map(|p| {
                        let pre_prepare =
                            p.pre_prepare.ok_or(DecodeError::Missing("pre_prepare"))?;
                        Ok(PreparedProof {
                            pre_prepare: Signed::from_envelope(pre_prepare)?,
                            prepares: from_envelopes(p.prepares)?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("VIEW-CHANGE", &other)),
        }
    }
}

impl Body for NewView {
    fn signer(&self) -> Principal {
        Principal::Replica(self.replica)
    }
    fn nested(&self) -> Vec<NestedSignature<'_>> {
        let mut nested: Vec<NestedSignature<'_>> = Vec::new();
        for vc in &self.view_changes {
            nested.push(vc.into());
            nested.extend(vc.value().nested());
        }
        nested.extend(self.pre_prepares.iter().map(NestedSignature::from));
        nested
    }
    fn to_wire(&self) -> Kind {
        Kind::NewView(wire::NewView {
            view: self.view.0,
            view_changes: envelopes(&self.view_changes),
            pre_prepares: envelopes(&self.pre_prepares),
            replica: self.replica.0,
        })
    }
    fn from_wire(kind: Kind) -> Result<Self, DecodeError> {
        match kind {
            Kind::NewView(m) => Ok(NewView {
                view: View(m.view),
                view_changes: from_envelopes(m.view_changes)?,
                pre_prepares: from_envelopes(m.pre_prepares)?,
                replica: ReplicaId(m.replica),
            }),
            other => Err(wrong_kind("NEW-VIEW", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed<T: Body>(value: T) -> Signed<T> {
        Signed::from_parts(value.encode_body(), [3; 64], value)
    }

    fn view_change(replica: u64) -> ViewChange {
        let digest = Digest([5; 32]);
        ViewChange {
            new_view: View(1),
            stable_seq: SeqNo(8),
            checkpoint_proof: (0..3)
                .map(|r| {
                    signed(Checkpoint {
                        seq: SeqNo(8),
                        digest,
                        replica: ReplicaId(r),
                    })
                })
                .collect(),
            prepared: vec![PreparedProof {
                pre_prepare: signed(PrePrepare {
                    view: View(0),
                    seq: SeqNo(9),
                    digest,
                    replica: ReplicaId(0),
                }),
                prepares: (1..3)
                    .map(|r| {
                        signed(Prepare {
                            view: View(0),
                            seq: SeqNo(9),
                            digest,
                            replica: ReplicaId(r),
                        })
                    })
                    .collect(),
            }],
            replica: ReplicaId(replica),
        }
    }

    fn round_trip<T: Body + std::fmt::Debug + PartialEq>(value: &T) -> T {
        use prost::Message;
        let body = wire::SignedBody::decode(value.encode_body()).expect("decodes");
        T::from_wire(body.kind.expect("kind")).expect("converts")
    }

    #[test]
    fn a_view_change_keeps_its_certificates_byte_for_byte() {
        let vc = view_change(2);
        let back = round_trip(&vc);
        assert_eq!(back, vc);
        assert_eq!(
            back.checkpoint_proof[1].body(),
            vc.checkpoint_proof[1].body()
        );
    }

    #[test]
    fn a_new_view_round_trips() {
        let nv = NewView {
            view: View(1),
            view_changes: (0..3).map(|r| signed(view_change(r))).collect(),
            pre_prepares: vec![signed(PrePrepare {
                view: View(1),
                seq: SeqNo(9),
                digest: Digest([5; 32]),
                replica: ReplicaId(1),
            })],
            replica: ReplicaId(1),
        };
        assert_eq!(round_trip(&nv), nv);
    }

    #[test]
    fn a_prepared_proof_without_its_pre_prepare_is_refused() {
        let mut wire = match view_change(2).to_wire() {
            Kind::ViewChange(m) => m,
            _ => unreachable!("a view change"),
        };
        wire.prepared[0].pre_prepare = None;
        assert_eq!(
            ViewChange::from_wire(Kind::ViewChange(wire)),
            Err(DecodeError::Missing("pre_prepare"))
        );
    }

    #[test]
    fn a_certificate_of_the_wrong_kind_is_refused() {
        let mut wire = match view_change(2).to_wire() {
            Kind::ViewChange(m) => m,
            _ => unreachable!("a view change"),
        };
        // A PREPARE where a CHECKPOINT belongs.
        wire.checkpoint_proof[0] = signed(Prepare {
            view: View(0),
            seq: SeqNo(8),
            digest: Digest([5; 32]),
            replica: ReplicaId(1),
        })
        .to_envelope();
        assert!(matches!(
            ViewChange::from_wire(Kind::ViewChange(wire)),
            Err(DecodeError::UnexpectedKind {
                expected: "CHECKPOINT",
                ..
            })
        ));
    }
}
