//! The journal's log: what `Store::write` makes durable, appended as one checksummed frame per write to segment
//! files of a fixed size, with one `fdatasync` per write.
//!
//! Why not the B-tree: a redb transaction rewrites the pages of every table it touches and the allocator's
//! state, so a replica wrote (and synced) about eight times the bytes of the requests it journalled. An append
//! writes each byte once, sequentially.
//!
//! The layout, all integers little-endian:
//!
//! - A **segment** is the file `<stem>.log.<index>` beside the database (`replica-2.redb` has `replica-2.log.
//!   00000001`, ...). Its header holds a magic number, the cluster and replica it belongs to, its index, its
//!   size and a checksum. A segment is created at its full size (sparse, so unwritten space costs nothing), under
//!   a temporary name that is renamed once its header is synced: a segment whose length differs from the one in
//!   its header was truncated or extended by someone else, and is refused.
//! - A **frame** is a 20-byte header (payload length, the payload's XXH3-64, an XXH3-64 over
//!   the frame's offset and those two fields) and the payload: the items of one write. A header of zeros marks
//!   the end of the data.
//! - **A torn tail.** A crash during a write can leave its frame half written; it was never synced, so nothing
//!   that depended on it left the replica. Only the newest segment's last frame can be torn: a bad frame there,
//!   followed by nothing, is dropped (and zeroed on disk). A bad frame anywhere else is corruption, and refused.
//! - **Rotation and collection.** A write that does not fit starts a new segment, which begins with a frame
//!   holding the stable checkpoint and the named values as they are, so that older segments are needed only for
//!   their records. Once a stable checkpoint covers every record of a segment (and it is not the newest), the
//!   segment is deleted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::{ArchiveItem, Identity, Record, StoreError, WriteBatch};

/// Format 2: the checksums are XXH3-64. Format 1 had the first 8 bytes of SHA-256, which cost a busy replica 3%
/// of its CPU.
const MAGIC: &[u8; 8] = b"PBFTLOG2";
const MAGIC_FORMAT_1: &[u8; 8] = b"PBFTLOG1";
/// Magic, cluster, replica, index, size, checksum.
const SEGMENT_HEADER: u64 = 8 + 32 + 8 + 8 + 8 + 8;
/// Payload length, payload checksum, header checksum.
const FRAME_HEADER: u64 = 4 + 8 + 8;

const TAG_RECORD: u8 = 1;
const TAG_STABLE: u8 = 2;
const TAG_VALUE: u8 = 3;
const TAG_ARCHIVE: u8 = 4;

/// The size of a new segment unless a single write needs more. At 10,000 requests of 512 bytes per second a
/// replica fills one in about ten seconds.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// The checksum of a segment header, a frame header or a payload. The disk is not an adversary: what it must
/// catch is a torn write or a flipped bit, which a 64-bit hash misses with odds of 2^-64.
fn check8(parts: &[&[u8]]) -> [u8; 8] {
    let mut hash = Xxh3::new();
    for part in parts {
        hash.update(part);
    }
    hash.digest().to_le_bytes()
}

fn frame_header(offset: u64, payload: &[u8]) -> [u8; FRAME_HEADER as usize] {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let payload_check = check8(&[payload]);
    let header_check = check8(&[&offset.to_le_bytes(), &len, &payload_check]);
    let mut out = [0u8; FRAME_HEADER as usize];
    out[..4].copy_from_slice(&len);
    out[4..12].copy_from_slice(&payload_check);
    out[12..].copy_from_slice(&header_check);
    out
}

/// What one segment's frames hold, in order.
#[derive(Debug)]
enum Item {
    Record(Record),
    Stable(Record),
    Value(String, Vec<u8>),
    Archive(ArchiveItem),
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Frames are bounded far below 4 GiB by the message size limit; `encode` refuses a larger one.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes the log's part of a write (everything but nothing) as a frame payload, into `out`.
fn encode(
    records: &[Record],
    stable: Option<&Record>,
    values: &BTreeMap<String, Vec<u8>>,
    archive: &[ArchiveItem],
    out: &mut Vec<u8>,
) {
    for record in records {
        out.push(TAG_RECORD);
        out.extend_from_slice(&record.seq.to_le_bytes());
        put_bytes(out, &record.bytes);
    }
    if let Some(stable) = stable {
        out.push(TAG_STABLE);
        out.extend_from_slice(&stable.seq.to_le_bytes());
        put_bytes(out, &stable.bytes);
    }
    for (name, bytes) in values {
        out.push(TAG_VALUE);
        put_bytes(out, name.as_bytes());
        put_bytes(out, bytes);
    }
    for item in archive {
        out.push(TAG_ARCHIVE);
        out.extend_from_slice(&item.number.to_le_bytes());
        put_bytes(out, &item.bytes);
        out.extend_from_slice(&(item.keys.len() as u32).to_le_bytes());
        for (key, position) in &item.keys {
            out.extend_from_slice(key);
            out.extend_from_slice(&position.to_le_bytes());
        }
    }
}

/// Reads the items of a payload whose checksum matched; a payload that still does not parse is corrupt (or
/// written by a bug), and refused with the reason.
fn decode(mut payload: &[u8]) -> Result<Vec<Item>, String> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        let (head, rest) = input
            .split_at_checked(n)
            .ok_or_else(|| format!("an item ends {} bytes early", n - input.len()))?;
        *input = rest;
        Ok(head)
    }
    fn u64_of(input: &mut &[u8]) -> Result<u64, String> {
        let bytes = take(input, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| "short")?))
    }
    fn u32_of(input: &mut &[u8]) -> Result<u32, String> {
        let bytes = take(input, 4)?;
        Ok(u32::from_le_bytes(bytes.try_into().map_err(|_| "short")?))
    }
    fn bytes_of(input: &mut &[u8]) -> Result<Vec<u8>, String> {
        let len = u32_of(input)? as usize;
        Ok(take(input, len)?.to_vec())
    }
    let mut items = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        payload = rest;
        let input = &mut payload;
        items.push(match tag {
            TAG_RECORD => Item::Record(Record {
                seq: u64_of(input)?,
                bytes: bytes_of(input)?,
            }),
            TAG_STABLE => Item::Stable(Record {
                seq: u64_of(input)?,
                bytes: bytes_of(input)?,
            }),
            TAG_VALUE => {
                let name = String::from_utf8(bytes_of(input)?)
                    .map_err(|_| "a value's name is not UTF-8".to_string())?;
                Item::Value(name, bytes_of(input)?)
            }
            TAG_ARCHIVE => {
                let number = u64_of(input)?;
                let bytes = bytes_of(input)?;
                let count = u32_of(input)? as usize;
                // Each key takes 40 bytes: a count larger than what is left is refused before allocating.
                if count > input.len() / 40 {
                    return Err(format!("an archived item claims {count} keys"));
                }
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    let key: [u8; 32] = take(input, 32)?
                        .try_into()
                        .map_err(|_| "short key".to_string())?;
                    keys.push((key, u64_of(input)?));
                }
                Item::Archive(ArchiveItem {
                    number,
                    bytes,
                    keys,
                })
            }
            other => return Err(format!("unknown item tag {other}")),
        });
    }
    Ok(items)
}

/// A segment on disk, with what collection needs to know of it.
#[derive(Debug)]
struct Segment {
    index: u64,
    path: PathBuf,
    /// The highest sequence number of a record in it.
    max_seq: Option<u64>,
}

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub stable: Option<Record>,
    pub records: Vec<Record>,
    pub values: BTreeMap<String, Vec<u8>>,
    /// Archived items of the live segments, to file again in the database in case a crash came between the log's
    /// sync and the database's.
    pub archive: Vec<ArchiveItem>,
}

/// The open log of one replica.
#[derive(Debug)]
pub(crate) struct Log {
    /// `<dir>/<stem>.log.`: a segment's path is this and its index.
    prefix: PathBuf,
    identity: Identity,
    segment_size: u64,
    /// The live segments, oldest first; the last one is being written.
    segments: Vec<Segment>,
    file: File,
    /// Where the next frame goes in the current segment, and that segment's size.
    offset: u64,
    size: u64,
    /// The stable checkpoint and named values as written, for the head of the next segment.
    stable: Option<Record>,
    values: BTreeMap<String, Vec<u8>>,
    /// A write's frame is assembled here; kept to reuse its allocation.
    buffer: Vec<u8>,
}

/// The paths of a database's log segments, by index, and leftovers of a rotation a crash interrupted.
fn list(prefix: &Path) -> Result<(BTreeMap<u64, PathBuf>, Vec<PathBuf>), std::io::Error> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut segments = BTreeMap::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(suffix) = name.strip_prefix(&stem) else {
            continue;
        };
        if let Some(index) = suffix.strip_suffix(".tmp") {
            if index.parse::<u64>().is_ok() {
                leftovers.push(entry.path());
            }
        } else if let Ok(index) = suffix.parse::<u64>() {
            segments.insert(index, entry.path());
        }
    }
    Ok((segments, leftovers))
}

fn segment_path(prefix: &Path, index: u64) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(format!("{index:08}"));
    PathBuf::from(name)
}

fn sync_dir(prefix: &Path) -> Result<(), std::io::Error> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

fn segment_header(identity: Identity, index: u64, size: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&identity.cluster);
    header.extend_from_slice(&identity.replica.to_le_bytes());
    header.extend_from_slice(&index.to_le_bytes());
    header.extend_from_slice(&size.to_le_bytes());
    let check = check8(&[&header]);
    header.extend_from_slice(&check);
    header
}

/// How reading a segment ended.
enum End {
    /// At the end of its data.
    Clean(u64),
    /// At a frame a crash left half written: where it starts, and where what it may have written ends.
    Torn(u64, u64),
}

impl Log {
    /// The log beside the database at `db_path`: the path without its extension, then `.log.`.
    pub(crate) fn prefix_for(db_path: &Path) -> PathBuf {
        let mut name = db_path.with_extension("").into_os_string();
        name.push(".log.");
        PathBuf::from(name)
    }

    /// Deletes every segment of the log at `prefix` (a database of the old format is being converted, and an
    /// earlier attempt may have left some).
    pub(crate) fn remove_all(prefix: &Path) -> Result<(), std::io::Error> {
        let (segments, leftovers) = list(prefix)?;
        for path in segments.into_values().chain(leftovers) {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }

    /// Opens the log at `prefix`, creating its first segment if it has none, and replays it.
    pub(crate) fn open(
        prefix: PathBuf,
        identity: Identity,
        segment_size: u64,
    ) -> Result<(Log, Replayed), StoreError> {
        let (found, leftovers) = list(&prefix).map_err(|e| StoreError::Open {
            path: prefix.clone(),
            reason: e.to_string(),
        })?;
        for leftover in leftovers {
            // A rotation that never reached its rename: nothing was written to that segment.
            std::fs::remove_file(&leftover).map_err(|e| StoreError::Open {
                path: leftover.clone(),
                reason: e.to_string(),
            })?;
        }
        let mut replayed = Replayed::default();
        let mut segments = Vec::new();
        let newest = found.keys().next_back().copied();
        let mut current = None;
        for (index, path) in found {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::Open {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let is_newest = Some(index) == newest;
            let (size, max_seq, end) =
                replay_segment(&file, &path, identity, index, is_newest, &mut replayed)?;
            let offset = match end {
                End::Clean(offset) => offset,
                End::Torn(offset, end) => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        "the journal's last write was cut short by a crash; it was never synced, so it is dropped"
                    );
                    zero(&file, &path, offset, end)?;
                    offset
                }
            };
            segments.push(Segment {
                index,
                path: path.clone(),
                max_seq,
            });
            if is_newest {
                current = Some((file, offset, size));
            }
        }
        let (file, offset, size) = match current {
            Some(current) => current,
            None => {
                let index = 1;
                let path = segment_path(&prefix, index);
                let file = create_segment(&prefix, identity, index, segment_size, &[])?;
                segments.push(Segment {
                    index,
                    path,
                    max_seq: None,
                });
                (file, SEGMENT_HEADER, segment_size)
            }
        };
        let log = Log {
            prefix,
            identity,
            segment_size,
            segments,
            file,
            offset,
            size,
            stable: replayed.stable.clone(),
            values: replayed.values.clone(),
            buffer: Vec::new(),
        };
        Ok((log, replayed))
    }

    fn write_error(&self, reason: impl ToString) -> StoreError {
        StoreError::Write {
            path: self
                .segments
                .last()
                .map_or_else(|| self.prefix.clone(), |s| s.path.clone()),
            reason: reason.to_string(),
        }
    }

    /// The stable checkpoint as the log holds it.
    pub(crate) fn stable_seq(&self) -> Option<u64> {
        self.stable.as_ref().map(|s| s.seq)
    }

    /// Appends the log's part of `batch` as one frame and syncs it. `stable` is the batch's checkpoint if it is
    /// newer than the stored one (the caller decides).
    pub(crate) fn append(
        &mut self,
        batch: &WriteBatch,
        stable: Option<&Record>,
    ) -> Result<(), StoreError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.resize(FRAME_HEADER as usize, 0);
        encode(
            &batch.records,
            stable,
            &batch.values,
            &batch.archive,
            &mut buffer,
        );
        let result = self.append_frame(&mut buffer);
        self.buffer = buffer;
        result?;

        let batch_max = batch.records.iter().map(|r| r.seq).max();
        if let Some(segment) = self.segments.last_mut() {
            segment.max_seq = segment.max_seq.max(batch_max);
        }
        for (name, bytes) in &batch.values {
            self.values.insert(name.clone(), bytes.clone());
        }
        if let Some(stable) = stable {
            self.stable = Some(stable.clone());
            self.collect();
        }
        Ok(())
    }

    /// Writes `frame` (its first FRAME_HEADER bytes left for the header) at the end of the log, in a new segment
    /// if it does not fit in this one, and syncs it.
    fn append_frame(&mut self, frame: &mut [u8]) -> Result<(), StoreError> {
        let payload_len = frame.len() as u64 - FRAME_HEADER;
        if payload_len > u64::from(u32::MAX) {
            return Err(self.write_error(format!(
                "one write of {payload_len} bytes is more than a frame holds"
            )));
        }
        if self.offset + frame.len() as u64 > self.size {
            self.rotate(frame.len() as u64)?;
        }
        let header = frame_header(self.offset, &frame[FRAME_HEADER as usize..]);
        frame[..FRAME_HEADER as usize].copy_from_slice(&header);
        self.file
            .write_all_at(frame, self.offset)
            .map_err(|e| self.write_error(e))?;
        self.file.sync_data().map_err(|e| self.write_error(e))?;
        self.offset += frame.len() as u64;
        Ok(())
    }

    /// Starts the next segment, with the stable checkpoint and the named values at its head, large enough for a
    /// frame of `needed` bytes after them.
    fn rotate(&mut self, needed: u64) -> Result<(), StoreError> {
        let index = self.segments.last().map_or(1, |s| s.index + 1);
        let mut head = vec![0u8; FRAME_HEADER as usize];
        encode(&[], self.stable.as_ref(), &self.values, &[], &mut head);
        let head_len = if head.len() as u64 > FRAME_HEADER {
            head.len() as u64
        } else {
            0
        };
        let size = self
            .segment_size
            .max(SEGMENT_HEADER + head_len + needed + FRAME_HEADER);
        let head = if head_len > 0 {
            let header = frame_header(SEGMENT_HEADER, &head[FRAME_HEADER as usize..]);
            head[..FRAME_HEADER as usize].copy_from_slice(&header);
            head
        } else {
            Vec::new()
        };
        let file = create_segment(&self.prefix, self.identity, index, size, &head)?;
        self.file = file;
        self.offset = SEGMENT_HEADER + head_len;
        self.size = size;
        self.segments.push(Segment {
            index,
            path: segment_path(&self.prefix, index),
            max_seq: None,
        });
        self.collect();
        Ok(())
    }

    /// Deletes the oldest segments whose records the stable checkpoint covers. A deletion that fails, or that a
    /// crash undoes, leaves a segment that recovery reads and finds nothing live in: it is retried later.
    fn collect(&mut self) {
        let Some(stable) = self.stable_seq() else {
            return;
        };
        while self.segments.len() > 1 && self.segments[0].max_seq.is_none_or(|m| m <= stable) {
            let segment = self.segments.remove(0);
            if let Err(error) = std::fs::remove_file(&segment.path) {
                tracing::warn!(segment = %segment.path.display(), %error, "cannot delete a collected journal segment");
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }
}

/// The segment files beside the database at `db_path`, oldest first, and leftovers of rotations.
#[cfg(test)]
pub(crate) fn tests_list(db_path: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (segments, leftovers) = list(&Log::prefix_for(db_path)).expect("the directory lists");
    (segments.into_values().collect(), leftovers)
}

/// Creates segment `index` of `size` bytes holding its header and then `head`, synced, under its final name.
fn create_segment(
    prefix: &Path,
    identity: Identity,
    index: u64,
    size: u64,
    head: &[u8],
) -> Result<File, StoreError> {
    let path = segment_path(prefix, index);
    let mut temporary = path.clone().into_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let fail = |e: std::io::Error| StoreError::Write {
        path: path.clone(),
        reason: e.to_string(),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(fail)?;
    file.set_len(size).map_err(fail)?;
    file.write_all_at(&segment_header(identity, index, size), 0)
        .map_err(fail)?;
    if !head.is_empty() {
        file.write_all_at(head, SEGMENT_HEADER).map_err(fail)?;
    }
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, &path).map_err(fail)?;
    sync_dir(prefix).map_err(fail)?;
    Ok(file)
}

/// Writes zeros over `from..to` of a segment (dropping a torn frame). Writing rather than truncating keeps the
/// segment's size whatever moment a crash picks, and doing it again is harmless.
fn zero(file: &File, path: &Path, from: u64, to: u64) -> Result<(), StoreError> {
    let fail = |e: std::io::Error| StoreError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at).map_err(fail)?;
        at += n;
    }
    file.sync_data().map_err(fail)
}

fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot read {len} bytes at {offset}: {e}"),
        })?;
    Ok(buf)
}

/// Checks segment `index`'s header and applies its frames to `into`; returns its size, the highest record
/// sequence number in it, and where its data ends.
fn replay_segment(
    file: &File,
    path: &Path,
    identity: Identity,
    index: u64,
    newest: bool,
    into: &mut Replayed,
) -> Result<(u64, Option<u64>, End), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let length = file
        .metadata()
        .map_err(|e| corrupt(format!("cannot read its length: {e}")))?
        .len();
    if length < SEGMENT_HEADER {
        return Err(corrupt(format!(
            "{length} bytes, shorter than a segment header"
        )));
    }
    let header = read_at(file, path, 0, SEGMENT_HEADER)?;
    if &header[..8] == MAGIC_FORMAT_1 {
        return Err(StoreError::UnknownFormat {
            path: path.to_path_buf(),
            found: "a journal segment of log format 1, written by an older version; this one reads format 2"
                .to_string(),
        });
    }
    if &header[..8] != MAGIC {
        return Err(StoreError::UnknownFormat {
            path: path.to_path_buf(),
            found: "not a journal segment".to_string(),
        });
    }
    let body = &header[..SEGMENT_HEADER as usize - 8];
    if check8(&[body]) != header[SEGMENT_HEADER as usize - 8..] {
        return Err(corrupt("its header fails its checksum".to_string()));
    }
    let field = |at: usize| {
        u64::from_le_bytes(
            header[at..at + 8]
                .try_into()
                .unwrap_or_else(|_| unreachable!("an 8-byte slice")),
        )
    };
    if header[8..40] != identity.cluster {
        return Err(StoreError::OtherCluster {
            path: path.to_path_buf(),
        });
    }
    let replica = field(40);
    if replica != identity.replica {
        return Err(StoreError::OtherReplica {
            path: path.to_path_buf(),
            found: replica,
            expected: identity.replica,
        });
    }
    if field(48) != index {
        return Err(corrupt(format!(
            "it calls itself segment {}, its name says {index}",
            field(48)
        )));
    }
    let size = field(56);
    if size != length {
        return Err(corrupt(format!(
            "{length} bytes long, but written as {size}: truncated or extended"
        )));
    }

    let mut max_seq = None;
    let mut offset = SEGMENT_HEADER;
    loop {
        if offset + FRAME_HEADER > size {
            return Ok((size, max_seq, End::Clean(offset)));
        }
        let head = read_at(file, path, offset, FRAME_HEADER)?;
        if head.iter().all(|&b| b == 0) {
            return Ok((size, max_seq, End::Clean(offset)));
        }
        let len_bytes = &head[..4];
        let payload_check = &head[4..12];
        let header_ok = check8(&[&offset.to_le_bytes(), len_bytes, payload_check]) == head[12..];
        let len = u64::from(u32::from_le_bytes(
            len_bytes
                .try_into()
                .unwrap_or_else(|_| unreachable!("a 4-byte slice")),
        ));
        let fits = offset + FRAME_HEADER + len <= size;
        let payload = if header_ok && fits {
            Some(read_at(file, path, offset + FRAME_HEADER, len)?)
        } else {
            None
        };
        let intact = payload
            .as_ref()
            .is_some_and(|p| check8(&[p]) == payload_check);
        if !intact {
            // A torn write is the last thing in the newest segment: nothing may follow it. With a readable
            // header the next frame's place is known; without one, what a crash left cannot be told apart from
            // a damaged header, and the newest segment's tail is taken to be torn.
            let followed = header_ok
                && fits
                && offset + 2 * FRAME_HEADER + len <= size
                && read_at(file, path, offset + FRAME_HEADER + len, FRAME_HEADER)?
                    .iter()
                    .any(|&b| b != 0);
            if newest && !followed {
                let end = if header_ok && fits {
                    offset + FRAME_HEADER + len
                } else {
                    size
                };
                return Ok((size, max_seq, End::Torn(offset, end)));
            }
            return Err(corrupt(format!(
                "the write at offset {offset} fails its checksum"
            )));
        }
        let payload = payload.unwrap_or_default();
        let items = decode(&payload)
            .map_err(|reason| corrupt(format!("the write at offset {offset}: {reason}")))?;
        for item in items {
            match item {
                Item::Record(record) => {
                    max_seq = max_seq.max(Some(record.seq));
                    into.records.push(record);
                }
                Item::Stable(stable) => {
                    if into.stable.as_ref().is_none_or(|s| s.seq <= stable.seq) {
                        into.records.retain(|r| r.seq > stable.seq);
                        into.stable = Some(stable);
                    }
                }
                Item::Value(name, bytes) => {
                    into.values.insert(name, bytes);
                }
                Item::Archive(item) => into.archive.push(item),
            }
        }
        offset += FRAME_HEADER + len;
    }
}
