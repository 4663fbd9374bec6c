//! Up to f backups cut off from everyone for an interval, then healed: the others carry on, no invariant breaks,
//! every request completes.

mod common;

use common::assert_all_pass;
use pbft_sim::{SimConfig, Simulation};

#[test]
fn a_partition_of_up_to_f_backups() {
    for (n, seeds) in [(4, 0..40), (7, 100..120)] {
        let config = SimConfig {
            partition: true,
            ..SimConfig::new(seeds.start, n)
        };
        assert_all_pass(&config, seeds);
    }
}

#[test]
fn the_partition_cuts_messages_and_spares_the_primary() {
    // A seed whose partition starts early enough to fall within the run's traffic.
    let (config, mut sim) = (0..100)
        .map(|seed| SimConfig {
            partition: true,
            ..SimConfig::new(seed, 7)
        })
        .map(|config| (config.clone(), Simulation::new(config).unwrap()))
        .find(|(_, sim)| sim.partitions()[0].start < std::time::Duration::from_millis(100))
        .expect("some seed partitions early");
    let partition = sim.partitions()[0].clone();
    let f = (config.replicas - 1) / 3;
    assert!((1..=f).contains(&partition.isolated.len()), "{partition:?}");
    assert!(!partition.isolated.contains(&pbft_types::ReplicaId(0)));
    assert!(partition.start < partition.end && partition.end <= config.heal_at);
    let report = sim.run();
    assert!(sim.network_stats().partitioned > 0, "{report}");
    assert!(report.passed(), "{report}");
}
