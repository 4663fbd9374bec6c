//! The replies gathered for the outstanding request: one vote per replica id, so that a faulty replica repeating
//! itself cannot make up a quorum on its own.

use bytes::Bytes;
use pbft_types::ReplicaId;

/// The results that replicas returned for one request, indexed by replica id: never more than n entries.
#[derive(Clone, Debug)]
pub(crate) struct ReplySet {
    results: Vec<Option<Bytes>>,
    needed: usize,
}

impl ReplySet {
    /// A set for a cluster of `n` replicas that accepts a result once `needed` distinct replicas returned it.
    pub(crate) fn new(n: usize, needed: usize) -> ReplySet {
        ReplySet {
            results: vec![None; n],
            needed,
        }
    }

    /// Records `replica`'s result and returns it if `needed` distinct replicas have now returned it.
    ///
    /// A replica's FIRST reply is its vote; anything it sends later for the same request is ignored. A correct
    /// replica executes a request once and resends the cached reply, so it never sends two different results;
    /// keeping the first vote makes the count only ever grow, and a replica that changes its answer still counts
    /// once. Ids outside 0..n are ignored.
    pub(crate) fn record(&mut self, replica: ReplicaId, result: &Bytes) -> Option<Bytes> {
        let slot = self.results.get_mut(replica.index())?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(result.clone());
        let matching = self
            .results
            .iter()
            .filter(|r| r.as_ref() == Some(result))
            .count();
        (matching >= self.needed).then(|| result.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn a_result_is_accepted_at_the_needed_count_of_distinct_replicas() {
        let mut set = ReplySet::new(4, 2);
        assert_eq!(set.record(ReplicaId(0), &b("x")), None);
        assert_eq!(set.record(ReplicaId(0), &b("x")), None);
        assert_eq!(set.record(ReplicaId(3), &b("y")), None);
        assert_eq!(set.record(ReplicaId(2), &b("x")), Some(b("x")));
    }

    #[test]
    fn the_first_reply_of_a_replica_is_its_vote() {
        let mut set = ReplySet::new(4, 2);
        assert_eq!(set.record(ReplicaId(1), &b("x")), None);
        assert_eq!(set.record(ReplicaId(1), &b("y")), None);
        assert_eq!(set.record(ReplicaId(2), &b("y")), None);
        assert_eq!(set.record(ReplicaId(3), &b("x")), Some(b("x")));
    }

    #[test]
    fn ids_outside_the_cluster_are_ignored() {
        let mut set = ReplySet::new(4, 1);
        assert_eq!(set.record(ReplicaId(4), &b("x")), None);
        assert_eq!(set.record(ReplicaId(u64::MAX), &b("x")), None);
        assert_eq!(set.results.len(), 4);
    }
}
