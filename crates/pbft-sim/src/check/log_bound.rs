//! Bounded resources: a replica's log never holds more than the window, and only slots within (h, h + L].

use pbft_core::ReplicaStatus;

use crate::violation::Violation;

pub fn check_log_bound(status: &ReplicaStatus, window: u64) -> Result<(), Violation> {
    let low = status.low_watermark;
    let high = low.0.saturating_add(window);
    let fail = |detail: String| {
        Err(Violation::UnboundedLog {
            replica: status.id,
            detail,
        })
    };
    if status.high_watermark.0 != high {
        return fail(format!(
            "reports watermarks ({low}, {}], but the window is {window}",
            status.high_watermark
        ));
    }
    if status.log_slots as u64 > window {
        return fail(format!(
            "holds {} log slots, more than the window of {window}",
            status.log_slots
        ));
    }
    match status.log_range {
        Some((first, last)) if first <= low || last.0 > high || first > last => fail(format!(
            "holds log slots {first}..={last}, outside its watermarks ({low}, {high}]"
        )),
        None if status.log_slots > 0 => fail(format!(
            "holds {} log slots but reports no range",
            status.log_slots
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_types::{ReplicaId, SeqNo, View};

    fn status(low: u64, high: u64, slots: usize, range: Option<(u64, u64)>) -> ReplicaStatus {
        ReplicaStatus {
            id: ReplicaId(1),
            view: View(0),
            changing_view: false,
            low_watermark: SeqNo(low),
            high_watermark: SeqNo(high),
            last_executed: SeqNo(low),
            log_slots: slots,
            log_range: range.map(|(a, b)| (SeqNo(a), SeqNo(b))),
            pending_requests: 0,
        }
    }

    #[test]
    fn a_log_within_the_window_passes() {
        assert_eq!(check_log_bound(&status(0, 16, 0, None), 16), Ok(()));
        assert_eq!(
            check_log_bound(&status(8, 24, 16, Some((9, 24))), 16),
            Ok(())
        );
        assert_eq!(
            check_log_bound(&status(8, 24, 3, Some((10, 20))), 16),
            Ok(())
        );
    }

    #[test]
    fn slots_outside_the_watermarks_are_reported() {
        // A slot at the low watermark should have been garbage collected.
        assert!(check_log_bound(&status(8, 24, 2, Some((8, 9))), 16).is_err());
        assert!(check_log_bound(&status(8, 24, 2, Some((20, 25))), 16).is_err());
    }

    #[test]
    fn too_many_slots_or_a_wrong_window_are_reported() {
        assert!(check_log_bound(&status(0, 16, 17, Some((1, 16))), 16).is_err());
        assert!(check_log_bound(&status(0, 32, 1, Some((1, 1))), 16).is_err());
        assert!(check_log_bound(&status(0, 16, 1, None), 16).is_err());
    }
}
