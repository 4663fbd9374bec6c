use thiserror::Error;

/// Why received bytes were not accepted as a message. Decoding never panics: every malformed input ends here.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` has {got} bytes, expected {expected}")]
    BadLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("expected a {expected} message, got {got}")]
    UnexpectedKind {
        expected: &'static str,
        got: &'static str,
    },
    #[error("a {0} message cannot travel between replicas")]
    NotAReplicaMessage(&'static str),
    #[error("only a PRE-PREPARE or a BATCH-DATA carries a batch")]
    UnexpectedBatch,
    #[error("batch of {size} requests exceeds the limit of {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error(
        "a {0} message must be signed; only requests and replies may carry a MAC authenticator"
    )]
    AuthenticatorNotAllowed(&'static str),
    #[error("an authenticator of {0} bytes is not a whole number of MACs within the limit")]
    BadAuthenticator(usize),
    #[error("a message carries both a signature and an authenticator")]
    TwoSeals,
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}
