//! The replica: `step` dispatches one input to the rule of PROTOCOL.md that handles it. The rules' state lives in
//! the log, the vote sets, the checkpoints and the client table; this file ties them together.

use std::collections::HashMap;

use pbft_crypto::{Signer, Verified, VerifiedMsg, batch_digest};
use pbft_types::{
    Checkpoint, ClientId, ClusterConfig, Commit, ConfigError, PrePrepare, Prepare, Principal,
    ReplicaId, ReplicaMsg, Reply, Request, SeqNo, Status, Timestamp, View,
};

use crate::app::{ExecContext, StateMachine};
use crate::checkpoint::{Checkpoints, Stable, Taken, checkpoint_digest};
use crate::client_table::{ClientTable, Freshness};
use crate::io::{Batch, Committed, Dest, Input, Output, RejectReason, Rejection, Timer};
use crate::log::Log;
use crate::pending::Pending;
use crate::quorum::Insert;

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
    batch_timer_set: bool,
    status_timer_set: bool,
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
            batch_timer_set: false,
            status_timer_set: false,
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
            let kind = match &msg {
                VerifiedMsg::PrePrepare { .. } => "PRE-PREPARE",
                VerifiedMsg::Prepare(_) => "PREPARE",
                VerifiedMsg::Commit(_) => "COMMIT",
                VerifiedMsg::Checkpoint(_) => "CHECKPOINT",
                VerifiedMsg::Status(_) => "STATUS",
                VerifiedMsg::Request(_) => "REQUEST",
            };
            return self.reject(Principal::Replica(from), kind, RejectReason::UnknownSender);
        }
        match msg {
            VerifiedMsg::PrePrepare { header, batch } => self.on_pre_prepare(from, header, batch),
            VerifiedMsg::Prepare(prepare) => self.on_prepare(from, prepare),
            VerifiedMsg::Commit(commit) => self.on_commit(from, commit),
            VerifiedMsg::Checkpoint(checkpoint) => self.on_checkpoint(from, checkpoint),
            VerifiedMsg::Status(status) => self.on_status(from, &status),
            VerifiedMsg::Request(request) => self.on_request(request, Some(from)),
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
            // A client that retransmits to every replica suspects the primary missed its request: pass it on.
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
            let results = batch.iter().map(|r| self.execute_request(seq, r)).collect();
            self.last_executed = seq;
            self.out.push(Output::Committed(Committed {
                seq,
                view,
                digest,
                batch,
                results,
                certificate,
            }));
            if seq.0 % self.config.params.checkpoint_interval == 0 {
                self.take_checkpoint(seq);
            }
        }
        self.propose(false);
    }

    fn execute_request(&mut self, seq: SeqNo, request: &Verified<Request>) -> Option<bytes::Bytes> {
        let (client, timestamp) = (request.client, request.timestamp);
        if self.in_flight.get(&client).is_some_and(|t| *t <= timestamp) {
            self.in_flight.remove(&client);
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
        let message = self.signer.sign(Checkpoint {
            seq,
            digest,
            replica: self.id,
        });
        self.send(
            Dest::AllReplicas,
            ReplicaMsg::Checkpoint(message.signed().clone()),
        );
        self.checkpoints.record_own(Taken { digest, message });
        self.try_stabilize();
    }

    fn on_checkpoint(&mut self, from: ReplicaId, checkpoint: Verified<Checkpoint>) {
        let from = Principal::Replica(from);
        let seq = checkpoint.seq;
        if !self.log.in_window(seq) {
            return self.reject(from, "CHECKPOINT", self.outside(seq));
        }
        if seq.0 % self.config.params.checkpoint_interval != 0 {
            return self.reject(from, "CHECKPOINT", RejectReason::NotACheckpoint);
        }
        match self.checkpoints.add_vote(checkpoint) {
            Insert::New => self.try_stabilize(),
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
}
