//! View change end to end in the simulator: a primary that stops sending, at the start or in the middle of a run,
//! is replaced and every request still completes, with the checkers watching every step.
//!
//! The silent replica is modelled by swallowing everything it asks its driver to send; the Byzantine strategies of
//! the simulator cover richer misbehaviour.

use std::cell::RefCell;
use std::rc::Rc;

use pbft_core::Output;
use pbft_sim::{SimConfig, Simulation};
use pbft_types::ReplicaId;

/// Runs seed `seed` with `replicas` replicas where each of `silent` stops sending once it has sent `after`
/// messages. Returns the report and the highest view a correct replica entered.
/// With `lossy`, the network also drops, duplicates and partitions until the heal time (the defaults).
fn run_with_silent(
    seed: u64,
    replicas: usize,
    silent: &[u64],
    after: usize,
    lossy: bool,
) -> (pbft_sim::SimReport, u64) {
    let mut config = SimConfig::new(seed, replicas);
    if !lossy {
        config.drop = 0.0;
        config.duplicate = 0.0;
        config.partition = false;
    }
    let mut sim = Simulation::new(config).expect("a valid configuration");
    // PBFT_TRACE=1 prints the trace of the run, to see why a seed fails.
    if std::env::var_os("PBFT_TRACE").is_some() {
        sim.trace_to(|line| eprintln!("{line}"));
    }
    let silent: Vec<ReplicaId> = silent.iter().map(|r| ReplicaId(*r)).collect();
    let sent = Rc::new(RefCell::new(vec![0usize; replicas]));
    let highest_view = Rc::new(RefCell::new(0u64));
    let (sent_in, view_in) = (sent.clone(), highest_view.clone());
    sim.tamper_with(move |replica, outputs| {
        if silent.contains(&replica) {
            let mut sent = sent_in.borrow_mut();
            outputs.retain(|o| match o {
                Output::Send { .. } | Output::Reply(_) => {
                    sent[replica.index()] += 1;
                    sent[replica.index()] <= after
                }
                _ => true,
            });
            return;
        }
        for o in outputs.iter() {
            if let Output::EnteredView(v) = o {
                let mut highest = view_in.borrow_mut();
                *highest = (*highest).max(v.0);
            }
        }
    });
    let report = sim.run();
    let view = *highest_view.borrow();
    (report, view)
}

fn assert_completes(seed: u64, replicas: usize, silent: &[u64], after: usize, min_view: u64) {
    for lossy in [false, true] {
        assert_completes_on(seed, replicas, silent, after, min_view, lossy);
    }
}

fn assert_completes_on(
    seed: u64,
    replicas: usize,
    silent: &[u64],
    after: usize,
    min_view: u64,
    lossy: bool,
) {
    let (report, view) = run_with_silent(seed, replicas, silent, after, lossy);
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {:?}\n{}",
        report.violations,
        report.replay
    );
    assert_eq!(
        report.requests_completed, report.requests_total,
        "seed {seed}: requests did not complete\n{}",
        report.replay
    );
    assert!(
        view >= min_view,
        "seed {seed}: highest view entered {view}, expected at least {min_view}"
    );
}

#[test]
fn a_primary_silent_from_the_start_is_replaced_n4() {
    for seed in 1..=4 {
        assert_completes(seed, 4, &[0], 0, 1);
    }
}

#[test]
fn a_primary_that_falls_silent_mid_run_is_replaced_n4() {
    for seed in 1..=4 {
        assert_completes(seed, 4, &[0], 60, 1);
    }
}

#[test]
fn two_silent_replicas_among_seven_including_the_next_primary() {
    // Replicas 0 and 1 are silent: view 1's primary is silent too, so the cluster must move on to view 2, with
    // the doubled timeout.
    for seed in 1..=4 {
        assert_completes(seed, 7, &[0, 1], 40, 2);
    }
}
