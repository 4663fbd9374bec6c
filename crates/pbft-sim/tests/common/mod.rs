//! Helpers shared by the integration tests.

use pbft_sim::{SimConfig, SimReport, Summary, run_seeds};

/// Runs `seeds` of `config` on two threads and fails with every failing seed's report (violation and replay
/// command) if any run broke an invariant or left a request incomplete.
pub fn assert_all_pass(config: &SimConfig, seeds: std::ops::Range<u64>) -> Vec<SimReport> {
    let reports = run_seeds(config, seeds, 2).expect("a valid configuration");
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.to_string())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed ({})\n{}",
        failures.len(),
        reports.len(),
        Summary::of(&reports),
        failures.join("\n")
    );
    reports
}
