//! The replica: its state, and `step`, which dispatches one input to the rule of PROTOCOL.md that handles it. The
//! rules live in the submodules, one part of the protocol each: the normal case, checkpoints, STATUS
//! retransmission, state transfer and view change.

mod checkpointing;
mod normal_case;
mod recovery;
mod status;
mod transfer;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use pbft_crypto::{Signer, Verified, VerifiedMsg, VerifiedPrepared};
use pbft_types::{
    ClientId, ClusterConfig, ConfigError, Digest, NewView, Principal, ReplicaAuth, ReplicaId,
    ReplicaMsg, SeqNo, Timestamp, View, ViewChange,
};

use crate::app::StateMachine;
use crate::batches::{Batches, null_digest};
use crate::checkpoint::{Checkpoints, Stable, checkpoint_digest};
use crate::client_table::ClientTable;
use crate::held::Held;
use crate::io::{Dest, Input, Output, RejectReason, Rejection, Timer};
use crate::journal::JournalEntry;
use crate::log::Log;
use crate::pending::Pending;
use crate::relay::Unrelayed;
use crate::state_transfer::Transfer;
use status::Asking;

pub use recovery::RecoveryError;

/// What a replica reports about itself, for status pages, metrics and the simulator's checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: ReplicaId,
    pub view: View,
    /// The replica sent VIEW-CHANGE for `view` and waits for its NEW-VIEW.
    pub changing_view: bool,
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
    /// The replica sent VIEW-CHANGE for `view` and waits for its NEW-VIEW: it takes no PRE-PREPARE, PREPARE or
    /// COMMIT meanwhile.
    changing: bool,
    log: Log,
    /// The batches proposed for each sequence number above the stable checkpoint, in any view.
    batches: Batches,
    /// For each sequence number above the stable checkpoint that prepared here, the certificate of the highest
    /// view: the P of this replica's next VIEW-CHANGE.
    prepared: BTreeMap<SeqNo, VerifiedPrepared>,
    /// The latest valid VIEW-CHANGE of each replica, this one's own included.
    view_changes: BTreeMap<ReplicaId, Verified<ViewChange>>,
    /// The NEW-VIEW that started the current view (none in view 0), resent to replicas that missed it.
    new_view: Option<Verified<NewView>>,
    /// How long the replica waits for a NEW-VIEW: doubled by each view change that produces none in time, back to
    /// `view_change_timeout` once a batch executes.
    view_timeout: Duration,
    view_timer: ViewTimer,
    null_digest: Digest,
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
    /// Unfinished work: the newest request of each client that the replica holds (from the client, in a
    /// PRE-PREPARE, or proposed itself) and has not seen execute. The view-change timer watches these.
    waiting: Held,
    /// Requests from clients this backup has not yet seen the primary propose (see `relay`).
    unrelayed: Unrelayed,
    relay_timer_set: bool,
    /// The state transfer in progress, if this replica is behind a certified checkpoint.
    transfer: Option<Transfer>,
    batch_timer_set: bool,
    status_timer_set: bool,
    /// The last executed sequence number each peer reported in a STATUS of this replica's view: how a replica
    /// learns that it is behind when nothing else would tell it (an idle cluster sends no new messages).
    peers_executed: BTreeMap<ReplicaId, SeqNo>,
    /// Peers whose STATUS showed them behind this replica, or asked: they get its STATUS when the status timer
    /// fires next. Answering at once could echo forever with a peer that answers in kind; the timer paces it.
    owed_status: BTreeSet<ReplicaId>,
    /// Peers this replica resent its messages to since its status timer last fired: one resend per peer and
    /// status interval, so that a faulty peer sending STATUS after STATUS cannot make it send its whole window
    /// each time.
    resent_to: BTreeSet<ReplicaId>,
    /// Set after the replica recovered or installed a checkpoint: it has just jumped, and does not know where its
    /// peers are (an idle cluster would tell it nothing). See `status::Asking`.
    asking: Option<Asking>,
    transfer_timer_set: bool,
    out: Vec<Output>,
}

/// What the view-change timer (`Timer::ViewChange`) runs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ViewTimer {
    Off,
    /// A backup waits for this request of this client to execute.
    Request(ClientId, Timestamp),
    /// The replica holds q VIEW-CHANGEs for its view and waits for the NEW-VIEW.
    NewView,
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
        if app.needs_signed_commits() && config.params.replica_auth == ReplicaAuth::Macs {
            return Err(ConfigError::UnsignedCommitCertificates);
        }
        let clients = ClientTable::default();
        let initial = checkpoint_digest(SeqNo(0), app.digest(), clients.digest());
        Ok(Replica {
            log: Log::new(config.params.window),
            checkpoints: Checkpoints::new(initial),
            id,
            signer,
            app,
            view: View(0),
            changing: false,
            batches: Batches::default(),
            prepared: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            new_view: None,
            view_timeout: config.params.view_change_timeout,
            view_timer: ViewTimer::Off,
            null_digest: null_digest(),
            clients,
            last_executed: SeqNo(0),
            last_assigned: SeqNo(0),
            pending: Pending::default(),
            in_flight: HashMap::new(),
            waiting: Held::default(),
            unrelayed: Unrelayed::default(),
            relay_timer_set: false,
            transfer: None,
            batch_timer_set: false,
            status_timer_set: false,
            peers_executed: BTreeMap::new(),
            owed_status: BTreeSet::new(),
            resent_to: BTreeSet::new(),
            asking: None,
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
            Input::TimerFired(Timer::ViewChange) => self.on_view_timer(),
            Input::TimerFired(Timer::Relay) => {
                self.relay_timer_set = false;
                self.relay();
            }
        }
        self.refresh_request_timer();
        self.arm_status_timer();
        std::mem::take(&mut self.out)
    }

    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            id: self.id,
            view: self.view,
            changing_view: self.changing,
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

    fn persist(&mut self, entry: JournalEntry) {
        self.out.push(Output::Persist(entry));
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
        let normal_case = matches!(
            msg,
            VerifiedMsg::PrePrepare { .. }
                | VerifiedMsg::UnvouchedPrePrepare(_)
                | VerifiedMsg::Prepare(_)
                | VerifiedMsg::Commit(_)
        );
        if normal_case && self.changing {
            let kind = msg.kind();
            return self.reject(Principal::Replica(from), kind, RejectReason::ChangingView);
        }
        match msg {
            VerifiedMsg::PrePrepare { header, batch } => self.on_pre_prepare(from, header, batch),
            VerifiedMsg::UnvouchedPrePrepare(held) => self.on_unvouched_pre_prepare(from, held),
            VerifiedMsg::Prepare(prepare) => self.on_prepare(from, prepare),
            VerifiedMsg::Commit(commit) => self.on_commit(from, commit),
            VerifiedMsg::Checkpoint(checkpoint) => self.on_checkpoint(from, checkpoint),
            VerifiedMsg::Status(status) => self.on_status(from, &status),
            VerifiedMsg::FetchState(fetch) => self.on_fetch_state(from, &fetch),
            VerifiedMsg::StateChunk(chunk) => self.on_state_chunk(from, &chunk),
            VerifiedMsg::Request(request) => self.on_request(request, Some(from)),
            VerifiedMsg::ViewChange(vc) => self.on_view_change(from, vc),
            VerifiedMsg::NewView(nv) => self.on_new_view(from, nv),
            VerifiedMsg::FetchBatch(fetch) => self.on_fetch_batch(from, &fetch),
            VerifiedMsg::BatchData { header, batch } => self.on_batch_data(from, &header, batch),
        }
    }
}
