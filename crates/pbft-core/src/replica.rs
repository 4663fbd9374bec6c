use pbft_crypto::Signer;
use pbft_types::{ClusterConfig, ConfigError, ReplicaId, SeqNo, View};

use crate::app::StateMachine;
use crate::io::{Input, Output};

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
    _config: ClusterConfig,
    _id: ReplicaId,
    _signer: Signer,
    _app: Box<dyn StateMachine>,
}

impl Replica {
    /// A replica at the initial state: view 0, nothing executed.
    pub fn new(
        config: ClusterConfig,
        id: ReplicaId,
        signer: Signer,
        app: Box<dyn StateMachine>,
    ) -> Result<Replica, ConfigError> {
        config.validate()?;
        Ok(Replica { _config: config, _id: id, _signer: signer, _app: app })
    }

    pub fn step(&mut self, _input: Input) -> Vec<Output> {
        Vec::new()
    }

    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            id: self._id,
            view: View(0),
            low_watermark: SeqNo(0),
            high_watermark: SeqNo(0),
            last_executed: SeqNo(0),
            log_slots: 0,
            log_range: None,
            pending_requests: 0,
        }
    }
}
