//! State transfer: a replica behind a certified stable checkpoint fetches that checkpoint's snapshot, chunk by
//! chunk, from one of the replicas that certified it, and trusts none of it until the whole snapshot reproduces
//! the certified digest. A source that sends garbage or stops answering costs a retry with the next one.

use bytes::Bytes;
use pbft_crypto::Verified;
use pbft_types::{Checkpoint, ClientId, Digest, ReplicaId, SeqNo, StateChunk, Timestamp, wire};
use prost::Message;

use crate::client_table::{ClientTable, LastReply};

/// Encodes the replicated state at a checkpoint: the application's snapshot and the client table.
pub fn encode_snapshot(app: Bytes, clients: &ClientTable) -> Bytes {
    let clients = clients
        .iter()
        .map(|(c, last)| wire::ClientRecord {
            client: c.0,
            timestamp: last.timestamp.0,
            result: last.result.clone(),
        })
        .collect();
    Bytes::from(
        wire::StateSnapshot {
            application: app,
            clients,
        }
        .encode_to_vec(),
    )
}

/// Decodes a snapshot from another replica. Client records must be in strictly increasing client order, so
/// that one snapshot has exactly one meaning.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(Bytes, ClientTable), String> {
    let snapshot = wire::StateSnapshot::decode(bytes).map_err(|e| e.to_string())?;
    let mut previous: Option<u64> = None;
    for record in &snapshot.clients {
        if previous.is_some_and(|p| p >= record.client) {
            return Err("client records out of order".into());
        }
        previous = Some(record.client);
    }
    let clients = ClientTable::from_entries(snapshot.clients.into_iter().map(|r| {
        (
            ClientId(r.client),
            LastReply {
                timestamp: Timestamp(r.timestamp),
                result: r.result,
            },
        )
    }));
    Ok((snapshot.application, clients))
}

/// What a received chunk means for the transfer in progress.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Not for this transfer, not from its current source, or not the next expected bytes.
    Ignored,
    /// Appended; ask for the bytes from this offset on.
    Next(u64),
    /// The snapshot is complete: check it against the certified digest.
    Complete(Bytes),
    /// The source lied about the size or sent nothing: move on to the next source.
    Bad,
}

#[derive(Debug)]
pub struct Transfer {
    pub seq: SeqNo,
    pub digest: Digest,
    /// The q CHECKPOINTs that certify (seq, digest), kept so that the installed state is stable at once, whatever
    /// happened to the votes meanwhile.
    pub proof: Vec<Verified<Checkpoint>>,
    sources: Vec<ReplicaId>,
    attempt: usize,
    buffer: Vec<u8>,
    /// Whether a chunk arrived since the retry timer was last armed.
    pub progressed: bool,
}

impl Transfer {
    /// `sources` are the replicas that certified (seq, digest), this replica excluded; never empty.
    pub fn new(seq: SeqNo, digest: Digest, sources: Vec<ReplicaId>) -> Transfer {
        Transfer {
            seq,
            digest,
            proof: Vec::new(),
            sources,
            attempt: 0,
            buffer: Vec::new(),
            progressed: false,
        }
    }

    pub fn source(&self) -> Option<ReplicaId> {
        self.sources
            .get(self.attempt % self.sources.len().max(1))
            .copied()
    }

    pub fn offset(&self) -> u64 {
        self.buffer.len() as u64
    }

    /// Starts over with the next source.
    pub fn retry(&mut self) {
        self.attempt += 1;
        self.buffer.clear();
        self.progressed = false;
    }

    pub fn accept(&mut self, from: ReplicaId, chunk: &StateChunk, max_size: u64) -> ChunkOutcome {
        if chunk.seq != self.seq || chunk.digest != self.digest || Some(from) != self.source() {
            return ChunkOutcome::Ignored;
        }
        if chunk.offset != self.offset() {
            return ChunkOutcome::Ignored;
        }
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if chunk.total > max_size
            || end > chunk.total
            || (chunk.data.is_empty() && end < chunk.total)
        {
            return ChunkOutcome::Bad;
        }
        self.progressed = true;
        self.buffer.extend_from_slice(&chunk.data);
        if end == chunk.total {
            ChunkOutcome::Complete(Bytes::from(std::mem::take(&mut self.buffer)))
        } else {
            ChunkOutcome::Next(end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, total: u64, data: &'static [u8], from: u64) -> (ReplicaId, StateChunk) {
        let chunk = StateChunk {
            seq: SeqNo(8),
            digest: Digest([1; 32]),
            offset,
            total,
            data: Bytes::from_static(data),
            replica: ReplicaId(from),
        };
        (ReplicaId(from), chunk)
    }

    #[test]
    fn chunks_assemble_in_order_from_the_current_source() {
        let mut t = Transfer::new(SeqNo(8), Digest([1; 32]), vec![ReplicaId(2), ReplicaId(3)]);
        let (from, c) = chunk(0, 5, b"abc", 2);
        assert_eq!(t.accept(from, &c, 100), ChunkOutcome::Next(3));
        let (from, c) = chunk(0, 5, b"abc", 3);
        assert_eq!(
            t.accept(from, &c, 100),
            ChunkOutcome::Ignored,
            "not the current source"
        );
        let (from, c) = chunk(1, 5, b"bc", 2);
        assert_eq!(
            t.accept(from, &c, 100),
            ChunkOutcome::Ignored,
            "not the next bytes"
        );
        let (from, c) = chunk(3, 5, b"de", 2);
        assert_eq!(
            t.accept(from, &c, 100),
            ChunkOutcome::Complete(Bytes::from_static(b"abcde"))
        );
    }

    #[test]
    fn a_lying_source_is_detected_and_the_next_one_tried() {
        let mut t = Transfer::new(SeqNo(8), Digest([1; 32]), vec![ReplicaId(2), ReplicaId(3)]);
        let (from, c) = chunk(0, 1000, b"abc", 2);
        assert_eq!(
            t.accept(from, &c, 100),
            ChunkOutcome::Bad,
            "larger than the limit"
        );
        let (from, c) = chunk(0, 2, b"abc", 2);
        assert_eq!(
            t.accept(from, &c, 100),
            ChunkOutcome::Bad,
            "more bytes than announced"
        );
        let (from, c) = chunk(0, 5, b"", 2);
        assert_eq!(
            t.accept(from, &c, 100),
            ChunkOutcome::Bad,
            "an empty chunk before the end"
        );
        t.retry();
        assert_eq!(t.source(), Some(ReplicaId(3)));
        t.retry();
        assert_eq!(
            t.source(),
            Some(ReplicaId(2)),
            "sources are tried round robin"
        );
    }

    #[test]
    fn snapshots_round_trip_and_reject_disorder() {
        let mut clients = ClientTable::default();
        clients.record(ClientId(2), Timestamp(5), Bytes::from_static(b"r"));
        clients.record(ClientId(1), Timestamp(3), Bytes::from_static(b"q"));
        let bytes = encode_snapshot(Bytes::from_static(b"app"), &clients);
        let (app, decoded) = decode_snapshot(&bytes).unwrap();
        assert_eq!(
            (app.as_ref(), decoded.digest()),
            (&b"app"[..], clients.digest())
        );

        let disordered = wire::StateSnapshot {
            application: Bytes::new(),
            clients: vec![
                wire::ClientRecord {
                    client: 2,
                    timestamp: 1,
                    result: Bytes::new(),
                },
                wire::ClientRecord {
                    client: 2,
                    timestamp: 2,
                    result: Bytes::new(),
                },
            ],
        };
        assert!(decode_snapshot(&disordered.encode_to_vec()).is_err());
        assert!(decode_snapshot(b"\xff\xff\xff").is_err());
    }
}
