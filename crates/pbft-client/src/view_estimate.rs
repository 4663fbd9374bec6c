//! What the client believes the current view is, learned from the views that replicas put in their replies.
//!
//! A single reply cannot be trusted: a faulty replica could claim view 1000 and have the client send every new
//! request to a primary that will not order it for a long time. The client therefore adopts a view only once f+1
//! distinct replicas have reported it or a later one; at least one of them is correct, and a correct replica's
//! view never exceeds the view the cluster has reached.

use pbft_types::{ReplicaId, View};

#[derive(Clone, Debug)]
pub(crate) struct ViewEstimate {
    /// The highest view each replica has reported, indexed by replica id: n entries, whatever the replicas send.
    reported: Vec<View>,
    needed: usize,
}

impl ViewEstimate {
    /// An estimate for `n` replicas that trusts a view once `needed` distinct replicas have reported it.
    pub(crate) fn new(n: usize, needed: usize) -> ViewEstimate {
        ViewEstimate {
            reported: vec![View(0); n],
            needed,
        }
    }

    /// Notes that `replica` reported being in `view`. Views only move forward, so an older report changes
    /// nothing; ids outside 0..n are ignored.
    pub(crate) fn report(&mut self, replica: ReplicaId, view: View) {
        if let Some(slot) = self.reported.get_mut(replica.index()) {
            *slot = (*slot).max(view);
        }
    }

    /// The highest view that at least `needed` distinct replicas have reported reaching: the `needed`-th highest
    /// of the reported views.
    pub(crate) fn estimate(&self) -> View {
        let mut views = self.reported.clone();
        views.sort_unstable_by(|a, b| b.cmp(a));
        views
            .get(self.needed.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_replica_cannot_move_the_estimate() {
        let mut e = ViewEstimate::new(4, 2);
        e.report(ReplicaId(3), View(1000));
        assert_eq!(e.estimate(), View(0));
        e.report(ReplicaId(1), View(4));
        assert_eq!(e.estimate(), View(4));
    }

    #[test]
    fn a_replica_counts_with_its_highest_report() {
        let mut e = ViewEstimate::new(4, 2);
        e.report(ReplicaId(0), View(5));
        e.report(ReplicaId(0), View(2));
        e.report(ReplicaId(1), View(7));
        assert_eq!(e.estimate(), View(5));
    }

    #[test]
    fn ids_outside_the_cluster_are_ignored() {
        let mut e = ViewEstimate::new(4, 1);
        e.report(ReplicaId(4), View(9));
        assert_eq!(e.estimate(), View(0));
    }
}
