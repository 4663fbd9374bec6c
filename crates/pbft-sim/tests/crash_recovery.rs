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

/// The whole cluster crashes at once under load and restarts. A replica's record of a batch it executed needs no
/// sync of its own (`JournalEntry::gates_outputs`), so the crash may take the latest ones from every disk, after
/// their replies left: each replica still has the batch prepared, executes it again, and every result a client
/// accepted stands (the model checker holds the replicas to it).
#[test]
fn a_cluster_that_lost_its_latest_execution_records_executes_them_again_to_the_same_results() {
    let mut executed_again = 0;
    for seed in 0..8 {
        let crash = |replica| FaultyReplica {
            replica: ReplicaId(replica),
            fault: Fault::Crash {
                at: Duration::from_millis(200 + 7 * seed),
                restart: Duration::from_millis(400 + 50 * replica),
            },
        };
        let config = SimConfig {
            faulty: Some((0..4).map(crash).collect()),
            requests: 20,
            ..SimConfig::new(seed, 4)
        };
        let mut sim = Simulation::new(config).expect("a valid configuration");
        let lines = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = lines.clone();
        sim.trace_to(move |line| sink.borrow_mut().push(line.to_string()));
        let report = sim.run();
        assert!(report.passed(), "seed {seed}: {report}");
        executed_again += restarts_behind(&lines.borrow());
    }
    assert!(
        executed_again > 0,
        "no replica lost an execution record in the crash: the test does not test what it says"
    );
}

/// How many restarts came back with fewer batches executed than the replica had executed before its crash.
fn restarts_behind(trace: &[String]) -> usize {
    let mut executed = std::collections::HashMap::new();
    let mut behind = 0;
    for line in trace {
        // "<time> r<i> <event>"
        let mut parts = line.trim_start().splitn(3, ' ');
        let (Some(_time), Some(replica), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(seq) = rest.strip_prefix("COMMITTED n") {
            let seq: u64 = seq
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            executed.insert(replica.to_string(), seq);
        } else if let Some(at) = rest
            .strip_prefix("RESTARTS from its disk: ")
            .and_then(|r| r.rsplit_once("executed "))
        {
            let recovered: u64 = at.1.trim().parse().unwrap_or(0);
            if executed.get(replica).is_some_and(|&e| recovered < e) {
                behind += 1;
            }
        }
    }
    behind
}

/// Replicas 0 and 1 keep their CHECKPOINT for seq 8 from replicas 2 and 3, so that only 0 and 1 see it become
/// stable (and collect their logs below it).
fn withhold_checkpoint_8(id: ReplicaId, outputs: &mut Vec<pbft_core::Output>) {
    use pbft_core::{Dest, Output};
    use pbft_types::{ReplicaMsg, SeqNo};
    if id.0 > 1 {
        return;
    }
    let other = ReplicaId(1 - id.0);
    outputs.retain_mut(|output| match output {
        Output::Send {
            to,
            msg: ReplicaMsg::Checkpoint(checkpoint),
        } if checkpoint.value().seq == SeqNo(8) => match to {
            Dest::AllReplicas => {
                *to = Dest::Replica(other);
                true
            }
            Dest::Replica(r) => r.0 <= 1,
        },
        _ => true,
    });
}

/// The instant of the first trace line that `matches`, or of the last one with `last`.
fn trace_time(trace: &[String], matches: impl Fn(&str) -> bool, last: bool) -> Option<f64> {
    let times = trace
        .iter()
        .filter(|line| matches(line))
        .filter_map(|line| line.trim_start().split(' ').next()?.parse::<f64>().ok());
    match last {
        true => times.reduce(f64::max),
        false => times.reduce(f64::min),
    }
}

/// The whole cluster crashes after every replica executed the checkpoint's batch (seq 8) and sent its CHECKPOINT,
/// but before replicas 2 and 3 saw it become stable. Their CHECKPOINTs vouched for the state at 8, so their
/// records of executing it must be on their disks: otherwise they would come back at 7, unable to commit 8 again
/// (0 and 1 collected their logs below the checkpoint) or to certify the checkpoint, until a view change. Found by
/// helper-21's review: the step that sends a CHECKPOINT waits for the journal (`Output::waits_for_journal`).
#[test]
fn a_replica_that_sent_its_checkpoint_comes_back_with_the_state_it_vouched_for() {
    let mut crashed_in_between = 0;
    for seed in 0..20 {
        let config = |faulty| SimConfig {
            clients: 1,
            requests: 30,
            drop: 0.0,
            duplicate: 0.0,
            think_time: Duration::from_millis(1),
            faulty,
            ..SimConfig::new(seed, 4)
        };
        let run = |faulty| {
            let mut sim = Simulation::new(config(faulty)).expect("a valid configuration");
            sim.tamper_with(withhold_checkpoint_8);
            let lines = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let sink = lines.clone();
            sim.trace_to(move |line| sink.borrow_mut().push(line.to_string()));
            let report = sim.run();
            let trace = lines.borrow().clone();
            (report, trace)
        };
        // A run without crashes tells when every replica had executed 8 and when batch 9 was first proposed.
        let (_, trace) = run(None);
        let executed_8 = trace_time(&trace, |l| l.contains(" COMMITTED n8 "), true);
        let proposed_9 = trace_time(&trace, |l| l.contains(" n9 ") || l.contains("n9)"), false);
        let (Some(executed_8), Some(proposed_9)) = (executed_8, proposed_9) else {
            continue;
        };
        if proposed_9 <= executed_8 {
            continue;
        }
        crashed_in_between += 1;
        let at = Duration::from_secs_f64(executed_8 + (proposed_9 - executed_8) * 0.9);
        let crash = |replica: u8| FaultyReplica {
            replica: ReplicaId(replica.into()),
            fault: Fault::Crash {
                at,
                restart: at + Duration::from_millis(100 + 10 * u64::from(replica)),
            },
        };
        let (report, trace) = run(Some((0..4).map(crash).collect()));
        let behind: Vec<&String> = trace
            .iter()
            .filter(|l| l.contains("RESTARTS") && l.ends_with("executed 7"))
            .collect();
        assert!(behind.is_empty(), "seed {seed}: {behind:?}\n{report}");
        assert_eq!(report.view_changes, 0, "seed {seed}: {report}");
    }
    assert!(
        crashed_in_between >= 5,
        "too few seeds crash between the checkpoint and the next batch: {crashed_in_between}"
    );
}
