//! The trust boundary, as a real node has it: bytes from the network are decoded (size-bounded) and their
//! signatures verified before anything reaches a replica or a client. Whatever fails is dropped and counted.
//!
//! Verification is by far the largest cost of a simulated run, and a broadcast is the very same bytes arriving at
//! n-1 replicas (and twice when duplicated). Decoding and verifying is a pure function of the claimed sender and
//! the bytes, so the outcome for bytes already accepted is remembered and reused: each receiver still gets a
//! message that went through `Keyring::verify_replica_msg`, only not n-1 times over.

use std::collections::HashMap;

use bytes::Bytes;
use pbft_crypto::{AuthError, Keyring, Verified, VerifiedMsg};
use pbft_types::{DecodeError, DecodeLimits, ReplicaId, ReplicaMsg, Reply, Request, Signed};
use thiserror::Error;

/// Why received bytes were dropped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("undecodable: {0}")]
    Decode(#[from] DecodeError),
    #[error("unauthenticated: {0}")]
    Auth(#[from] AuthError),
}

/// How many accepted messages are remembered. Past it the memory starts afresh: reuse matters only for the copies
/// of a broadcast, which arrive within a few milliseconds of each other.
const MEMO_CAPACITY: usize = 8192;

pub struct Boundary {
    keyring: Keyring,
    limits: DecodeLimits,
    accepted_msgs: HashMap<(ReplicaId, Bytes), VerifiedMsg>,
    accepted_requests: HashMap<Bytes, Verified<Request>>,
    rejected: u64,
}

impl Boundary {
    pub fn new(keyring: Keyring, limits: DecodeLimits) -> Boundary {
        Boundary {
            keyring,
            limits,
            accepted_msgs: HashMap::new(),
            accepted_requests: HashMap::new(),
            rejected: 0,
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Messages dropped so far because they did not decode or verify.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn count<T>(&mut self, result: Result<T, Rejected>) -> Result<T, Rejected> {
        if result.is_err() {
            self.rejected += 1;
        }
        result
    }

    /// Bytes that arrived from replica `from` (whose identity the transport authenticated).
    pub fn replica_msg(&mut self, from: ReplicaId, bytes: &Bytes) -> Result<VerifiedMsg, Rejected> {
        let key = (from, bytes.clone());
        if let Some(msg) = self.accepted_msgs.get(&key) {
            return Ok(msg.clone());
        }
        let result = ReplicaMsg::decode(bytes, self.limits)
            .map_err(Rejected::from)
            .and_then(|msg| Ok(self.keyring.verify_replica_msg(from, msg)?));
        if let Ok(msg) = &result {
            if self.accepted_msgs.len() >= MEMO_CAPACITY {
                self.accepted_msgs.clear();
            }
            self.accepted_msgs.insert(key, msg.clone());
        }
        self.count(result)
    }

    /// A client's request as it arrived at a replica.
    pub fn request(&mut self, bytes: &Bytes) -> Result<Verified<Request>, Rejected> {
        if let Some(request) = self.accepted_requests.get(bytes) {
            return Ok(request.clone());
        }
        let result = Signed::<Request>::decode(bytes, self.limits.max_message_size)
            .map_err(Rejected::from)
            .and_then(|signed| Ok(self.keyring.verify(signed)?));
        if let Ok(request) = &result {
            if self.accepted_requests.len() >= MEMO_CAPACITY {
                self.accepted_requests.clear();
            }
            self.accepted_requests
                .insert(bytes.clone(), request.clone());
        }
        self.count(result)
    }

    /// Decodes a reply without checking its signature, so that a client can ignore one it has no use for (an
    /// answer to a request that already completed) before paying for verification.
    pub fn decode_reply(&mut self, bytes: &Bytes) -> Result<Signed<Reply>, Rejected> {
        let result =
            Signed::<Reply>::decode(bytes, self.limits.max_message_size).map_err(Rejected::from);
        self.count(result)
    }

    pub fn verify_reply(&mut self, reply: Signed<Reply>) -> Result<Verified<Reply>, Rejected> {
        let result = self.keyring.verify(reply).map_err(Rejected::from);
        self.count(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::KeyPair;
    use pbft_types::{
        ClientId, ClientInfo, ClusterConfig, Digest, Params, Prepare, SeqNo, Timestamp, View,
    };

    fn setup() -> (Vec<KeyPair>, KeyPair, Boundary) {
        let replicas: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let client = KeyPair::from_seed([50; 32]);
        let config = ClusterConfig {
            replicas: replicas.iter().map(KeyPair::public_key).collect(),
            clients: vec![ClientInfo {
                id: ClientId(0),
                public_key: client.public_key(),
            }],
            params: Params::default(),
        };
        let limits = DecodeLimits {
            max_message_size: 4096,
            max_batch_size: 8,
        };
        let boundary = Boundary::new(Keyring::new(&config).unwrap(), limits);
        (replicas, client, boundary)
    }

    fn prepare(replica: u64) -> Prepare {
        Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([7; 32]),
            replica: ReplicaId(replica),
        }
    }

    #[test]
    fn an_authentic_message_passes_and_is_remembered_per_sender() {
        let (keys, _, mut boundary) = setup();
        let bytes = Bytes::from(ReplicaMsg::Prepare(keys[1].sign(prepare(1))).encode());
        for _ in 0..3 {
            let msg = boundary.replica_msg(ReplicaId(1), &bytes).unwrap();
            assert!(matches!(msg, VerifiedMsg::Prepare(p) if p.replica == ReplicaId(1)));
        }
        // The same bytes claimed by another connection are still refused: the sender is part of the check.
        assert!(matches!(
            boundary.replica_msg(ReplicaId(2), &bytes),
            Err(Rejected::Auth(AuthError::SenderMismatch { .. }))
        ));
        assert_eq!(boundary.rejected(), 1);
    }

    #[test]
    fn forged_and_garbled_messages_are_dropped_and_counted() {
        let (keys, _, mut boundary) = setup();
        let forged = Bytes::from(ReplicaMsg::Prepare(keys[2].sign(prepare(1))).encode());
        assert!(matches!(
            boundary.replica_msg(ReplicaId(1), &forged),
            Err(Rejected::Auth(AuthError::BadSignature(_)))
        ));
        assert!(matches!(
            boundary.replica_msg(ReplicaId(1), &Bytes::from_static(&[0xff, 0x01, 0x02])),
            Err(Rejected::Decode(_))
        ));
        assert!(matches!(
            boundary.replica_msg(ReplicaId(1), &Bytes::from(vec![0; 5000])),
            Err(Rejected::Decode(DecodeError::TooLarge { .. }))
        ));
        assert_eq!(boundary.rejected(), 3);
    }

    #[test]
    fn requests_and_replies_are_verified() {
        let (keys, client, mut boundary) = setup();
        let request = Request {
            client: ClientId(0),
            timestamp: Timestamp(1),
            operation: Bytes::from_static(b"op"),
        };
        let good = Bytes::from(client.sign(request.clone()).encode());
        assert_eq!(boundary.request(&good).unwrap().timestamp, Timestamp(1));
        let forged = Bytes::from(keys[0].sign(request).encode());
        assert!(boundary.request(&forged).is_err());

        let reply = Reply {
            view: View(0),
            timestamp: Timestamp(1),
            client: ClientId(0),
            replica: ReplicaId(3),
            result: Bytes::from_static(b"r"),
        };
        let bytes = Bytes::from(keys[3].sign(reply.clone()).encode());
        let decoded = boundary.decode_reply(&bytes).unwrap();
        assert_eq!(
            boundary.verify_reply(decoded).unwrap().replica,
            ReplicaId(3)
        );
        let forged = Bytes::from(keys[2].sign(reply).encode());
        let decoded = boundary.decode_reply(&forged).unwrap();
        assert!(boundary.verify_reply(decoded).is_err());
        assert_eq!(boundary.rejected(), 2);
    }
}
