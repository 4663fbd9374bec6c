//! The adversary of one Byzantine replica: it watches what the replica's core receives and rewrites what the core
//! asks to send. Everything it forges it signs with the replica's own key, except under `forge`, whose whole point
//! is signatures that do not verify.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use pbft_core::{Dest, Input, Output, ReplicaStatus};
use pbft_crypto::{KeyPair, VerifiedMsg, batch_digest};
use pbft_types::{
    Body, Checkpoint, ClusterConfig, Commit, Digest, FetchBatch, FetchState, NewView, PrePrepare,
    Prepare, PreparedProof, ReplicaId, ReplicaMsg, Request, Seal, SeqNo, Signed, Status, View,
    ViewChange,
};
use rand::{Rng, RngExt};
use rand_chacha::ChaCha8Rng;

use super::{Strategy, fault_rng};

/// What a Byzantine replica makes its driver do.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one per output: boxing would only add allocations
pub enum Action {
    /// An output as a core would give it (possibly forged).
    Output(Output),
    /// Bytes that need not decode: junk.
    Raw { to: Dest, bytes: Bytes },
}

/// How many of its own messages and of the requests it saw a replaying replica remembers.
const MEMORY: usize = 256;
/// How many votes a vote-for-everything replica sends per step at most, and how many it remembers.
const VOTES_PER_STEP: usize = 16;
const VOTED_MEMORY: usize = 4096;
/// The least simulated time between two unprompted bursts (floods, spontaneous bad messages).
const FLOOD_EVERY: Duration = Duration::from_millis(2);
/// Replays are rate-limited too: a replayed STATUS makes every correct replica resend up to its whole window to
/// the replayer, whose every step would otherwise replay more, without bound in simulated time.
const REPLAY_EVERY: Duration = Duration::from_millis(5);
const SPONTANEOUS_EVERY: Duration = Duration::from_millis(50);

/// An equivocating primary's second batch for one (view, seq).
#[derive(Clone, Debug)]
struct Variant {
    digest: Digest,
    batch: Vec<Signed<Request>>,
    /// The backups that get the second batch.
    group: Vec<ReplicaId>,
}

pub struct Adversary {
    strategy: Strategy,
    id: ReplicaId,
    key: KeyPair,
    config: ClusterConfig,
    rng: ChaCha8Rng,
    /// `silent` starts sending nothing from this time on.
    silent_from: Duration,
    view: View,
    low: SeqNo,
    high: SeqNo,
    sent: VecDeque<ReplicaMsg>,
    requests: VecDeque<Signed<Request>>,
    votes_due: VecDeque<ReplicaMsg>,
    voted: HashSet<(View, SeqNo, Digest)>,
    checkpointed: HashSet<(SeqNo, Digest)>,
    variants: BTreeMap<(View, SeqNo), Variant>,
    last_view_change: Option<ViewChange>,
    /// When the last burst of junk or of replays went out.
    last_flood: Option<Duration>,
    last_spontaneous: Option<Duration>,
}

impl Adversary {
    /// The adversary of replica `id` (holding `key`) in run `seed`, whose network heals at `heal_at`.
    pub fn new(
        strategy: Strategy,
        id: ReplicaId,
        key: KeyPair,
        config: ClusterConfig,
        seed: u64,
        heal_at: Duration,
    ) -> Adversary {
        let mut rng = fault_rng(seed, id.0 + 1);
        let heal = heal_at.as_micros() as u64;
        let silent_from = if rng.random_bool(0.5) || heal < 2 {
            Duration::ZERO
        } else {
            Duration::from_micros(rng.random_range(0..heal / 2))
        };
        let high = SeqNo(config.params.window);
        Adversary {
            strategy,
            id,
            key,
            config,
            rng,
            silent_from,
            view: View(0),
            low: SeqNo(0),
            high,
            sent: VecDeque::new(),
            requests: VecDeque::new(),
            votes_due: VecDeque::new(),
            voted: HashSet::new(),
            checkpointed: HashSet::new(),
            variants: BTreeMap::new(),
            last_view_change: None,
            last_flood: None,
            last_spontaneous: None,
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Sees an input before the core does.
    pub fn observe(&mut self, input: &Input) {
        match input {
            Input::Request(r) => self.remember_request(r.signed().clone()),
            Input::Message { msg, .. } => match msg {
                VerifiedMsg::PrePrepare { header, batch } => {
                    for r in batch {
                        self.remember_request(r.signed().clone());
                    }
                    self.vote_for(header.view, header.seq, header.digest);
                }
                // A faulty replica vouches for what it could not check as readily as for anything else.
                VerifiedMsg::UnvouchedPrePrepare(held) => {
                    for r in held.requests() {
                        self.remember_request(r.clone());
                    }
                    let header = held.header();
                    self.vote_for(header.view, header.seq, header.digest);
                }
                VerifiedMsg::Prepare(p) => self.vote_for(p.view, p.seq, p.digest),
                VerifiedMsg::Commit(c) => self.vote_for(c.view, c.seq, c.digest),
                VerifiedMsg::Checkpoint(c)
                    if self.strategy == Strategy::VoteAll
                        && self.checkpointed.insert((c.seq, c.digest)) =>
                {
                    let own = self.sign(Checkpoint {
                        seq: c.seq,
                        digest: c.digest,
                        replica: self.id,
                    });
                    self.votes_due.push_back(ReplicaMsg::Checkpoint(own));
                }
                VerifiedMsg::Request(r) => self.remember_request(r.signed().clone()),
                _ => {}
            },
            Input::TimerFired(_) => {}
        }
    }

    fn remember_request(&mut self, request: Signed<Request>) {
        if matches!(
            self.strategy,
            Strategy::Replay | Strategy::Equivocate | Strategy::Flood
        ) {
            if self.requests.len() >= MEMORY {
                self.requests.pop_front();
            }
            self.requests.push_back(request);
        }
    }

    /// Vote-for-everything: PREPARE and COMMIT whatever anyone proposed or voted for.
    fn vote_for(&mut self, view: View, seq: SeqNo, digest: Digest) {
        if self.strategy != Strategy::VoteAll || !self.voted.insert((view, seq, digest)) {
            return;
        }
        if self.voted.len() > VOTED_MEMORY {
            self.voted.clear();
            self.checkpointed.clear();
        }
        let replica = self.id;
        let prepare = self.sign(Prepare {
            view,
            seq,
            digest,
            replica,
        });
        let commit = self.sign(Commit {
            view,
            seq,
            digest,
            replica,
        });
        self.votes_due.push_back(ReplicaMsg::Prepare(prepare));
        self.votes_due.push_back(ReplicaMsg::Commit(commit));
    }

    fn sign<T: Body>(&self, value: T) -> Signed<T> {
        self.key.sign(value)
    }

    fn others(&self) -> Vec<ReplicaId> {
        self.config
            .replica_ids()
            .filter(|r| *r != self.id)
            .collect()
    }

    fn shuffled_others(&mut self) -> Vec<ReplicaId> {
        let mut others = self.others();
        for i in (1..others.len()).rev() {
            let j = self.rng.random_range(0..=i);
            others.swap(i, j);
        }
        others
    }

    fn random_digest(&mut self) -> Digest {
        Digest(self.rng.random())
    }

    /// Rewrites what the core asked for at `now`, its status after the step being `status`.
    pub fn act(
        &mut self,
        now: Duration,
        status: &ReplicaStatus,
        outputs: Vec<Output>,
    ) -> Vec<Action> {
        self.view = status.view;
        self.low = status.low_watermark;
        self.high = status.high_watermark;
        let mut actions = Vec::new();
        for output in outputs {
            match output {
                Output::Send { to, msg } => self.rewrite_send(now, to, msg, &mut actions),
                Output::Reply(mut reply) => match self.strategy {
                    Strategy::Silent if now >= self.silent_from => {}
                    Strategy::Corrupt if self.rng.random_bool(0.5) => {
                        let mut result = reply.result.to_vec();
                        result.push(0xff);
                        reply.result = Bytes::from(result);
                        actions.push(Action::Output(Output::Reply(reply)));
                    }
                    _ => actions.push(Action::Output(Output::Reply(reply))),
                },
                other => actions.push(Action::Output(other)),
            }
        }
        self.unprompted(now, &mut actions);
        actions
    }

    fn send(actions: &mut Vec<Action>, to: Dest, msg: ReplicaMsg) {
        actions.push(Action::Output(Output::Send { to, msg }));
    }

    fn rewrite_send(&mut self, now: Duration, to: Dest, msg: ReplicaMsg, out: &mut Vec<Action>) {
        match self.strategy {
            Strategy::Silent => {
                if now < self.silent_from {
                    Self::send(out, to, msg);
                }
            }
            Strategy::MutePrimary => {
                if !matches!(msg, ReplicaMsg::PrePrepare { .. } | ReplicaMsg::NewView(_)) {
                    Self::send(out, to, msg);
                }
            }
            Strategy::Equivocate => self.equivocate(to, msg, out),
            Strategy::Forge => match self.rng.random_range(0..3u32) {
                0 => Self::send(out, to, msg),
                1 => {
                    let forged = self.forge(&msg);
                    Self::send(out, to, forged);
                }
                _ => {
                    let forged = self.forge(&msg);
                    Self::send(out, to, forged);
                    Self::send(out, to, msg);
                }
            },
            Strategy::Corrupt => {
                if self.rng.random_bool(0.5) {
                    let corrupted = self.corrupt(msg);
                    Self::send(out, to, corrupted);
                } else {
                    Self::send(out, to, msg);
                }
            }
            Strategy::StaleView | Strategy::FutureView => {
                let shifted = self.shift_view(&msg);
                if let Some(shifted) = shifted {
                    Self::send(out, to, shifted);
                }
                if self.rng.random_bool(0.7) {
                    Self::send(out, to, msg);
                }
            }
            Strategy::OutOfWindow => {
                if let Some(outside) = self.outside_window(&msg) {
                    Self::send(out, to, outside);
                }
                Self::send(out, to, msg);
            }
            Strategy::Replay => {
                if self.sent.len() >= MEMORY {
                    self.sent.pop_front();
                }
                self.sent.push_back(msg.clone());
                Self::send(out, to, msg);
            }
            Strategy::BadViewChange => match msg {
                ReplicaMsg::ViewChange(vc) => {
                    self.last_view_change = Some(vc.value().clone());
                    let bad = self.bad_view_change(vc.value().clone());
                    Self::send(out, to, ReplicaMsg::ViewChange(bad));
                }
                msg => Self::send(out, to, msg),
            },
            Strategy::BadNewView => match msg {
                ReplicaMsg::NewView(nv) => {
                    let targets = match to {
                        Dest::AllReplicas => self.others(),
                        Dest::Replica(r) => vec![r],
                    };
                    for target in targets {
                        let msg = if self.rng.random_bool(0.2) {
                            ReplicaMsg::NewView(nv.clone())
                        } else {
                            ReplicaMsg::NewView(self.bad_new_view(nv.value().clone()))
                        };
                        Self::send(out, Dest::Replica(target), msg);
                    }
                }
                msg => Self::send(out, to, msg),
            },
            Strategy::VoteAll | Strategy::Flood | Strategy::Twins => Self::send(out, to, msg),
        }
    }

    /// What the strategy does of its own accord, not prompted by a message of the core.
    fn unprompted(&mut self, now: Duration, out: &mut Vec<Action>) {
        match self.strategy {
            Strategy::VoteAll => {
                for _ in 0..VOTES_PER_STEP {
                    let Some(vote) = self.votes_due.pop_front() else {
                        break;
                    };
                    Self::send(out, Dest::AllReplicas, vote);
                }
            }
            Strategy::Replay if self.last_flood.is_none_or(|t| now >= t + REPLAY_EVERY) => {
                self.last_flood = Some(now);
                if !self.sent.is_empty() {
                    for _ in 0..self.rng.random_range(1..=3) {
                        let i = self.rng.random_range(0..self.sent.len());
                        let old = self.sent[i].clone();
                        Self::send(out, Dest::AllReplicas, old);
                    }
                }
                if self.rng.random_bool(0.5) && !self.requests.is_empty() {
                    let i = self.rng.random_range(0..self.requests.len());
                    let old = self.requests[i].clone();
                    Self::send(out, Dest::AllReplicas, ReplicaMsg::Request(old));
                }
            }
            Strategy::Flood if self.last_flood.is_none_or(|t| now >= t + FLOOD_EVERY) => {
                self.last_flood = Some(now);
                for _ in 0..self.rng.random_range(1..=4) {
                    self.junk(out);
                }
            }
            Strategy::FutureView | Strategy::BadViewChange | Strategy::OutOfWindow
                if self
                    .last_spontaneous
                    .is_none_or(|t| now >= t + SPONTANEOUS_EVERY) =>
            {
                self.last_spontaneous = Some(now);
                let msg = match self.strategy {
                    Strategy::FutureView => {
                        let ahead = self.rng.random_range(1..=5);
                        ReplicaMsg::ViewChange(self.sign(ViewChange {
                            new_view: View(self.view.0 + ahead),
                            stable_seq: SeqNo(0),
                            checkpoint_proof: Vec::new(),
                            prepared: Vec::new(),
                            replica: self.id,
                        }))
                    }
                    Strategy::BadViewChange => {
                        let base = self.last_view_change.clone().unwrap_or(ViewChange {
                            new_view: self.view.next(),
                            stable_seq: SeqNo(0),
                            checkpoint_proof: Vec::new(),
                            prepared: Vec::new(),
                            replica: self.id,
                        });
                        let base = ViewChange {
                            new_view: self.view.next(),
                            ..base
                        };
                        ReplicaMsg::ViewChange(self.bad_view_change(base))
                    }
                    _ => {
                        let k = self.config.params.checkpoint_interval;
                        let seq = SeqNo(
                            (self.high.0 / k + self.rng.random_range(1..=8)) * k
                                + k * self.rng.random_range(0..2),
                        );
                        let digest = self.random_digest();
                        ReplicaMsg::Checkpoint(self.sign(Checkpoint {
                            seq,
                            digest,
                            replica: self.id,
                        }))
                    }
                };
                Self::send(out, Dest::AllReplicas, msg);
            }
            _ => {}
        }
    }

    fn equivocate(&mut self, to: Dest, msg: ReplicaMsg, out: &mut Vec<Action>) {
        match msg {
            ReplicaMsg::PrePrepare { header, batch } => {
                let h = *header.value();
                let variant = match self.variants.get(&(h.view, h.seq)) {
                    Some(v) => v.clone(),
                    None => {
                        let v = self.variant(&batch);
                        if self.variants.len() > 256 {
                            self.variants.pop_first();
                        }
                        self.variants.insert((h.view, h.seq), v.clone());
                        v
                    }
                };
                let alt = ReplicaMsg::PrePrepare {
                    header: self.sign(PrePrepare {
                        digest: variant.digest,
                        ..h
                    }),
                    batch: variant.batch.clone(),
                };
                let original = ReplicaMsg::PrePrepare { header, batch };
                let targets = match to {
                    Dest::AllReplicas => self.others(),
                    Dest::Replica(r) => vec![r],
                };
                for target in targets {
                    let m = if variant.group.contains(&target) {
                        alt.clone()
                    } else {
                        original.clone()
                    };
                    Self::send(out, Dest::Replica(target), m);
                }
            }
            ReplicaMsg::Prepare(p) => {
                let p = *p.value();
                let others = self.shuffled_others();
                let half = others.len() / 2;
                let other_digest = self
                    .variants
                    .get(&(p.view, p.seq))
                    .map(|v| v.digest)
                    .unwrap_or_else(|| self.random_digest());
                for (k, target) in others.into_iter().enumerate() {
                    let digest = if k < half { other_digest } else { p.digest };
                    let m = ReplicaMsg::Prepare(self.sign(Prepare { digest, ..p }));
                    if to == Dest::AllReplicas || to == Dest::Replica(target) {
                        Self::send(out, Dest::Replica(target), m);
                    }
                }
            }
            ReplicaMsg::Commit(c) => {
                let cv = *c.value();
                match self.variants.get(&(cv.view, cv.seq)).cloned() {
                    // The primary commits both of its batches, each to the backups that got it.
                    Some(variant) => {
                        let alt = ReplicaMsg::Commit(self.sign(Commit {
                            digest: variant.digest,
                            ..cv
                        }));
                        for target in self.others() {
                            if to != Dest::AllReplicas && to != Dest::Replica(target) {
                                continue;
                            }
                            let m = if variant.group.contains(&target) {
                                alt.clone()
                            } else {
                                ReplicaMsg::Commit(c.clone())
                            };
                            Self::send(out, Dest::Replica(target), m);
                        }
                    }
                    None => {
                        let digest = self.random_digest();
                        let alt = ReplicaMsg::Commit(self.sign(Commit { digest, ..cv }));
                        let others = self.shuffled_others();
                        let half = others.len() / 2;
                        for (k, target) in others.into_iter().enumerate() {
                            if to != Dest::AllReplicas && to != Dest::Replica(target) {
                                continue;
                            }
                            let m = if k < half {
                                alt.clone()
                            } else {
                                ReplicaMsg::Commit(c.clone())
                            };
                            Self::send(out, Dest::Replica(target), m);
                        }
                    }
                }
            }
            msg => Self::send(out, to, msg),
        }
    }

    /// A second batch for a sequence: the same requests in another order, or another request, or none.
    fn variant(&mut self, batch: &[Signed<Request>]) -> Variant {
        let alt: Vec<Signed<Request>> = if batch.len() >= 2 {
            batch.iter().rev().cloned().collect()
        } else {
            let candidate = (!self.requests.is_empty())
                .then(|| self.requests[self.rng.random_range(0..self.requests.len())].clone())
                .filter(|r| !batch.contains(r));
            candidate.into_iter().collect()
        };
        let mut others = self.shuffled_others();
        let half = (others.len() / 2).max(1);
        others.truncate(half);
        Variant {
            digest: batch_digest(alt.iter()),
            batch: alt,
            group: others,
        }
    }

    /// `msg` with a signature that does not verify, in the name of another replica, or with a forged certificate
    /// inside.
    fn forge(&mut self, msg: &ReplicaMsg) -> ReplicaMsg {
        let other = ReplicaId((self.id.0 + 1) % self.config.n() as u64);
        match (self.rng.random_range(0..3u32), msg) {
            (1, ReplicaMsg::Prepare(p)) => ReplicaMsg::Prepare(self.sign(Prepare {
                replica: other,
                ..*p.value()
            })),
            (1, ReplicaMsg::Commit(c)) => ReplicaMsg::Commit(self.sign(Commit {
                replica: other,
                ..*c.value()
            })),
            (1, ReplicaMsg::Checkpoint(c)) => ReplicaMsg::Checkpoint(self.sign(Checkpoint {
                replica: other,
                ..*c.value()
            })),
            (2, ReplicaMsg::ViewChange(vc)) if !vc.value().checkpoint_proof.is_empty() => {
                let mut v = vc.value().clone();
                v.checkpoint_proof[0] = broken(&v.checkpoint_proof[0]);
                ReplicaMsg::ViewChange(self.sign(v))
            }
            (2, ReplicaMsg::NewView(nv)) if !nv.value().view_changes.is_empty() => {
                let mut v = nv.value().clone();
                let last = v.view_changes.len() - 1;
                v.view_changes[last] = broken(&v.view_changes[last]);
                ReplicaMsg::NewView(self.sign(v))
            }
            (2, ReplicaMsg::PrePrepare { header, batch }) if !batch.is_empty() => {
                let mut batch = batch.clone();
                batch[0] = broken(&batch[0]);
                ReplicaMsg::PrePrepare {
                    header: header.clone(),
                    batch,
                }
            }
            _ => broken_msg(msg),
        }
    }

    /// `msg` with wrong contents, signed with the replica's own key.
    fn corrupt(&mut self, msg: ReplicaMsg) -> ReplicaMsg {
        let digest = self.random_digest();
        match msg {
            ReplicaMsg::Prepare(p) => ReplicaMsg::Prepare(self.sign(Prepare {
                digest,
                ..*p.value()
            })),
            ReplicaMsg::Commit(c) => ReplicaMsg::Commit(self.sign(Commit {
                digest,
                ..*c.value()
            })),
            ReplicaMsg::Checkpoint(c) => ReplicaMsg::Checkpoint(self.sign(Checkpoint {
                digest,
                ..*c.value()
            })),
            ReplicaMsg::PrePrepare { header, mut batch } => {
                if batch.len() >= 2 && self.rng.random_bool(0.5) {
                    batch.pop();
                    ReplicaMsg::PrePrepare { header, batch }
                } else {
                    let header = self.sign(PrePrepare {
                        digest,
                        ..*header.value()
                    });
                    ReplicaMsg::PrePrepare { header, batch }
                }
            }
            ReplicaMsg::BatchData { header, mut batch } => {
                if batch.len() >= 2 {
                    batch.reverse();
                } else {
                    batch.clear();
                }
                ReplicaMsg::BatchData { header, batch }
            }
            ReplicaMsg::StateChunk(chunk) => {
                let mut value = chunk.value().clone();
                let mut data = value.data.to_vec();
                match data.first_mut() {
                    Some(b) => *b ^= 0x5a,
                    None => data.push(1),
                }
                value.data = Bytes::from(data);
                ReplicaMsg::StateChunk(self.sign(value))
            }
            ReplicaMsg::Status(s) => {
                let k = self.config.params.checkpoint_interval;
                let stable = SeqNo(s.value().stable.0 + k * self.rng.random_range(1..4));
                let executed = SeqNo(s.value().executed.0 + self.rng.random_range(1..40));
                ReplicaMsg::Status(self.sign(Status {
                    stable,
                    executed,
                    ..*s.value()
                }))
            }
            other => other,
        }
    }

    /// `msg` with an earlier (stale-view) or later (future-view) view, re-signed.
    fn shift_view(&mut self, msg: &ReplicaMsg) -> Option<ReplicaMsg> {
        let future = self.strategy == Strategy::FutureView;
        let shift = |rng: &mut ChaCha8Rng, v: View| -> Option<View> {
            if future {
                Some(View(v.0 + rng.random_range(1..=3)))
            } else if v.0 > 0 {
                Some(View(rng.random_range(0..v.0)))
            } else {
                None
            }
        };
        Some(match msg {
            ReplicaMsg::Prepare(p) => {
                let view = shift(&mut self.rng, p.value().view)?;
                ReplicaMsg::Prepare(self.sign(Prepare { view, ..*p.value() }))
            }
            ReplicaMsg::Commit(c) => {
                let view = shift(&mut self.rng, c.value().view)?;
                ReplicaMsg::Commit(self.sign(Commit { view, ..*c.value() }))
            }
            ReplicaMsg::PrePrepare { header, batch } => {
                let view = shift(&mut self.rng, header.value().view)?;
                ReplicaMsg::PrePrepare {
                    header: self.sign(PrePrepare {
                        view,
                        ..*header.value()
                    }),
                    batch: batch.clone(),
                }
            }
            ReplicaMsg::Status(s) => {
                let view = shift(&mut self.rng, s.value().view)?;
                ReplicaMsg::Status(self.sign(Status { view, ..*s.value() }))
            }
            ReplicaMsg::ViewChange(vc) => {
                let new_view = shift(&mut self.rng, vc.value().new_view)?;
                ReplicaMsg::ViewChange(self.sign(ViewChange {
                    new_view,
                    ..vc.value().clone()
                }))
            }
            ReplicaMsg::NewView(nv) => {
                let view = shift(&mut self.rng, nv.value().view)?;
                ReplicaMsg::NewView(self.sign(NewView {
                    view,
                    ..nv.value().clone()
                }))
            }
            _ => return None,
        })
    }

    /// A sequence number outside the current watermarks: at or below the low one, above the high one, or huge.
    fn outside(&mut self) -> SeqNo {
        match self.rng.random_range(0..3u32) {
            0 if self.low.0 > 0 => SeqNo(self.rng.random_range(0..=self.low.0)),
            1 => SeqNo(u64::MAX - self.rng.random_range(0..1000)),
            _ => SeqNo(self.high.0 + 1 + self.rng.random_range(0..self.config.params.window * 4)),
        }
    }

    fn outside_window(&mut self, msg: &ReplicaMsg) -> Option<ReplicaMsg> {
        let seq = self.outside();
        Some(match msg {
            ReplicaMsg::Prepare(p) => ReplicaMsg::Prepare(self.sign(Prepare { seq, ..*p.value() })),
            ReplicaMsg::Commit(c) => ReplicaMsg::Commit(self.sign(Commit { seq, ..*c.value() })),
            ReplicaMsg::PrePrepare { header, batch } => ReplicaMsg::PrePrepare {
                header: self.sign(PrePrepare {
                    seq,
                    ..*header.value()
                }),
                batch: batch.clone(),
            },
            ReplicaMsg::Checkpoint(c) => {
                let k = self.config.params.checkpoint_interval;
                let seq = SeqNo(seq.0.saturating_sub(seq.0 % k));
                ReplicaMsg::Checkpoint(self.sign(Checkpoint { seq, ..*c.value() }))
            }
            ReplicaMsg::FetchBatch(f) => {
                ReplicaMsg::FetchBatch(self.sign(FetchBatch { seq, ..*f.value() }))
            }
            _ => return None,
        })
    }

    /// A VIEW-CHANGE that does not prove what it claims.
    fn bad_view_change(&mut self, vc: ViewChange) -> Signed<ViewChange> {
        let params = &self.config.params;
        let (k, window) = (params.checkpoint_interval, params.window);
        let quorum = self.config.quorum();
        let mut vc = vc;
        let previous = View(vc.new_view.0.saturating_sub(1));
        let own_pp = |adv: &mut Adversary, view: View, seq: SeqNo| {
            let digest = adv.random_digest();
            let pre_prepare = adv.sign(PrePrepare {
                view,
                seq,
                digest,
                replica: adv.id,
            });
            let prepares = vec![adv.sign(Prepare {
                view,
                seq,
                digest,
                replica: adv.id,
            })];
            PreparedProof {
                pre_prepare,
                prepares,
            }
        };
        match self.rng.random_range(0..8u32) {
            0 => vc.stable_seq = SeqNo(vc.stable_seq.0 + k),
            1 => vc.stable_seq = SeqNo(vc.stable_seq.0 + 1),
            2 if !vc.checkpoint_proof.is_empty() => vc.checkpoint_proof.truncate(quorum - 1),
            2 => {
                let digest = self.random_digest();
                vc.checkpoint_proof.push(self.sign(Checkpoint {
                    seq: SeqNo(0),
                    digest,
                    replica: self.id,
                }));
            }
            3 => {
                let seq = SeqNo(vc.stable_seq.0 + 1);
                let proof = own_pp(self, previous, seq);
                vc.prepared.push(proof);
            }
            4 => {
                let proof = match vc.prepared.first() {
                    Some(p) => p.clone(),
                    None => own_pp(self, previous, SeqNo(vc.stable_seq.0 + 1)),
                };
                vc.prepared.push(proof.clone());
                vc.prepared.push(proof);
            }
            5 => {
                let seq = SeqNo(vc.stable_seq.0 + window + 1);
                let proof = own_pp(self, previous, seq);
                vc.prepared.push(proof);
            }
            6 if !vc.prepared.is_empty() => {
                for p in &mut vc.prepared {
                    p.prepares.truncate(1);
                }
            }
            _ => {
                // A certificate whose PRE-PREPARE is from the new view itself.
                let seq = SeqNo(vc.stable_seq.0 + 1);
                let proof = own_pp(self, vc.new_view, seq);
                vc.prepared.push(proof);
            }
        }
        vc.replica = self.id;
        self.sign(vc)
    }

    /// A NEW-VIEW whose V is bad or whose O is not what V implies.
    fn bad_new_view(&mut self, nv: NewView) -> Signed<NewView> {
        let mut nv = nv;
        match self.rng.random_range(0..7u32) {
            0 if nv.view_changes.len() > 1 => {
                let quorum = self.config.quorum();
                nv.view_changes.truncate(quorum - 1);
            }
            1 if nv.view_changes.len() > 1 => {
                let first = nv.view_changes[0].clone();
                let last = nv.view_changes.len() - 1;
                nv.view_changes[last] = first;
            }
            2 if !nv.pre_prepares.is_empty() => {
                let i = self.rng.random_range(0..nv.pre_prepares.len());
                let digest = self.random_digest();
                nv.pre_prepares[i] = self.sign(PrePrepare {
                    digest,
                    ..*nv.pre_prepares[i].value()
                });
            }
            3 if !nv.pre_prepares.is_empty() => {
                nv.pre_prepares.pop();
            }
            4 => {
                if let Some(i) = nv
                    .view_changes
                    .iter()
                    .position(|vc| vc.value().replica == self.id)
                {
                    let wrong = ViewChange {
                        new_view: nv.view.next(),
                        ..nv.view_changes[i].value().clone()
                    };
                    nv.view_changes[i] = self.sign(wrong);
                }
            }
            5 if !nv.pre_prepares.is_empty() => {
                let i = self.rng.random_range(0..nv.pre_prepares.len());
                let view = View(nv.view.0.saturating_sub(1));
                nv.pre_prepares[i] = self.sign(PrePrepare {
                    view,
                    ..*nv.pre_prepares[i].value()
                });
            }
            6 => {
                if let Some(i) = nv
                    .view_changes
                    .iter()
                    .position(|vc| vc.value().replica == self.id)
                {
                    let bad = self.bad_view_change(nv.view_changes[i].value().clone());
                    nv.view_changes[i] = bad;
                }
            }
            _ => {
                // One PRE-PREPARE more than V calls for.
                let seq = nv
                    .pre_prepares
                    .last()
                    .map(|p| p.value().seq.next())
                    .unwrap_or_else(|| {
                        nv.view_changes
                            .iter()
                            .map(|vc| vc.value().stable_seq)
                            .max()
                            .unwrap_or(SeqNo(0))
                            .next()
                    });
                let digest = self.random_digest();
                nv.pre_prepares.push(self.sign(PrePrepare {
                    view: nv.view,
                    seq,
                    digest,
                    replica: self.id,
                }));
            }
        }
        self.sign(nv)
    }

    /// One piece of junk to a random replica or to all.
    fn junk(&mut self, out: &mut Vec<Action>) {
        let to = if self.rng.random_bool(0.5) {
            Dest::AllReplicas
        } else {
            let others = self.others();
            Dest::Replica(others[self.rng.random_range(0..others.len())])
        };
        let window = self.config.params.window;
        let seq = SeqNo(self.low.0 + 1 + self.rng.random_range(0..window * 2));
        let view = View(self.view.0 + self.rng.random_range(0..2));
        let digest = self.random_digest();
        let replica = self.id;
        let msg = match self.rng.random_range(0..8u32) {
            0 => {
                let max = self.config.params.max_message_size.min(4096);
                let len = self.rng.random_range(1..=max);
                let mut bytes = vec![0u8; len];
                self.rng.fill_bytes(&mut bytes);
                out.push(Action::Raw {
                    to,
                    bytes: Bytes::from(bytes),
                });
                return;
            }
            1 => ReplicaMsg::Prepare(self.sign(Prepare {
                view,
                seq,
                digest,
                replica,
            })),
            2 => ReplicaMsg::Commit(self.sign(Commit {
                view,
                seq,
                digest,
                replica,
            })),
            3 => {
                let k = self.config.params.checkpoint_interval;
                ReplicaMsg::Checkpoint(self.sign(Checkpoint {
                    seq: SeqNo(seq.0 - seq.0 % k + k),
                    digest,
                    replica,
                }))
            }
            4 => {
                let changing_view = self.rng.random_bool(0.5);
                ReplicaMsg::Status(self.sign(Status {
                    view,
                    stable: SeqNo(0),
                    executed: SeqNo(0),
                    replica,
                    changing_view,
                    // Always asking: each peer owes it a STATUS, the most a STATUS can make a peer send.
                    asking: true,
                }))
            }
            5 => {
                let offset = self.rng.random_range(0..1024);
                ReplicaMsg::FetchState(self.sign(FetchState {
                    seq,
                    digest,
                    offset,
                    replica,
                }))
            }
            6 => ReplicaMsg::FetchBatch(self.sign(FetchBatch {
                seq,
                digest,
                replica,
            })),
            _ => {
                let max = self.config.params.max_batch_size;
                let batch: Vec<Signed<Request>> = self.requests.iter().take(max).cloned().collect();
                let digest = batch_digest(batch.iter());
                ReplicaMsg::PrePrepare {
                    header: self.sign(PrePrepare {
                        view,
                        seq,
                        digest,
                        replica,
                    }),
                    batch,
                }
            }
        };
        Self::send(out, to, msg);
    }
}

/// `signed` with one bit of its signature (or of every MAC of its authenticator) flipped; a COMMIT that only its
/// link vouched for gets a made-up signature.
fn broken<T: Body + Clone>(signed: &Signed<T>) -> Signed<T> {
    match signed.seal() {
        Seal::Link => Signed::from_parts(signed.body().clone(), [7; 64], signed.value().clone()),
        Seal::Signature(signature) => {
            let mut signature = *signature;
            signature[7] ^= 0x10;
            Signed::from_parts(signed.body().clone(), signature, signed.value().clone())
        }
        Seal::Authenticator(authenticator) => {
            let mut authenticator = authenticator.to_vec();
            for mac in authenticator.chunks_mut(pbft_types::MAC_LEN) {
                mac[7] ^= 0x10;
            }
            Signed::from_authenticated_parts(
                signed.body().clone(),
                authenticator.into(),
                signed.value().clone(),
            )
        }
    }
}

fn broken_msg(msg: &ReplicaMsg) -> ReplicaMsg {
    match msg {
        ReplicaMsg::PrePrepare { header, batch } => ReplicaMsg::PrePrepare {
            header: broken(header),
            batch: batch.clone(),
        },
        ReplicaMsg::Prepare(m) => ReplicaMsg::Prepare(broken(m)),
        ReplicaMsg::Commit(m) => ReplicaMsg::Commit(broken(m)),
        ReplicaMsg::Checkpoint(m) => ReplicaMsg::Checkpoint(broken(m)),
        ReplicaMsg::Status(m) => ReplicaMsg::Status(broken(m)),
        ReplicaMsg::FetchState(m) => ReplicaMsg::FetchState(broken(m)),
        ReplicaMsg::StateChunk(m) => ReplicaMsg::StateChunk(broken(m)),
        ReplicaMsg::ViewChange(m) => ReplicaMsg::ViewChange(broken(m)),
        ReplicaMsg::NewView(m) => ReplicaMsg::NewView(broken(m)),
        ReplicaMsg::FetchBatch(m) => ReplicaMsg::FetchBatch(broken(m)),
        ReplicaMsg::BatchData { header, batch } => ReplicaMsg::BatchData {
            header: broken(header),
            batch: batch.clone(),
        },
        ReplicaMsg::Request(m) => ReplicaMsg::Request(broken(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::Keyring;
    use pbft_types::{ClientId, ClientInfo, Timestamp};

    use crate::config::simulation_params;

    struct Fixture {
        keys: Vec<KeyPair>,
        client: KeyPair,
        config: ClusterConfig,
        keyring: Keyring,
    }

    fn fixture() -> Fixture {
        let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let client = KeyPair::from_seed([40; 32]);
        let config = ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: vec![ClientInfo {
                id: ClientId(0),
                public_key: client.public_key(),
            }],
            params: simulation_params(),
        };
        let keyring = Keyring::new(&config).unwrap();
        Fixture {
            keys,
            client,
            config,
            keyring,
        }
    }

    fn status(id: u64) -> ReplicaStatus {
        ReplicaStatus {
            id: ReplicaId(id),
            view: View(0),
            changing_view: false,
            low_watermark: SeqNo(0),
            high_watermark: SeqNo(16),
            last_executed: SeqNo(0),
            log_slots: 0,
            log_range: None,
            pending_requests: 0,
        }
    }

    impl Fixture {
        fn adversary(&self, strategy: Strategy, id: u64) -> Adversary {
            Adversary::new(
                strategy,
                ReplicaId(id),
                self.keys[id as usize].clone(),
                self.config.clone(),
                7,
                Duration::from_secs(2),
            )
        }

        fn request(&self, ts: u64) -> Signed<Request> {
            self.client.sign(Request {
                client: ClientId(0),
                timestamp: Timestamp(ts),
                operation: Bytes::from_static(b"op"),
            })
        }

        fn pre_prepare(&self, seq: u64, batch: Vec<Signed<Request>>) -> ReplicaMsg {
            let digest = batch_digest(batch.iter());
            ReplicaMsg::PrePrepare {
                header: self.keys[0].sign(PrePrepare {
                    view: View(0),
                    seq: SeqNo(seq),
                    digest,
                    replica: ReplicaId(0),
                }),
                batch,
            }
        }

        fn prepare(&self, id: u64, seq: u64) -> ReplicaMsg {
            ReplicaMsg::Prepare(self.keys[id as usize].sign(Prepare {
                view: View(0),
                seq: SeqNo(seq),
                digest: Digest([3; 32]),
                replica: ReplicaId(id),
            }))
        }

        /// The messages an adversary sends when its core asks to send `msgs` to all.
        fn sent(
            &self,
            adversary: &mut Adversary,
            msgs: Vec<ReplicaMsg>,
        ) -> Vec<(Dest, ReplicaMsg)> {
            let id = adversary.id.0;
            let outputs = msgs
                .into_iter()
                .map(|msg| Output::Send {
                    to: Dest::AllReplicas,
                    msg,
                })
                .collect();
            adversary
                .act(Duration::ZERO, &status(id), outputs)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Output(Output::Send { to, msg }) => Some((to, msg)),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn forged_messages_are_refused_at_the_boundary_and_originals_pass() {
        let f = fixture();
        let mut adversary = f.adversary(Strategy::Forge, 1);
        let (mut forged, mut passed) = (0, 0);
        for seq in 1..=60 {
            let original = f.prepare(1, seq);
            for (_, msg) in f.sent(&mut adversary, vec![original.clone()]) {
                let verdict = f.keyring.verify_replica_msg(ReplicaId(1), msg.clone());
                if msg == original {
                    assert!(verdict.is_ok());
                    passed += 1;
                } else {
                    assert!(verdict.is_err(), "a forgery passed: {msg:?}");
                    forged += 1;
                }
            }
        }
        assert!(
            forged > 20 && passed > 20,
            "{forged} forged, {passed} passed"
        );
    }

    #[test]
    fn corrupted_messages_carry_valid_signatures_of_their_sender() {
        let f = fixture();
        let mut adversary = f.adversary(Strategy::Corrupt, 2);
        let mut corrupted = 0;
        for seq in 1..=40 {
            let original = f.prepare(2, seq);
            for (_, msg) in f.sent(&mut adversary, vec![original.clone()]) {
                assert!(
                    f.keyring
                        .verify_replica_msg(ReplicaId(2), msg.clone())
                        .is_ok(),
                    "the core, not the boundary, must refuse a corrupted vote"
                );
                corrupted += usize::from(msg != original);
            }
        }
        assert!(corrupted > 10, "{corrupted}");
    }

    #[test]
    fn an_equivocating_primary_sends_two_valid_batches_for_one_sequence() {
        let f = fixture();
        let mut adversary = f.adversary(Strategy::Equivocate, 0);
        let batch = vec![f.request(1), f.request(2)];
        let sent = f.sent(&mut adversary, vec![f.pre_prepare(1, batch)]);
        assert_eq!(sent.len(), 3, "one PRE-PREPARE to each backup");
        let mut digests = std::collections::BTreeSet::new();
        for (to, msg) in sent {
            assert!(matches!(to, Dest::Replica(r) if r != ReplicaId(0)));
            let Ok(VerifiedMsg::PrePrepare { header, batch }) =
                f.keyring.verify_replica_msg(ReplicaId(0), msg)
            else {
                panic!("an equivocating PRE-PREPARE must verify");
            };
            assert_eq!(header.seq, SeqNo(1));
            assert_eq!(
                header.digest,
                batch_digest(batch.iter().map(|r| r.signed()))
            );
            digests.insert(header.digest);
        }
        assert_eq!(digests.len(), 2, "two batches for one sequence");
    }

    #[test]
    fn a_silent_replica_sends_nothing_and_a_mute_primary_no_proposal() {
        let f = fixture();
        let mut silent = f.adversary(Strategy::Silent, 3);
        // Seed 7 draws a start at zero or later: from 2 s on it is silent whatever the draw.
        let outputs = vec![Output::Send {
            to: Dest::AllReplicas,
            msg: f.prepare(3, 1),
        }];
        let actions = silent.act(Duration::from_secs(2), &status(3), outputs);
        assert!(actions.is_empty());
        let mut mute = f.adversary(Strategy::MutePrimary, 0);
        let sent = f.sent(&mut mute, vec![f.pre_prepare(1, vec![f.request(1)])]);
        assert!(sent.is_empty());
    }
}
