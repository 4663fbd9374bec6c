//! What a run, and a set of runs, produced.

use std::fmt;
use std::time::Duration;

use pbft_types::{Digest, SeqNo};

use crate::violation::Violation;

/// The outcome of one simulated run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    pub replicas: usize,
    pub clients: usize,
    pub requests_completed: usize,
    pub requests_total: usize,
    /// Length of the global history: batches committed by at least one replica.
    pub committed_batches: u64,
    /// Virtual time at the end of the run.
    pub simulated_time: Duration,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    /// Messages that failed decoding or authentication at a receiver.
    pub messages_rejected: u64,
    /// Inputs the replicas refused (duplicates, stale or out-of-window messages, ...).
    pub inputs_refused: u64,
    /// The most log slots any replica held at once.
    pub max_log_slots: usize,
    /// The highest stable checkpoint any replica reached.
    pub max_stable_checkpoint: SeqNo,
    /// The chain hash of the executed history: two runs with equal hashes executed the same batches in the same
    /// order with the same results.
    pub history_hash: Digest,
    /// Empty for a correct run. The run stops at the first step that breaks an invariant.
    pub violations: Vec<Violation>,
    /// The command that replays this run.
    pub replay: String,
    /// The highest view a correct replica entered: how many view changes the run took.
    pub view_changes: u64,
    /// How long after the heal time the last request completed (zero if all completed before it); `None` if
    /// some request never completed.
    pub recovery: Option<Duration>,
    /// The faulty replicas, in words.
    pub faults: String,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.requests_completed == self.requests_total
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: n={} clients={} requests {}/{} batches {} simulated {:.3}s messages {} (dropped {}, rejected {}, \
             refused by replicas {}) max log {} checkpoint {} views {} recovery {} faulty: {}",
            self.seed,
            self.replicas,
            self.clients,
            self.requests_completed,
            self.requests_total,
            self.committed_batches,
            self.simulated_time.as_secs_f64(),
            self.messages_sent,
            self.messages_dropped,
            self.messages_rejected,
            self.inputs_refused,
            self.max_log_slots,
            self.max_stable_checkpoint,
            self.view_changes,
            match self.recovery {
                Some(r) => format!("{:.3}s", r.as_secs_f64()),
                None => "none".to_string(),
            },
            self.faults,
        )?;
        for v in &self.violations {
            write!(f, "\n  violation: {v}")?;
        }
        if !self.passed() {
            write!(f, "\n  replay: {}", self.replay)?;
        }
        Ok(())
    }
}

/// Totals over many runs of one configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seeds: usize,
    /// Runs with a violation or an incomplete request.
    pub failed: usize,
    pub violations: usize,
    pub requests_completed: usize,
    pub requests_total: usize,
    pub committed_batches: u64,
    pub simulated_time: Duration,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    /// View changes, added over the runs (each run's highest view).
    pub view_changes: u64,
    /// The longest and the mean time from the heal time to the last completed request, over the runs that
    /// completed every request.
    pub recovery_max: Duration,
    pub recovery_mean: Duration,
}

impl Summary {
    pub fn of(reports: &[SimReport]) -> Summary {
        let mut s = Summary::default();
        for r in reports {
            s.seeds += 1;
            s.failed += usize::from(!r.passed());
            s.violations += r.violations.len();
            s.requests_completed += r.requests_completed;
            s.requests_total += r.requests_total;
            s.committed_batches += r.committed_batches;
            s.simulated_time += r.simulated_time;
            s.messages_sent += r.messages_sent;
            s.messages_dropped += r.messages_dropped;
            s.view_changes += r.view_changes;
        }
        let recoveries: Vec<Duration> = reports.iter().filter_map(|r| r.recovery).collect();
        s.recovery_max = recoveries.iter().max().copied().unwrap_or_default();
        if !recoveries.is_empty() {
            s.recovery_mean = recoveries.iter().sum::<Duration>() / recoveries.len() as u32;
        }
        s
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds, {} failed ({} violations), requests committed {}/{}, batches {}, simulated {:.1}s, messages {} \
             ({} dropped), view changes {}, recovery after heal max {:.3}s mean {:.3}s",
            self.seeds,
            self.failed,
            self.violations,
            self.requests_completed,
            self.requests_total,
            self.committed_batches,
            self.simulated_time.as_secs_f64(),
            self.messages_sent,
            self.messages_dropped,
            self.view_changes,
            self.recovery_max.as_secs_f64(),
            self.recovery_mean.as_secs_f64(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_types::ReplicaId;

    fn report(seed: u64, completed: usize, violations: Vec<Violation>) -> SimReport {
        SimReport {
            seed,
            replicas: 4,
            clients: 2,
            requests_completed: completed,
            requests_total: 10,
            committed_batches: 5,
            simulated_time: Duration::from_millis(1500),
            messages_sent: 100,
            messages_dropped: 3,
            messages_rejected: 0,
            inputs_refused: 0,
            max_log_slots: 4,
            max_stable_checkpoint: SeqNo(0),
            history_hash: Digest::default(),
            violations,
            replay: format!("replay {seed}"),
            view_changes: 1,
            recovery: Some(Duration::from_millis(seed)),
            faults: "none".to_string(),
        }
    }

    #[test]
    fn a_run_passes_only_with_no_violation_and_every_request_completed() {
        assert!(report(1, 10, vec![]).passed());
        assert!(!report(1, 9, vec![]).passed());
        let v = Violation::OutOfOrder {
            replica: ReplicaId(0),
            seq: SeqNo(3),
            last: SeqNo(1),
        };
        let failed = report(2, 10, vec![v]);
        assert!(!failed.passed());
        let text = failed.to_string();
        assert!(
            text.contains("violation: total order") && text.contains("replay: replay 2"),
            "{text}"
        );
    }

    #[test]
    fn a_summary_adds_up() {
        let s = Summary::of(&[report(1, 10, vec![]), report(2, 7, vec![])]);
        assert_eq!(
            (s.seeds, s.failed, s.requests_completed, s.requests_total),
            (2, 1, 17, 20)
        );
        assert_eq!(s.simulated_time, Duration::from_secs(3));
        assert_eq!(s.committed_batches, 10);
    }
}
