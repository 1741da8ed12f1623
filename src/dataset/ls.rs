//! `v2x-collector ls`: per kind its partitions, files, rows, bytes, event-time range and number
//! of sources, the quarantine table's size, and which kinds would gain from `compact`.
//!
//! Everything comes from the Parquet footers except the source count, which no footer carries
//! (the writer does not write distinct counts). Rows are sorted by (source_id, event_ts), so for
//! each row group of `source_id`:
//! - the footer's min and max, when equal, are the one source of the row group;
//! - otherwise the chunk's dictionary page is read: when every data page of the chunk is
//!   dictionary-encoded (the footer says so), the dictionary holds exactly the distinct values
//!   of the chunk. That one page, a few bytes per source, is the only thing read beyond footers;
//! - only a chunk that is not fully dictionary-encoded (written by another tool, or a dictionary
//!   that overflowed) has its `source_id` column read.
//!
//! `event_ts` min and max come from the row-group statistics; a row group without them (not
//! written by the collector) has its `event_ts` column read.
//!
//! A file that cannot be read is listed with its error, never a panic; the command then exits 1.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::{Encoding, LogicalType, TimeUnit};
use parquet::column::page::Page;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::ReaderProperties;
use parquet::file::reader::RowGroupReader;
use parquet::file::serialized_reader::SerializedRowGroupReader;
use parquet::file::statistics::Statistics;
use serde::Serialize;

use super::{DataFile, DatasetError};

/// A partition's files are "small" when, on average, they are under both of these: merging
/// them with `compact` gives fewer, larger files that read faster.
pub const SMALL_FILE_BYTES: u64 = 8 << 20;
/// See [`SMALL_FILE_BYTES`].
pub const SMALL_FILE_ROWS: u64 = 100_000;

/// What `ls` reports. Field names are the `--json` interface scripts rely on.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub data: String,
    pub kinds: Vec<KindSummary>,
    pub quarantine: TableSummary,
    /// The message index (`_messages`): one row per filed message.
    pub messages: TableSummary,
}

#[derive(Debug, Serialize)]
pub struct KindSummary {
    pub kind: String,
    /// `date=/hour=` partitions holding at least one file.
    pub partitions: usize,
    /// Committed `.parquet` files, readable or not.
    pub files: usize,
    /// Rows of the readable files.
    pub rows: u64,
    /// Bytes on disk of all files.
    pub bytes: u64,
    /// Earliest and latest `event_ts`, microseconds since the epoch; RFC 3339 UTC in JSON.
    #[serde(serialize_with = "rfc3339_opt")]
    pub min_event_ts: Option<i64>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub max_event_ts: Option<i64>,
    /// Distinct `source_id` values.
    pub sources: usize,
    /// Files in partitions of two or more small files (see [`SMALL_FILE_BYTES`]).
    pub small_files: usize,
    /// Set when `small_files` is not zero: what to run.
    pub warning: Option<String>,
    pub errors: Vec<FileError>,
}

#[derive(Debug, Default, Serialize)]
pub struct TableSummary {
    pub partitions: usize,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub errors: Vec<FileError>,
}

/// A file (or directory) that could not be read, and why.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    pub path: String,
    pub error: String,
}

impl Listing {
    /// Every unreadable file of every table.
    pub fn errors(&self) -> impl Iterator<Item = &FileError> {
        self.kinds
            .iter()
            .flat_map(|k| &k.errors)
            .chain(&self.quarantine.errors)
            .chain(&self.messages.errors)
    }
}

/// `ls --sources`: per source and kind, from the message index (`_messages`), the messages,
/// rows, messages that gave no rows, the delay (receive minus event time) and the first and
/// last receive time, printed in `format`.
pub async fn sources(
    data: &Path,
    format: super::query::Format,
) -> Result<u64, super::query::QueryError> {
    if super::message_files(data)?.is_empty() {
        return Err(super::query::QueryError::Usage(format!(
            "{} has no message index yet (_messages is written by `run` since this version)",
            data.display()
        )));
    }
    const SQL: &str = "select source_id, kind, count(*) as messages, sum(rows) as rows, \
        sum(case when rows = 0 then 1 else 0 end) as empty_messages, \
        round(approx_percentile_cont(delay_ms, 0.5), 1) as p50_delay_ms, \
        round(min(delay_ms), 1) as min_delay_ms, round(max(delay_ms), 1) as max_delay_ms, \
        min(recv_ts) as first_recv, max(recv_ts) as last_recv \
        from messages group by source_id, kind order by source_id, kind";
    super::query::run(data, SQL, format, None).await
}

/// Lists the dataset below `data`.
pub fn list(data: &Path) -> Result<Listing, DatasetError> {
    let kinds = super::kinds(data)?
        .iter()
        .map(|k| summarize_kind(data, k))
        .collect();
    Ok(Listing {
        data: data.display().to_string(),
        kinds,
        quarantine: summarize_table(data, super::QUARANTINE),
        messages: summarize_table(data, super::MESSAGES),
    })
}

fn summarize_kind(data: &Path, kind: &str) -> KindSummary {
    let mut s = KindSummary {
        kind: kind.to_owned(),
        partitions: 0,
        files: 0,
        rows: 0,
        bytes: 0,
        min_event_ts: None,
        max_event_ts: None,
        sources: 0,
        small_files: 0,
        warning: None,
        errors: Vec::new(),
    };
    let files = match super::table_files(data, kind) {
        Ok(f) => f,
        Err(e) => {
            s.errors.push(FileError {
                path: data.join(kind).display().to_string(),
                error: e.to_string(),
            });
            return s;
        }
    };
    let mut sources = HashSet::new();
    // Per partition: (files, bytes, rows).
    let mut partitions: BTreeMap<(String, u8), (u64, u64, u64)> = BTreeMap::new();
    for f in &files {
        let p = partitions.entry((f.date.clone(), f.hour)).or_default();
        p.0 += 1;
        p.1 += f.bytes;
        s.files += 1;
        s.bytes += f.bytes;
        match inspect_kind_file(&f.path) {
            Ok(facts) => {
                p.2 += facts.rows;
                s.rows += facts.rows;
                s.min_event_ts = min_opt(s.min_event_ts, facts.min_us);
                s.max_event_ts = max_opt(s.max_event_ts, facts.max_us);
                sources.extend(facts.sources);
            }
            Err(e) => s.errors.push(file_error(f, e)),
        }
    }
    s.partitions = partitions.len();
    s.sources = sources.len();
    let small: Vec<_> = partitions
        .values()
        .filter(|(n, bytes, rows)| {
            *n >= 2 && bytes / n < SMALL_FILE_BYTES && rows / n < SMALL_FILE_ROWS
        })
        .collect();
    if !small.is_empty() {
        let (n, bytes, rows) = small
            .iter()
            .fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2));
        s.small_files = n as usize;
        s.warning = Some(format!(
            "{n} small files in {} partition{} (on average {}, {} rows); \
             `v2x-collector compact --kind {kind}` merges them",
            small.len(),
            if small.len() == 1 { "" } else { "s" },
            human_bytes(bytes / n),
            rows / n,
        ));
    }
    s
}

/// Files, rows and size of a table beside the kinds (`_quarantine`, `_messages`).
fn summarize_table(data: &Path, table: &str) -> TableSummary {
    let mut s = TableSummary::default();
    let files = match super::table_files(data, table) {
        Ok(f) => f,
        Err(e) => {
            s.errors.push(FileError {
                path: data.join(table).display().to_string(),
                error: e.to_string(),
            });
            return s;
        }
    };
    let partitions: BTreeSet<_> = files.iter().map(|f| (&f.date, f.hour)).collect();
    s.partitions = partitions.len();
    for f in &files {
        s.files += 1;
        s.bytes += f.bytes;
        match read_footer(&f.path).and_then(|(_, meta)| file_rows(&meta)) {
            Ok(rows) => s.rows += rows,
            Err(e) => s.errors.push(file_error(f, e)),
        }
    }
    s
}

fn file_error(f: &DataFile, e: InspectError) -> FileError {
    FileError {
        path: f.path.display().to_string(),
        error: e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
enum InspectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a readable Parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Invalid(String),
}

/// What one data file contributes to its kind's summary.
#[derive(Debug, Default)]
struct FileFacts {
    rows: u64,
    min_us: Option<i64>,
    max_us: Option<i64>,
    sources: HashSet<String>,
    /// Row groups whose `source_id` or `event_ts` column had to be read (not the footer or
    /// the dictionary page alone).
    columns_read: usize,
}

fn read_footer(path: &Path) -> Result<(File, Arc<ParquetMetaData>), InspectError> {
    let file = File::open(path)?;
    let meta = ParquetMetaDataReader::new().parse_and_finish(&file)?;
    Ok((file, Arc::new(meta)))
}

fn file_rows(meta: &ParquetMetaData) -> Result<u64, InspectError> {
    let n = meta.file_metadata().num_rows();
    u64::try_from(n).map_err(|_| InspectError::Invalid(format!("footer says {n} rows")))
}

fn inspect_kind_file(path: &Path) -> Result<FileFacts, InspectError> {
    let (file, meta) = read_footer(path)?;
    let file = Arc::new(file);
    let schema = meta.file_metadata().schema_descr();
    let leaf = |name: &str| {
        schema
            .columns()
            .iter()
            .position(|c| c.path().parts() == [name])
            .ok_or_else(|| InspectError::Invalid(format!("no {name} column")))
    };
    let (ts, src) = (leaf("event_ts")?, leaf("source_id")?);
    let unit = timestamp_unit(schema.column(ts).logical_type_ref())?;
    let mut facts = FileFacts {
        rows: file_rows(&meta)?,
        ..FileFacts::default()
    };
    let props = Arc::new(ReaderProperties::builder().build());
    for (i, rg) in meta.row_groups().iter().enumerate() {
        if rg.num_rows() == 0 {
            continue;
        }
        // Event-time range.
        let range = match rg.column(ts).statistics() {
            Some(Statistics::Int64(s)) => s.min_opt().zip(s.max_opt()).map(|(a, b)| (*a, *b)),
            _ => None,
        };
        let (lo, hi) = match range {
            Some((lo, hi)) => (to_micros(lo, unit)?, to_micros(hi, unit)?),
            None => {
                facts.columns_read += 1;
                let col = read_column(&file, &meta, i, ts)?;
                let col = arrow::compute::cast(
                    &col,
                    &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                )?;
                let col = arrow::compute::cast(&col, &DataType::Int64)?;
                let col = col.as_primitive::<Int64Type>();
                match arrow::compute::min(col).zip(arrow::compute::max(col)) {
                    Some(r) => r,
                    None => continue,
                }
            }
        };
        facts.min_us = min_opt(facts.min_us, Some(lo));
        facts.max_us = max_opt(facts.max_us, Some(hi));

        // Sources: one by the statistics, else the dictionary page, else the column.
        let chunk = rg.column(src);
        if let Some(only) = single_value(chunk) {
            facts.sources.insert(only);
            continue;
        }
        if fully_dictionary_encoded(chunk) {
            let rg_reader =
                SerializedRowGroupReader::new(Arc::clone(&file), rg, None, Arc::clone(&props))?;
            let mut pages = rg_reader.get_column_page_reader(src)?;
            if let Some(Page::DictionaryPage {
                buf,
                num_values,
                encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
                ..
            }) = pages.get_next_page()?
            {
                plain_strings(&buf, num_values, &mut facts.sources)?;
                continue;
            }
        }
        facts.columns_read += 1;
        let col = arrow::compute::cast(&read_column(&file, &meta, i, src)?, &DataType::Utf8)?;
        facts
            .sources
            .extend(col.as_string::<i32>().iter().flatten().map(str::to_owned));
    }
    Ok(facts)
}

/// The unit `event_ts` is stored in, from the column's logical type.
fn timestamp_unit(logical: Option<&LogicalType>) -> Result<TimeUnit, InspectError> {
    match logical {
        Some(LogicalType::Timestamp(t)) => Ok(t.unit),
        other => Err(InspectError::Invalid(format!(
            "event_ts is not a timestamp column ({other:?})"
        ))),
    }
}

/// A stored `event_ts` value in microseconds.
fn to_micros(v: i64, unit: TimeUnit) -> Result<i64, InspectError> {
    match unit {
        TimeUnit::MILLIS => v
            .checked_mul(1000)
            .ok_or_else(|| InspectError::Invalid("event_ts statistics out of range".into())),
        TimeUnit::MICROS => Ok(v),
        TimeUnit::NANOS => Ok(v.div_euclid(1000)),
    }
}

/// The chunk's one value, when its exact min and max are equal.
fn single_value(chunk: &ColumnChunkMetaData) -> Option<String> {
    let Some(Statistics::ByteArray(s)) = chunk.statistics() else {
        return None;
    };
    if !(s.min_is_exact() && s.max_is_exact()) {
        return None;
    }
    let (min, max) = (s.min_opt()?, s.max_opt()?);
    (min == max)
        .then(|| std::str::from_utf8(min.data()).ok().map(str::to_owned))
        .flatten()
}

/// Every data page of the chunk is dictionary-encoded, so its dictionary page lists exactly
/// the chunk's distinct values.
fn fully_dictionary_encoded(chunk: &ColumnChunkMetaData) -> bool {
    chunk.dictionary_page_offset().is_some()
        && chunk.page_encoding_stats_mask().is_some_and(|m| {
            m.is_only(Encoding::PLAIN_DICTIONARY) || m.is_only(Encoding::RLE_DICTIONARY)
        })
}

/// Decodes a PLAIN byte-array page: `n` times a little-endian u32 length and the bytes.
fn plain_strings(mut buf: &[u8], n: u32, out: &mut HashSet<String>) -> Result<(), InspectError> {
    let bad = |what: &str| InspectError::Invalid(format!("source_id dictionary page {what}"));
    for _ in 0..n {
        let (len, rest) = buf
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("ends early"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad("ends early"));
        }
        let (value, rest) = rest.split_at(len);
        let value =
            std::str::from_utf8(value).map_err(|_| bad("holds a value that is not UTF-8"))?;
        out.insert(value.to_owned());
        buf = rest;
    }
    Ok(())
}

/// One column of one row group, through the Arrow reader (the fallback path).
fn read_column(
    file: &Arc<File>,
    meta: &Arc<ParquetMetaData>,
    row_group: usize,
    leaf: usize,
) -> Result<ArrayRef, InspectError> {
    let arrow_meta = ArrowReaderMetadata::try_new(Arc::clone(meta), ArrowReaderOptions::new())?;
    let mask = ProjectionMask::leaves(meta.file_metadata().schema_descr(), [leaf]);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file.try_clone()?, arrow_meta)
        .with_projection(mask)
        .with_row_groups(vec![row_group])
        .build()?;
    let mut parts = Vec::new();
    for batch in reader {
        parts.push(Arc::clone(batch?.column(0)));
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    match refs.as_slice() {
        [] => Err(InspectError::Invalid("row group without rows".into())),
        _ => Ok(arrow::compute::concat(&refs)?),
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// RFC 3339 in UTC with `Z`, as many fractional digits as the value needs.
pub fn rfc3339(us: i64, format: chrono::SecondsFormat) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(format, true))
}

fn rfc3339_opt<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v.and_then(|us| rfc3339(us, chrono::SecondsFormat::AutoSi)) {
        Some(t) => s.serialize_str(&t),
        None => s.serialize_none(),
    }
}

/// `812 B`, `12.3 KiB`, `4.0 MiB`, ...
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The human table: one line per kind and one for `_quarantine`, then the warnings. Unreadable
/// files are not in it: the caller prints them to stderr.
pub fn render(listing: &Listing) -> String {
    let ts = |v: Option<i64>| {
        v.and_then(|us| rfc3339(us, chrono::SecondsFormat::Millis))
            .unwrap_or_else(|| "-".into())
    };
    let header = [
        "KIND",
        "PARTITIONS",
        "FILES",
        "ROWS",
        "SIZE",
        "SOURCES",
        "FIRST EVENT (UTC)",
        "LAST EVENT (UTC)",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(String::from)];
    for k in &listing.kinds {
        rows.push([
            k.kind.clone(),
            k.partitions.to_string(),
            k.files.to_string(),
            k.rows.to_string(),
            human_bytes(k.bytes),
            k.sources.to_string(),
            ts(k.min_event_ts),
            ts(k.max_event_ts),
        ]);
    }
    for (name, q) in [
        (super::MESSAGES, &listing.messages),
        (super::QUARANTINE, &listing.quarantine),
    ] {
        rows.push([
            name.to_owned(),
            q.partitions.to_string(),
            q.files.to_string(),
            q.rows.to_string(),
            human_bytes(q.bytes),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    let mut width = [0usize; 8];
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let pad = width[i] - cell.chars().count();
            // Kind and times read left to right; counts and sizes line up on the right.
            let left = matches!(i, 0 | 6 | 7);
            if i > 0 {
                line.push_str("  ");
            }
            if left {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if listing.kinds.is_empty() {
        out.push_str(&format!("no kinds in {} yet\n", listing.data));
    }
    for k in &listing.kinds {
        if let Some(w) = &k.warning {
            out.push_str(&format!("warning: {}: {w}\n", k.kind));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::TimestampUnit;
    use crate::sink::parquet_file::{FileSettings, commit};
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};

    /// A kind file as the writer makes it: `sources[i]` has `per_source` rows, one per second.
    fn write_kind_file(
        dir: &Path,
        name: &str,
        sources: &[&str],
        per_source: usize,
        unit: TimestampUnit,
        row_group_rows: usize,
    ) -> PathBuf {
        let tu = match unit {
            TimestampUnit::Us => arrow::datatypes::TimeUnit::Microsecond,
            TimestampUnit::Ms => arrow::datatypes::TimeUnit::Millisecond,
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "event_ts",
                DataType::Timestamp(tu, Some("UTC".into())),
                false,
            ),
            Field::new("source_id", DataType::Utf8, false),
            Field::new("x", DataType::Int64, false),
        ]));
        let base_s: i64 = 1_790_000_000;
        let (mut ts, mut src, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in sources.iter().enumerate() {
            for j in 0..per_source {
                let secs = base_s + (i * per_source + j) as i64;
                ts.push(match unit {
                    TimestampUnit::Us => secs * 1_000_000 + 7,
                    TimestampUnit::Ms => secs * 1_000 + 7,
                });
                src.push(*s);
                x.push(j as i64);
            }
        }
        let ts: ArrayRef = Arc::new(Int64Array::from(ts));
        let ts = arrow::compute::cast(&ts, schema.field(0).data_type()).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                ts,
                Arc::new(StringArray::from(src)),
                Arc::new(Int64Array::from(x)),
            ],
        )
        .unwrap();
        let settings = FileSettings {
            row_group_rows,
            zstd_level: 3,
        };
        commit(
            dir,
            name,
            &[batch],
            &["source_id", "event_ts"],
            None,
            &settings,
        )
        .unwrap()
        .path
    }

    #[test]
    fn footers_and_dictionary_pages_give_rows_range_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let sources = ["rsu-a", "rsu-b", "rsu-c", "veh-1", "veh-2"];
        // Several sources per row group, and one row group of a single source.
        let f = write_kind_file(
            dir.path(),
            "c-0.parquet",
            &sources,
            100,
            TimestampUnit::Us,
            150,
        );
        let facts = inspect_kind_file(&f).unwrap();
        assert_eq!(facts.rows, 500);
        assert_eq!(facts.min_us, Some(1_790_000_000_000_007));
        assert_eq!(facts.max_us, Some(1_790_000_499_000_007));
        let mut got: Vec<_> = facts.sources.into_iter().collect();
        got.sort();
        assert_eq!(got, sources);
        assert_eq!(
            facts.columns_read, 0,
            "footers and dictionary pages suffice"
        );
    }

    #[test]
    fn millisecond_files_report_microseconds() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_kind_file(
            dir.path(),
            "c-0.parquet",
            &["a"],
            3,
            TimestampUnit::Ms,
            1000,
        );
        let facts = inspect_kind_file(&f).unwrap();
        assert_eq!(facts.min_us, Some(1_790_000_000_007_000));
        assert_eq!(facts.max_us, Some(1_790_000_002_007_000));
        assert_eq!(facts.sources.len(), 1);
    }

    #[test]
    fn files_without_statistics_are_read_instead() {
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::{EnabledStatistics, WriterProperties};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "event_ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("source_id", DataType::Utf8, false),
        ]));
        let ts: ArrayRef = Arc::new(Int64Array::from(vec![30, 10, 20]));
        let ts = arrow::compute::cast(&ts, schema.field(0).data_type()).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![ts, Arc::new(StringArray::from(vec!["b", "a", "b"]))],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::None)
            .set_dictionary_enabled(false)
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let facts = inspect_kind_file(&path).unwrap();
        assert_eq!((facts.min_us, facts.max_us), (Some(10), Some(30)));
        assert_eq!(facts.sources.len(), 2);
        assert_eq!(facts.columns_read, 2);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("empty.parquet", &b""[..]),
            ("short.parquet", b"PAR1"),
            ("garbage.parquet", b"PAR1 this is not parquet at all PAR1"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert!(inspect_kind_file(&p).is_err(), "{name}");
        }
        // A real file cut short loses its footer.
        let f = write_kind_file(
            dir.path(),
            "c-0.parquet",
            &["a", "b"],
            50,
            TimestampUnit::Us,
            64,
        );
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        assert!(inspect_kind_file(&f).is_err());
        // A corrupt dictionary page behind a valid footer.
        let mut out = HashSet::new();
        assert!(plain_strings(&[5, 0, 0, 0, b'a'], 1, &mut out).is_err());
        assert!(plain_strings(&[1, 0, 0], 1, &mut out).is_err());
        assert!(plain_strings(&[1, 0, 0, 0, 0xff], 1, &mut out).is_err());
    }

    #[test]
    fn small_files_are_flagged_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("bsm/date=2026-09-22/hour=10");
        for i in 0..3 {
            write_kind_file(
                &part,
                &format!("c-{i}.parquet"),
                &["a"],
                10,
                TimestampUnit::Us,
                64,
            );
        }
        // One file alone in its partition is never "many small files".
        let lone = dir.path().join("bsm/date=2026-09-22/hour=11");
        write_kind_file(&lone, "c-9.parquet", &["b"], 10, TimestampUnit::Us, 64);
        let listing = list(dir.path()).unwrap();
        let k = &listing.kinds[0];
        assert_eq!((k.partitions, k.files, k.rows, k.sources), (2, 4, 40, 2));
        assert_eq!(k.small_files, 3);
        let w = k.warning.as_deref().unwrap();
        assert!(w.contains("compact --kind bsm"), "{w}");
        assert!(w.contains("1 partition "), "{w}");
        assert!(listing.errors().next().is_none());
        let table = render(&listing);
        assert!(table.contains("warning: bsm:"), "{table}");
    }

    #[test]
    fn human_bytes_are_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
    }

    #[test]
    fn the_table_is_aligned() {
        let listing = Listing {
            data: "data".into(),
            kinds: vec![KindSummary {
                kind: "radar_target".into(),
                partitions: 1,
                files: 2,
                rows: 11165,
                bytes: 123_456,
                min_event_ts: Some(1_664_420_400_123_000),
                max_event_ts: Some(1_664_420_460_000_000),
                sources: 1,
                small_files: 0,
                warning: None,
                errors: Vec::new(),
            }],
            quarantine: TableSummary::default(),
            messages: TableSummary {
                rows: 500,
                ..TableSummary::default()
            },
        };
        let table = render(&listing);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].starts_with("radar_target"));
        assert!(lines[1].contains("2022-09-29T03:00:00.123Z"), "{table}");
        assert!(
            lines[2].starts_with("_messages ") && lines[2].contains(" 500 "),
            "{table}"
        );
        assert!(lines[3].starts_with("_quarantine "));
        // Right-aligned counts end in the same column.
        let end = |l: &str, s: &str| l.find(s).map(|i| i + s.len());
        assert_eq!(end(lines[0], "ROWS"), end(lines[1], "11165"));
        let json = serde_json::to_value(&listing).unwrap();
        assert_eq!(json["kinds"][0]["min_event_ts"], "2022-09-29T03:00:00.123Z");
        assert_eq!(json["kinds"][0]["warning"], serde_json::Value::Null);
        assert_eq!(json["quarantine"]["rows"], 0);
        assert_eq!(json["messages"]["rows"], 500);
    }
}
