//! `ReplicaMsg`: what one replica sends another, decoded but not yet verified.

use prost::Message;

use crate::Principal;
use crate::error::DecodeError;
use crate::message::Body;
use crate::message::{
    BatchData, Checkpoint, Commit, FetchBatch, FetchState, NewView, PrePrepare, Prepare, Request,
    StateChunk, Status, ViewChange, kind_name,
};
use crate::signed::Signed;
use crate::wire::{self, signed_body::Kind};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaMsg {
    /// A PRE-PREPARE and the requests of its batch, in batch order.
    PrePrepare {
        header: Signed<PrePrepare>,
        batch: Vec<Signed<Request>>,
    },
    Prepare(Signed<Prepare>),
    Commit(Signed<Commit>),
    Checkpoint(Signed<Checkpoint>),
    Status(Signed<Status>),
    FetchState(Signed<FetchState>),
    StateChunk(Signed<StateChunk>),
    ViewChange(Signed<ViewChange>),
    NewView(Signed<NewView>),
    FetchBatch(Signed<FetchBatch>),
    /// The requests of a batch, in batch order, sent to a replica that asked for them with FETCH-BATCH.
    BatchData {
        header: Signed<BatchData>,
        batch: Vec<Signed<Request>>,
    },
    /// A client's request that a backup passes on to the primary.
    Request(Signed<Request>),
}

/// Bounds applied while decoding, before any allocation that input could inflate.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_message_size: usize,
    pub max_batch_size: usize,
}

impl ReplicaMsg {
    pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        if bytes.len() > limits.max_message_size {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: limits.max_message_size,
            });
        }
        let message = wire::ReplicaMessage::decode(bytes)?;
        if message.batch.len() > limits.max_batch_size {
            return Err(DecodeError::BatchTooLarge {
                size: message.batch.len(),
                limit: limits.max_batch_size,
            });
        }
        let envelope = message.envelope.ok_or(DecodeError::Missing("envelope"))?;
        // Peek at the kind to pick the typed decoding; `Signed::from_envelope` checks it again.
        let body = wire::SignedBody::decode(envelope.body.clone())?;
        let kind = body.kind.ok_or(DecodeError::Missing("kind"))?;
        if !matches!(kind, Kind::PrePrepare(_) | Kind::BatchData(_)) && !message.batch.is_empty() {
            return Err(DecodeError::UnexpectedBatch);
        }
        Ok(match kind {
            Kind::PrePrepare(_) => ReplicaMsg::PrePrepare {
                header: Signed::from_envelope(envelope)?,
                batch: message
                    .batch
                    .into_iter()
                    .map(Signed::from_envelope)
                    .collect::<Result<_, _>>()?,
            },
            Kind::Prepare(_) => ReplicaMsg::Prepare(Signed::from_envelope(envelope)?),
            Kind::Commit(_) => ReplicaMsg::Commit(Signed::from_envelope(envelope)?),
            Kind::Checkpoint(_) => ReplicaMsg::Checkpoint(Signed::from_envelope(envelope)?),
            Kind::Status(_) => ReplicaMsg::Status(Signed::from_envelope(envelope)?),
            Kind::FetchState(_) => ReplicaMsg::FetchState(Signed::from_envelope(envelope)?),
            Kind::StateChunk(_) => ReplicaMsg::StateChunk(Signed::from_envelope(envelope)?),
            Kind::ViewChange(_) => ReplicaMsg::ViewChange(Signed::from_envelope(envelope)?),
            Kind::NewView(_) => ReplicaMsg::NewView(Signed::from_envelope(envelope)?),
            Kind::FetchBatch(_) => ReplicaMsg::FetchBatch(Signed::from_envelope(envelope)?),
            Kind::BatchData(_) => ReplicaMsg::BatchData {
                header: Signed::from_envelope(envelope)?,
                batch: message
                    .batch
                    .into_iter()
                    .map(Signed::from_envelope)
                    .collect::<Result<_, _>>()?,
            },
            Kind::Request(_) => ReplicaMsg::Request(Signed::from_envelope(envelope)?),
            other @ Kind::Reply(_) => {
                return Err(DecodeError::NotAReplicaMessage(kind_name(&other)));
            }
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let (envelope, batch) = match self {
            ReplicaMsg::PrePrepare { header, batch } => (
                header.to_envelope(),
                batch.iter().map(Signed::to_envelope).collect(),
            ),
            ReplicaMsg::Prepare(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::Commit(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::Checkpoint(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::Status(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::FetchState(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::StateChunk(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::ViewChange(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::NewView(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::FetchBatch(m) => (m.to_envelope(), Vec::new()),
            ReplicaMsg::BatchData { header, batch } => (
                header.to_envelope(),
                batch.iter().map(Signed::to_envelope).collect(),
            ),
            ReplicaMsg::Request(m) => (m.to_envelope(), Vec::new()),
        };
        wire::ReplicaMessage {
            envelope: Some(envelope),
            batch,
        }
        .encode_to_vec()
    }

    /// Who signed the message itself: a replica, or for a forwarded REQUEST its client.
    pub fn signer(&self) -> Principal {
        match self {
            ReplicaMsg::PrePrepare { header, .. } => header.value().signer(),
            ReplicaMsg::Prepare(m) => m.value().signer(),
            ReplicaMsg::Commit(m) => m.value().signer(),
            ReplicaMsg::Checkpoint(m) => m.value().signer(),
            ReplicaMsg::Status(m) => m.value().signer(),
            ReplicaMsg::FetchState(m) => m.value().signer(),
            ReplicaMsg::StateChunk(m) => m.value().signer(),
            ReplicaMsg::ViewChange(m) => m.value().signer(),
            ReplicaMsg::NewView(m) => m.value().signer(),
            ReplicaMsg::FetchBatch(m) => m.value().signer(),
            ReplicaMsg::BatchData { header, .. } => header.value().signer(),
            ReplicaMsg::Request(m) => m.value().signer(),
        }
    }

    /// The message's kind, for logs and for counting rejected messages by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplicaMsg::PrePrepare { .. } => "PRE-PREPARE",
            ReplicaMsg::Prepare(_) => "PREPARE",
            ReplicaMsg::Commit(_) => "COMMIT",
            ReplicaMsg::Checkpoint(_) => "CHECKPOINT",
            ReplicaMsg::Status(_) => "STATUS",
            ReplicaMsg::FetchState(_) => "FETCH-STATE",
            ReplicaMsg::StateChunk(_) => "STATE-CHUNK",
            ReplicaMsg::ViewChange(_) => "VIEW-CHANGE",
            ReplicaMsg::NewView(_) => "NEW-VIEW",
            ReplicaMsg::FetchBatch(_) => "FETCH-BATCH",
            ReplicaMsg::BatchData { .. } => "BATCH-DATA",
            ReplicaMsg::Request(_) => "REQUEST",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, Digest, ReplicaId, SeqNo, Timestamp, View};
    use crate::message::{Body, Reply};
    use bytes::Bytes;
    use proptest::prelude::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_message_size: 1 << 20,
        max_batch_size: 8,
    };

    fn signed<T: Body>(value: T) -> Signed<T> {
        Signed::from_parts(value.encode_body(), [9; 64], value)
    }

    fn request(ts: u64) -> Signed<Request> {
        signed(Request {
            client: ClientId(3),
            timestamp: Timestamp(ts),
            operation: Bytes::from_static(b"op"),
        })
    }

    fn pre_prepare(batch: Vec<Signed<Request>>) -> ReplicaMsg {
        let header = signed(PrePrepare {
            view: View(1),
            seq: SeqNo(5),
            digest: Digest([4; 32]),
            replica: ReplicaId(1),
        });
        ReplicaMsg::PrePrepare { header, batch }
    }

    #[test]
    fn every_kind_round_trips() {
        let messages = vec![
            pre_prepare(vec![request(1), request(2)]),
            ReplicaMsg::Prepare(signed(Prepare {
                view: View(2),
                seq: SeqNo(3),
                digest: Digest([1; 32]),
                replica: ReplicaId(2),
            })),
            ReplicaMsg::Commit(signed(Commit {
                view: View(2),
                seq: SeqNo(3),
                digest: Digest([1; 32]),
                replica: ReplicaId(0),
            })),
            ReplicaMsg::Checkpoint(signed(Checkpoint {
                seq: SeqNo(128),
                digest: Digest([7; 32]),
                replica: ReplicaId(3),
            })),
            ReplicaMsg::Status(signed(Status {
                view: View(0),
                stable: SeqNo(0),
                executed: SeqNo(9),
                replica: ReplicaId(1),
                changing_view: true,
                asking: true,
            })),
            ReplicaMsg::ViewChange(signed(ViewChange {
                new_view: View(3),
                stable_seq: SeqNo(0),
                checkpoint_proof: vec![],
                prepared: vec![],
                replica: ReplicaId(2),
            })),
            ReplicaMsg::NewView(signed(NewView {
                view: View(3),
                view_changes: vec![],
                pre_prepares: vec![],
                replica: ReplicaId(3),
            })),
            ReplicaMsg::FetchBatch(signed(FetchBatch {
                seq: SeqNo(7),
                digest: Digest([2; 32]),
                replica: ReplicaId(0),
            })),
            ReplicaMsg::BatchData {
                header: signed(BatchData {
                    seq: SeqNo(7),
                    digest: Digest([2; 32]),
                    replica: ReplicaId(1),
                }),
                batch: vec![request(5), request(6)],
            },
            ReplicaMsg::Request(request(4)),
        ];
        for m in messages {
            assert_eq!(
                ReplicaMsg::decode(&m.encode(), LIMITS),
                Ok(m.clone()),
                "{}",
                m.kind()
            );
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let bytes = vec![0u8; 100];
        let limits = DecodeLimits {
            max_message_size: 99,
            max_batch_size: 8,
        };
        assert_eq!(
            ReplicaMsg::decode(&bytes, limits),
            Err(DecodeError::TooLarge {
                size: 100,
                limit: 99
            })
        );
    }

    #[test]
    fn too_many_requests_in_a_batch_is_refused() {
        let m = pre_prepare((0..9).map(request).collect());
        assert_eq!(
            ReplicaMsg::decode(&m.encode(), LIMITS),
            Err(DecodeError::BatchTooLarge { size: 9, limit: 8 })
        );
    }

    #[test]
    fn a_batch_beside_anything_but_a_pre_prepare_or_batch_data_is_refused() {
        let prepare = signed(Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([1; 32]),
            replica: ReplicaId(1),
        });
        let wire = wire::ReplicaMessage {
            envelope: Some(prepare.to_envelope()),
            batch: vec![request(1).to_envelope()],
        };
        assert_eq!(
            ReplicaMsg::decode(&wire.encode_to_vec(), LIMITS),
            Err(DecodeError::UnexpectedBatch)
        );
    }

    #[test]
    fn a_reply_is_not_a_replica_message() {
        let reply = signed(Reply {
            view: View(0),
            timestamp: Timestamp(1),
            client: ClientId(1),
            replica: ReplicaId(0),
            result: Bytes::new(),
        });
        let wire = wire::ReplicaMessage {
            envelope: Some(reply.to_envelope()),
            batch: vec![],
        };
        assert_eq!(
            ReplicaMsg::decode(&wire.encode_to_vec(), LIMITS),
            Err(DecodeError::NotAReplicaMessage("REPLY"))
        );
    }

    #[test]
    fn short_digest_and_signature_are_refused() {
        let mut body = wire::SignedBody::decode(
            signed(Commit {
                view: View(0),
                seq: SeqNo(1),
                digest: Digest([1; 32]),
                replica: ReplicaId(1),
            })
            .body()
            .clone(),
        )
        .unwrap();
        if let Some(Kind::Commit(c)) = &mut body.kind {
            c.digest = Bytes::from_static(&[1; 31]);
        }
        let envelope = wire::SignedEnvelope {
            body: body.encode_to_vec().into(),
            signature: Bytes::from(vec![0; 64]),
            authenticator: Bytes::new(),
        };
        let wire = wire::ReplicaMessage {
            envelope: Some(envelope.clone()),
            batch: vec![],
        };
        assert_eq!(
            ReplicaMsg::decode(&wire.encode_to_vec(), LIMITS),
            Err(DecodeError::BadLength {
                field: "digest",
                expected: 32,
                got: 31
            })
        );
        let short_sig = wire::SignedEnvelope {
            signature: Bytes::from(vec![0; 63]),
            ..envelope
        };
        let wire = wire::ReplicaMessage {
            envelope: Some(short_sig),
            batch: vec![],
        };
        assert!(matches!(
            ReplicaMsg::decode(&wire.encode_to_vec(), LIMITS),
            Err(DecodeError::BadLength {
                field: "signature",
                ..
            })
        ));
    }

    proptest! {
        // Whatever bytes arrive, decoding returns; it never panics.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ReplicaMsg::decode(&bytes, LIMITS);
            let _ = Signed::<Request>::decode(&bytes, 1 << 20);
        }

        // Flipping any byte of a valid message gives either an error or some other well-formed message.
        #[test]
        fn corrupting_a_valid_message_never_panics(index in 0usize..200, flip in 1u8..=255) {
            let mut bytes = pre_prepare(vec![request(1)]).encode();
            let i = index % bytes.len();
            bytes[i] ^= flip;
            let _ = ReplicaMsg::decode(&bytes, LIMITS);
        }
    }
}
