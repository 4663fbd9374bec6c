//! The client requests a backup received directly and may have to pass on to the primary.
//!
//! Clients send a request to every replica at once (each replica answers on the call that carried it), so the
//! primary almost always has it already; a backup that forwarded every request at once would triple the
//! primary's incoming requests for nothing. A backup therefore waits a quarter of the request timeout and
//! forwards only what it has not seen in a PRE-PREPARE by then: a request the primary did not get (its client
//! could not reach it, or sent it to the backups only) still reaches it well before the view-change timer runs
//! out. Bounded by the number of clients: only the newest request of each is kept.

use std::collections::BTreeMap;

use pbft_crypto::Verified;
use pbft_types::{ClientId, Request};

#[derive(Debug, Default)]
pub struct Unrelayed {
    requests: BTreeMap<ClientId, Verified<Request>>,
}

impl Unrelayed {
    /// Keeps `request` to forward later, unless a request of its client at least as new is kept already.
    pub fn add(&mut self, request: Verified<Request>) {
        let newer = self
            .requests
            .get(&request.client)
            .is_none_or(|r| r.timestamp < request.timestamp);
        if newer {
            self.requests.insert(request.client, request);
        }
    }

    /// `request` was seen in a PRE-PREPARE (or executed): the primary has it, and every older one of its client.
    pub fn seen(&mut self, request: &Request) {
        if self
            .requests
            .get(&request.client)
            .is_some_and(|r| r.timestamp <= request.timestamp)
        {
            self.requests.remove(&request.client);
        }
    }

    /// Every request kept, leaving none.
    pub fn take_all(&mut self) -> Vec<Verified<Request>> {
        std::mem::take(&mut self.requests).into_values().collect()
    }
}
