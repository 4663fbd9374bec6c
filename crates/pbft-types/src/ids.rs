//! Ids and numbers as newtypes, so that a view can never be passed where a sequence number is expected.

use std::fmt;

macro_rules! number {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

number!(
    /// A replica's index in the cluster configuration, 0..n-1.
    ReplicaId(u64)
);
number!(
    /// A client's id, as listed in the cluster configuration.
    ClientId(u64)
);
number!(
    /// A view number. The primary of view v is replica v mod n.
    View(u64)
);
number!(
    /// A sequence number assigned by the primary to a batch of requests.
    SeqNo(u64)
);
number!(
    /// A client's request timestamp: strictly increasing per client, it makes execution exactly-once.
    Timestamp(u64)
);

impl View {
    pub fn next(self) -> View {
        View(self.0.saturating_add(1))
    }
}

impl SeqNo {
    pub fn next(self) -> SeqNo {
        SeqNo(self.0.saturating_add(1))
    }
}

impl ReplicaId {
    pub fn index(self) -> usize {
        // Replica ids are validated against n (a usize) before use.
        self.0 as usize
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        <[u8; 32]>::try_from(bytes).ok().map(Digest)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are enough to tell digests apart in logs and test failures.
        write!(f, "{}", &hex::encode(self.0)[..8])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Who signed a message: a replica or a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Replica(ReplicaId),
    Client(ClientId),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Replica(r) => write!(f, "replica {r}"),
            Principal::Client(c) => write!(f, "client {c}"),
        }
    }
}
