//! What the checkers report: a broken invariant of PROTOCOL.md, with enough detail to start debugging from the
//! message alone.

use std::time::Duration;

use bytes::Bytes;
use pbft_apps::KvResult;
use pbft_types::{ClientId, Digest, ReplicaId, SeqNo, Timestamp, View};
use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Violation {
    #[error(
        "agreement: replica {replica} recorded a block at seq {seq} that differs from the one replaying the history \
         gives (the ledger's chains would differ)"
    )]
    RecordDiverges { replica: ReplicaId, seq: SeqNo },

    #[error(
        "total order: replica {replica} committed seq {seq} right after seq {last}; execution must be consecutive"
    )]
    OutOfOrder {
        replica: ReplicaId,
        seq: SeqNo,
        last: SeqNo,
    },

    #[error(
        "state transfer: replica {replica} installed the state at seq {seq} after executing up to {last}, but no \
         replica had executed seq {seq} yet (the history ends at {history})"
    )]
    InstalledUnexecuted {
        replica: ReplicaId,
        seq: SeqNo,
        last: SeqNo,
        history: SeqNo,
    },

    #[error(
        "agreement: replica {replica} committed batch {got:?} at seq {seq}, but the history holds batch {expected:?} \
         there (first committed by replica {first})"
    )]
    Disagreement {
        replica: ReplicaId,
        seq: SeqNo,
        got: Digest,
        expected: Digest,
        first: ReplicaId,
    },

    #[error(
        "agreement: replica {replica} executed request {index} of seq {seq} with result {got}, replica {first} with \
         {expected}"
    )]
    ResultsDiverge {
        replica: ReplicaId,
        seq: SeqNo,
        index: usize,
        got: String,
        expected: String,
        first: ReplicaId,
    },

    #[error(
        "replica {replica} committed seq {seq} as batch {claimed:?}, but its requests hash to {actual:?}"
    )]
    BatchDigest {
        replica: ReplicaId,
        seq: SeqNo,
        claimed: Digest,
        actual: Digest,
    },

    #[error(
        "replica {replica} reported {results} results for the {requests} requests of seq {seq}"
    )]
    ResultCount {
        replica: ReplicaId,
        seq: SeqNo,
        results: usize,
        requests: usize,
    },

    #[error(
        "certificate: replica {replica}'s {kind} certificate for seq {seq} counts replica {voter} twice"
    )]
    DuplicateVote {
        kind: &'static str,
        replica: ReplicaId,
        seq: SeqNo,
        voter: ReplicaId,
    },

    #[error(
        "certificate: replica {replica}'s {kind} certificate for seq {seq} holds {votes} votes from distinct \
         replicas; it needs {quorum}"
    )]
    ShortCertificate {
        kind: &'static str,
        replica: ReplicaId,
        seq: SeqNo,
        votes: usize,
        quorum: usize,
    },

    #[error(
        "certificate: replica {replica}'s {kind} certificate for (view {view}, seq {seq}, {digest:?}) holds a vote \
         of replica {voter} for (view {vote_view}, seq {vote_seq}, {vote_digest:?})"
    )]
    MismatchedVote {
        kind: &'static str,
        replica: ReplicaId,
        view: View,
        seq: SeqNo,
        digest: Digest,
        voter: ReplicaId,
        vote_view: View,
        vote_seq: SeqNo,
        vote_digest: Digest,
    },

    #[error(
        "certificate: the {kind} of replica {voter} in replica {replica}'s certificate for seq {seq} does not \
         verify: {reason}"
    )]
    ForgedVote {
        kind: &'static str,
        replica: ReplicaId,
        seq: SeqNo,
        voter: ReplicaId,
        reason: String,
    },

    #[error(
        "certificate: replica {replica}'s prepared certificate for seq {seq} counts a PREPARE from the primary \
         {primary}, which sends none"
    )]
    PrepareFromPrimary {
        replica: ReplicaId,
        seq: SeqNo,
        primary: ReplicaId,
    },

    #[error(
        "validity: seq {seq} holds request (client {client}, t {timestamp}), which no client issued with that \
         operation"
    )]
    Unissued {
        seq: SeqNo,
        client: ClientId,
        timestamp: Timestamp,
    },

    #[error(
        "exactly-once: request (client {client}, t {timestamp}) executed at seq {first} and again at seq {seq}"
    )]
    ExecutedTwice {
        client: ClientId,
        timestamp: Timestamp,
        first: SeqNo,
        seq: SeqNo,
    },

    #[error(
        "exactly-once: request (client {client}, t {timestamp}) executed at seq {seq} although the client's later \
         request t {last} had already executed"
    )]
    StaleExecuted {
        client: ClientId,
        timestamp: Timestamp,
        seq: SeqNo,
        last: Timestamp,
    },

    #[error(
        "request (client {client}, t {timestamp}) at seq {seq} was skipped, but it is newer than the client's last \
         executed request (t {last})"
    )]
    FreshSkipped {
        client: ClientId,
        timestamp: Timestamp,
        seq: SeqNo,
        last: Timestamp,
    },

    #[error(
        "replica {replica} executed (client {client}, t {timestamp}) at seq {seq} with result {got}; executing the \
         history in order gives {expected}"
    )]
    WrongResult {
        replica: ReplicaId,
        seq: SeqNo,
        client: ClientId,
        timestamp: Timestamp,
        got: String,
        expected: String,
    },

    #[error(
        "client results: client {client} accepted {got} for request t {timestamp}; executing the history in order \
         gives {expected}"
    )]
    ClientResult {
        client: ClientId,
        timestamp: Timestamp,
        got: String,
        expected: String,
    },

    #[error(
        "client results: client {client} accepted a result for request t {timestamp}, which never executed"
    )]
    CompletedUnexecuted {
        client: ClientId,
        timestamp: Timestamp,
    },

    #[error("bounded log: replica {replica} {detail}")]
    UnboundedLog { replica: ReplicaId, detail: String },

    #[error(
        "liveness: stalled at {at:?} (faults healed at {heal_at:?}); outstanding: {outstanding}; replicas: {replicas}"
    )]
    Stall {
        at: Duration,
        heal_at: Duration,
        outstanding: String,
        replicas: String,
    },

    #[error("simulator: {0}")]
    Driver(String),
}

/// A key-value result in words, for violation messages; bytes that are not a result are shown in hex.
pub fn describe_result(bytes: &Bytes) -> String {
    match KvResult::decode(bytes) {
        Ok(KvResult::Done) => "Done".to_string(),
        Ok(KvResult::NotFound) => "NotFound".to_string(),
        Ok(KvResult::Value(v)) => format!("Value({:?})", String::from_utf8_lossy(&v)),
        Ok(KvResult::Error(e)) => format!("Error({e:?})"),
        Err(_) => format!("bytes {}", hex_of(bytes)),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An optional result in words: `None` is a request that was not executed.
pub fn describe_optional(result: &Option<Bytes>) -> String {
    match result {
        Some(bytes) => describe_result(bytes),
        None => "not executed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_as_words() {
        assert_eq!(describe_result(&KvResult::Done.encode()), "Done");
        assert_eq!(
            describe_result(&KvResult::Value(Bytes::from_static(b"v1")).encode()),
            "Value(\"v1\")"
        );
        assert_eq!(describe_optional(&None), "not executed");
        assert_eq!(describe_result(&Bytes::from_static(&[0xff])), "bytes ff");
    }

    #[test]
    fn a_violation_names_who_and_where() {
        let v = Violation::OutOfOrder {
            replica: ReplicaId(2),
            seq: SeqNo(3),
            last: SeqNo(1),
        };
        assert_eq!(
            v.to_string(),
            "total order: replica 2 committed seq 3 right after seq 1; execution must be consecutive"
        );
    }
}
