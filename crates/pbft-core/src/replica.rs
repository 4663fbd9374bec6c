//! The replica: `step` dispatches one input to the rule of PROTOCOL.md that handles it. The rules' state lives in
//! the log, the vote sets, the checkpoints and the client table; this file ties them together.

use std::collections::HashMap;

use bytes::Bytes;

use pbft_crypto::{Signer, Verified, VerifiedMsg, batch_digest};
use pbft_types::{
    Checkpoint, ClientId, ClusterConfig, Commit, ConfigError, Digest, FetchState, PrePrepare,
    Prepare, Principal, ReplicaId, ReplicaMsg, Reply, Request, SeqNo, StateChunk, Status,
    Timestamp, View,
};

use crate::app::{ExecContext, StateMachine};
use crate::checkpoint::{Checkpoints, Stable, Taken, checkpoint_digest};
use crate::client_table::{ClientTable, Freshness};
use crate::io::{Batch, Committed, Dest, Input, Output, RejectReason, Rejection, Timer};
use crate::log::Log;
use crate::pending::Pending;
use crate::quorum::Insert;
use crate::state_transfer::{ChunkOutcome, Transfer, decode_snapshot, encode_snapshot};

/// What a replica reports about itself, for status pages, metrics and the simulator's checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: ReplicaId,
    pub view: View,
    /// h: the sequence number of the last stable checkpoint.
    pub low_watermark: SeqNo,
    /// H = h + L.
    pub high_watermark: SeqNo,
    pub last_executed: SeqNo,
    /// Log slots held, all of them within (h, H].
    pub log_slots: usize,
    /// The lowest and highest sequence numbers the log holds a slot for, if any.
    pub log_range: Option<(SeqNo, SeqNo)>,
    /// Requests the replica holds that are not yet in a batch (the primary's queue).
    pub pending_requests: usize,
}

pub struct Replica {
    config: ClusterConfig,
    id: ReplicaId,
    signer: Signer,
    app: Box<dyn StateMachine>,
    view: View,
    log: Log,
    checkpoints: Checkpoints,
    clients: ClientTable,
    last_executed: SeqNo,
    /// The primary's last assigned sequence number.
    last_assigned: SeqNo,
    /// The primary's queue of requests not yet in a batch.
    pending: Pending,
    /// The newest timestamp per client in a batch the primary proposed that has not executed yet, so that a
    /// retransmitted request is not proposed twice.
    in_flight: HashMap<ClientId, Timestamp>,
    /// Requests a backup passed on to the primary and has not seen execute: its unfinished work.
    waiting: HashMap<ClientId, Timestamp>,
    /// The state transfer in progress, if this replica is behind a certified checkpoint.
    transfer: Option<Transfer>,
    batch_timer_set: bool,
    status_timer_set: bool,
    transfer_timer_set: bool,
    out: Vec<Output>,
}

impl Replica {
    /// A replica at the initial state: view 0, nothing executed. `signer` must hold this replica's key.
    pub fn new(
        config: ClusterConfig,
        id: ReplicaId,
        signer: Signer,
        app: Box<dyn StateMachine>,
    ) -> Result<Replica, ConfigError> {
        config.validate()?;
        let clients = ClientTable::default();
        let initial = checkpoint_digest(SeqNo(0), app.digest(), clients.digest());
        Ok(Replica {
            log: Log::new(config.params.window),
            checkpoints: Checkpoints::new(initial),
            id,
            signer,
            app,
            view: View(0),
            clients,
            last_executed: SeqNo(0),
            last_assigned: SeqNo(0),
            pending: Pending::default(),
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            transfer: None,
            batch_timer_set: false,
            status_timer_set: false,
            transfer_timer_set: false,
            out: Vec::new(),
            config,
        })
    }

    /// Handles one input and returns what the driver must do, in order.
    pub fn step(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Request(request) => self.on_request(request, None),
            Input::Message { from, msg } => self.on_message(from, msg),
            Input::TimerFired(Timer::Batch) => {
                self.batch_timer_set = false;
                self.propose(true);
            }
            Input::TimerFired(Timer::Status) => {
                self.status_timer_set = false;
                self.send_status();
            }
            Input::TimerFired(Timer::StateTransfer) => {
                self.transfer_timer_set = false;
                self.drive_transfer();
            }
        }
        self.arm_status_timer();
        std::mem::take(&mut self.out)
    }

    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            id: self.id,
            view: self.view,
            low_watermark: self.log.low(),
            high_watermark: self.log.high(),
            last_executed: self.last_executed,
            log_slots: self.log.len(),
            log_range: self.log.range(),
            pending_requests: self.pending.len(),
        }
    }

    /// The last stable checkpoint and the q CHECKPOINTs that prove it (none for the initial state).
    pub fn stable_checkpoint(&self) -> &Stable {
        self.checkpoints.stable()
    }

    fn primary(&self) -> ReplicaId {
        self.config.primary(self.view)
    }

    fn is_primary(&self) -> bool {
        self.primary() == self.id
    }

    fn quorum(&self) -> usize {
        self.config.quorum()
    }

    fn send(&mut self, to: Dest, msg: ReplicaMsg) {
        self.out.push(Output::Send { to, msg });
    }

    fn reject(&mut self, from: Principal, kind: &'static str, reason: RejectReason) {
        self.out
            .push(Output::Rejected(Rejection { from, kind, reason }));
    }

    fn on_message(&mut self, from: ReplicaId, msg: VerifiedMsg) {
        if !self.config.is_replica(from) || from == self.id {
            let kind = msg.kind();
            return self.reject(Principal::Replica(from), kind, RejectReason::UnknownSender);
        }
        match msg {
            VerifiedMsg::PrePrepare { header, batch } => self.on_pre_prepare(from, header, batch),
            VerifiedMsg::Prepare(prepare) => self.on_prepare(from, prepare),
            VerifiedMsg::Commit(commit) => self.on_commit(from, commit),
            VerifiedMsg::Checkpoint(checkpoint) => self.on_checkpoint(from, checkpoint),
            VerifiedMsg::Status(status) => self.on_status(from, &status),
            VerifiedMsg::FetchState(fetch) => self.on_fetch_state(from, &fetch),
            VerifiedMsg::StateChunk(chunk) => self.on_state_chunk(from, &chunk),
            VerifiedMsg::Request(request) => self.on_request(request, Some(from)),
            // View change lands in the next commit.
            VerifiedMsg::ViewChange(_)
            | VerifiedMsg::NewView(_)
            | VerifiedMsg::FetchBatch(_)
            | VerifiedMsg::BatchData { .. } => {}
        }
    }

    /// A request from its client, or forwarded by a backup. Normal case 5: an executed request is answered from
    /// the client table, never executed again.
    fn on_request(&mut self, request: Verified<Request>, forwarded_by: Option<ReplicaId>) {
        let from = forwarded_by.map_or(Principal::Client(request.client), Principal::Replica);
        let limit = self.config.params.max_request_size;
        if request.operation.len() > limit {
            let reason = RejectReason::RequestTooLarge {
                size: request.operation.len(),
                limit,
            };
            return self.reject(from, "REQUEST", reason);
        }
        match self.clients.freshness(request.client, request.timestamp) {
            Freshness::LastExecuted(last) => {
                let reply = Reply {
                    view: self.view,
                    timestamp: last.timestamp,
                    client: request.client,
                    replica: self.id,
                    result: last.result.clone(),
                };
                self.out.push(Output::Reply(reply));
                return;
            }
            Freshness::Stale => return self.reject(from, "REQUEST", RejectReason::StaleRequest),
            Freshness::Fresh => {}
        }
        if !self.is_primary() {
            if forwarded_by.is_some() {
                return self.reject(from, "REQUEST", RejectReason::NotPrimary);
            }
            // A client that retransmits to every replica suspects the primary missed its request: pass it on,
            // and keep asking the peers for what they have until it executes.
            let newest = self.waiting.entry(request.client).or_default();
            *newest = (*newest).max(request.timestamp);
            let to = Dest::Replica(self.primary());
            return self.send(to, ReplicaMsg::Request(request.into_signed()));
        }
        let proposed = self
            .in_flight
            .get(&request.client)
            .is_some_and(|t| *t >= request.timestamp);
        if proposed || !self.pending.add(request) {
            return self.reject(from, "REQUEST", RejectReason::Duplicate);
        }
        self.propose(false);
    }

    /// The primary proposes batches while it has requests and the window has room: at once when a batch is full
    /// or when nothing is in flight (no added latency under light load), otherwise when the batch timer fires.
    fn propose(&mut self, timer_fired: bool) {
        if !self.is_primary() {
            return;
        }
        let mut timer_fired = timer_fired;
        self.last_assigned = self.last_assigned.max(self.log.low());
        while !self.pending.is_empty() && self.last_assigned < self.log.high() {
            let full = self.pending.len() >= self.config.params.max_batch_size;
            let idle = self.last_assigned <= self.last_executed;
            if !(full || idle || timer_fired) {
                break;
            }
            timer_fired = false;
            let requests = self.pending.take(self.config.params.max_batch_size);
            self.propose_batch(requests);
        }
        let waiting = !self.pending.is_empty() && self.last_assigned < self.log.high();
        if waiting && !self.batch_timer_set {
            self.batch_timer_set = true;
            let after = self.config.params.batch_delay;
            self.out.push(Output::SetTimer {
                timer: Timer::Batch,
                after,
            });
        } else if !waiting && self.batch_timer_set {
            self.batch_timer_set = false;
            self.out.push(Output::CancelTimer(Timer::Batch));
        }
    }

    fn propose_batch(&mut self, requests: Vec<Verified<Request>>) {
        let seq = self.last_assigned.next();
        self.last_assigned = seq;
        for r in &requests {
            self.in_flight.insert(r.client, r.timestamp);
        }
        let batch: Batch = requests.into();
        let digest = batch_digest(batch.iter().map(Verified::signed));
        let header = self.signer.sign(PrePrepare {
            view: self.view,
            seq,
            digest,
            replica: self.id,
        });
        let msg = ReplicaMsg::PrePrepare {
            header: header.signed().clone(),
            batch: batch.iter().map(|r| r.signed().clone()).collect(),
        };
        if let Some(slot) = self.log.slot_mut(seq) {
            slot.pre_prepare = Some((header, batch));
        }
        self.send(Dest::AllReplicas, msg);
        self.advance(seq);
    }

    /// Normal case 1 and 2: a backup checks a PRE-PREPARE and, if it accepts it, logs it and sends PREPARE.
    fn on_pre_prepare(
        &mut self,
        from: ReplicaId,
        header: Verified<PrePrepare>,
        batch: Vec<Verified<Request>>,
    ) {
        let from = Principal::Replica(from);
        let (view, seq, digest) = (header.view, header.seq, header.digest);
        if view != self.view {
            let reason = RejectReason::WrongView {
                got: view,
                current: self.view,
            };
            return self.reject(from, "PRE-PREPARE", reason);
        }
        if header.replica != self.primary() {
            let reason = RejectReason::NotFromPrimary {
                primary: self.primary(),
            };
            return self.reject(from, "PRE-PREPARE", reason);
        }
        if !self.log.in_window(seq) {
            return self.reject(from, "PRE-PREPARE", self.outside(seq));
        }
        let params = &self.config.params;
        if batch.len() > params.max_batch_size {
            let reason = RejectReason::BatchTooLarge {
                size: batch.len(),
                limit: params.max_batch_size,
            };
            return self.reject(from, "PRE-PREPARE", reason);
        }
        if let Some(r) = batch
            .iter()
            .find(|r| r.operation.len() > params.max_request_size)
        {
            let reason = RejectReason::RequestTooLarge {
                size: r.operation.len(),
                limit: params.max_request_size,
            };
            return self.reject(from, "PRE-PREPARE", reason);
        }
        if let Some(accepted) = self.log.get(seq).and_then(|s| s.digest()) {
            let reason = if accepted == digest {
                RejectReason::Duplicate
            } else {
                RejectReason::ConflictingDigest {
                    accepted,
                    got: digest,
                }
            };
            return self.reject(from, "PRE-PREPARE", reason);
        }
        if batch_digest(batch.iter().map(Verified::signed)) != digest {
            return self.reject(from, "PRE-PREPARE", RejectReason::BatchDigestMismatch);
        }
        let prepare = self.signer.sign(Prepare {
            view,
            seq,
            digest,
            replica: self.id,
        });
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        slot.pre_prepare = Some((header, batch.into()));
        slot.prepares.insert(prepare.clone());
        self.send(
            Dest::AllReplicas,
            ReplicaMsg::Prepare(prepare.into_signed()),
        );
        self.advance(seq);
    }

    fn on_prepare(&mut self, from: ReplicaId, prepare: Verified<Prepare>) {
        let from = Principal::Replica(from);
        if prepare.view != self.view {
            let reason = RejectReason::WrongView {
                got: prepare.view,
                current: self.view,
            };
            return self.reject(from, "PREPARE", reason);
        }
        if prepare.replica == self.primary() {
            return self.reject(from, "PREPARE", RejectReason::PrepareFromPrimary);
        }
        let seq = prepare.seq;
        let Some(slot) = self.log.slot_mut(seq) else {
            return self.reject(from, "PREPARE", self.outside(seq));
        };
        match slot.prepares.insert(prepare) {
            Insert::New => self.advance(seq),
            Insert::Duplicate => self.reject(from, "PREPARE", RejectReason::Duplicate),
            Insert::Conflicting => self.reject(from, "PREPARE", RejectReason::ConflictingVote),
        }
    }

    fn on_commit(&mut self, from: ReplicaId, commit: Verified<Commit>) {
        let from = Principal::Replica(from);
        if commit.view != self.view {
            let reason = RejectReason::WrongView {
                got: commit.view,
                current: self.view,
            };
            return self.reject(from, "COMMIT", reason);
        }
        let seq = commit.seq;
        let Some(slot) = self.log.slot_mut(seq) else {
            return self.reject(from, "COMMIT", self.outside(seq));
        };
        match slot.commits.insert(commit) {
            Insert::New => self.advance(seq),
            Insert::Duplicate => self.reject(from, "COMMIT", RejectReason::Duplicate),
            Insert::Conflicting => self.reject(from, "COMMIT", RejectReason::ConflictingVote),
        }
    }

    fn outside(&self, seq: SeqNo) -> RejectReason {
        let (low, high) = (self.log.low(), self.log.high());
        if seq <= low {
            RejectReason::Obsolete { seq, low }
        } else {
            RejectReason::OutsideWatermarks { seq, low, high }
        }
    }

    /// Normal case 3 and 4: moves slot `seq` to prepared (and sends COMMIT), then to committed (and executes).
    /// Votes may have arrived in any order; this runs after each one.
    fn advance(&mut self, seq: SeqNo) {
        let quorum = self.quorum();
        let (view, id) = (self.view, self.id);
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        let Some(digest) = slot.digest() else { return };
        if !slot.prepared && slot.prepares.count(&digest) >= quorum - 1 {
            slot.prepared = true;
            let commit = self.signer.sign(Commit {
                view,
                seq,
                digest,
                replica: id,
            });
            slot.commits.insert(commit.clone());
            self.out.push(Output::Send {
                to: Dest::AllReplicas,
                msg: ReplicaMsg::Commit(commit.into_signed()),
            });
        }
        if slot.prepared && !slot.committed && slot.commits.count(&digest) >= quorum {
            slot.committed = true;
            self.execute_committed();
        }
    }

    /// Normal case 5 and 6: executes committed batches strictly in sequence order and replies to the clients.
    fn execute_committed(&mut self) {
        loop {
            let seq = self.last_executed.next();
            let Some(slot) = self.log.get(seq).filter(|s| s.committed) else {
                break;
            };
            let Some((header, batch)) = slot.pre_prepare.as_ref() else {
                break;
            };
            let (view, digest, batch) = (header.view, header.digest, batch.clone());
            let certificate = slot.commits.matching(&digest).cloned().collect();
            let prepared = slot.prepares.matching(&digest).cloned().collect();
            let results = batch.iter().map(|r| self.execute_request(seq, r)).collect();
            self.last_executed = seq;
            self.out.push(Output::Committed(Committed {
                seq,
                view,
                digest,
                batch,
                results,
                certificate,
                prepared,
            }));
            if seq.0 % self.config.params.checkpoint_interval == 0 {
                self.take_checkpoint(seq);
            }
        }
        self.propose(false);
    }

    fn execute_request(&mut self, seq: SeqNo, request: &Verified<Request>) -> Option<bytes::Bytes> {
        let (client, timestamp) = (request.client, request.timestamp);
        for table in [&mut self.in_flight, &mut self.waiting] {
            if table.get(&client).is_some_and(|t| *t <= timestamp) {
                table.remove(&client);
            }
        }
        if self.clients.freshness(client, timestamp) != Freshness::Fresh {
            return None;
        }
        let result = self.app.execute(
            ExecContext {
                seq,
                client,
                timestamp,
            },
            &request.operation,
        );
        self.clients.record(client, timestamp, result.clone());
        let reply = Reply {
            view: self.view,
            timestamp,
            client,
            replica: self.id,
            result: result.clone(),
        };
        self.out.push(Output::Reply(reply));
        Some(result)
    }

    /// Every K sequence numbers: record the state's digest and a snapshot, and tell the others.
    fn take_checkpoint(&mut self, seq: SeqNo) {
        let digest = checkpoint_digest(seq, self.app.digest(), self.clients.digest());
        let snapshot = encode_snapshot(self.app.snapshot(), &self.clients);
        self.record_checkpoint(seq, digest, snapshot);
    }

    fn record_checkpoint(&mut self, seq: SeqNo, digest: Digest, snapshot: Bytes) {
        let message = self.signer.sign(Checkpoint {
            seq,
            digest,
            replica: self.id,
        });
        self.send(
            Dest::AllReplicas,
            ReplicaMsg::Checkpoint(message.signed().clone()),
        );
        self.checkpoints.record_own(Taken {
            digest,
            snapshot,
            message,
        });
        self.try_stabilize();
    }

    fn on_checkpoint(&mut self, from: ReplicaId, checkpoint: Verified<Checkpoint>) {
        let from = Principal::Replica(from);
        let seq = checkpoint.seq;
        if seq <= self.log.low() {
            return self.reject(from, "CHECKPOINT", self.outside(seq));
        }
        let interval = self.config.params.checkpoint_interval;
        if seq.0 % interval != 0 {
            return self.reject(from, "CHECKPOINT", RejectReason::NotACheckpoint);
        }
        // Votes above the window are how a replica learns it is behind; a few per replica are enough.
        let cap = (self.config.params.window / interval) as usize + 1;
        match self.checkpoints.add_vote(checkpoint, self.log.high(), cap) {
            Insert::New => {
                self.try_stabilize();
                self.schedule_transfer();
            }
            Insert::Duplicate => self.reject(from, "CHECKPOINT", RejectReason::Duplicate),
            Insert::Conflicting => self.reject(from, "CHECKPOINT", RejectReason::ConflictingVote),
        }
    }

    /// A checkpoint confirmed by q replicas becomes stable: the log below it is discarded and the watermarks move.
    fn try_stabilize(&mut self) {
        if let Some(seq) = self.checkpoints.newly_stable(self.quorum()) {
            self.checkpoints.make_stable(seq);
            self.log.advance(seq);
            self.propose(false);
        }
    }

    /// Whether this replica is waiting for something its peers could help with by resending messages.
    fn has_unfinished_work(&self) -> bool {
        !self.pending.is_empty()
            || !self.in_flight.is_empty()
            || self.log.above(self.last_executed).next().is_some()
            || self.checkpoints.unstable_pending()
            || !self.waiting.is_empty()
            || self.transfer.is_some()
    }

    fn arm_status_timer(&mut self) {
        if !self.status_timer_set && self.has_unfinished_work() {
            self.status_timer_set = true;
            let after = self.config.params.status_interval;
            self.out.push(Output::SetTimer {
                timer: Timer::Status,
                after,
            });
        }
    }

    fn send_status(&mut self) {
        if !self.has_unfinished_work() {
            return;
        }
        let status = Status {
            view: self.view,
            stable: self.checkpoints.stable().seq,
            executed: self.last_executed,
            replica: self.id,
            changing_view: false,
        };
        let status = self.signer.sign(status);
        self.send(Dest::AllReplicas, ReplicaMsg::Status(status.into_signed()));
    }

    /// A peer says what it has; resend it this replica's own messages that it lacks. Each replica resends only
    /// what it signed itself (the primary its PRE-PREPAREs), so nothing relayed needs another signature.
    fn on_status(&mut self, from: ReplicaId, status: &Status) {
        if status.view != self.view {
            let reason = RejectReason::WrongView {
                got: status.view,
                current: self.view,
            };
            return self.reject(Principal::Replica(from), "STATUS", reason);
        }
        let to = Dest::Replica(from);
        let mut resend = Vec::new();
        for (_, slot) in self.log.above(status.executed) {
            if let Some((header, batch)) = &slot.pre_prepare
                && header.replica == self.id
            {
                resend.push(ReplicaMsg::PrePrepare {
                    header: header.signed().clone(),
                    batch: batch.iter().map(|r| r.signed().clone()).collect(),
                });
            }
            if let Some(prepare) = slot.prepares.get(self.id) {
                resend.push(ReplicaMsg::Prepare(prepare.signed().clone()));
            }
            if let Some(commit) = slot.commits.get(self.id) {
                resend.push(ReplicaMsg::Commit(commit.signed().clone()));
            }
        }
        for checkpoint in self.checkpoints.own_messages_above(status.stable) {
            resend.push(ReplicaMsg::Checkpoint(checkpoint.signed().clone()));
        }
        for msg in resend {
            self.send(to, msg);
        }
    }

    /// A replica that sees q replicas certify a checkpoint above what it executed first gives the log a moment
    /// to catch up by itself (the votes often arrive just before the last COMMITs), then fetches the state.
    fn schedule_transfer(&mut self) {
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
    fn drive_transfer(&mut self) {
        let certified = self
            .checkpoints
            .certified_above(self.last_executed, self.quorum());
        let Some((seq, digest, voters)) = certified else {
            self.transfer = None;
            return;
        };
        match &mut self.transfer {
            Some(t) if t.seq == seq && t.digest == digest => {
                if !t.progressed {
                    t.retry();
                }
                t.progressed = false;
            }
            _ => {
                let sources: Vec<ReplicaId> =
                    voters.into_iter().filter(|r| *r != self.id).collect();
                if sources.is_empty() {
                    return;
                }
                self.transfer = Some(Transfer::new(seq, digest, sources));
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
    fn on_fetch_state(&mut self, from: ReplicaId, fetch: &FetchState) {
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

    fn on_state_chunk(&mut self, from: ReplicaId, chunk: &StateChunk) {
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
        let Some((seq, digest)) = self.transfer.as_ref().map(|t| (t.seq, t.digest)) else {
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
        self.waiting.retain(unexecuted);
        self.out.push(Output::StateInstalled { seq, digest });
        self.record_checkpoint(seq, digest, snapshot);
        self.execute_committed();
    }

    /// Restores the application from `snapshot` if the result has the certified digest; otherwise puts the
    /// previous state back and returns `None`.
    fn restore_checked(
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
