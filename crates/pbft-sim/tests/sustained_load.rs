//! Sustained load: many clients keep the primary at its high watermark for hundreds of sequence numbers. Every
//! replica's log must stay within the window (the checkers look after every step), checkpoints must keep
//! becoming stable, and every request must complete.

use pbft_sim::{SimConfig, run_one};

#[test]
fn the_log_stays_within_the_window() {
    let mut config = SimConfig {
        clients: 40,
        requests: 15,
        drop: 0.0,
        duplicate: 0.05,
        ..SimConfig::new(11, 4)
    };
    // Small batches, so that the 40 outstanding requests need more slots than the window has.
    config.params.max_batch_size = 2;
    let window = config.params.window;
    let report = run_one(config).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(
        report.max_log_slots as u64, window,
        "the load should fill the window: {report}"
    );
    assert!(report.max_stable_checkpoint.0 >= 10 * window, "{report}");
    assert!(report.committed_batches >= 10 * window, "{report}");
}
