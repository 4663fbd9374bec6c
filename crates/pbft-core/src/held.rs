//! The requests a replica holds and has not seen execute: the newest of each client, from the client itself, from
//! a PRE-PREPARE, or proposed by this replica as primary. The view-change timer watches the oldest of them.
//! Bounded by the number of clients in the configuration.

use std::collections::BTreeMap;

use pbft_crypto::Verified;
use pbft_types::{ClientId, Request, Timestamp};

#[derive(Debug, Default)]
pub struct Held {
    /// Each client's newest held request and when it arrived (a counter: the core has no clock).
    requests: BTreeMap<ClientId, (u64, Verified<Request>)>,
    arrivals: u64,
}

impl Held {
    /// Holds `request` unless a request of its client at least as new is held already.
    pub fn hold(&mut self, request: Verified<Request>) {
        let newer = self
            .requests
            .get(&request.client)
            .is_none_or(|(_, r)| r.timestamp < request.timestamp);
        if newer {
            self.arrivals += 1;
            self.requests
                .insert(request.client, (self.arrivals, request));
        }
    }

    /// The client had the request with `timestamp` executed: what it held up to that one is done.
    pub fn executed(&mut self, client: ClientId, timestamp: Timestamp) {
        if self
            .requests
            .get(&client)
            .is_some_and(|(_, r)| r.timestamp <= timestamp)
        {
            self.requests.remove(&client);
        }
    }

    /// Whether exactly this request is still held.
    pub fn holds(&self, client: ClientId, timestamp: Timestamp) -> bool {
        self.requests
            .get(&client)
            .is_some_and(|(_, r)| r.timestamp == timestamp)
    }

    /// Whether a request of `client` at least as new as `timestamp` is held.
    pub fn holds_newer(&self, client: ClientId, timestamp: Timestamp) -> bool {
        self.requests
            .get(&client)
            .is_some_and(|(_, r)| r.timestamp >= timestamp)
    }

    /// The request held longest.
    pub fn oldest(&self) -> Option<(ClientId, Timestamp)> {
        self.requests
            .values()
            .min_by_key(|(arrival, _)| *arrival)
            .map(|(_, r)| (r.client, r.timestamp))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Verified<Request>) -> bool) {
        self.requests.retain(|_, (_, r)| keep(r));
    }

    /// Every held request, oldest first, leaving none held.
    pub fn take_all(&mut self) -> Vec<Verified<Request>> {
        let mut all: Vec<(u64, Verified<Request>)> =
            std::mem::take(&mut self.requests).into_values().collect();
        all.sort_by_key(|(arrival, _)| *arrival);
        all.into_iter().map(|(_, r)| r).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pbft_crypto::{KeyPair, Signer};
    use pbft_types::Principal;

    fn request(client: u64, ts: u64) -> Verified<Request> {
        let signer = Signer::new(
            Principal::Client(ClientId(client)),
            KeyPair::from_seed([client as u8; 32]),
        );
        signer.sign(Request {
            client: ClientId(client),
            timestamp: Timestamp(ts),
            operation: Bytes::from_static(b"op"),
        })
    }

    #[test]
    fn the_oldest_is_the_first_to_arrive_not_the_lowest_client() {
        let mut held = Held::default();
        held.hold(request(5, 1));
        held.hold(request(2, 1));
        assert_eq!(held.oldest(), Some((ClientId(5), Timestamp(1))));
        held.executed(ClientId(5), Timestamp(1));
        assert_eq!(held.oldest(), Some((ClientId(2), Timestamp(1))));
    }

    #[test]
    fn a_newer_request_replaces_the_older_and_arrives_anew() {
        let mut held = Held::default();
        held.hold(request(1, 1));
        held.hold(request(2, 1));
        held.hold(request(1, 2));
        held.hold(request(1, 1));
        assert!(held.holds(ClientId(1), Timestamp(2)));
        assert!(!held.holds(ClientId(1), Timestamp(1)));
        assert_eq!(held.oldest(), Some((ClientId(2), Timestamp(1))));
        held.executed(ClientId(1), Timestamp(1));
        assert!(
            held.holds(ClientId(1), Timestamp(2)),
            "an older execution leaves the newer held"
        );
        let order: Vec<u64> = held.take_all().iter().map(|r| r.client.0).collect();
        assert_eq!(order, vec![2, 1]);
        assert!(held.is_empty());
    }
}
