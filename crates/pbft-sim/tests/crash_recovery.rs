//! Replicas that crash and restart from their disk (their journal), one at a time or the whole cluster at once:
//! every checker looks at them once they are back, and every request completes.
//!
//! PBFT_TRACE=1 prints the trace of every run.

use std::time::Duration;

use pbft_sim::{Fault, FaultyReplica, SimConfig, SimReport, Simulation};
use pbft_types::ReplicaId;

fn run(config: SimConfig) -> SimReport {
    let mut sim = Simulation::new(config).expect("a valid configuration");
    if std::env::var_os("PBFT_TRACE").is_some() {
        sim.trace_to(|line| eprintln!("{line}"));
    }
    sim.run()
}

#[test]
fn random_crashes_of_single_replicas_and_of_the_whole_cluster_lose_nothing() {
    let mut whole_cluster = 0;
    for n in [4, 7] {
        for seed in 0..12 {
            let config = SimConfig {
                crash: true,
                requests: 12,
                ..SimConfig::new(seed, n)
            };
            whole_cluster += usize::from(config.cluster_crash().is_some());
            let report = run(config);
            assert!(report.passed(), "{report}");
        }
    }
    assert!(
        whole_cluster >= 2,
        "the seeds should include crashes of the whole cluster"
    );
}

/// The primary crashes in the middle of the run and comes back from its disk: it must not propose a second batch
/// for a sequence number it assigned before the crash (the checkers would see two histories), and it catches up
/// with the view the others moved to.
#[test]
fn a_primary_that_crashes_and_restarts_from_its_disk_stays_consistent() {
    for seed in 0..6 {
        let config = SimConfig {
            faulty: Some(vec![FaultyReplica {
                replica: ReplicaId(0),
                fault: Fault::Crash {
                    at: Duration::from_millis(150),
                    restart: Duration::from_millis(900),
                },
            }]),
            requests: 12,
            ..SimConfig::new(seed, 4)
        };
        let report = run(config);
        assert!(report.passed(), "{report}");
    }
}
