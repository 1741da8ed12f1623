//! `v2x-collector compact`: merges the small files of closed partitions into files near a
//! target size, rows still sorted by (source_id, event_ts), without losing or duplicating a row
//! when killed at any instruction, and while the collector keeps running.
//!
//! # Which partitions, which files
//!
//! A partition is *closed* when its hour started at least `--min-age-hours`
//! ([`DEFAULT_MIN_AGE_HOURS`]) whole hours before the current UTC hour: with 2, at 10:xx the
//! hours up to 08 are compacted while 09 and 10 are never touched (the writer keeps an hour open
//! up to `writer.max_age_s`, 300 s by default, after it ends). Late rows (a replayed backlog, a
//! source catching up) can still land in any older hour, so a partition where any entry was
//! modified in the last `--quiet-secs` ([`DEFAULT_QUIET_SECS`]) is left alone too.
//!
//! In a closed partition, the files under half the target size and half the row cap are
//! merged, in groups with the same Arrow schema and `v2x.schema`, each group at most
//! `--target-bytes` on disk, `--max-rows` rows and [`MAX_MERGE_INPUTS`] files. Other files stay
//! as they are: big ones, files whose `v2x.sorted_by` is not `source_id,event_ts`, files that
//! cannot be read (reported, exit code 1). The quarantine table is not compacted.
//!
//! # Merging, in bounded memory
//!
//! A k-way merge of the already sorted inputs, each read [`READ_BATCH_ROWS`] rows at a time:
//! memory is a batch or two per input (at most [`MAX_MERGE_INPUTS`] at once), whatever the
//! partition's size. Rows equal in
//! (source_id, event_ts) keep the order of their files' names. An input found not to be
//! sorted stops its partition's compaction, which then leaves the partition as it was. Outputs
//! are encoded like the collector's files (zstd, dictionaries, statistics, `v2x.schema` copied,
//! `v2x.sorted_by` set) and named `compact-<20-digit sequence>-p<pid>.parquet`: a collector's
//! names end in `-<20 digits>.parquet`, so the two can never collide.
//!
//! # The switch: one atomic directory exchange
//!
//! Readers list `hour=HH/*.parquet`. No sequence of file renames replaces n files by m files
//! without a moment where a listing sees both or neither, but one directory rename can. The
//! partition's new content is built in a staging directory and swapped with the partition in
//! one `renameat2(RENAME_EXCHANGE)` (Linux; ext4, xfs, btrfs, tmpfs, ...; where it is not
//! supported `compact` stops with an error that says so and changes nothing). For partition
//! `P = <data>/<kind>/date=D/hour=HH`, the work directory `W = <data>/_compact/<kind>/date=D/hour=HH`
//! (`_compact` is no kind: readers never look there) and the staging directory `S = W/part`:
//!
//! 1. the merged outputs are written into `S` and fsynced, every file of `P` that is not
//!    merged is hard-linked into `S`, and `S` and its parents are fsynced;
//! 2. `W/manifest.json` (inputs, outputs, rows) is written atomically: preparation committed;
//! 3. files the collector committed into `P` since its listing are hard-linked into `S` too;
//! 4. `renameat2(S, P, RENAME_EXCHANGE)`, then both parents are fsynced. This is the switch
//!    readers see: the old files before it, the new ones after it;
//! 5. what `S` (now the old content) holds that is neither an input nor already in `P` (files
//!    the collector committed or is still writing since step 3) is moved into `P`; then the
//!    inputs and the links in `S` are deleted, the manifest removed, `S` and `W` removed.
//!
//! Recovery (at the start of every `compact`, and [`recover`] for anyone else) looks at each
//! work directory. Without a manifest, or with one whose outputs are not in `P` (the switch did
//! not happen), it rolls back: `S` is deleted, `P` was never touched. With a manifest whose
//! outputs are in `P`, it rolls forward: step 5. Both only delete a file of `S` that is an
//! input (after the switch), an output (before it), or the same inode as the entry of that
//! name in `P`; anything else stops recovery with an error rather than risk a row. Every step
//! is idempotent, so a crash during recovery is recovered the same way. An exclusive `flock`
//! on `<data>/_compact` keeps two compactions, or a compaction and a recovery, apart.
//!
//! Guarantees: after any crash plus the next `compact` (or [`recover`]), every row is in the
//! dataset exactly once; a listing of a partition shows the old files or the new ones, never
//! both and never neither; no temporary file or directory is left.
//!
//! # Beside a running collector
//!
//! The collector addresses its files by path, so after step 4 whatever it creates or renames
//! lands in the new directory; what it created in the old one (a committed file, or a `.tmp`
//! still being written through its open descriptor) is moved over in step 5. Two narrow races
//! remain, both only for late rows written into a closed partition that had been quiet for
//! `--quiet-secs`:
//!
//! - a file the collector commits between steps 3 and 4 is missing from listings from step 4
//!   until step 5 moves it (microseconds; if `compact` is killed in between, until the next
//!   `compact` recovers);
//! - a commit whose temporary file was created before step 4 and renamed after it fails
//!   (the file is in the old directory). The collector keeps its commit manifest and retries
//!   with backoff, which succeeds once step 5 has moved the file; if `compact` was killed in
//!   between, the collector's retries (and a restart) fail until a `compact` (or [`recover`])
//!   has run. Nothing is lost: the rows stay in its write-ahead log and manifest.
//!
//! A reader that listed the old files before the switch and opens them after gets "not found"
//! and has to list again; it never reads a mix.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{OwnedRow, Row, RowConverter, Rows, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::DatasetError;
use crate::sink::parquet_file::{self, FileSettings};

/// Default `--target-bytes`: outputs near 128 MiB on disk.
pub const DEFAULT_TARGET_BYTES: u64 = 128 << 20;
/// Default `--max-rows`: at most this many rows per output file.
pub const DEFAULT_MAX_ROWS: u64 = 4 << 20;
/// Default `--min-age-hours`: the current UTC hour and the one before are never compacted.
pub const DEFAULT_MIN_AGE_HOURS: u32 = 2;
/// Default `--quiet-secs`: a partition written to in the last 10 minutes is left alone.
pub const DEFAULT_QUIET_SECS: u64 = 600;
/// Most files merged into one group: one open file and one batch each.
pub const MAX_MERGE_INPUTS: usize = 64;
/// Rows read from each input at a time. Memory is at most about two batches per input, so
/// `2 * MAX_MERGE_INPUTS * READ_BATCH_ROWS` rows (under 80 MB for 300-byte rows), plus the
/// Parquet writer's row group.
pub const READ_BATCH_ROWS: usize = 2048;
/// Rows per merged batch handed to the Parquet writer.
const OUT_BATCH_ROWS: usize = 8192;
/// The directory of work directories, beside the kinds.
pub const WORK_DIR: &str = "_compact";
const MANIFEST: &str = "manifest.json";
const STAGE: &str = "part";
const SORT: [&str; 2] = ["source_id", "event_ts"];
const HOUR_US: i64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("merging {}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[error("{} is not sorted by (source_id, event_ts) near row {row}", path.display())]
    NotSorted { path: PathBuf, row: u64 },
    #[error("{}: {reason}", path.display())]
    Changed { path: PathBuf, reason: String },
    #[error("another compaction is running on {} (it holds the lock on that directory)", path.display())]
    Busy { path: PathBuf },
    #[error(
        "{} cannot swap two directories atomically (renameat2 RENAME_EXCHANGE: {source}); \
         compact needs Linux and a local file system such as ext4, xfs, btrfs or tmpfs",
        path.display()
    )]
    NoExchange {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interrupted compaction in {}: {reason}; nothing was deleted, check it by hand", path.display())]
    Recovery { path: PathBuf, reason: String },
}

impl CompactError {
    /// 2 for a wrong data directory or kind, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CompactError::Dataset(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// What to compact and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub target_bytes: u64,
    pub max_rows: u64,
    /// At least 1: the current hour is never compacted.
    pub min_age_hours: u32,
    pub quiet_secs: u64,
    pub dry_run: bool,
    /// Encoding of the outputs (the writer's defaults unless set).
    pub file: FileSettings,
    /// "Now", for the closed-partition rule.
    pub now: chrono::DateTime<chrono::Utc>,
}

impl Default for Options {
    fn default() -> Options {
        let w = crate::config::WriterConfig::default();
        Options {
            target_bytes: DEFAULT_TARGET_BYTES,
            max_rows: DEFAULT_MAX_ROWS,
            min_age_hours: DEFAULT_MIN_AGE_HOURS,
            quiet_secs: DEFAULT_QUIET_SECS,
            dry_run: false,
            file: FileSettings {
                row_group_rows: w.row_group_rows,
                zstd_level: w.zstd_level,
            },
            now: chrono::Utc::now(),
        }
    }
}

/// What `compact` did (or, with `--dry-run`, would do). Field names are the `--json` interface.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub data: String,
    pub dry_run: bool,
    /// Interrupted compactions found at start, and what became of them.
    pub recovered: Vec<Recovered>,
    pub partitions: Vec<PartitionReport>,
    /// Partitions with small files that were left alone, and why.
    pub skipped: Vec<Skipped>,
    /// Partitions or files that could not be compacted; they are as they were.
    pub errors: Vec<PartitionError>,
}

#[derive(Debug, Serialize)]
pub struct Recovered {
    pub kind: String,
    pub partition: String,
    /// `rolled back` (the switch had not happened), `completed`, `cleaned up` (nothing to undo:
    /// only the work directory was left), or with `--dry-run` `pending`.
    pub action: String,
}

#[derive(Debug, Serialize)]
pub struct PartitionReport {
    pub kind: String,
    pub partition: String,
    pub files_before: usize,
    /// With `--dry-run`, an estimate.
    pub files_after: usize,
    /// Files merged away.
    pub merged_files: usize,
    /// Files written (with `--dry-run`, an estimate).
    pub output_files: usize,
    /// Rows of the merged files.
    pub rows: u64,
    pub bytes_before: u64,
    /// With `--dry-run`, the bytes before.
    pub bytes_after: u64,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub kind: String,
    pub partition: String,
    /// `open` (within --min-age-hours of now) or `recently written` (within --quiet-secs).
    pub reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PartitionError {
    pub kind: String,
    pub partition: String,
    pub error: String,
}

impl Report {
    pub fn files_before(&self) -> usize {
        self.partitions.iter().map(|p| p.files_before).sum()
    }

    pub fn files_after(&self) -> usize {
        self.partitions.iter().map(|p| p.files_after).sum()
    }
}

/// The manifest of one partition's compaction, `W/manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    kind: String,
    partition: String,
    /// Names of the merged files in the partition.
    inputs: Vec<String>,
    /// Names of the merged outputs.
    outputs: Vec<String>,
    rows: u64,
}

/// Compacts `kind` (every kind when `None`) below `data`. Interrupted compactions are recovered
/// first. A partition that fails is left as it was and listed in [`Report::errors`]; an error
/// that leaves the state uncertain (the switch or its clean-up failing) stops the run, and the
/// next run recovers it.
pub fn compact(data: &Path, kind: Option<&str>, opts: &Options) -> Result<Report, CompactError> {
    let kinds = match kind {
        Some(k) => {
            // Checks the name and that the kind exists.
            super::files(data, k)?;
            vec![k.to_owned()]
        }
        None => super::kinds(data)?,
    };
    let mut report = Report {
        data: data.display().to_string(),
        dry_run: opts.dry_run,
        ..Report::default()
    };
    let _lock = if opts.dry_run {
        for (_, kind, partition) in work_dirs(data)? {
            report.recovered.push(Recovered {
                kind,
                partition,
                action: "pending".into(),
            });
        }
        None
    } else {
        let lock = Lock::take(data)?;
        report.recovered = recover_locked(data)?;
        Some(lock)
    };
    let mut namer = Namer::new();
    let cutoff_us = (opts.now.timestamp_micros().div_euclid(HOUR_US)
        - i64::from(opts.min_age_hours.max(1)))
        * HOUR_US;
    // File times are the real clock's, whatever `opts.now` says.
    let quiet_since = std::time::SystemTime::now()
        .checked_sub(std::time::Duration::from_secs(opts.quiet_secs))
        .unwrap_or(std::time::UNIX_EPOCH);
    for kind in &kinds {
        for part in partitions(data, kind)? {
            let label = |e: &dyn std::fmt::Display| PartitionError {
                kind: kind.clone(),
                partition: part.name(),
                error: e.to_string(),
            };
            if part.start_us > cutoff_us {
                report.skipped.push(Skipped {
                    kind: kind.clone(),
                    partition: part.name(),
                    reason: "open",
                });
                continue;
            }
            let plan = match plan_partition(&part, opts, quiet_since) {
                Ok(Planned::Nothing { errors }) => {
                    report.errors.extend(errors.iter().map(|e| label(e)));
                    continue;
                }
                Ok(Planned::Quiet) => {
                    report.skipped.push(Skipped {
                        kind: kind.clone(),
                        partition: part.name(),
                        reason: "recently written",
                    });
                    continue;
                }
                Ok(Planned::Merge(plan)) => plan,
                Err(e) => {
                    report.errors.push(label(&e));
                    continue;
                }
            };
            report.errors.extend(plan.errors.iter().map(|e| label(e)));
            if opts.dry_run {
                report.partitions.push(plan.estimate(opts));
                continue;
            }
            let prepared = match prepare(data, &plan, opts, &mut namer) {
                Ok(p) => p,
                Err(e) => {
                    report.errors.push(label(&e));
                    continue;
                }
            };
            if let Err(e) =
                link_late_files(&prepared).and_then(|()| exchange(&prepared.s, &prepared.p))
            {
                // The exchange did not happen: the partition is untouched.
                rollback(&prepared.w, &prepared.p, Some(&prepared.manifest))?;
                if matches!(e, CompactError::NoExchange { .. }) {
                    return Err(e);
                }
                report.errors.push(label(&e));
                continue;
            }
            // From here on an error stops the run; the next run completes the switch.
            after_exchange(&prepared)?;
            finish(&prepared.w, &prepared.p, &prepared.manifest)?;
            report.partitions.push(prepared.report(&plan));
            tracing::info!(
                kind = %kind,
                partition = %part.name(),
                files_before = plan.files.len(),
                merged = prepared.manifest.inputs.len(),
                outputs = prepared.manifest.outputs.len(),
                rows = prepared.manifest.rows,
                "compacted"
            );
        }
    }
    Ok(report)
}

/// Finishes or undoes every compaction interrupted by a crash (see the module docs). Cheap
/// when there is none: one `stat` of `<data>/_compact`. [`CompactError::Busy`] when a
/// compaction is running; it finishes its own work.
pub fn recover(data: &Path) -> Result<Vec<Recovered>, CompactError> {
    if !data.join(WORK_DIR).is_dir() {
        return Ok(Vec::new());
    }
    let _lock = Lock::take(data)?;
    recover_locked(data)
}

fn recover_locked(data: &Path) -> Result<Vec<Recovered>, CompactError> {
    let mut out = Vec::new();
    for (w, kind, partition) in work_dirs(data)? {
        let p = data.join(&kind).join(&partition);
        let manifest = read_manifest(&w)?;
        let swapped = manifest
            .as_ref()
            .is_some_and(|m| m.outputs.iter().any(|o| p.join(o).exists()));
        let action = if swapped {
            let m = manifest.as_ref().expect("swapped implies a manifest");
            if m.kind != kind || m.partition != partition {
                return Err(CompactError::Recovery {
                    path: w,
                    reason: format!("its manifest names {}/{}", m.kind, m.partition),
                });
            }
            finish(&w, &p, m)?;
            "completed"
        } else if rollback(&w, &p, manifest.as_ref())? > 0 || manifest.is_some() {
            "rolled back"
        } else {
            // Nothing was staged yet, or the compaction had finished but for its directory.
            "cleaned up"
        };
        tracing::warn!(kind = %kind, partition = %partition, action, "recovered an interrupted compaction");
        out.push(Recovered {
            kind,
            partition,
            action: action.into(),
        });
    }
    Ok(out)
}

/// Human summary of a report.
pub fn render(r: &Report) -> String {
    use super::ls::human_bytes;
    let mut s = String::new();
    for x in &r.recovered {
        s.push_str(&format!(
            "recovery: {} {}: {}\n",
            x.kind, x.partition, x.action
        ));
    }
    let verb = if r.dry_run { "would merge" } else { "merged" };
    for p in &r.partitions {
        s.push_str(&format!(
            "{} {}: {} files -> {} ({verb} {} files, {} rows, into {} file{}; {} -> {})\n",
            p.kind,
            p.partition,
            p.files_before,
            p.files_after,
            p.merged_files,
            p.rows,
            p.output_files,
            if p.output_files == 1 { "" } else { "s" },
            human_bytes(p.bytes_before),
            if r.dry_run {
                "?".to_string()
            } else {
                human_bytes(p.bytes_after)
            },
        ));
    }
    let (before, after) = (r.files_before(), r.files_after());
    let rows: u64 = r.partitions.iter().map(|p| p.rows).sum();
    let bytes_before: u64 = r.partitions.iter().map(|p| p.bytes_before).sum();
    let bytes_after: u64 = r.partitions.iter().map(|p| p.bytes_after).sum();
    if r.partitions.is_empty() {
        s.push_str("nothing to compact\n");
    } else if r.dry_run {
        s.push_str(&format!(
            "dry run: {} partition{} would go from {before} files to about {after} ({rows} rows merged, {}); nothing was changed\n",
            r.partitions.len(),
            if r.partitions.len() == 1 { "" } else { "s" },
            human_bytes(bytes_before),
        ));
    } else {
        s.push_str(&format!(
            "compacted {} partition{}: {before} files -> {after}, {rows} rows merged, {} -> {}\n",
            r.partitions.len(),
            if r.partitions.len() == 1 { "" } else { "s" },
            human_bytes(bytes_before),
            human_bytes(bytes_after),
        ));
    }
    let open = r.skipped.iter().filter(|x| x.reason == "open").count();
    let recent = r.skipped.len() - open;
    if open + recent > 0 {
        s.push_str(&format!(
            "left alone: {open} partition{} still open (too close to the current hour), {recent} written to recently (--quiet-secs)\n",
            if open == 1 { "" } else { "s" },
        ));
    }
    s
}

// ---- Partitions and plans ----

struct Partition {
    kind: String,
    date: String,
    hour: u8,
    dir: PathBuf,
    start_us: i64,
}

impl Partition {
    fn name(&self) -> String {
        format!("date={}/hour={:02}", self.date, self.hour)
    }
}

/// The partitions of `kind` holding two or more data files.
fn partitions(data: &Path, kind: &str) -> Result<Vec<Partition>, DatasetError> {
    let mut out: Vec<(Partition, usize)> = Vec::new();
    for f in super::files(data, kind)? {
        let Some(dir) = f.path.parent() else { continue };
        if let Some((last, n)) = out.last_mut()
            && last.dir == dir
        {
            *n += 1;
            continue;
        }
        let start_us = chrono::NaiveDate::parse_from_str(&f.date, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(u32::from(f.hour), 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
            .unwrap_or(i64::MAX);
        out.push((
            Partition {
                kind: kind.to_owned(),
                date: f.date.clone(),
                hour: f.hour,
                dir: dir.to_owned(),
                start_us,
            },
            1,
        ));
    }
    Ok(out
        .into_iter()
        .filter(|(_, n)| *n >= 2)
        .map(|(p, _)| p)
        .collect())
}

/// One committed data file of a partition being planned.
struct Input {
    name: String,
    bytes: u64,
    rows: u64,
}

/// Files merged into one run of outputs: same schema, within the size and count bounds.
struct Group {
    inputs: Vec<usize>,
    bytes: u64,
    rows: u64,
    schema: SchemaRef,
    v2x_schema: Option<String>,
}

struct Plan<'a> {
    part: &'a Partition,
    /// Every committed data file of the partition when it was listed.
    files: Vec<Input>,
    groups: Vec<Group>,
    /// Files that could not be read; they are kept.
    errors: Vec<CompactError>,
}

enum Planned<'a> {
    Merge(Plan<'a>),
    Quiet,
    Nothing { errors: Vec<CompactError> },
}

impl Plan<'_> {
    fn merged(&self) -> impl Iterator<Item = &Input> {
        self.groups
            .iter()
            .flat_map(|g| &g.inputs)
            .map(|&i| &self.files[i])
    }

    fn estimate(&self, opts: &Options) -> PartitionReport {
        let outputs: usize = self
            .groups
            .iter()
            .map(|g| g.rows.div_ceil(rows_per_file(g, opts)).max(1) as usize)
            .sum();
        let merged = self.merged().count();
        let bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        PartitionReport {
            kind: self.part.kind.clone(),
            partition: self.part.name(),
            files_before: self.files.len(),
            files_after: self.files.len() - merged + outputs,
            merged_files: merged,
            output_files: outputs,
            rows: self.merged().map(|f| f.rows).sum(),
            bytes_before: bytes,
            bytes_after: bytes,
        }
    }
}

/// Rows per output file: the row cap, or what fills `target_bytes` at the inputs' bytes per row.
fn rows_per_file(g: &Group, opts: &Options) -> u64 {
    let per_row = (g.bytes as f64 / g.rows.max(1) as f64).max(1e-3);
    ((opts.target_bytes as f64 / per_row) as u64)
        .min(opts.max_rows)
        .max(1)
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CompactError + use<> {
    let path = path.to_owned();
    move |source| CompactError::Io { step, path, source }
}

/// Lists the partition, applies the quiet rule and picks the files to merge.
fn plan_partition<'a>(
    part: &'a Partition,
    opts: &Options,
    quiet_since: std::time::SystemTime,
) -> Result<Planned<'a>, CompactError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&part.dir).map_err(io("listing", &part.dir))? {
        let entry = entry.map_err(io("listing", &part.dir))?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &entry.path())(e)),
        };
        if meta.modified().is_ok_and(|t| t > quiet_since) {
            return Ok(Planned::Quiet);
        }
        let name = entry.file_name();
        if let Some(name) = name.to_str()
            && meta.is_file()
            && super::is_data_file_name(name)
        {
            names.push((name.to_owned(), meta.len()));
        }
    }
    names.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    // (schema, v2x.schema, members) of the candidates, in name order.
    let mut kinds_of: Vec<(SchemaRef, Option<String>, Vec<usize>)> = Vec::new();
    for (name, bytes) in names {
        let path = part.dir.join(&name);
        let footer = File::open(&path)
            .map_err(io("opening", &path))
            .and_then(|f| {
                ArrowReaderMetadata::load(&f, ArrowReaderOptions::new()).map_err(|source| {
                    CompactError::Read {
                        path: path.clone(),
                        source,
                    }
                })
            });
        let i = files.len();
        let meta = match footer {
            Ok(m) => m,
            Err(e) => {
                errors.push(e);
                files.push(Input {
                    name,
                    bytes,
                    rows: 0,
                });
                continue;
            }
        };
        let fm = meta.metadata().file_metadata();
        let rows = fm.num_rows().max(0) as u64;
        let kv = |key: &str| {
            fm.key_value_metadata()
                .and_then(|kv| kv.iter().find(|k| k.key == key))
                .and_then(|k| k.value.clone())
        };
        let schema = meta.schema();
        let sorted = kv("v2x.sorted_by").as_deref() == Some(&SORT.join(","))
            && SORT.iter().all(|c| schema.column_with_name(c).is_some());
        files.push(Input { name, bytes, rows });
        if !sorted
            || rows == 0
            || bytes >= opts.target_bytes / 2
            || rows >= (opts.max_rows / 2).max(1)
        {
            continue;
        }
        // Compared without the file-level metadata, which holds the per-file key-values.
        let fields = Arc::new(Schema::new(schema.fields().clone()));
        let v2x_schema = kv("v2x.schema");
        match kinds_of
            .iter_mut()
            .find(|(s, v, _)| *s == fields && *v == v2x_schema)
        {
            Some((_, _, members)) => members.push(i),
            None => kinds_of.push((fields, v2x_schema, vec![i])),
        }
    }
    let mut groups = Vec::new();
    for (schema, v2x_schema, members) in kinds_of {
        let mut g: Option<Group> = None;
        for i in members {
            let f = &files[i];
            if let Some(cur) = &g
                && (cur.bytes + f.bytes > opts.target_bytes
                    || cur.rows + f.rows > opts.max_rows
                    || cur.inputs.len() >= MAX_MERGE_INPUTS)
            {
                groups.extend(g.take().filter(|g| g.inputs.len() >= 2));
            }
            let cur = g.get_or_insert_with(|| Group {
                inputs: Vec::new(),
                bytes: 0,
                rows: 0,
                schema: schema.clone(),
                v2x_schema: v2x_schema.clone(),
            });
            cur.inputs.push(i);
            cur.bytes += f.bytes;
            cur.rows += f.rows;
        }
        groups.extend(g.filter(|g| g.inputs.len() >= 2));
    }
    if groups.is_empty() {
        return Ok(Planned::Nothing { errors });
    }
    Ok(Planned::Merge(Plan {
        part,
        files,
        groups,
        errors,
    }))
}

// ---- Step 1 and 2: prepare ----

/// A partition whose new content is staged and whose manifest is durable.
struct Prepared {
    w: PathBuf,
    s: PathBuf,
    p: PathBuf,
    manifest: Manifest,
    /// Names of the partition's data files when it was planned.
    listed: HashSet<String>,
    outputs: Vec<OutputFile>,
}

impl Prepared {
    fn report(&self, plan: &Plan) -> PartitionReport {
        let merged: HashSet<&str> = self.manifest.inputs.iter().map(String::as_str).collect();
        let kept_bytes: u64 = plan
            .files
            .iter()
            .filter(|f| !merged.contains(f.name.as_str()))
            .map(|f| f.bytes)
            .sum();
        PartitionReport {
            kind: plan.part.kind.clone(),
            partition: plan.part.name(),
            files_before: plan.files.len(),
            files_after: plan.files.len() - merged.len() + self.outputs.len(),
            merged_files: merged.len(),
            output_files: self.outputs.len(),
            rows: self.manifest.rows,
            bytes_before: plan.files.iter().map(|f| f.bytes).sum(),
            bytes_after: kept_bytes + self.outputs.iter().map(|o| o.bytes).sum::<u64>(),
        }
    }
}

fn work_dir(data: &Path, kind: &str, partition: &str) -> PathBuf {
    data.join(WORK_DIR).join(kind).join(partition)
}

/// Steps 1 and 2. On error the work directory is removed again: the partition is untouched.
fn prepare(
    data: &Path,
    plan: &Plan,
    opts: &Options,
    namer: &mut Namer,
) -> Result<Prepared, CompactError> {
    let part = plan.part;
    let w = work_dir(data, &part.kind, &part.name());
    let s = w.join(STAGE);
    if w.exists() {
        return Err(CompactError::Recovery {
            path: w,
            reason: "a work directory is left over after recovery".into(),
        });
    }
    std::fs::create_dir_all(&s).map_err(io("creating", &s))?;
    let result = stage(plan, opts, namer, &s);
    let outputs = match result {
        Ok(o) => o,
        Err(e) => {
            rollback(&w, &part.dir, None)?;
            return Err(e);
        }
    };
    let manifest = Manifest {
        version: 1,
        kind: part.kind.clone(),
        partition: part.name(),
        inputs: plan.merged().map(|f| f.name.clone()).collect(),
        outputs: outputs.iter().map(|o| o.name.clone()).collect(),
        rows: outputs.iter().map(|o| o.rows).sum(),
    };
    crate::failpoint::hit("compact_before_manifest");
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    if let Err(e) = parquet_file::write_atomic(&w.join(MANIFEST), &json) {
        rollback(&w, &part.dir, None)?;
        return Err(io("writing", &w.join(MANIFEST))(e));
    }
    crate::failpoint::hit("compact_after_manifest");
    Ok(Prepared {
        p: part.dir.clone(),
        listed: plan.files.iter().map(|f| f.name.clone()).collect(),
        w,
        s,
        manifest,
        outputs,
    })
}

/// Step 1: merged outputs and links to the kept files in `s`, all durable.
fn stage(
    plan: &Plan,
    opts: &Options,
    namer: &mut Namer,
    s: &Path,
) -> Result<Vec<OutputFile>, CompactError> {
    let dir = &plan.part.dir;
    let mut outputs = Vec::new();
    for g in &plan.groups {
        let inputs: Vec<PathBuf> = g
            .inputs
            .iter()
            .map(|&i| dir.join(&plan.files[i].name))
            .collect();
        let props = parquet_file::writer_properties(&SORT, g.v2x_schema.as_deref(), &opts.file)
            .map_err(|source| CompactError::Write {
                path: s.to_owned(),
                source,
            })?;
        let mut out = Outputs {
            dir: s,
            schema: g.schema.clone(),
            props,
            rows_per_file: rows_per_file(g, opts) as usize,
            open: None,
            done: Vec::new(),
        };
        let rows = merge(&inputs, &mut out, namer)?;
        out.close()?;
        if rows != g.rows {
            return Err(CompactError::Changed {
                path: dir.clone(),
                reason: format!(
                    "merged {rows} rows where the footers count {}; the partition is left as it was",
                    g.rows
                ),
            });
        }
        outputs.extend(out.done);
    }
    let merged: HashSet<&str> = plan.merged().map(|f| f.name.as_str()).collect();
    for f in plan
        .files
        .iter()
        .filter(|f| !merged.contains(f.name.as_str()))
    {
        let from = dir.join(&f.name);
        std::fs::hard_link(&from, s.join(&f.name)).map_err(io("linking", &from))?;
    }
    // S, and every directory up to the data directory, so the staged tree survives a crash
    // as soon as the manifest does.
    let mut d = Some(s);
    let top = dir.parent().and_then(Path::parent).and_then(Path::parent);
    while let Some(x) = d {
        parquet_file::sync_dir(x).map_err(io("fsync of directory", x))?;
        if Some(x) == top {
            break;
        }
        d = x.parent();
    }
    Ok(outputs)
}

// ---- Steps 3 and 4: the switch ----

/// Step 3: links what the collector committed into the partition since it was listed, and
/// checks that every input is still there.
fn link_late_files(prep: &Prepared) -> Result<(), CompactError> {
    let (p, s) = (&prep.p, &prep.s);
    let mut linked = 0;
    for entry in std::fs::read_dir(p).map_err(io("listing", p))? {
        let entry = entry.map_err(io("listing", p))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if super::is_data_file_name(name)
            && !prep.listed.contains(name)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            std::fs::hard_link(entry.path(), s.join(name)).map_err(io("linking", &entry.path()))?;
            linked += 1;
        }
    }
    if linked > 0 {
        parquet_file::sync_dir(s).map_err(io("fsync of directory", s))?;
    }
    for name in &prep.manifest.inputs {
        if !p.join(name).exists() {
            return Err(CompactError::Changed {
                path: p.join(name),
                reason: "merged file vanished while compacting; the partition is left as it was"
                    .into(),
            });
        }
    }
    Ok(())
}

/// After step 4: makes the exchange durable.
fn after_exchange(prep: &Prepared) -> Result<(), CompactError> {
    let p = &prep.p;
    let date_dir = p.parent().unwrap_or(p);
    parquet_file::sync_dir(date_dir).map_err(io("fsync of directory", date_dir))?;
    parquet_file::sync_dir(&prep.w).map_err(io("fsync of directory", &prep.w))?;
    crate::failpoint::hit("compact_after_exchange");
    Ok(())
}

/// Swaps two directories in one step.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<(), CompactError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| CompactError::Io {
            step: "naming",
            path: p.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths; the syscall only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP) => {
            Err(CompactError::NoExchange {
                path: b.to_owned(),
                source: e,
            })
        }
        _ => Err(io("swapping in", b)(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, b: &Path) -> Result<(), CompactError> {
    Err(CompactError::NoExchange {
        path: b.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "only Linux has renameat2"),
    })
}

// ---- Step 5, and rolling back ----

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Step 5: moves late arrivals from the old content (`W/part`) into `p`, deletes the inputs
/// and links, the manifest and the work directory. Idempotent.
fn finish(w: &Path, p: &Path, m: &Manifest) -> Result<(), CompactError> {
    let s = w.join(STAGE);
    let inputs: HashSet<&str> = m.inputs.iter().map(String::as_str).collect();
    let bad = |reason: String| CompactError::Recovery {
        path: w.to_owned(),
        reason,
    };
    let entries = list(&s)?;
    let mut moved = 0;
    for (name, meta) in &entries {
        if inputs.contains(name.as_str()) {
            continue;
        }
        let from = s.join(name);
        let to = p.join(name);
        match std::fs::symlink_metadata(&to) {
            Ok(there) if same_file(meta, &there) => {}
            Ok(_) => {
                return Err(bad(format!(
                    "{} and {} are different files of the same name",
                    from.display(),
                    to.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(&from, &to).map_err(io("moving", &from))?;
                moved += 1;
            }
            Err(e) => return Err(io("reading", &to)(e)),
        }
    }
    if moved > 0 {
        parquet_file::sync_dir(p).map_err(io("fsync of directory", p))?;
        tracing::warn!(moved, partition = %p.display(), "moved files written during the compaction into the compacted partition");
    }
    let mut deleted = 0;
    for (name, meta) in list(&s)? {
        let path = s.join(&name);
        let linked = std::fs::symlink_metadata(p.join(&name)).is_ok_and(|t| same_file(&meta, &t));
        if !inputs.contains(name.as_str()) && !linked {
            return Err(bad(format!("unexpected {}", path.display())));
        }
        std::fs::remove_file(&path).map_err(io("removing", &path))?;
        deleted += 1;
        if deleted == 1 {
            crate::failpoint::hit("compact_mid_cleanup");
        }
    }
    parquet_file::sync_dir(&s).map_err(io("fsync of directory", &s))?;
    crate::failpoint::hit("compact_before_manifest_removal");
    remove_manifest(w)?;
    crate::failpoint::hit("compact_after_manifest_removal");
    remove_work_dir(w)
}

/// Undoes a compaction whose switch did not happen: `p` holds the old content, untouched.
/// Deletes only outputs and links to files of `p`; returns how many.
fn rollback(w: &Path, p: &Path, m: Option<&Manifest>) -> Result<usize, CompactError> {
    remove_manifest(w)?;
    let s = w.join(STAGE);
    let outputs: HashSet<&str> = m
        .map(|m| m.outputs.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut removed = 0;
    for (name, meta) in list(&s)? {
        let path = s.join(&name);
        let ours = outputs.contains(name.as_str()) || name.starts_with("compact-");
        let linked = std::fs::symlink_metadata(p.join(&name)).is_ok_and(|t| same_file(&meta, &t));
        if !(linked || ours && !p.join(&name).exists()) {
            return Err(CompactError::Recovery {
                path: w.to_owned(),
                reason: format!(
                    "{} is neither a merged output nor a link to a file of {}",
                    path.display(),
                    p.display()
                ),
            });
        }
        std::fs::remove_file(&path).map_err(io("removing", &path))?;
        removed += 1;
    }
    remove_work_dir(w)?;
    Ok(removed)
}

fn remove_manifest(w: &Path) -> Result<(), CompactError> {
    let path = w.join(MANIFEST);
    match std::fs::remove_file(&path) {
        Ok(()) => parquet_file::sync_dir(w).map_err(io("fsync of directory", w)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", &path)(e)),
    }
}

/// Removes the (emptied) staging directory, the work directory and its empty parents below
/// `_compact`.
fn remove_work_dir(w: &Path) -> Result<(), CompactError> {
    let s = w.join(STAGE);
    match std::fs::remove_dir(&s) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &s)(e)),
    }
    // A manifest being written when a crash came.
    let _ = std::fs::remove_file(w.join(format!(".{MANIFEST}.tmp")));
    match std::fs::remove_dir(w) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", w)(e)),
    }
    // date=D, then the kind: removed when empty, kept (an error we ignore) otherwise.
    let mut d = w.parent();
    for _ in 0..2 {
        let Some(x) = d else { break };
        if std::fs::remove_dir(x).is_err() {
            break;
        }
        d = x.parent();
    }
    if let Some(x) = d {
        let _ = parquet_file::sync_dir(x);
    }
    Ok(())
}

/// Entries of `dir` with their metadata (not following links); empty when it is missing.
fn list(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>, CompactError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("listing", dir))?;
        let meta = std::fs::symlink_metadata(entry.path()).map_err(io("reading", &entry.path()))?;
        out.push((entry.file_name().to_string_lossy().into_owned(), meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn read_manifest(w: &Path) -> Result<Option<Manifest>, CompactError> {
    let path = w.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CompactError::Recovery {
                path,
                reason: format!("unreadable manifest: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", &path)(e)),
    }
}

/// `<data>/_compact/<kind>/date=D/hour=HH` work directories, with their kind and partition.
fn work_dirs(data: &Path) -> Result<Vec<(PathBuf, String, String)>, CompactError> {
    let root = data.join(WORK_DIR);
    let mut out = Vec::new();
    let dirs = |d: &Path| -> Result<Vec<String>, CompactError> {
        Ok(list(d)?
            .into_iter()
            .filter(|(_, m)| m.is_dir())
            .map(|(n, _)| n)
            .collect())
    };
    for kind in dirs(&root)? {
        if super::validate_kind(&kind).is_err() {
            continue;
        }
        for date in dirs(&root.join(&kind))? {
            if !date.strip_prefix("date=").is_some_and(super::valid_date) {
                continue;
            }
            for hour in dirs(&root.join(&kind).join(&date))? {
                if super::parse_hour_dir(&hour).is_none() {
                    continue;
                }
                let partition = format!("{date}/{hour}");
                out.push((root.join(&kind).join(&partition), kind.clone(), partition));
            }
        }
    }
    Ok(out)
}

/// An exclusive `flock` on `<data>/_compact`, released when dropped (or the process dies).
struct Lock {
    _dir: File,
}

impl Lock {
    fn take(data: &Path) -> Result<Lock, CompactError> {
        let dir = data.join(WORK_DIR);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        match super::lock_dir(&dir) {
            Ok(Some(f)) => Ok(Lock { _dir: f }),
            Ok(None) => Err(CompactError::Busy { path: dir }),
            Err(e) => Err(io("locking", &dir)(e)),
        }
    }
}

// ---- The merge ----

/// Output names: `compact-<start ms * 1000 + n>-p<pid>.parquet`.
struct Namer {
    next: u64,
    pid: u32,
}

impl Namer {
    fn new() -> Namer {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Namer {
            next: ms * 1000,
            pid: std::process::id(),
        }
    }

    fn take(&mut self) -> String {
        self.next += 1;
        format!("compact-{:020}-p{}.parquet", self.next, self.pid)
    }
}

#[derive(Debug)]
struct OutputFile {
    name: String,
    rows: u64,
    bytes: u64,
}

/// The output files of one group, rolled over every `rows_per_file` rows.
struct Outputs<'a> {
    dir: &'a Path,
    schema: SchemaRef,
    props: WriterProperties,
    rows_per_file: usize,
    open: Option<(String, ArrowWriter<File>, usize)>,
    done: Vec<OutputFile>,
}

impl Outputs<'_> {
    fn write(&mut self, batch: RecordBatch, namer: &mut Namer) -> Result<(), CompactError> {
        // The inputs' schema-level metadata is their footer's key-values; the writer sets its own.
        let mut batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .map_err(|source| CompactError::Arrow {
                path: self.dir.to_owned(),
                source,
            })?;
        while batch.num_rows() > 0 {
            if self.open.is_none() {
                let name = namer.take();
                let path = self.dir.join(&name);
                let file = File::create(&path).map_err(io("creating", &path))?;
                let w = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))
                    .map_err(|source| CompactError::Write { path, source })?;
                self.open = Some((name, w, 0));
            }
            let (name, w, rows) = self.open.as_mut().expect("opened above");
            let n = (self.rows_per_file - *rows).min(batch.num_rows());
            w.write(&batch.slice(0, n))
                .map_err(|source| CompactError::Write {
                    path: self.dir.join(name.as_str()),
                    source,
                })?;
            crate::failpoint::hit("compact_mid_output");
            *rows += n;
            batch = batch.slice(n, batch.num_rows() - n);
            if *rows >= self.rows_per_file {
                self.close()?;
            }
        }
        Ok(())
    }

    /// Finishes the open file: footer, fsync.
    fn close(&mut self) -> Result<(), CompactError> {
        let Some((name, w, rows)) = self.open.take() else {
            return Ok(());
        };
        let path = self.dir.join(&name);
        let file = w.into_inner().map_err(|source| CompactError::Write {
            path: path.clone(),
            source,
        })?;
        file.sync_all().map_err(io("fsync", &path))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.done.push(OutputFile {
            name,
            rows: rows as u64,
            bytes,
        });
        Ok(())
    }
}

/// One sorted input, read a batch at a time.
struct Cursor {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    key_columns: [usize; 2],
    batch: Option<RecordBatch>,
    keys: Rows,
    pos: usize,
    /// Index of `batch` in the merge's pending batches.
    slot: usize,
    /// The last key of the previous batch, to check the order across batches.
    last: Option<OwnedRow>,
    consumed: u64,
}

impl Cursor {
    fn open(path: PathBuf, conv: &RowConverter) -> Result<Cursor, CompactError> {
        let read = |source| CompactError::Read {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io("opening", &path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(read)?;
        let schema = builder.schema().clone();
        let col = |name: &str| {
            schema.index_of(name).map_err(|source| CompactError::Arrow {
                path: path.clone(),
                source,
            })
        };
        let key_columns = [col(SORT[0])?, col(SORT[1])?];
        let reader = builder
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(read)?;
        Ok(Cursor {
            path,
            reader,
            key_columns,
            batch: None,
            keys: conv.empty_rows(0, 0),
            pos: 0,
            slot: 0,
            last: None,
            consumed: 0,
        })
    }

    /// Moves to the next non-empty batch; false at the end of the file.
    fn advance(&mut self, conv: &RowConverter) -> Result<bool, CompactError> {
        if let Some(b) = &self.batch
            && b.num_rows() > 0
        {
            self.last = Some(self.keys.row(b.num_rows() - 1).owned());
            self.consumed += b.num_rows() as u64;
        }
        self.batch = None;
        for next in self.reader.by_ref() {
            let b = next.map_err(|source| CompactError::Arrow {
                path: self.path.clone(),
                source,
            })?;
            if b.num_rows() == 0 {
                continue;
            }
            let keys = conv
                .convert_columns(&[
                    b.column(self.key_columns[0]).clone(),
                    b.column(self.key_columns[1]).clone(),
                ])
                .map_err(|source| CompactError::Arrow {
                    path: self.path.clone(),
                    source,
                })?;
            if let Some(last) = &self.last
                && keys.row(0) < last.row()
            {
                return Err(CompactError::NotSorted {
                    path: self.path.clone(),
                    row: self.consumed,
                });
            }
            self.keys = keys;
            self.pos = 0;
            self.batch = Some(b);
            return Ok(true);
        }
        Ok(false)
    }

    fn head(&self) -> Row<'_> {
        self.keys.row(self.pos)
    }
}

/// Merges the sorted `inputs` into `out`; returns the rows merged.
fn merge(inputs: &[PathBuf], out: &mut Outputs, namer: &mut Namer) -> Result<u64, CompactError> {
    let schema = &out.schema;
    let sort_field = |name: &str| {
        schema
            .field_with_name(name)
            .map(|f| SortField::new(f.data_type().clone()))
            .map_err(|source| CompactError::Arrow {
                path: out.dir.to_owned(),
                source,
            })
    };
    let conv =
        RowConverter::new(vec![sort_field(SORT[0])?, sort_field(SORT[1])?]).map_err(|source| {
            CompactError::Arrow {
                path: out.dir.to_owned(),
                source,
            }
        })?;
    let mut cursors = Vec::with_capacity(inputs.len());
    for p in inputs {
        cursors.push(Cursor::open(p.clone(), &conv)?);
    }
    // Batches the pending output rows point into, by (slot, row).
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut indices: Vec<(usize, usize)> = Vec::with_capacity(OUT_BATCH_ROWS);
    let mut total = 0u64;
    for c in &mut cursors {
        if c.advance(&conv)? {
            c.slot = pending.len();
            pending.push(c.batch.clone().expect("advanced"));
        }
    }
    loop {
        // The smallest head and the runner-up; ties go to the earlier file.
        let (mut best, mut second): (Option<usize>, Option<usize>) = (None, None);
        for i in 0..cursors.len() {
            if cursors[i].batch.is_none() {
                continue;
            }
            match best {
                None => best = Some(i),
                Some(b) if cursors[i].head() < cursors[b].head() => {
                    second = best;
                    best = Some(i);
                }
                Some(_) => {
                    if second.is_none_or(|s| cursors[i].head() < cursors[s].head()) {
                        second = Some(i);
                    }
                }
            }
        }
        let Some(b) = best else { break };
        // Take rows from `b` while they sort before the runner-up's head.
        loop {
            let c = &mut cursors[b];
            indices.push((c.slot, c.pos));
            total += 1;
            c.pos += 1;
            if c.pos == c.batch.as_ref().map_or(0, RecordBatch::num_rows) {
                if c.advance(&conv)? {
                    c.slot = pending.len();
                    pending.push(c.batch.clone().expect("advanced"));
                }
                break;
            }
            if c.keys.row(c.pos) < c.keys.row(c.pos - 1) {
                return Err(CompactError::NotSorted {
                    path: c.path.clone(),
                    row: c.consumed + c.pos as u64,
                });
            }
            if indices.len() >= OUT_BATCH_ROWS {
                break;
            }
            if let Some(s) = second {
                let (h, o) = (cursors[b].head(), cursors[s].head());
                if h > o || (h == o && b > s) {
                    break;
                }
            }
        }
        if indices.len() >= OUT_BATCH_ROWS || pending.len() > 2 * cursors.len() + 2 {
            flush(&mut pending, &mut indices, &mut cursors, out, namer)?;
        }
    }
    flush(&mut pending, &mut indices, &mut cursors, out, namer)?;
    Ok(total)
}

/// Writes the pending rows, then keeps only the cursors' current batches pending.
fn flush(
    pending: &mut Vec<RecordBatch>,
    indices: &mut Vec<(usize, usize)>,
    cursors: &mut [Cursor],
    out: &mut Outputs,
    namer: &mut Namer,
) -> Result<(), CompactError> {
    if !indices.is_empty() {
        let refs: Vec<&RecordBatch> = pending.iter().collect();
        let merged =
            interleave_record_batch(&refs, indices).map_err(|source| CompactError::Arrow {
                path: out.dir.to_owned(),
                source,
            })?;
        indices.clear();
        out.write(merged, namer)?;
    }
    pending.clear();
    for c in cursors.iter_mut() {
        if let Some(b) = &c.batch {
            c.slot = pending.len();
            pending.push(b.clone());
        }
    }
    Ok(())
}

/// Parses a byte size for `--target-bytes`: a number of bytes, or with a binary suffix
/// `K`, `M`, `G` (optionally followed by `iB` or `B`): `128M`, `1GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or with K, M, G: 128M)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G, binary)")),
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} must be a positive size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, TimeUnit, TimestampMicrosecondType};

    const PART: &str = "t/date=2020-01-01/hour=03";
    const SCHEMA_JSON: &str = r#"{"kind":"t"}"#;

    fn settings() -> FileSettings {
        FileSettings {
            row_group_rows: 1000,
            zstd_level: 1,
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("source_id", DataType::Utf8, false),
            Field::new(
                "event_ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("value", DataType::Int64, false),
        ]))
    }

    /// Rows `(source, ts, value)`; the file is sorted by the writer.
    fn write_file(dir: &Path, name: &str, rows: &[(String, i64, i64)]) {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        parquet_file::commit(dir, name, &[batch], &SORT, Some(SCHEMA_JSON), &settings()).unwrap();
    }

    /// `files` collector files of `rows` rows each, over 7 sources, values unique.
    fn dataset(files: usize, rows: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(PART);
        let mut v = 0;
        for f in 0..files {
            let rows: Vec<_> = (0..rows)
                .map(|i| {
                    v += 1;
                    (
                        format!("s{}", (i * 31 + f) % 7),
                        (i as i64 * 13 + f as i64) % 50,
                        v,
                    )
                })
                .collect();
            write_file(&part, &format!("c-{f:020}.parquet"), &rows);
        }
        (dir, part)
    }

    fn opts() -> Options {
        Options {
            quiet_secs: 0,
            file: settings(),
            ..Options::default()
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Every row of the partition's data files, sorted, and whether each file is sorted.
    fn rows(part: &Path) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for n in names(part) {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(File::open(part.join(&n)).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
            let mut file_rows = Vec::new();
            for b in reader {
                let b = b.unwrap();
                let s = b.column(0).as_string::<i32>();
                let t = b.column(1).as_primitive::<TimestampMicrosecondType>();
                let v = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
                for i in 0..b.num_rows() {
                    file_rows.push((s.value(i).to_string(), t.value(i), v.value(i)));
                }
            }
            let keys: Vec<_> = file_rows.iter().map(|r| (&r.0, r.1)).collect();
            assert!(keys.is_sorted(), "{n} is not sorted");
            out.extend(file_rows);
        }
        out.sort();
        out
    }

    #[test]
    fn merges_every_row_once_sorted_with_the_writers_metadata() {
        // Files bigger than a read batch, so batch boundaries are crossed.
        let (dir, part) = dataset(5, READ_BATCH_ROWS + 700);
        let before = rows(&part);
        let report = compact(dir.path(), None, &opts()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let p = &report.partitions[0];
        assert_eq!((p.files_before, p.files_after, p.merged_files), (5, 1, 5));
        assert_eq!(p.rows, before.len() as u64);
        let after = names(&part);
        assert_eq!(after.len(), 1);
        assert!(after[0].starts_with("compact-") && after[0].ends_with(".parquet"));
        assert_eq!(rows(&part), before);
        let meta = ArrowReaderMetadata::load(
            &File::open(part.join(&after[0])).unwrap(),
            ArrowReaderOptions::new(),
        )
        .unwrap();
        let kv = meta
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        let get = |k: &str| kv.iter().find(|x| x.key == k).and_then(|x| x.value.clone());
        assert_eq!(get("v2x.schema").as_deref(), Some(SCHEMA_JSON));
        assert_eq!(get("v2x.sorted_by").as_deref(), Some("source_id,event_ts"));
        let col = meta.metadata().row_group(0).column(0);
        assert!(matches!(
            col.compression(),
            parquet::basic::Compression::ZSTD(_)
        ));
        assert!(col.statistics().is_some());
        // Nothing left behind; a second run has nothing to do.
        assert!(names(&dir.path().join(WORK_DIR)).is_empty());
        let again = compact(dir.path(), None, &opts()).unwrap();
        assert!(again.partitions.is_empty());
    }

    #[test]
    fn groups_respect_the_row_cap() {
        let (dir, part) = dataset(10, 100);
        let before = rows(&part);
        let o = Options {
            max_rows: 400,
            ..opts()
        };
        let report = compact(dir.path(), Some("t"), &o).unwrap();
        let p = &report.partitions[0];
        assert_eq!((p.files_before, p.files_after, p.output_files), (10, 3, 3));
        assert_eq!(rows(&part), before);
    }

    #[test]
    fn open_and_recently_written_partitions_are_left_alone() {
        let (dir, part) = dataset(3, 10);
        let before = names(&part);
        let hour = chrono::DateTime::parse_from_rfc3339("2020-01-01T03:00:00Z")
            .unwrap()
            .to_utc();
        for (now, min_age, skipped) in [
            (hour + chrono::Duration::minutes(30), 2, true),
            (hour + chrono::Duration::minutes(119), 2, true),
            (hour + chrono::Duration::minutes(90), 1, false),
        ] {
            let o = Options {
                now,
                min_age_hours: min_age,
                dry_run: true,
                ..opts()
            };
            let r = compact(dir.path(), None, &o).unwrap();
            assert_eq!(r.skipped.len(), usize::from(skipped), "{now} {min_age}");
            assert_eq!(r.partitions.len(), usize::from(!skipped));
        }
        let r = compact(
            dir.path(),
            None,
            &Options {
                quiet_secs: 3600,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(r.skipped[0].reason, "recently written");
        assert_eq!(names(&part), before);
        // A dry run changes nothing and estimates.
        let r = compact(
            dir.path(),
            None,
            &Options {
                dry_run: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(
            (r.partitions[0].files_before, r.partitions[0].files_after),
            (3, 1)
        );
        assert!(render(&r).contains("would"));
        assert_eq!(names(&part), before);
    }

    #[test]
    fn big_unsorted_and_unreadable_files_are_kept() {
        let (dir, part) = dataset(3, 10);
        let big: Vec<_> = (0..3000)
            .map(|i| ("a".to_string(), i, i * 7919 % 100_003))
            .collect();
        write_file(&part, "big.parquet", &big);
        // big.parquet is over half the target, the others far under.
        let o = Options {
            target_bytes: std::fs::metadata(part.join("big.parquet")).unwrap().len(),
            ..opts()
        };
        // Claims to be sorted and is not: the merge stops, the partition stays.
        let unsorted = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec!["b", "a"])),
                Arc::new(TimestampMicrosecondArray::from(vec![1, 1]).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![-2, -3])),
            ],
        )
        .unwrap();
        let props = parquet_file::writer_properties(&SORT, Some(SCHEMA_JSON), &settings()).unwrap();
        let mut w = ArrowWriter::try_new(
            File::create(part.join("liar.parquet")).unwrap(),
            schema(),
            Some(props),
        )
        .unwrap();
        w.write(&unsorted).unwrap();
        w.close().unwrap();
        std::fs::write(part.join("broken.parquet"), b"not parquet").unwrap();
        let before = names(&part);
        let r = compact(dir.path(), None, &o).unwrap();
        assert!(r.partitions.is_empty());
        let errors: Vec<_> = r.errors.iter().map(|e| e.error.clone()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("broken.parquet")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("liar.parquet") && e.contains("not sorted"))
        );
        assert_eq!(names(&part), before);
        assert!(names(&dir.path().join(WORK_DIR)).is_empty());

        // Without the liar, the small files merge and the others stay.
        std::fs::remove_file(part.join("liar.parquet")).unwrap();
        let r = compact(dir.path(), None, &o).unwrap();
        let p = &r.partitions[0];
        assert_eq!((p.files_before, p.merged_files, p.files_after), (5, 3, 3));
        assert_eq!(r.errors.len(), 1);
        let after = names(&part);
        assert!(after.contains(&"broken.parquet".to_string()), "{after:?}");
        assert!(after.contains(&"big.parquet".to_string()), "{after:?}");
    }

    /// Builds the staged content and the manifest of the only partition.
    fn prepared(dir: &Path, part: &Path) -> Prepared {
        let o = opts();
        let p = Partition {
            kind: "t".into(),
            date: "2020-01-01".into(),
            hour: 3,
            dir: part.to_owned(),
            start_us: 0,
        };
        let Planned::Merge(plan) = plan_partition(&p, &o, std::time::SystemTime::now()).unwrap()
        else {
            panic!("nothing to merge")
        };
        prepare(dir, &plan, &o, &mut Namer::new()).unwrap()
    }

    #[test]
    fn files_the_collector_writes_meanwhile_end_up_in_the_new_partition() {
        let (dir, part) = dataset(4, 20);
        let mut before = rows(&part);
        let prep = prepared(dir.path(), &part);
        // Committed after the listing, before the switch: linked in before the exchange.
        write_file(&part, "late-1.parquet", &[("z".into(), 1, 1001)]);
        link_late_files(&prep).unwrap();
        // A temporary file still being written, and a commit that lands in the old directory
        // after the links were made.
        std::fs::write(part.join(".late-2.parquet.tmp"), b"half").unwrap();
        write_file(&part, "late-3.parquet", &[("z".into(), 2, 1002)]);
        exchange(&prep.s, &prep.p).unwrap();
        after_exchange(&prep).unwrap();
        finish(&prep.w, &prep.p, &prep.manifest).unwrap();
        let got = names(&part);
        assert!(got.contains(&"late-1.parquet".to_string()), "{got:?}");
        assert!(got.contains(&".late-2.parquet.tmp".to_string()), "{got:?}");
        assert!(got.contains(&"late-3.parquet".to_string()), "{got:?}");
        assert_eq!(got.iter().filter(|n| n.starts_with("compact-")).count(), 1);
        assert_eq!(got.len(), 4);
        std::fs::remove_file(part.join(".late-2.parquet.tmp")).unwrap();
        before.push(("z".into(), 1, 1001));
        before.push(("z".into(), 2, 1002));
        before.sort();
        assert_eq!(rows(&part), before);
        assert!(names(&dir.path().join(WORK_DIR)).is_empty());
    }

    #[test]
    fn recovery_rolls_back_before_the_switch_and_forward_after_it() {
        // Before: the partition is as it was, the staged files are gone.
        let (dir, part) = dataset(4, 20);
        let before = names(&part);
        let before_rows = rows(&part);
        let _ = prepared(dir.path(), &part);
        let r = recover(dir.path()).unwrap();
        assert_eq!(r[0].action, "rolled back");
        assert_eq!(names(&part), before);
        assert!(names(&dir.path().join(WORK_DIR)).is_empty());

        // After: the inputs are deleted, the outputs stay.
        let prep = prepared(dir.path(), &part);
        exchange(&prep.s, &prep.p).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r[0].action, "completed");
        assert_eq!(names(&part), prep.manifest.outputs);
        assert_eq!(rows(&part), before_rows);
        assert!(names(&dir.path().join(WORK_DIR)).is_empty());
        assert!(recover(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn recovery_refuses_to_delete_what_it_does_not_know() {
        let (dir, part) = dataset(3, 20);
        let prep = prepared(dir.path(), &part);
        std::fs::write(prep.s.join("stranger.parquet"), b"x").unwrap();
        let e = recover(dir.path()).unwrap_err();
        assert!(matches!(e, CompactError::Recovery { .. }), "{e}");
        assert!(prep.s.join("stranger.parquet").exists());
    }

    #[test]
    fn a_second_compaction_waits_for_the_first() {
        let (dir, _part) = dataset(2, 5);
        let _held = Lock::take(dir.path()).unwrap();
        let e = compact(dir.path(), None, &opts()).unwrap_err();
        assert!(matches!(e, CompactError::Busy { .. }), "{e}");
        assert_eq!(e.exit_code(), 1);
        assert!(matches!(
            recover(dir.path()),
            Err(CompactError::Busy { .. })
        ));
    }

    #[test]
    fn kinds_are_checked() {
        let (dir, _part) = dataset(2, 5);
        for k in ["../t", "_quarantine", "nope"] {
            let e = compact(dir.path(), Some(k), &opts()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{k}: {e}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("128M"), Ok(128 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("64kb"), Ok(64 << 10));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("M").is_err());
    }
}
