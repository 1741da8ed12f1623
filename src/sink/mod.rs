//! Sink: decoded batches -> one open file per (table, event hour) -> committed Parquet.
//!
//! An open file is held as Arrow batches until it rotates (rows, bytes or age) or the
//! collector stops; then its rows are sorted by (source_id, event_ts), written to a temporary
//! name, fsynced, renamed into `<data>/<table>/date=YYYY-MM-DD/hour=HH/` and the directory is
//! fsynced. Readers never see a partial file: temporary names start with `.` and end in `.tmp`.

pub mod parquet_file;

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
}

/// Rotation and layout settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub data_dir: PathBuf,
    pub collector_id: String,
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub max_open_files: usize,
    pub file: FileSettings,
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
    seq: Sequence,
    stats: SinkStats,
    schemas: HashMap<String, String>,
}

impl PartitionWriter {
    /// Creates the data directory, writes each kind's `_schema.json`, and removes temporary
    /// files left by a previous run.
    pub fn new(
        settings: WriterSettings,
        kinds: &[KindSchema],
    ) -> Result<PartitionWriter, SinkError> {
        let prep = |path: &Path, source| SinkError::Prepare {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| prep(&settings.data_dir, e))?;
        let removed =
            remove_tmp_leftovers(&settings.data_dir).map_err(|e| prep(&settings.data_dir, e))?;
        if removed > 0 {
            tracing::warn!(removed, "removed temporary files left by an earlier run");
        }
        let mut schemas = HashMap::new();
        for k in kinds {
            let dir = settings.data_dir.join(&k.kind);
            std::fs::create_dir_all(&dir).map_err(|e| prep(&dir, e))?;
            let json = k.to_json();
            parquet_file::write_atomic(&dir.join("_schema.json"), json.as_bytes())
                .map_err(|e| prep(&dir, e))?;
            schemas.insert(k.kind.clone(), json);
        }
        Ok(PartitionWriter {
            settings,
            open: HashMap::new(),
            seq: Sequence::new(),
            stats: SinkStats::default(),
            schemas,
        })
    }

    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// Adds decoded rows to their partition's open file, committing it if it is full.
    pub fn push(&mut self, b: Batch) {
        if b.batch.num_rows() == 0 {
            return;
        }
        let key = (b.table, b.hour_us);
        let f = self.open.entry(key.clone()).or_insert_with(|| OpenFile {
            batches: Vec::new(),
            rows: 0,
            bytes: 0,
            opened: Instant::now(),
        });
        f.rows += b.batch.num_rows();
        f.bytes += b.batch.get_array_memory_size();
        f.batches.push(b.batch);
        if f.rows >= self.settings.max_rows || f.bytes >= self.settings.max_bytes {
            self.commit(&key);
        }
        while self.open.len() > self.settings.max_open_files {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.opened)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    if !self.commit(&k) {
                        break;
                    }
                }
                None => break,
            }
        }
        metrics::gauge!("v2x_sink_files_open").set(self.open.len() as f64);
    }

    /// Commits the files that have been open longer than `max_age`.
    pub fn tick(&mut self) {
        let due: Vec<_> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= self.settings.max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.commit(&k);
        }
        metrics::gauge!("v2x_sink_files_open").set(self.open.len() as f64);
    }

    /// Commits every open file. Returns how many could not be committed.
    pub fn close(&mut self) -> usize {
        let keys: Vec<_> = self.open.keys().cloned().collect();
        let mut failed = 0;
        for k in keys {
            if !self.commit(&k) {
                failed += 1;
            }
        }
        failed
    }

    /// Writes one open file. On failure the rows stay open and are retried on the next tick.
    fn commit(&mut self, key: &(Arc<str>, i64)) -> bool {
        let Some(file) = self.open.remove(key) else {
            return true;
        };
        let (table, hour_us) = key;
        let dir = partition_dir(&self.settings.data_dir, table, *hour_us);
        let name = format!(
            "{}-{:020}.parquet",
            self.settings.collector_id,
            self.seq.take()
        );
        let sort: &[&str] = if &**table == crate::quarantine::TABLE {
            &["recv_ts"]
        } else {
            &["source_id", "event_ts"]
        };
        let started = Instant::now();
        let result = parquet_file::commit(
            &dir,
            &name,
            &file.batches,
            sort,
            self.schemas.get(&**table).map(String::as_str),
            &self.settings.file,
        );
        match result {
            Ok(done) => {
                let secs = started.elapsed().as_secs_f64();
                metrics::histogram!("v2x_sink_commit_seconds").record(secs);
                metrics::counter!("v2x_sink_files_committed_total", "kind" => table.to_string())
                    .increment(1);
                metrics::counter!("v2x_sink_rows_written_total", "kind" => table.to_string())
                    .increment(done.rows as u64);
                metrics::counter!("v2x_sink_bytes_written_total", "kind" => table.to_string())
                    .increment(done.bytes);
                self.stats.files_committed += 1;
                self.stats.rows_committed += done.rows as u64;
                self.stats.bytes_committed += done.bytes;
                tracing::debug!(path = %done.path.display(), rows = done.rows, bytes = done.bytes, "committed");
                true
            }
            Err(e) => {
                self.stats.commit_errors += 1;
                metrics::counter!("v2x_sink_commit_errors_total").increment(1);
                tracing::error!(table = %table, error = %e, "commit failed; rows kept in memory and retried");
                self.open.insert(key.clone(), file);
                false
            }
        }
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
