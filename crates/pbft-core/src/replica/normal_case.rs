//! The normal case (PROTOCOL.md, "Normal case" and "Batching and pipelining"): requests, the primary's batches,
//! PRE-PREPARE, PREPARE, COMMIT, execution in sequence order and replies.

use pbft_crypto::{Signer, Unvouched, Verified, VerifiedPrepared, batch_digest};
use pbft_types::{
    Commit, Digest, PrePrepare, Prepare, Principal, ReplicaAuth, ReplicaId, ReplicaMsg, Reply,
    Request, SeqNo, Signed,
};

use super::Replica;
use crate::app::{ExecContext, ExecutedBatch};
use crate::client_table::Freshness;
use crate::io::{Batch, Committed, Dest, Output, RejectReason, Timer};
use crate::journal::JournalEntry;
use crate::quorum::Insert;

impl Replica {
    /// A request from its client, or forwarded by a backup. Normal case 5: an executed request is answered from
    /// the client table, never executed again.
    pub(super) fn on_request(
        &mut self,
        request: Verified<Request>,
        forwarded_by: Option<ReplicaId>,
    ) {
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
            Freshness::Stale => {
                let reason = RejectReason::StaleRequest {
                    timestamp: request.timestamp,
                };
                return self.reject(from, "REQUEST", reason);
            }
            Freshness::Fresh => {}
        }
        if !self.is_primary() || self.changing {
            if forwarded_by.is_some() {
                return self.reject(from, "REQUEST", RejectReason::NotPrimary);
            }
            // Watch it execute (the view-change timer), and pass it on to the primary if the primary does not
            // propose it soon (see `relay`). During a view change it waits for the new primary.
            self.hold(request.clone());
            if !self.changing {
                self.unrelayed.add(request);
                if !self.relay_timer_set {
                    self.relay_timer_set = true;
                    self.out.push(Output::SetTimer {
                        timer: Timer::Relay,
                        after: self.config.params.request_timeout / 4,
                    });
                }
            }
            return;
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
    pub(super) fn propose(&mut self, timer_fired: bool) {
        if !self.is_primary() || self.changing {
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

    pub(super) fn propose_batch(&mut self, requests: Vec<Verified<Request>>) {
        let seq = self.last_assigned.next();
        self.last_assigned = seq;
        for r in &requests {
            self.in_flight.insert(r.client, r.timestamp);
            self.hold(r.clone());
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
        self.batches.insert(seq, digest, batch.clone());
        if let Some(slot) = self.log.slot_mut(seq) {
            slot.pre_prepare = Some(header.clone());
            slot.batch = Some(batch.clone());
        }
        self.persist(JournalEntry::Accepted {
            header,
            batch: Some(batch),
        });
        self.send(Dest::AllReplicas, msg);
        self.advance(seq);
    }

    /// Normal case 1 and 2: a backup checks a PRE-PREPARE and, if it accepts it, logs it and sends PREPARE.
    pub(super) fn on_pre_prepare(
        &mut self,
        from: ReplicaId,
        header: Verified<PrePrepare>,
        batch: Vec<Verified<Request>>,
    ) {
        let from = Principal::Replica(from);
        let requests: Vec<&Signed<Request>> = batch.iter().map(Verified::signed).collect();
        if !self.admissible(from, &header, &requests) {
            return;
        }
        let (seq, digest) = (header.seq, header.digest);
        if let Some(accepted) = self.log.get(seq).and_then(|s| s.pre_prepare.clone()) {
            if accepted.digest != digest {
                return self.equivocated(accepted, header);
            }
            // The same assignment again: it brings the requests if this replica knew only the digest (from O).
            return match self.log.get(seq).is_some_and(|s| s.batch.is_none()) {
                true => self.fill_batch(seq, digest, batch.into()),
                false => self.reject(from, "PRE-PREPARE", RejectReason::Duplicate),
            };
        }
        if let Some(held) = self.log.get(seq).and_then(|s| s.unvouched.as_ref())
            && held.header().digest != digest
        {
            let held = held.header().clone();
            return self.equivocated(held, header);
        }
        self.accept_pre_prepare(header, batch);
    }

    /// A PRE-PREPARE that passes every check but this replica's own MAC of some request: held in its slot, and
    /// accepted once f backups vouch for it with matching PREPAREs (`try_vouch`). A faulty client can make a
    /// replica's MAC wrong; refusing the batch outright would leave too few replicas to commit it whenever f
    /// others are down.
    pub(super) fn on_unvouched_pre_prepare(&mut self, from: ReplicaId, held: Unvouched) {
        let from = Principal::Replica(from);
        let header = held.header().clone();
        let requests: Vec<&Signed<Request>> = held.requests().iter().collect();
        if !self.admissible(from, &header, &requests) {
            return;
        }
        let seq = header.seq;
        let known = self.log.get(seq).and_then(|s| {
            s.pre_prepare
                .clone()
                .or_else(|| s.unvouched.as_ref().map(|u| u.header().clone()))
        });
        if let Some(known) = known {
            if known.digest != header.digest {
                return self.equivocated(known, header);
            }
            // A batch known only by its digest (from O) is fetched with FETCH-BATCH instead: a NEW-VIEW vouches
            // for it more strongly than f PREPAREs.
            return self.reject(from, "PRE-PREPARE", RejectReason::Duplicate);
        }
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        slot.unvouched = Some(held);
        self.try_vouch(seq);
    }

    /// Takes the PRE-PREPARE held unvouched at `seq`, if the PREPAREs gathered there now vouch for its batch.
    pub(super) fn try_vouch(&mut self, seq: SeqNo) {
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        let Some(held) = &slot.unvouched else {
            return;
        };
        let Ok(batch) = held.vouch(slot.prepares.matching(&held.header().digest)) else {
            return;
        };
        let header = held.header().clone();
        slot.unvouched = None;
        self.accept_pre_prepare(header, batch);
    }

    /// Normal case 1's checks of a PRE-PREPARE other than its requests' authenticity and what the slot already
    /// holds: view, sender, watermarks, sizes and the batch's digest. Refuses it and returns false if one fails.
    fn admissible(
        &mut self,
        from: Principal,
        header: &PrePrepare,
        requests: &[&Signed<Request>],
    ) -> bool {
        let (view, seq, digest) = (header.view, header.seq, header.digest);
        let reason = if view != self.view {
            RejectReason::WrongView {
                got: view,
                current: self.view,
            }
        } else if header.replica != self.primary() {
            RejectReason::NotFromPrimary {
                primary: self.primary(),
            }
        } else if !self.log.in_window(seq) {
            self.outside(seq)
        } else if requests.len() > self.config.params.max_batch_size {
            RejectReason::BatchTooLarge {
                size: requests.len(),
                limit: self.config.params.max_batch_size,
            }
        } else if let Some(r) = requests
            .iter()
            .find(|r| r.value().operation.len() > self.config.params.max_request_size)
        {
            RejectReason::RequestTooLarge {
                size: r.value().operation.len(),
                limit: self.config.params.max_request_size,
            }
        } else if batch_digest(requests.iter().copied()) != digest {
            RejectReason::BatchDigestMismatch
        } else {
            return true;
        };
        self.reject(from, "PRE-PREPARE", reason);
        false
    }

    /// Two PRE-PREPAREs signed by the primary for one (v, n) with different digests: proof that it is faulty.
    fn equivocated(&mut self, first: Verified<PrePrepare>, second: Verified<PrePrepare>) {
        self.out.push(Output::Evidence { first, second });
        self.start_view_change(self.view.next());
    }

    /// Normal case 2: logs the PRE-PREPARE and sends this backup's PREPARE.
    fn accept_pre_prepare(&mut self, header: Verified<PrePrepare>, batch: Vec<Verified<Request>>) {
        let (view, seq, digest) = (header.view, header.seq, header.digest);
        let prepare = self.signer.sign(Prepare {
            view,
            seq,
            digest,
            replica: self.id,
        });
        let batch: Batch = batch.into();
        self.batches.insert(seq, digest, batch.clone());
        for r in batch.iter() {
            self.unrelayed.seen(r);
            self.hold(r.clone());
        }
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        slot.pre_prepare = Some(header.clone());
        slot.batch = Some(batch.clone());
        slot.unvouched = None;
        slot.prepares.insert(prepare.clone());
        self.persist(JournalEntry::Accepted {
            header,
            batch: Some(batch),
        });
        self.send(
            Dest::AllReplicas,
            ReplicaMsg::Prepare(prepare.into_signed()),
        );
        self.advance(seq);
    }

    /// This replica's PREPARE for an assignment of the current view, if it is a backup (the primary's PRE-PREPARE
    /// stands for its vote).
    pub(super) fn backup_prepare(
        &self,
        view: pbft_types::View,
        seq: SeqNo,
        digest: Digest,
    ) -> Option<Verified<Prepare>> {
        (!self.is_primary()).then(|| {
            self.signer.sign(Prepare {
                view,
                seq,
                digest,
                replica: self.id,
            })
        })
    }

    /// The relay timer fired: forward to the primary each request a client sent this backup that the primary has
    /// not proposed since and that is still waiting to execute. In a view change they wait for the new primary
    /// instead (they stay held).
    pub(super) fn relay(&mut self) {
        let requests = self.unrelayed.take_all();
        if self.changing || self.is_primary() {
            return;
        }
        let to = Dest::Replica(self.primary());
        for request in requests {
            if self.waiting.holds(request.client, request.timestamp) {
                self.send(to, ReplicaMsg::Request(request.into_signed()));
            }
        }
    }

    /// The replica holds a request it has not seen execute: the view-change timer will watch it.
    pub(super) fn hold(&mut self, request: Verified<Request>) {
        if self.clients.freshness(request.client, request.timestamp) != Freshness::Fresh {
            return;
        }
        self.waiting.hold(request);
    }

    /// The requests of a batch assigned in this view but not proposed by this replica now (O's, or fetched for
    /// O): held, and timed, by every replica; in flight for the primary, so that it does not propose them again.
    pub(super) fn account_for(&mut self, batch: &Batch) {
        let primary = self.is_primary();
        for r in batch.iter() {
            self.unrelayed.seen(r);
            if self.clients.freshness(r.client, r.timestamp) != Freshness::Fresh {
                continue;
            }
            if primary {
                let newest = self.in_flight.entry(r.client).or_default();
                *newest = (*newest).max(r.timestamp);
            }
            self.hold(r.clone());
        }
    }

    /// The requests of a batch this replica knew only by its digest.
    pub(super) fn fill_batch(&mut self, seq: SeqNo, digest: Digest, batch: Batch) {
        self.batches.insert(seq, digest, batch.clone());
        self.account_for(&batch);
        if let Some(slot) = self.log.slot_mut(seq) {
            slot.batch = Some(batch.clone());
            if let Some(header) = slot.pre_prepare.clone() {
                self.persist(JournalEntry::Accepted {
                    header,
                    batch: Some(batch),
                });
            }
        }
        self.advance(seq);
    }

    pub(super) fn on_prepare(&mut self, from: ReplicaId, prepare: Verified<Prepare>) {
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
            Insert::New => {
                self.try_vouch(seq);
                self.advance(seq);
            }
            Insert::Duplicate => self.reject(from, "PREPARE", RejectReason::Duplicate),
            Insert::Conflicting => self.reject(from, "PREPARE", RejectReason::ConflictingVote),
        }
    }

    pub(super) fn on_commit(&mut self, from: ReplicaId, commit: Verified<Commit>) {
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

    pub(super) fn outside(&self, seq: SeqNo) -> RejectReason {
        let (low, high) = (self.log.low(), self.log.high());
        if seq <= low {
            RejectReason::Obsolete { seq, low }
        } else {
            RejectReason::OutsideWatermarks { seq, low, high }
        }
    }

    /// This replica's COMMIT for (view, seq, digest): signed, or with `replica_auth = "macs"` sealed only by the
    /// links it travels on. No third party ever checks a COMMIT in such a cluster (the ledger, whose blocks carry
    /// commit certificates, refuses that setting), and its receiver knows the peer it came from.
    pub(super) fn own_commit(
        signer: &Signer,
        auth: ReplicaAuth,
        commit: Commit,
    ) -> Verified<Commit> {
        match auth {
            ReplicaAuth::Signatures => signer.sign(commit),
            ReplicaAuth::Macs => signer.seal_for_link(commit),
        }
    }

    /// Normal case 3 and 4: moves slot `seq` to prepared (and sends COMMIT), then to committed (and executes).
    /// Votes may have arrived in any order; this runs after each one.
    pub(super) fn advance(&mut self, seq: SeqNo) {
        let quorum = self.quorum();
        let (view, id) = (self.view, self.id);
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        let Some(pre_prepare) = slot.pre_prepare.clone() else {
            return;
        };
        let digest = pre_prepare.digest;
        if !slot.prepared && slot.prepares.count(&digest) >= quorum - 1 {
            slot.prepared = true;
            let certificate = VerifiedPrepared {
                pre_prepare,
                prepares: slot.prepares.matching(&digest).cloned().collect(),
            };
            let commit = Commit {
                view,
                seq,
                digest,
                replica: id,
            };
            let commit = Self::own_commit(&self.signer, self.config.params.replica_auth, commit);
            slot.commits.insert(commit.clone());
            self.out.push(Output::Send {
                to: Dest::AllReplicas,
                msg: ReplicaMsg::Commit(commit.into_signed()),
            });
            self.persist(JournalEntry::Prepared(certificate.clone()));
            self.prepared.insert(seq, certificate);
        }
        let Some(slot) = self.log.slot_mut(seq) else {
            return;
        };
        if slot.prepared && !slot.committed && slot.commits.count(&digest) >= quorum {
            slot.committed = true;
            self.execute_committed();
        }
    }

    /// Normal case 5 and 6: executes committed batches strictly in sequence order and replies to the clients.
    pub(super) fn execute_committed(&mut self) {
        loop {
            let seq = self.last_executed.next();
            let Some(slot) = self.log.get(seq).filter(|s| s.committed) else {
                break;
            };
            let (Some(header), Some(batch)) = (&slot.pre_prepare, &slot.batch) else {
                break;
            };
            let (view, digest, batch) = (header.view, header.digest, batch.clone());
            let header = header.clone();
            let certificate = slot.commits.matching(&digest).cloned().collect();
            let prepared = slot.prepares.matching(&digest).cloned().collect();
            let (results, record) = self.execute_batch(seq, digest, &batch);
            self.last_executed = seq;
            self.persist(JournalEntry::Executed { header });
            self.view_timeout = self.config.params.view_change_timeout;
            self.out.push(Output::Committed(Committed {
                seq,
                view,
                digest,
                batch,
                results,
                certificate,
                prepared,
                record,
            }));
            if seq.0.is_multiple_of(self.config.params.checkpoint_interval) {
                self.take_checkpoint(seq);
            }
        }
        self.propose(false);
    }

    /// Executes every request of batch `seq` in order, then lets the application close the batch.
    pub(super) fn execute_batch(
        &mut self,
        seq: SeqNo,
        digest: Digest,
        batch: &Batch,
    ) -> (Vec<Option<bytes::Bytes>>, Option<bytes::Bytes>) {
        let results: Vec<_> = batch.iter().map(|r| self.execute_request(seq, r)).collect();
        let record = self.app.end_batch(ExecutedBatch {
            seq,
            digest,
            requests: batch,
            results: &results,
        });
        (results, record)
    }

    fn execute_request(&mut self, seq: SeqNo, request: &Verified<Request>) -> Option<bytes::Bytes> {
        let (client, timestamp) = (request.client, request.timestamp);
        if self.in_flight.get(&client).is_some_and(|t| *t <= timestamp) {
            self.in_flight.remove(&client);
        }
        self.waiting.executed(client, timestamp);
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
}
