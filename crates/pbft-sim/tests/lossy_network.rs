//! Many seeds over a network that loses, duplicates, delays and reorders messages: zero violations, every request
//! completed.

mod common;

use common::assert_all_pass;
use pbft_sim::{SimConfig, Summary};

#[test]
fn four_replicas_over_200_seeds() {
    let config = SimConfig::new(0, 4);
    assert!(config.drop > 0.0 && config.duplicate > 0.0 && config.min_delay < config.max_delay);
    let reports = assert_all_pass(&config, 0..200);
    let summary = Summary::of(&reports);
    // The faults happened and the protocol went through many checkpoints.
    assert!(summary.messages_dropped > 0);
    assert!(
        reports.iter().all(|r| r.max_stable_checkpoint.0 >= 8),
        "{summary}"
    );
}

#[test]
fn seven_replicas_over_50_seeds() {
    assert_all_pass(&SimConfig::new(1000, 7), 1000..1050);
}

#[test]
fn ten_replicas_over_10_seeds() {
    assert_all_pass(&SimConfig::new(2000, 10), 2000..2010);
}

#[test]
fn heavy_losses_before_the_heal_time() {
    let config = SimConfig {
        drop: 0.25,
        duplicate: 0.2,
        ..SimConfig::new(3000, 4)
    };
    assert_all_pass(&config, 3000..3030);
}
