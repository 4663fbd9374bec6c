//! Four replicas wired together in memory, every message delivered at once: requests commit and execute
//! everywhere, checkpoints become stable and the log stays within the window.

use std::collections::VecDeque;

use bytes::Bytes;
use pbft_core::{
    Dest, ExecContext, Input, Output, RejectReason, Replica, RestoreError, StateMachine,
};
use pbft_crypto::{KeyPair, Keyring, Signer};
use pbft_types::{
    ClientId, ClientInfo, ClusterConfig, Digest, Params, Principal, ReplicaId, Request, SeqNo,
    Timestamp,
};

/// Appends every operation to a list; the result is the list's length.
#[derive(Default)]
struct Journal(Vec<Bytes>);

impl StateMachine for Journal {
    fn execute(&mut self, _ctx: ExecContext, operation: &[u8]) -> Bytes {
        self.0.push(Bytes::copy_from_slice(operation));
        Bytes::from(self.0.len().to_string())
    }
    fn digest(&self) -> Digest {
        pbft_crypto::digest_of(&self.0.concat())
    }
    fn snapshot(&self) -> Bytes {
        Bytes::from(self.0.concat())
    }
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), RestoreError> {
        Err(RestoreError("not used here".into()))
    }
}

#[test]
fn requests_commit_on_every_replica() {
    let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
    let client_key = KeyPair::from_seed([50; 32]);
    let params = Params {
        checkpoint_interval: 2,
        window: 4,
        max_batch_size: 1,
        ..Params::default()
    };
    let config = ClusterConfig {
        replicas: keys.iter().map(KeyPair::public_key).collect(),
        clients: vec![ClientInfo {
            id: ClientId(1),
            public_key: client_key.public_key(),
        }],
        params,
    };
    let keyring = Keyring::new(&config).unwrap();
    let mut replicas: Vec<Replica> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let id = ReplicaId(i as u64);
            Replica::new(
                config.clone(),
                id,
                Signer::new(Principal::Replica(id), k.clone()),
                Box::new(Journal::default()),
            )
            .unwrap()
        })
        .collect();

    let mut replies = 0;
    for ts in 1..=10u64 {
        let request = Request {
            client: ClientId(1),
            timestamp: Timestamp(ts),
            operation: Bytes::from(format!("op{ts}")),
        };
        let request = keyring.verify(client_key.sign(request)).unwrap();
        let mut queue: VecDeque<(usize, Input)> = VecDeque::from([(0, Input::Request(request))]);
        while let Some((to, input)) = queue.pop_front() {
            for output in replicas[to].step(input) {
                match output {
                    Output::Send { to: dest, msg } => {
                        let targets: Vec<usize> = match dest {
                            Dest::AllReplicas => (0..4).filter(|r| *r != to).collect(),
                            Dest::Replica(r) => vec![r.0 as usize],
                        };
                        for t in targets {
                            let from = ReplicaId(to as u64);
                            let verified = keyring.verify_replica_msg(from, msg.clone()).unwrap();
                            queue.push_back((
                                t,
                                Input::Message {
                                    from,
                                    msg: verified,
                                },
                            ));
                        }
                    }
                    Output::Reply(reply) => {
                        assert_eq!(reply.timestamp, Timestamp(ts));
                        assert_eq!(reply.result, Bytes::from(ts.to_string()));
                        replies += 1;
                    }
                    // The last vote for a checkpoint arrives after the others made it stable.
                    Output::Rejected(r) if matches!(r.reason, RejectReason::Obsolete { .. }) => {}
                    Output::Rejected(r) => panic!("unexpected rejection {r:?}"),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(replies, 40);
    for r in &replicas {
        let status = r.status();
        assert_eq!(status.last_executed, SeqNo(10));
        assert_eq!(status.low_watermark, SeqNo(10), "checkpoint 10 is stable");
        assert_eq!(status.log_slots, 0);
        assert_eq!(r.stable_checkpoint().proof.len(), config.quorum());
    }
}
