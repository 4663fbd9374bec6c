//! The client: one outstanding request at a time, sent to the primary it believes in, retransmitted to every
//! replica when no result arrives in time, and accepted once f+1 replicas agree on it.

use std::time::Duration;

use bytes::Bytes;
use pbft_crypto::{SessionKeys, Signer, Verified};
use pbft_types::{
    ClientId, ClusterConfig, Principal, ReplicaId, Reply, Request, Signed, Timestamp, View,
};
use thiserror::Error;

use crate::backoff::Backoff;
use crate::replies::ReplySet;
use crate::view_estimate::ViewEstimate;

/// Where the driver should send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Replica(ReplicaId),
    All,
}

/// What the client asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    /// Send the signed request to one replica or to all.
    Send {
        to: Destination,
        request: Signed<Request>,
    },
    /// Start the retransmission timer, or restart it if it is running.
    SetTimer(Duration),
    CancelTimer,
    /// The request completed: f+1 replicas from distinct ids returned the same result for this timestamp.
    Completed {
        timestamp: Timestamp,
        result: Bytes,
    },
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    #[error(
        "request {outstanding} has not completed yet: a client has one request outstanding at a time"
    )]
    Busy { outstanding: Timestamp },
    #[error("the operation is {size} bytes, more than the cluster accepts ({limit})")]
    OperationTooLarge { size: usize, limit: usize },
    #[error(
        "timestamp {last} was the last one possible: this client id cannot issue another request"
    )]
    TimestampsExhausted { last: Timestamp },
}

/// The request waiting for its result.
#[derive(Clone, Debug)]
struct Outstanding {
    /// Kept signed, so that a retransmission is the very same request: replicas that already hold it recognise
    /// it, and one that executed it resends its cached reply.
    request: Signed<Request>,
    replies: ReplySet,
}

impl Outstanding {
    fn timestamp(&self) -> Timestamp {
        self.request.value().timestamp
    }
}

/// A PBFT client, without IO. See the crate documentation for how a driver uses it.
#[derive(Clone, Debug)]
pub struct Client {
    config: ClusterConfig,
    id: ClientId,
    signer: Signer,
    /// Set when requests are sealed with MAC authenticators instead of signatures.
    sessions: Option<SessionKeys>,
    /// The timestamp of the latest request issued, 0 before the first: the next one is strictly larger.
    last_timestamp: Timestamp,
    outstanding: Option<Outstanding>,
    backoff: Backoff,
    views: ViewEstimate,
    view: View,
}

impl Client {
    /// `signer` must have principal `Principal::Client(id)`. `retransmit_after` is the first retransmission
    /// timeout.
    ///
    /// # Panics
    /// If `signer` belongs to a replica: that is a bug in the driver, never a consequence of input.
    pub fn new(config: ClusterConfig, signer: Signer, retransmit_after: Duration) -> Client {
        let Principal::Client(id) = signer.principal() else {
            panic!(
                "a client signs with a client's key, not with {}",
                signer.principal()
            );
        };
        let n = config.n();
        let needed = config.weak_quorum();
        Client {
            id,
            signer,
            sessions: None,
            last_timestamp: Timestamp(0),
            outstanding: None,
            backoff: Backoff::new(retransmit_after),
            views: ViewEstimate::new(n, needed),
            view: View(0),
            config,
        }
    }

    /// Seals requests with MAC authenticators under `sessions` (this client's sessions with the replicas)
    /// instead of signing them.
    ///
    /// # Panics
    /// If `sessions` belong to another principal: a bug in the driver.
    pub fn with_sessions(mut self, sessions: SessionKeys) -> Client {
        assert_eq!(
            sessions.holder(),
            Principal::Client(self.id),
            "a client seals with its own sessions"
        );
        self.sessions = Some(sessions);
        self
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The view the client believes current: the one whose primary gets its next request.
    pub fn view(&self) -> View {
        self.view
    }

    /// The timestamp of the request waiting for its result, if any.
    pub fn outstanding(&self) -> Option<Timestamp> {
        self.outstanding.as_ref().map(Outstanding::timestamp)
    }

    /// Whether `reply` would count towards the outstanding request, if it is authentic: a driver need not check
    /// the seal of one that would not (a reply to another request, or to none, which a faulty replica can send
    /// as often as it likes).
    pub fn wants(&self, reply: &Reply) -> bool {
        self.outstanding().is_some_and(|timestamp| {
            reply.client == self.id
                && reply.timestamp == timestamp
                && self.config.is_replica(reply.replica)
        })
    }

    /// Starts a request. `clock` is a hint from the driver (e.g. microseconds of wall time); the timestamp used is
    /// max(last timestamp + 1, clock), so timestamps are strictly increasing even if the clock is not. Using the
    /// clock keeps them increasing across restarts of a client that lost its last timestamp, as long as the
    /// clock moved on.
    ///
    /// Fails if a request is already outstanding (one outstanding request per client, as in PBFT), if the
    /// operation is larger than the replicas accept, or if no larger timestamp exists.
    pub fn submit(
        &mut self,
        operation: Bytes,
        clock: u64,
    ) -> Result<Vec<ClientOutput>, ClientError> {
        if let Some(outstanding) = &self.outstanding {
            return Err(ClientError::Busy {
                outstanding: outstanding.timestamp(),
            });
        }
        let limit = self.config.params.max_request_size;
        if operation.len() > limit {
            return Err(ClientError::OperationTooLarge {
                size: operation.len(),
                limit,
            });
        }
        let next =
            self.last_timestamp
                .0
                .checked_add(1)
                .ok_or(ClientError::TimestampsExhausted {
                    last: self.last_timestamp,
                })?;
        let timestamp = Timestamp(next.max(clock));
        let request = Request {
            client: self.id,
            timestamp,
            operation,
        };
        let request = match &self.sessions {
            Some(sessions) => sessions.seal_request(request),
            None => self.signer.sign(request).into_signed(),
        };
        self.last_timestamp = timestamp;
        self.outstanding = Some(Outstanding {
            request: request.clone(),
            replies: ReplySet::new(self.config.n(), self.config.weak_quorum()),
        });
        Ok(vec![
            ClientOutput::Send {
                to: Destination::Replica(self.config.primary(self.view)),
                request,
            },
            ClientOutput::SetTimer(self.backoff.current()),
        ])
    }

    /// A reply whose signature the driver verified with the Keyring.
    ///
    /// Replies for another client, for a request other than the outstanding one (stale or future), or from a
    /// replica id outside 0..n are ignored, and so is everything once the request has completed. On completion
    /// the timer is cancelled BEFORE `Completed` is reported, so that a driver which submits the next request
    /// while handling `Completed` does not then cancel that request's timer.
    pub fn on_reply(&mut self, reply: Verified<Reply>) -> Vec<ClientOutput> {
        let reply: &Reply = &reply;
        if !self.wants(reply) {
            return Vec::new();
        }
        let Some(outstanding) = &mut self.outstanding else {
            return Vec::new();
        };
        let timestamp = outstanding.timestamp();
        self.views.report(reply.replica, reply.view);
        self.view = self.view.max(self.views.estimate());
        let Some(result) = outstanding.replies.record(reply.replica, &reply.result) else {
            return Vec::new();
        };
        self.outstanding = None;
        self.backoff.reset();
        vec![
            ClientOutput::CancelTimer,
            ClientOutput::Completed { timestamp, result },
        ]
    }

    /// Gives up on the outstanding request, so that the next one can start. The replicas may still execute the
    /// abandoned request; its result is then never seen. Returns the outputs to carry out (the timer stops).
    pub fn abandon(&mut self) -> Vec<ClientOutput> {
        if self.outstanding.take().is_none() {
            return Vec::new();
        }
        self.backoff.reset();
        vec![ClientOutput::CancelTimer]
    }

    /// The retransmission timer fired: the request may have been lost, or the primary may be faulty. Sending it
    /// to every replica lets those that executed it resend their reply and the others forward it to the primary
    /// and start their view-change timer (PROTOCOL.md, view change). A timer that fires after completion (the
    /// driver may not have cancelled it in time) is ignored.
    pub fn on_timeout(&mut self) -> Vec<ClientOutput> {
        let Some(outstanding) = &self.outstanding else {
            return Vec::new();
        };
        vec![
            ClientOutput::Send {
                to: Destination::All,
                request: outstanding.request.clone(),
            },
            ClientOutput::SetTimer(self.backoff.grow()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::{KeyPair, Keyring};
    use pbft_types::{ClientInfo, Params};

    const CLIENT: ClientId = ClientId(7);
    const TIMEOUT: Duration = Duration::from_millis(100);

    /// A cluster of `n` replicas and one client, with real keys. The keyring knows `known` replicas (at least
    /// `n`), so that a test can hand the client a verified reply from a replica outside its own configuration.
    struct Cluster {
        replica_keys: Vec<KeyPair>,
        client_key: KeyPair,
        keyring: Keyring,
        client: Client,
    }

    fn config_of(replica_keys: &[KeyPair], client_key: &KeyPair) -> ClusterConfig {
        ClusterConfig {
            replicas: replica_keys.iter().map(KeyPair::public_key).collect(),
            clients: vec![ClientInfo {
                id: CLIENT,
                public_key: client_key.public_key(),
            }],
            params: Params::default(),
        }
    }

    fn cluster_with(n: usize, known: usize) -> Cluster {
        let replica_keys: Vec<KeyPair> = (0..known)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        let client_key = KeyPair::from_seed([200; 32]);
        let keyring = Keyring::new(&config_of(&replica_keys, &client_key)).expect("valid keys");
        let config = config_of(&replica_keys[..n], &client_key);
        config.validate().expect("valid config");
        let signer = Signer::new(Principal::Client(CLIENT), client_key.clone());
        Cluster {
            replica_keys,
            client_key,
            keyring,
            client: Client::new(config, signer, TIMEOUT),
        }
    }

    fn cluster(n: usize) -> Cluster {
        cluster_with(n, n)
    }

    impl Cluster {
        fn reply_for(
            &self,
            client: ClientId,
            replica: u64,
            view: u64,
            timestamp: Timestamp,
            result: &'static str,
        ) -> Verified<Reply> {
            let reply = Reply {
                view: View(view),
                timestamp,
                client,
                replica: ReplicaId(replica),
                result: Bytes::from_static(result.as_bytes()),
            };
            let signed = self.replica_keys[replica as usize].sign(reply);
            self.keyring
                .verify(signed)
                .expect("a correctly signed reply")
        }

        /// A reply of `replica` in `view` to the outstanding request.
        fn reply(&self, replica: u64, view: u64, result: &'static str) -> Verified<Reply> {
            let timestamp = self.client.outstanding().expect("a request is outstanding");
            self.reply_for(CLIENT, replica, view, timestamp, result)
        }

        fn deliver(&mut self, replica: u64, view: u64, result: &'static str) -> Vec<ClientOutput> {
            let reply = self.reply(replica, view, result);
            self.client.on_reply(reply)
        }

        /// The request the client must have signed for (`timestamp`, `operation`): ed25519 signatures are
        /// deterministic, so the expected value is exact.
        fn request(&self, timestamp: u64, operation: &'static str) -> Signed<Request> {
            self.client_key.sign(Request {
                client: CLIENT,
                timestamp: Timestamp(timestamp),
                operation: Bytes::from_static(operation.as_bytes()),
            })
        }

        fn submit(&mut self, operation: &'static str, clock: u64) -> Vec<ClientOutput> {
            self.client
                .submit(Bytes::from_static(operation.as_bytes()), clock)
                .expect("the client is idle")
        }

        /// Completes the outstanding request with replies from replicas 0..=f in view 0.
        fn complete(&mut self) -> Timestamp {
            let timestamp = self.client.outstanding().expect("a request is outstanding");
            let f = self.client.config.f() as u64;
            let mut outputs = Vec::new();
            for r in 0..=f {
                outputs = self.deliver(r, 0, "ok");
            }
            assert_eq!(outputs, completed(timestamp.0, "ok"));
            timestamp
        }
    }

    fn completed(timestamp: u64, result: &'static str) -> Vec<ClientOutput> {
        vec![
            ClientOutput::CancelTimer,
            ClientOutput::Completed {
                timestamp: Timestamp(timestamp),
                result: Bytes::from_static(result.as_bytes()),
            },
        ]
    }

    #[test]
    fn submit_sends_the_signed_request_to_the_primary_of_view_0_and_sets_the_timer() {
        let mut c = cluster(4);
        assert_eq!(c.client.id(), CLIENT);
        assert_eq!(c.client.view(), View(0));
        let outputs = c.submit("put a 1", 50);
        assert_eq!(
            outputs,
            vec![
                ClientOutput::Send {
                    to: Destination::Replica(ReplicaId(0)),
                    request: c.request(50, "put a 1"),
                },
                ClientOutput::SetTimer(TIMEOUT),
            ]
        );
        assert_eq!(c.client.outstanding(), Some(Timestamp(50)));
        // What the client sends passes the replicas' verification.
        let ClientOutput::Send { request, .. } = &outputs[0] else {
            panic!("first output is a Send");
        };
        assert!(c.keyring.verify(request.clone()).is_ok());
    }

    #[test]
    fn only_a_reply_that_would_count_is_wanted() {
        let mut c = cluster(4);
        let late = c.reply_for(CLIENT, 2, 0, Timestamp(10), "ok");
        assert!(!c.client.wants(&late), "nothing is outstanding");
        c.submit("a", 10);
        assert!(c.client.wants(&c.reply(1, 0, "ok")));
        assert!(
            !c.client
                .wants(&c.reply_for(CLIENT, 1, 0, Timestamp(9), "ok"))
        );
        assert!(
            !c.client
                .wants(&c.reply_for(ClientId(77), 1, 0, Timestamp(10), "ok"))
        );
        c.deliver(0, 0, "ok");
        c.deliver(1, 0, "ok");
        // f+1 matching replies completed it; the other replicas' replies come late.
        assert_eq!(c.client.outstanding(), None);
        assert!(!c.client.wants(&late));
    }

    #[test]
    fn a_second_request_while_one_is_outstanding_is_refused() {
        let mut c = cluster(4);
        c.submit("a", 10);
        assert_eq!(
            c.client.submit(Bytes::from_static(b"b"), 20),
            Err(ClientError::Busy {
                outstanding: Timestamp(10)
            })
        );
        // The refused request did not replace the outstanding one.
        assert_eq!(c.client.outstanding(), Some(Timestamp(10)));
        c.complete();
        assert!(c.client.submit(Bytes::from_static(b"b"), 20).is_ok());
    }

    #[test]
    fn timestamps_strictly_increase_even_when_the_clock_goes_backwards() {
        let mut c = cluster(4);
        let mut seen = Vec::new();
        for clock in [0, 1000, 5, 1000, 2000] {
            c.submit("op", clock);
            seen.push(c.complete().0);
        }
        assert_eq!(seen, vec![1, 1000, 1001, 1002, 2000]);
    }

    #[test]
    fn the_last_timestamp_cannot_be_followed() {
        let mut c = cluster(4);
        c.submit("op", u64::MAX);
        c.complete();
        assert_eq!(
            c.client.submit(Bytes::from_static(b"op"), 0),
            Err(ClientError::TimestampsExhausted {
                last: Timestamp(u64::MAX)
            })
        );
    }

    #[test]
    fn an_operation_larger_than_the_cluster_accepts_is_refused() {
        let mut c = cluster(4);
        let limit = c.client.config.params.max_request_size;
        assert_eq!(
            c.client.submit(Bytes::from(vec![0; limit + 1]), 1),
            Err(ClientError::OperationTooLarge {
                size: limit + 1,
                limit
            })
        );
        assert_eq!(c.client.outstanding(), None);
        assert!(c.client.submit(Bytes::from(vec![0; limit]), 1).is_ok());
    }

    fn f_replies_do_not_complete_but_f_plus_1_do(n: usize) {
        let mut c = cluster(n);
        c.submit("op", 7);
        let f = c.client.config.f() as u64;
        // Replies from the highest ids, so that the test does not depend on the primary answering.
        let ids: Vec<u64> = (0..n as u64).rev().collect();
        for &r in &ids[..f as usize] {
            assert_eq!(c.deliver(r, 0, "ok"), vec![], "n = {n}, reply of {r}");
        }
        assert_eq!(c.client.outstanding(), Some(Timestamp(7)));
        assert_eq!(c.deliver(ids[f as usize], 0, "ok"), completed(7, "ok"));
        assert_eq!(c.client.outstanding(), None);
    }

    #[test]
    fn f_matching_replies_do_not_complete_and_f_plus_1_do_with_4_replicas() {
        f_replies_do_not_complete_but_f_plus_1_do(4);
    }

    #[test]
    fn f_matching_replies_do_not_complete_and_f_plus_1_do_with_7_replicas() {
        f_replies_do_not_complete_but_f_plus_1_do(7);
    }

    #[test]
    fn a_replica_repeating_its_reply_counts_once() {
        let mut c = cluster(7);
        c.submit("op", 1);
        for _ in 0..3 {
            assert_eq!(c.deliver(4, 0, "ok"), vec![]);
        }
        assert_eq!(c.deliver(5, 0, "ok"), vec![]);
        assert_eq!(c.deliver(5, 0, "ok"), vec![]);
        assert_eq!(c.deliver(6, 0, "ok"), completed(1, "ok"));
    }

    #[test]
    fn a_replica_that_changes_its_result_counts_with_its_first_one() {
        let mut c = cluster(4);
        c.submit("op", 1);
        assert_eq!(c.deliver(1, 0, "a"), vec![]);
        assert_eq!(c.deliver(1, 0, "b"), vec![]);
        // Had the second reply of replica 1 replaced its first, "b" would now have two votes.
        assert_eq!(c.deliver(2, 0, "b"), vec![]);
        assert_eq!(c.deliver(3, 0, "a"), completed(1, "a"));
    }

    #[test]
    fn mismatching_results_do_not_combine() {
        let mut c = cluster(4);
        c.submit("op", 1);
        assert_eq!(c.deliver(0, 0, "a"), vec![]);
        assert_eq!(c.deliver(1, 0, "b"), vec![]);
        assert_eq!(c.deliver(2, 0, "c"), vec![]);
        assert_eq!(c.deliver(3, 0, "b"), completed(1, "b"));

        let mut c = cluster(7);
        c.submit("op", 1);
        for (r, result) in [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "c")] {
            assert_eq!(c.deliver(r, 0, result), vec![]);
        }
        assert_eq!(c.deliver(5, 0, "b"), completed(1, "b"));
    }

    #[test]
    fn replies_for_another_timestamp_or_client_are_ignored() {
        let mut c = cluster(4);
        c.submit("first", 10);
        c.complete();
        c.submit("second", 20);
        for r in 1..=3 {
            for wrong in [
                c.reply_for(CLIENT, r, 0, Timestamp(10), "ok"), // stale
                c.reply_for(CLIENT, r, 0, Timestamp(21), "ok"), // future
                c.reply_for(ClientId(8), r, 0, Timestamp(20), "ok"),
            ] {
                assert_eq!(c.client.on_reply(wrong), vec![]);
            }
        }
        // None of them was counted: one right reply is still one vote.
        assert_eq!(c.deliver(1, 0, "ok"), vec![]);
        assert_eq!(c.client.outstanding(), Some(Timestamp(20)));
        assert_eq!(c.deliver(2, 0, "ok"), completed(20, "ok"));
    }

    #[test]
    fn replies_from_replicas_outside_the_cluster_are_ignored() {
        // The keyring knows 7 replicas, the client's configuration only 4.
        let mut c = cluster_with(4, 7);
        c.submit("op", 1);
        for r in 4..7 {
            assert_eq!(c.deliver(r, 9, "ok"), vec![]);
        }
        assert_eq!(c.client.view(), View(0));
        assert_eq!(c.deliver(0, 0, "ok"), vec![]);
        assert_eq!(c.deliver(1, 0, "ok"), completed(1, "ok"));
    }

    #[test]
    fn replies_after_completion_are_ignored() {
        let mut c = cluster(4);
        c.submit("op", 1);
        c.complete();
        assert_eq!(
            c.client
                .on_reply(c.reply_for(CLIENT, 2, 0, Timestamp(1), "ok")),
            vec![]
        );
        assert_eq!(
            c.client
                .on_reply(c.reply_for(CLIENT, 2, 5, Timestamp(1), "x")),
            vec![]
        );
        assert_eq!(
            c.client
                .on_reply(c.reply_for(CLIENT, 3, 5, Timestamp(1), "x")),
            vec![]
        );
        assert_eq!(c.client.view(), View(0));
    }

    #[test]
    fn a_timeout_retransmits_the_same_request_to_all_with_a_doubled_timer() {
        let mut c = cluster(4);
        c.submit("op", 3);
        let mut timers = Vec::new();
        for _ in 0..5 {
            let outputs = c.client.on_timeout();
            let [
                ClientOutput::Send { to, request },
                ClientOutput::SetTimer(after),
            ] = &outputs[..]
            else {
                panic!("unexpected outputs {outputs:?}");
            };
            assert_eq!(*to, Destination::All);
            assert_eq!(*request, c.request(3, "op"));
            timers.push(after.as_millis());
        }
        assert_eq!(timers, vec![200, 400, 800, 800, 800]);

        // A completion resets the timeout, and a late timer does nothing.
        c.complete();
        assert_eq!(c.client.on_timeout(), vec![]);
        assert_eq!(c.submit("next", 0)[1], ClientOutput::SetTimer(TIMEOUT));
    }

    #[test]
    fn one_faulty_replica_cannot_move_the_client_to_its_view() {
        let mut c = cluster(4);
        c.submit("op", 1);
        assert_eq!(c.deliver(3, 1000, "ok"), vec![]);
        assert_eq!(c.client.view(), View(0));
        assert_eq!(c.deliver(0, 0, "ok"), completed(1, "ok"));
        assert_eq!(c.client.view(), View(0));
        // The faulty report is remembered, but a second replica only vouches for its own, lower view.
        c.submit("op", 2);
        assert_eq!(c.deliver(2, 1, "ok"), vec![]);
        assert_eq!(c.client.view(), View(1));
    }

    #[test]
    fn the_view_is_learned_from_f_plus_1_replies_and_used_for_the_next_request() {
        let mut c = cluster(7);
        c.submit("op", 1);
        assert_eq!(c.deliver(6, 12, "ok"), vec![]);
        assert_eq!(c.deliver(5, 9, "ok"), vec![]);
        assert_eq!(c.client.view(), View(0));
        // f + 1 = 3 replicas have now reported a view of at least 8.
        assert_eq!(c.deliver(4, 8, "ok"), completed(1, "ok"));
        assert_eq!(c.client.view(), View(8));
        assert_eq!(
            c.submit("next", 0),
            vec![
                ClientOutput::Send {
                    to: Destination::Replica(ReplicaId(1)),
                    request: c.request(2, "next"),
                },
                ClientOutput::SetTimer(TIMEOUT),
            ]
        );
        // Views never go back, even if replicas report older ones.
        c.complete();
        assert_eq!(c.client.view(), View(8));
    }

    #[test]
    #[should_panic(expected = "client's key")]
    fn a_replica_signer_is_refused() {
        let c = cluster(4);
        let signer = Signer::new(Principal::Replica(ReplicaId(0)), c.replica_keys[0].clone());
        Client::new(c.client.config.clone(), signer, TIMEOUT);
    }
}
