//! The reference model: validity, exactly-once and client results.
//!
//! It replays the global history on an application of its own (the run's: key-value store or ledger), with its
//! own table of the last timestamp executed per client, exactly as PROTOCOL.md says a replica must (normal case,
//! rule 5). It therefore knows which request of each batch must execute, what each result must be, and so what
//! every client must accept; and, for the ledger, what block every replica must record for each batch.

use std::collections::HashMap;

use bytes::Bytes;
use pbft_core::{ExecContext, ExecutedBatch, StateMachine};
use pbft_crypto::Verified;
use pbft_types::{ClientId, ReplicaId, Request, SeqNo, Timestamp};

use crate::violation::Violation;
use crate::workload::{SimApp, ledger_genesis};
use pbft_apps::{Ledger, LedgerReader};

/// How many batches' records the model keeps: far more than the log window of any simulated cluster (a replica
/// further behind catches up by state transfer, not by committing), far fewer than a long run has.
const RECORDS_KEPT: u64 = 1 << 16;

#[derive(Clone, Debug)]
struct Executed {
    seq: SeqNo,
    result: Bytes,
}

pub struct Model {
    app: SimApp,
    /// Every request a simulated client sent, with its operation.
    issued: HashMap<(ClientId, Timestamp), Bytes>,
    last_executed: HashMap<ClientId, Timestamp>,
    executed: HashMap<(ClientId, Timestamp), Executed>,
    store: Box<dyn StateMachine>,
    /// The ledger's state, when the application is the ledger (its clients look up nonces in it).
    ledger: Option<LedgerReader>,
    /// What the application recorded at the end of each batch (the ledger's blocks).
    records: HashMap<SeqNo, Option<Bytes>>,
}

impl Model {
    pub fn new(app: SimApp) -> Model {
        let (store, ledger): (Box<dyn StateMachine>, _) = match app {
            SimApp::Kv => (app.new_state_machine(), None),
            SimApp::Ledger => {
                let ledger = Ledger::new(&ledger_genesis());
                let reader = ledger.reader();
                (Box::new(ledger), Some(reader))
            }
        };
        Model {
            app,
            issued: HashMap::new(),
            last_executed: HashMap::new(),
            executed: HashMap::new(),
            store,
            ledger,
            records: HashMap::new(),
        }
    }

    /// The ledger's state after the history so far (`None` unless the application is the ledger).
    pub fn ledger(&self) -> Option<&LedgerReader> {
        self.ledger.as_ref()
    }

    /// What the application must record at the end of batch `seq`, once the history reached it.
    pub fn record(&self, seq: SeqNo) -> Option<&Option<Bytes>> {
        self.records.get(&seq)
    }

    /// A client sent `request`.
    pub fn issue(&mut self, request: &Request) {
        self.issued.insert(
            (request.client, request.timestamp),
            request.operation.clone(),
        );
    }

    /// How many distinct requests executed so far.
    pub fn executed(&self) -> usize {
        self.executed.len()
    }

    /// Applies the batch that `first` committed at `seq`, the next entry of the global history, and checks the
    /// results it reported.
    pub fn apply(
        &mut self,
        first: ReplicaId,
        seq: SeqNo,
        batch: &[Verified<Request>],
        results: &[Option<Bytes>],
    ) -> Result<(), Violation> {
        for (request, reported) in batch.iter().zip(results) {
            let (client, timestamp) = (request.client, request.timestamp);
            if self.issued.get(&(client, timestamp)) != Some(&request.operation) {
                return Err(Violation::Unissued {
                    seq,
                    client,
                    timestamp,
                });
            }
            let last = self.last_executed.get(&client).copied().unwrap_or_default();
            let fresh = timestamp > last;
            match reported {
                Some(result) => {
                    if let Some(before) = self.executed.get(&(client, timestamp)) {
                        return Err(Violation::ExecutedTwice {
                            client,
                            timestamp,
                            first: before.seq,
                            seq,
                        });
                    }
                    if !fresh {
                        return Err(Violation::StaleExecuted {
                            client,
                            timestamp,
                            seq,
                            last,
                        });
                    }
                    let ctx = ExecContext {
                        seq,
                        client,
                        timestamp,
                    };
                    let expected = self.store.execute(ctx, &request.operation);
                    if *result != expected {
                        return Err(Violation::WrongResult {
                            replica: first,
                            seq,
                            client,
                            timestamp,
                            got: self.app.describe_result(result),
                            expected: self.app.describe_result(&expected),
                        });
                    }
                    self.last_executed.insert(client, timestamp);
                    self.executed.insert(
                        (client, timestamp),
                        Executed {
                            seq,
                            result: expected,
                        },
                    );
                }
                None if fresh => {
                    return Err(Violation::FreshSkipped {
                        client,
                        timestamp,
                        seq,
                        last,
                    });
                }
                None => {}
            }
        }
        // The results were checked one by one above, so they are the model's own.
        let record = self.store.end_batch(ExecutedBatch {
            seq,
            digest: pbft_crypto::batch_digest(batch.iter().map(|r| r.signed())),
            requests: batch,
            results,
        });
        self.records.insert(seq, record);
        // A replica that commits `seq` later is checked against this record. One that fell further behind than
        // the log window cannot commit those batches any more (its peers collected them; it installs a
        // checkpoint instead), so records much older than the newest are not asked for.
        if let Some(old) = seq.0.checked_sub(RECORDS_KEPT) {
            self.records.remove(&SeqNo(old));
        }
        Ok(())
    }

    /// A client accepted `result` for its request `timestamp`.
    pub fn completed(
        &self,
        client: ClientId,
        timestamp: Timestamp,
        result: &Bytes,
    ) -> Result<(), Violation> {
        match self.executed.get(&(client, timestamp)) {
            None => Err(Violation::CompletedUnexecuted { client, timestamp }),
            Some(e) if e.result != *result => Err(Violation::ClientResult {
                client,
                timestamp,
                got: self.app.describe_result(result),
                expected: self.app.describe_result(&e.result),
            }),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_apps::{KvOp, KvResult};
    use pbft_crypto::{KeyPair, Signer};
    use pbft_types::Principal;

    const R0: ReplicaId = ReplicaId(0);

    fn signer(client: u64) -> Signer {
        Signer::new(
            Principal::Client(ClientId(client)),
            KeyPair::from_seed([client as u8 + 1; 32]),
        )
    }

    fn request(client: u64, ts: u64, op: KvOp) -> Verified<Request> {
        signer(client).sign(Request {
            client: ClientId(client),
            timestamp: Timestamp(ts),
            operation: op.encode(),
        })
    }

    fn put(key: &'static str, value: &'static str) -> KvOp {
        KvOp::Put {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    fn get(key: &'static str) -> KvOp {
        KvOp::Get {
            key: Bytes::from_static(key.as_bytes()),
        }
    }

    fn done() -> Option<Bytes> {
        Some(KvResult::Done.encode())
    }

    fn value(v: &'static str) -> Option<Bytes> {
        Some(KvResult::Value(Bytes::from_static(v.as_bytes())).encode())
    }

    fn issued(model: &mut Model, requests: &[&Verified<Request>]) {
        for r in requests {
            model.issue(r);
        }
    }

    #[test]
    fn results_follow_the_order_of_the_history() {
        let mut m = Model::new(SimApp::Kv);
        let (a, b) = (request(1, 1, put("k", "x")), request(2, 1, get("k")));
        issued(&mut m, &[&a, &b]);
        m.apply(R0, SeqNo(1), &[a, b], &[done(), value("x")])
            .unwrap();
        assert_eq!(
            m.completed(
                ClientId(2),
                Timestamp(1),
                &KvResult::Value(Bytes::from_static(b"x")).encode()
            ),
            Ok(())
        );
        assert_eq!(m.executed(), 2);
    }

    #[test]
    fn a_wrong_result_from_a_replica_is_reported() {
        let mut m = Model::new(SimApp::Kv);
        let a = request(1, 1, get("k"));
        issued(&mut m, &[&a]);
        assert!(matches!(
            m.apply(R0, SeqNo(1), &[a], &[value("ghost")]),
            Err(Violation::WrongResult { .. })
        ));
    }

    #[test]
    fn a_wrong_client_result_is_reported() {
        let mut m = Model::new(SimApp::Kv);
        let a = request(1, 1, put("k", "x"));
        issued(&mut m, &[&a]);
        m.apply(R0, SeqNo(1), &[a], &[done()]).unwrap();
        let wrong = KvResult::NotFound.encode();
        assert_eq!(
            m.completed(ClientId(1), Timestamp(1), &wrong),
            Err(Violation::ClientResult {
                client: ClientId(1),
                timestamp: Timestamp(1),
                got: "NotFound".to_string(),
                expected: "Done".to_string(),
            })
        );
        assert_eq!(
            m.completed(ClientId(1), Timestamp(2), &wrong),
            Err(Violation::CompletedUnexecuted {
                client: ClientId(1),
                timestamp: Timestamp(2)
            })
        );
    }

    #[test]
    fn a_request_no_client_issued_is_invalid() {
        let mut m = Model::new(SimApp::Kv);
        let a = request(1, 1, put("k", "x"));
        assert!(matches!(
            m.apply(R0, SeqNo(1), std::slice::from_ref(&a), &[done()]),
            Err(Violation::Unissued { .. })
        ));
        // Same client and timestamp, other operation: still not what the client issued.
        m.issue(&request(1, 1, put("k", "y")));
        assert!(matches!(
            m.apply(R0, SeqNo(1), &[a], &[done()]),
            Err(Violation::Unissued { .. })
        ));
    }

    #[test]
    fn executing_a_request_twice_is_reported() {
        let mut m = Model::new(SimApp::Kv);
        let a = request(1, 1, put("k", "x"));
        issued(&mut m, &[&a]);
        m.apply(R0, SeqNo(1), std::slice::from_ref(&a), &[done()])
            .unwrap();
        assert_eq!(
            m.apply(R0, SeqNo(2), std::slice::from_ref(&a), &[done()]),
            Err(Violation::ExecutedTwice {
                client: ClientId(1),
                timestamp: Timestamp(1),
                first: SeqNo(1),
                seq: SeqNo(2)
            })
        );
        // Skipping it is what a replica must do.
        m.apply(R0, SeqNo(2), &[a], &[None]).unwrap();
    }

    #[test]
    fn an_older_request_after_a_newer_one_must_be_skipped() {
        let mut m = Model::new(SimApp::Kv);
        let (old, new) = (request(1, 1, put("k", "x")), request(1, 2, put("k", "y")));
        issued(&mut m, &[&old, &new]);
        m.apply(R0, SeqNo(1), &[new], &[done()]).unwrap();
        assert!(matches!(
            m.apply(R0, SeqNo(2), std::slice::from_ref(&old), &[done()]),
            Err(Violation::StaleExecuted { .. })
        ));
        m.apply(R0, SeqNo(2), &[old], &[None]).unwrap();
    }

    #[test]
    fn a_new_request_must_not_be_skipped() {
        let mut m = Model::new(SimApp::Kv);
        let a = request(1, 1, put("k", "x"));
        issued(&mut m, &[&a]);
        assert!(matches!(
            m.apply(R0, SeqNo(1), &[a], &[None]),
            Err(Violation::FreshSkipped { .. })
        ));
    }
}
