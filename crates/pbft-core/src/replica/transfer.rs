//! State transfer, the replica's side: noticing it is behind a certified checkpoint, fetching the snapshot from
//! the replicas that certified it, serving snapshots to others, and installing one once it matches.

use bytes::Bytes;
use pbft_types::{
    ClientId, Digest, FetchState, Principal, ReplicaId, ReplicaMsg, SeqNo, StateChunk, Timestamp,
};

use super::Replica;
use crate::checkpoint::checkpoint_digest;
use crate::client_table::{ClientTable, Freshness};
use crate::io::{Dest, Output, RejectReason, Timer};
use crate::state_transfer::{ChunkOutcome, Transfer, decode_snapshot};

impl Replica {
    /// A replica that sees q replicas certify a checkpoint above what it executed first gives the log a moment
    /// to catch up by itself (the votes often arrive just before the last COMMITs), then fetches the state.
    pub(super) fn schedule_transfer(&mut self) {
        let behind = self
            .checkpoints
            .certified_above(self.last_executed, self.quorum())
            .is_some();
        if behind && !self.transfer_timer_set {
            self.transfer_timer_set = true;
            let after = self.config.params.status_interval;
            self.out.push(Output::SetTimer {
                timer: Timer::StateTransfer,
                after,
            });
        }
    }

    /// Starts a transfer to the highest certified checkpoint, or retries the current one with the next source
    /// if no chunk arrived since the last attempt.
    pub(super) fn drive_transfer(&mut self) {
        let certified = self
            .checkpoints
            .certified_above(self.last_executed, self.quorum());
        let Some(certified) = certified else {
            // Nothing certified above what this replica executed: the log caught up by itself.
            self.transfer = None;
            return;
        };
        match &mut self.transfer {
            Some(t) if t.seq == certified.seq && t.digest == certified.digest => {
                if !t.progressed {
                    t.retry();
                }
                t.progressed = false;
            }
            _ => {
                let sources: Vec<ReplicaId> = certified
                    .proof
                    .iter()
                    .map(|c| c.replica)
                    .filter(|r| *r != self.id)
                    .collect();
                if sources.is_empty() {
                    return;
                }
                let mut transfer = Transfer::new(certified.seq, certified.digest, sources);
                transfer.proof = certified.proof;
                self.transfer = Some(transfer);
            }
        }
        self.request_chunk();
        self.transfer_timer_set = true;
        let after = self.config.params.request_timeout;
        self.out.push(Output::SetTimer {
            timer: Timer::StateTransfer,
            after,
        });
    }

    fn request_chunk(&mut self) {
        let Some(t) = &self.transfer else { return };
        let Some(source) = t.source() else { return };
        let fetch = FetchState {
            seq: t.seq,
            digest: t.digest,
            offset: t.offset(),
            replica: self.id,
        };
        let fetch = self.signer.sign(fetch);
        self.send(
            Dest::Replica(source),
            ReplicaMsg::FetchState(fetch.into_signed()),
        );
    }

    /// Serves a chunk of a checkpoint this replica holds.
    pub(super) fn on_fetch_state(&mut self, from: ReplicaId, fetch: &FetchState) {
        let unexpected = RejectReason::UnexpectedStateTransfer;
        let held = self
            .checkpoints
            .taken(fetch.seq)
            .filter(|t| t.digest == fetch.digest);
        let Some(snapshot) = held.map(|t| t.snapshot.clone()) else {
            return self.reject(Principal::Replica(from), "FETCH-STATE", unexpected);
        };
        let total = snapshot.len();
        let Some(start) = usize::try_from(fetch.offset).ok().filter(|o| *o <= total) else {
            return self.reject(Principal::Replica(from), "FETCH-STATE", unexpected);
        };
        let end = start
            .saturating_add(self.config.params.state_chunk_size)
            .min(total);
        let chunk = StateChunk {
            seq: fetch.seq,
            digest: fetch.digest,
            offset: fetch.offset,
            total: total as u64,
            data: snapshot.slice(start..end),
            replica: self.id,
        };
        let chunk = self.signer.sign(chunk);
        self.send(
            Dest::Replica(from),
            ReplicaMsg::StateChunk(chunk.into_signed()),
        );
    }

    pub(super) fn on_state_chunk(&mut self, from: ReplicaId, chunk: &StateChunk) {
        let max = self.config.params.max_snapshot_size;
        let outcome = match &mut self.transfer {
            Some(t) => t.accept(from, chunk, max),
            None => ChunkOutcome::Ignored,
        };
        match outcome {
            ChunkOutcome::Ignored => {
                let reason = RejectReason::UnexpectedStateTransfer;
                self.reject(Principal::Replica(from), "STATE-CHUNK", reason)
            }
            ChunkOutcome::Next(_) => self.request_chunk(),
            ChunkOutcome::Bad => {
                if let Some(t) = &mut self.transfer {
                    t.retry();
                }
                self.request_chunk();
            }
            ChunkOutcome::Complete(snapshot) => self.install(snapshot),
        }
    }

    /// Checks a complete snapshot against the certified digest and, if it matches, makes it this replica's
    /// state. A snapshot that does not match changes nothing and the next source is tried.
    fn install(&mut self, snapshot: Bytes) {
        let Some((seq, digest, proof)) = self
            .transfer
            .as_ref()
            .map(|t| (t.seq, t.digest, t.proof.clone()))
        else {
            return;
        };
        if seq <= self.last_executed {
            // The log caught up while the snapshot travelled: it is no longer needed.
            self.transfer = None;
            return;
        }
        let Some(clients) = self.restore_checked(seq, digest, &snapshot) else {
            if let Some(t) = &mut self.transfer {
                t.retry();
            }
            return self.request_chunk();
        };
        self.clients = clients;
        self.last_executed = seq;
        self.transfer = None;
        if self.transfer_timer_set {
            self.transfer_timer_set = false;
            self.out.push(Output::CancelTimer(Timer::StateTransfer));
        }
        let clients = &self.clients;
        let unexecuted =
            |c: &ClientId, t: &mut Timestamp| clients.freshness(*c, *t) == Freshness::Fresh;
        self.in_flight.retain(unexecuted);
        self.waiting
            .retain(|r| clients.freshness(r.client, r.timestamp) == Freshness::Fresh);
        self.out.push(Output::StateInstalled { seq, digest });
        // Stable at once on its certificate: the votes that certified it may have been capped away since.
        if self.checkpoints.adopt_stable(seq, digest, proof) {
            self.discard_below(seq);
        }
        self.record_checkpoint(seq, digest, snapshot);
        // The installed state is this replica's new starting point after a crash.
        self.persist_stable();
        self.execute_committed();
        // The requests still waiting were timed while this replica was behind; from its new state they get a
        // full timeout to be ordered, as at a replica that was never behind.
        self.restart_request_timer();
        self.ask_peers();
    }

    /// Restores the application from `snapshot` if the result has the certified digest; otherwise puts the
    /// previous state back and returns `None`.
    pub(super) fn restore_checked(
        &mut self,
        seq: SeqNo,
        digest: Digest,
        snapshot: &[u8],
    ) -> Option<ClientTable> {
        let (app_state, clients) = decode_snapshot(snapshot).ok()?;
        let previous = self.app.snapshot();
        self.app.restore(&app_state).ok()?;
        if checkpoint_digest(seq, self.app.digest(), clients.digest()) == digest {
            return Some(clients);
        }
        // The application accepted its own snapshot when it made it; failing now would break its contract.
        if let Err(e) = self.app.restore(&previous) {
            panic!("the application cannot restore its own snapshot: {e}");
        }
        None
    }
}
