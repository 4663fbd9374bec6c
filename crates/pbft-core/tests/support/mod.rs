//! A test cluster for driving one replica by hand: keys derived from fixed seeds, a keyring, a journal
//! application, builders for every replica message (signed by any replica's key and authenticated by the keyring,
//! exactly as the driver would hand them to the core), and a comparable form of the core's outputs so that a
//! test can `assert_eq!` on everything one input produced.

// Each integration test file compiles this module on its own and may use only part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pbft_core::{
    Dest, ExecContext, Input, JournalEntry, Output, RecoveryError, RejectReason, Rejection,
    Replica, RestoreError, StateMachine, Timer,
};
use pbft_crypto::{KeyPair, Keyring, SessionKeys, Signer, Verified, batch_digest};
use pbft_types::{
    BatchData, Checkpoint, ClientId, ClientInfo, ClusterConfig, Commit, Digest, FetchBatch,
    FetchState, MAC_LEN, NewView, Params, PrePrepare, Prepare, PreparedProof, Principal, ReplicaId,
    ReplicaMsg, Reply, Request, Seal, SeqNo, Signed, StateChunk, Status, Timestamp, View,
    ViewChange,
};

/// How many clients every test cluster knows (ids 1..=CLIENTS).
pub const CLIENTS: u64 = 8;

/// Parameters small enough to reach checkpoints and watermarks in a few steps: a checkpoint every 2 sequence
/// numbers, a window of 4, batches of at most 2 requests of at most 64 bytes. The view-change timeout differs
/// from the request timeout (which paces state-transfer retries), so that a test tells which one a timer uses.
pub fn small_params() -> Params {
    Params {
        checkpoint_interval: 2,
        window: 4,
        max_batch_size: 2,
        max_request_size: 64,
        request_timeout: Duration::from_millis(1000),
        view_change_timeout: Duration::from_millis(1500),
        ..Params::default()
    }
}

/// Appends every operation it executes to a list shared with the test, so a test can see what ran. The result
/// of an operation is "<position in the journal>:<operation>". A plain journal refuses to restore (tests that
/// never transfer state must not depend on it); a restorable one snapshots its entries with `journal_snapshot`
/// and restores from such bytes.
struct Journal {
    ops: Arc<Mutex<Vec<Bytes>>>,
    restorable: bool,
}

/// The entries, each prefixed with its length as 8 little-endian bytes, so that ["ab"] and ["a", "b"] differ.
fn length_prefixed<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for op in ops {
        bytes.extend_from_slice(&(op.len() as u64).to_le_bytes());
        bytes.extend_from_slice(op);
    }
    bytes
}

/// The snapshot a restorable journal holding `ops` takes (the application part of a replica's snapshot).
pub fn journal_snapshot(ops: &[&str]) -> Bytes {
    Bytes::from(length_prefixed(ops.iter().map(|op| op.as_bytes())))
}

/// Parses a restorable journal's snapshot; `None` if it is truncated.
fn parse_journal(mut bytes: &[u8]) -> Option<Vec<Bytes>> {
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_at_checked(8)?;
        let len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
        let (op, rest) = rest.split_at_checked(len)?;
        ops.push(Bytes::copy_from_slice(op));
        bytes = rest;
    }
    Some(ops)
}

impl StateMachine for Journal {
    fn execute(&mut self, _ctx: ExecContext, operation: &[u8]) -> Bytes {
        let mut ops = self.ops.lock().expect("journal lock");
        ops.push(Bytes::copy_from_slice(operation));
        let mut result = format!("{}:", ops.len()).into_bytes();
        result.extend_from_slice(operation);
        Bytes::from(result)
    }

    fn digest(&self) -> Digest {
        let ops = self.ops.lock().expect("journal lock");
        pbft_crypto::digest_of(&length_prefixed(ops.iter().map(|op| op.as_ref())))
    }

    fn snapshot(&self) -> Bytes {
        let ops = self.ops.lock().expect("journal lock");
        if self.restorable {
            Bytes::from(length_prefixed(ops.iter().map(|op| op.as_ref())))
        } else {
            Bytes::from(ops.concat())
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        if !self.restorable {
            return Err(RestoreError("the journal does not restore".into()));
        }
        let restored =
            parse_journal(snapshot).ok_or_else(|| RestoreError("truncated journal".into()))?;
        *self.ops.lock().expect("journal lock") = restored;
        Ok(())
    }
}

/// A batch that executed, in a form that compares with `==`: the signed messages rather than their verified
/// wrappers, so an expected value can be built from the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub seq: SeqNo,
    pub view: View,
    pub digest: Digest,
    pub batch: Vec<Signed<Request>>,
    pub results: Vec<Option<Bytes>>,
    pub certificate: Vec<Signed<Commit>>,
}

/// One `Output`, comparable with `==`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Send(Dest, ReplicaMsg),
    Reply(Reply),
    SetTimer(Timer, Duration),
    CancelTimer(Timer),
    Committed(Executed),
    StateInstalled(SeqNo, Digest),
    EnteredView(View),
    Evidence(Signed<PrePrepare>, Signed<PrePrepare>),
    Rejected(Rejection),
}

impl From<Output> for Out {
    fn from(output: Output) -> Out {
        match output {
            Output::Send { to, msg } => Out::Send(to, msg),
            Output::Reply(reply) => Out::Reply(reply),
            Output::SetTimer { timer, after } => Out::SetTimer(timer, after),
            Output::CancelTimer(timer) => Out::CancelTimer(timer),
            Output::Committed(c) => Out::Committed(Executed {
                seq: c.seq,
                view: c.view,
                digest: c.digest,
                batch: c.batch.iter().map(|r| r.signed().clone()).collect(),
                results: c.results,
                certificate: c
                    .certificate
                    .into_iter()
                    .map(Verified::into_signed)
                    .collect(),
            }),
            Output::StateInstalled { seq, digest } => Out::StateInstalled(seq, digest),
            Output::EnteredView(view) => Out::EnteredView(view),
            Output::Evidence { first, second } => {
                Out::Evidence(first.into_signed(), second.into_signed())
            }
            Output::Rejected(r) => Out::Rejected(r),
            Output::Persist(_) => unreachable!("Node::step sets journal entries aside"),
        }
    }
}

/// `Rejected(Rejection { from: replica, kind, reason })`.
pub fn rejected_from_replica(from: u64, kind: &'static str, reason: RejectReason) -> Out {
    Out::Rejected(Rejection {
        from: Principal::Replica(ReplicaId(from)),
        kind,
        reason,
    })
}

/// `Rejected(Rejection { from: client, kind: "REQUEST", reason })`.
pub fn rejected_request(client: u64, reason: RejectReason) -> Out {
    Out::Rejected(Rejection {
        from: Principal::Client(ClientId(client)),
        kind: "REQUEST",
        reason,
    })
}

pub fn to_all(msg: ReplicaMsg) -> Out {
    Out::Send(Dest::AllReplicas, msg)
}

pub fn to_replica(id: u64, msg: ReplicaMsg) -> Out {
    Out::Send(Dest::Replica(ReplicaId(id)), msg)
}

/// The digest of a batch, as `pbft_crypto::batch_digest` computes it over the signed requests.
pub fn digest_of(batch: &[Verified<Request>]) -> Digest {
    batch_digest(batch.iter().map(Verified::signed))
}

/// The digest of the null batch, which a NEW-VIEW assigns to the sequence numbers no certificate prepared.
pub fn null_digest() -> Digest {
    digest_of(&[])
}

/// One replica under test and the journal of what its application executed.
pub struct Node {
    pub id: ReplicaId,
    pub replica: Replica,
    journal: Arc<Mutex<Vec<Bytes>>>,
    /// Every `Output::Persist` so far, in order: what the replica's driver would have kept on disk.
    pub persisted: Vec<JournalEntry>,
}

impl Node {
    /// Feeds one input and returns every output, in order, but the journal entries, which go to `persisted`.
    pub fn step(&mut self, input: Input) -> Vec<Out> {
        let mut outs = Vec::new();
        for output in self.replica.step(input) {
            match output {
                Output::Persist(entry) => self.persisted.push(entry),
                other => outs.push(Out::from(other)),
            }
        }
        outs
    }

    /// The journal's entries: the operations the application executed, in order, or those of the snapshot it
    /// restored and the ones it executed since.
    pub fn executed_ops(&self) -> Vec<Bytes> {
        self.journal.lock().expect("journal lock").clone()
    }
}

/// n replicas' keys, the clients' keys, the configuration and the keyring built from it.
pub struct Cluster {
    pub config: ClusterConfig,
    pub keys: Vec<KeyPair>,
    /// `client_keys[i]` is the key of client i + 1.
    pub client_keys: Vec<KeyPair>,
    pub keyring: Keyring,
}

impl Cluster {
    pub fn new(n: usize, params: Params) -> Cluster {
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        let client_keys: Vec<KeyPair> = (0..CLIENTS)
            .map(|i| KeyPair::from_seed([i as u8 + 101; 32]))
            .collect();
        let config = ClusterConfig {
            replicas: keys.iter().map(KeyPair::public_key).collect(),
            clients: client_keys
                .iter()
                .enumerate()
                .map(|(i, k)| ClientInfo {
                    id: ClientId(i as u64 + 1),
                    public_key: k.public_key(),
                })
                .collect(),
            params,
        };
        let keyring = Keyring::new(&config).expect("test keys are valid");
        Cluster {
            config,
            keys,
            client_keys,
            keyring,
        }
    }

    /// n = 4, f = 1, q = 3, with `small_params`.
    pub fn four() -> Cluster {
        Cluster::new(4, small_params())
    }

    /// n = 7, f = 2, q = 5, with `small_params`.
    pub fn seven() -> Cluster {
        Cluster::new(7, small_params())
    }

    pub fn quorum(&self) -> usize {
        self.config.quorum()
    }

    pub fn params(&self) -> &Params {
        &self.config.params
    }

    /// The output that arms the status timer.
    pub fn status_timer(&self) -> Out {
        Out::SetTimer(Timer::Status, self.config.params.status_interval)
    }

    /// The output that arms the view-change timer with the configured timeout: a request the replica holds
    /// starts it, and so do q VIEW-CHANGEs for the view it is changing to.
    /// The view-change timer armed as the request timer (for `request_timeout`).
    pub fn view_timer(&self) -> Out {
        self.view_timer_after(self.config.params.request_timeout)
    }

    /// The view-change timer armed to wait for a NEW-VIEW (for `view_change_timeout`, before any doubling).
    pub fn new_view_timer(&self) -> Out {
        self.view_timer_after(self.config.params.view_change_timeout)
    }

    /// The view-change timer armed for `after` (the configured timeout doubled by view changes that failed).
    pub fn view_timer_after(&self, after: Duration) -> Out {
        Out::SetTimer(Timer::ViewChange, after)
    }

    /// The output that stops the view-change timer.
    pub fn cancel_view_timer(&self) -> Out {
        Out::CancelTimer(Timer::ViewChange)
    }

    /// Replica `id` at its initial state.
    pub fn node(&self, id: u64) -> Node {
        self.node_with(id, false)
    }

    /// Replica `id` at its initial state, with a journal that can take and restore snapshots (state transfer).
    pub fn restorable_node(&self, id: u64) -> Node {
        self.node_with(id, true)
    }

    fn node_with(&self, id: u64, restorable: bool) -> Node {
        let replica_id = ReplicaId(id);
        let journal = Arc::new(Mutex::new(Vec::new()));
        let signer = Signer::new(
            Principal::Replica(replica_id),
            self.keys[id as usize].clone(),
        );
        let app = Journal {
            ops: journal.clone(),
            restorable,
        };
        let replica = Replica::new(self.config.clone(), replica_id, signer, Box::new(app))
            .expect("the test configuration is valid");
        Node {
            id: replica_id,
            replica,
            journal,
            persisted: Vec::new(),
        }
    }

    /// Replica `id` after a crash: a fresh replica (restorable application at its initial state) recovered from
    /// `journal`, each entry encoded and decoded again as a driver's disk would give it back. Returns the node
    /// and the outputs of the recovery.
    pub fn recovered_node(
        &self,
        id: u64,
        journal: &[JournalEntry],
    ) -> Result<(Node, Vec<Out>), RecoveryError> {
        let limits = pbft_types::DecodeLimits {
            max_message_size: self.config.params.max_message_size,
            max_batch_size: self.config.params.max_batch_size,
        };
        let decoded = journal
            .iter()
            .map(|e| {
                JournalEntry::decode(&e.encode(), &self.keyring, limits)
                    .expect("a journal entry decodes and verifies")
            })
            .collect();
        let mut node = self.node_with(id, true);
        let (replica, outputs) = node.replica.recover(decoded)?;
        node.replica = replica;
        let mut outs = Vec::new();
        for output in outputs {
            match output {
                Output::Persist(entry) => node.persisted.push(entry),
                other => outs.push(Out::from(other)),
            }
        }
        Ok((node, outs))
    }

    /// A request of client `client`, signed with its key and authenticated by the keyring.
    pub fn request(&self, client: u64, timestamp: u64, operation: &str) -> Verified<Request> {
        let request = Request {
            client: ClientId(client),
            timestamp: Timestamp(timestamp),
            operation: Bytes::copy_from_slice(operation.as_bytes()),
        };
        let signed = self.client_keys[client as usize - 1].sign(request);
        self.keyring.verify(signed).expect("the client's own key")
    }

    /// What replica `id` verifies with when clients may seal requests with MACs: the keyring with its own
    /// session keys.
    pub fn replica_keyring(&self, id: u64) -> Keyring {
        let sessions =
            SessionKeys::for_replica(&self.config, ReplicaId(id), &self.keys[id as usize])
                .expect("test keys are valid");
        self.keyring.clone().with_sessions(sessions)
    }

    /// A request of client `client` sealed with a MAC authenticator in which the MACs of the `spoiled` replicas
    /// are wrong, as a faulty client may send it.
    pub fn sealed_request(
        &self,
        client: u64,
        timestamp: u64,
        operation: &str,
        spoiled: &[u64],
    ) -> Signed<Request> {
        let request = Request {
            client: ClientId(client),
            timestamp: Timestamp(timestamp),
            operation: Bytes::copy_from_slice(operation.as_bytes()),
        };
        let keys = &self.client_keys[client as usize - 1];
        let sessions = SessionKeys::for_client(&self.config, ClientId(client), keys)
            .expect("test keys are valid");
        let sealed = sessions.seal_request(request.clone());
        let Seal::Authenticator(authenticator) = sealed.seal() else {
            unreachable!("seal_request seals with MACs")
        };
        let mut authenticator = authenticator.to_vec();
        for r in spoiled {
            authenticator[*r as usize * MAC_LEN] ^= 1;
        }
        Signed::from_authenticated_parts(sealed.body().clone(), authenticator.into(), request)
    }

    /// PRE-PREPARE(view, seq, digest of `batch`) with `batch`, signed by replica `signer`.
    pub fn pre_prepare(
        &self,
        signer: u64,
        view: u64,
        seq: u64,
        batch: &[Verified<Request>],
    ) -> ReplicaMsg {
        self.pre_prepare_with_digest(signer, view, seq, digest_of(batch), batch)
    }

    /// A PRE-PREPARE whose header may name another digest than its batch's.
    pub fn pre_prepare_with_digest(
        &self,
        signer: u64,
        view: u64,
        seq: u64,
        digest: Digest,
        batch: &[Verified<Request>],
    ) -> ReplicaMsg {
        let header = self.keys[signer as usize].sign(PrePrepare {
            view: View(view),
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        });
        ReplicaMsg::PrePrepare {
            header,
            batch: batch.iter().map(|r| r.signed().clone()).collect(),
        }
    }

    pub fn prepare(&self, signer: u64, view: u64, seq: u64, digest: Digest) -> ReplicaMsg {
        ReplicaMsg::Prepare(self.keys[signer as usize].sign(Prepare {
            view: View(view),
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        }))
    }

    pub fn commit(&self, signer: u64, view: u64, seq: u64, digest: Digest) -> ReplicaMsg {
        ReplicaMsg::Commit(
            self.keys[signer as usize].sign(self.commit_body(signer, view, seq, digest)),
        )
    }

    /// The signed COMMIT a certificate holds.
    pub fn signed_commit(
        &self,
        signer: u64,
        view: u64,
        seq: u64,
        digest: Digest,
    ) -> Signed<Commit> {
        self.keys[signer as usize].sign(self.commit_body(signer, view, seq, digest))
    }

    fn commit_body(&self, signer: u64, view: u64, seq: u64, digest: Digest) -> Commit {
        Commit {
            view: View(view),
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        }
    }

    pub fn checkpoint(&self, signer: u64, seq: u64, digest: Digest) -> ReplicaMsg {
        ReplicaMsg::Checkpoint(self.signed_checkpoint(signer, seq, digest))
    }

    pub fn signed_checkpoint(&self, signer: u64, seq: u64, digest: Digest) -> Signed<Checkpoint> {
        self.keys[signer as usize].sign(Checkpoint {
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        })
    }

    pub fn status(&self, signer: u64, view: u64, stable: u64, executed: u64) -> ReplicaMsg {
        self.status_of(signer, view, stable, executed, false, false)
    }

    /// STATUS with `changing_view` set as given: the sender sent VIEW-CHANGE for `view` and waits for NEW-VIEW.
    pub fn status_changing(
        &self,
        signer: u64,
        view: u64,
        stable: u64,
        executed: u64,
        changing_view: bool,
    ) -> ReplicaMsg {
        self.status_of(signer, view, stable, executed, changing_view, false)
    }

    /// STATUS marked `asking`: the sender just recovered or installed a checkpoint, and every peer answers it.
    pub fn status_asking(&self, signer: u64, view: u64, stable: u64, executed: u64) -> ReplicaMsg {
        self.status_of(signer, view, stable, executed, false, true)
    }

    fn status_of(
        &self,
        signer: u64,
        view: u64,
        stable: u64,
        executed: u64,
        changing_view: bool,
        asking: bool,
    ) -> ReplicaMsg {
        ReplicaMsg::Status(self.keys[signer as usize].sign(Status {
            view: View(view),
            stable: SeqNo(stable),
            executed: SeqNo(executed),
            replica: ReplicaId(signer),
            changing_view,
            asking,
        }))
    }

    /// FETCH-STATE(seq, digest, offset) from replica `signer`.
    pub fn fetch_state(&self, signer: u64, seq: u64, digest: Digest, offset: u64) -> ReplicaMsg {
        ReplicaMsg::FetchState(self.keys[signer as usize].sign(FetchState {
            seq: SeqNo(seq),
            digest,
            offset,
            replica: ReplicaId(signer),
        }))
    }

    /// STATE-CHUNK(seq, digest, offset, total, data) from replica `signer`; nothing ties `data` or `total` to
    /// the real snapshot, so a test can play a lying source.
    pub fn state_chunk(
        &self,
        signer: u64,
        seq: u64,
        digest: Digest,
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> ReplicaMsg {
        ReplicaMsg::StateChunk(self.keys[signer as usize].sign(StateChunk {
            seq: SeqNo(seq),
            digest,
            offset,
            total,
            data: Bytes::copy_from_slice(data),
            replica: ReplicaId(signer),
        }))
    }

    /// `msg` as it reaches the core after arriving on replica `from`'s connection: authenticated by the keyring,
    /// which the core's contract requires. Panics if the keyring refuses it (a test that wants a refusal calls
    /// `keyring.verify_replica_msg` itself).
    pub fn deliver(&self, from: u64, msg: ReplicaMsg) -> Input {
        let msg = self
            .keyring
            .verify_replica_msg(ReplicaId(from), msg)
            .expect("a message signed by its sender verifies");
        Input::Message {
            from: ReplicaId(from),
            msg,
        }
    }

    /// The primary of view 0.
    pub fn primary(&self) -> u64 {
        self.config.primary(View(0)).0
    }

    /// The primary of `view`.
    pub fn primary_of(&self, view: u64) -> u64 {
        self.config.primary(View(view)).0
    }

    /// The signed header PRE-PREPARE(view, seq, digest), signed by replica `signer` (as it sits in a prepared
    /// certificate or in a NEW-VIEW's O).
    pub fn signed_pre_prepare(
        &self,
        signer: u64,
        view: u64,
        seq: u64,
        digest: Digest,
    ) -> Signed<PrePrepare> {
        self.keys[signer as usize].sign(PrePrepare {
            view: View(view),
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        })
    }

    pub fn signed_prepare(
        &self,
        signer: u64,
        view: u64,
        seq: u64,
        digest: Digest,
    ) -> Signed<Prepare> {
        self.keys[signer as usize].sign(Prepare {
            view: View(view),
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        })
    }

    /// A prepared certificate for (view, seq, digest): the PRE-PREPARE of the primary of `view` and the PREPAREs of
    /// `backups`, in that order.
    pub fn prepared_proof(
        &self,
        view: u64,
        seq: u64,
        digest: Digest,
        backups: &[u64],
    ) -> PreparedProof {
        PreparedProof {
            pre_prepare: self.signed_pre_prepare(self.primary_of(view), view, seq, digest),
            prepares: backups
                .iter()
                .map(|b| self.signed_prepare(*b, view, seq, digest))
                .collect(),
        }
    }

    /// The CHECKPOINTs of `signers` for (seq, digest): a checkpoint proof.
    pub fn checkpoint_proof(
        &self,
        seq: u64,
        digest: Digest,
        signers: &[u64],
    ) -> Vec<Signed<Checkpoint>> {
        signers
            .iter()
            .map(|s| self.signed_checkpoint(*s, seq, digest))
            .collect()
    }

    /// VIEW-CHANGE(new_view, stable, C = `proof`, P = `prepared`, signer), signed by `signer`.
    pub fn signed_view_change(
        &self,
        signer: u64,
        new_view: u64,
        stable: u64,
        proof: Vec<Signed<Checkpoint>>,
        prepared: Vec<PreparedProof>,
    ) -> Signed<ViewChange> {
        self.keys[signer as usize].sign(ViewChange {
            new_view: View(new_view),
            stable_seq: SeqNo(stable),
            checkpoint_proof: proof,
            prepared,
            replica: ReplicaId(signer),
        })
    }

    pub fn view_change(
        &self,
        signer: u64,
        new_view: u64,
        stable: u64,
        proof: Vec<Signed<Checkpoint>>,
        prepared: Vec<PreparedProof>,
    ) -> ReplicaMsg {
        ReplicaMsg::ViewChange(self.signed_view_change(signer, new_view, stable, proof, prepared))
    }

    /// VIEW-CHANGE(new_view) from the initial checkpoint with no prepared certificate.
    pub fn empty_view_change(&self, signer: u64, new_view: u64) -> Signed<ViewChange> {
        self.signed_view_change(signer, new_view, 0, Vec::new(), Vec::new())
    }

    /// NEW-VIEW(view, V, O) signed by `signer`, whoever that is.
    pub fn signed_new_view(
        &self,
        signer: u64,
        view: u64,
        view_changes: Vec<Signed<ViewChange>>,
        pre_prepares: Vec<Signed<PrePrepare>>,
    ) -> Signed<NewView> {
        self.keys[signer as usize].sign(NewView {
            view: View(view),
            view_changes,
            pre_prepares,
            replica: ReplicaId(signer),
        })
    }

    pub fn new_view(
        &self,
        signer: u64,
        view: u64,
        view_changes: Vec<Signed<ViewChange>>,
        pre_prepares: Vec<Signed<PrePrepare>>,
    ) -> ReplicaMsg {
        ReplicaMsg::NewView(self.signed_new_view(signer, view, view_changes, pre_prepares))
    }

    /// O as the primary of `view` computes it: one PRE-PREPARE(view, n, d) per (n, d), signed by that primary.
    pub fn o(&self, view: u64, entries: &[(u64, Digest)]) -> Vec<Signed<PrePrepare>> {
        let primary = self.primary_of(view);
        entries
            .iter()
            .map(|(seq, d)| self.signed_pre_prepare(primary, view, *seq, *d))
            .collect()
    }

    /// FETCH-BATCH(seq, digest) from replica `signer`.
    pub fn fetch_batch(&self, signer: u64, seq: u64, digest: Digest) -> ReplicaMsg {
        ReplicaMsg::FetchBatch(self.keys[signer as usize].sign(FetchBatch {
            seq: SeqNo(seq),
            digest,
            replica: ReplicaId(signer),
        }))
    }

    /// BATCH-DATA(seq, digest) with `batch`, from replica `signer`; nothing ties `batch` to `digest`.
    pub fn batch_data(
        &self,
        signer: u64,
        seq: u64,
        digest: Digest,
        batch: &[Verified<Request>],
    ) -> ReplicaMsg {
        ReplicaMsg::BatchData {
            header: self.keys[signer as usize].sign(BatchData {
                seq: SeqNo(seq),
                digest,
                replica: ReplicaId(signer),
            }),
            batch: batch.iter().map(|r| r.signed().clone()).collect(),
        }
    }

    /// Commits and executes slot `seq` of view 0 at `node`: the primary's PRE-PREPARE (unless `node` is the
    /// primary, which must have proposed `batch` already), then just enough PREPAREs and COMMITs from the
    /// lowest-numbered other replicas to reach the quorum. Returns every output.
    pub fn run_slot(&self, node: &mut Node, seq: u64, batch: &[Verified<Request>]) -> Vec<Out> {
        let me = node.id.0;
        let primary = self.primary();
        let digest = digest_of(batch);
        let mut outs = Vec::new();
        if me != primary {
            outs.extend(node.step(self.deliver(primary, self.pre_prepare(primary, 0, seq, batch))));
        }
        // q - 1 PREPAREs from backups, this replica's own included if it is a backup.
        let own_prepare = usize::from(me != primary);
        let backups = (0..self.config.n() as u64).filter(|r| *r != me && *r != primary);
        for r in backups.take(self.quorum() - 1 - own_prepare) {
            outs.extend(node.step(self.deliver(r, self.prepare(r, 0, seq, digest))));
        }
        // q COMMITs, this replica's own included.
        let others = (0..self.config.n() as u64).filter(|r| *r != me);
        for r in others.take(self.quorum() - 1) {
            outs.extend(node.step(self.deliver(r, self.commit(r, 0, seq, digest))));
        }
        outs
    }
}

/// The CHECKPOINT digests a replica sent, in order.
pub fn sent_checkpoints(outs: &[Out]) -> Vec<(SeqNo, Digest)> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Send(_, ReplicaMsg::Checkpoint(c)) => Some((c.value().seq, c.value().digest)),
            _ => None,
        })
        .collect()
}

/// The batches that executed, in order.
pub fn executed(outs: &[Out]) -> Vec<&Executed> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Committed(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// REPLY(view, t, c, i, r).
pub fn reply_in(view: u64, client: u64, timestamp: u64, replica: u64, result: &str) -> Out {
    Out::Reply(Reply {
        view: View(view),
        timestamp: Timestamp(timestamp),
        client: ClientId(client),
        replica: ReplicaId(replica),
        result: Bytes::copy_from_slice(result.as_bytes()),
    })
}

/// The execution of batch `seq`, committed in `view` by the COMMITs of `certifiers`.
pub fn committed_in(
    c: &Cluster,
    view: u64,
    seq: u64,
    batch: &[Verified<Request>],
    results: &[&str],
    certifiers: &[u64],
) -> Out {
    let digest = digest_of(batch);
    Out::Committed(Executed {
        seq: SeqNo(seq),
        view: View(view),
        digest,
        batch: batch.iter().map(|r| r.signed().clone()).collect(),
        results: results
            .iter()
            .map(|r| Some(Bytes::copy_from_slice(r.as_bytes())))
            .collect(),
        certificate: certifiers
            .iter()
            .map(|i| c.signed_commit(*i, view, seq, digest))
            .collect(),
    })
}
