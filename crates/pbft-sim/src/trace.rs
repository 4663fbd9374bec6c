//! One-line descriptions of messages, for the trace of a replayed run (`pbft sim --seed S --trace`): when a seed
//! fails, its trace shows who sent what to whom and when, which is usually enough to see why.

use pbft_crypto::VerifiedMsg;
use pbft_types::ReplicaMsg;

/// A replica message as it is sent.
pub fn describe(msg: &ReplicaMsg) -> String {
    match msg {
        ReplicaMsg::PrePrepare { header, batch } => {
            let h = header.value();
            format!(
                "PRE-PREPARE v{} n{} {:?} ({} requests)",
                h.view,
                h.seq,
                h.digest,
                batch.len()
            )
        }
        ReplicaMsg::Prepare(m) => {
            let m = m.value();
            format!(
                "PREPARE v{} n{} {:?} from {}",
                m.view, m.seq, m.digest, m.replica
            )
        }
        ReplicaMsg::Commit(m) => {
            let m = m.value();
            format!(
                "COMMIT v{} n{} {:?} from {}",
                m.view, m.seq, m.digest, m.replica
            )
        }
        ReplicaMsg::Checkpoint(m) => {
            let m = m.value();
            format!("CHECKPOINT n{} {:?} from {}", m.seq, m.digest, m.replica)
        }
        ReplicaMsg::Status(m) => {
            let m = m.value();
            format!(
                "STATUS v{} stable {} executed {} from {}",
                m.view, m.stable, m.executed, m.replica
            )
        }
        ReplicaMsg::FetchState(m) => {
            let m = m.value();
            format!(
                "FETCH-STATE n{} {:?} from byte {} by {}",
                m.seq, m.digest, m.offset, m.replica
            )
        }
        ReplicaMsg::StateChunk(m) => {
            let m = m.value();
            let (start, len) = (m.offset, m.data.len());
            format!(
                "STATE-CHUNK n{} bytes {start}+{len} of {} from {}",
                m.seq, m.total, m.replica
            )
        }
        ReplicaMsg::ViewChange(m) => {
            let m = m.value();
            format!(
                "VIEW-CHANGE to v{} stable {} ({} prepared) from {}",
                m.new_view,
                m.stable_seq,
                m.prepared.len(),
                m.replica
            )
        }
        ReplicaMsg::NewView(m) => {
            let m = m.value();
            format!(
                "NEW-VIEW v{} ({} view changes, {} pre-prepares) from {}",
                m.view,
                m.view_changes.len(),
                m.pre_prepares.len(),
                m.replica
            )
        }
        ReplicaMsg::FetchBatch(m) => {
            let m = m.value();
            format!("FETCH-BATCH n{} {:?} by {}", m.seq, m.digest, m.replica)
        }
        ReplicaMsg::BatchData { header, batch } => {
            let m = header.value();
            format!(
                "BATCH-DATA n{} {:?} ({} requests) from {}",
                m.seq,
                m.digest,
                batch.len(),
                m.replica
            )
        }
        ReplicaMsg::Request(m) => {
            let m = m.value();
            format!("REQUEST client {} t {} (forwarded)", m.client, m.timestamp)
        }
    }
}

/// A replica message as it is delivered, after verification.
pub fn describe_verified(msg: &VerifiedMsg) -> String {
    let signed = msg.to_replica_msg();
    describe(&signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::KeyPair;
    use pbft_types::{Digest, Prepare, ReplicaId, SeqNo, View};

    #[test]
    fn a_vote_reads_as_one_line() {
        let prepare = KeyPair::from_seed([1; 32]).sign(Prepare {
            view: View(0),
            seq: SeqNo(5),
            digest: Digest([0xab; 32]),
            replica: ReplicaId(2),
        });
        assert_eq!(
            describe(&ReplicaMsg::Prepare(prepare)),
            "PREPARE v0 n5 abababab from 2"
        );
    }
}
