//! Recovering lost messages: a replica with unfinished work sends STATUS now and then, and each peer resends the
//! messages of its own that the replica lacks (or, across views, the VIEW-CHANGE and NEW-VIEW it missed).

use std::collections::BTreeSet;

use pbft_types::{ReplicaId, ReplicaMsg, SeqNo, Status};

use super::Replica;
use crate::io::{Dest, Output, Timer};

/// A replica that just jumped (recovered from its journal, or installed a checkpoint) asks its peers where they
/// are, in STATUS messages marked `asking` that every peer answers. It stops once it has heard from q - 1 of
/// them, at least ten status rounds have passed since, and f+1 peers (one correct at least) reported having
/// executed no further than it has; or thirty rounds after it heard from q - 1. Meanwhile it does not time out
/// the requests it holds: the others may have executed them long ago, and a view change of its own, which they
/// would not join, would leave it alone in a later view.
///
/// Counting answers rather than rounds matters after a restart: its peers reconnect with back-off, and rounds
/// sent before they are back reach no one. Waiting for q - 1 answers cannot stall: 2f peers are correct, and a
/// view change needs q replicas anyway. A faulty peer is one of the q - 1 perhaps, and may claim to be where
/// the replica is: only f+1 such reports say that it caught up. The cap keeps a faulty peer from holding it for
/// longer.
#[derive(Debug)]
pub(super) struct Asking {
    heard: BTreeSet<ReplicaId>,
    /// Status rounds since q - 1 peers answered.
    rounds_heard: u32,
}

impl Replica {
    /// Whether this replica is waiting for something its peers could help with by resending messages.
    pub(super) fn has_unfinished_work(&self) -> bool {
        !self.pending.is_empty()
            || !self.in_flight.is_empty()
            || self.log.above(self.settled()).next().is_some()
            || self.checkpoints.unstable_pending()
            || !self.waiting.is_empty()
            || self.transfer.is_some()
            || self.changing
            || self.behind_peers()
            || !self.owed_status.is_empty()
            || !self.resent_to.is_empty()
            || self.asking.is_some()
    }

    /// Status rounds a replica that just jumped keeps asking at least, and at most, once q - 1 peers answered.
    /// With the default status interval (100 ms) the most is 3 s: longer than a correct peer takes to reconnect
    /// (the transport's back-off stops growing at 2 s), short enough not to delay much a view change that the
    /// cluster needs.
    const ASKING_ROUNDS: u32 = 10;
    const MAX_ASKING_ROUNDS: u32 = 30;

    /// The replica just jumped to a state its peers may be well past: ask them where they are.
    pub(super) fn ask_peers(&mut self) {
        self.peers_executed.clear();
        self.asking = Some(Asking {
            heard: BTreeSet::new(),
            rounds_heard: 0,
        });
    }

    /// Whether the replica still asks its peers where they are (and holds back its request timer meanwhile).
    pub(super) fn is_asking(&self) -> bool {
        self.asking.is_some()
    }

    /// A status round passed: once q - 1 peers answered, it counts towards the end of the asking.
    fn count_asking_round(&mut self) {
        let heard_enough = self.quorum() - 1;
        let caught_up = self.peers_not_ahead() >= self.config.weak_quorum();
        if let Some(asking) = &mut self.asking
            && asking.heard.len() >= heard_enough
        {
            asking.rounds_heard += 1;
            let done = (asking.rounds_heard >= Self::ASKING_ROUNDS && caught_up)
                || asking.rounds_heard >= Self::MAX_ASKING_ROUNDS;
            if done {
                self.asking = None;
            }
        }
    }

    /// How many peers reported, in this replica's view, having executed no further than it has.
    fn peers_not_ahead(&self) -> usize {
        self.peers_executed
            .values()
            .filter(|seq| **seq <= self.last_executed)
            .count()
    }

    /// Whether f+1 peers (so at least one correct one) reported having executed beyond this replica, in its view.
    /// A faulty peer's claim alone never counts.
    pub(super) fn behind_peers(&self) -> bool {
        let mut reported: Vec<SeqNo> = self.peers_executed.values().copied().collect();
        reported.sort_unstable_by(|a, b| b.cmp(a));
        reported
            .get(self.config.weak_quorum() - 1)
            .is_some_and(|seq| *seq > self.last_executed)
    }

    pub(super) fn arm_status_timer(&mut self) {
        if !self.status_timer_set && self.has_unfinished_work() {
            self.status_timer_set = true;
            let after = self.config.params.status_interval;
            self.out.push(Output::SetTimer {
                timer: Timer::Status,
                after,
            });
        }
    }

    pub(super) fn send_status(&mut self) {
        self.count_asking_round();
        let owed = std::mem::take(&mut self.owed_status);
        self.resent_to.clear();
        if !self.has_unfinished_work() {
            for peer in owed {
                self.send_status_to(Dest::Replica(peer));
            }
            return;
        }
        self.send_status_to(Dest::AllReplicas);
        self.fetch_missing_batches();
    }

    pub(super) fn send_status_to(&mut self, to: Dest) {
        let status = Status {
            view: self.view,
            stable: self.checkpoints.stable().seq,
            executed: self.settled(),
            replica: self.id,
            changing_view: self.changing,
            asking: self.asking.is_some(),
        };
        let status = self.signer.sign(status);
        self.send(to, ReplicaMsg::Status(status.into_signed()));
    }

    /// What STATUS reports as executed: the last executed sequence number, or less if a slot at or below it is
    /// not committed in the current view yet. A NEW-VIEW re-runs agreement on batches a replica may have executed
    /// long ago, and peers resend their messages only above this number.
    pub(super) fn settled(&self) -> SeqNo {
        let unsettled = self
            .log
            .above(self.log.low())
            .find(|(seq, slot)| **seq <= self.last_executed && !slot.committed);
        match unsettled {
            Some((seq, _)) => SeqNo(seq.0 - 1),
            None => self.last_executed,
        }
    }

    /// A peer says what it has; resend it this replica's own messages that it lacks. Each replica resends only
    /// what it signed itself (the primary its PRE-PREPAREs), so nothing relayed needs another signature.
    pub(super) fn on_status(&mut self, from: ReplicaId, status: &Status) {
        if let Some(asking) = &mut self.asking {
            asking.heard.insert(from);
        }
        if status.asking {
            self.owed_status.insert(from);
        }
        if status.view == self.view {
            self.peers_executed.insert(from, status.executed);
        }
        let behind = status.view < self.view
            || (status.view == self.view && status.changing_view && !self.changing);
        if behind {
            return self.paced_resend(from, |r| r.help_into_view(from, status.view));
        }
        if status.view > self.view {
            // This replica may be the one behind, and with nothing unfinished it would not say so by itself:
            // answer with its own STATUS, and the peer sends what lets it into the later view.
            return self.send_status_to(Dest::Replica(from));
        }
        if self.changing {
            // Both wait for the same NEW-VIEW: make sure the peer has this replica's VIEW-CHANGE.
            return self.paced_resend(from, |r| r.help_into_view(from, status.view));
        }
        self.paced_resend(from, |r| r.resend_own_messages(from, status));
        // A peer behind this replica may not know it (a restarted replica in an idle cluster has nothing
        // unfinished): this replica's own STATUS, sent when its status timer fires, tells it, and it keeps asking
        // until it caught up.
        if self.last_executed > status.executed {
            self.owed_status.insert(from);
        }
    }

    /// Runs `resend` for `from` unless this replica already resent something to it in this status interval; if
    /// it sent anything, the next interval's first STATUS from `from` is the next one answered.
    fn paced_resend(&mut self, from: ReplicaId, resend: impl FnOnce(&mut Self)) {
        if self.resent_to.contains(&from) {
            return;
        }
        let before = self.out.len();
        resend(self);
        if self.out.len() > before {
            self.resent_to.insert(from);
        }
    }

    /// This replica's own messages that a peer lacks, by its STATUS: in its log above what the peer executed, and
    /// its CHECKPOINTs above the peer's stable checkpoint.
    fn resend_own_messages(&mut self, from: ReplicaId, status: &Status) {
        let to = Dest::Replica(from);
        let mut resend = Vec::new();
        for (_, slot) in self.log.above(status.executed) {
            if let (Some(header), Some(batch)) = (&slot.pre_prepare, &slot.batch)
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
