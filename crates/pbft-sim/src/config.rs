//! What one simulated run is: the seed, the cluster, the workload and the network's faults.

use std::time::Duration;

use pbft_crypto::KeyError;
use pbft_types::{ClientAuth, ConfigError, Params, ReplicaAuth, ReplicaId};
use thiserror::Error;

use rand::RngExt;

use crate::byzantine::{Byzantine, Fault, FaultyReplica, draw_faults, fault_rng};
use crate::network::Partition;
use crate::workload::SimApp;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SimError {
    #[error("invalid simulation: {0}")]
    Invalid(String),
    #[error("invalid cluster: {0}")]
    Cluster(#[from] ConfigError),
    #[error("invalid keys: {0}")]
    Keys(#[from] KeyError),
}

/// A simulated run. Everything random in it is drawn from one generator seeded with `seed`, so equal configs give
/// identical runs.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// n, the number of replicas.
    pub replicas: usize,
    pub clients: usize,
    /// Requests each client issues, one after the other.
    pub requests: usize,
    /// Probability that a message is lost, until the heal time.
    pub drop: f64,
    /// Probability that a message is delivered twice, until the heal time.
    pub duplicate: f64,
    /// Whether to cut off up to f backups for a random interval before the heal time.
    pub partition: bool,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// When losses, duplicates and partitions stop.
    pub heal_at: Duration,
    /// How long after the heal time (or after its issue, if later) a request may take before the run is declared
    /// stalled.
    pub liveness_bound: Duration,
    /// How long a client waits for a result before it sends its request to every replica.
    pub retransmit_after: Duration,
    /// The longest pause of a client between a result and its next request.
    pub think_time: Duration,
    /// The replicated application: the key-value store or the ledger.
    pub app: SimApp,
    /// The number of distinct keys the workload touches: few, so that operations conflict.
    pub key_space: u32,
    /// How long the run continues once every request completed, so that replicas still catching up commit under
    /// the checkers' eyes.
    pub drain: Duration,
    /// The protocol's parameters, identical on every replica.
    pub params: Params,
    /// Byzantine replicas, drawn from the seed (see [`SimConfig::faults`]).
    pub byzantine: Byzantine,
    /// Whether up to f replicas crash and restart from their disk before the heal time (and, one seed in four, the
    /// whole cluster at once).
    pub crash: bool,
    /// The faulty replicas, given explicitly instead of drawn from `byzantine` and `crash`. Tests use it; more
    /// than f are allowed here, to show that the checkers then see a violation or a stall.
    pub faulty: Option<Vec<FaultyReplica>>,
    /// Partitions besides the one `partition` draws.
    pub partitions: Vec<Partition>,
    /// A Byzantine client: with MAC authenticators, client 0 spoils the MAC of these replicas in every request
    /// it sends. Tests use it.
    pub spoiled_macs: Vec<ReplicaId>,
}

/// Parameters sized for simulation: a small checkpoint interval and window, so that checkpoints, garbage collection
/// and the watermarks are exercised many times in every run.
pub fn simulation_params() -> Params {
    Params {
        checkpoint_interval: 8,
        window: 16,
        max_batch_size: 8,
        batch_delay: Duration::from_millis(2),
        request_timeout: Duration::from_millis(500),
        view_change_timeout: Duration::from_millis(500),
        status_interval: Duration::from_millis(50),
        max_request_size: 1024,
        max_message_size: 64 * 1024,
        // Small, so that transfers in the simulator take several chunks.
        state_chunk_size: 256,
        max_snapshot_size: 16 * 1024 * 1024,
        client_auth: ClientAuth::Signatures,
        replica_auth: ReplicaAuth::Signatures,
    }
}

/// The simulator sizes its message limit from the largest NEW-VIEW: below it, view change becomes impossible once
/// the log is full (every NEW-VIEW is refused at the boundary; found by `pbft sim --replicas 10 --byzantine random
/// --crash random`, seed 138). `ClusterConfig::validate` refuses such a limit too.
pub use pbft_types::new_view_size_bound;

impl SimConfig {
    /// The defaults of `pbft sim` for `replicas` replicas and one seed. The message size limit is raised above
    /// 64 KiB when the cluster's largest NEW-VIEW needs it.
    pub fn new(seed: u64, replicas: usize) -> SimConfig {
        let mut params = simulation_params();
        params.max_message_size = params
            .max_message_size
            .max(new_view_size_bound(replicas, params.window));
        SimConfig {
            seed,
            replicas,
            clients: 4,
            requests: 20,
            drop: 0.05,
            duplicate: 0.05,
            partition: false,
            min_delay: Duration::from_micros(100),
            max_delay: Duration::from_millis(3),
            heal_at: Duration::from_secs(2),
            liveness_bound: Duration::from_secs(60),
            retransmit_after: Duration::from_millis(250),
            think_time: Duration::from_millis(1),
            app: SimApp::Kv,
            key_space: 4,
            drain: Duration::from_millis(100),
            params,
            byzantine: Byzantine::None,
            crash: false,
            faulty: None,
            spoiled_macs: Vec::new(),
            partitions: Vec::new(),
        }
    }

    pub fn with_seed(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<(), SimError> {
        let invalid = |m: String| Err(SimError::Invalid(m));
        if self.replicas < 4 {
            return invalid(format!(
                "at least 4 replicas are needed, not {}",
                self.replicas
            ));
        }
        if self.clients == 0 {
            return invalid("at least one client is needed".to_string());
        }
        for (name, p) in [("drop", self.drop), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&p) {
                return invalid(format!(
                    "the {name} probability must be within [0, 1], not {p}"
                ));
            }
        }
        if self.min_delay > self.max_delay || self.max_delay.is_zero() {
            return invalid(format!(
                "the delay range [{:?}, {:?}] is empty or zero",
                self.min_delay, self.max_delay
            ));
        }
        if self.retransmit_after.is_zero() || self.liveness_bound.is_zero() {
            return invalid(
                "the retransmission timeout and the liveness bound must be positive".to_string(),
            );
        }
        let f = (self.replicas - 1) / 3;
        if let Byzantine::Listed(list) = &self.byzantine
            && list.len() > f
        {
            return invalid(format!(
                "{} Byzantine strategies listed, but {} replicas tolerate only f = {f} faulty ones",
                list.len(),
                self.replicas
            ));
        }
        if let Some(faulty) = &self.faulty {
            let mut ids: Vec<_> = faulty.iter().map(|x| x.replica).collect();
            ids.sort();
            ids.dedup();
            if ids.len() != faulty.len() || ids.iter().any(|r| r.index() >= self.replicas) {
                return invalid(format!(
                    "the faulty replicas {ids:?} must be distinct replicas of the {}",
                    self.replicas
                ));
            }
            for x in faulty {
                if let Fault::Crash { at, restart } = x.fault
                    && at >= restart
                {
                    return invalid(format!("replica {} restarts before it crashes", x.replica));
                }
            }
        }
        Ok(())
    }

    /// With random crashes, one seed in four also crashes the whole cluster at once: every replica stops at the
    /// same instant and each restarts from its disk at its own time before the heal. Returns the instant and each
    /// replica's restart time.
    pub fn cluster_crash(&self) -> Option<(Duration, Vec<Duration>)> {
        if !self.crash || self.faulty.is_some() {
            return None;
        }
        let mut rng = fault_rng(self.seed, 7);
        if !rng.random_bool(0.25) {
            return None;
        }
        let heal = self.heal_at.as_micros().max(10) as u64;
        let at = rng.random_range(0..heal / 2);
        let restarts = (0..self.replicas)
            .map(|_| Duration::from_micros(rng.random_range(at + 1..=heal)))
            .collect();
        Some((Duration::from_micros(at), restarts))
    }

    /// The faulty replicas of this run: the explicit ones, or those drawn from the seed.
    pub fn faults(&self) -> Vec<FaultyReplica> {
        match &self.faulty {
            Some(faulty) => faulty.clone(),
            None => draw_faults(
                self.replicas,
                &self.byzantine,
                self.crash,
                self.heal_at,
                self.seed,
            ),
        }
    }

    /// The command that replays this run. Only what `pbft sim` has flags for is spelled out: a config that
    /// changes other fields (tests do) replays with these defaults instead.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "cargo run --release -p pbft-cli -- sim --seed {} --replicas {} --clients {} --requests {} --drop {} \
             --duplicate {}",
            self.seed, self.replicas, self.clients, self.requests, self.drop, self.duplicate
        );
        if self.partition {
            command.push_str(" --partition");
        }
        if self.byzantine != Byzantine::None {
            command.push_str(&format!(" --byzantine {}", self.byzantine));
        }
        if self.crash {
            command.push_str(" --crash random");
        }
        if self.app == SimApp::Ledger {
            command.push_str(" --app ledger");
        }
        if self.params.client_auth == ClientAuth::Macs {
            command.push_str(" --client-auth macs");
        }
        if self.params.replica_auth == ReplicaAuth::Macs {
            command.push_str(" --replica-auth macs");
        }
        if !self.spoiled_macs.is_empty() {
            command.push_str("  # client 0 spoiled its MACs by hand: rerun the test that set them");
        }
        if let Some(faulty) = &self.faulty {
            command.push_str(&format!(
                "  # not replayable from the command line: the faulty replicas were set by hand ({}); rerun the \
                 test that set them, with PBFT_TRACE=1",
                crate::byzantine::describe(faulty)
            ));
        }
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_replayable() {
        let c = SimConfig::new(42, 7);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.replay_command(),
            "cargo run --release -p pbft-cli -- sim --seed 42 --replicas 7 --clients 4 --requests 20 --drop 0.05 \
             --duplicate 0.05"
        );
        let p = SimConfig {
            partition: true,
            ..c.with_seed(3)
        };
        assert_eq!(
            p.replay_command(),
            "cargo run --release -p pbft-cli -- sim --seed 3 --replicas 7 --clients 4 --requests 20 --drop 0.05 \
             --duplicate 0.05 --partition"
        );
        assert_eq!(c.params.window % c.params.checkpoint_interval, 0);
    }

    /// The largest NEW-VIEW, built for real (q VIEW-CHANGEs, each with a full window of prepared certificates and
    /// a checkpoint proof, and a full O), fits within the bound and so within the simulator's message limit.
    #[test]
    fn the_largest_new_view_fits_in_a_message() {
        use pbft_crypto::KeyPair;
        use pbft_types::{
            Checkpoint, Digest, NewView, PrePrepare, Prepare, PreparedProof, ReplicaId, ReplicaMsg,
            SeqNo, View, ViewChange,
        };
        for n in [4usize, 7, 10, 13] {
            let config = SimConfig::new(1, n);
            let window = config.params.window;
            let f = (n - 1) / 3;
            let q = (n + f + 1).div_ceil(2);
            let keys: Vec<KeyPair> = (0..n)
                .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
                .collect();
            // Views and sequence numbers as large as they get, so that their varints are as long as they get.
            let (view, stable) = (View(u64::MAX - 1), SeqNo(u64::MAX - 2 * window));
            let digest = Digest([0xff; 32]);
            let checkpoints: Vec<_> = (0..q)
                .map(|i| {
                    keys[i].sign(Checkpoint {
                        seq: stable,
                        digest,
                        replica: ReplicaId(i as u64),
                    })
                })
                .collect();
            let prepared: Vec<PreparedProof> = (1..=window)
                .map(|k| {
                    let seq = SeqNo(stable.0 + k);
                    let old = View(view.0 - 1);
                    PreparedProof {
                        pre_prepare: keys[0].sign(PrePrepare {
                            view: old,
                            seq,
                            digest,
                            replica: ReplicaId(u64::MAX),
                        }),
                        prepares: (1..q)
                            .map(|i| {
                                keys[i].sign(Prepare {
                                    view: old,
                                    seq,
                                    digest,
                                    replica: ReplicaId(u64::MAX),
                                })
                            })
                            .collect(),
                    }
                })
                .collect();
            let view_changes = (0..q)
                .map(|i| {
                    keys[i].sign(ViewChange {
                        new_view: view,
                        stable_seq: stable,
                        checkpoint_proof: checkpoints.clone(),
                        prepared: prepared.clone(),
                        replica: ReplicaId(u64::MAX),
                    })
                })
                .collect();
            let pre_prepares = (1..=window)
                .map(|k| {
                    keys[0].sign(PrePrepare {
                        view,
                        seq: SeqNo(stable.0 + k),
                        digest,
                        replica: ReplicaId(u64::MAX),
                    })
                })
                .collect();
            let new_view = ReplicaMsg::NewView(keys[0].sign(NewView {
                view,
                view_changes,
                pre_prepares,
                replica: ReplicaId(u64::MAX),
            }));
            let size = new_view.encode().len();
            assert!(
                size <= new_view_size_bound(n, window) && size <= config.params.max_message_size,
                "n = {n}: a NEW-VIEW of {size} bytes, bound {}, limit {}",
                new_view_size_bound(n, window),
                config.params.max_message_size
            );
        }
    }

    #[test]
    fn impossible_runs_are_refused() {
        let c = SimConfig::new(1, 4);
        assert!(
            SimConfig {
                replicas: 3,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            SimConfig {
                clients: 0,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            SimConfig {
                drop: 1.5,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            SimConfig {
                duplicate: -0.1,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            SimConfig {
                min_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(1),
                ..c
            }
            .validate()
            .is_err()
        );
    }
}
