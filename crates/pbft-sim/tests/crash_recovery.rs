//! Replicas that crash and restart from their disk (their journal), one at a time or the whole cluster at once:
//! every checker looks at them once they are back, and every request completes.
//!
//! PBFT_TRACE=1 prints the trace of every run.

use std::time::Duration;

use pbft_sim::{Fault, FaultyReplica, Partition, SimConfig, SimReport, Simulation};
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

/// A backup restarts while the others carry on, and its links to its peers stay down for longer than a request
/// timeout (in a real cluster the peers reconnect with back-off), while clients reach it at once. It recovered
/// requests it held before the crash, and clients retransmit to it, but the others executed those long ago: it
/// must not time them out into a view change of its own, which the others, with nothing left to time, would never
/// join. Whether the load goes on or ends about when its links come back, it learns that it is behind and catches
/// up with the others, in their view.
#[test]
fn a_restarted_backup_cut_off_from_its_peers_does_not_leave_their_view_alone() {
    // 30 requests a client: the load ends about when the links come back; 80: it goes on well past that.
    for (seed, requests) in (0..12).flat_map(|seed| [(seed, 30), (seed, 80)]) {
        let restart = Duration::from_millis(400);
        let config = SimConfig {
            drop: 0.0,
            duplicate: 0.0,
            faulty: Some(vec![FaultyReplica {
                replica: ReplicaId(3),
                fault: Fault::Crash {
                    at: Duration::from_millis(150),
                    restart,
                },
            }]),
            partitions: vec![Partition {
                isolated: [ReplicaId(3)].into(),
                start: restart,
                end: restart + Duration::from_millis(1200),
                spares_clients: true,
            }],
            heal_at: Duration::from_secs(3),
            requests,
            think_time: Duration::from_millis(40),
            drain: Duration::from_secs(3),
            ..SimConfig::new(seed, 4)
        };
        let mut sim = Simulation::new(config).expect("a valid configuration");
        let report = sim.run();
        assert!(report.passed(), "{report}");
        let statuses = sim.statuses();
        let first = statuses[0];
        for s in &statuses {
            assert_eq!(
                (s.view, s.changing_view, s.last_executed),
                (first.view, first.changing_view, first.last_executed),
                "seed {seed}, {requests} requests a client: replica {} is not where replica 0 is: {statuses:?}\n{report}",
                s.id
            );
        }
    }
}
