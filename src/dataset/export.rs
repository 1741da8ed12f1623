//! `export`: one kind, a time window and optional sources, to one Parquet, CSV or NDJSON file.
//!
//! The rows are read through the same DataFusion tables as `query` (so a window prunes to its
//! hour partitions) and sorted by (`source_id`, `event_ts`) under a memory limit: a window
//! larger than the limit is sorted in spill files on disk, so memory does not grow with the
//! window. The file is written under a temporary name and renamed when complete. Parquet output
//! carries the kind's schema (`v2x.schema`, the same JSON as `_schema.json`), its sort order and
//! the export's own filters in its key-value metadata; CSV and NDJSON get the schema beside
//! them as `<out>.schema.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::common::ScalarValue;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::SessionContext;
use parquet::file::metadata::KeyValue;

use super::query::{Format, QueryError, Sink, dir_url, register};
use super::{DatasetError, validate_kind};

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    pub data: PathBuf,
    pub kind: String,
    /// Inclusive lower bound on `event_ts`, microseconds since the epoch.
    pub from_us: Option<i64>,
    /// Exclusive upper bound.
    pub to_us: Option<i64>,
    /// Only these sources (all when empty).
    pub sources: Vec<String>,
    pub out: PathBuf,
    pub format: Format,
    /// Memory for the sort before it spills to disk.
    pub memory_bytes: usize,
}

/// Default sort memory before spilling.
pub const DEFAULT_MEMORY_BYTES: usize = 256 << 20;

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub bytes: u64,
}

/// The format a file name implies: `.parquet`, `.csv`, `.ndjson` / `.jsonl` / `.json`.
pub fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "parquet" => Some(Format::Parquet),
        "csv" => Some(Format::Csv),
        "ndjson" | "jsonl" | "json" => Some(Format::Json),
        _ => None,
    }
}

/// Parses a command-line time: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` / `YYYY-MM-DDTHH:MM`
/// in UTC. Returns microseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(us) = crate::decode::time::parse_rfc3339_us(s) {
        return Some(us);
    }
    let s = s.replacen('T', " ", 1);
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&s, f) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

fn ts(us: i64) -> datafusion::logical_expr::Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some("UTC".into()),
    ))
}

/// Rows in the files of the partitions the window touches: the total for the progress line
/// (footers only).
fn estimate_rows(req: &Request) -> u64 {
    let Ok(files) = super::files(&req.data, &req.kind) else {
        return 0;
    };
    let hour = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.format("date=%Y-%m-%d/hour=%H").to_string())
    };
    let from = req.from_us.and_then(hour);
    let to = req.to_us.map(|us| us.saturating_sub(1)).and_then(hour);
    files
        .iter()
        .filter(|f| {
            let p = f.partition();
            from.as_ref().is_none_or(|lo| p >= *lo) && to.as_ref().is_none_or(|hi| p <= *hi)
        })
        .filter_map(|f| {
            let file = std::fs::File::open(&f.path).ok()?;
            let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).ok()?;
            use parquet::file::reader::FileReader;
            Some(reader.metadata().file_metadata().num_rows() as u64)
        })
        .sum()
}

/// Runs the export; `progress(rows_written, rows_estimated)` is called about twice a second.
pub async fn run(req: &Request, mut progress: impl FnMut(u64, u64)) -> Result<Summary, QueryError> {
    validate_kind(&req.kind)?;
    for s in &req.sources {
        if !crate::route::is_safe_identifier(s) {
            return Err(QueryError::Usage(format!(
                "source {s:?} is not a valid source id"
            )));
        }
    }
    if let (Some(from), Some(to)) = (req.from_us, req.to_us)
        && from >= to
    {
        return Err(QueryError::Usage("--from must be before --to".into()));
    }
    let remote = super::remote::Remote::parse(&req.data)?;
    let table_url = match &remote {
        Some(r) => {
            if !r.has_parquet(&req.kind).await? {
                return Err(QueryError::Usage(format!(
                    "kind {} has no data files in {}",
                    req.kind,
                    r.describe()
                )));
            }
            r.table_url(&req.kind)
        }
        None => {
            let data = req
                .data
                .canonicalize()
                .map_err(|_| DatasetError::NoDataDir {
                    path: req.data.clone(),
                })?;
            if super::files(&data, &req.kind)?.is_empty() {
                return Err(QueryError::Usage(format!(
                    "kind {} has no data files in {}",
                    req.kind,
                    data.display()
                )));
            }
            dir_url(&data.join(&req.kind))
        }
    };

    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(req.memory_bytes.max(16 << 20), 1.0)
        .build_arc()?;
    // One sort stream (the output is one file anyway), and a merge reservation big enough to
    // merge the spilled runs back: with DataFusion's 10 MB default a window of a few million
    // rows failed to merge within 256 MB ("Resources exhausted").
    let memory = req.memory_bytes.max(16 << 20);
    let config = super::query::session_config()
        .with_target_partitions(1)
        .with_sort_spill_reservation_bytes(memory / 4);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    if let Some(r) = &remote {
        r.register_with(&ctx);
    }
    register(&ctx, &req.kind, &table_url).await?;

    let mut df = ctx.table(req.kind.as_str()).await?;
    if let Some(from) = req.from_us {
        df = df.filter(col("event_ts").gt_eq(ts(from)))?;
    }
    if let Some(to) = req.to_us {
        df = df.filter(col("event_ts").lt(ts(to)))?;
    }
    if !req.sources.is_empty() {
        let list = req.sources.iter().map(|s| lit(s.as_str())).collect();
        df = df.filter(col("source_id").in_list(list, false))?;
    }
    // The partition columns are the file's own event times again: not exported.
    let columns: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != "date" && n != "hour")
        .collect();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    df = df.select_columns(&columns)?.sort(vec![
        col("source_id").sort(true, false),
        col("event_ts").sort(true, false),
    ])?;

    let schema_json = match &remote {
        Some(r) => r.read_text(&req.kind, "_schema.json").await,
        None => std::fs::read_to_string(req.data.join(&req.kind).join("_schema.json")).ok(),
    }
    .unwrap_or_default();
    let filters = serde_json::json!({
        "kind": req.kind,
        "from": req.from_us.and_then(chrono::DateTime::from_timestamp_micros).map(|t| t.to_rfc3339()),
        "to": req.to_us.and_then(chrono::DateTime::from_timestamp_micros).map(|t| t.to_rfc3339()),
        "sources": req.sources,
    });
    let mut metadata = vec![
        KeyValue::new("v2x.sorted_by".into(), "source_id,event_ts".to_string()),
        KeyValue::new("v2x.export".into(), filters.to_string()),
    ];
    if !schema_json.is_empty() {
        metadata.push(KeyValue::new("v2x.schema".into(), schema_json.clone()));
    }

    let estimate = estimate_rows(req);
    // The same entries in the Arrow schema's metadata, where pyarrow and Polars look.
    let schema = Arc::new(
        df.schema().as_arrow().clone().with_metadata(
            metadata
                .iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect(),
        ),
    );
    let mut stream = df.execute_stream().await?;
    let sink = Sink::open(req.format, Some(&req.out), schema, metadata)?;
    let mut last = Instant::now();
    let rows = sink
        .drain(&mut stream, |rows| {
            if last.elapsed() >= Duration::from_millis(500) {
                progress(rows, estimate);
                last = Instant::now();
            }
        })
        .await?;
    progress(rows, estimate);
    if req.format != Format::Parquet && !schema_json.is_empty() {
        let mut side = req.out.clone().into_os_string();
        side.push(".schema.json");
        crate::sink::parquet_file::write_atomic(Path::new(&side), schema_json.as_bytes()).map_err(
            |source| QueryError::Write {
                path: PathBuf::from(&side),
                source,
            },
        )?;
    }
    let bytes = std::fs::metadata(&req.out).map(|m| m.len()).unwrap_or(0);
    Ok(Summary { rows, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_times() {
        let at = |s| parse_time(s).map(|us| chrono::DateTime::from_timestamp_micros(us).unwrap());
        let nine = chrono::DateTime::parse_from_rfc3339("2026-11-28T09:00:00Z").unwrap();
        assert_eq!(at("2026-11-28T09:00:00Z"), Some(nine.into()));
        assert_eq!(at("2026-11-28T17:00:00+08:00"), Some(nine.into()));
        assert_eq!(at("2026-11-28 09:00"), Some(nine.into()));
        assert_eq!(at("2026-11-28T09:00"), Some(nine.into()));
        assert_eq!(
            at("2026-11-28"),
            Some(
                chrono::DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z")
                    .unwrap()
                    .into()
            )
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-13-01"), None);
    }

    #[test]
    fn formats_from_file_names() {
        assert_eq!(format_of(Path::new("a.parquet")), Some(Format::Parquet));
        assert_eq!(format_of(Path::new("a.CSV")), Some(Format::Csv));
        assert_eq!(format_of(Path::new("a.ndjson")), Some(Format::Json));
        assert_eq!(format_of(Path::new("a.txt")), None);
    }
}
