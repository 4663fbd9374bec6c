//! How many submissions each client may have waiting at one replica. The API's byte budget (`MAX_WAITING_BYTES`)
//! protects the replica's memory, but one client could fill it alone and leave every other client refused as
//! overloaded. A correct client has one request outstanding (retransmitted now and then), so a small number of
//! slots per client costs it nothing and bounds what a faulty one can take. Slots are counted by the client id
//! the request was authenticated as, so a client cannot use up another's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use pbft_types::ClientId;

/// The submissions waiting at one replica, by client.
#[derive(Debug)]
pub struct ClientSlots {
    per_client: usize,
    taken: Mutex<HashMap<ClientId, usize>>,
}

/// One waiting submission's slot, given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: ClientId,
}

impl ClientSlots {
    pub fn new(per_client: usize) -> Arc<ClientSlots> {
        Arc::new(ClientSlots {
            per_client,
            taken: Mutex::new(HashMap::new()),
        })
    }

    pub fn per_client(&self) -> usize {
        self.per_client
    }

    /// A slot for `client`, or `None` if it already has `per_client` submissions waiting.
    pub fn take(self: &Arc<Self>, client: ClientId) -> Option<ClientSlot> {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let count = taken.entry(client).or_insert(0);
        if *count >= self.per_client {
            if *count == 0 {
                taken.remove(&client);
            }
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: Arc::clone(self),
            client,
        })
    }

    /// Clients with at least one submission waiting.
    pub fn clients_waiting(&self) -> usize {
        self.taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut taken = self
            .slots
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = taken.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            // No entry outlives its client's last waiting submission: the map is as large as the clients
            // waiting now, whatever ids were ever seen.
            if *count == 0 {
                taken.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_at_most_its_slots_and_others_are_not_affected() {
        let slots = ClientSlots::new(2);
        let a1 = slots.take(ClientId(1));
        let a2 = slots.take(ClientId(1));
        assert!(a1.is_some() && a2.is_some());
        assert!(slots.take(ClientId(1)).is_none(), "a third one is refused");
        let b = slots.take(ClientId(2));
        assert!(b.is_some(), "another client still gets one");
        drop(a1);
        let a3 = slots.take(ClientId(1));
        assert!(a3.is_some(), "a slot given back can be taken again");
        assert!(slots.take(ClientId(1)).is_none());
        drop((a2, a3, b));
        assert_eq!(slots.clients_waiting(), 0, "no entry is left behind");
    }

    #[test]
    fn no_slots_means_every_submission_is_refused_and_nothing_is_kept() {
        let slots = ClientSlots::new(0);
        assert!(slots.take(ClientId(7)).is_none());
        assert_eq!(slots.clients_waiting(), 0);
    }
}
