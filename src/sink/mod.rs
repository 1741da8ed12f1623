//! Sink: decoded batches -> one open file per (table, event hour) -> committed Parquet.
//!
//! Open files are held as Arrow batches. When any of them is full (rows), the buffered data
//! reaches its bound (bytes), the oldest is old enough (age), too many are open, or the
//! collector stops, **all** open files are committed together as one commit set:
//!
//! 1. each is sorted by (source_id, event_ts), written to `.<name>.tmp` and fsynced;
//! 2. a manifest (`<wal>/commit-manifest`) naming the renames and the new WAL checkpoint is
//!    made durable;
//! 3. the files are renamed to their final names and their directories fsynced;
//! 4. the checkpoint is made durable (WAL segments wholly below it are deleted), then the
//!    manifest is removed.
//!
//! A crash before 2 leaves only temporary files (removed at start; the WAL replays their
//! rows); a crash after 2 is completed at start from the manifest. So after recovery every
//! WAL record is either in the dataset or replayed, never both.
//!
//! With an object store (`[store] url`), the files of step 1 are written under the spool
//! `<wal>/spool` instead of `data_dir`, and step 3 uploads each one to its key (removing the
//! spool copy) instead of renaming it; see [`store`].

pub mod parquet_file;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use crate::decode::Batch;
use crate::schema::KindSchema;

pub use parquet_file::{CommitError, CommittedFile, FileSettings};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot prepare data directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("commit manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Rotation and layout settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub data_dir: PathBuf,
    pub collector_id: String,
    /// Commit when one open file holds this many rows.
    pub max_rows: usize,
    /// Commit when the open files together buffer this many bytes of Arrow data.
    pub max_bytes: usize,
    /// Commit when the oldest open file is this old.
    pub max_age: Duration,
    pub max_open_files: usize,
    pub file: FileSettings,
    /// Where the checkpoint and the commit manifest live (the WAL directory).
    pub wal_dir: Option<PathBuf>,
    /// Upload committed files to this object store instead of renaming them into `data_dir`
    /// (needs `wal_dir`, where the files are spooled).
    pub store: Option<Arc<store::ObjectTarget>>,
}

impl WriterSettings {
    /// Where files are written before they are published: `data_dir`, or the spool in the
    /// WAL directory when they are uploaded.
    fn root(&self) -> PathBuf {
        match (&self.store, &self.wal_dir) {
            (Some(_), Some(wal)) => wal.join("spool"),
            _ => self.data_dir.clone(),
        }
    }
}

struct OpenFile {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
    opened: Instant,
}

/// Hands out file sequence numbers that stay unique across restarts: the start time in ms,
/// times 1000, plus a counter.
struct Sequence {
    next: u64,
}

impl Sequence {
    fn new() -> Sequence {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Sequence { next: ms * 1000 }
    }

    fn take(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// Totals since start, for the stats line and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkStats {
    pub files_committed: u64,
    pub rows_committed: u64,
    pub bytes_committed: u64,
    pub commit_errors: u64,
}

/// Owns every open file. Runs on the writer thread.
pub struct PartitionWriter {
    settings: WriterSettings,
    open: HashMap<(Arc<str>, i64), OpenFile>,
    buffered_bytes: usize,
    seq: Sequence,
    stats: SinkStats,
    schemas: HashMap<String, String>,
    /// Every WAL record below this has been handed to the writer.
    next_lsn: u64,
    /// The last checkpoint made durable.
    checkpoint: u64,
    /// After a failed commit, no new attempt before this.
    retry_at: Option<(Instant, Duration)>,
    /// A bound was hit; commit at the next group boundary.
    want_commit: bool,
    /// Rows of a group arrived and its `progress` has not: the open files hold part of a
    /// group, so a commit now could not name an exact checkpoint.
    in_group: bool,
    /// `data_dir` or the upload spool.
    root: PathBuf,
    /// The kinds' `_schema.json` are not in the object store yet.
    schemas_pending: bool,
}

const MANIFEST: &str = "commit-manifest";

impl PartitionWriter {
    /// Creates the data directory, completes a commit set interrupted by a crash, removes
    /// temporary files left by an earlier run and writes each kind's `_schema.json`.
    pub fn new(
        settings: WriterSettings,
        kinds: &[KindSchema],
    ) -> Result<PartitionWriter, SinkError> {
        let prep = |path: &Path, source| SinkError::Prepare {
            path: path.to_owned(),
            source,
        };
        let root = settings.root();
        if settings.store.is_some() && settings.wal_dir.is_none() {
            return Err(SinkError::Manifest {
                path: root,
                reason: "object store output needs a WAL directory to spool files in".into(),
            });
        }
        std::fs::create_dir_all(&root).map_err(|e| prep(&root, e))?;
        let mut checkpoint = 0;
        // The checkpoint of a commit set that could not be finished now (object store down):
        // its rows are in the spool files it names, so replay starts there.
        let mut pending = None;
        if let Some(wal_dir) = &settings.wal_dir {
            std::fs::create_dir_all(wal_dir).map_err(|e| prep(wal_dir, e))?;
            match complete_manifest(wal_dir, &root, settings.store.as_deref()) {
                Ok(Some(cp)) => {
                    tracing::info!(checkpoint = cp, "completed a commit interrupted by a crash");
                }
                Ok(None) => {}
                Err(e @ SinkError::Store(_)) => {
                    let (cp, _) = read_manifest(wal_dir)?.ok_or(e)?;
                    tracing::error!(
                        checkpoint = cp,
                        "could not finish a commit interrupted by a crash: the object store is not reachable; retried with the next commit"
                    );
                    pending = Some(cp);
                }
                Err(e) => return Err(e),
            }
            checkpoint = crate::wal::read_checkpoint(wal_dir).map_err(|e| SinkError::Manifest {
                path: wal_dir.clone(),
                reason: e.to_string(),
            })?;
        }
        // (With a set pending, its spool files are not leftovers.)
        if pending.is_none() {
            let removed = remove_tmp_leftovers(&root).map_err(|e| prep(&root, e))?;
            if removed > 0 {
                tracing::warn!(removed, "removed temporary files left by an earlier run");
            }
        }
        let mut schemas = HashMap::new();
        for k in kinds {
            let json = k.to_json();
            if settings.store.is_none() {
                let dir = settings.data_dir.join(&k.kind);
                std::fs::create_dir_all(&dir).map_err(|e| prep(&dir, e))?;
                parquet_file::write_atomic(&dir.join("_schema.json"), json.as_bytes())
                    .map_err(|e| prep(&dir, e))?;
            }
            schemas.insert(k.kind.clone(), json);
        }
        let mut writer = PartitionWriter {
            settings,
            open: HashMap::new(),
            buffered_bytes: 0,
            seq: Sequence::new(),
            stats: SinkStats::default(),
            schemas,
            next_lsn: checkpoint.max(pending.unwrap_or(0)),
            checkpoint,
            retry_at: pending.map(|_| (Instant::now(), Duration::from_millis(200))),
            want_commit: pending.is_some(),
            in_group: false,
            root,
            schemas_pending: false,
        };
        if let Some(store) = writer.settings.store.clone() {
            // Not fatal: the store may be down now; the first commit tries again.
            writer.schemas_pending = true;
            match writer.upload_schemas() {
                Ok(()) => tracing::info!(store = %store.url(), "writing to the object store"),
                Err(e) => {
                    tracing::error!(store = %store.url(), error = %e, "object store not reachable; files stay spooled and acknowledgements stop when the WAL is full")
                }
            }
        }
        Ok(writer)
    }

    /// Puts each kind's `_schema.json` in the object store (once per run).
    fn upload_schemas(&mut self) -> Result<(), SinkError> {
        let Some(store) = &self.settings.store else {
            return Ok(());
        };
        if !self.schemas_pending {
            return Ok(());
        }
        let mut kinds: Vec<_> = self.schemas.iter().collect();
        kinds.sort();
        for (kind, json) in kinds {
            let rel = Path::new(kind.as_str()).join("_schema.json");
            store.put_bytes(&rel, json.clone().into_bytes())?;
        }
        self.schemas_pending = false;
        Ok(())
    }

    /// A commit failed and waits for its retry (disk full, object store down).
    pub fn failing(&self) -> bool {
        self.retry_at.is_some()
    }

    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// The durable checkpoint: every WAL record below it is in committed files.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Where WAL replay starts: the checkpoint, or past it when a commit set whose manifest
    /// is durable still waits to be published (its files hold the records below).
    pub fn replay_from(&self) -> u64 {
        self.next_lsn
    }

    /// Records that every WAL record below `next_lsn` has been handed over: a group
    /// boundary, where a commit may happen.
    pub fn progress(&mut self, next_lsn: u64) {
        self.next_lsn = self.next_lsn.max(next_lsn);
        self.in_group = false;
        if self.want_commit {
            self.try_commit_all();
        }
    }

    /// Asks for a commit at the next group boundary (now, if between groups).
    pub fn request_commit(&mut self) {
        self.want_commit = true;
        if !self.in_group {
            self.try_commit_all();
        }
    }

    /// Adds decoded rows to their partition's open file; commits the set when a bound is hit.
    pub fn push(&mut self, b: Batch) {
        if b.batch.num_rows() == 0 {
            return;
        }
        let key = (b.table, b.hour_us);
        self.in_group = true;
        let f = self.open.entry(key).or_insert_with(|| OpenFile {
            batches: Vec::new(),
            rows: 0,
            bytes: 0,
            opened: Instant::now(),
        });
        let bytes = b.batch.get_array_memory_size();
        f.rows += b.batch.num_rows();
        f.bytes += bytes;
        f.batches.push(b.batch);
        let full = f.rows >= self.settings.max_rows;
        self.buffered_bytes += bytes;
        if full
            || self.buffered_bytes >= self.settings.max_bytes
            || self.open.len() > self.settings.max_open_files
        {
            // Committed at the group's end, so the checkpoint matches the files exactly.
            self.want_commit = true;
        }
        metrics::gauge!("v2x_sink_files_open").set(self.open.len() as f64);
    }

    /// Commits when the oldest open file has reached `max_age`; retries a failed commit.
    pub fn tick(&mut self) {
        let oldest = self.open.values().map(|f| f.opened).min();
        if oldest.is_some_and(|t| t.elapsed() >= self.settings.max_age)
            || (self.open.is_empty() && self.next_lsn > self.checkpoint)
        {
            // (The second case: nothing buffered, say only empty messages arrived; the
            // checkpoint can still advance.)
            self.request_commit();
        } else if self.want_commit && !self.in_group {
            self.try_commit_all();
        }
        metrics::gauge!("v2x_sink_files_open").set(self.open.len() as f64);
    }

    /// Commits everything now (shutdown, WAL at its bound). Returns how many open files could
    /// not be committed.
    pub fn close(&mut self) -> usize {
        self.retry_at = None;
        match self.commit_all() {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "final commit failed; the WAL still holds those rows");
                self.open.len()
            }
        }
    }

    fn try_commit_all(&mut self) {
        if self.in_group {
            self.want_commit = true;
            return;
        }
        if let Some((at, _)) = self.retry_at
            && Instant::now() < at
        {
            return;
        }
        if let Err(e) = self.commit_all() {
            self.stats.commit_errors += 1;
            metrics::counter!("v2x_sink_commit_errors_total").increment(1);
            let backoff = self.retry_at.map_or(Duration::from_millis(200), |(_, b)| {
                (b * 2).min(Duration::from_secs(10))
            });
            self.retry_at = Some((Instant::now() + backoff, backoff));
            tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "commit failed; rows kept and retried");
        } else {
            self.retry_at = None;
            self.want_commit = false;
        }
    }

    /// Commits every open file as one set and advances the WAL checkpoint to the last group
    /// boundary. Callers make sure no group is half handed over.
    pub fn commit_all(&mut self) -> Result<(), SinkError> {
        debug_assert!(!self.in_group, "commit inside a group");
        let started = Instant::now();
        if let Some(wal_dir) = &self.settings.wal_dir {
            // A set interrupted at runtime (say, a failed rename) is finished first.
            if let Some(cp) =
                complete_manifest(wal_dir, &self.root, self.settings.store.as_deref())?
            {
                if cp > self.checkpoint {
                    tracing::info!(checkpoint = cp, "completed a commit interrupted by a crash");
                }
                self.checkpoint = self.checkpoint.max(cp);
            }
        }
        self.upload_schemas()?;
        let checkpoint = self.next_lsn;
        let mut written: Vec<(Arc<str>, parquet_file::TmpFile)> = Vec::new();
        let mut keys: Vec<_> = self.open.keys().cloned().collect();
        keys.sort();
        for key in &keys {
            let f = &self.open[key];
            let (table, hour_us) = key;
            let dir = partition_dir(&self.root, table, *hour_us);
            let name = format!(
                "{}-{:020}.parquet",
                self.settings.collector_id,
                self.seq.take()
            );
            let sort = sort_columns(table);
            let schema = self.schemas.get(&**table).map(String::as_str);
            match parquet_file::write_tmp(
                &dir,
                &name,
                &f.batches,
                sort,
                schema,
                &self.settings.file,
            ) {
                Ok(t) => written.push((table.clone(), t)),
                Err(e) => {
                    for (_, t) in &written {
                        let _ = std::fs::remove_file(&t.tmp);
                    }
                    return Err(e.into());
                }
            }
        }
        let fail = |written: &[(Arc<str>, parquet_file::TmpFile)], e: SinkError| {
            for (_, t) in written {
                let _ = std::fs::remove_file(&t.tmp);
            }
            Err(e)
        };
        if let Some(wal_dir) = &self.settings.wal_dir {
            let manifest = manifest_text(checkpoint, &self.root, written.iter().map(|(_, t)| t));
            if let Err(e) = parquet_file::write_atomic(&wal_dir.join(MANIFEST), manifest.as_bytes())
            {
                return fail(
                    &written,
                    SinkError::Manifest {
                        path: wal_dir.join(MANIFEST),
                        reason: e.to_string(),
                    },
                );
            }
            crate::failpoint::hit("after_manifest");
            // From here the rows live in the manifest's temporary files: if a rename or the
            // checkpoint fails below, the next attempt (or the next start) finishes this set
            // from the manifest, so the rows must not stay open to be written a second time.
            self.open.clear();
            self.buffered_bytes = 0;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (_, t) in &written {
            publish(t, &self.root, self.settings.store.as_deref())?;
            crate::failpoint::hit("after_rename");
            if let Some(d) = t.path.parent()
                && !dirs.iter().any(|x| x == d)
            {
                dirs.push(d.to_owned());
            }
        }
        for d in &dirs {
            sync_published(d, self.settings.store.is_some())?;
        }
        if let Some(wal_dir) = &self.settings.wal_dir {
            crate::failpoint::hit("before_checkpoint");
            finish_manifest(wal_dir, checkpoint)?;
            self.checkpoint = checkpoint;
            metrics::gauge!("v2x_wal_checkpoint_lsn").set(checkpoint as f64);
        }
        for (table, t) in &written {
            metrics::counter!("v2x_sink_files_committed_total", "kind" => table.to_string())
                .increment(1);
            metrics::counter!("v2x_sink_rows_written_total", "kind" => table.to_string())
                .increment(t.rows as u64);
            metrics::counter!("v2x_sink_bytes_written_total", "kind" => table.to_string())
                .increment(t.bytes);
            self.stats.files_committed += 1;
            // The message index is bookkeeping about the rows, not rows of the data.
            if &**table != crate::message_index::TABLE {
                self.stats.rows_committed += t.rows as u64;
            }
            self.stats.bytes_committed += t.bytes;
            let _span = tracing::debug_span!("commit", kind = %table).entered();
            match &self.settings.store {
                Some(s) => {
                    let rel = t.path.strip_prefix(&self.root).unwrap_or(&t.path);
                    tracing::debug!(key = %s.key(rel), rows = t.rows, bytes = t.bytes, "committed");
                }
                None => {
                    tracing::debug!(path = %t.path.display(), rows = t.rows, bytes = t.bytes, "committed")
                }
            }
        }
        self.open.clear();
        self.buffered_bytes = 0;
        metrics::histogram!("v2x_sink_commit_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

fn manifest_text<'a>(
    checkpoint: u64,
    data_dir: &Path,
    files: impl Iterator<Item = &'a parquet_file::TmpFile>,
) -> String {
    let mut text = format!("checkpoint {checkpoint}\n");
    for t in files {
        let rel = |p: &Path| p.strip_prefix(data_dir).unwrap_or(p).display().to_string();
        text.push_str(&format!("{}\t{}\n", rel(&t.tmp), rel(&t.path)));
    }
    text
}

/// Makes the checkpoint durable (deleting WAL segments below it), then drops the manifest.
fn finish_manifest(wal_dir: &Path, checkpoint: u64) -> Result<(), SinkError> {
    let err = |reason: String| SinkError::Manifest {
        path: wal_dir.join(MANIFEST),
        reason,
    };
    let deleted =
        crate::wal::write_checkpoint(wal_dir, checkpoint).map_err(|e| err(e.to_string()))?;
    if deleted > 0 {
        metrics::counter!("v2x_wal_segments_deleted_total").increment(deleted as u64);
    }
    match std::fs::remove_file(wal_dir.join(MANIFEST)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    parquet_file::sync_dir(wal_dir).map_err(|e| err(e.to_string()))
}

/// Makes one written file visible: renamed into the dataset, or uploaded to its key.
fn publish(
    t: &parquet_file::TmpFile,
    root: &Path,
    store: Option<&store::ObjectTarget>,
) -> Result<(), SinkError> {
    match store {
        None => Ok(parquet_file::publish(t)?),
        Some(s) => {
            let rel = t.path.strip_prefix(root).unwrap_or(&t.path);
            s.upload(&t.tmp, rel)?;
            Ok(())
        }
    }
}

/// After publishing into `dir`: fsync it (renames), or drop it from the spool when the
/// uploads emptied it (its date directory too).
fn sync_published(dir: &Path, uploaded: bool) -> Result<(), SinkError> {
    if uploaded {
        if std::fs::remove_dir(dir).is_ok()
            && let Some(date) = dir.parent()
        {
            let _ = std::fs::remove_dir(date);
        }
        return Ok(());
    }
    parquet_file::sync_dir(dir).map_err(|source| {
        SinkError::Commit(CommitError::Io {
            step: "fsync of directory",
            path: dir.to_owned(),
            source,
        })
    })
}

/// Finishes a commit set whose manifest is durable: publishes (renames or uploads) what is
/// still temporary under `root`, then writes its checkpoint. Returns that checkpoint, or
/// `None` when there was no manifest.
pub fn complete_manifest(
    wal_dir: &Path,
    root: &Path,
    store: Option<&store::ObjectTarget>,
) -> Result<Option<u64>, SinkError> {
    let Some((checkpoint, files)) = read_manifest(wal_dir)? else {
        return Ok(None);
    };
    let path = wal_dir.join(MANIFEST);
    let bad = |reason: &str| SinkError::Manifest {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (tmp_rel, fin_rel) in &files {
        let (tmp, fin) = (root.join(tmp_rel), root.join(fin_rel));
        if let Some(s) = store {
            // A spool file that is gone was uploaded before the interruption.
            if tmp.exists() {
                s.upload(&tmp, Path::new(fin_rel))?;
            }
        } else if tmp.exists() {
            std::fs::rename(&tmp, &fin)
                .map_err(|e| bad(&format!("renaming {}: {e}", tmp.display())))?;
        } else if !fin.exists() {
            return Err(bad(&format!(
                "neither {} nor {} exists",
                tmp.display(),
                fin.display()
            )));
        }
        if let Some(d) = fin.parent()
            && !dirs.iter().any(|x| x == d)
        {
            dirs.push(d.to_owned());
        }
    }
    for d in &dirs {
        sync_published(d, store.is_some())?;
    }
    finish_manifest(wal_dir, checkpoint)?;
    Ok(Some(checkpoint))
}

/// A commit manifest: its checkpoint and the (temporary, final) paths of its files, relative
/// to the root they were written under.
type Manifest = (u64, Vec<(String, String)>);

fn read_manifest(wal_dir: &Path) -> Result<Option<Manifest>, SinkError> {
    let path = wal_dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SinkError::Manifest {
                path,
                reason: e.to_string(),
            });
        }
    };
    let bad = |reason: &str| SinkError::Manifest {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let mut lines = text.lines();
    let checkpoint = lines
        .next()
        .and_then(|l| l.strip_prefix("checkpoint "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| bad("no checkpoint line"))?;
    let mut files = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (tmp, fin) = line.split_once('\t').ok_or_else(|| bad("malformed line"))?;
        files.push((tmp.to_string(), fin.to_string()));
    }
    Ok(Some((checkpoint, files)))
}

/// The columns a table's files are sorted by: (source_id, event_ts) for the kinds,
/// (source_id, recv_ts) for `_messages`, recv_ts for `_quarantine`.
pub fn sort_columns(table: &str) -> &'static [&'static str] {
    if table == crate::quarantine::TABLE {
        &["recv_ts"]
    } else if table == crate::message_index::TABLE {
        &["source_id", "recv_ts"]
    } else {
        &["source_id", "event_ts"]
    }
}

/// `<data>/<table>/date=YYYY-MM-DD/hour=HH`, from the hour's start time. The table name is a
/// schema's kind (checked to be a safe identifier) or `_quarantine`, never a topic segment.
pub fn partition_dir(data: &Path, table: &str, hour_us: i64) -> PathBuf {
    let t = chrono::DateTime::from_timestamp_micros(hour_us).unwrap_or_default();
    data.join(table)
        .join(format!("date={}", t.format("%Y-%m-%d")))
        .join(format!("hour={}", t.format("%H")))
}

/// Removes `.*.tmp` files below `dir`, returning how many.
fn remove_tmp_leftovers(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() && name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_paths_are_zero_padded_utc() {
        let hour = crate::decode::time::parse_rfc3339_us("2022-09-29T03:00:00Z").unwrap();
        assert_eq!(
            partition_dir(Path::new("data"), "radar_target", hour),
            PathBuf::from("data/radar_target/date=2022-09-29/hour=03")
        );
    }

    #[test]
    fn leftovers_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("bsm/date=2026-01-01/hour=00");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join(".c-1.parquet.tmp"), b"half").unwrap();
        std::fs::write(part.join("c-0.parquet"), b"keep").unwrap();
        assert_eq!(remove_tmp_leftovers(dir.path()).unwrap(), 1);
        assert!(part.join("c-0.parquet").exists());
    }
}
