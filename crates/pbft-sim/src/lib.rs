//! A deterministic discrete-event simulator for the PBFT core.
//!
//! A run puts n replicas (`pbft_core::Replica` with the key-value store) and C clients (`pbft_client::Client`) on a
//! simulated network that loses, duplicates, delays, reorders and partitions messages, in virtual time, with every
//! random choice drawn from one generator seeded with the run's seed: a seed replays exactly. After every step the
//! checkers of [`check`] test the invariants of PROTOCOL.md; the first step that breaks one ends the run, and its
//! report carries the violation and the command that replays it.
//!
//! Up to f replicas may be faulty ([`byzantine`]): Byzantine strategies that rewrite what the real core sends,
//! Twins (two copies of one replica), or crashes with a restart from an empty state. The checkers then look only
//! at the correct replicas, and liveness is still owed once the network heals, whatever the faulty ones keep doing.
//!
//! ```no_run
//! use pbft_sim::{SimConfig, run_one};
//! let report = run_one(SimConfig::new(7, 4)).expect("a valid configuration");
//! assert!(report.passed(), "{report}");
//! ```

pub mod boundary;
pub mod byzantine;
pub mod check;
pub mod config;
pub mod disk;
pub mod network;
pub mod queue;
pub mod report;
pub mod seeds;
pub mod simulation;
pub mod trace;
pub mod violation;
pub mod workload;

pub use byzantine::{Byzantine, Fault, FaultyReplica, Strategy};
pub use check::history::HistoryEntry;
pub use config::{SimConfig, SimError, simulation_params};
pub use network::{Endpoint, Network, NetworkConfig, NetworkStats, Partition};
pub use report::{SimReport, Summary};
pub use seeds::run_seeds;
pub use simulation::{Simulation, run_one};
pub use violation::Violation;
pub use workload::SimApp;
