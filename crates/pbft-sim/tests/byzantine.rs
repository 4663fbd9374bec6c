//! Every Byzantine strategy, with n = 4 (one faulty replica) and n = 7 (two), over a few seeds on a lossy network
//! that heals: no checker may fire and every request must complete. And with f + 1 faulty replicas the checkers
//! must see a violation or a stall, so that a passing run means something.
//!
//! PBFT_TRACE=1 prints the trace of every run, to see why a seed fails.

use std::collections::BTreeSet;
use std::time::Duration;

use pbft_sim::{Fault, FaultyReplica, Partition, SimConfig, SimReport, Simulation, Strategy};
use pbft_types::ReplicaId;

fn byzantine(replica: u64, strategy: Strategy) -> FaultyReplica {
    FaultyReplica {
        replica: ReplicaId(replica),
        fault: Fault::Byzantine(strategy),
    }
}

fn run(config: SimConfig) -> SimReport {
    let mut sim = Simulation::new(config).expect("a valid configuration");
    if std::env::var_os("PBFT_TRACE").is_some() {
        sim.trace_to(|line| eprintln!("{line}"));
    }
    sim.run()
}

fn config(seed: u64, n: usize, faulty: Vec<FaultyReplica>) -> SimConfig {
    SimConfig {
        faulty: Some(faulty),
        // Fewer requests than `pbft sim` runs, to keep the suite fast in a debug build.
        requests: 12,
        ..SimConfig::new(seed, n)
    }
}

fn assert_passes(config: SimConfig) -> SimReport {
    let faults = config.faulty.clone();
    let report = run(config);
    assert!(
        report.passed(),
        "faulty {faults:?}:\n{report}\n(explicit faults: replay with this test and PBFT_TRACE=1)"
    );
    report
}

/// The faulty replicas for a strategy: where it hurts most. Strategies that act as primary get the primary of
/// view 0; bad-new-view gets the primary of view 1, and view 0's primary is cut off (n = 4) or silent (n = 7)
/// so that a view change makes it the new primary.
fn scenario(seed: u64, n: usize, strategy: Strategy) -> SimConfig {
    let mut c = match (strategy, n) {
        (Strategy::BadNewView, 4) => {
            let mut c = config(seed, 4, vec![byzantine(1, strategy)]);
            c.partitions.push(Partition {
                isolated: BTreeSet::from([ReplicaId(0)]),
                start: Duration::from_millis(100),
                end: Duration::from_millis(1500),
                spares_clients: false,
            });
            c
        }
        (Strategy::BadNewView, _) => config(
            seed,
            n,
            vec![byzantine(0, Strategy::Silent), byzantine(1, strategy)],
        ),
        (_, 4) => config(seed, 4, vec![byzantine(seed % 2 * 2, strategy)]),
        (_, _) => config(
            seed,
            n,
            vec![byzantine(0, strategy), byzantine(3, strategy)],
        ),
    };
    c.partition = seed.is_multiple_of(3);
    c
}

fn each_seed(strategy: Strategy) {
    for seed in 1..=3 {
        assert_passes(scenario(seed, 4, strategy));
    }
    for seed in 1..=2 {
        assert_passes(scenario(seed, 7, strategy));
    }
}

#[test]
fn silent() {
    each_seed(Strategy::Silent);
}

#[test]
fn mute_primary() {
    each_seed(Strategy::MutePrimary);
}

#[test]
fn equivocating_primary() {
    each_seed(Strategy::Equivocate);
}

#[test]
fn forged_signatures() {
    each_seed(Strategy::Forge);
}

#[test]
fn corrupted_digests_checkpoints_chunks_and_results() {
    each_seed(Strategy::Corrupt);
}

#[test]
fn stale_views() {
    each_seed(Strategy::StaleView);
}

#[test]
fn future_views() {
    each_seed(Strategy::FutureView);
}

#[test]
fn sequence_numbers_outside_the_watermarks() {
    each_seed(Strategy::OutOfWindow);
}

#[test]
fn replayed_messages_and_requests() {
    each_seed(Strategy::Replay);
}

#[test]
fn invalid_view_changes() {
    each_seed(Strategy::BadViewChange);
}

#[test]
fn invalid_new_views() {
    each_seed(Strategy::BadNewView);
}

#[test]
fn votes_for_everything() {
    each_seed(Strategy::VoteAll);
}

#[test]
fn junk_flood() {
    each_seed(Strategy::Flood);
}

#[test]
fn twins() {
    each_seed(Strategy::Twins);
}

#[test]
fn a_silent_primary_forces_a_view_change_that_the_report_counts() {
    let report = assert_passes(config(5, 4, vec![byzantine(0, Strategy::Silent)]));
    assert!(report.view_changes >= 1, "{report}");
    assert!(report.recovery.is_some());
}

#[test]
fn crashed_replicas_restart_empty_and_the_rest_completes() {
    for seed in 1..=2 {
        let faulty = vec![FaultyReplica {
            replica: ReplicaId(seed % 4),
            fault: Fault::Crash {
                at: Duration::from_millis(300),
                restart: Duration::from_millis(1200),
            },
        }];
        assert_passes(config(seed, 4, faulty));
    }
}

#[test]
fn random_faults_drawn_from_the_seed_pass() {
    for seed in 0..4 {
        for n in [4, 7] {
            let c = SimConfig {
                byzantine: pbft_sim::Byzantine::Random,
                crash: seed % 2 == 1,
                requests: 12,
                ..SimConfig::new(seed, n)
            };
            let report = run(c.clone());
            assert!(report.passed(), "{report}");
            assert!(report.replay.contains("--byzantine random"), "{report}");
        }
    }
}

/// The ledger under the same faults: every correct replica's block for every batch is the block a replay of the
/// history makes, also across crashes (recovery replays the journal) and state transfers (the chain head travels
/// in the snapshot).
#[test]
fn the_ledger_under_random_faults_and_crashes_records_the_same_blocks() {
    let base = SimConfig {
        app: pbft_sim::SimApp::Ledger,
        byzantine: pbft_sim::Byzantine::Random,
        crash: true,
        requests: 12,
        ..SimConfig::new(0, 4)
    };
    let reports = pbft_sim::run_seeds(&base, 0..24, 2).expect("a valid configuration");
    for report in &reports {
        assert!(report.passed(), "{report}");
        assert!(report.replay.contains("--app ledger"), "{report}");
    }
}

/// Random Byzantine faults, crashes and partitions in an n-replica cluster with the given authentication: every
/// seed passes, and its replay command names the authentication (`replay_flag`).
fn random_faults_pass_with(
    n: usize,
    seeds: std::ops::Range<u64>,
    client_auth: pbft_types::ClientAuth,
    replica_auth: pbft_types::ReplicaAuth,
    replay_flag: &str,
) {
    let defaults = SimConfig::new(0, n);
    let params = pbft_types::Params {
        client_auth,
        replica_auth,
        ..defaults.params.clone()
    };
    let base = SimConfig {
        byzantine: pbft_sim::Byzantine::Random,
        crash: true,
        partition: true,
        requests: 12,
        params,
        ..defaults
    };
    let reports = pbft_sim::run_seeds(&base, seeds, 2).expect("a valid configuration");
    for report in &reports {
        assert!(report.passed(), "{report}");
        assert!(report.replay.contains(replay_flag), "{report}");
    }
}

/// With MAC authenticators each replica checks its own MAC of every request, also inside PRE-PREPAREs and in its
/// journal after a crash, and the clients accept MACed replies: the same faults pass.
#[test]
fn mac_authenticators_under_random_faults_crashes_and_partitions() {
    for n in [4, 7] {
        random_faults_pass_with(
            n,
            0..12,
            pbft_types::ClientAuth::Macs,
            pbft_types::ReplicaAuth::Signatures,
            "--client-auth macs",
        );
    }
}

/// COMMITs sealed only by their links (`replica_auth = "macs"`), with MAC authenticators for clients too: a
/// Byzantine replica's COMMITs prove nothing beyond its own link, a forged or relayed one is refused, and the same
/// random faults, crashes and partitions pass.
#[test]
fn commits_sealed_by_their_links_under_random_faults_crashes_and_partitions() {
    for (n, seeds) in [(4, 0..24), (7, 100..108)] {
        random_faults_pass_with(
            n,
            seeds,
            pbft_types::ClientAuth::Macs,
            pbft_types::ReplicaAuth::Macs,
            "--replica-auth macs",
        );
    }
    let ledger = SimConfig {
        app: pbft_sim::SimApp::Ledger,
        params: pbft_types::Params {
            replica_auth: pbft_types::ReplicaAuth::Macs,
            ..pbft_sim::simulation_params()
        },
        ..SimConfig::new(0, 4)
    };
    assert!(
        matches!(
            pbft_sim::Simulation::new(ledger),
            Err(pbft_sim::SimError::Cluster(
                pbft_types::ConfigError::UnsignedCommitCertificates
            ))
        ),
        "the ledger needs signed commit certificates"
    );
}

/// Beyond f the guarantees are gone, and the checkers must notice: an equivocating primary and a replica that
/// votes for both of its batches make the two halves of a 4-replica cluster commit different batches. Not every
/// seed goes wrong (a correct replica may see both batches first and start a view change), but several must.
#[test]
fn f_plus_one_colluding_replicas_break_agreement_and_the_checkers_see_it() {
    let mut caught = 0;
    for seed in 1..=8 {
        let c = SimConfig {
            drop: 0.0,
            duplicate: 0.0,
            ..config(
                seed,
                4,
                vec![
                    byzantine(0, Strategy::Equivocate),
                    byzantine(1, Strategy::VoteAll),
                ],
            )
        };
        let report = run(c);
        eprintln!("{report}");
        caught += usize::from(!report.passed());
    }
    assert!(
        caught >= 3,
        "f + 1 colluders were caught in only {caught} of 8 seeds"
    );
}

/// Twins beyond f: two twins among 4 replicas give each half of the cluster a quorum of its own.
#[test]
fn f_plus_one_twins_are_caught() {
    let mut caught = 0;
    for seed in 1..=4 {
        let report = run(config(
            seed,
            4,
            vec![byzantine(0, Strategy::Twins), byzantine(1, Strategy::Twins)],
        ));
        eprintln!("{report}");
        caught += usize::from(!report.passed());
    }
    assert!(caught >= 1, "f + 1 twins went unnoticed in every seed");
}

/// Seed 138 of `pbft sim --replicas 10 --byzantine random --crash random`: three crashes before the heal time
/// leave every correct replica with a full window of prepared certificates, and the NEW-VIEW that carries them
/// (about 100 KB) was refused at the boundary by the 64 KiB message limit, so no view change could ever complete.
/// The simulator now sizes its limit from the largest NEW-VIEW (`new_view_size_bound`).
#[test]
fn a_full_new_view_of_ten_replicas_gets_through() {
    let report = run(SimConfig {
        byzantine: pbft_sim::Byzantine::Random,
        crash: true,
        ..SimConfig::new(138, 10)
    });
    assert!(report.passed(), "{report}");
    assert!(report.view_changes >= 1, "{report}");
}

fn spoiling_client(seed: u64, faulty: Vec<FaultyReplica>) -> SimConfig {
    spoiling_client_of(4, seed, faulty, vec![ReplicaId(3)])
}

/// n replicas, client 0 spoiling the MACs of `spoiled` in every request, and the given faulty replicas.
fn spoiling_client_of(
    n: usize,
    seed: u64,
    faulty: Vec<FaultyReplica>,
    spoiled: Vec<ReplicaId>,
) -> SimConfig {
    let defaults = SimConfig::new(seed, n);
    let params = pbft_types::Params {
        client_auth: pbft_types::ClientAuth::Macs,
        ..defaults.params.clone()
    };
    SimConfig {
        params,
        requests: 8,
        faulty: Some(faulty),
        spoiled_macs: spoiled,
        ..defaults
    }
}

/// A Byzantine client whose MAC for replica 3 is always wrong: replica 3 cannot check the client's requests in
/// the primary's PRE-PREPAREs, holds them, and takes them once another backup's PREPARE vouches for them (the
/// primary and f backups: f+1 replicas, one of them correct). Every request of every client completes.
#[test]
fn a_client_spoiling_one_replicas_mac_cannot_stop_the_others() {
    for seed in 0..6 {
        let report = run(spoiling_client(seed, Vec::new()));
        assert!(
            report.passed(),
            "seed {seed}:
{report}"
        );
    }
}

/// The same client while replica 2 is down: only replicas 0 and 1 check the client's requests, two votes where a
/// quorum needs three. Replica 3 takes them once replica 1's PREPARE vouches for them, and votes too; this
/// stalled the cluster before backups took vouched requests (README, "Running a cluster").
#[test]
fn a_client_spoiling_one_replicas_mac_while_f_replicas_are_down_still_commits() {
    for seed in 0..4 {
        let report = run(spoiling_client(seed, vec![crashed(2)]));
        assert!(report.passed(), "seed {seed}:\n{report}");
    }
}

/// Seven replicas (f = 2), two of them down, and a client spoiling the MACs of two others: each of those two
/// takes the client's requests once the two backups that checked them vouch, and all five make the quorum.
#[test]
fn a_client_spoiling_f_replicas_macs_while_f_others_are_down_still_commits() {
    for seed in 0..2 {
        let config = spoiling_client_of(
            7,
            seed,
            vec![crashed(2), crashed(4)],
            vec![ReplicaId(3), ReplicaId(5)],
        );
        let report = run(config);
        assert!(report.passed(), "seed {seed}:\n{report}");
    }
}

/// `replica` crashes early and stays down for the whole run.
fn crashed(replica: u64) -> FaultyReplica {
    FaultyReplica {
        replica: ReplicaId(replica),
        fault: Fault::Crash {
            at: Duration::from_millis(50),
            restart: Duration::from_secs(3600),
        },
    }
}
