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
use pbft_types::{
    ClientId, DecodeError, DecodeLimits, ReplicaId, ReplicaMsg, Reply, Request, Signed,
};
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
    /// With MAC authenticators (`client_auth = macs`): what each replica and each client checks MACs with. A
    /// request's authenticator holds one MAC per replica, so what one receiver accepts another may refuse: the
    /// memory of accepted bytes is then kept per receiver.
    sessions: Option<Sessions>,
    limits: DecodeLimits,
    accepted_msgs: HashMap<(Option<ReplicaId>, ReplicaId, Bytes), VerifiedMsg>,
    accepted_requests: HashMap<(Option<ReplicaId>, Bytes), Verified<Request>>,
    rejected: u64,
}

/// The keyrings of every principal, each with its own session keys.
pub struct Sessions {
    /// Index: replica id.
    pub replicas: Vec<Keyring>,
    pub clients: HashMap<ClientId, Keyring>,
}

impl Boundary {
    pub fn new(keyring: Keyring, limits: DecodeLimits) -> Boundary {
        Boundary {
            keyring,
            sessions: None,
            limits,
            accepted_msgs: HashMap::new(),
            accepted_requests: HashMap::new(),
            rejected: 0,
        }
    }

    /// Checks MAC authenticators too, each receiver with its own session keys.
    pub fn with_sessions(mut self, sessions: Sessions) -> Boundary {
        self.sessions = Some(sessions);
        self
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// What replica `to` verifies with: its own session keys included, so that it can read back the requests it
    /// journalled.
    pub fn keyring_of(&self, to: ReplicaId) -> &Keyring {
        self.receiver(to).0
    }

    /// What replica `to` verifies with, and the receiver part of the memory's key (none when every receiver
    /// verifies alike).
    fn receiver(&self, to: ReplicaId) -> (&Keyring, Option<ReplicaId>) {
        match self
            .sessions
            .as_ref()
            .and_then(|s| s.replicas.get(to.index()))
        {
            Some(keyring) => (keyring, Some(to)),
            None => (&self.keyring, None),
        }
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

    /// Bytes that arrived at replica `to` from replica `from` (whose identity the transport authenticated).
    pub fn replica_msg(
        &mut self,
        to: ReplicaId,
        from: ReplicaId,
        bytes: &Bytes,
    ) -> Result<VerifiedMsg, Rejected> {
        let (keyring, receiver) = self.receiver(to);
        let key = (receiver, from, bytes.clone());
        if let Some(msg) = self.accepted_msgs.get(&key) {
            return Ok(msg.clone());
        }
        let result = ReplicaMsg::decode(bytes, self.limits)
            .map_err(Rejected::from)
            .and_then(|msg| Ok(keyring.verify_replica_msg(from, msg)?));
        if let Ok(msg) = &result {
            if self.accepted_msgs.len() >= MEMO_CAPACITY {
                self.accepted_msgs.clear();
            }
            self.accepted_msgs.insert(key, msg.clone());
        }
        self.count(result)
    }

    /// A client's request as it arrived at replica `to`.
    pub fn request(&mut self, to: ReplicaId, bytes: &Bytes) -> Result<Verified<Request>, Rejected> {
        let (keyring, receiver) = self.receiver(to);
        let key = (receiver, bytes.clone());
        if let Some(request) = self.accepted_requests.get(&key) {
            return Ok(request.clone());
        }
        let result = Signed::<Request>::decode(bytes, self.limits.max_message_size)
            .map_err(Rejected::from)
            .and_then(|signed| Ok(keyring.verify(signed)?));
        if let Ok(request) = &result {
            if self.accepted_requests.len() >= MEMO_CAPACITY {
                self.accepted_requests.clear();
            }
            self.accepted_requests.insert(key, request.clone());
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

    /// A reply as its client checks it.
    pub fn verify_reply(&mut self, reply: Signed<Reply>) -> Result<Verified<Reply>, Rejected> {
        let client = reply.value().client;
        let keyring = self
            .sessions
            .as_ref()
            .and_then(|s| s.clients.get(&client))
            .unwrap_or(&self.keyring);
        let result = keyring.verify(reply).map_err(Rejected::from);
        self.count(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::{KeyPair, SessionKeys};
    use pbft_types::{
        ClientId, ClientInfo, ClusterConfig, Digest, MAC_LEN, Params, Prepare, Seal, SeqNo,
        Timestamp, View,
    };

    fn config_of(replicas: &[KeyPair], client: &KeyPair) -> ClusterConfig {
        ClusterConfig {
            replicas: replicas.iter().map(KeyPair::public_key).collect(),
            clients: vec![ClientInfo {
                id: ClientId(0),
                public_key: client.public_key(),
            }],
            params: Params::default(),
        }
    }

    fn setup() -> (Vec<KeyPair>, KeyPair, Boundary) {
        let replicas: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let client = KeyPair::from_seed([50; 32]);
        let config = config_of(&replicas, &client);
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
    fn with_macs_each_replica_checks_its_own_entry_and_remembers_for_itself() {
        let (replicas, client, boundary) = setup();
        let config = config_of(&replicas, &client);
        let keyring = boundary.keyring().clone();
        let sessions = Sessions {
            replicas: (0..4)
                .map(|i| {
                    let id = ReplicaId(i as u64);
                    let keys = SessionKeys::for_replica(&config, id, &replicas[i]).unwrap();
                    keyring.clone().with_sessions(keys)
                })
                .collect(),
            clients: HashMap::new(),
        };
        let mut boundary = boundary.with_sessions(sessions);
        let keys = SessionKeys::for_client(&config, ClientId(0), &client).unwrap();
        let sealed = keys.seal_request(Request {
            client: ClientId(0),
            timestamp: Timestamp(1),
            operation: Bytes::from_static(b"op"),
        });
        // Spoil replica 1's entry only.
        let Seal::Authenticator(auth) = sealed.seal() else {
            panic!("sealed with MACs")
        };
        let mut auth = auth.to_vec();
        auth[MAC_LEN] ^= 1;
        let spoiled = Signed::from_authenticated_parts(
            sealed.body().clone(),
            auth.into(),
            sealed.value().clone(),
        );
        let bytes = Bytes::from(spoiled.encode());
        for _ in 0..2 {
            assert!(boundary.request(ReplicaId(0), &bytes).is_ok());
            assert!(boundary.request(ReplicaId(1), &bytes).is_err());
            assert!(boundary.request(ReplicaId(2), &bytes).is_ok());
        }
        assert_eq!(boundary.rejected(), 2);
    }

    #[test]
    fn an_authentic_message_passes_and_is_remembered_per_sender() {
        let (keys, _, mut boundary) = setup();
        let bytes = Bytes::from(ReplicaMsg::Prepare(keys[1].sign(prepare(1))).encode());
        for _ in 0..3 {
            let msg = boundary
                .replica_msg(ReplicaId(0), ReplicaId(1), &bytes)
                .unwrap();
            assert!(matches!(msg, VerifiedMsg::Prepare(p) if p.replica == ReplicaId(1)));
        }
        // The same bytes claimed by another connection are still refused: the sender is part of the check.
        assert!(matches!(
            boundary.replica_msg(ReplicaId(0), ReplicaId(2), &bytes),
            Err(Rejected::Auth(AuthError::SenderMismatch { .. }))
        ));
        assert_eq!(boundary.rejected(), 1);
    }

    #[test]
    fn forged_and_garbled_messages_are_dropped_and_counted() {
        let (keys, _, mut boundary) = setup();
        let forged = Bytes::from(ReplicaMsg::Prepare(keys[2].sign(prepare(1))).encode());
        assert!(matches!(
            boundary.replica_msg(ReplicaId(0), ReplicaId(1), &forged),
            Err(Rejected::Auth(AuthError::BadSignature(_)))
        ));
        assert!(matches!(
            boundary.replica_msg(
                ReplicaId(0),
                ReplicaId(1),
                &Bytes::from_static(&[0xff, 0x01, 0x02])
            ),
            Err(Rejected::Decode(_))
        ));
        assert!(matches!(
            boundary.replica_msg(ReplicaId(0), ReplicaId(1), &Bytes::from(vec![0; 5000])),
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
        assert_eq!(
            boundary.request(ReplicaId(0), &good).unwrap().timestamp,
            Timestamp(1)
        );
        let forged = Bytes::from(keys[0].sign(request).encode());
        assert!(boundary.request(ReplicaId(0), &forged).is_err());

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
