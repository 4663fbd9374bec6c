//! Checking a whole chain, offline, with nothing but the cluster's public keys and the genesis: each block's
//! certificate and Merkle root, each link, and, by replaying every request on a fresh ledger, each result and
//! state root. A chain that passes is the chain the cluster committed, executed as the protocol executes it.

use std::collections::HashMap;

use pbft_crypto::{KeyError, Keyring};
use pbft_types::{Body, ClientId, ClusterConfig, Digest, Request, Timestamp, View, wire};
use prost::Message;
use thiserror::Error;

use super::block::{BlockFault, CertifiedBlock, Entry};
use super::{Genesis, Ledger};

/// The first block that failed, and why.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("block {height}: {fault}")]
pub struct BadBlock {
    pub height: u64,
    pub fault: BlockFault,
}

/// Checks blocks in chain order, from height 1.
pub struct ChainVerifier {
    keyring: Keyring,
    quorum: usize,
    replay: Ledger,
    /// The timestamp of the last request executed per client: the protocol executes a request only if it is newer.
    clients: HashMap<ClientId, Timestamp>,
    height: u64,
    head: Digest,
}

impl ChainVerifier {
    pub fn new(config: &ClusterConfig, genesis: &Genesis) -> Result<ChainVerifier, KeyError> {
        Ok(ChainVerifier {
            keyring: Keyring::new(config)?,
            quorum: config.quorum(),
            replay: Ledger::new(genesis),
            clients: HashMap::new(),
            height: 0,
            head: genesis.hash(),
        })
    }

    /// The height and hash of the last block accepted (0 and the genesis hash before the first).
    pub fn head(&self) -> (u64, Digest) {
        (self.height, self.head)
    }

    /// Checks the next block of the chain and returns the view its certificate is from. A block that fails
    /// leaves the verifier as it was.
    pub fn push(&mut self, block: &CertifiedBlock) -> Result<View, BadBlock> {
        let height = self.height + 1;
        let bad = |fault| BadBlock { height, fault };
        if block.height() != height {
            return Err(bad(BlockFault::Height {
                expected: height,
                found: block.height(),
            }));
        }
        if block.header.previous != self.head {
            return Err(bad(BlockFault::BrokenLink {
                expected: self.head,
                found: block.header.previous,
            }));
        }
        let view = block.check(&self.keyring, self.quorum).map_err(bad)?;
        // Replayed on copies, so that a bad block changes nothing.
        let mut replay = self.replay.fork();
        let mut clients = self.clients.clone();
        let mut entries = Vec::with_capacity(block.entries.len());
        for (index, entry) in block.entries.iter().enumerate() {
            let request = decode_request(&entry.request)
                .map_err(|reason| bad(BlockFault::BadRequest { index, reason }))?;
            let fresh = clients
                .get(&request.client)
                .is_none_or(|last| request.timestamp > *last);
            let result = match (fresh, &entry.result) {
                (true, Some(recorded)) => {
                    let result = replay.execute_operation(&request.operation);
                    if result != recorded {
                        return Err(bad(BlockFault::WrongResult { index }));
                    }
                    clients.insert(request.client, request.timestamp);
                    Some(result)
                }
                (false, None) => None,
                (true, None) => {
                    return Err(bad(BlockFault::WrongSkip {
                        index,
                        recorded: "not executed",
                        replayed: "executes",
                    }));
                }
                (false, Some(_)) => {
                    return Err(bad(BlockFault::WrongSkip {
                        index,
                        recorded: "executed",
                        replayed: "is a duplicate",
                    }));
                }
            };
            entries.push(Entry {
                request: entry.request.clone(),
                result,
            });
        }
        // `check` made sure the entries hash to the header's batch digest.
        let expected = replay.close_block(height, block.header.batch_digest, entries);
        if expected.header.state_root != block.header.state_root {
            return Err(bad(BlockFault::StateRoot));
        }
        // Every field is now accounted for; the bytes must be the same too (a canonical encoding was required).
        if expected.header_bytes() != block.header_bytes() {
            return Err(bad(BlockFault::NotCanonical));
        }
        self.replay = replay;
        self.clients = clients;
        self.height = height;
        self.head = block.hash();
        Ok(view)
    }
}

pub(super) fn decode_request(body: &[u8]) -> Result<Request, String> {
    let kind = wire::SignedBody::decode(body)
        .map_err(|e| e.to_string())?
        .kind
        .ok_or("no message kind")?;
    Request::from_wire(kind).map_err(|e| e.to_string())
}
