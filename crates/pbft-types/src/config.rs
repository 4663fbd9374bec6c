//! The cluster configuration: who the replicas and clients are, and the protocol's parameters.

use std::collections::HashSet;
use std::time::Duration;

use thiserror::Error;

use crate::ids::{ClientId, ReplicaId, View};

/// An ed25519 public key as its 32 encoded bytes. Whether the bytes are a valid, non-weak key is checked by
/// `pbft-crypto` when it builds its keyring.
pub type PublicKeyBytes = [u8; 32];

/// A client allowed to submit requests, and the key its requests must be signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: ClientId,
    pub public_key: PublicKeyBytes,
}

/// How clients authenticate their requests (and replicas their replies to them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// An ed25519 signature on every request and reply: anyone can check them, at about 70 us of CPU each.
    #[default]
    Signatures,
    /// A MAC authenticator (one HMAC per replica) on requests, one MAC on replies: well under a microsecond
    /// each. Replicas still accept signed requests. A replica checks only its own MAC, so a client can make its
    /// request look forged to some replicas and genuine to others. A backup whose own MAC of a request in the
    /// primary's PRE-PREPARE is wrong therefore does not refuse the PRE-PREPARE but holds it, and accepts it
    /// once f other backups sent matching PREPAREs: with the primary, f+1 replicas vouch for the batch, so a
    /// correct one checked it, also while f replicas are down. A client that spoils the primary's MAC still
    /// costs a view change (the primary refuses the request, the backups time it out): choose MACs when clients
    /// are trusted not to attack liveness, signatures when they are not.
    Macs,
}

/// How replicas authenticate the normal-case messages they send each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaAuth {
    /// Every message signed with ed25519.
    #[default]
    Signatures,
    /// COMMITs carry no signature: the mutually authenticated TLS connection between two replicas, whose records
    /// carry MACs under the session's keys, tells the receiver who sent them, as the MACs of the PBFT papers do.
    /// This spares a signature and n-1 checks per replica and batch. Everything a third party may have to check
    /// stays signed: PRE-PREPAREs and PREPAREs (a VIEW-CHANGE carries them as proof), CHECKPOINTs (a checkpoint
    /// certificate), VIEW-CHANGEs and NEW-VIEWs. The ledger cannot use it: its blocks carry commit certificates
    /// that anyone can check.
    Macs,
}

/// The protocol's tunable parameters. Everything here must be identical on every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// K: a checkpoint is taken every K sequence numbers.
    pub checkpoint_interval: u64,
    /// L: the watermark window, a multiple of K. Sequence numbers outside (h, h + L] are not accepted.
    pub window: u64,
    /// The most requests one batch may carry.
    pub max_batch_size: usize,
    /// How long the primary waits for more requests before it proposes a batch that is not full while earlier
    /// batches are still in flight.
    pub batch_delay: Duration,
    /// How long a replica waits for a request it holds to execute before it suspects the primary (the request
    /// timer), and for a peer's STATE-CHUNK before it asks another.
    pub request_timeout: Duration,
    /// How long a replica waits for a NEW-VIEW once it holds a quorum of VIEW-CHANGEs; doubled by each view
    /// change that produces none in time, back to this value once a batch executes.
    pub view_change_timeout: Duration,
    /// How often a replica with unfinished work tells its peers what it has, so that they resend what was lost.
    pub status_interval: Duration,
    /// The largest operation a request may carry, in bytes.
    pub max_request_size: usize,
    /// The largest encoded message a replica accepts, in bytes. Checked before decoding.
    pub max_message_size: usize,
    /// The most snapshot bytes one STATE-CHUNK carries during state transfer.
    pub state_chunk_size: usize,
    /// The largest state snapshot a replica accepts during state transfer, in bytes.
    pub max_snapshot_size: u64,
    /// What authenticates client requests and replies.
    pub client_auth: ClientAuth,
    /// What authenticates the replicas' COMMITs.
    pub replica_auth: ReplicaAuth,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            checkpoint_interval: 128,
            window: 256,
            max_batch_size: 256,
            batch_delay: Duration::from_millis(2),
            request_timeout: Duration::from_millis(1000),
            view_change_timeout: Duration::from_millis(1000),
            status_interval: Duration::from_millis(100),
            max_request_size: 64 * 1024,
            max_message_size: 32 * 1024 * 1024,
            state_chunk_size: 1024 * 1024,
            max_snapshot_size: 1 << 30,
            client_auth: ClientAuth::Signatures,
            replica_auth: ReplicaAuth::Signatures,
        }
    }
}

/// A cluster: n replicas (ids 0..n-1, in the order of `replicas`), the known clients, and the parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub replicas: Vec<PublicKeyBytes>,
    pub clients: Vec<ClientInfo>,
    pub params: Params,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "a cluster needs at least 4 replicas to tolerate one Byzantine fault, this one has {0}"
    )]
    TooFewReplicas(usize),
    #[error("the checkpoint interval must be at least 1")]
    ZeroCheckpointInterval,
    #[error(
        "the window ({window}) must be a positive multiple of the checkpoint interval ({interval})"
    )]
    WindowNotMultipleOfInterval { window: u64, interval: u64 },
    #[error("the batch size limit must be at least 1")]
    ZeroBatchSize,
    #[error("replicas {first} and {second} have the same public key")]
    DuplicateReplicaKey { first: ReplicaId, second: ReplicaId },
    #[error("client {0} is listed twice")]
    DuplicateClient(ClientId),
    #[error("client {client} uses the public key of {other}")]
    SharedClientKey { client: ClientId, other: String },
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    #[error(
        "the state chunk size ({chunk}) must be positive and leave room in a message of {message} bytes"
    )]
    ChunkSize { chunk: usize, message: usize },
    #[error(
        "the message size limit ({message}) cannot hold a full batch of the largest requests ({batch} x {request})"
    )]
    MessageLimitTooSmall {
        message: usize,
        batch: usize,
        request: usize,
    },
    #[error(
        "the message size limit ({message}) cannot hold the largest NEW-VIEW of {n} replicas with a window of \
         {window} (up to {needed} bytes): no view change could complete once the log is full"
    )]
    NewViewTooLarge {
        message: usize,
        n: usize,
        window: u64,
        needed: usize,
    },
    #[error(
        "replica_auth = \"macs\" leaves COMMITs unsigned, but this application keeps commit certificates that \
         anyone must be able to check (the ledger's blocks): use replica_auth = \"signatures\""
    )]
    UnsignedCommitCertificates,
}

/// An upper bound on the encoded size of a signed message without a batch (PREPARE, COMMIT, CHECKPOINT, the
/// header of a PRE-PREPARE): the body, the 64-byte signature and the protobuf framing.
const SIGNED_VOTE_BOUND: usize = 192;

/// An upper bound on the encoded size of a NEW-VIEW for `n` replicas and a window of `window`: q VIEW-CHANGEs,
/// each with a checkpoint proof of q CHECKPOINTs and a prepared certificate (a PRE-PREPARE and q - 1 PREPAREs)
/// for every sequence number of the window, and an O of one PRE-PREPARE per sequence number. It grows as
/// q^2 x window (about 100 KB for n = 10 and a window of 16).
pub fn new_view_size_bound(n: usize, window: u64) -> usize {
    let f = n.saturating_sub(1) / 3;
    let q = (n + f + 1).div_ceil(2);
    let window = usize::try_from(window).unwrap_or(usize::MAX);
    let view_change = SIGNED_VOTE_BOUND
        .saturating_mul(q.saturating_add(window.saturating_mul(q)))
        .saturating_add(64);
    q.saturating_mul(view_change.saturating_add(16))
        .saturating_add(window.saturating_mul(SIGNED_VOTE_BOUND))
        .saturating_add(64)
}

/// Per-request envelope overhead allowed for when checking that a full batch fits in a message: the signature,
/// the ids, the timestamp and the protobuf framing.
const REQUEST_OVERHEAD: usize = 128;

impl ClusterConfig {
    /// n, the number of replicas.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// f = floor((n - 1) / 3), the most faulty replicas the cluster tolerates.
    pub fn f(&self) -> usize {
        self.n().saturating_sub(1) / 3
    }

    /// q = ceil((n + f + 1) / 2): any two quorums intersect in at least f + 1 replicas, so in a correct one.
    pub fn quorum(&self) -> usize {
        (self.n() + self.f() + 1).div_ceil(2)
    }

    /// f + 1: enough replicas that at least one of them is correct.
    pub fn weak_quorum(&self) -> usize {
        self.f() + 1
    }

    pub fn primary(&self, view: View) -> ReplicaId {
        // n >= 4 after validation; the modulo keeps the id in range whatever the view.
        ReplicaId(view.0 % (self.n().max(1) as u64))
    }

    pub fn is_replica(&self, id: ReplicaId) -> bool {
        id.index() < self.n()
    }

    pub fn replica_ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.n() as u64).map(ReplicaId)
    }

    pub fn client(&self, id: ClientId) -> Option<&ClientInfo> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// Checks that the configuration describes a cluster that can work. Called before anything uses it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.params;
        if self.n() < 4 {
            return Err(ConfigError::TooFewReplicas(self.n()));
        }
        if p.checkpoint_interval == 0 {
            return Err(ConfigError::ZeroCheckpointInterval);
        }
        if p.window == 0 || !p.window.is_multiple_of(p.checkpoint_interval) {
            return Err(ConfigError::WindowNotMultipleOfInterval {
                window: p.window,
                interval: p.checkpoint_interval,
            });
        }
        if p.max_batch_size == 0 {
            return Err(ConfigError::ZeroBatchSize);
        }
        for (name, value) in [
            ("request_timeout", p.request_timeout),
            ("view_change_timeout", p.view_change_timeout),
            ("status_interval", p.status_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        // An authenticator (n MACs) may replace the signature that REQUEST_OVERHEAD allows for.
        let seal = (self.n().saturating_mul(crate::signed::MAC_LEN)).saturating_sub(64);
        let batch_bytes = p.max_batch_size.saturating_mul(
            p.max_request_size
                .saturating_add(REQUEST_OVERHEAD)
                .saturating_add(seal),
        );
        if batch_bytes > p.max_message_size {
            return Err(ConfigError::MessageLimitTooSmall {
                message: p.max_message_size,
                batch: p.max_batch_size,
                request: p.max_request_size,
            });
        }
        let needed = new_view_size_bound(self.n(), p.window);
        if needed > p.max_message_size {
            return Err(ConfigError::NewViewTooLarge {
                message: p.max_message_size,
                n: self.n(),
                window: p.window,
                needed,
            });
        }
        if p.state_chunk_size == 0
            || p.state_chunk_size.saturating_add(REQUEST_OVERHEAD) > p.max_message_size
        {
            return Err(ConfigError::ChunkSize {
                chunk: p.state_chunk_size,
                message: p.max_message_size,
            });
        }
        for (i, key) in self.replicas.iter().enumerate() {
            if let Some(j) = self.replicas[..i].iter().position(|k| k == key) {
                return Err(ConfigError::DuplicateReplicaKey {
                    first: ReplicaId(j as u64),
                    second: ReplicaId(i as u64),
                });
            }
        }
        let mut ids = HashSet::new();
        for client in &self.clients {
            if !ids.insert(client.id) {
                return Err(ConfigError::DuplicateClient(client.id));
            }
            // A client sharing a key with a replica or another client could speak for it.
            if let Some(r) = self.replicas.iter().position(|k| *k == client.public_key) {
                return Err(ConfigError::SharedClientKey {
                    client: client.id,
                    other: format!("replica {r}"),
                });
            }
            if let Some(other) = self
                .clients
                .iter()
                .find(|c| c.id != client.id && c.public_key == client.public_key)
            {
                return Err(ConfigError::SharedClientKey {
                    client: client.id,
                    other: format!("client {}", other.id),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize) -> ClusterConfig {
        ClusterConfig {
            replicas: (0..n).map(|i| [i as u8 + 1; 32]).collect(),
            clients: vec![ClientInfo {
                id: ClientId(7),
                public_key: [200; 32],
            }],
            params: Params::default(),
        }
    }

    #[test]
    fn sizes_follow_the_formulas() {
        for (n, f, q) in [
            (4, 1, 3),
            (5, 1, 4),
            (6, 1, 4),
            (7, 2, 5),
            (10, 3, 7),
            (16, 5, 11),
        ] {
            let c = config(n);
            assert_eq!((c.n(), c.f(), c.quorum()), (n, f, q), "n = {n}");
            // Two quorums always share a correct replica.
            assert!(2 * c.quorum() > c.n() + c.f());
        }
    }

    #[test]
    fn primary_rotates_with_the_view() {
        let c = config(4);
        assert_eq!(c.primary(View(0)), ReplicaId(0));
        assert_eq!(c.primary(View(5)), ReplicaId(1));
    }

    #[test]
    fn valid_config_passes() {
        assert_eq!(config(4).validate(), Ok(()));
    }

    #[test]
    fn impossible_configs_are_rejected() {
        assert_eq!(config(3).validate(), Err(ConfigError::TooFewReplicas(3)));

        let mut c = config(4);
        c.params.window = 300;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::WindowNotMultipleOfInterval { .. })
        ));

        let mut c = config(4);
        c.params.checkpoint_interval = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroCheckpointInterval));

        let mut c = config(4);
        c.params.max_batch_size = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBatchSize));

        let mut c = config(4);
        c.replicas[3] = c.replicas[1];
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateReplicaKey {
                first: ReplicaId(1),
                second: ReplicaId(3)
            })
        );

        let mut c = config(4);
        c.clients.push(c.clients[0].clone());
        assert_eq!(c.validate(), Err(ConfigError::DuplicateClient(ClientId(7))));

        let mut c = config(4);
        c.clients[0].public_key = c.replicas[0];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SharedClientKey { .. })
        ));

        let mut c = config(4);
        c.params.request_timeout = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroTimeout("request_timeout"))
        );

        let mut c = config(4);
        c.params.state_chunk_size = 0;
        assert!(matches!(c.validate(), Err(ConfigError::ChunkSize { .. })));

        let mut c = config(4);
        c.params.max_message_size = 1000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MessageLimitTooSmall { .. })
        ));

        // A full batch fits, but the largest NEW-VIEW (q^2 x window) does not.
        let mut c = config(4);
        c.params.max_batch_size = 1;
        c.params.max_request_size = 1000;
        c.params.state_chunk_size = 1000;
        c.params.max_message_size = 100_000;
        assert!(new_view_size_bound(4, c.params.window) > 100_000);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NewViewTooLarge { n: 4, .. })
        ));
        c.params.max_message_size = new_view_size_bound(4, c.params.window);
        assert_eq!(c.validate(), Ok(()));
    }
}
