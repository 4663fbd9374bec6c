//! View change, the replica's side (PROTOCOL.md, "View change"): the view-change timer, VIEW-CHANGE, the new
//! primary's NEW-VIEW, a backup's check of it, and entering the new view. The rules that need no replica state
//! (validity of a VIEW-CHANGE, computing and checking O) live in `crate::view_change`.

use pbft_crypto::Verified;
use pbft_types::{
    BatchData, FetchBatch, NewView, PrePrepare, Principal, ReplicaId, ReplicaMsg, SeqNo, View,
    ViewChange,
};

use super::{Replica, ViewTimer};
use crate::batches::matches;
use crate::io::{Batch, Dest, Output, RejectReason, Timer};
use crate::journal::JournalEntry;
use crate::view_change::{NewViewPlan, compute_plan, validate_new_view, validate_view_change};

impl Replica {
    /// The view-change timer expired: a request this backup holds did not execute in time, or the NEW-VIEW did
    /// not come. Either way the replica asks for the next view; a NEW-VIEW that did not come doubles the timeout,
    /// so that a cluster whose messages are merely slow ends up waiting long enough.
    pub(super) fn on_view_timer(&mut self) {
        let waited_for_new_view = match self.view_timer {
            ViewTimer::Off => return,
            ViewTimer::Request(..) => false,
            ViewTimer::NewView => true,
        };
        self.view_timer = ViewTimer::Off;
        if !waited_for_new_view && self.behind_a_certified_checkpoint() {
            // A replica behind a checkpoint that q replicas certified (it is fetching it, or about to) is behind
            // its peers: its requests wait for its own state, not for the primary. Timing them out would start a
            // view change the others do not join and leave this replica alone in a later view. It times them
            // again once it installed the state. A certificate cannot be faked: f+1 correct replicas executed
            // that far.
            //
            // Being told by f+1 peers that they executed further is not enough to hold back: an equivocating
            // primary and one lucky correct replica can tell every backup in turn that it is behind, and no one
            // would ever time the primary out (seen in `pbft sim --byzantine random`, 102 seeds of 2000).
            return self.restart_request_timer();
        }
        if waited_for_new_view {
            self.view_timeout = self.view_timeout.saturating_mul(2);
        }
        self.start_view_change(self.view.next());
    }

    /// Runs the request timer as PROTOCOL.md says: a replica times the oldest request it holds; the timer stops
    /// when that request executes and starts again for the next one still waiting.
    ///
    /// The primary times the requests it proposed too. PROTOCOL.md asks it of backups only, but a correct primary
    /// can be stuck as well: when backups left its view for a later one, it is by timing out itself that it joins
    /// them (with the backups that executed everything and so hold nothing to time).
    pub(super) fn refresh_request_timer(&mut self) {
        if self.changing {
            return;
        }
        if let ViewTimer::Request(client, timestamp) = self.view_timer {
            if self.waiting.holds(client, timestamp) {
                return;
            }
            self.view_timer = ViewTimer::Off;
            self.out.push(Output::CancelTimer(Timer::ViewChange));
        }
        if let Some((client, timestamp)) = self.waiting.oldest() {
            self.view_timer = ViewTimer::Request(client, timestamp);
            self.out.push(Output::SetTimer {
                timer: Timer::ViewChange,
                after: self.config.params.request_timeout,
            });
        }
    }

    /// Whether a checkpoint above what this replica executed is certified by q replicas (adopted as stable from a
    /// NEW-VIEW, voted for by q of them, or being fetched), or the replica has just jumped (recovered, installed)
    /// and is still asking its peers where they are (see `status::Asking`).
    fn behind_a_certified_checkpoint(&self) -> bool {
        // Just recovered or installed: it has not heard yet how far its peers are.
        self.is_asking()
            || self.transfer.is_some()
            || self.checkpoints.stable().seq > self.last_executed
            || self
                .checkpoints
                .certified_above(self.last_executed, self.quorum())
                .is_some()
    }

    /// Times the oldest waiting request again, from now.
    pub(super) fn restart_request_timer(&mut self) {
        if let ViewTimer::Request(..) = self.view_timer {
            self.view_timer = ViewTimer::Off;
            self.out.push(Output::CancelTimer(Timer::ViewChange));
        }
        self.refresh_request_timer();
    }

    fn stop_view_timer(&mut self) {
        if self.view_timer != ViewTimer::Off {
            self.view_timer = ViewTimer::Off;
            self.out.push(Output::CancelTimer(Timer::ViewChange));
        }
    }

    /// Leaves the current view for `target`: stops taking normal-case messages and sends VIEW-CHANGE with this
    /// replica's stable checkpoint and its prepared certificates above it.
    pub(super) fn start_view_change(&mut self, target: View) {
        if target < self.view || (target == self.view && self.changing) {
            return;
        }
        self.view = target;
        self.changing = true;
        self.peers_executed.clear();
        self.persist(JournalEntry::View {
            view: target,
            changing: true,
        });
        self.stop_view_timer();
        if self.batch_timer_set {
            self.batch_timer_set = false;
            self.out.push(Output::CancelTimer(Timer::Batch));
        }
        // The old view's slots go; their batches stay in `batches` and their certificates in `prepared`.
        self.log.clear();
        self.in_flight.clear();
        let stable = self.checkpoints.stable().clone();
        let prepared = self
            .prepared
            .range(stable.seq.next()..)
            .map(|(_, c)| c.to_proof())
            .collect();
        let vc = self.signer.sign(ViewChange {
            new_view: target,
            stable_seq: stable.seq,
            checkpoint_proof: stable.proof.iter().map(|c| c.signed().clone()).collect(),
            prepared,
            replica: self.id,
        });
        self.send(
            Dest::AllReplicas,
            ReplicaMsg::ViewChange(vc.signed().clone()),
        );
        self.view_changes.insert(self.id, vc);
        self.after_view_change_vote();
    }

    pub(super) fn on_view_change(&mut self, from: ReplicaId, vc: Verified<ViewChange>) {
        let sender = Principal::Replica(from);
        if vc.new_view < self.view || (vc.new_view == self.view && !self.changing) {
            // The sender missed the NEW-VIEW of a view this replica already entered.
            if vc.new_view == self.view && self.is_primary() {
                self.resend_new_view(from);
            }
            let reason = RejectReason::WrongView {
                got: vc.new_view,
                current: self.view,
            };
            return self.reject(sender, "VIEW-CHANGE", reason);
        }
        if let Err(e) = validate_view_change(&self.config, &vc) {
            return self.reject(sender, "VIEW-CHANGE", RejectReason::InvalidViewChange(e));
        }
        // A correct replica only moves forward: its latest VIEW-CHANGE replaces its earlier ones, which bounds
        // what is kept to one per replica.
        let newer = self
            .view_changes
            .get(&from)
            .is_none_or(|old| old.new_view < vc.new_view);
        if !newer {
            return self.reject(sender, "VIEW-CHANGE", RejectReason::Duplicate);
        }
        self.view_changes.insert(from, vc);
        self.after_view_change_vote();
    }

    /// What a new VIEW-CHANGE makes possible: joining a view f+1 others want, starting the NEW-VIEW timer once q
    /// replicas want this replica's view, or, for its primary, sending the NEW-VIEW.
    fn after_view_change_vote(&mut self) {
        let mut above: Vec<View> = self
            .view_changes
            .iter()
            .filter(|(r, vc)| **r != self.id && vc.new_view > self.view)
            .map(|(_, vc)| vc.new_view)
            .collect();
        if above.len() > self.config.f() {
            above.sort();
            // f+1 replicas, one of them correct at least, want a higher view: the smallest is safe to join.
            return self.start_view_change(above[0]);
        }
        if !self.changing {
            return;
        }
        let wanting = self
            .view_changes
            .values()
            .filter(|vc| vc.new_view == self.view)
            .count();
        if wanting < self.quorum() {
            return;
        }
        if self.is_primary() {
            return self.send_new_view();
        }
        if self.view_timer == ViewTimer::Off {
            self.view_timer = ViewTimer::NewView;
            self.out.push(Output::SetTimer {
                timer: Timer::ViewChange,
                after: self.view_timeout,
            });
        }
    }

    /// The new primary's part: V is q VIEW-CHANGEs for its view (its own first, then by replica id), O what they
    /// imply.
    fn send_new_view(&mut self) {
        let view = self.view;
        let mut chosen: Vec<Verified<ViewChange>> = Vec::new();
        if let Some(own) = self
            .view_changes
            .get(&self.id)
            .filter(|vc| vc.new_view == view)
        {
            chosen.push(own.clone());
        }
        chosen.extend(
            self.view_changes
                .iter()
                .filter(|(r, vc)| **r != self.id && vc.new_view == view)
                .map(|(_, vc)| vc.clone()),
        );
        chosen.truncate(self.quorum());
        let plan = compute_plan(&chosen, self.null_digest);
        let o: Vec<Verified<PrePrepare>> = plan
            .entries
            .iter()
            .map(|(seq, digest)| {
                self.signer.sign(PrePrepare {
                    view,
                    seq: *seq,
                    digest: *digest,
                    replica: self.id,
                })
            })
            .collect();
        let nv = self.signer.sign(NewView {
            view,
            view_changes: chosen.iter().map(|vc| vc.signed().clone()).collect(),
            pre_prepares: o.iter().map(|p| p.signed().clone()).collect(),
            replica: self.id,
        });
        self.send(Dest::AllReplicas, ReplicaMsg::NewView(nv.signed().clone()));
        self.enter_view(nv, plan, o);
    }

    pub(super) fn on_new_view(&mut self, from: ReplicaId, nv: Verified<NewView>) {
        let sender = Principal::Replica(from);
        if nv.view < self.view || (nv.view == self.view && !self.changing) {
            let reason = RejectReason::WrongView {
                got: nv.view,
                current: self.view,
            };
            return self.reject(sender, "NEW-VIEW", reason);
        }
        let primary = self.config.primary(nv.view);
        if nv.replica != primary {
            return self.reject(sender, "NEW-VIEW", RejectReason::NotFromPrimary { primary });
        }
        match validate_new_view(&self.config, &nv, self.null_digest) {
            Ok((plan, o)) => self.enter_view(nv, plan, o),
            Err(e) => self.reject(sender, "NEW-VIEW", RejectReason::InvalidNewView(e)),
        }
    }

    /// Enters the view of `nv`: adopts its starting checkpoint, logs O, prepares O's batches (a backup) and
    /// hands the requests it holds to the new primary.
    fn enter_view(
        &mut self,
        nv: Verified<NewView>,
        plan: NewViewPlan,
        o: Vec<Verified<PrePrepare>>,
    ) {
        let view = nv.view;
        self.view = view;
        self.changing = false;
        self.peers_executed.clear();
        self.persist(JournalEntry::View {
            view,
            changing: false,
        });
        self.persist(JournalEntry::NewView(nv.clone()));
        self.new_view = Some(nv);
        self.stop_view_timer();
        // VIEW-CHANGEs for this view stay (this replica's own is resent to peers that lag behind); older go.
        self.view_changes.retain(|_, vc| vc.new_view >= view);
        self.log.clear();
        self.in_flight.clear();
        self.out.push(Output::EnteredView(view));
        if let Some(digest) = plan.stable_digest
            && self
                .checkpoints
                .adopt_stable(plan.stable_seq, digest, plan.stable_proof)
        {
            // Journalled only if this replica holds the state at it; otherwise once it fetched it.
            self.persist_stable();
            self.discard_below(plan.stable_seq);
        }
        let primary = self.is_primary();
        // Requests held for the old primary go to the new one (or into its own queue), those that O carries
        // excepted.
        let held = self.waiting.take_all();
        let queued = self.pending.take(usize::MAX);
        // What waited to be relayed to the old primary goes to the new one now, with the rest that is held.
        self.unrelayed.take_all();
        let mut last = plan.stable_seq;
        for pre_prepare in o {
            let (seq, digest) = (pre_prepare.seq, pre_prepare.digest);
            last = last.max(seq);
            if !self.log.in_window(seq) {
                continue;
            }
            let batch = match digest == self.null_digest {
                true => Some(Batch::from(Vec::new())),
                false => self.batches.get(seq, &digest),
            };
            if let Some(batch) = &batch {
                self.account_for(batch);
            }
            let prepare = self.backup_prepare(view, seq, digest);
            self.persist(JournalEntry::Accepted {
                header: pre_prepare.clone(),
                batch: batch.clone(),
            });
            let Some(slot) = self.log.slot_mut(seq) else {
                continue;
            };
            slot.pre_prepare = Some(pre_prepare);
            slot.batch = batch;
            if let Some(prepare) = prepare {
                slot.prepares.insert(prepare.clone());
                self.send(
                    Dest::AllReplicas,
                    ReplicaMsg::Prepare(prepare.into_signed()),
                );
            }
        }
        for request in held.into_iter().chain(queued) {
            if self.waiting.holds_newer(request.client, request.timestamp) {
                continue;
            }
            self.hold(request.clone());
            if primary {
                self.pending.add(request);
            } else {
                let to = Dest::Replica(self.primary());
                self.send(to, ReplicaMsg::Request(request.into_signed()));
            }
        }
        self.last_assigned = last.max(self.log.low());
        self.fetch_missing_batches();
        self.schedule_transfer();
        self.propose(false);
    }

    /// A peer is behind this replica's view (or still waits for its NEW-VIEW): give it what lets it catch up,
    /// the NEW-VIEW if this replica is the primary that sent it, or else this replica's own VIEW-CHANGE (f+1 of
    /// those make the peer join).
    pub(super) fn help_into_view(&mut self, to: ReplicaId, their_view: View) {
        if !self.changing && self.is_primary() && self.new_view.is_some() {
            // The NEW-VIEW carries this replica's VIEW-CHANGE and all the peer needs.
            return self.resend_new_view(to);
        }
        let own = self
            .view_changes
            .get(&self.id)
            .filter(|vc| vc.new_view >= their_view)
            .map(|vc| vc.signed().clone());
        if let Some(vc) = own {
            self.send(Dest::Replica(to), ReplicaMsg::ViewChange(vc));
        }
    }

    fn resend_new_view(&mut self, to: ReplicaId) {
        if let Some(nv) = self.new_view.as_ref().filter(|nv| nv.view == self.view) {
            let msg = ReplicaMsg::NewView(nv.signed().clone());
            self.send(Dest::Replica(to), msg);
        }
    }

    /// Asks every peer for the batches of O that this replica knows only by digest.
    pub(super) fn fetch_missing_batches(&mut self) {
        let missing: Vec<(SeqNo, pbft_types::Digest)> = self
            .log
            .above(self.last_executed)
            .filter(|(_, slot)| slot.batch.is_none())
            .filter_map(|(seq, slot)| Some((*seq, slot.digest()?)))
            .collect();
        for (seq, digest) in missing {
            let fetch = self.signer.sign(FetchBatch {
                seq,
                digest,
                replica: self.id,
            });
            self.send(
                Dest::AllReplicas,
                ReplicaMsg::FetchBatch(fetch.into_signed()),
            );
        }
    }

    pub(super) fn on_fetch_batch(&mut self, from: ReplicaId, fetch: &FetchBatch) {
        let Some(batch) = self.batches.get(fetch.seq, &fetch.digest) else {
            return self.reject(
                Principal::Replica(from),
                "FETCH-BATCH",
                RejectReason::UnexpectedBatch,
            );
        };
        let header = self.signer.sign(BatchData {
            seq: fetch.seq,
            digest: fetch.digest,
            replica: self.id,
        });
        let msg = ReplicaMsg::BatchData {
            header: header.into_signed(),
            batch: batch.iter().map(|r| r.signed().clone()).collect(),
        };
        self.send(Dest::Replica(from), msg);
    }

    pub(super) fn on_batch_data(
        &mut self,
        from: ReplicaId,
        header: &BatchData,
        batch: Vec<Verified<pbft_types::Request>>,
    ) {
        let wanted = self
            .log
            .get(header.seq)
            .is_some_and(|slot| slot.batch.is_none() && slot.digest() == Some(header.digest));
        if !wanted || !matches(&batch, &header.digest) {
            return self.reject(
                Principal::Replica(from),
                "BATCH-DATA",
                RejectReason::UnexpectedBatch,
            );
        }
        self.fill_batch(header.seq, header.digest, batch.into());
    }
}
