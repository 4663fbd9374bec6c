//! The last executed request and its reply, per client. Part of the replicated state: it enters the checkpoint
//! digest and travels with state transfer, so that exactly-once execution holds on every replica.

use std::collections::BTreeMap;

use bytes::Bytes;
use pbft_types::{ClientId, Digest, Timestamp};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastReply {
    pub timestamp: Timestamp,
    pub result: Bytes,
}

/// What to do with a request, given what its client already had executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness<'a> {
    /// Newer than anything executed for this client: execute it.
    Fresh,
    /// The last request executed for this client: do not execute again, resend this reply.
    LastExecuted(&'a LastReply),
    /// Older than the last executed request: nothing to do (its reply was superseded).
    Stale,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTable {
    entries: BTreeMap<ClientId, LastReply>,
}

impl ClientTable {
    pub fn freshness(&self, client: ClientId, timestamp: Timestamp) -> Freshness<'_> {
        match self.entries.get(&client) {
            None => Freshness::Fresh,
            Some(last) if timestamp > last.timestamp => Freshness::Fresh,
            Some(last) if timestamp == last.timestamp => Freshness::LastExecuted(last),
            Some(_) => Freshness::Stale,
        }
    }

    pub fn record(&mut self, client: ClientId, timestamp: Timestamp, result: Bytes) {
        self.entries.insert(client, LastReply { timestamp, result });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ClientId, &LastReply)> {
        self.entries.iter()
    }

    pub fn from_entries(entries: impl IntoIterator<Item = (ClientId, LastReply)>) -> ClientTable {
        ClientTable {
            entries: entries.into_iter().collect(),
        }
    }

    /// A digest of every entry in client order; results are length-prefixed so entries cannot run together.
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"pbft/client-table/v1");
        for (client, last) in &self.entries {
            h.update(client.0.to_le_bytes());
            h.update(last.timestamp.0.to_le_bytes());
            h.update((last.result.len() as u64).to_le_bytes());
            h.update(&last.result);
        }
        Digest(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_last_timestamp() {
        let mut t = ClientTable::default();
        assert_eq!(t.freshness(ClientId(1), Timestamp(5)), Freshness::Fresh);
        t.record(ClientId(1), Timestamp(5), Bytes::from_static(b"r5"));
        assert_eq!(t.freshness(ClientId(1), Timestamp(6)), Freshness::Fresh);
        assert!(
            matches!(t.freshness(ClientId(1), Timestamp(5)), Freshness::LastExecuted(l) if l.result == "r5")
        );
        assert_eq!(t.freshness(ClientId(1), Timestamp(4)), Freshness::Stale);
        assert_eq!(t.freshness(ClientId(2), Timestamp(1)), Freshness::Fresh);
    }

    #[test]
    fn the_digest_covers_every_field() {
        let mut a = ClientTable::default();
        a.record(ClientId(1), Timestamp(1), Bytes::from_static(b"ab"));
        let base = a.digest();
        let mut b = a.clone();
        b.record(ClientId(1), Timestamp(2), Bytes::from_static(b"ab"));
        assert_ne!(b.digest(), base);
        let mut c = a.clone();
        c.record(ClientId(1), Timestamp(1), Bytes::from_static(b"ac"));
        assert_ne!(c.digest(), base);
        let mut d = ClientTable::default();
        d.record(ClientId(2), Timestamp(1), Bytes::from_static(b"ab"));
        assert_ne!(d.digest(), base);
        assert_eq!(a.clone().digest(), base);
    }
}
