//! The commit log: a shard's write-ahead log, and its recovery.
//!
//! A shard appends each group commit to its partition's `commit.log` with one direct,
//! `O_DSYNC` write on its own io_uring ring (the writer is `gateway/src/commitlog.rs`)
//! and acknowledges the batch when that write completes. The same writes then reach the
//! partition's store in larger, unsynced batches off the hot path ([`crate::Store::apply`]).
//! When the log is full the shard makes the store durable ([`crate::Store::flush`]) and
//! starts a new generation from the top of the file. This module holds what needs no
//! runtime: the on-disk format and [`recover`], which replays the log into the store at
//! start-up before any shard runs.
//!
//! # Format
//! - Bytes `0..4096`: the header: `b"SBLOG001"`, the generation (a random `u64`), and an
//!   xxh3 checksum of both.
//! - From byte 4096: records, back to back, each starting on a multiple of 512 bytes:
//!   `b"SBLR"`, payload length (`u32`), generation (`u64`), number within the
//!   generation (`u64`, from 0), span (`u32`: the record's bytes including padding, a
//!   multiple of 512), 4 zero bytes, xxh3 of bytes `4..32` and the payload (`u64`), then the
//!   payload (postcard of the batch's writes) and zero padding.
//!
//! Recovery reads records from byte 4096 while each one is whole and belongs to the
//! current generation with the next number; the first that is not ends the log. A
//! record is acknowledged only after its write completed, and one write runs at a time,
//! so whatever ends the scan (a torn last write, an older generation's leftovers) was
//! never acknowledged. The generation is random and never leaves the server, so bytes a
//! client chose (a message body inside an older record) cannot pass for a record.
//! All integers are little-endian.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::Path;

use serde::{Deserialize, Serialize};
use wire::frame::ConvId;
use xxhash_rust::xxh3::Xxh3;

use crate::model::disk::ConvMetaV1;
use crate::model::{
    ConvMeta, CursorRecord, InboxValue, LastOf, MemberRow, StoredMessage, StoredMessageV1, UserRecord, Write,
};
use crate::{Store, StoreError};

/// The log file's name inside a partition directory.
pub const FILE_NAME: &str = "commit.log";
/// Bytes reserved for the header; records start here.
pub const HEADER_LEN: u64 = 4096;
/// Records start and end on multiples of this (a sector: direct I/O's smallest unit);
/// a device with larger sectors pads records to its own unit, up to [`MAX_ALIGN`].
pub const RECORD_ALIGN: u64 = 512;
/// The largest padding unit a record may use.
pub const MAX_ALIGN: u64 = 64 * 1024;
/// Bytes of a record before its payload.
pub const RECORD_HEADER_LEN: usize = 40;

const HEADER_MAGIC: &[u8; 8] = b"SBLOG001";
const RECORD_MAGIC: &[u8; 4] = b"SBLR";

/// What a write is stored as in the log (borrowing, to encode without copies).
#[derive(Serialize)]
enum LogWrite<'a> {
    /// Written by versions before `Conv2` (first-format metadata); never written now.
    #[allow(dead_code)]
    Conv {
        conv: u128,
        meta: &'a ConvMetaV1,
    },
    Unindex {
        conv: u128,
        user: &'a str,
    },
    /// Written by versions before `Message2`; never written now, kept so the variants
    /// after it keep their numbers (a record names its variant by position).
    #[allow(dead_code)]
    Message {
        conv: u128,
        seq: u64,
        msg: &'a StoredMessageV1,
    },
    User {
        user: &'a str,
        record: UserRecord,
    },
    Cursor {
        conv: u128,
        user: &'a str,
        cursor: CursorRecord,
    },
    Inbox {
        user: &'a str,
        conv: u128,
        at: u64,
        value: &'a InboxValue,
    },
    /// A message with its lifecycle fields (logs written before them hold `Message`).
    Message2 {
        conv: u128,
        seq: u64,
        msg: &'a StoredMessage,
    },
    Reaction {
        conv: u128,
        seq: u64,
        user: &'a str,
        emoji: &'a str,
    },
    /// Metadata in the current format.
    Conv2 {
        conv: u128,
        meta: &'a ConvMeta,
    },
    Member {
        conv: u128,
        user: &'a str,
        row: MemberRow,
    },
    GroupLast {
        conv: u128,
        at: u64,
        last: &'a LastOf,
    },
    Hide {
        conv: u128,
        user: &'a str,
        seq: u64,
    },
}

/// What a write is read back as; the same encoding as [`LogWrite`].
#[derive(Deserialize)]
enum OwnedLogWrite {
    Conv { conv: u128, meta: ConvMetaV1 },
    Unindex { conv: u128, user: String },
    Message { conv: u128, seq: u64, msg: StoredMessageV1 },
    User { user: String, record: UserRecord },
    Cursor { conv: u128, user: String, cursor: CursorRecord },
    Inbox { user: String, conv: u128, at: u64, value: InboxValue },
    Message2 { conv: u128, seq: u64, msg: StoredMessage },
    Reaction { conv: u128, seq: u64, user: String, emoji: String },
    Conv2 { conv: u128, meta: ConvMeta },
    Member { conv: u128, user: String, row: MemberRow },
    GroupLast { conv: u128, at: u64, last: LastOf },
    Hide { conv: u128, user: String, seq: u64 },
}

impl<'a> From<&'a Write> for LogWrite<'a> {
    fn from(w: &'a Write) -> Self {
        match w {
            Write::Conv { conv, meta } => LogWrite::Conv2 { conv: conv.0, meta },
            Write::Unindex { conv, user } => LogWrite::Unindex { conv: conv.0, user },
            Write::Message { conv, seq, msg } => LogWrite::Message2 { conv: conv.0, seq: *seq, msg },
            Write::User { user, record } => LogWrite::User { user, record: *record },
            Write::Cursor { conv, user, cursor } => LogWrite::Cursor { conv: conv.0, user, cursor: *cursor },
            Write::Inbox { user, conv, at, value } => LogWrite::Inbox { user, conv: conv.0, at: *at, value },
            Write::Reaction { conv, seq, user, emoji } => LogWrite::Reaction { conv: conv.0, seq: *seq, user, emoji },
            Write::Member { conv, user, row } => LogWrite::Member { conv: conv.0, user, row: *row },
            Write::GroupLast { conv, at, last } => LogWrite::GroupLast { conv: conv.0, at: *at, last },
            Write::Hide { conv, user, seq } => LogWrite::Hide { conv: conv.0, user, seq: *seq },
        }
    }
}

impl From<OwnedLogWrite> for Write {
    fn from(w: OwnedLogWrite) -> Self {
        match w {
            OwnedLogWrite::Conv { conv, meta } => Write::Conv { conv: ConvId(conv), meta: meta.into() },
            OwnedLogWrite::Conv2 { conv, meta } => Write::Conv { conv: ConvId(conv), meta },
            OwnedLogWrite::Member { conv, user, row } => Write::Member { conv: ConvId(conv), user, row },
            OwnedLogWrite::GroupLast { conv, at, last } => Write::GroupLast { conv: ConvId(conv), at, last },
            OwnedLogWrite::Hide { conv, user, seq } => Write::Hide { conv: ConvId(conv), user, seq },
            OwnedLogWrite::Unindex { conv, user } => Write::Unindex { conv: ConvId(conv), user },
            OwnedLogWrite::Message { conv, seq, msg } => {
                Write::Message { conv: ConvId(conv), seq, msg: StoredMessage::from(msg).into() }
            }
            OwnedLogWrite::Message2 { conv, seq, msg } => Write::Message { conv: ConvId(conv), seq, msg: msg.into() },
            OwnedLogWrite::User { user, record } => Write::User { user, record },
            OwnedLogWrite::Cursor { conv, user, cursor } => Write::Cursor { conv: ConvId(conv), user, cursor },
            OwnedLogWrite::Inbox { user, conv, at, value } => Write::Inbox { user, conv: ConvId(conv), at, value },
            OwnedLogWrite::Reaction { conv, seq, user, emoji } => {
                Write::Reaction { conv: ConvId(conv), seq, user, emoji }
            }
        }
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("commit log: {e}"))
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("commit log: {e}"))
}

/// Rounds `n` up to a multiple of [`RECORD_ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// A fresh random generation.
pub fn new_generation() -> Result<u64, StoreError> {
    getrandom::u64().map_err(|e| StoreError::Unavailable(format!("no randomness for the commit log: {e}")))
}

/// The header block for `generation`.
pub fn encode_header(generation: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(HEADER_MAGIC);
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..16]);
    h[16..24].copy_from_slice(&sum.to_le_bytes());
    h
}

/// The generation a header block names, if it is one.
pub fn decode_header(h: &[u8]) -> Option<u64> {
    if h.len() < 24 || &h[..8] != HEADER_MAGIC {
        return None;
    }
    let sum = u64::from_le_bytes(h[16..24].try_into().ok()?);
    (xxhash_rust::xxh3::xxh3_64(&h[..16]) == sum).then(|| u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()))
}

/// Appends one record holding `writes` to `out`, padded to a multiple of `align` (the
/// device's direct-I/O unit: a multiple of [`RECORD_ALIGN`], at most [`MAX_ALIGN`]);
/// returns its span.
pub fn encode_record(
    generation: u64,
    number: u64,
    writes: &[Write],
    align: u64,
    out: &mut Vec<u8>,
) -> Result<u64, StoreError> {
    if !align.is_multiple_of(RECORD_ALIGN) || !(RECORD_ALIGN..=MAX_ALIGN).contains(&align) {
        return Err(corrupt(format!("unsupported alignment {align}")));
    }
    let start = out.len();
    out.resize(start + RECORD_HEADER_LEN, 0);
    let items: Vec<LogWrite<'_>> = writes.iter().map(LogWrite::from).collect();
    *out = postcard::to_extend(&items, std::mem::take(out)).map_err(corrupt)?;
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    let len = u32::try_from(payload_len).map_err(|_| corrupt("batch over 4 GiB"))?;
    let span = ((RECORD_HEADER_LEN + payload_len) as u64).div_ceil(align) * align;
    let h = &mut out[start..start + RECORD_HEADER_LEN];
    h[..4].copy_from_slice(RECORD_MAGIC);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    h[16..24].copy_from_slice(&number.to_le_bytes());
    h[24..28].copy_from_slice(&(span as u32).to_le_bytes());
    let sum = checksum(&out[start..start + 32], &out[start + RECORD_HEADER_LEN..]);
    out[start + 32..start + 40].copy_from_slice(&sum.to_le_bytes());
    out.resize(start + span as usize, 0);
    Ok(span)
}

fn checksum(head: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&head[4..32]);
    h.update(payload);
    h.digest()
}

/// A record's fixed part, if `h` is the head of record `number` of `generation`.
fn parse_record_head(h: &[u8; RECORD_HEADER_LEN], generation: u64, number: u64) -> Option<(usize, u64)> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    if &h[..4] != RECORD_MAGIC || u64_at(8) != generation || u64_at(16) != number {
        return None;
    }
    let len = u32_at(4) as usize;
    let span = u64::from(u32_at(24));
    let min = align_up((RECORD_HEADER_LEN + len) as u64);
    (span.is_multiple_of(RECORD_ALIGN) && (min..=min + MAX_ALIGN).contains(&span)).then_some((len, span))
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The generation the shard appends to from now on (the log is empty).
    pub generation: u64,
    /// Records replayed into the store.
    pub records: u64,
    /// Writes replayed into the store.
    pub writes: u64,
}

/// Reads the records of the log at `path` (see the module docs for where it ends).
pub fn read(path: &Path) -> Result<Vec<Vec<Write>>, StoreError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e)),
    };
    let mut header = vec![0u8; HEADER_LEN as usize];
    if read_full(&mut f, &mut header)? < HEADER_LEN as usize {
        return Ok(Vec::new());
    }
    let Some(generation) = decode_header(&header) else { return Ok(Vec::new()) };
    let mut batches = Vec::new();
    let mut pos = HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        f.seek(SeekFrom::Start(pos)).map_err(io_error)?;
        let mut head = [0u8; RECORD_HEADER_LEN];
        if read_full(&mut f, &mut head)? < RECORD_HEADER_LEN {
            break;
        }
        let Some((len, span)) = parse_record_head(&head, generation, batches.len() as u64) else { break };
        payload.resize(len, 0);
        if read_full(&mut f, &mut payload)? < len {
            break;
        }
        let sum = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default());
        if checksum(&head, &payload) != sum {
            break;
        }
        // A whole record of this generation that does not decode is not a torn write:
        // refuse to start rather than drop acknowledged messages silently.
        let writes: Vec<OwnedLogWrite> = postcard::from_bytes(&payload).map_err(corrupt)?;
        batches.push(writes.into_iter().map(Write::from).collect());
        pos += span;
    }
    Ok(batches)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize, StoreError> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(n)
}

/// Replays the log at `path` into `store`, makes the store durable, and starts a new,
/// empty generation (creating the file if needed). Run before the shard appends.
/// Replaying twice is harmless: every write is a put or a delete of a fixed key.
pub fn recover(path: &Path, store: &dyn Store) -> Result<Recovered, StoreError> {
    let batches = read(path)?;
    let (mut records, mut writes) = (0, 0);
    for batch in &batches {
        store.apply(batch)?;
        records += 1;
        writes += batch.len() as u64;
    }
    store.flush()?;
    let generation = new_generation()?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(io_error)?;
    f.write_all(&encode_header(generation)).map_err(io_error)?;
    f.sync_all().map_err(io_error)?;
    if let Some(dir) = path.parent() {
        // The file may be new: make its directory entry durable too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error)?;
    }
    Ok(Recovered { generation, records, writes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::model::ConvKind;

    fn msg(conv: u128, seq: u64, body: &[u8]) -> Write {
        Write::Message {
            conv: ConvId(conv),
            seq,
            msg: std::sync::Arc::new(StoredMessage {
                ext: None,
                message_id: seq,
                from: "alice".into(),
                from_device: "phone".into(),
                client_msg_id: format!("c{seq}"),
                ts: 1,
                kind: 0,
                body: body.to_vec(),
            }),
        }
    }

    fn conv(conv: u128) -> Write {
        let meta = ConvMeta { kind: ConvKind::Direct, members: vec!["alice".into(), "bob".into()], created: 1 };
        Write::Conv { conv: ConvId(conv), meta }
    }

    /// Writes a header and `batches` as records, as the shard would.
    fn write_log(path: &Path, generation: u64, batches: &[Vec<Write>]) -> Vec<u64> {
        let mut bytes = encode_header(generation);
        let mut offsets = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            offsets.push(bytes.len() as u64);
            encode_record(generation, i as u64, b, RECORD_ALIGN, &mut bytes).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
        offsets
    }

    #[test]
    fn records_round_trip_and_are_sector_aligned() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let batches = vec![vec![conv(7), msg(7, 1, b"hi")], vec![msg(7, 2, &[0xAB; 3000])], vec![msg(9, 1, b"")]];
        let offsets = write_log(&path, 42, &batches);
        assert!(offsets.iter().all(|o| o % RECORD_ALIGN == 0), "{offsets:?}");
        assert_eq!(read(&path).unwrap(), batches);
    }

    #[test]
    fn records_padded_for_4k_sectors_chain() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let batches = vec![vec![msg(7, 1, b"a")], vec![msg(7, 2, &[1; 5000])], vec![msg(7, 3, b"c")]];
        let mut bytes = encode_header(9);
        for (i, b) in batches.iter().enumerate() {
            let span = encode_record(9, i as u64, b, 4096, &mut bytes).unwrap();
            assert_eq!(span % 4096, 0);
        }
        assert_eq!(bytes.len() % 4096, 0);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read(&path).unwrap(), batches);
        assert!(encode_record(9, 0, &batches[0], 1000, &mut Vec::new()).is_err(), "not a sector multiple");
    }

    #[test]
    fn a_torn_last_record_ends_the_log() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let batches = vec![vec![msg(1, 1, b"a")], vec![msg(1, 2, &[7; 900])]];
        let offsets = write_log(&path, 5, &batches);
        let mut bytes = std::fs::read(&path).unwrap();
        // The second record's last sector never reached the disk.
        let end = bytes.len();
        bytes[end - 512..].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), batches[..1]);
        // Cut inside the record's head.
        std::fs::write(&path, &bytes[..offsets[1] as usize + 10]).unwrap();
        assert_eq!(read(&path).unwrap(), batches[..1]);
    }

    #[test]
    fn an_older_generation_is_not_replayed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let old = vec![vec![msg(1, 1, b"a")], vec![msg(1, 2, b"b")], vec![msg(1, 3, b"c")]];
        write_log(&path, 1, &old);
        // Generation 2 rewrote the top of the file with one record; generation 1's
        // second and third records are still on disk after it.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut top = encode_header(2);
        encode_record(2, 0, &[msg(4, 1, b"new")], RECORD_ALIGN, &mut top).unwrap();
        bytes[..top.len()].copy_from_slice(&top);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), vec![vec![msg(4, 1, b"new")]]);
    }

    #[test]
    fn a_body_that_looks_like_a_record_is_not_replayed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        // Where the scan looks after the last record lie leftovers of an older
        // generation: a client's message body holding a well-formed record, numbered as
        // the next one, of a generation the client guessed (wrongly: it is random).
        let current = 0x0BAD_6E55;
        let mut bytes = encode_header(current);
        encode_record(current, 0, &[msg(4, 1, b"new")], RECORD_ALIGN, &mut bytes).unwrap();
        encode_record(current + 1, 1, &[msg(66, 1, b"forged")], RECORD_ALIGN, &mut bytes).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), vec![vec![msg(4, 1, b"new")]]);
        // With the right generation the same bytes would be read: only the generation
        // kept them out.
        let mut bytes = encode_header(current);
        encode_record(current, 0, &[msg(4, 1, b"new")], RECORD_ALIGN, &mut bytes).unwrap();
        encode_record(current, 1, &[msg(66, 1, b"forged")], RECORD_ALIGN, &mut bytes).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_or_foreign_file_is_an_empty_log() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(&d.path().join("none")).unwrap().is_empty());
        let path = d.path().join(FILE_NAME);
        std::fs::write(&path, b"not a log at all").unwrap();
        assert!(read(&path).unwrap().is_empty());
    }

    #[test]
    fn recover_replays_into_the_store_and_empties_the_log() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let batches = vec![vec![conv(7), msg(7, 1, b"one")], vec![msg(7, 2, b"two")]];
        write_log(&path, 11, &batches);
        {
            let store = EmbeddedStore::open(&d.path().join("db")).unwrap();
            let r = recover(&path, &store).unwrap();
            assert_eq!((r.records, r.writes), (2, 3));
            assert_ne!(r.generation, 11);
            assert!(read(&path).unwrap().is_empty(), "the new generation has no records");
        }
        // What was replayed was made durable: it is there after reopening, with no log.
        let store = EmbeddedStore::open(&d.path().join("db")).unwrap();
        assert!(store.conv_meta(ConvId(7)).unwrap().is_some());
        let slice = store.newest(ConvId(7), 0, u64::MAX, 10).unwrap();
        assert_eq!(
            slice.messages.iter().map(|(s, m)| (*s, m.body.clone())).collect::<Vec<_>>(),
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        let again = recover(&path, &store).unwrap();
        assert_eq!(again.records, 0);
    }
}
