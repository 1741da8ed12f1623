//! Write-ahead log: every received message is appended here and fsynced (one fsync per group
//! of messages) before it is acknowledged to the broker.
//!
//! Layout of `<wal_dir>`:
//! - `<first-lsn:020>.wal` segment files of framed records;
//! - `checkpoint`: the lowest LSN not yet known to be in committed Parquet (all records below it
//!   are in the dataset); written atomically;
//! - `commits`: the Parquet files committed since the checkpoint, with the LSN range of their
//!   rows, so recovery can tell which replayed rows are already in the dataset.
//!
//! Frame: `[u32 body length][u32 CRC-32 of body][body]`, little endian; body:
//! `[u64 lsn][i64 recv_us][u8 qos][u16 topic length][topic][payload]`. Recovery reads each
//! segment up to its first bad frame (short, oversized, bad checksum, LSN out of order) and keeps
//! exactly that intact prefix, counting what it skipped.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
const BODY_FIXED: usize = 8 + 8 + 1 + 2;
/// Larger frames are treated as corruption.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-ahead log {path}: invalid checkpoint {text:?}")]
    Checkpoint { path: PathBuf, text: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One logged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub recv_us: i64,
    pub qos: u8,
    /// The broker marked it as a redelivery (MQTT DUP flag).
    pub dup: bool,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Appends one framed record to `out`.
pub fn encode(
    out: &mut Vec<u8>,
    lsn: u64,
    recv_us: i64,
    qos: u8,
    dup: bool,
    topic: &str,
    payload: &[u8],
) {
    let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    let body_len = BODY_FIXED + topic.len() + payload.len();
    out.reserve(HEADER + body_len);
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&recv_us.to_le_bytes());
    out.push((qos & 0x3) | (u8::from(dup) << 2));
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading a segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: Vec<Record>,
    /// Bytes after the intact prefix (a torn tail or corruption).
    pub skipped_bytes: u64,
    /// Why reading stopped early, if it did.
    pub damage: Option<String>,
}

/// Decodes the intact prefix of a segment's bytes.
pub fn decode_segment(bytes: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut pos = 0usize;
    let mut last_lsn: Option<u64> = None;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let bad = |why: &str| Some(format!("{why} at byte {pos}"));
        if rest.len() < HEADER {
            scan.damage = bad("torn frame header");
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if !(BODY_FIXED..=MAX_RECORD_BYTES).contains(&len) {
            scan.damage = bad("impossible frame length");
            break;
        }
        if rest.len() < HEADER + len {
            scan.damage = bad("torn frame");
            break;
        }
        let body = &rest[HEADER..HEADER + len];
        if crc32fast::hash(body) != crc {
            scan.damage = bad("checksum mismatch");
            break;
        }
        let lsn = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let recv_us = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        let qos = body[16] & 0x3;
        let dup = body[16] & 0x4 != 0;
        let topic_len = u16::from_le_bytes(body[17..19].try_into().expect("2 bytes")) as usize;
        if BODY_FIXED + topic_len > len || last_lsn.is_some_and(|l| lsn <= l) {
            scan.damage = bad("inconsistent record");
            break;
        }
        let topic = String::from_utf8_lossy(&body[BODY_FIXED..BODY_FIXED + topic_len]).into_owned();
        let payload = body[BODY_FIXED + topic_len..].to_vec();
        scan.records.push(Record {
            lsn,
            recv_us,
            qos,
            dup,
            topic,
            payload,
        });
        last_lsn = Some(lsn);
        pos += HEADER + len;
    }
    scan.skipped_bytes = (bytes.len() - pos) as u64;
    scan
}

/// The segment files of `dir`, ordered by first LSN.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_suffix(".wal")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((first, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

/// Reads the checkpoint (0 when there is none).
pub fn read_checkpoint(dir: &Path) -> Result<u64, WalError> {
    let path = dir.join("checkpoint");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| WalError::Checkpoint { path, text }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Makes the checkpoint durable, then deletes the segments wholly below it.
pub fn write_checkpoint(dir: &Path, lsn: u64) -> Result<usize, WalError> {
    let path = dir.join("checkpoint");
    crate::sink::parquet_file::write_atomic(&path, format!("{lsn}\n").as_bytes())
        .map_err(io_err(&path))?;
    let segs = segments(dir)?;
    let mut deleted = 0;
    for pair in segs.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= lsn {
            std::fs::remove_file(path).map_err(io_err(path))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The appending side, owned by the decoder thread.
pub struct Wal {
    dir: PathBuf,
    file: BufWriter<File>,
    path: PathBuf,
    segment_bytes: u64,
    written_in_segment: u64,
    /// Length of the current segment at the last successful fsync.
    synced_len: u64,
    /// Every record below this LSN is durable.
    synced_next_lsn: u64,
    next_lsn: u64,
    buf: Vec<u8>,
    unsynced: bool,
    fsync: bool,
}

impl Wal {
    /// Opens a fresh segment starting at `next_lsn` (recovery never appends to an old one).
    pub fn open(dir: &Path, next_lsn: u64, segment_bytes: u64) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (file, path) = Self::create_segment(dir, next_lsn)?;
        Ok(Wal {
            dir: dir.to_owned(),
            file,
            path,
            segment_bytes: segment_bytes.max(4096),
            written_in_segment: 0,
            synced_len: 0,
            synced_next_lsn: next_lsn,
            next_lsn,
            buf: Vec::with_capacity(64 * 1024),
            unsynced: false,
            fsync: true,
        })
    }

    fn create_segment(dir: &Path, first: u64) -> Result<(BufWriter<File>, PathBuf), WalError> {
        let path = segment_path(dir, first);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok((BufWriter::with_capacity(256 * 1024, file), path))
    }

    /// Benchmarks only: write without fsync.
    pub fn set_fsync(&mut self, fsync: bool) {
        self.fsync = fsync;
    }

    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Buffers one record; returns its LSN. Durable only after [`Wal::sync`].
    pub fn append(
        &mut self,
        recv_us: i64,
        qos: u8,
        dup: bool,
        topic: &str,
        payload: &[u8],
    ) -> Result<u64, WalError> {
        if self.written_in_segment >= self.segment_bytes {
            self.rotate()?;
        }
        let lsn = self.next_lsn;
        self.buf.clear();
        encode(&mut self.buf, lsn, recv_us, qos, dup, topic, payload);
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.written_in_segment += self.buf.len() as u64;
        self.next_lsn += 1;
        self.unsynced = true;
        metrics::counter!("v2x_wal_bytes_written_total").increment(self.buf.len() as u64);
        Ok(lsn)
    }

    /// Group commit: flush and fsync everything appended so far.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if !self.unsynced {
            return Ok(());
        }
        let started = std::time::Instant::now();
        crate::failpoint::hit("before_wal_fsync");
        self.file.flush().map_err(io_err(&self.path))?;
        if self.fsync {
            self.file
                .get_ref()
                .sync_data()
                .map_err(io_err(&self.path))?;
        }
        self.unsynced = false;
        self.synced_len = self.written_in_segment;
        self.synced_next_lsn = self.next_lsn;
        crate::failpoint::hit("after_wal_fsync");
        metrics::histogram!("v2x_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let (file, path) = Self::create_segment(&self.dir, self.next_lsn)?;
        self.file = file;
        self.path = path;
        self.written_in_segment = 0;
        self.synced_len = 0;
        metrics::counter!("v2x_wal_segments_created_total").increment(1);
        Ok(())
    }
}

impl Wal {
    /// Gives up the records appended since the last fsync: drops the buffer unwritten and
    /// returns the segment and its durable length, for [`truncate`]. Used after a write
    /// error, before the same messages are logged again elsewhere, so that no segment holds
    /// a second copy of them.
    pub fn abandon(self) -> (PathBuf, u64) {
        let (file, _unwritten) = self.file.into_parts();
        drop(file);
        (self.path, self.synced_len)
    }

    /// Every record below this LSN is durable (fsynced).
    pub fn synced_next_lsn(&self) -> u64 {
        self.synced_next_lsn
    }
}

/// Cuts a segment back to `len` bytes and makes that durable.
pub fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Total bytes of the segment files.
pub fn disk_bytes(dir: &Path) -> u64 {
    segments(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Reads a whole segment file.
pub fn read_segment(path: &Path) -> Result<SegmentScan, WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    Ok(decode_segment(&bytes))
}

#[cfg(test)]
mod tests;
