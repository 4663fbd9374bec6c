//! Requests the primary holds that are not yet in a batch: at most one per client (its newest), proposed in
//! arrival order. Bounded by the number of clients in the configuration.

use std::collections::{HashMap, VecDeque};

use pbft_crypto::Verified;
use pbft_types::{ClientId, Request};

#[derive(Debug, Default)]
pub struct Pending {
    order: VecDeque<ClientId>,
    requests: HashMap<ClientId, Verified<Request>>,
}

impl Pending {
    /// Queues a request, replacing an older one of the same client. Returns false if an equal or newer one is
    /// already queued.
    pub fn add(&mut self, request: Verified<Request>) -> bool {
        match self.requests.get(&request.client) {
            Some(queued) if queued.timestamp >= request.timestamp => false,
            Some(_) => {
                self.requests.insert(request.client, request);
                true
            }
            None => {
                self.order.push_back(request.client);
                self.requests.insert(request.client, request);
                true
            }
        }
    }

    /// Takes up to `max` requests, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<Verified<Request>> {
        let mut batch = Vec::with_capacity(max.min(self.order.len()));
        while batch.len() < max {
            let Some(client) = self.order.pop_front() else {
                break;
            };
            if let Some(r) = self.requests.remove(&client) {
                batch.push(r);
            }
        }
        batch
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}
