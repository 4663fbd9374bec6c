//! The invariant checkers of PROTOCOL.md that apply without view change, fed by the simulator after every step:
//! agreement and total order ([`history`]), commit certificates ([`certificate`]), validity, exactly-once and
//! client results ([`model`]), bounded logs ([`log_bound`]) and liveness ([`liveness`]).

pub mod certificate;
pub mod history;
pub mod liveness;
pub mod log_bound;
pub mod model;

use std::time::Duration;

use bytes::Bytes;
use pbft_core::{Committed, ReplicaStatus};
use pbft_crypto::{Keyring, batch_digest};
use pbft_types::{ClientId, ClusterConfig, ReplicaId, Request, SeqNo, Timestamp};

use crate::violation::Violation;
use crate::workload::SimApp;
use certificate::CertificateChecker;
use history::{History, Recorded};
use liveness::Liveness;
use log_bound::check_log_bound;
use model::Model;

pub struct Checker {
    history: History,
    model: Model,
    certificates: CertificateChecker,
    liveness: Liveness,
    window: u64,
    max_log_slots: usize,
    max_low_watermark: SeqNo,
}

impl Checker {
    /// Checks a cluster of `config` running `app`, whose network heals at `heal_at`, after which every request
    /// must complete within `bound`.
    pub fn new(
        config: &ClusterConfig,
        app: SimApp,
        keyring: Keyring,
        heal_at: Duration,
        bound: Duration,
    ) -> Checker {
        Checker {
            history: History::new(config.n()),
            model: Model::new(app),
            certificates: CertificateChecker::new(keyring, config.n(), config.quorum()),
            liveness: Liveness::new(heal_at, bound),
            window: config.params.window,
            max_log_slots: 0,
            max_low_watermark: SeqNo(0),
        }
    }

    /// The ledger's state after the history so far, for the workload (`None` unless the app is the ledger).
    pub fn ledger(&self) -> Option<&pbft_apps::LedgerReader> {
        self.model.ledger()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The most log slots any replica held at once.
    pub fn max_log_slots(&self) -> usize {
        self.max_log_slots
    }

    /// The highest stable checkpoint any replica reached.
    pub fn max_low_watermark(&self) -> SeqNo {
        self.max_low_watermark
    }

    /// A client sent `request` at `at` (first transmission or retransmission).
    pub fn issued(&mut self, request: &Request, at: Duration) {
        self.model.issue(request);
        self.liveness.issued(request.client, request.timestamp, at);
    }

    /// `replica` committed and executed a batch.
    pub fn committed(
        &mut self,
        replica: ReplicaId,
        committed: &Committed,
    ) -> Result<(), Violation> {
        let seq = committed.seq;
        if committed.results.len() != committed.batch.len() {
            return Err(Violation::ResultCount {
                replica,
                seq,
                results: committed.results.len(),
                requests: committed.batch.len(),
            });
        }
        let actual = batch_digest(committed.batch.iter().map(|r| r.signed()));
        if actual != committed.digest {
            return Err(Violation::BatchDigest {
                replica,
                seq,
                claimed: committed.digest,
                actual,
            });
        }
        self.certificates.check(replica, committed)?;
        let recorded = self.history.record(
            replica,
            seq,
            committed.view,
            committed.digest,
            &committed.results,
        )?;
        if recorded == Recorded::Extended {
            self.model
                .apply(replica, seq, &committed.batch, &committed.results)?;
        }
        if let Some(expected) = self.model.record(seq)
            && *expected != committed.record
        {
            return Err(Violation::RecordDiverges { replica, seq });
        }
        Ok(())
    }

    /// `replica` installed the state after `seq` by state transfer instead of executing up to it.
    pub fn installed(&mut self, replica: ReplicaId, seq: SeqNo) -> Result<(), Violation> {
        self.history.installed(replica, seq)
    }

    /// `replica` restarted from its disk with the state after `seq`; its disk holds executions up to `on_disk`,
    /// and that is where it must be.
    pub fn restarted(
        &mut self,
        replica: ReplicaId,
        seq: SeqNo,
        on_disk: SeqNo,
    ) -> Result<(), Violation> {
        if seq != on_disk {
            return Err(Violation::Driver(format!(
                "replica {replica} recovered with the state after seq {seq}, but its disk holds executions up to \
                 {on_disk}"
            )));
        }
        self.history.restarted(replica, seq)
    }

    /// `client` accepted `result` for its request `timestamp`.
    pub fn completed(
        &mut self,
        client: ClientId,
        timestamp: Timestamp,
        result: &Bytes,
    ) -> Result<(), Violation> {
        self.liveness.completed(client, timestamp);
        self.model.completed(client, timestamp, result)
    }

    /// A replica's status after a step.
    pub fn status(&mut self, status: &ReplicaStatus) -> Result<(), Violation> {
        self.max_log_slots = self.max_log_slots.max(status.log_slots);
        self.max_low_watermark = self.max_low_watermark.max(status.low_watermark);
        check_log_bound(status, self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use pbft_apps::{KvOp, KvResult};
    use pbft_crypto::{KeyPair, Signer, Verified};
    use pbft_types::{ClientInfo, Commit, Params, Prepare, Principal, View};

    struct Fixture {
        replicas: Vec<Signer>,
        client: Signer,
        checker: Checker,
    }

    fn fixture() -> Fixture {
        let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let client_key = KeyPair::from_seed([77; 32]);
        let config = ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: vec![ClientInfo {
                id: ClientId(0),
                public_key: client_key.public_key(),
            }],
            params: Params {
                checkpoint_interval: 8,
                window: 16,
                ..Params::default()
            },
        };
        let keyring = Keyring::new(&config).unwrap();
        Fixture {
            replicas: keys
                .into_iter()
                .enumerate()
                .map(|(i, k)| Signer::new(Principal::Replica(ReplicaId(i as u64)), k))
                .collect(),
            client: Signer::new(Principal::Client(ClientId(0)), client_key),
            checker: Checker::new(
                &config,
                crate::workload::SimApp::Kv,
                keyring,
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
        }
    }

    impl Fixture {
        /// A client request for `op` at timestamp `ts`, recorded as issued.
        fn issue(&mut self, ts: u64, op: KvOp) -> Verified<Request> {
            let request = self.client.sign(Request {
                client: ClientId(0),
                timestamp: Timestamp(ts),
                operation: op.encode(),
            });
            self.checker.issued(&request, Duration::ZERO);
            request
        }

        /// A committed batch at `seq` with a valid certificate from replicas `voters`.
        fn committed(
            &self,
            seq: u64,
            batch: Vec<Verified<Request>>,
            results: Vec<Option<Bytes>>,
            voters: &[usize],
        ) -> Committed {
            let digest = batch_digest(batch.iter().map(|r| r.signed()));
            let certificate = voters
                .iter()
                .map(|&i| {
                    self.replicas[i].sign(Commit {
                        view: View(0),
                        seq: SeqNo(seq),
                        digest,
                        replica: ReplicaId(i as u64),
                    })
                })
                .collect();
            // Prepared on the PREPAREs of backups 1 and 2 (q - 1 = 2 of 4).
            let prepared = [1, 2]
                .iter()
                .map(|&i| {
                    self.replicas[i].sign(Prepare {
                        view: View(0),
                        seq: SeqNo(seq),
                        digest,
                        replica: ReplicaId(i as u64),
                    })
                })
                .collect();
            Committed {
                seq: SeqNo(seq),
                view: View(0),
                digest,
                batch: Arc::from(batch),
                results,
                certificate,
                prepared,
                record: None,
            }
        }
    }

    fn put(key: &'static str) -> KvOp {
        KvOp::Put {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        }
    }

    fn done() -> Option<Bytes> {
        Some(KvResult::Done.encode())
    }

    #[test]
    fn a_correct_run_of_events_passes() {
        let mut f = fixture();
        let a = f.issue(1, put("a"));
        let b = f.issue(2, put("b"));
        let first = f.committed(1, vec![a], vec![done()], &[0, 1, 2]);
        let second = f.committed(2, vec![b], vec![done()], &[1, 2, 3]);
        for r in 0..4 {
            let r = ReplicaId(r);
            assert_eq!(f.checker.committed(r, &first), Ok(()));
            assert_eq!(f.checker.committed(r, &second), Ok(()));
        }
        assert_eq!(
            f.checker
                .completed(ClientId(0), Timestamp(2), &KvResult::Done.encode()),
            Ok(())
        );
        assert_eq!(f.checker.history().entries().len(), 2);
    }

    #[test]
    fn a_commit_at_seq_3_after_seq_1_is_reported() {
        let mut f = fixture();
        let a = f.issue(1, put("a"));
        let c = f.issue(3, put("c"));
        f.checker
            .committed(
                ReplicaId(0),
                &f.committed(1, vec![a], vec![done()], &[0, 1, 2]),
            )
            .unwrap();
        let skipped = f.committed(3, vec![c], vec![done()], &[0, 1, 2]);
        assert_eq!(
            f.checker.committed(ReplicaId(0), &skipped),
            Err(Violation::OutOfOrder {
                replica: ReplicaId(0),
                seq: SeqNo(3),
                last: SeqNo(1)
            })
        );
    }

    #[test]
    fn two_digests_at_one_seq_are_reported() {
        let mut f = fixture();
        let a = f.issue(1, put("a"));
        let b = f.issue(2, put("b"));
        f.checker
            .committed(
                ReplicaId(0),
                &f.committed(1, vec![a], vec![done()], &[0, 1, 2]),
            )
            .unwrap();
        let other = f.committed(1, vec![b], vec![done()], &[1, 2, 3]);
        assert!(matches!(
            f.checker.committed(ReplicaId(1), &other),
            Err(Violation::Disagreement { seq: SeqNo(1), .. })
        ));
    }

    #[test]
    fn a_certificate_with_one_replica_twice_is_reported() {
        let mut f = fixture();
        let a = f.issue(1, put("a"));
        let doubled = f.committed(1, vec![a], vec![done()], &[0, 1, 1]);
        assert!(matches!(
            f.checker.committed(ReplicaId(0), &doubled),
            Err(Violation::DuplicateVote {
                voter: ReplicaId(1),
                ..
            })
        ));
    }

    #[test]
    fn a_wrong_client_result_is_reported() {
        let mut f = fixture();
        let a = f.issue(1, put("a"));
        f.checker
            .committed(
                ReplicaId(0),
                &f.committed(1, vec![a], vec![done()], &[0, 1, 2]),
            )
            .unwrap();
        assert!(matches!(
            f.checker
                .completed(ClientId(0), Timestamp(1), &KvResult::NotFound.encode()),
            Err(Violation::ClientResult { .. })
        ));
    }

    #[test]
    fn a_batch_that_does_not_match_its_digest_is_reported() {
        let mut f = fixture();
        let a = f.issue(1, put("a"));
        let b = f.issue(2, put("b"));
        let mut committed = f.committed(1, vec![a], vec![done()], &[0, 1, 2]);
        committed.batch = Arc::from(vec![b]);
        assert!(matches!(
            f.checker.committed(ReplicaId(0), &committed),
            Err(Violation::BatchDigest { .. })
        ));
        let x = f.issue(4, put("x"));
        committed = f.committed(1, vec![x], vec![], &[0, 1, 2]);
        assert!(matches!(
            f.checker.committed(ReplicaId(0), &committed),
            Err(Violation::ResultCount { .. })
        ));
    }

    #[test]
    fn statuses_are_bounded_and_tracked() {
        let mut f = fixture();
        let status = ReplicaStatus {
            id: ReplicaId(2),
            view: View(0),
            changing_view: false,
            low_watermark: SeqNo(8),
            high_watermark: SeqNo(24),
            last_executed: SeqNo(12),
            log_slots: 4,
            log_range: Some((SeqNo(9), SeqNo(12))),
            pending_requests: 0,
        };
        assert_eq!(f.checker.status(&status), Ok(()));
        assert_eq!(
            (f.checker.max_log_slots(), f.checker.max_low_watermark()),
            (4, SeqNo(8))
        );
        let overflowing = ReplicaStatus {
            log_slots: 17,
            log_range: Some((SeqNo(9), SeqNo(24))),
            ..status
        };
        assert!(matches!(
            f.checker.status(&overflowing),
            Err(Violation::UnboundedLog { .. })
        ));
    }
}
