//! Blocks: what the hash chain covers (`BlockHeader`), the ordered requests with their outcomes (`Entry`), and
//! the commit certificate that proves the cluster ordered them (`CertifiedBlock`). Everything here checks a
//! block on its own; `verify::ChainVerifier` checks blocks against each other and against a replay.

use bytes::Bytes;
use pbft_crypto::{Keyring, batch_digest_of_bodies, digest_of};
use pbft_types::{Commit, Digest, ReplicaId, Signed, View, wire};
use prost::Message;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::merkle::{self, Step};

/// What the hash chain covers. Its hash is SHA-256 of its encoding as stored (`CertifiedBlock::header_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub height: u64,
    pub previous: Digest,
    pub batch_digest: Digest,
    pub entries_root: Digest,
    pub state_root: Digest,
    pub entries: u64,
}

/// One request of a block, as ordered, and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The encoded `SignedBody` of the client's REQUEST: its SHA-256 is the request digest.
    pub request: Bytes,
    /// `None`: not executed, because its client had this request or a newer one executed already.
    pub result: Option<Bytes>,
}

impl Entry {
    /// The Merkle leaf of the entry (rules in `proto/pbft.proto`).
    pub fn leaf(&self) -> Digest {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(digest_of(&self.request).as_bytes());
        match &self.result {
            None => h.update([0u8]),
            Some(result) => {
                h.update([1u8]);
                h.update(digest_of(result).as_bytes());
            }
        }
        Digest(h.finalize().into())
    }

    pub fn request_digest(&self) -> Digest {
        digest_of(&self.request)
    }

    fn to_wire(&self) -> wire::BlockEntry {
        wire::BlockEntry {
            request: self.request.clone(),
            result: self.result.clone(),
        }
    }
}

/// Why a block is not what it claims to be. Every variant names what is wrong; `BadBlock` adds which block.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BlockFault {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("not in canonical encoding (bytes were changed or added)")]
    NotCanonical,
    #[error("the header counts {header} entries, the block has {actual}")]
    EntryCount { header: u64, actual: usize },
    #[error("the entries do not hash to the header's entries root")]
    EntriesRoot,
    #[error("the requests do not hash to the header's batch digest")]
    BatchDigest,
    #[error("commit certificate: {0}")]
    Certificate(#[from] CertificateFault),
    #[error("expected height {expected}, found {found}")]
    Height { expected: u64, found: u64 },
    #[error(
        "broken link: its previous hash {found} is not the hash {expected} of the block before it"
    )]
    BrokenLink { expected: Digest, found: Digest },
    #[error("its hash {found} is not the hash {expected} the block after it names")]
    WrongHash { expected: Digest, found: Digest },
    #[error("entry {index}: the request cannot be decoded: {reason}")]
    BadRequest { index: usize, reason: String },
    #[error("entry {index}: the recorded result is not what executing it gives")]
    WrongResult { index: usize },
    #[error("entry {index}: recorded as {recorded}, but replaying the chain says it {replayed}")]
    WrongSkip {
        index: usize,
        recorded: &'static str,
        replayed: &'static str,
    },
    #[error("the state root is not the state replaying the chain reaches")]
    StateRoot,
}

/// Why a commit certificate does not prove its block committed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CertificateFault {
    #[error("{distinct} COMMITs from distinct replicas, {needed} needed")]
    TooFew { distinct: usize, needed: usize },
    #[error("replica {replica} signed two of its COMMITs")]
    Duplicate { replica: ReplicaId },
    #[error("COMMIT {index} is not validly signed by a replica of the cluster: {reason}")]
    Forged { index: usize, reason: String },
    #[error("COMMIT {index} is for (seq {seq}, digest {digest}), not for this block")]
    OtherBlock {
        index: usize,
        seq: u64,
        digest: Digest,
    },
    #[error("COMMIT {index} is for view {found}, the others for view {expected}")]
    MixedViews {
        index: usize,
        expected: View,
        found: View,
    },
}

/// A block with its commit certificate, as stored, served and exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedBlock {
    pub header: BlockHeader,
    header_bytes: Bytes,
    pub entries: Vec<Entry>,
    pub commits: Vec<Signed<Commit>>,
}

fn digest_field(field: &str, bytes: &[u8]) -> Result<Digest, BlockFault> {
    Digest::from_slice(bytes)
        .ok_or_else(|| BlockFault::Malformed(format!("{field} is {} bytes, not 32", bytes.len())))
}

impl BlockHeader {
    pub fn encode(&self) -> Bytes {
        wire::BlockHeader {
            height: self.height,
            previous: Bytes::copy_from_slice(self.previous.as_bytes()),
            batch_digest: Bytes::copy_from_slice(self.batch_digest.as_bytes()),
            entries_root: Bytes::copy_from_slice(self.entries_root.as_bytes()),
            state_root: Bytes::copy_from_slice(self.state_root.as_bytes()),
            entries: self.entries,
        }
        .encode_to_vec()
        .into()
    }

    /// Decodes a header, refusing any encoding but the one `encode` gives: the hash is over these bytes, so two
    /// encodings of one header must not both pass.
    pub fn decode(bytes: &[u8]) -> Result<BlockHeader, BlockFault> {
        let w = wire::BlockHeader::decode(bytes)
            .map_err(|e| BlockFault::Malformed(format!("header: {e}")))?;
        let header = BlockHeader {
            height: w.height,
            previous: digest_field("previous", &w.previous)?,
            batch_digest: digest_field("batch_digest", &w.batch_digest)?,
            entries_root: digest_field("entries_root", &w.entries_root)?,
            state_root: digest_field("state_root", &w.state_root)?,
            entries: w.entries,
        };
        if header.encode() != bytes {
            return Err(BlockFault::NotCanonical);
        }
        Ok(header)
    }
}

/// A block without its certificate: what the ledger application hands the node at the end of each batch.
pub fn encode_block(header_bytes: &Bytes, entries: &[Entry]) -> Bytes {
    block_to_wire(header_bytes, entries).encode_to_vec().into()
}

fn block_to_wire(header_bytes: &Bytes, entries: &[Entry]) -> wire::Block {
    wire::Block {
        header: header_bytes.clone(),
        entries: entries.iter().map(Entry::to_wire).collect(),
    }
}

/// An entry with the path from its leaf to its block's entries root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryProof {
    pub header: BlockHeader,
    pub header_bytes: Bytes,
    pub index: usize,
    pub entry: Entry,
    pub path: Vec<Step>,
}

impl EntryProof {
    /// Whether the entry is entry `index` of the block the header describes: the path has the shape that
    /// position gives (not the prover's say) and leads from the entry's leaf to the entries root.
    pub fn holds(&self) -> bool {
        let Some(sides) = merkle::sides(self.index as u64, self.header.entries) else {
            return false;
        };
        sides.len() == self.path.len()
            && sides
                .iter()
                .zip(&self.path)
                .all(|(side, step)| *side == step.sibling_on_left)
            && merkle::root_from_path(self.entry.leaf(), &self.path) == self.header.entries_root
    }

    pub fn block_hash(&self) -> Digest {
        digest_of(&self.header_bytes)
    }

    pub fn to_wire(&self) -> wire::EntryProof {
        wire::EntryProof {
            height: self.header.height,
            index: self.index as u64,
            entry: Some(self.entry.to_wire()),
            path: self
                .path
                .iter()
                .map(|s| wire::MerkleStep {
                    sibling: Bytes::copy_from_slice(s.sibling.as_bytes()),
                    sibling_on_left: s.sibling_on_left,
                })
                .collect(),
            header: self.header_bytes.clone(),
        }
    }

    pub fn from_wire(w: wire::EntryProof) -> Result<EntryProof, BlockFault> {
        let header = BlockHeader::decode(&w.header)?;
        let entry = w
            .entry
            .ok_or_else(|| BlockFault::Malformed("the proof has no entry".into()))?;
        let path = w
            .path
            .iter()
            .map(|s| {
                Ok(Step {
                    sibling: digest_field("sibling", &s.sibling)?,
                    sibling_on_left: s.sibling_on_left,
                })
            })
            .collect::<Result<_, BlockFault>>()?;
        Ok(EntryProof {
            header,
            header_bytes: w.header,
            index: usize::try_from(w.index)
                .map_err(|_| BlockFault::Malformed("index out of range".into()))?,
            entry: Entry {
                request: entry.request,
                result: entry.result,
            },
            path,
        })
    }
}

impl CertifiedBlock {
    /// Builds a block from the parts its header describes. Used by the ledger when it closes a block (with no
    /// commits yet) and by tests.
    pub fn new(header: BlockHeader, entries: Vec<Entry>, commits: Vec<Signed<Commit>>) -> Self {
        CertifiedBlock {
            header,
            header_bytes: header.encode(),
            entries,
            commits,
        }
    }

    /// Joins what the ledger application recorded for a batch (an encoded `Block`) with the batch's commit
    /// certificate.
    pub fn from_record(
        record: &[u8],
        commits: Vec<Signed<Commit>>,
        limit: usize,
    ) -> Result<Self, BlockFault> {
        if record.len() > limit {
            return Err(BlockFault::Malformed(format!(
                "{} bytes, more than the limit of {limit}",
                record.len()
            )));
        }
        let block =
            wire::Block::decode(record).map_err(|e| BlockFault::Malformed(e.to_string()))?;
        Self::from_wire_parts(block, commits)
    }

    fn from_wire_parts(
        block: wire::Block,
        commits: Vec<Signed<Commit>>,
    ) -> Result<Self, BlockFault> {
        let header = BlockHeader::decode(&block.header)?;
        Ok(CertifiedBlock {
            header,
            header_bytes: block.header,
            entries: block
                .entries
                .into_iter()
                .map(|e| Entry {
                    request: e.request,
                    result: e.result,
                })
                .collect(),
            commits,
        })
    }

    pub fn height(&self) -> u64 {
        self.header.height
    }

    /// The block's hash: SHA-256 of its header as stored.
    pub fn hash(&self) -> Digest {
        digest_of(&self.header_bytes)
    }

    pub fn header_bytes(&self) -> &Bytes {
        &self.header_bytes
    }

    /// The view its certificate is from (that of its first COMMIT; `check` makes sure they all agree).
    pub fn view(&self) -> Option<View> {
        self.commits.first().map(|c| c.value().view)
    }

    pub fn to_wire(&self) -> wire::CertifiedBlock {
        wire::CertifiedBlock {
            block: Some(block_to_wire(&self.header_bytes, &self.entries)),
            commits: self.commits.iter().map(Signed::to_envelope).collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn from_wire(w: wire::CertifiedBlock) -> Result<Self, BlockFault> {
        let block = w
            .block
            .ok_or_else(|| BlockFault::Malformed("no block".into()))?;
        let commits = w
            .commits
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                Signed::<Commit>::from_envelope(e)
                    .map_err(|e| BlockFault::Malformed(format!("COMMIT {i}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Self::from_wire_parts(block, commits)
    }

    /// Decodes a block from untrusted bytes (a peer, an export file), refusing more than `limit` bytes and any
    /// encoding but the canonical one.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, BlockFault> {
        if bytes.len() > limit {
            return Err(BlockFault::Malformed(format!(
                "{} bytes, more than the limit of {limit}",
                bytes.len()
            )));
        }
        let w = wire::CertifiedBlock::decode(bytes)
            .map_err(|e| BlockFault::Malformed(e.to_string()))?;
        let block = Self::from_wire(w)?;
        if block.encode() != bytes {
            return Err(BlockFault::NotCanonical);
        }
        Ok(block)
    }

    pub fn leaves(&self) -> Vec<Digest> {
        self.entries.iter().map(Entry::leaf).collect()
    }

    /// Entry `index` with its Merkle path.
    pub fn proof(&self, index: usize) -> Option<EntryProof> {
        Some(EntryProof {
            header: self.header,
            header_bytes: self.header_bytes.clone(),
            index,
            entry: self.entries.get(index)?.clone(),
            path: merkle::path(&self.leaves(), index)?,
        })
    }

    /// Everything a block proves on its own: the entries match the header (count, Merkle root, batch digest) and
    /// q replicas of the cluster signed COMMITs for (height, batch digest) in one view. Returns that view.
    pub fn check(&self, keyring: &Keyring, quorum: usize) -> Result<View, BlockFault> {
        if self.header.entries != self.entries.len() as u64 {
            return Err(BlockFault::EntryCount {
                header: self.header.entries,
                actual: self.entries.len(),
            });
        }
        if merkle::root(&self.leaves()) != self.header.entries_root {
            return Err(BlockFault::EntriesRoot);
        }
        let batch = batch_digest_of_bodies(self.entries.iter().map(|e| e.request.as_ref()));
        if batch != self.header.batch_digest {
            return Err(BlockFault::BatchDigest);
        }
        Ok(check_certificate(
            keyring,
            quorum,
            self.header.height,
            batch,
            &self.commits,
        )?)
    }
}

/// Checks that `commits` hold q COMMITs validly signed by distinct replicas, all for (`seq`, `digest`) in one
/// view, and returns the view.
pub fn check_certificate(
    keyring: &Keyring,
    quorum: usize,
    seq: u64,
    digest: Digest,
    commits: &[Signed<Commit>],
) -> Result<View, CertificateFault> {
    let mut signers = std::collections::BTreeSet::new();
    let mut view = None;
    for (index, commit) in commits.iter().enumerate() {
        let c = *commit.value();
        if c.seq.0 != seq || c.digest != digest {
            return Err(CertificateFault::OtherBlock {
                index,
                seq: c.seq.0,
                digest: c.digest,
            });
        }
        match view {
            None => view = Some(c.view),
            Some(expected) if expected != c.view => {
                return Err(CertificateFault::MixedViews {
                    index,
                    expected,
                    found: c.view,
                });
            }
            Some(_) => {}
        }
        if !signers.insert(c.replica) {
            return Err(CertificateFault::Duplicate { replica: c.replica });
        }
    }
    // Only now the signatures, in one batch: at most one per replica, whatever a faulty peer sent.
    let verdicts = keyring.verify_each(commits.to_vec());
    if let Some((index, Err(e))) = verdicts.into_iter().enumerate().find(|(_, v)| v.is_err()) {
        return Err(CertificateFault::Forged {
            index,
            reason: e.to_string(),
        });
    }
    match view {
        Some(view) if signers.len() >= quorum => Ok(view),
        _ => Err(CertificateFault::TooFew {
            distinct: signers.len(),
            needed: quorum,
        }),
    }
}
