//! Many seeds of one configuration, spread over threads. Each seed is a run of its own, so the outcome of a seed
//! does not depend on the number of threads or on which thread ran it.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pbft_types::{Digest, SeqNo};

use crate::config::{SimConfig, SimError};
use crate::report::SimReport;
use crate::simulation::run_one;
use crate::violation::Violation;

/// Runs every seed of `seeds` with `base`'s other settings on `threads` threads, and returns the reports in seed
/// order. A run that panics (a bug in the code under test) becomes a failed report naming its seed, rather than
/// taking the other runs down with it.
pub fn run_seeds(
    base: &SimConfig,
    seeds: Range<u64>,
    threads: usize,
) -> Result<Vec<SimReport>, SimError> {
    base.validate()?;
    let next = AtomicU64::new(seeds.start);
    let worker = || {
        let mut reports = Vec::new();
        loop {
            let seed = next.fetch_add(1, Ordering::Relaxed);
            if seed >= seeds.end {
                return reports;
            }
            reports.push(run_guarded(base.with_seed(seed)));
        }
    };
    let mut results: Vec<Result<SimReport, SimError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| resume_unwind(panic)))
            .collect()
    });
    results.sort_by_key(|r| r.as_ref().map(|r| r.seed).unwrap_or(u64::MAX));
    results.into_iter().collect()
}

fn run_guarded(config: SimConfig) -> Result<SimReport, SimError> {
    match catch_unwind(AssertUnwindSafe(|| run_one(config.clone()))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string());
            Ok(SimReport {
                seed: config.seed,
                replicas: config.replicas,
                clients: config.clients,
                requests_completed: 0,
                requests_total: config.clients * config.requests,
                committed_batches: 0,
                simulated_time: Duration::ZERO,
                messages_sent: 0,
                messages_dropped: 0,
                messages_rejected: 0,
                inputs_refused: 0,
                max_log_slots: 0,
                max_stable_checkpoint: SeqNo(0),
                history_hash: Digest::default(),
                violations: vec![Violation::Driver(format!("the run panicked: {message}"))],
                replay: config.replay_command(),
                view_changes: 0,
                recovery: None,
                faults: crate::byzantine::describe(&config.faults()),
            })
        }
    }
}
