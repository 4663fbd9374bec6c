//! How the runtime reaches its peers: anything that can send a frame to one replica or to all. The TLS transport
//! is the real one; `Mesh` connects replicas of one process through channels, for tests.

use std::sync::Arc;

use bytes::Bytes;
use pbft_types::ReplicaId;
use tokio::sync::mpsc;

/// A frame from a peer whose identity the link authenticated (its content is not verified yet).
#[derive(Clone, Debug)]
pub struct Inbound {
    pub from: ReplicaId,
    pub frame: Bytes,
}

/// Sends encoded replica messages. Neither call may block: a link that cannot take a frame drops it (PBFT
/// recovers lost messages by retransmission).
pub trait PeerLink: Send + Sync + 'static {
    fn send(&self, to: ReplicaId, frame: Bytes);
    /// To every replica but this one.
    fn broadcast(&self, frame: Bytes);
}

/// Replicas of one process joined by bounded channels, with a switch per replica to cut it off (a crashed or
/// isolated replica, for tests).
pub struct Mesh {
    inboxes: Vec<mpsc::Sender<Inbound>>,
    cut: Vec<std::sync::atomic::AtomicBool>,
}

/// One replica's end of a `Mesh`.
pub struct MeshLink {
    mesh: Arc<Mesh>,
    me: ReplicaId,
}

impl Mesh {
    /// A mesh of `n` replicas and each one's inbox.
    pub fn new(n: usize, depth: usize) -> (Arc<Mesh>, Vec<mpsc::Receiver<Inbound>>) {
        let (inboxes, receivers) = (0..n).map(|_| mpsc::channel(depth)).unzip();
        let cut = (0..n)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect();
        (Arc::new(Mesh { inboxes, cut }), receivers)
    }

    pub fn link(self: &Arc<Self>, me: ReplicaId) -> MeshLink {
        MeshLink {
            mesh: self.clone(),
            me,
        }
    }

    /// Cuts replica `r` off (or reconnects it): nothing it sends or is sent arrives.
    pub fn set_cut(&self, r: ReplicaId, cut: bool) {
        if let Some(flag) = self.cut.get(r.index()) {
            flag.store(cut, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn is_cut(&self, r: ReplicaId) -> bool {
        self.cut
            .get(r.index())
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn deliver(&self, from: ReplicaId, to: ReplicaId, frame: Bytes) {
        if self.is_cut(from) || self.is_cut(to) {
            return;
        }
        if let Some(inbox) = self.inboxes.get(to.index()) {
            // A full inbox drops the frame, as a congested network would.
            let _ = inbox.try_send(Inbound { from, frame });
        }
    }
}

impl PeerLink for MeshLink {
    fn send(&self, to: ReplicaId, frame: Bytes) {
        self.mesh.deliver(self.me, to, frame);
    }

    fn broadcast(&self, frame: Bytes) {
        for to in 0..self.mesh.inboxes.len() {
            let to = ReplicaId(to as u64);
            if to != self.me {
                self.mesh.deliver(self.me, to, frame.clone());
            }
        }
    }
}
