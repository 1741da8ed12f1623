//! `v2x-collector reprocess`: decodes quarantined messages again with the current schemas and
//! routes, and files those that now decode into the dataset, exactly once, even when killed at
//! any instruction.
//!
//! # What is reprocessed
//!
//! A schema or a route is added or fixed after messages were quarantined (their topic had no
//! route, `unknown_topic`; their kind had no schema, `unknown_kind`; a profile was missing or
//! wrong). Every `_quarantine` row that passes the filters (reason, topic filter, kind, receive
//! time) is decoded again from its raw payload **with its original topic and receive time**,
//! by a [`Decoder`] built as `run` builds it (`pipeline::build_decoder`). So its rows,
//! `msg_uid`, partitions and `_messages` row are those a direct ingest would have produced.
//!
//! - A message that now decodes is filed: its kind's rows and its `_messages` row.
//! - A message that still fails stays in quarantine as it is (no new quarantine row is
//!   written) and is counted under the reason it fails with now; a later run tries it again.
//! - A row whose payload was cut (`payload_truncated`, a `too_large` message beyond
//!   `decode.quarantine_payload_keep_bytes`) cannot be reprocessed: it is counted, never filed.
//!
//! Quarantine files are never changed: a row that was filed stays in `_quarantine`, and the
//! ledger (below) records that it was filed.
//!
//! # Exactly once: the ledger and the commit protocol
//!
//! Quarantine files are immutable (the collector writes each once under a unique name;
//! `compact` never touches `_quarantine`), so a quarantine row is named for good by its file's
//! path relative to the data directory and its row index in that file. The **ledger** is the
//! set of rows already filed: the files `<data>/_reprocess/ledger/<set>.json`, one per commit
//! set, each listing its quarantine rows (as index ranges per quarantine file), the data files
//! it published and its counts. A row in the ledger is never decoded again.
//!
//! The messages of a run are filed in commit sets (at most `--commit-messages` messages, or
//! about [`COMMIT_BYTES`] of decoded rows, each). For the set `S = <run id>-<n>`, with its work
//! directory `W = <data>/_reprocess/S` (`_reprocess` is no kind: readers never look there):
//!
//! 1. each (table, event hour) of the set is sorted and encoded exactly as the collector's
//!    files are ([`parquet_file::write_tmp_as`]: sorted by (`source_id`, `event_ts`), zstd,
//!    the kind's schema in the metadata) to `W/f<seq>.part` and fsynced; `W` is fsynced. The
//!    names are not `.*.tmp`, so the collector's start-up clean-up never removes them;
//! 2. `W/manifest.json` is written atomically: the staged files, the final path of each
//!    (`<table>/date=D/hour=HH/reprocess-<run id>-<seq>.parquet`, kinds and `_messages`) and
//!    the quarantine rows of the set. **This is the commit point**;
//! 3. each staged file is renamed to its final path (never over an existing file), and every
//!    partition directory is fsynced. A file appears whole or not at all;
//! 4. `W/manifest.json` is renamed to `<data>/_reprocess/ledger/S.json` and the ledger
//!    directory fsynced: the set's rows are now in the ledger;
//! 5. `W` is removed.
//!
//! Recovery runs at the start of every `reprocess` (and [`recover`] for anyone else), under the
//! lock, for each work directory `W` left behind:
//!
//! - no `W/manifest.json` and no ledger entry: the set never committed and none of its files
//!   was published (renames only start after step 2): `W` is deleted; its messages are still
//!   candidates and the run decodes them again (**rolled back**);
//! - a manifest: steps 3 to 5 are finished. A staged file still in `W` is renamed; one that is
//!   gone was renamed before the crash (only this protocol moves it; a file renamed and since
//!   merged by `compact` is gone from its partition too, which is fine). A staged file whose
//!   final path exists already stops recovery with an error, nothing deleted (**completed**);
//! - a ledger entry `S.json`: the set was complete but for step 5: `W` is removed.
//!
//! Every step is idempotent, so a crash during recovery is recovered the same way. After any
//! crash plus the next run, every filed row is in the dataset exactly once and its quarantine
//! row in the ledger exactly once; nothing is left in `_reprocess` but the ledger.
//!
//! An exclusive `flock` on `<data>/_reprocess` keeps two runs (or a run and a recovery) apart;
//! the kernel drops it when its holder dies. `--dry-run` takes no lock and changes nothing: it
//! counts the rows of an interrupted set with a manifest as already reprocessed (the next run
//! completes that set) and reports the set as pending.
//!
//! # Beside a running collector and `compact`
//!
//! The collector never writes into `_reprocess` and its file names end in `-<20 digits>`, so a
//! `reprocess-...-<6 digits>.parquet` name never collides with one of its files. Published
//! files are ordinary files of their partitions: `compact` may later merge them (the ledger
//! does not depend on them staying). A partition that `compact` is swapping while a rename
//! lands in it gets the file carried over by compact's own step 5, as it does for the
//! collector's files. Quarantine files the collector commits after the run started are left
//! for the next run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::{Deserialize, Serialize};

use super::{DataFile, DatasetError};
use crate::decode::{Decoder, Outcome, Raw, US_PER_HOUR};
use crate::quarantine::Reason;
use crate::sink::parquet_file::{self, FileSettings, TmpFile};

/// The directory of work directories and the ledger, beside the kinds.
pub const WORK_DIR: &str = "_reprocess";
/// The ledger, in [`WORK_DIR`]: one JSON file per committed set.
pub const LEDGER_DIR: &str = "ledger";
/// Default `--commit-messages`: messages decoded per commit set.
pub const DEFAULT_COMMIT_MESSAGES: usize = 100_000;
/// A set is committed when its decoded rows reach this many bytes of Arrow data, whatever its
/// message count: memory stays bounded by it (plus one read batch of quarantine rows).
pub const COMMIT_BYTES: usize = 256 << 20;
const MANIFEST: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;
/// Quarantine rows read at a time (payloads are at most `quarantine_payload_keep_bytes` each).
const READ_BATCH_ROWS: usize = 1024;
/// Messages decoded between two hand-overs of the decoder's builders.
const DRAIN_EVERY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReprocessError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("another reprocess is running on {} (it holds the lock on that directory)", path.display())]
    Busy { path: PathBuf },
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
    #[error("{} is not a quarantine file: {reason}", path.display())]
    NotQuarantine { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] crate::sink::CommitError),
    #[error(
        "ledger {}: {reason}; nothing was filed (without the whole ledger rows could be filed twice)",
        path.display()
    )]
    Ledger { path: PathBuf, reason: String },
    #[error("interrupted reprocess in {}: {reason}; nothing was deleted, check it by hand", path.display())]
    Recovery { path: PathBuf, reason: String },
}

impl ReprocessError {
    /// 2 for what the user can fix on the command line (a filter, the data directory), 1 for
    /// the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReprocessError::Usage(_) => 2,
            ReprocessError::Dataset(e) => e.exit_code(),
            _ => 1,
        }
    }
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReprocessError + use<> {
    let path = path.to_owned();
    move |source| ReprocessError::Io { step, path, source }
}

// ---- Filters ----

/// An MQTT topic filter: `+` matches one level, a trailing `#` any number (also none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
}

impl TopicFilter {
    pub fn parse(s: &str) -> Result<TopicFilter, String> {
        if s.is_empty() {
            return Err("a topic filter must not be empty".into());
        }
        let levels: Vec<&str> = s.split('/').collect();
        for (i, l) in levels.iter().enumerate() {
            if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
                return Err(format!(
                    "topic filter {s:?}: `#` must be a whole level and the last one"
                ));
            }
            if l.contains('+') && *l != "+" {
                return Err(format!("topic filter {s:?}: `+` must be a whole level"));
            }
        }
        Ok(TopicFilter { text: s.to_owned() })
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut t = topic.split('/');
        for f in self.text.split('/') {
            if f == "#" {
                return true;
            }
            match t.next() {
                Some(level) if f == "+" || f == level => {}
                _ => return false,
            }
        }
        t.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Which quarantine rows to reprocess; every filter given must match (a repeated one: any of
/// its values).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub reasons: Vec<Reason>,
    pub topics: Vec<TopicFilter>,
    /// The row's `kind` column, or the kind its topic routes to now.
    pub kind: Option<String>,
    /// Inclusive lower bound on the row's `recv_ts`, microseconds since the epoch.
    pub from_us: Option<i64>,
    /// Exclusive upper bound.
    pub to_us: Option<i64>,
}

impl Filters {
    fn check(&self, decoder: &Decoder) -> Result<(), ReprocessError> {
        if let (Some(from), Some(to)) = (self.from_us, self.to_us)
            && from >= to
        {
            return Err(ReprocessError::Usage("--from must be before --to".into()));
        }
        if let Some(kind) = &self.kind
            && !decoder.kinds().iter().any(|k| &k.schema.kind == kind)
        {
            let known: Vec<&str> = decoder
                .kinds()
                .iter()
                .map(|k| k.schema.kind.as_str())
                .collect();
            return Err(ReprocessError::Usage(format!(
                "no schema for kind {kind:?} (the schemas have: {})",
                known.join(", ")
            )));
        }
        Ok(())
    }

    /// Whether the receive hour starting at `hour_us` can hold a row in the time window.
    fn hour_may_match(&self, hour_us: i64) -> bool {
        self.from_us.is_none_or(|f| hour_us + US_PER_HOUR > f)
            && self.to_us.is_none_or(|t| hour_us < t)
    }

    fn matches(&self, row: &ScanRow<'_>, decoder: &Decoder) -> bool {
        if self.from_us.is_some_and(|f| row.recv_us < f)
            || self.to_us.is_some_and(|t| row.recv_us >= t)
        {
            return false;
        }
        if !self.reasons.is_empty() && !self.reasons.iter().any(|r| r.as_str() == row.reason) {
            return false;
        }
        if !self.topics.is_empty() && !self.topics.iter().any(|f| f.matches(row.topic)) {
            return false;
        }
        match &self.kind {
            None => true,
            Some(k) if row.kind == Some(k.as_str()) => true,
            Some(k) => decoder
                .router()
                .route(row.topic)
                .is_ok_and(|r| r.kind == k.as_str()),
        }
    }
}

/// What to reprocess and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub filters: Filters,
    /// Count what would be filed and change nothing.
    pub dry_run: bool,
    /// Messages decoded per commit set (at least 1).
    pub commit_messages: usize,
    /// Encoding of the files (the collector's `writer` settings).
    pub file: FileSettings,
}

// ---- The report ----

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCount {
    pub messages: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Filed {
    pub messages: u64,
    /// Rows of the kinds' tables (the `_messages` table gets one row per message besides).
    pub rows: u64,
    pub kinds: BTreeMap<String, KindCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    /// The commit set.
    pub set: String,
    /// `completed`, `rolled back`, `cleaned up`; with `--dry-run`: `pending completion`,
    /// `pending roll back`.
    pub action: String,
}

/// What a run did (or, with `--dry-run`, would do). `candidates` (rows passing the filters) =
/// `filed.messages` + the sum of `still_failing` + `truncated` + `already_reprocessed`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub data: String,
    pub dry_run: bool,
    /// Interrupted sets finished or undone first.
    pub recovered: Vec<Recovered>,
    /// Quarantine files read (those whose receive hour the time filter keeps).
    pub quarantine_files: usize,
    /// Rows of those files.
    pub quarantine_rows: u64,
    pub candidates: u64,
    pub filed: Filed,
    /// Messages that still do not decode, by the reason they fail with now.
    pub still_failing: BTreeMap<String, u64>,
    /// Rows whose payload was cut when quarantined: never reprocessed.
    pub truncated: u64,
    /// Rows filed by an earlier run (in the ledger).
    pub already_reprocessed: u64,
    /// The commit sets written (their ledger entries are `_reprocess/ledger/<set>.json`).
    pub sets: Vec<String>,
    /// Data files published (kinds and `_messages`).
    pub files: usize,
}

/// Human summary of a report.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for x in &r.recovered {
        s.push_str(&format!(
            "recovery: interrupted set {}: {}\n",
            x.set, x.action
        ));
    }
    let would = if r.dry_run { "would file" } else { "filed" };
    s.push_str(&format!(
        "{} candidates in {} quarantine files ({} rows)\n",
        r.candidates, r.quarantine_files, r.quarantine_rows
    ));
    s.push_str(&format!(
        "{would}: {} messages, {} rows\n",
        r.filed.messages, r.filed.rows
    ));
    for (kind, c) in &r.filed.kinds {
        s.push_str(&format!(
            "  {kind:<18} {:>9} messages {:>11} rows\n",
            c.messages, c.rows
        ));
    }
    let failing: u64 = r.still_failing.values().sum();
    s.push_str(&format!("still failing: {failing}\n"));
    for (reason, n) in &r.still_failing {
        s.push_str(&format!("  {reason:<18} {n:>9}\n"));
    }
    s.push_str(&format!(
        "truncated (cannot be reprocessed): {}\n",
        r.truncated
    ));
    s.push_str(&format!("already reprocessed: {}\n", r.already_reprocessed));
    if !r.dry_run && !r.sets.is_empty() {
        s.push_str(&format!(
            "{} files in {} commit sets ({})\n",
            r.files,
            r.sets.len(),
            r.sets.join(", ")
        ));
    }
    s
}

// ---- The ledger and the manifest ----

/// Quarantine rows of one quarantine file, as half-open index ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QuarantineRows {
    /// The quarantine file, relative to the data directory, `/`-separated.
    file: String,
    rows: Vec<[u32; 2]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StagedFile {
    /// Relative to the data directory: `_reprocess/<set>/f<seq>.part`.
    staged: String,
    /// Relative to the data directory: `<table>/date=D/hour=HH/reprocess-<run>-<seq>.parquet`.
    path: String,
    rows: u64,
}

/// A commit set: `W/manifest.json` while it is being published, then its ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    set: String,
    created: String,
    files: Vec<StagedFile>,
    quarantine: Vec<QuarantineRows>,
    kinds: BTreeMap<String, KindCount>,
}

fn ranges(sorted: &[u32]) -> Vec<[u32; 2]> {
    let mut out: Vec<[u32; 2]> = Vec::new();
    for &r in sorted {
        match out.last_mut() {
            Some(last) if last[1] == r => last[1] = r + 1,
            _ => out.push([r, r + 1]),
        }
    }
    out
}

/// Rows already filed: quarantine file (relative to the data directory) -> row indices.
#[derive(Debug, Default)]
struct Ledger {
    done: HashMap<String, HashSet<u32>>,
}

impl Ledger {
    fn add(&mut self, m: &Manifest) {
        for q in &m.quarantine {
            let set = self.done.entry(q.file.clone()).or_default();
            for [a, b] in &q.rows {
                set.extend(*a..*b);
            }
        }
    }

    fn contains(&self, file: &str, row: u32) -> bool {
        self.done.get(file).is_some_and(|s| s.contains(&row))
    }
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if m.version != MANIFEST_VERSION {
        return Err(format!("unknown version {}", m.version));
    }
    Ok(Some(m))
}

/// Every ledger entry below `<data>/_reprocess/ledger`.
fn read_ledger(data: &Path) -> Result<Ledger, ReprocessError> {
    let dir = data.join(WORK_DIR).join(LEDGER_DIR);
    let mut ledger = Ledger::default();
    for (name, path) in entries(&dir)? {
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let bad = |reason: String| ReprocessError::Ledger {
            path: path.clone(),
            reason,
        };
        let m = read_manifest(&path).map_err(bad)?;
        if let Some(m) = m {
            if format!("{}.json", m.set) != name {
                return Err(bad(format!("it names set {}", m.set)));
            }
            ledger.add(&m);
        }
    }
    Ok(ledger)
}

/// The names and paths of the entries of `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, ReprocessError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io("reading", dir))?;
        if let Ok(name) = e.file_name().into_string() {
            out.push((name, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// `p` relative to `data`, `/`-separated: how the ledger names a quarantine file.
fn rel_name(data: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(data).unwrap_or(p);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// A manifest path as a relative path of plain components (nothing like `..` or `/`).
fn safe_rel(p: &str) -> Option<PathBuf> {
    let path = PathBuf::from(p);
    let plain = !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then_some(path)
}

/// Checks that a manifest only names files of its own work directory and data files of
/// partitions, so recovery never renames anything else.
fn check_manifest(m: &Manifest, set: &str) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    if m.set != set {
        return Err(format!("its manifest names set {}", m.set));
    }
    let mut out = Vec::new();
    for f in &m.files {
        let (Some(staged), Some(path)) = (safe_rel(&f.staged), safe_rel(&f.path)) else {
            return Err(format!("unsafe path in {f:?}"));
        };
        let staged_ok = staged.parent() == Some(Path::new(WORK_DIR).join(set).as_path())
            && staged.extension().is_some_and(|e| e == "part");
        let parts: Vec<&str> = f.path.split('/').collect();
        let path_ok = parts.len() == 4
            && (parts[0] == super::MESSAGES || super::validate_kind(parts[0]).is_ok())
            && parts[1].starts_with("date=")
            && parts[2].starts_with("hour=")
            && parts[3].starts_with("reprocess-")
            && parts[3].ends_with(".parquet");
        if !staged_ok || !path_ok {
            return Err(format!("unexpected file in {f:?}"));
        }
        out.push((staged, path));
    }
    Ok(out)
}

// ---- The lock and recovery ----

struct Lock {
    _dir: File,
}

impl Lock {
    fn take(data: &Path) -> Result<Lock, ReprocessError> {
        let dir = data.join(WORK_DIR);
        let ledger = dir.join(LEDGER_DIR);
        if !ledger.is_dir() {
            create_dir_durable(&ledger).map_err(io("creating", &ledger))?;
        }
        match super::lock_dir(&dir) {
            Ok(Some(f)) => Ok(Lock { _dir: f }),
            Ok(None) => Err(ReprocessError::Busy { path: dir }),
            Err(e) => Err(io("locking", &dir)(e)),
        }
    }
}

/// Creates `dir` and its missing parents, fsyncing the parent of each one created, so the new
/// directories survive a power loss as the files renamed into them do.
fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_owned());
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for m in missing.iter().rev() {
        if let Some(p) = m.parent().filter(|p| !p.as_os_str().is_empty()) {
            parquet_file::sync_dir(p)?;
        }
    }
    Ok(())
}

/// Finishes or undoes every commit set interrupted by a crash (see the module docs). Cheap
/// when there is none: one `stat` of `<data>/_reprocess`. [`ReprocessError::Busy`] while a
/// run holds the lock (it recovers by itself).
pub fn recover(data: &Path) -> Result<Vec<Recovered>, ReprocessError> {
    if !data.join(WORK_DIR).is_dir() {
        return Ok(Vec::new());
    }
    let _lock = Lock::take(data)?;
    recover_locked(data)
}

/// The work directories below `<data>/_reprocess`: (set, path).
fn work_dirs(data: &Path) -> Result<Vec<(String, PathBuf)>, ReprocessError> {
    Ok(entries(&data.join(WORK_DIR))?
        .into_iter()
        .filter(|(name, p)| name != LEDGER_DIR && !name.starts_with('.') && p.is_dir())
        .collect())
}

fn recover_locked(data: &Path) -> Result<Vec<Recovered>, ReprocessError> {
    let mut out = Vec::new();
    let ledger_dir = data.join(WORK_DIR).join(LEDGER_DIR);
    for (set, w) in work_dirs(data)? {
        let bad = |reason: String| ReprocessError::Recovery {
            path: w.clone(),
            reason,
        };
        let action = if ledger_dir.join(format!("{set}.json")).exists() {
            "cleaned up"
        } else {
            match read_manifest(&w.join(MANIFEST)).map_err(&bad)? {
                None => "rolled back",
                Some(m) => {
                    let files = check_manifest(&m, &set).map_err(&bad)?;
                    publish(data, &files).map_err(|e| bad(e.to_string()))?;
                    enter_ledger(data, &w, &set)?;
                    "completed"
                }
            }
        };
        remove_work_dir(data, &w)?;
        tracing::warn!(set = %set, action, "recovered an interrupted reprocess");
        out.push(Recovered {
            set,
            action: action.into(),
        });
    }
    Ok(out)
}

/// For `--dry-run`: the ledger as the next run will see it after recovery, and what that
/// recovery will do.
fn dry_state(data: &Path) -> Result<(Ledger, Vec<Recovered>), ReprocessError> {
    let mut ledger = read_ledger(data)?;
    let ledger_dir = data.join(WORK_DIR).join(LEDGER_DIR);
    let mut pending = Vec::new();
    for (set, w) in work_dirs(data)? {
        if ledger_dir.join(format!("{set}.json")).exists() {
            continue;
        }
        let m = read_manifest(&w.join(MANIFEST)).map_err(|reason| ReprocessError::Recovery {
            path: w.clone(),
            reason,
        })?;
        let action = match m {
            Some(m) => {
                ledger.add(&m);
                "pending completion"
            }
            None => "pending roll back",
        };
        pending.push(Recovered {
            set,
            action: action.into(),
        });
    }
    Ok((ledger, pending))
}

/// Step 3: renames what is still staged to its final path, then fsyncs the partitions.
fn publish(data: &Path, files: &[(PathBuf, PathBuf)]) -> Result<(), ReprocessError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (staged, path) in files {
        let (staged, path) = (data.join(staged), data.join(path));
        let dir = path.parent().unwrap_or(data).to_owned();
        if staged.exists() {
            create_dir_durable(&dir).map_err(io("creating", &dir))?;
            parquet_file::publish(&TmpFile {
                tmp: staged,
                path: path.clone(),
                rows: 0,
                bytes: 0,
            })?;
            crate::failpoint::hit("reprocess_after_rename");
        } else if !path.exists() {
            // Renamed before an interruption, and merged away by `compact` since.
            tracing::warn!(path = %path.display(), "a file of an interrupted set is neither staged nor in its partition (compacted since?)");
        }
        if dir.is_dir() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for d in &dirs {
        parquet_file::sync_dir(d).map_err(io("fsync of directory", d))?;
    }
    Ok(())
}

/// Step 4: the manifest becomes the set's ledger entry.
fn enter_ledger(data: &Path, w: &Path, set: &str) -> Result<(), ReprocessError> {
    crate::failpoint::hit("reprocess_before_ledger");
    let ledger_dir = data.join(WORK_DIR).join(LEDGER_DIR);
    let entry = ledger_dir.join(format!("{set}.json"));
    std::fs::rename(w.join(MANIFEST), &entry).map_err(io("renaming into the ledger", &entry))?;
    parquet_file::sync_dir(&ledger_dir).map_err(io("fsync of directory", &ledger_dir))?;
    parquet_file::sync_dir(w).map_err(io("fsync of directory", w))?;
    crate::failpoint::hit("reprocess_after_ledger");
    Ok(())
}

/// Step 5 (and the roll back): removes a work directory and what is left in it.
fn remove_work_dir(data: &Path, w: &Path) -> Result<(), ReprocessError> {
    std::fs::remove_dir_all(w).map_err(io("removing", w))?;
    let parent = data.join(WORK_DIR);
    parquet_file::sync_dir(&parent).map_err(io("fsync of directory", &parent))
}

// ---- Reading the quarantine ----

/// The filter columns of one quarantine row.
struct ScanRow<'a> {
    recv_us: i64,
    topic: &'a str,
    reason: &'a str,
    kind: Option<&'a str>,
}

fn open_quarantine(
    path: &Path,
    columns: &[&str],
) -> Result<ParquetRecordBatchReader, ReprocessError> {
    let read = |source| ReprocessError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io("opening", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(read)?;
    let mut roots = Vec::new();
    for c in columns {
        let i = builder
            .schema()
            .index_of(c)
            .map_err(|_| ReprocessError::NotQuarantine {
                path: path.to_owned(),
                reason: format!("no column {c}"),
            })?;
        roots.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(read)
}

/// Column `name` of `batch` as `ty` (cast when the file holds a compatible type).
fn column(
    batch: &RecordBatch,
    name: &str,
    ty: &DataType,
    path: &Path,
) -> Result<ArrayRef, ReprocessError> {
    let bad = |reason: String| ReprocessError::NotQuarantine {
        path: path.to_owned(),
        reason,
    };
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| bad(format!("no column {name}")))?;
    if c.data_type() == ty {
        return Ok(c.clone());
    }
    arrow::compute::cast(c, ty).map_err(|e| bad(format!("column {name}: {e}")))
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Pass 1: the rows of one quarantine file to decode (sorted), counting the others.
fn scan(
    f: &DataFile,
    rel: &str,
    filters: &Filters,
    decoder: &Decoder,
    ledger: &Ledger,
    report: &mut Report,
) -> Result<Vec<u32>, ReprocessError> {
    let path = &f.path;
    let reader = open_quarantine(
        path,
        &["recv_ts", "topic", "reason", "kind", "payload_truncated"],
    )?;
    let mut todo = Vec::new();
    let mut offset: u64 = 0;
    for batch in reader {
        let batch = batch.map_err(|e| ReprocessError::Read {
            path: path.clone(),
            source: e.into(),
        })?;
        let recv = column(&batch, "recv_ts", &ts_type(), path)?;
        let recv = recv.as_primitive::<TimestampMicrosecondType>();
        let topic = column(&batch, "topic", &DataType::Utf8, path)?;
        let topic = topic.as_string::<i32>();
        let reason = column(&batch, "reason", &DataType::Utf8, path)?;
        let reason = reason.as_string::<i32>();
        let kind = column(&batch, "kind", &DataType::Utf8, path)?;
        let kind = kind.as_string::<i32>();
        let truncated = column(&batch, "payload_truncated", &DataType::Boolean, path)?;
        let truncated = truncated.as_boolean();
        for i in 0..batch.num_rows() {
            let index =
                u32::try_from(offset + i as u64).map_err(|_| ReprocessError::NotQuarantine {
                    path: path.clone(),
                    reason: "more than 2^32 rows".into(),
                })?;
            let row = ScanRow {
                recv_us: recv.value(i),
                topic: topic.value(i),
                reason: reason.value(i),
                kind: kind.is_valid(i).then(|| kind.value(i)),
            };
            if !filters.matches(&row, decoder) {
                continue;
            }
            report.candidates += 1;
            if ledger.contains(rel, index) {
                report.already_reprocessed += 1;
            } else if truncated.is_valid(i) && truncated.value(i) {
                report.truncated += 1;
            } else {
                todo.push(index);
            }
        }
        offset += batch.num_rows() as u64;
    }
    report.quarantine_rows += offset;
    Ok(todo)
}

// ---- Commit sets ----

/// Names: the run id (start time in ms and pid), sets `<run>-<n>`, files
/// `reprocess-<run>-<seq>.parquet` with a 6-digit sequence (a collector's names end in 20
/// digits, so the two never collide).
struct Namer {
    run: String,
    sets: u32,
    files: u32,
}

impl Namer {
    fn new() -> Namer {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Namer {
            run: format!("{ms}p{}", std::process::id()),
            sets: 0,
            files: 0,
        }
    }

    fn set(&mut self) -> String {
        self.sets += 1;
        format!("{}-{:04}", self.run, self.sets)
    }

    fn file(&mut self) -> (u32, String) {
        self.files += 1;
        (
            self.files,
            format!("reprocess-{}-{:06}.parquet", self.run, self.files),
        )
    }
}

/// The decoded rows of the set being built.
#[derive(Default)]
struct Pending {
    batches: BTreeMap<(Arc<str>, i64), Vec<RecordBatch>>,
    bytes: usize,
    /// Messages decoded into this set (filed or not).
    messages: usize,
    /// Quarantine rows filed: file -> row indices (ascending).
    rows: BTreeMap<String, Vec<u32>>,
    kinds: BTreeMap<String, KindCount>,
}

impl Pending {
    /// Takes the decoder's builders: kinds and `_messages` are kept, quarantine rows (messages
    /// that still fail) dropped.
    fn drain(&mut self, decoder: &mut Decoder) {
        for b in decoder.take_batches() {
            if &*b.table == crate::quarantine::TABLE || b.batch.num_rows() == 0 {
                continue;
            }
            self.bytes += b.batch.get_array_memory_size();
            self.batches
                .entry((b.table, b.hour_us))
                .or_default()
                .push(b.batch);
        }
    }
}

struct Committer<'a> {
    data: &'a Path,
    namer: Namer,
    /// Kind -> its schema JSON (`v2x.schema`, `_schema.json`).
    schemas: HashMap<String, String>,
    file: &'a FileSettings,
}

impl Committer<'_> {
    /// Files one set by the protocol of the module docs; returns (set, files).
    fn commit(&mut self, p: Pending) -> Result<Option<(String, usize)>, ReprocessError> {
        if p.rows.is_empty() {
            return Ok(None);
        }
        let data = self.data;
        let set = self.namer.set();
        let w = data.join(WORK_DIR).join(&set);
        if w.exists() {
            return Err(ReprocessError::Recovery {
                path: w,
                reason: "a work directory of this name exists already".into(),
            });
        }
        create_dir_durable(&w).map_err(io("creating", &w))?;
        let staged = match self.stage(&w, &set, &p) {
            Ok(s) => s,
            Err(e) => {
                // Not committed: nothing was published.
                let _ = remove_work_dir(data, &w);
                return Err(e);
            }
        };
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            set: set.clone(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            files: staged,
            quarantine: p
                .rows
                .iter()
                .map(|(file, rows)| QuarantineRows {
                    file: file.clone(),
                    rows: ranges(rows),
                })
                .collect(),
            kinds: p.kinds.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ReprocessError::Recovery {
            path: w.clone(),
            reason: e.to_string(),
        })?;
        crate::failpoint::hit("reprocess_before_manifest");
        if let Err(e) = parquet_file::write_atomic(&w.join(MANIFEST), &json) {
            let _ = std::fs::remove_file(w.join(MANIFEST));
            let _ = remove_work_dir(data, &w);
            return Err(io("writing", &w.join(MANIFEST))(e));
        }
        crate::failpoint::hit("reprocess_after_manifest");
        // Committed: from here an error leaves the set for the next run's recovery.
        let files = check_manifest(&manifest, &set).map_err(|reason| ReprocessError::Recovery {
            path: w.clone(),
            reason,
        })?;
        publish(data, &files)?;
        enter_ledger(data, &w, &set)?;
        remove_work_dir(data, &w)?;
        let rows: u64 = manifest.kinds.values().map(|c| c.rows).sum();
        // Debug: an info line per set would cut through the progress line; the summary
        // lists the sets.
        tracing::debug!(
            set = %set,
            files = files.len(),
            messages = manifest.kinds.values().map(|c| c.messages).sum::<u64>(),
            rows,
            "reprocess set committed"
        );
        Ok(Some((set, files.len())))
    }

    /// Step 1: every (table, hour) of the set to a staged file in `w`, fsynced; the kinds'
    /// `_schema.json` beside their tables.
    fn stage(
        &mut self,
        w: &Path,
        set: &str,
        p: &Pending,
    ) -> Result<Vec<StagedFile>, ReprocessError> {
        let data = self.data;
        let mut out = Vec::new();
        for ((table, hour_us), batches) in &p.batches {
            let (seq, name) = self.namer.file();
            let dir = crate::sink::partition_dir(data, table, *hour_us);
            let staged = w.join(format!("f{seq:06}.part"));
            let schema = self.schemas.get(&**table).map(String::as_str);
            let t = parquet_file::write_tmp_as(
                &staged,
                &dir.join(&name),
                batches,
                crate::sink::sort_columns(table),
                schema,
                self.file,
            )?;
            out.push(StagedFile {
                staged: format!("{WORK_DIR}/{set}/{}", staged_name(&staged)),
                path: rel_name(data, &t.path),
                rows: t.rows as u64,
            });
        }
        parquet_file::sync_dir(w).map_err(io("fsync of directory", w))?;
        for kind in p.kinds.keys() {
            let Some(json) = self.schemas.get(kind) else {
                continue;
            };
            let dir = data.join(kind);
            let path = dir.join("_schema.json");
            if std::fs::read_to_string(&path).is_ok_and(|t| &t == json) {
                continue;
            }
            create_dir_durable(&dir).map_err(io("creating", &dir))?;
            parquet_file::write_atomic(&path, json.as_bytes()).map_err(io("writing", &path))?;
        }
        Ok(out)
    }
}

fn staged_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---- The run ----

/// Reprocesses the quarantine of `data` with `decoder` (built as `run` builds it).
/// `progress(messages_done, messages_total)` is called about twice a second and at the end.
pub fn reprocess(
    data: &Path,
    decoder: &mut Decoder,
    opts: &Options,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, ReprocessError> {
    opts.filters.check(decoder)?;
    let files = super::quarantine_files(data)?;
    let mut report = Report {
        data: data.display().to_string(),
        dry_run: opts.dry_run,
        ..Report::default()
    };
    let (_lock, ledger) = if opts.dry_run {
        let (ledger, pending) = dry_state(data)?;
        report.recovered = pending;
        (None, ledger)
    } else {
        let lock = Lock::take(data)?;
        report.recovered = recover_locked(data)?;
        (Some(lock), read_ledger(data)?)
    };
    // A selection of old messages is no stream: its counter jumps are no loss.
    decoder.set_gap_tracking(false);

    // Pass 1: which rows, from the small columns only.
    let mut todo: Vec<(&DataFile, String, Vec<u32>)> = Vec::new();
    for f in &files {
        let hour_us = hour_start_us(f);
        if hour_us.is_some_and(|h| !opts.filters.hour_may_match(h)) {
            continue;
        }
        report.quarantine_files += 1;
        let rel = rel_name(data, &f.path);
        let rows = scan(f, &rel, &opts.filters, decoder, &ledger, &mut report)?;
        if !rows.is_empty() {
            todo.push((f, rel, rows));
        }
    }
    let total: u64 = todo.iter().map(|(_, _, r)| r.len() as u64).sum();
    progress(0, total);

    // Pass 2: decode and file.
    let mut committer = Committer {
        data,
        namer: Namer::new(),
        schemas: decoder
            .kinds()
            .iter()
            .map(|k| (k.schema.kind.clone(), k.schema.to_json()))
            .collect(),
        file: &opts.file,
    };
    let mut pending = Pending::default();
    let mut done: u64 = 0;
    let mut last = Instant::now();
    let commit_messages = opts.commit_messages.max(1);
    for (f, rel, rows) in &todo {
        let path = &f.path;
        let reader = open_quarantine(path, &["recv_ts", "topic", "payload"])?;
        let mut next = 0usize;
        let mut offset: u64 = 0;
        for batch in reader {
            if next == rows.len() {
                break;
            }
            let batch = batch.map_err(|e| ReprocessError::Read {
                path: path.clone(),
                source: e.into(),
            })?;
            let recv = column(&batch, "recv_ts", &ts_type(), path)?;
            let recv = recv.as_primitive::<TimestampMicrosecondType>();
            let topic = column(&batch, "topic", &DataType::Utf8, path)?;
            let topic = topic.as_string::<i32>();
            let payload = column(&batch, "payload", &DataType::Binary, path)?;
            let payload = payload.as_binary::<i32>();
            let end = offset + batch.num_rows() as u64;
            while next < rows.len() && u64::from(rows[next]) < end {
                let index = rows[next];
                let i = (u64::from(index) - offset) as usize;
                next += 1;
                let raw = Raw::new(topic.value(i), payload.value(i), recv.value(i));
                match decoder.decode_raw(&raw) {
                    Outcome::Filed { kind, rows: n } => {
                        let kind = decoder.kinds()[kind].schema.kind.clone();
                        for c in [
                            pending.kinds.entry(kind.clone()).or_default(),
                            report.filed.kinds.entry(kind).or_default(),
                        ] {
                            c.messages += 1;
                            c.rows += n as u64;
                        }
                        report.filed.messages += 1;
                        report.filed.rows += n as u64;
                        pending.rows.entry(rel.clone()).or_default().push(index);
                    }
                    Outcome::Quarantined(reason) => {
                        *report
                            .still_failing
                            .entry(reason.as_str().to_string())
                            .or_default() += 1;
                    }
                }
                done += 1;
                pending.messages += 1;
                if pending.messages % DRAIN_EVERY == 0 {
                    pending.drain(decoder);
                }
                if pending.messages >= commit_messages || pending.bytes >= COMMIT_BYTES {
                    pending.drain(decoder);
                    let p = std::mem::take(&mut pending);
                    if !opts.dry_run {
                        commit_into(&mut committer, p, &mut report)?;
                    }
                }
                if last.elapsed() >= Duration::from_millis(500) {
                    progress(done, total);
                    last = Instant::now();
                }
            }
            offset = end;
        }
        if next < rows.len() {
            return Err(ReprocessError::NotQuarantine {
                path: path.clone(),
                reason: format!("it has fewer rows than when it was listed ({offset})"),
            });
        }
    }
    pending.drain(decoder);
    if !opts.dry_run {
        commit_into(&mut committer, pending, &mut report)?;
    }
    progress(done, total);
    Ok(report)
}

fn commit_into(
    committer: &mut Committer<'_>,
    p: Pending,
    report: &mut Report,
) -> Result<(), ReprocessError> {
    if let Some((set, files)) = committer.commit(p)? {
        report.sets.push(set);
        report.files += files;
    }
    Ok(())
}

/// Start of the receive hour of a quarantine file's partition.
fn hour_start_us(f: &DataFile) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(&f.date, "%Y-%m-%d").ok()?;
    let t = date.and_hms_opt(u32::from(f.hour), 0, 0)?;
    Some(t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_like_mqtt() {
        let f = |s| TopicFilter::parse(s).unwrap();
        assert!(f("V2X/RADAR/+/TRACK/UP").matches("V2X/RADAR/N22/TRACK/UP"));
        assert!(!f("V2X/RADAR/+/TRACK/UP").matches("V2X/RADAR/N22/TRACK/UP/x"));
        assert!(!f("V2X/RADAR/+/TRACK/UP").matches("V2X/RADAR/TRACK/UP"));
        assert!(f("V2X/#").matches("V2X/RSU/R1/RSM/UP"));
        assert!(f("V2X/#").matches("V2X"));
        assert!(!f("V2X/#").matches("v2x/v1"));
        assert!(f("#").matches("anything/at/all"));
        assert!(f("a/b").matches("a/b"));
        assert!(!f("a/b").matches("a/c"));
        assert!(f("+/+").matches("a/"));
        for bad in ["", "a/#/b", "a/b#", "a+/b", "a/+b"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ledger_rows_are_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), vec![[0, 3], [5, 6], [7, 9]]);
        assert!(ranges(&[]).is_empty());
        let m = manifest("s-1", vec![], vec![("_quarantine/a.parquet", vec![[2, 4]])]);
        let mut l = Ledger::default();
        l.add(&m);
        assert!(l.contains("_quarantine/a.parquet", 3));
        assert!(!l.contains("_quarantine/a.parquet", 4));
        assert!(!l.contains("_quarantine/b.parquet", 3));
    }

    fn manifest(set: &str, files: Vec<(&str, &str)>, rows: Vec<(&str, Vec<[u32; 2]>)>) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            set: set.into(),
            created: String::new(),
            files: files
                .into_iter()
                .map(|(s, p)| StagedFile {
                    staged: s.into(),
                    path: p.into(),
                    rows: 1,
                })
                .collect(),
            quarantine: rows
                .into_iter()
                .map(|(f, r)| QuarantineRows {
                    file: f.into(),
                    rows: r,
                })
                .collect(),
            kinds: BTreeMap::new(),
        }
    }

    #[test]
    fn manifests_name_only_their_own_files() {
        let ok = manifest(
            "s-1",
            vec![(
                "_reprocess/s-1/f000001.part",
                "bsm/date=2026-01-01/hour=00/reprocess-s-000001.parquet",
            )],
            vec![],
        );
        assert!(check_manifest(&ok, "s-1").is_ok());
        assert!(check_manifest(&ok, "s-2").is_err());
        for (staged, path) in [
            (
                "_reprocess/s-2/f1.part",
                "bsm/date=x/hour=00/reprocess-1.parquet",
            ),
            (
                "_reprocess/s-1/f1.part",
                "../etc/date=x/hour=0/reprocess-1.parquet",
            ),
            ("_reprocess/s-1/f1.part", "bsm/date=x/hour=00/other.parquet"),
            ("/tmp/f1.part", "bsm/date=x/hour=00/reprocess-1.parquet"),
            (
                "_reprocess/s-1/f1.part",
                "_quarantine/date=x/hour=00/reprocess-1.parquet",
            ),
        ] {
            let m = manifest("s-1", vec![(staged, path)], vec![]);
            assert!(check_manifest(&m, "s-1").is_err(), "{staged} {path}");
        }
    }

    fn write_manifest(data: &Path, m: &Manifest) -> PathBuf {
        let w = data.join(WORK_DIR).join(&m.set);
        std::fs::create_dir_all(&w).unwrap();
        std::fs::write(w.join(MANIFEST), serde_json::to_vec(m).unwrap()).unwrap();
        w
    }

    #[test]
    fn recovery_rolls_back_without_a_manifest_and_forward_with_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // Set 1: staged, never committed.
        let w1 = data.join(WORK_DIR).join("r-0001");
        std::fs::create_dir_all(&w1).unwrap();
        std::fs::write(w1.join("f000001.part"), b"rows").unwrap();
        // Set 2: committed, one file renamed already, one still staged.
        let a = "bsm/date=2026-01-01/hour=00/reprocess-r-000002.parquet";
        let b = "_messages/date=2026-01-01/hour=00/reprocess-r-000003.parquet";
        let m = manifest(
            "r-0002",
            vec![
                ("_reprocess/r-0002/f000002.part", a),
                ("_reprocess/r-0002/f000003.part", b),
            ],
            vec![("_quarantine/q.parquet", vec![[0, 2]])],
        );
        let w2 = write_manifest(data, &m);
        std::fs::create_dir_all(data.join(a).parent().unwrap()).unwrap();
        std::fs::write(data.join(a), b"a").unwrap();
        std::fs::write(w2.join("f000003.part"), b"b").unwrap();

        let (ledger, pending) = dry_state(data).unwrap();
        assert!(ledger.contains("_quarantine/q.parquet", 1));
        assert_eq!(pending.len(), 2);
        assert!(w1.exists() && w2.exists(), "a dry run changes nothing");

        let done = recover(data).unwrap();
        let actions: Vec<_> = done
            .iter()
            .map(|r| (r.set.as_str(), r.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            [("r-0001", "rolled back"), ("r-0002", "completed")]
        );
        assert!(!w1.exists() && !w2.exists());
        assert_eq!(std::fs::read(data.join(a)).unwrap(), b"a");
        assert_eq!(std::fs::read(data.join(b)).unwrap(), b"b");
        let ledger = read_ledger(data).unwrap();
        assert!(ledger.contains("_quarantine/q.parquet", 0));
        assert!(ledger.contains("_quarantine/q.parquet", 1));
        assert!(!ledger.contains("_quarantine/q.parquet", 2));
        // Idempotent.
        assert!(recover(data).unwrap().is_empty());
    }

    #[test]
    fn recovery_never_overwrites_a_published_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let a = "bsm/date=2026-01-01/hour=00/reprocess-r-000001.parquet";
        let m = manifest(
            "r-0001",
            vec![("_reprocess/r-0001/f000001.part", a)],
            vec![],
        );
        let w = write_manifest(data, &m);
        std::fs::write(w.join("f000001.part"), b"staged").unwrap();
        std::fs::create_dir_all(data.join(a).parent().unwrap()).unwrap();
        std::fs::write(data.join(a), b"other").unwrap();
        assert!(recover(data).is_err());
        assert_eq!(std::fs::read(w.join("f000001.part")).unwrap(), b"staged");
        assert_eq!(std::fs::read(data.join(a)).unwrap(), b"other");
    }

    #[test]
    fn a_set_complete_but_for_its_work_directory_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let m = manifest(
            "r-0001",
            vec![],
            vec![("_quarantine/q.parquet", vec![[0, 1]])],
        );
        let ledger = data.join(WORK_DIR).join(LEDGER_DIR);
        std::fs::create_dir_all(&ledger).unwrap();
        std::fs::write(ledger.join("r-0001.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        std::fs::create_dir_all(data.join(WORK_DIR).join("r-0001")).unwrap();
        let done = recover(data).unwrap();
        assert_eq!(done[0].action, "cleaned up");
        assert!(
            read_ledger(data)
                .unwrap()
                .contains("_quarantine/q.parquet", 0)
        );
    }

    #[test]
    fn a_damaged_ledger_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join(WORK_DIR).join(LEDGER_DIR);
        std::fs::create_dir_all(&ledger).unwrap();
        std::fs::write(ledger.join("r-0001.json"), b"{\"version\":1,").unwrap();
        assert!(matches!(
            read_ledger(dir.path()),
            Err(ReprocessError::Ledger { .. })
        ));
    }

    #[test]
    fn two_runs_cannot_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::take(dir.path()).unwrap();
        assert!(matches!(
            Lock::take(dir.path()),
            Err(ReprocessError::Busy { .. })
        ));
        assert!(matches!(
            recover(dir.path()),
            Err(ReprocessError::Busy { .. })
        ));
        drop(first);
        assert!(Lock::take(dir.path()).is_ok());
    }

    #[test]
    fn time_filters_prune_whole_hours() {
        let f = Filters {
            from_us: Some(US_PER_HOUR + 1),
            to_us: Some(3 * US_PER_HOUR),
            ..Filters::default()
        };
        assert!(!f.hour_may_match(0));
        assert!(f.hour_may_match(US_PER_HOUR));
        assert!(f.hour_may_match(2 * US_PER_HOUR));
        assert!(!f.hour_may_match(3 * US_PER_HOUR));
    }
}
