//! One seed, one run: the same seed gives the same report and the same executed history, whatever the thread.

use pbft_sim::{SimConfig, Simulation, run_seeds};

#[test]
fn the_same_seed_replays_identically() {
    let config = SimConfig {
        partition: true,
        ..SimConfig::new(77, 4)
    };
    let run = || {
        let mut sim = Simulation::new(config.clone()).unwrap();
        let report = sim.run();
        (report, sim.history().to_vec())
    };
    let (first, first_history) = run();
    let (second, second_history) = run();
    assert_eq!(first, second);
    assert_eq!(first_history, second_history);
    assert!(!first_history.is_empty());
    assert_eq!(first.history_hash, first_history.last().unwrap().chain);

    let mut other = Simulation::new(config.with_seed(78)).unwrap();
    let other_report = other.run();
    assert_ne!(other_report.history_hash, first.history_hash);
}

#[test]
fn the_number_of_threads_does_not_change_any_run() {
    let config = SimConfig {
        partition: true,
        ..SimConfig::new(0, 4)
    };
    let one = run_seeds(&config, 10..22, 1).unwrap();
    let two = run_seeds(&config, 10..22, 2).unwrap();
    assert_eq!(one, two);
    assert_eq!(
        one.iter().map(|r| r.seed).collect::<Vec<_>>(),
        (10..22).collect::<Vec<_>>()
    );
}
