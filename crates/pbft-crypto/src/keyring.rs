use std::collections::HashMap;
use std::sync::Arc;

use ed25519_zebra::VerificationKey;
use pbft_types::{
    BatchData, Body, Checkpoint, ClientId, ClusterConfig, Commit, FetchBatch, FetchState,
    NestedSignature, NewView, PrePrepare, Prepare, PreparedProof, Principal, PublicKeyBytes,
    ReplicaAuth, ReplicaId, ReplicaMsg, Request, Seal, Signed, StateChunk, Status, Timestamp,
    ViewChange,
};
use thiserror::Error;

use crate::mac::SessionKeys;
use crate::seen::{SeenKey, SeenRequests, key_of};
use crate::signature::{self, Checked, KeyFault, SignatureBatch};
use crate::verified::{Verified, VerifiedPrepared};
use crate::vouch::Unvouched;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the public key of {0} is not a valid ed25519 point")]
    Invalid(Principal),
    #[error("the public key of {0} is weak (of small order): it would accept forged signatures")]
    Weak(Principal),
    #[error("{0} is not in the cluster configuration")]
    NotInCluster(Principal),
}

/// Why a message was not authenticated. It is dropped and counted; it never reaches the protocol.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("{0} is not in the cluster configuration")]
    UnknownSigner(Principal),
    #[error("the signature of {0} does not verify")]
    BadSignature(Principal),
    #[error("message signed by {signer} arrived on the connection of replica {sender}")]
    SenderMismatch {
        signer: Principal,
        sender: ReplicaId,
    },
    #[error("request {index} of the batch: {error}")]
    BadRequestInBatch { index: usize, error: Box<AuthError> },
    #[error("message {index} carried inside (signed by {signer}) does not verify")]
    BadNestedSignature { index: usize, signer: Principal },
    #[error("the MAC of {0} does not verify")]
    BadMac(Principal),
    #[error("the authenticator of {sender} has {got} bytes, expected {expected}")]
    BadAuthenticatorLength {
        sender: Principal,
        got: usize,
        expected: usize,
    },
    #[error(
        "{0} sent a MAC authenticator, but this cluster requires signatures (client_auth = \"signatures\")"
    )]
    MacsNotAccepted(Principal),
    #[error(
        "a message of {0} has no seal of its own, and did not come straight from {0} on its connection"
    )]
    Unsealed(Principal),
    #[error(
        "{0} sent a COMMIT without a signature, but this cluster requires signed ones (replica_auth = \"signatures\")"
    )]
    UnsealedNotAccepted(Principal),
}

/// A replica message whose every signature has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifiedMsg {
    PrePrepare {
        header: Verified<PrePrepare>,
        batch: Vec<Verified<Request>>,
    },
    /// A PRE-PREPARE that is authentic and well formed, but where this replica's own MAC of some request did not
    /// verify: the core holds it until f backups vouch for it (see `vouch`).
    UnvouchedPrePrepare(Unvouched),
    Prepare(Verified<Prepare>),
    Commit(Verified<Commit>),
    Checkpoint(Verified<Checkpoint>),
    Status(Verified<Status>),
    FetchState(Verified<FetchState>),
    StateChunk(Verified<StateChunk>),
    /// A VIEW-CHANGE whose certificates' signatures were checked too (not yet their meaning).
    ViewChange(Verified<ViewChange>),
    /// A NEW-VIEW whose every nested VIEW-CHANGE, certificate and PRE-PREPARE signature was checked too.
    NewView(Verified<NewView>),
    FetchBatch(Verified<FetchBatch>),
    /// The requests of a BATCH-DATA: signed ones verified, MAC-sealed ones only well formed, since the core
    /// takes the batch only if its digest is one a NEW-VIEW assigned (see `verify_certified_requests`).
    BatchData {
        header: Verified<BatchData>,
        batch: Vec<Verified<Request>>,
    },
    Request(Verified<Request>),
}

impl VerifiedMsg {
    /// The message as it travels, signatures included.
    pub fn to_replica_msg(&self) -> ReplicaMsg {
        let requests =
            |batch: &[Verified<Request>]| batch.iter().map(|r| r.signed().clone()).collect();
        match self {
            VerifiedMsg::PrePrepare { header, batch } => ReplicaMsg::PrePrepare {
                header: header.signed().clone(),
                batch: requests(batch),
            },
            VerifiedMsg::UnvouchedPrePrepare(held) => ReplicaMsg::PrePrepare {
                header: held.header().signed().clone(),
                batch: held.requests().to_vec(),
            },
            VerifiedMsg::Prepare(m) => ReplicaMsg::Prepare(m.signed().clone()),
            VerifiedMsg::Commit(m) => ReplicaMsg::Commit(m.signed().clone()),
            VerifiedMsg::Checkpoint(m) => ReplicaMsg::Checkpoint(m.signed().clone()),
            VerifiedMsg::Status(m) => ReplicaMsg::Status(m.signed().clone()),
            VerifiedMsg::FetchState(m) => ReplicaMsg::FetchState(m.signed().clone()),
            VerifiedMsg::StateChunk(m) => ReplicaMsg::StateChunk(m.signed().clone()),
            VerifiedMsg::ViewChange(m) => ReplicaMsg::ViewChange(m.signed().clone()),
            VerifiedMsg::NewView(m) => ReplicaMsg::NewView(m.signed().clone()),
            VerifiedMsg::FetchBatch(m) => ReplicaMsg::FetchBatch(m.signed().clone()),
            VerifiedMsg::BatchData { header, batch } => ReplicaMsg::BatchData {
                header: header.signed().clone(),
                batch: requests(batch),
            },
            VerifiedMsg::Request(m) => ReplicaMsg::Request(m.signed().clone()),
        }
    }

    /// The message's kind, for logs and for counting rejected messages by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifiedMsg::PrePrepare { .. } | VerifiedMsg::UnvouchedPrePrepare(_) => "PRE-PREPARE",
            VerifiedMsg::Prepare(_) => "PREPARE",
            VerifiedMsg::Commit(_) => "COMMIT",
            VerifiedMsg::Checkpoint(_) => "CHECKPOINT",
            VerifiedMsg::Status(_) => "STATUS",
            VerifiedMsg::FetchState(_) => "FETCH-STATE",
            VerifiedMsg::StateChunk(_) => "STATE-CHUNK",
            VerifiedMsg::ViewChange(_) => "VIEW-CHANGE",
            VerifiedMsg::NewView(_) => "NEW-VIEW",
            VerifiedMsg::FetchBatch(_) => "FETCH-BATCH",
            VerifiedMsg::BatchData { .. } => "BATCH-DATA",
            VerifiedMsg::Request(_) => "REQUEST",
        }
    }
}

/// The requests of a PRE-PREPARE as this replica checked them.
enum Proposed {
    Authentic(Vec<Verified<Request>>),
    /// Well formed, but `verifier`'s own MAC of at least one of them is wrong.
    Unvouched {
        requests: Vec<Signed<Request>>,
        verifier: ReplicaId,
    },
}

/// The public keys of the cluster's replicas and clients: the only way to a `Verified<T>` from received bytes.
/// Clones share the set of client requests already verified (see `seen`).
///
/// A keyring built with `with_sessions` also checks MAC authenticators: a replica's, on client requests; a
/// client's, on replies. Without session keys, only signatures are accepted.
#[derive(Clone, Debug)]
pub struct Keyring {
    replicas: Vec<VerificationKey>,
    clients: HashMap<ClientId, VerificationKey>,
    seen: Arc<SeenRequests>,
    sessions: Option<Arc<SessionKeys>>,
    /// Whether a COMMIT that came straight from its sender may be unsigned (`replica_auth = "macs"`).
    link_commits: bool,
}

fn parse_key(principal: Principal, bytes: &PublicKeyBytes) -> Result<VerificationKey, KeyError> {
    signature::parse_key(bytes).map_err(|fault| match fault {
        KeyFault::NotAPoint => KeyError::Invalid(principal),
        KeyFault::SmallOrder => KeyError::Weak(principal),
    })
}

impl Keyring {
    pub fn new(config: &ClusterConfig) -> Result<Keyring, KeyError> {
        let replicas = Keyring::of_replicas(config)?.replicas;
        let clients = config
            .clients
            .iter()
            .map(|c| Ok((c.id, parse_key(Principal::Client(c.id), &c.public_key)?)))
            .collect::<Result<_, KeyError>>()?;
        Ok(Keyring {
            replicas,
            clients,
            seen: Arc::default(),
            sessions: None,
            link_commits: config.params.replica_auth == ReplicaAuth::Macs,
        })
    }

    /// The replicas' keys only: all a client needs to check replies. Parsing a key costs a point decompression,
    /// so a process running thousands of clients of a cluster with thousands of clients saves millions of them.
    pub fn of_replicas(config: &ClusterConfig) -> Result<Keyring, KeyError> {
        let replicas = config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, k)| parse_key(Principal::Replica(ReplicaId(i as u64)), k))
            .collect::<Result<_, _>>()?;
        Ok(Keyring {
            replicas,
            clients: HashMap::new(),
            seen: Arc::default(),
            sessions: None,
            link_commits: config.params.replica_auth == ReplicaAuth::Macs,
        })
    }

    /// n, the number of replicas of the cluster.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// The session keys this keyring checks MACs with, if it has any.
    pub fn sessions(&self) -> Option<Arc<SessionKeys>> {
        self.sessions.clone()
    }

    /// Checks that `client` itself asks this replica for its reply to request `timestamp` (an `AwaitedReply`,
    /// which only clusters with MAC authenticators use).
    pub fn check_awaited(
        &self,
        client: ClientId,
        timestamp: Timestamp,
        mac: &[u8],
    ) -> Result<(), AuthError> {
        match &self.sessions {
            Some(sessions) => sessions.check_awaited(client, timestamp, mac),
            None => Err(AuthError::MacsNotAccepted(Principal::Client(client))),
        }
    }

    /// Also accepts messages sealed with a MAC authenticator by a principal `sessions` shares a key with.
    pub fn with_sessions(mut self, sessions: SessionKeys) -> Keyring {
        self.sessions = Some(Arc::new(sessions));
        self
    }

    fn key(&self, principal: Principal) -> Result<&VerificationKey, AuthError> {
        let key = match principal {
            Principal::Replica(r) => usize::try_from(r.0).ok().and_then(|i| self.replicas.get(i)),
            Principal::Client(c) => self.clients.get(&c),
        };
        key.ok_or(AuthError::UnknownSigner(principal))
    }

    /// Checks a message's signature (under ZIP 215, see `signature`), and the signature of every message carried
    /// inside it, those together in one batch: a `Verified<T>` holds nothing unchecked.
    ///
    /// A request or reply sealed with an authenticator is checked against this keyring's session keys instead.
    pub fn verify<T: Body>(&self, signed: Signed<T>) -> Result<Verified<T>, AuthError> {
        let mut batch = SignatureBatch::default();
        self.gather(&signed, signed.value().signer(), &mut batch);
        self.verify_in(signed, &batch.checked())
    }

    /// Adds the signature of `signed` and of every message carried inside it to `batch`, as handed over by
    /// `source` (see `SignatureBatch::push`). What has no known signer is left out: it fails where it is checked.
    fn gather<T: Body>(&self, signed: &Signed<T>, source: Principal, batch: &mut SignatureBatch) {
        if let Seal::Signature(signature) = signed.seal() {
            let signer = signed.value().signer();
            if let Ok(key) = self.key(signer) {
                batch.push(source, signer, key, signed.body(), signature);
            }
        }
        for n in signed.value().nested() {
            if let (Ok(key), Some(signature)) = (self.key(n.signer), n.signature) {
                batch.push(source, n.signer, key, n.body, signature);
            }
        }
    }

    /// Adds a client request's signature to `batch`, unless this keyring verified the request before.
    fn gather_request(
        &self,
        request: &Signed<Request>,
        source: Principal,
        batch: &mut SignatureBatch,
    ) {
        if request.signature().is_some() && !self.seen.contains(&key_of(request)) {
            self.gather(request, source, batch);
        }
    }

    /// As `verify`, with the signatures `checked` holds taken as valid.
    fn verify_in<T: Body>(
        &self,
        signed: Signed<T>,
        checked: &Checked,
    ) -> Result<Verified<T>, AuthError> {
        let signer = signed.value().signer();
        match signed.seal() {
            Seal::Signature(signature) => {
                let key = self.key(signer)?;
                if !checked.holds(signer, key, signed.body(), signature) {
                    return Err(AuthError::BadSignature(signer));
                }
            }
            Seal::Authenticator(authenticator) => {
                let sessions = self
                    .sessions
                    .as_ref()
                    .ok_or(AuthError::MacsNotAccepted(signer))?;
                sessions.check(signer, &signed.body_digest(), authenticator)?;
            }
            // Authentic only as it arrives from its sender's own connection: `verify_replica_msg` takes it.
            Seal::Link => return Err(AuthError::Unsealed(signer)),
        }
        self.verify_nested(&signed.value().nested(), checked)?;
        Ok(Verified::new(signed))
    }

    /// The nested signatures of a VIEW-CHANGE or NEW-VIEW.
    fn verify_nested(
        &self,
        nested: &[NestedSignature<'_>],
        checked: &Checked,
    ) -> Result<(), AuthError> {
        for (index, n) in nested.iter().enumerate() {
            let bad = || AuthError::BadNestedSignature {
                index,
                signer: n.signer,
            };
            let key = self.key(n.signer).map_err(|_| bad())?;
            // Only requests and replies decode without a signature, and neither is ever carried inside another
            // signed message; a nested message without one fails here all the same.
            let signature = n.signature.ok_or_else(bad)?;
            if !checked.holds(n.signer, key, n.body, signature) {
                return Err(bad());
            }
        }
        Ok(())
    }

    /// Checks each message, all their signatures in one batch; each result says whether its message passed.
    pub fn verify_each<T: Body>(
        &self,
        items: Vec<Signed<T>>,
    ) -> Vec<Result<Verified<T>, AuthError>> {
        self.judged_together(
            items,
            |s, batch| self.gather(s, s.value().signer(), batch),
            |s, checked| self.verify_in(s, checked),
        )
    }

    /// Gathers the signatures of all `items` into one batch and checks it, then judges each item, in order, with
    /// what the batch found valid.
    fn judged_together<T, R>(
        &self,
        items: Vec<T>,
        gather: impl Fn(&T, &mut SignatureBatch),
        mut judge: impl FnMut(T, &mut Checked) -> R,
    ) -> Vec<R> {
        let mut batch = SignatureBatch::default();
        for item in &items {
            gather(item, &mut batch);
        }
        let mut checked = batch.checked();
        items
            .into_iter()
            .map(|item| judge(item, &mut checked))
            .collect()
    }

    /// A client's request, checked once: a request this keyring verified before (the same body with the same
    /// signature) is not checked again.
    pub fn verify_request(&self, request: Signed<Request>) -> Result<Verified<Request>, AuthError> {
        self.verify_request_in(request, &Checked::default())
    }

    /// As `verify_request` for each of `requests`, their signatures checked in one batch; each result says
    /// whether its request passed.
    pub fn verify_each_request(
        &self,
        requests: Vec<Signed<Request>>,
    ) -> Vec<Result<Verified<Request>, AuthError>> {
        self.judged_together(
            requests,
            |r, batch| self.gather_request(r, r.value().signer(), batch),
            |r, checked| self.verify_request_in(r, checked),
        )
    }

    fn verify_request_in(
        &self,
        request: Signed<Request>,
        checked: &Checked,
    ) -> Result<Verified<Request>, AuthError> {
        if request.signature().is_none() {
            // A MAC costs less to check than to look up.
            return self.verify_in(request, checked);
        }
        let key = key_of(&request);
        if self.seen.contains(&key) {
            return Ok(Verified::new(request));
        }
        let verified = self.verify_in(request, checked)?;
        self.seen.insert(key);
        Ok(verified)
    }

    /// The client requests of a batch: all of them authentic, or an error naming one that is not. Signed
    /// requests verified before (typically, received from their client first) are not checked again; the
    /// other signed ones are checked in one batch; MAC-sealed ones each against this replica's own entry.
    pub fn verify_requests(
        &self,
        batch: Vec<Signed<Request>>,
    ) -> Result<Vec<Verified<Request>>, AuthError> {
        self.verify_requests_with(batch, &mut Checked::default(), |request| {
            self.verify(request)
        })
    }

    /// The requests of a batch whose digest a certificate already vouches for: a BATCH-DATA answering this
    /// replica's FETCH-BATCH (the core takes it only for a sequence number and digest a NEW-VIEW assigned, that
    /// is, a batch q replicas prepared), or a batch read back from this replica's own journal.
    ///
    /// Signed requests are checked as `verify_requests` checks them. A request sealed with MACs is taken on its
    /// shape alone (a known client, one MAC per replica): the certificate's correct replicas checked their own
    /// MACs before they prepared it, and this replica's own entry may be wrong if the client made it so. Checking
    /// it here would leave this replica unable ever to take a batch the others committed (see
    /// `ClientAuth::Macs`).
    pub fn verify_certified_requests(
        &self,
        batch: Vec<Signed<Request>>,
    ) -> Result<Vec<Verified<Request>>, AuthError> {
        self.verify_certified_requests_in(batch, &mut Checked::default())
    }

    fn verify_certified_requests_in(
        &self,
        batch: Vec<Signed<Request>>,
        checked: &mut Checked,
    ) -> Result<Vec<Verified<Request>>, AuthError> {
        self.verify_requests_with(batch, checked, |request| {
            let len = match request.seal() {
                Seal::Authenticator(authenticator) => authenticator.len(),
                Seal::Signature(_) | Seal::Link => return self.verify(request),
            };
            self.authenticator_shape(request.value().client, len)?;
            Ok(Verified::new(request))
        })
    }

    /// The requests of a PRE-PREPARE, as `verify_requests` checks them, except that a MAC-sealed request whose
    /// entry for this replica is wrong but which is otherwise well formed does not fail the batch: the batch
    /// comes back unvouched, for the core to hold until f backups vouch for it. Every other fault still fails
    /// it. Only a replica's keyring (session keys held by a replica) has MAC entries of its own to fail.
    fn verify_proposed_requests(
        &self,
        batch: Vec<Signed<Request>>,
        checked: &mut Checked,
    ) -> Result<Proposed, AuthError> {
        let verifier = match self.sessions.as_ref().map(|s| s.holder()) {
            Some(Principal::Replica(id)) => id,
            _ => {
                return self
                    .verify_requests_with(batch, checked, |request| self.verify(request))
                    .map(Proposed::Authentic);
            }
        };
        let mut own_mac_failed = false;
        let requests = self.verify_requests_with(batch, checked, |request| {
            let Seal::Authenticator(authenticator) = request.seal() else {
                return self.verify(request);
            };
            let client = request.value().client;
            self.authenticator_shape(client, authenticator.len())?;
            match self.verify(request.clone()) {
                Err(AuthError::BadMac(_)) => {
                    own_mac_failed = true;
                    // Not authentic for this replica: it leaves this function only as a plain request.
                    Ok(Verified::new(request))
                }
                checked => checked,
            }
        })?;
        if own_mac_failed {
            let requests = requests.into_iter().map(Verified::into_signed).collect();
            return Ok(Proposed::Unvouched { requests, verifier });
        }
        Ok(Proposed::Authentic(requests))
    }

    /// f, the most replicas that may be faulty.
    fn f(&self) -> usize {
        self.replicas.len().saturating_sub(1) / 3
    }

    /// A batch's requests, the MAC-sealed ones checked by `sealed_with_macs`, the signed ones not verified before
    /// in one batch (unless `checked` already holds them).
    fn verify_requests_with(
        &self,
        batch: Vec<Signed<Request>>,
        checked: &mut Checked,
        mut sealed_with_macs: impl FnMut(Signed<Request>) -> Result<Verified<Request>, AuthError>,
    ) -> Result<Vec<Verified<Request>>, AuthError> {
        let in_batch = |index: usize| {
            move |e: AuthError| AuthError::BadRequestInBatch {
                index,
                error: Box::new(e),
            }
        };
        let mut out: Vec<Option<Verified<Request>>> = Vec::with_capacity(batch.len());
        let mut unseen: Vec<(usize, SeenKey)> = Vec::new();
        let mut unseen_requests = Vec::new();
        for (index, request) in batch.into_iter().enumerate() {
            if request.signature().is_none() {
                out.push(Some(sealed_with_macs(request).map_err(in_batch(index))?));
                continue;
            }
            let key = key_of(&request);
            if self.seen.contains(&key) {
                out.push(Some(Verified::new(request)));
            } else {
                out.push(None);
                unseen.push((index, key));
                unseen_requests.push(request);
            }
        }
        // Those a check here already judged (gathered with the message they came in) are not checked again.
        let mut batch = SignatureBatch::default();
        for request in &unseen_requests {
            let signer = request.value().signer();
            if let Some(signature) = request.signature()
                && checked.verdict(signer, request.body(), signature).is_none()
            {
                self.gather(request, signer, &mut batch);
            }
        }
        batch.check_into(checked);
        for ((index, key), request) in unseen.into_iter().zip(unseen_requests) {
            out[index] = Some(self.verify_in(request, checked).map_err(in_batch(index))?);
            self.seen.insert(key);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Whether `client` may seal requests with MACs here, and an authenticator of `len` bytes holds one MAC per
    /// replica.
    fn authenticator_shape(&self, client: ClientId, len: usize) -> Result<(), AuthError> {
        let sender = Principal::Client(client);
        if self.sessions.is_none() {
            return Err(AuthError::MacsNotAccepted(sender));
        }
        if !self.clients.contains_key(&client) {
            return Err(AuthError::UnknownSigner(sender));
        }
        let expected = self.replicas.len() * pbft_types::MAC_LEN;
        if len != expected {
            return Err(AuthError::BadAuthenticatorLength {
                sender,
                got: len,
                expected,
            });
        }
        Ok(())
    }

    /// A prepared certificate on its own (as a replica keeps it on disk): every signature in it checked.
    pub fn verify_prepared(&self, proof: PreparedProof) -> Result<VerifiedPrepared, AuthError> {
        let mut batch = SignatureBatch::default();
        let primary = proof.pre_prepare.value().signer();
        self.gather(&proof.pre_prepare, primary, &mut batch);
        for prepare in &proof.prepares {
            self.gather(prepare, prepare.value().signer(), &mut batch);
        }
        let checked = batch.checked();
        let pre_prepare = self.verify_in(proof.pre_prepare, &checked)?;
        let prepares = proof
            .prepares
            .into_iter()
            .map(|p| self.verify_in(p, &checked))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VerifiedPrepared {
            pre_prepare,
            prepares,
        })
    }

    /// Authenticates a message that arrived on the connection of replica `sender`: the replica's own signature
    /// (which must be `sender`'s) and, for a PRE-PREPARE, every request of its batch (a PRE-PREPARE whose only
    /// fault is this replica's own MAC entry of some request comes back unvouched). A forwarded REQUEST is signed
    /// by its client, not by the forwarding replica. The message's signatures are checked in one batch.
    pub fn verify_replica_msg(
        &self,
        sender: ReplicaId,
        msg: ReplicaMsg,
    ) -> Result<VerifiedMsg, AuthError> {
        let mut batch = SignatureBatch::default();
        self.gather_msg(sender, &msg, &mut batch);
        self.verify_replica_msg_in(sender, msg, &mut batch.checked())
    }

    /// As `verify_replica_msg` for each of `msgs`, the signatures of them all checked in one batch; the results
    /// come in the order of `msgs`. Messages from peers arrive a few at a time, and most carry one signature.
    pub fn verify_replica_msgs(
        &self,
        msgs: Vec<(ReplicaId, ReplicaMsg)>,
    ) -> Vec<Result<VerifiedMsg, AuthError>> {
        self.judged_together(
            msgs,
            |(sender, msg), batch| self.gather_msg(*sender, msg, batch),
            |(sender, msg), checked| self.verify_replica_msg_in(sender, msg, checked),
        )
    }

    /// Adds every signature `verify_replica_msg_in` will check in `msg`, which came on the connection of
    /// `sender`, to `batch`. A message signed by another replica than `sender` is refused before any signature
    /// is checked, so its signatures stay out.
    fn gather_msg(&self, sender: ReplicaId, msg: &ReplicaMsg, batch: &mut SignatureBatch) {
        let source = Principal::Replica(sender);
        if sent_by_its_signer(sender, msg).is_err() {
            return;
        }
        match msg {
            ReplicaMsg::PrePrepare {
                header,
                batch: requests,
            } => {
                self.gather(header, source, batch);
                for request in requests {
                    self.gather_request(request, source, batch);
                }
            }
            ReplicaMsg::BatchData {
                header,
                batch: requests,
            } => {
                self.gather(header, source, batch);
                for request in requests {
                    self.gather_request(request, source, batch);
                }
            }
            ReplicaMsg::Request(m) => self.gather_request(m, source, batch),
            ReplicaMsg::Prepare(m) => self.gather(m, source, batch),
            ReplicaMsg::Commit(m) => self.gather(m, source, batch),
            ReplicaMsg::Checkpoint(m) => self.gather(m, source, batch),
            ReplicaMsg::Status(m) => self.gather(m, source, batch),
            ReplicaMsg::FetchState(m) => self.gather(m, source, batch),
            ReplicaMsg::StateChunk(m) => self.gather(m, source, batch),
            ReplicaMsg::ViewChange(m) => self.gather(m, source, batch),
            ReplicaMsg::NewView(m) => self.gather(m, source, batch),
            ReplicaMsg::FetchBatch(m) => self.gather(m, source, batch),
        }
    }

    /// As `verify_replica_msg`, with the signatures `checked` holds taken as valid.
    fn verify_replica_msg_in(
        &self,
        sender: ReplicaId,
        msg: ReplicaMsg,
        checked: &mut Checked,
    ) -> Result<VerifiedMsg, AuthError> {
        sent_by_its_signer(sender, &msg)?;
        Ok(match msg {
            ReplicaMsg::PrePrepare { header, batch } => {
                let header = self.verify_in(header, checked)?;
                match self.verify_proposed_requests(batch, checked)? {
                    Proposed::Authentic(batch) => VerifiedMsg::PrePrepare { header, batch },
                    Proposed::Unvouched { requests, verifier } => VerifiedMsg::UnvouchedPrePrepare(
                        Unvouched::new(header, requests, verifier, self.f()),
                    ),
                }
            }
            ReplicaMsg::Prepare(m) => VerifiedMsg::Prepare(self.verify_in(m, checked)?),
            ReplicaMsg::Commit(m) => {
                match m.seal() {
                    // It came on its sender's own connection (checked above), which vouches for it.
                    Seal::Link if self.link_commits => VerifiedMsg::Commit(Verified::new(m)),
                    Seal::Link => {
                        return Err(AuthError::UnsealedNotAccepted(Principal::Replica(sender)));
                    }
                    _ => VerifiedMsg::Commit(self.verify_in(m, checked)?),
                }
            }
            ReplicaMsg::Checkpoint(m) => VerifiedMsg::Checkpoint(self.verify_in(m, checked)?),
            ReplicaMsg::Status(m) => VerifiedMsg::Status(self.verify_in(m, checked)?),
            ReplicaMsg::FetchState(m) => VerifiedMsg::FetchState(self.verify_in(m, checked)?),
            ReplicaMsg::StateChunk(m) => VerifiedMsg::StateChunk(self.verify_in(m, checked)?),
            ReplicaMsg::ViewChange(m) => VerifiedMsg::ViewChange(self.verify_in(m, checked)?),
            ReplicaMsg::NewView(m) => VerifiedMsg::NewView(self.verify_in(m, checked)?),
            ReplicaMsg::FetchBatch(m) => VerifiedMsg::FetchBatch(self.verify_in(m, checked)?),
            ReplicaMsg::BatchData { header, batch } => {
                let header = self.verify_in(header, checked)?;
                let batch = self.verify_certified_requests_in(batch, checked)?;
                VerifiedMsg::BatchData { header, batch }
            }
            ReplicaMsg::Request(m) => VerifiedMsg::Request(self.verify_request_in(m, checked)?),
        })
    }
}

/// That a message on the connection of replica `sender` is signed by `sender` itself; a REQUEST is signed by its
/// client and forwarded by `sender`.
fn sent_by_its_signer(sender: ReplicaId, msg: &ReplicaMsg) -> Result<(), AuthError> {
    let signer = msg.signer();
    if signer == Principal::Replica(sender) || matches!(msg, ReplicaMsg::Request(_)) {
        Ok(())
    } else {
        Err(AuthError::SenderMismatch { signer, sender })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyPair;
    use bytes::Bytes;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::{Scalar, clamp_integer};
    use pbft_types::{ClientInfo, Digest, Params, SeqNo, Timestamp, View};
    use sha2::{Digest as _, Sha512};

    fn keys() -> (Vec<KeyPair>, KeyPair, Keyring) {
        let replicas: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let client = KeyPair::from_seed([99; 32]);
        let keyring = Keyring::new(&keyring_config()).unwrap();
        (replicas, client, keyring)
    }

    /// The cluster of `keys`: four replicas (seeds 1 to 4) and client 5 (seed 99).
    fn keyring_config() -> ClusterConfig {
        ClusterConfig {
            replicas: (0..4)
                .map(|i| KeyPair::from_seed([i + 1; 32]).public_key())
                .collect(),
            clients: vec![ClientInfo {
                id: ClientId(5),
                public_key: KeyPair::from_seed([99; 32]).public_key(),
            }],
            params: Params::default(),
        }
    }

    fn prepare(replica: u64) -> Prepare {
        Prepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([3; 32]),
            replica: ReplicaId(replica),
        }
    }

    fn request(ts: u64) -> Request {
        Request {
            client: ClientId(5),
            timestamp: Timestamp(ts),
            operation: Bytes::from_static(b"put"),
        }
    }

    #[test]
    fn a_correct_signature_verifies() {
        let (replicas, _, keyring) = keys();
        let signed = replicas[1].sign(prepare(1));
        assert_eq!(keyring.verify(signed).unwrap().replica, ReplicaId(1));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (replicas, _, keyring) = keys();
        let forged = replicas[2].sign(prepare(1));
        assert_eq!(
            keyring.verify(forged),
            Err(AuthError::BadSignature(Principal::Replica(ReplicaId(1))))
        );
    }

    #[test]
    fn a_changed_body_is_refused() {
        let (replicas, _, keyring) = keys();
        let good = replicas[1].sign(prepare(1));
        let mut body = good.body().to_vec();
        let last = body.len() - 1;
        body[last] ^= 1;
        let tampered =
            Signed::from_parts(Bytes::from(body), *good.signature().unwrap(), prepare(1));
        assert!(keyring.verify(tampered).is_err());
    }

    #[test]
    fn an_unknown_signer_is_refused() {
        let (replicas, _, keyring) = keys();
        let signed = replicas[0].sign(prepare(9));
        assert_eq!(
            keyring.verify(signed),
            Err(AuthError::UnknownSigner(Principal::Replica(ReplicaId(9))))
        );
    }

    #[test]
    fn a_request_verified_once_is_not_checked_again_but_another_signature_on_it_is() {
        let (_, client, keyring) = keys();
        let good = client.sign(request(1));
        assert!(keyring.verify_request(good.clone()).is_ok());
        // The same body under a forged signature: not the pair that was seen, so checked, and refused.
        let forged = Signed::from_parts(good.body().clone(), [7; 64], request(1));
        assert!(keyring.verify_request(forged.clone()).is_err());
        assert!(keyring.clone().verify_request(good.clone()).is_ok());
        // In a batch: the seen request passes, the forged one is named by its position.
        let other = client.sign(request(2));
        assert_eq!(
            keyring
                .verify_requests(vec![good.clone(), other.clone()])
                .map(|b| b.len()),
            Ok(2)
        );
        match keyring.verify_requests(vec![good, other, forged]) {
            Err(AuthError::BadRequestInBatch { index: 2, .. }) => {}
            other => panic!("expected the third request to be named, got {other:?}"),
        }
    }

    #[test]
    fn a_message_relayed_under_another_replica_is_refused() {
        let (replicas, _, keyring) = keys();
        let msg = ReplicaMsg::Prepare(replicas[1].sign(prepare(1)));
        assert_eq!(
            keyring.verify_replica_msg(ReplicaId(2), msg),
            Err(AuthError::SenderMismatch {
                signer: Principal::Replica(ReplicaId(1)),
                sender: ReplicaId(2)
            })
        );
    }

    /// The keyring of a cluster like `keys()`'s whose `replica_auth` is as given.
    fn keyring_with(replicas: &[KeyPair], auth: ReplicaAuth) -> Keyring {
        let config = ClusterConfig {
            replicas: replicas.iter().map(KeyPair::public_key).collect(),
            clients: Vec::new(),
            params: Params {
                replica_auth: auth,
                ..Params::default()
            },
        };
        Keyring::new(&config).unwrap()
    }

    /// A COMMIT of `replica`'s sealed by its link only, as it decodes at the receiver.
    fn link_sealed_commit(replicas: &[KeyPair], replica: u64) -> ReplicaMsg {
        let signer = crate::Signer::new(
            Principal::Replica(ReplicaId(replica)),
            replicas[replica as usize].clone(),
        );
        let commit = signer.seal_for_link(commit(replica, 1)).into_signed();
        let bytes = ReplicaMsg::Commit(commit).encode();
        let limits = pbft_types::DecodeLimits {
            max_message_size: 1 << 20,
            max_batch_size: 16,
        };
        ReplicaMsg::decode(&bytes, limits).unwrap()
    }

    #[test]
    fn a_commit_sealed_by_its_link_passes_only_from_its_sender_and_only_where_the_cluster_allows_it()
     {
        let (replicas, _, _) = keys();
        let macs = keyring_with(&replicas, ReplicaAuth::Macs);
        let msg = link_sealed_commit(&replicas, 1);
        let ReplicaMsg::Commit(decoded) = &msg else {
            panic!("{msg:?}")
        };
        assert_eq!(decoded.seal(), &Seal::Link);
        assert!(matches!(
            macs.verify_replica_msg(ReplicaId(1), msg.clone()),
            Ok(VerifiedMsg::Commit(_))
        ));
        // Relayed by another replica, it proves nothing.
        assert_eq!(
            macs.verify_replica_msg(ReplicaId(2), msg.clone()),
            Err(AuthError::SenderMismatch {
                signer: Principal::Replica(ReplicaId(1)),
                sender: ReplicaId(2)
            })
        );
        // Outside its link (a certificate, a third party), it is refused.
        assert_eq!(
            macs.verify(decoded.clone()).map(|_| ()),
            Err(AuthError::Unsealed(Principal::Replica(ReplicaId(1))))
        );
        // A cluster of signed COMMITs refuses it even from its sender.
        let signatures = keyring_with(&replicas, ReplicaAuth::Signatures);
        assert_eq!(
            signatures.verify_replica_msg(ReplicaId(1), msg).map(|_| ()),
            Err(AuthError::UnsealedNotAccepted(Principal::Replica(
                ReplicaId(1)
            )))
        );
        // A signed COMMIT still passes where unsigned ones are allowed.
        let signed = ReplicaMsg::Commit(replicas[1].sign(commit(1, 1)));
        assert!(macs.verify_replica_msg(ReplicaId(1), signed).is_ok());
    }

    #[test]
    fn only_a_commit_may_come_without_a_seal() {
        let (replicas, _, _) = keys();
        let signer = crate::Signer::new(Principal::Replica(ReplicaId(1)), replicas[1].clone());
        let commit = signer.seal_for_link(commit(1, 1)).into_signed();
        // The same unsealed envelope shape, with a PREPARE's body: refused when decoded.
        let prepare_body = prepare(1).encode_body();
        let envelope = pbft_types::wire::SignedEnvelope {
            body: prepare_body,
            signature: Bytes::new(),
            authenticator: Bytes::new(),
        };
        assert!(Signed::<Prepare>::from_envelope(envelope).is_err());
        assert!(Signed::<Commit>::from_envelope(commit.to_envelope()).is_ok());
    }

    fn commit(replica: u64, seq: u64) -> Commit {
        Commit {
            view: View(0),
            seq: SeqNo(seq),
            digest: Digest([3; 32]),
            replica: ReplicaId(replica),
        }
    }

    /// A PREPARE, COMMIT and CHECKPOINT from each of replicas 1 to 3, each as if received from its signer.
    fn normal_case_messages(replicas: &[KeyPair]) -> Vec<(ReplicaId, ReplicaMsg)> {
        normal_case_messages_at(replicas, 1)
    }

    fn normal_case_messages_at(replicas: &[KeyPair], seq: u64) -> Vec<(ReplicaId, ReplicaMsg)> {
        let mut msgs = Vec::new();
        for r in 1..4u64 {
            let key = &replicas[r as usize];
            let prepare = Prepare {
                seq: SeqNo(seq),
                ..prepare(r)
            };
            let checkpoint = Checkpoint {
                seq: SeqNo(128 * seq),
                digest: Digest([r as u8; 32]),
                replica: ReplicaId(r),
            };
            let commit = commit(r, seq);
            msgs.push((ReplicaId(r), ReplicaMsg::Prepare(key.sign(prepare))));
            msgs.push((ReplicaId(r), ReplicaMsg::Commit(key.sign(commit))));
            msgs.push((ReplicaId(r), ReplicaMsg::Checkpoint(key.sign(checkpoint))));
        }
        msgs
    }

    /// What each result says of its message (the accepted message's signed form, or the refusal), next to
    /// what the input was, so a test sees both a wrong verdict and a result out of place.
    fn verdicts(
        keyring: &Keyring,
        msgs: Vec<(ReplicaId, ReplicaMsg)>,
    ) -> Vec<Result<ReplicaMsg, AuthError>> {
        let one_by_one: Vec<_> = msgs
            .iter()
            .cloned()
            .map(|(sender, msg)| keyring.verify_replica_msg(sender, msg))
            .map(|r| r.map(|m| m.to_replica_msg()))
            .collect();
        let together: Vec<_> = keyring
            .verify_replica_msgs(msgs)
            .into_iter()
            .map(|r| r.map(|m| m.to_replica_msg()))
            .collect();
        assert_eq!(
            together, one_by_one,
            "a batch judged differently from single checks"
        );
        together
    }

    #[test]
    fn many_correct_replica_messages_all_pass_in_order() {
        let (replicas, _, keyring) = keys();
        let msgs = normal_case_messages(&replicas);
        let expected: Vec<_> = msgs.iter().map(|(_, m)| Ok(m.clone())).collect();
        assert_eq!(expected.len(), 9);
        assert_eq!(verdicts(&keyring, msgs), expected);
    }

    #[test]
    fn a_forged_signature_among_many_refuses_only_its_message() {
        let (replicas, _, keyring) = keys();
        let mut msgs = normal_case_messages(&replicas);
        let mut expected: Vec<_> = msgs.iter().map(|(_, m)| Ok(m.clone())).collect();
        // Replica 2's COMMIT, one bit of its signature flipped.
        let ReplicaMsg::Commit(good) = &msgs[4].1 else {
            panic!("the fifth message is replica 2's COMMIT")
        };
        let mut signature = *good.signature().expect("signed");
        signature[10] ^= 1;
        let forged = Signed::from_parts(good.body().clone(), signature, *good.value());
        msgs[4].1 = ReplicaMsg::Commit(forged);
        expected[4] = Err(AuthError::BadSignature(Principal::Replica(ReplicaId(2))));
        assert_eq!(verdicts(&keyring, msgs), expected);
    }

    #[test]
    fn a_message_among_many_signed_by_another_replica_than_its_sender_is_refused() {
        let (replicas, _, keyring) = keys();
        let mut msgs = normal_case_messages(&replicas);
        let mut expected: Vec<_> = msgs.iter().map(|(_, m)| Ok(m.clone())).collect();
        // Replica 1's CHECKPOINT, validly signed, arriving on replica 3's connection.
        msgs[2].0 = ReplicaId(3);
        expected[2] = Err(AuthError::SenderMismatch {
            signer: Principal::Replica(ReplicaId(1)),
            sender: ReplicaId(3),
        });
        assert_eq!(verdicts(&keyring, msgs), expected);
    }

    #[test]
    fn no_messages_give_no_results() {
        let (_, _, keyring) = keys();
        assert!(verdicts(&keyring, Vec::new()).is_empty());
    }

    /// What replica `seed`'s holder can sign and only a faulty one would: a signature whose nonce point carries
    /// the torsion point `torsion`. The equation holds in the prime-order subgroup, so only the torsion component
    /// is off: ZIP 215's cofactor removes it, a cofactorless check would see it (a batch, for some coefficients).
    fn sign_with_torsion<T: Body>(seed: [u8; 32], value: T, torsion: EdwardsPoint) -> Signed<T> {
        let nonce = Scalar::from(12345u64);
        let r = (EdwardsPoint::mul_base(&nonce) + torsion).compress();
        sign_with_nonce_point(seed, value, nonce, *r.as_bytes())
    }

    /// What replica `seed`'s holder can sign with nonce `nonce` and `r` as the encoding of its nonce point (which
    /// must decode to nonce times the base point, plus any small torsion component).
    fn sign_with_nonce_point<T: Body>(
        seed: [u8; 32],
        value: T,
        nonce: Scalar,
        r: [u8; 32],
    ) -> Signed<T> {
        let hash: [u8; 64] = Sha512::digest(seed).into();
        let mut low = [0; 32];
        low.copy_from_slice(&hash[..32]);
        let secret = Scalar::from_bytes_mod_order(clamp_integer(low));
        let public = EdwardsPoint::mul_base(&secret).compress();
        let body = value.encode_body();
        let challenge: [u8; 64] = Sha512::new()
            .chain_update(r)
            .chain_update(public.as_bytes())
            .chain_update(&body)
            .finalize()
            .into();
        let s = nonce + Scalar::from_bytes_mod_order_wide(&challenge) * secret;
        let mut signature = [0; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(s.as_bytes());
        Signed::from_parts(body, signature, value)
    }

    /// ZIP 215 takes a nonce point of small order and a non-canonical encoding of it, which only the key's own
    /// holder can make; whatever the rule, a batch must judge them as a check alone does.
    #[test]
    fn a_small_order_or_non_canonical_nonce_point_is_judged_alike_alone_and_together() {
        let (replicas, _, keyring) = keys();
        let small_order = ReplicaMsg::Commit(sign_with_nonce_point(
            [4; 32],
            commit(3, 9),
            Scalar::ZERO,
            *EIGHT_TORSION[1].compress().as_bytes(),
        ));
        // The identity point (y = 1) written as y = p + 1.
        let mut identity_plus_p = [0xff; 32];
        identity_plus_p[0] = 0xee;
        identity_plus_p[31] = 0x7f;
        let non_canonical = ReplicaMsg::Commit(sign_with_nonce_point(
            [4; 32],
            commit(3, 10),
            Scalar::ZERO,
            identity_plus_p,
        ));
        for crafted in [small_order, non_canonical] {
            let mut msgs = normal_case_messages(&replicas);
            msgs.push((ReplicaId(3), crafted.clone()));
            let together = verdicts(&keyring, msgs);
            assert!(together.iter().all(Result::is_ok), "{together:?}");
        }
    }

    /// A valid signature moved onto other bytes, in the same call as the message it was made for: the batch's
    /// verdict on the original must not pass the copy.
    #[test]
    fn a_signature_moved_onto_another_body_in_the_same_batch_is_refused() {
        let (replicas, _, keyring) = keys();
        let mut msgs = normal_case_messages(&replicas);
        let mut expected: Vec<_> = msgs.iter().map(|(_, m)| Ok(m.clone())).collect();
        let ReplicaMsg::Prepare(original) = &msgs[3].1 else {
            panic!("the fourth message is replica 2's PREPARE")
        };
        let mut moved_value = *original.value();
        moved_value.seq = SeqNo(moved_value.seq.0 + 1);
        let moved = Signed::from_parts(
            moved_value.encode_body(),
            *original.signature().expect("signed"),
            moved_value,
        );
        let sender = msgs[3].0;
        msgs.push((sender, ReplicaMsg::Prepare(moved)));
        expected.push(Err(AuthError::BadSignature(Principal::Replica(sender))));
        assert_eq!(verdicts(&keyring, msgs), expected);
    }

    /// A signature whose nonce point carries a torsion component is valid under ZIP 215 (the cofactor removes
    /// it), and a cofactorless batch check would take it only for some batch coefficients. It is judged the
    /// same, valid, alone and in every company.
    #[test]
    fn a_signature_with_a_torsion_component_is_judged_alike_whatever_shares_the_call() {
        let (replicas, _, keyring) = keys();
        // Replica 3's key (seed [4; 32]), with a point of order 2 added to the nonce point.
        let crafted =
            ReplicaMsg::Commit(sign_with_torsion([4; 32], commit(3, 9), EIGHT_TORSION[4]));
        assert_eq!(
            keyring
                .verify_replica_msg(ReplicaId(3), crafted.clone())
                .map(|m| m.to_replica_msg()),
            Ok(crafted.clone())
        );
        for seq in 1..=16 {
            let mut msgs = normal_case_messages_at(&replicas, seq);
            msgs.push((ReplicaId(3), crafted.clone()));
            let expected: Vec<_> = msgs.iter().map(|(_, m)| Ok(m.clone())).collect();
            assert_eq!(verdicts(&keyring, msgs), expected, "seq {seq}");
        }
    }

    /// ZIP 215 refuses a signature whose scalar is not reduced: s + l satisfies the equation as s does, so taking
    /// it would make every signature malleable by anyone.
    #[test]
    fn a_signature_with_an_unreduced_scalar_is_refused_alone_and_in_a_batch() {
        const ORDER: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let (replicas, _, keyring) = keys();
        let good = replicas[2].sign(commit(2, 7));
        let mut signature = *good.signature().expect("signed");
        let mut carry = 0u16;
        for (byte, order) in signature[32..].iter_mut().zip(ORDER) {
            let sum = u16::from(*byte) + u16::from(order) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        let unreduced = ReplicaMsg::Commit(Signed::from_parts(
            good.body().clone(),
            signature,
            *good.value(),
        ));
        let refused = Err(AuthError::BadSignature(Principal::Replica(ReplicaId(2))));
        let mut msgs = normal_case_messages(&replicas);
        let mut expected: Vec<_> = msgs.iter().map(|(_, m)| Ok(m.clone())).collect();
        msgs.push((ReplicaId(2), unreduced));
        expected.push(refused);
        assert_eq!(verdicts(&keyring, msgs), expected);
    }

    #[test]
    fn batch_verification_finds_the_bad_signature() {
        let (replicas, client, keyring) = keys();
        let mut batch: Vec<Signed<Request>> = (1..=5).map(|t| client.sign(request(t))).collect();
        assert!(keyring.verify_each(batch.clone()).iter().all(Result::is_ok));
        batch[3] = replicas[0].sign(request(4));
        let results = keyring.verify_each(batch);
        let bad: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(bad, vec![3]);
    }

    /// A client request signed with a torsion component in its nonce, among honest ones: taken in every batch it
    /// is put in, by every path that checks requests, as it is taken alone.
    #[test]
    fn a_request_signed_with_a_torsion_component_is_taken_alike_in_every_batch() {
        let (_, client, _) = keys();
        let crafted = sign_with_torsion([99; 32], request(1000), EIGHT_TORSION[4]);
        let alone = Keyring::new(&keyring_config()).expect("valid keys");
        assert!(alone.verify(crafted.clone()).is_ok());
        for size in 1..=16u64 {
            // A keyring of its own each time, so that no request counts as seen.
            let keyring = Keyring::new(&keyring_config()).expect("valid keys");
            let mut batch: Vec<Signed<Request>> = (1..=size)
                .map(|t| client.sign(request(100 * size + t)))
                .collect();
            batch.push(crafted.clone());
            assert!(keyring.verify_each(batch.clone()).iter().all(Result::is_ok));
            let keyring = Keyring::new(&keyring_config()).expect("valid keys");
            assert_eq!(
                keyring.verify_requests(batch.clone()).map(|b| b.len()),
                Ok(batch.len()),
                "batch of {size}"
            );
        }
    }

    #[test]
    fn a_pre_prepare_with_a_forged_request_is_refused() {
        let (replicas, client, keyring) = keys();
        let header = replicas[0].sign(PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([0; 32]),
            replica: ReplicaId(0),
        });
        let batch = vec![client.sign(request(1)), replicas[0].sign(request(2))];
        let result =
            keyring.verify_replica_msg(ReplicaId(0), ReplicaMsg::PrePrepare { header, batch });
        assert!(matches!(
            result,
            Err(AuthError::BadRequestInBatch { index: 1, .. })
        ));
    }

    #[test]
    fn weak_and_invalid_keys_are_refused_at_load() {
        let mut config = ClusterConfig {
            replicas: (1..=4)
                .map(|i| KeyPair::from_seed([i; 32]).public_key())
                .collect(),
            clients: vec![],
            params: Params::default(),
        };
        // The identity point encodes as 1 followed by zeros: a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        config.replicas[2] = identity;
        assert_eq!(
            Keyring::new(&config).err(),
            Some(KeyError::Weak(Principal::Replica(ReplicaId(2))))
        );
    }

    fn view_change(replicas: &[KeyPair], forge_prepare: bool) -> Signed<ViewChange> {
        let pre_prepare = replicas[0].sign(PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: Digest([3; 32]),
            replica: ReplicaId(0),
        });
        let prepares = (1..3)
            .map(|r| {
                let key = if forge_prepare && r == 2 { 1 } else { r };
                replicas[key as usize].sign(prepare(r))
            })
            .collect();
        replicas[3].sign(ViewChange {
            new_view: View(1),
            stable_seq: SeqNo(0),
            checkpoint_proof: vec![],
            prepared: vec![pbft_types::PreparedProof {
                pre_prepare,
                prepares,
            }],
            replica: ReplicaId(3),
        })
    }

    #[test]
    fn a_view_change_is_verified_down_to_its_certificates() {
        let (replicas, _, keyring) = keys();
        let good = keyring.verify(view_change(&replicas, false)).unwrap();
        assert_eq!(good.prepared_certificates()[0].prepares.len(), 2);
        assert_eq!(
            keyring.verify(view_change(&replicas, true)),
            Err(AuthError::BadNestedSignature {
                index: 2,
                signer: Principal::Replica(ReplicaId(2))
            })
        );
    }

    #[test]
    fn a_new_view_with_a_forged_view_change_inside_is_refused() {
        let (replicas, _, keyring) = keys();
        let new_view = |forge: bool| {
            replicas[1].sign(NewView {
                view: View(1),
                view_changes: vec![view_change(&replicas, forge)],
                pre_prepares: vec![],
                replica: ReplicaId(1),
            })
        };
        let good = keyring.verify(new_view(false)).unwrap();
        assert_eq!(good.view_change_messages().len(), 1);
        assert!(matches!(
            keyring.verify(new_view(true)),
            Err(AuthError::BadNestedSignature { .. })
        ));
    }
}
