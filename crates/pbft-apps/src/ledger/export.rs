//! The export format of a chain: its certified blocks in height order from 1, each as a protobuf varint length
//! followed by an encoded `CertifiedBlock`. There is no header, so every byte of a file belongs to a block, and a
//! reader that fails can say which one.

use bytes::{Buf, Bytes};

use super::block::{BlockFault, CertifiedBlock};

/// Appends `block` to an export.
pub fn append(file: &mut Vec<u8>, block: &CertifiedBlock) {
    let bytes = block.encode();
    // Writing into a Vec cannot run out of room.
    let _ = prost::encoding::encode_length_delimiter(bytes.len(), file);
    file.extend_from_slice(&bytes);
}

/// Reads an export block by block: each item is the height the block should have (its place in the file) and
/// the block, or why the bytes at that place are not one. It stops after the first failure.
pub struct ExportReader {
    bytes: Bytes,
    next: u64,
    limit: usize,
    failed: bool,
}

impl ExportReader {
    /// Blocks larger than `limit` bytes are refused.
    pub fn new(bytes: Bytes, limit: usize) -> ExportReader {
        ExportReader {
            bytes,
            next: 1,
            limit,
            failed: false,
        }
    }

    fn read(&mut self) -> Result<CertifiedBlock, BlockFault> {
        let len = prost::encoding::decode_length_delimiter(&mut self.bytes)
            .map_err(|e| BlockFault::Malformed(format!("its length: {e}")))?;
        if len > self.bytes.remaining() {
            return Err(BlockFault::Malformed(format!(
                "{len} bytes announced, {} left in the file",
                self.bytes.remaining()
            )));
        }
        CertifiedBlock::decode(&self.bytes.split_to(len), self.limit)
    }
}

impl Iterator for ExportReader {
    type Item = (u64, Result<CertifiedBlock, BlockFault>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || !self.bytes.has_remaining() {
            return None;
        }
        let height = self.next;
        self.next += 1;
        let read = self.read();
        self.failed = read.is_err();
        Some((height, read))
    }
}
