//! The node's side of the ledger: archiving each block with its commit certificate, answering queries about the
//! chain, and fetching from peers the blocks a replica skipped when it caught up by state transfer.
//!
//! Blocks are archived in the same synced write as the journal entries of the batch they record (see
//! `durable`), so a replica that restarts has every block it executed. A replica that installs a checkpoint
//! skips the batches below it: their blocks are missing until `backfill` fetches them. A fetched block is taken
//! only if its hash is the one its successor (or the replica's own chain head) names and its certificate holds,
//! so a faulty peer can delay the backfill but never put a wrong block in the archive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pbft_apps::LedgerReader;
use pbft_apps::ledger::{AccountKey, AccountState, BlockFault, CertifiedBlock, EntryProof};
use pbft_core::Committed;
use pbft_crypto::Keyring;
use pbft_store::{Archive, ArchiveItem, StoreError};
use pbft_types::{Digest, wire};
use thiserror::Error;

/// The most blocks one query answers.
pub const MAX_BLOCKS_PER_QUERY: usize = 256;

/// The most bytes of blocks one query answers (or one fetch takes) besides its first block, so that neither a
/// caller nor a faulty peer can make a replica hold more than this and one block in memory for a query.
pub const RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Blocks asked of a peer at a time while filling a gap.
const BACKFILL_BATCH: u64 = 64;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("archived block {height} is unreadable: {fault}")]
    Archived { height: u64, fault: BlockFault },
    #[error("the block of batch {height} cannot be archived: {reason}")]
    Unarchivable { height: u64, reason: String },
    #[error("the archive read was interrupted: {0}")]
    Interrupted(String),
}

/// The largest encoded block a replica accepts from elsewhere: a batch fits in a message, and results and the
/// certificate add less than another message's worth.
pub fn block_limit(max_message_size: usize) -> usize {
    max_message_size.saturating_mul(2).saturating_add(64 * 1024)
}

/// The archive item of a committed batch whose application recorded a block: the block with its certificate,
/// found by its hash and by the digest of each request it executed. An error if the block cannot be kept as it
/// will be read back (which the journal treats as a failed write: the replica must not go on without it).
pub fn archive_item(
    committed: &Committed,
    limit: usize,
) -> Result<Option<ArchiveItem>, LedgerError> {
    let Some(record) = committed.record.as_ref() else {
        return Ok(None);
    };
    let height = committed.seq.0;
    let commits = committed
        .certificate
        .iter()
        .map(|c| c.signed().clone())
        .collect();
    let block = CertifiedBlock::from_record(record, commits, limit).map_err(|fault| {
        LedgerError::Unarchivable {
            height,
            reason: fault.to_string(),
        }
    })?;
    let item = item_of(&block);
    // Read back with the same limit, so a block that does not fit must not be written.
    if item.bytes.len() > limit {
        return Err(LedgerError::Unarchivable {
            height,
            reason: format!(
                "{} bytes with its certificate, more than the limit of {limit}",
                item.bytes.len()
            ),
        });
    }
    Ok(Some(item))
}

fn item_of(block: &CertifiedBlock) -> ArchiveItem {
    let mut keys = vec![(block.hash().0, u64::MAX)];
    keys.extend(
        block
            .entries
            .iter()
            .enumerate()
            // A request executes once; the copies ordered again later (not executed) are not what it is found by.
            .filter(|(_, e)| e.result.is_some())
            .map(|(i, e)| (e.request_digest().0, i as u64)),
    );
    ArchiveItem {
        number: block.height(),
        bytes: block.encode(),
        keys,
    }
}

/// The chain as one replica holds it.
#[derive(Clone, Debug)]
pub struct LedgerService {
    archive: Archive,
    reader: LedgerReader,
    keyring: Arc<Keyring>,
    quorum: usize,
    limit: usize,
    /// Every height up to this one is known to be archived (items are never removed), so that looking for gaps
    /// costs the distance from it, not the length of the chain.
    contiguous: Arc<AtomicU64>,
}

impl LedgerService {
    pub fn new(
        archive: Archive,
        reader: LedgerReader,
        keyring: Keyring,
        quorum: usize,
        limit: usize,
    ) -> LedgerService {
        LedgerService {
            archive,
            reader,
            keyring: Arc::new(keyring),
            quorum,
            limit,
            contiguous: Arc::default(),
        }
    }

    /// The highest height at or below `up_to` with no archived block.
    fn highest_missing(&self, up_to: u64) -> Result<Option<u64>, LedgerError> {
        let floor = self.contiguous.load(Ordering::Relaxed);
        let missing = self.archive.highest_missing(floor, up_to)?;
        if missing.is_none() {
            self.contiguous.fetch_max(up_to, Ordering::Relaxed);
        }
        Ok(missing)
    }

    fn decode(&self, height: u64, bytes: &[u8]) -> Result<CertifiedBlock, LedgerError> {
        CertifiedBlock::decode(bytes, self.limit)
            .map_err(|fault| LedgerError::Archived { height, fault })
    }

    /// Runs `read` (archive reads, which block on disk) on the blocking pool, not on the async API's threads.
    pub async fn off_thread<T: Send + 'static>(
        &self,
        read: impl FnOnce(&LedgerService) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let service = self.clone();
        tokio::task::spawn_blocking(move || read(&service))
            .await
            .map_err(|e| LedgerError::Interrupted(e.to_string()))?
    }

    /// The height and hash of the replica's latest block (the genesis hash at height 0).
    pub fn head(&self) -> (u64, Digest) {
        self.reader.head()
    }

    /// Every block from height 1 to the head is archived from this height on (the head + 1 if none is).
    pub fn contiguous_from(&self) -> Result<u64, LedgerError> {
        let (height, _) = self.head();
        Ok(self.highest_missing(height)?.map_or(1, |m| m + 1))
    }

    pub fn block(&self, height: u64) -> Result<Option<CertifiedBlock>, LedgerError> {
        self.archive
            .get(height)?
            .map(|b| self.decode(height, &b))
            .transpose()
    }

    /// Blocks with heights in `from..=to`, at most `limit` (capped at `MAX_BLOCKS_PER_QUERY`).
    pub fn blocks(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<CertifiedBlock>, LedgerError> {
        let limit = if limit == 0 {
            MAX_BLOCKS_PER_QUERY
        } else {
            limit.min(MAX_BLOCKS_PER_QUERY)
        };
        self.archive
            .range(from, to, limit, RESPONSE_BYTES)?
            .into_iter()
            .map(|(height, bytes)| self.decode(height, &bytes))
            .collect()
    }

    pub fn block_by_hash(&self, hash: &Digest) -> Result<Option<CertifiedBlock>, LedgerError> {
        match self.archive.lookup(&hash.0)? {
            Some(found) if found.position.is_none() => self.block(found.number),
            _ => Ok(None),
        }
    }

    /// The executed request with this digest, with its Merkle path in its block.
    pub fn entry(&self, request_digest: &Digest) -> Result<Option<EntryProof>, LedgerError> {
        let Some(found) = self.archive.lookup(&request_digest.0)? else {
            return Ok(None);
        };
        let Some(position) = found.position.and_then(|p| usize::try_from(p).ok()) else {
            return Ok(None);
        };
        Ok(self
            .block(found.number)?
            .and_then(|block| block.proof(position)))
    }

    pub fn account(&self, key: &AccountKey) -> (AccountState, u64) {
        self.reader.account(key)
    }

    /// The next gap to fill: the highest missing height at or below the head, and the hash its block must have.
    fn next_gap(&self) -> Result<Option<(u64, Digest)>, LedgerError> {
        let (head, head_hash) = self.head();
        let Some(missing) = self.highest_missing(head)? else {
            return Ok(None);
        };
        if missing == head {
            return Ok(Some((missing, head_hash)));
        }
        Ok(self
            .block(missing + 1)?
            .map(|above| (missing, above.header.previous)))
    }

    /// Takes, from the top down, the fetched blocks that continue the chain below a block of hash `expected` at
    /// height `top`, and archives them. Returns how many it took.
    fn take(
        &self,
        top: u64,
        mut expected: Digest,
        mut fetched: Vec<CertifiedBlock>,
    ) -> Result<usize, LedgerError> {
        fetched.sort_by_key(|b| std::cmp::Reverse(b.height()));
        let mut taken = Vec::new();
        let mut height = top;
        for block in fetched {
            if block.height() != height
                || block.hash() != expected
                || block.check(&self.keyring, self.quorum).is_err()
            {
                break;
            }
            expected = block.header.previous;
            taken.push(item_of(&block));
            if height == 1 {
                break;
            }
            height -= 1;
        }
        self.archive.put(&taken)?;
        Ok(taken.len())
    }
}

/// Fetches blocks from the peers' gRPC APIs (`http://host:port`) until no block at or below the head is
/// missing, then waits and looks again. Runs until the process ends.
pub async fn backfill(service: LedgerService, peers: Vec<String>) {
    let mut next_peer = 0usize;
    // The head's own block is written a moment after the head moves: it counts as missing only if it still is
    // at the next look.
    let mut head_missing = None;
    loop {
        let gap = match service.off_thread(LedgerService::next_gap).await {
            Ok(gap) => gap,
            Err(e) => {
                tracing::error!(error = %e, "ledger backfill: cannot read the archive");
                None
            }
        };
        let at_head = gap.is_some_and(|(top, _)| top == service.head().0);
        let seen_before = gap.is_some() && gap == head_missing;
        head_missing = if at_head { gap } else { None };
        let Some((top, expected)) = gap.filter(|_| !at_head || seen_before) else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if peers.is_empty() {
            return;
        }
        let peer = &peers[next_peer % peers.len()];
        let from = top.saturating_sub(BACKFILL_BATCH - 1).max(1);
        let fetched = fetch(peer, from, top, service.limit).await;
        let taken = match fetched {
            Ok(blocks) => service
                .off_thread(move |s| s.take(top, expected, blocks))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "ledger backfill: cannot write the archive");
                    0
                }),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "ledger backfill: fetch failed");
                0
            }
        };
        if taken > 0 {
            tracing::info!(from = top + 1 - taken as u64, to = top, %peer, "fetched blocks skipped by state transfer");
        } else {
            // This peer did not help: ask the next one, after a pause so that a gap no peer can fill yet (a block
            // still being archived) costs little.
            next_peer += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Blocks `from..=to` from one replica's gRPC API, as it sent them (the caller checks them), each at most
/// `limit` bytes.
pub async fn fetch(
    url: &str,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<CertifiedBlock>, String> {
    use pbft_types::wire::ledger_api_client::LedgerApiClient;
    let mut client = LedgerApiClient::connect(url.to_string())
        .await
        .map_err(|e| e.to_string())?
        .max_decoding_message_size(limit);
    let mut stream = client
        .get_blocks(wire::BlockRange { from, to, limit: 0 })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut blocks: Vec<CertifiedBlock> = Vec::new();
    let mut bytes = 0usize;
    while let Some(block) = stream
        .message()
        .await
        .map_err(|e| e.message().to_string())?
    {
        bytes = bytes.saturating_add(prost::Message::encoded_len(&block));
        if bytes > RESPONSE_BYTES.saturating_add(limit) {
            return Err(format!(
                "{url} sent more than {RESPONSE_BYTES} bytes of blocks"
            ));
        }
        let block = CertifiedBlock::from_wire(block).map_err(|e| e.to_string())?;
        // In increasing height order within the range asked for: anything else is not an answer.
        let next = blocks.last().map_or(from, |b| b.height().saturating_add(1));
        if block.height() < next || block.height() > to {
            return Err(format!(
                "{url} sent block {} where {next}..={to} was asked for",
                block.height()
            ));
        }
        blocks.push(block);
    }
    Ok(blocks)
}
