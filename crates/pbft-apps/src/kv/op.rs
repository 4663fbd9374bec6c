//! The key-value store's operations and results, and their encoding as the protobuf messages `KvOperation` and
//! `KvResult` of `proto/pbft.proto`.

use bytes::Bytes;
use pbft_types::wire::{self, kv_operation, kv_result};
use prost::Message;
use thiserror::Error;

/// Why bytes were not accepted as a key-value operation or result. Decoding never panics: every malformed input
/// ends here.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KvError {
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    #[error("the operation names no kind (put, get or delete)")]
    MissingOperation,
    #[error("the result names no outcome")]
    MissingOutcome,
}

impl From<prost::DecodeError> for KvError {
    fn from(e: prost::DecodeError) -> Self {
        KvError::Malformed(e.to_string())
    }
}

/// One operation on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put { key: Bytes, value: Bytes },
    Get { key: Bytes },
    Delete { key: Bytes },
}

impl KvOp {
    /// The bytes a client puts in `Request.operation`.
    pub fn encode(&self) -> Bytes {
        let op = match self {
            KvOp::Put { key, value } => kv_operation::Op::Put(wire::KvPut {
                key: key.clone(),
                value: value.clone(),
            }),
            KvOp::Get { key } => kv_operation::Op::Get(wire::KvGet { key: key.clone() }),
            KvOp::Delete { key } => kv_operation::Op::Delete(wire::KvDelete { key: key.clone() }),
        };
        wire::KvOperation { op: Some(op) }.encode_to_vec().into()
    }

    pub fn decode(bytes: &[u8]) -> Result<KvOp, KvError> {
        let op = wire::KvOperation::decode(bytes)?
            .op
            .ok_or(KvError::MissingOperation)?;
        Ok(match op {
            kv_operation::Op::Put(wire::KvPut { key, value }) => KvOp::Put { key, value },
            kv_operation::Op::Get(wire::KvGet { key }) => KvOp::Get { key },
            kv_operation::Op::Delete(wire::KvDelete { key }) => KvOp::Delete { key },
        })
    }
}

/// The result of one operation, as the client receives it in `Reply.result`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    /// A put, or a delete of a key that was present.
    Done,
    /// The value of the key a get asked for.
    Value(Bytes),
    /// A get or delete of a key that was absent.
    NotFound,
    /// The operation could not be decoded; nothing changed.
    Error(String),
}

impl KvResult {
    pub fn encode(&self) -> Bytes {
        let outcome = match self {
            KvResult::Done => kv_result::Outcome::Done(wire::KvDone {}),
            KvResult::Value(value) => kv_result::Outcome::Value(value.clone()),
            KvResult::NotFound => kv_result::Outcome::NotFound(wire::KvNotFound {}),
            KvResult::Error(reason) => kv_result::Outcome::Error(reason.clone()),
        };
        wire::KvResult {
            outcome: Some(outcome),
        }
        .encode_to_vec()
        .into()
    }

    pub fn decode(bytes: &[u8]) -> Result<KvResult, KvError> {
        let outcome = wire::KvResult::decode(bytes)?
            .outcome
            .ok_or(KvError::MissingOutcome)?;
        Ok(match outcome {
            kv_result::Outcome::Done(wire::KvDone {}) => KvResult::Done,
            kv_result::Outcome::Value(value) => KvResult::Value(value),
            kv_result::Outcome::NotFound(wire::KvNotFound {}) => KvResult::NotFound,
            kv_result::Outcome::Error(reason) => KvResult::Error(reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    fn kv_op() -> impl Strategy<Value = KvOp> {
        prop_oneof![
            (bytes(), bytes()).prop_map(|(key, value)| KvOp::Put { key, value }),
            bytes().prop_map(|key| KvOp::Get { key }),
            bytes().prop_map(|key| KvOp::Delete { key }),
        ]
    }

    fn kv_result() -> impl Strategy<Value = KvResult> {
        prop_oneof![
            Just(KvResult::Done),
            bytes().prop_map(KvResult::Value),
            Just(KvResult::NotFound),
            ".{0,12}".prop_map(KvResult::Error),
        ]
    }

    #[test]
    fn an_empty_message_is_no_operation() {
        assert_eq!(KvOp::decode(&[]), Err(KvError::MissingOperation));
        assert_eq!(KvResult::decode(&[]), Err(KvError::MissingOutcome));
    }

    #[test]
    fn truncated_bytes_are_malformed() {
        let encoded = KvOp::Put {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
        }
        .encode();
        let cut = &encoded[..encoded.len() - 1];
        assert!(matches!(KvOp::decode(cut), Err(KvError::Malformed(_))));
    }

    #[test]
    fn an_empty_value_is_still_a_value() {
        // proto3 drops empty scalar fields, but a oneof member keeps its presence: an empty value must not come
        // back as a missing outcome.
        let empty = KvResult::Value(Bytes::new());
        assert_eq!(KvResult::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn kinds_are_told_apart_on_the_wire() {
        let key = Bytes::from_static(b"k");
        let get = KvOp::Get { key: key.clone() }.encode();
        let delete = KvOp::Delete { key }.encode();
        assert_ne!(get, delete);
        assert_ne!(KvResult::Done.encode(), KvResult::NotFound.encode());
    }

    proptest! {
        #[test]
        fn operations_round_trip(op in kv_op()) {
            prop_assert_eq!(KvOp::decode(&op.encode()), Ok(op));
        }

        #[test]
        fn results_round_trip(result in kv_result()) {
            prop_assert_eq!(KvResult::decode(&result.encode()), Ok(result));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = KvOp::decode(&raw);
            let _ = KvResult::decode(&raw);
        }

        // Random bytes rarely get past the first tag; damaged valid encodings reach the nested messages too.
        #[test]
        fn decoding_damaged_operations_never_panics(
            op in kv_op(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut raw = op.encode().to_vec();
            let i = at.index(raw.len());
            raw[i] = byte;
            raw.truncate(cut.index(raw.len() + 1));
            let _ = KvOp::decode(&raw);
            let _ = KvResult::decode(&raw);
        }
    }
}
