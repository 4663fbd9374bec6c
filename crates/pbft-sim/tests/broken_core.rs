//! A core that breaks a rule is caught by the running simulator, not only by the checkers' unit tests: outputs are
//! tampered with the way a buggy replica would produce them, and the run must end with the matching violation.

use pbft_core::Output;
use pbft_sim::{SimApp, SimConfig, Simulation, Violation};
use pbft_types::{ReplicaId, SeqNo};

fn run_tampered(tamper: impl FnMut(ReplicaId, &mut Vec<Output>) + 'static) -> Vec<Violation> {
    let mut sim = Simulation::new(SimConfig::new(3, 4)).expect("a valid configuration");
    sim.tamper_with(tamper);
    sim.run().violations
}

#[test]
fn a_certificate_that_counts_one_replica_twice_is_caught() {
    let violations = run_tampered(|replica, outputs| {
        for output in outputs.iter_mut() {
            if let Output::Committed(c) = output
                && replica == ReplicaId(2)
                && c.seq == SeqNo(5)
            {
                let first = c.certificate[0].clone();
                let last = c.certificate.len() - 1;
                c.certificate[last] = first;
            }
        }
    });
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::DuplicateVote {
                replica: ReplicaId(2),
                seq: SeqNo(5),
                ..
            }]
        ),
        "{violations:?}"
    );
}

#[test]
fn executing_out_of_order_is_caught() {
    // Replica 1 "skips" seq 4: its commit of 4 is swallowed, so its next commit comes right after 3.
    let violations = run_tampered(|replica, outputs| {
        outputs.retain(
            |o| !matches!(o, Output::Committed(c) if replica == ReplicaId(1) && c.seq == SeqNo(4)),
        );
    });
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::OutOfOrder {
                replica: ReplicaId(1),
                seq: SeqNo(5),
                last: SeqNo(3)
            }]
        ),
        "{violations:?}"
    );
}

#[test]
fn a_wrong_result_is_caught() {
    // Replica 0 reports a result that differs from what the others computed for the same request.
    let violations = run_tampered(|replica, outputs| {
        for output in outputs.iter_mut() {
            if let Output::Committed(c) = output
                && replica == ReplicaId(0)
                && c.seq == SeqNo(6)
                && let Some(Some(result)) = c.results.first_mut()
            {
                *result = bytes::Bytes::from_static(b"forged");
            }
        }
    });
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::ResultsDiverge {
                replica: ReplicaId(0),
                seq: SeqNo(6),
                ..
            }] | [Violation::WrongResult {
                replica: ReplicaId(0),
                seq: SeqNo(6),
                ..
            }]
        ),
        "{violations:?}"
    );
}

#[test]
fn a_ledger_block_that_differs_from_the_replayed_one_is_caught() {
    let mut sim = Simulation::new(SimConfig {
        app: SimApp::Ledger,
        ..SimConfig::new(3, 4)
    })
    .expect("a valid configuration");
    sim.tamper_with(|replica, outputs| {
        for output in outputs.iter_mut() {
            if let Output::Committed(c) = output
                && replica == ReplicaId(3)
                && c.seq == SeqNo(6)
                && let Some(record) = &c.record
            {
                let mut bytes = record.to_vec();
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                c.record = Some(bytes.into());
            }
        }
    });
    let violations = sim.run().violations;
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::RecordDiverges {
                replica: ReplicaId(3),
                seq: SeqNo(6),
            }]
        ),
        "{violations:?}"
    );
}
