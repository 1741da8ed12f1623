//! Writing one Parquet file atomically: sort, encode to `.<name>.tmp`, fsync, rename, fsync
//! the directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, StringArray, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("preparing rows for {path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
}

/// Encoding settings.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

#[derive(Debug)]
pub struct CommittedFile {
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: u64,
}

/// A fully written and fsynced temporary file, not yet visible to readers.
#[derive(Debug)]
pub struct TmpFile {
    pub tmp: PathBuf,
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: u64,
}

/// Sorts `batches` by `sort` columns and commits them as `dir/name`.
pub fn commit(
    dir: &Path,
    name: &str,
    batches: &[RecordBatch],
    sort: &[&str],
    schema_json: Option<&str>,
    settings: &FileSettings,
) -> Result<CommittedFile, CommitError> {
    let t = write_tmp(dir, name, batches, sort, schema_json, settings)?;
    publish(&t)?;
    sync_dir(dir).map_err(|source| CommitError::Io {
        step: "fsync of directory",
        path: dir.to_owned(),
        source,
    })?;
    Ok(CommittedFile {
        path: t.path,
        rows: t.rows,
        bytes: t.bytes,
    })
}

/// Sorts and encodes `batches` into `dir/.<name>.tmp` and fsyncs it. The caller publishes it
/// with [`publish`] (rename) and fsyncs the directory.
pub fn write_tmp(
    dir: &Path,
    name: &str,
    batches: &[RecordBatch],
    sort: &[&str],
    schema_json: Option<&str>,
    settings: &FileSettings,
) -> Result<TmpFile, CommitError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    write_tmp_as(&tmp, &dir.join(name), batches, sort, schema_json, settings)
}

/// As [`write_tmp`], with the temporary file's path chosen by the caller (`reprocess` stages
/// its files outside the partitions, under names the collector's start-up clean-up of
/// `.*.tmp` leaves alone). The temporary file's directory is created when missing.
pub fn write_tmp_as(
    tmp: &Path,
    final_path: &Path,
    batches: &[RecordBatch],
    sort: &[&str],
    schema_json: Option<&str>,
    settings: &FileSettings,
) -> Result<TmpFile, CommitError> {
    let final_path = final_path.to_owned();
    let arrow_err = |source| CommitError::Arrow {
        path: final_path.clone(),
        source,
    };
    let schema = batches[0].schema();
    let all = concat_batches(&schema, batches).map_err(arrow_err)?;
    let sorted = match sort_order(&all, sort).map_err(arrow_err)? {
        Some(idx) => take_record_batch(&all, &idx).map_err(arrow_err)?,
        None => all,
    };

    let dir = parent_dir(tmp);
    std::fs::create_dir_all(dir).map_err(|source| CommitError::Io {
        step: "creating",
        path: dir.to_owned(),
        source,
    })?;
    let tmp = tmp.to_owned();
    let io = |step, source| CommitError::Io {
        step,
        path: tmp.clone(),
        source,
    };
    let props =
        properties_builder(sort, schema_json, settings).map_err(|source| CommitError::Parquet {
            path: tmp.clone(),
            source,
        })?;
    let mut props = if one_row_per_message(&sorted) {
        // Every value distinct: a dictionary would hold each once and only add the indices
        // (and the hashing that builds it, a third of the writer's work for `_messages`).
        props.set_column_dictionary_enabled(ColumnPath::from("msg_uid"), false)
    } else {
        props
    };
    for name in mostly_distinct_columns(&sorted) {
        props = props.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    let props = props.build();
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| io("creating", e))?;
        let pq = |source| CommitError::Parquet {
            path: tmp.clone(),
            source,
        };
        let mut writer = ArrowWriter::try_new(file, sorted.schema(), Some(props)).map_err(pq)?;
        writer.write(&sorted).map_err(pq)?;
        crate::failpoint::hit("mid_parquet");
        // into_inner writes the footer and hands the file back for fsync.
        let file = writer.into_inner().map_err(pq)?;
        file.sync_all().map_err(|e| io("fsync", e))?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    })();
    match result {
        Ok(bytes) => Ok(TmpFile {
            tmp,
            path: final_path,
            rows: sorted.num_rows(),
            bytes,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The order that sorts `batch` by the `sort` columns (ascending, nulls first, ties in their
/// arrival order), or `None` when it is in that order already (or names no column it has).
///
/// The collector's sort keys are a string (`source_id`) and then a time. Each string is
/// replaced by its rank among the batch's distinct values (a handful of sources for
/// thousands of rows), so the sort compares fixed-size keys instead of calling a comparator
/// per column per comparison; other column types go through arrow's `lexsort_to_indices`.
fn sort_order(
    batch: &RecordBatch,
    sort: &[&str],
) -> Result<Option<UInt32Array>, arrow::error::ArrowError> {
    let columns: Vec<&ArrayRef> = sort
        .iter()
        .filter_map(|c| batch.column_by_name(c))
        .collect();
    if columns.is_empty() || batch.num_rows() < 2 {
        return Ok(None);
    }
    let idx = match fixed_keys(&columns, batch.num_rows()) {
        Some(mut keys) => {
            if keys.is_sorted() {
                return Ok(None);
            }
            keys.sort_unstable();
            UInt32Array::from_iter_values(keys.into_iter().map(|(_, _, row)| row))
        }
        None => {
            let columns: Vec<SortColumn> = columns
                .into_iter()
                .map(|values| SortColumn {
                    values: values.clone(),
                    options: None,
                })
                .collect();
            lexsort_to_indices(&columns, None)?
        }
    };
    let identity = idx.values().iter().zip(0u32..).all(|(&i, row)| i == row);
    Ok((!identity).then_some(idx))
}

/// (rank of the string, time, row) for every row, when the sort columns are a string, a time,
/// or a string and a time. The row makes every key unique, so an unstable sort keeps ties in
/// arrival order.
type Key = (u32, Option<i64>, u32);

fn fixed_keys(columns: &[&ArrayRef], n: usize) -> Option<Vec<Key>> {
    let rows = u32::try_from(n).ok()?;
    let (ranks, times) = match columns {
        [one] => match string_ranks(one) {
            Some(ranks) => (Some(ranks), None),
            None => (None, Some(times(one)?)),
        },
        [source, time] => (Some(string_ranks(source)?), Some(times(time)?)),
        _ => return None,
    };
    Some(
        (0..rows)
            .map(|row| {
                let i = row as usize;
                let rank = ranks.as_ref().map_or(0, |r| r[i]);
                (rank, times.as_ref().and_then(|t| t[i]), row)
            })
            .collect(),
    )
}

/// Each row's rank among the column's distinct strings (null first), for a string column.
fn string_ranks(column: &ArrayRef) -> Option<Vec<u32>> {
    let strings = column.as_any().downcast_ref::<StringArray>()?;
    let mut distinct: crate::FastMap<Option<&str>, u32> = crate::FastMap::default();
    let ids: Vec<u32> = strings
        .iter()
        .map(|s| {
            let next = distinct.len() as u32;
            *distinct.entry(s).or_insert(next)
        })
        .collect();
    let mut by_value: Vec<(Option<&str>, u32)> = distinct.into_iter().collect();
    by_value.sort_unstable();
    let mut rank = vec![0u32; by_value.len()];
    for (r, (_, id)) in by_value.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    Some(ids.into_iter().map(|id| rank[id as usize]).collect())
}

/// A time or 64-bit integer column's values (null first: `None` sorts before `Some`).
fn times(column: &ArrayRef) -> Option<Vec<Option<i64>>> {
    use arrow::array::AsArray;
    use arrow::datatypes::{
        DataType, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
        TimestampNanosecondType, TimestampSecondType,
    };
    let values = match column.data_type() {
        DataType::Int64 => column.as_primitive::<Int64Type>().values(),
        DataType::Timestamp(TimeUnit::Second, _) => {
            column.as_primitive::<TimestampSecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            column.as_primitive::<TimestampMillisecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            column.as_primitive::<TimestampMicrosecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            column.as_primitive::<TimestampNanosecondType>().values()
        }
        _ => return None,
    };
    if column.null_count() == 0 {
        return Some(values.iter().map(|&v| Some(v)).collect());
    }
    Some(
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| column.is_valid(i).then_some(v))
            .collect(),
    )
}

/// How every data file is encoded (the collector's and `compact`'s): zstd, dictionaries, page
/// statistics, the row group size, and the key-value metadata `v2x.sorted_by` (the sort
/// columns, comma-separated) and `v2x.schema` (the kind's schema JSON).
pub fn writer_properties(
    sort: &[&str],
    schema_json: Option<&str>,
    settings: &FileSettings,
) -> Result<WriterProperties, parquet::errors::ParquetError> {
    Ok(properties_builder(sort, schema_json, settings)?.build())
}

/// Whether no two neighbouring rows share a `msg_uid` (rows sorted by source and time): one
/// row per message, as in `_messages` and the kinds that do not explode a list.
fn one_row_per_message(batch: &RecordBatch) -> bool {
    let Some(uid) = batch
        .column_by_name("msg_uid")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
    else {
        return false;
    };
    uid.null_count() == 0 && (1..uid.len()).all(|i| uid.value(i) != uid.value(i - 1))
}

/// Rows a file needs before its columns are sampled for [`mostly_distinct_columns`].
const SAMPLE_FROM_ROWS: usize = 1024;
/// Values sampled per column, spread evenly over the file.
const SAMPLE_VALUES: usize = 256;

/// The flat number, time and string columns whose values are nearly all different (nine in
/// ten of an even sample): positions, receive times, delays. A dictionary of those holds
/// almost every value once and adds an index per row, so the file is larger, and building it
/// hashes every value; they are written plain (zstd still compresses them). Low-cardinality
/// columns (source, kind, lane, a speed in whole km/h) keep their dictionary.
fn mostly_distinct_columns(batch: &RecordBatch) -> Vec<String> {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    let n = batch.num_rows();
    if n < SAMPLE_FROM_ROWS {
        return Vec::new();
    }
    let step = n / SAMPLE_VALUES;
    let rows = (0..SAMPLE_VALUES).map(|i| i * step);
    let mut out = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let mut seen: crate::FastMap<u64, ()> = crate::FastMap::default();
        let hasher = foldhash::fast::FixedState::with_seed(0);
        let mut add = |bits: u64| {
            seen.insert(bits, ());
        };
        match field.data_type() {
            DataType::Utf8 => {
                let strings = column.as_string::<i32>();
                for r in rows.clone() {
                    add(std::hash::BuildHasher::hash_one(&hasher, strings.value(r)));
                }
            }
            DataType::Float64 => {
                let v = column
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .values();
                rows.clone().for_each(|r| add(v[r].to_bits()));
            }
            DataType::Int64 | DataType::Timestamp(..) => {
                // (A timestamp's values are its i64 buffer.)
                let data = column.to_data();
                let v = arrow::buffer::ScalarBuffer::<i64>::new(
                    data.buffers()[0].clone(),
                    data.offset(),
                    data.len(),
                );
                rows.clone().for_each(|r| add(v[r] as u64));
            }
            _ => continue,
        }
        if seen.len() * 10 >= SAMPLE_VALUES * 9 {
            out.push(field.name().clone());
        }
    }
    out
}

fn properties_builder(
    sort: &[&str],
    schema_json: Option<&str>,
    settings: &FileSettings,
) -> Result<WriterPropertiesBuilder, parquet::errors::ParquetError> {
    let mut kv = vec![KeyValue::new("v2x.sorted_by".to_string(), sort.join(","))];
    if let Some(json) = schema_json {
        kv.push(KeyValue::new("v2x.schema".to_string(), json.to_string()));
    }
    let level = ZstdLevel::try_new(settings.zstd_level)?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(settings.row_group_rows))
        .set_key_value_metadata(Some(kv))
        .set_created_by(format!("v2x-collector {}", env!("CARGO_PKG_VERSION"))))
}

/// Renames a written temporary file to its final name (never over an existing file).
pub fn publish(t: &TmpFile) -> Result<(), CommitError> {
    let io = |step, source| CommitError::Io {
        step,
        path: t.tmp.clone(),
        source,
    };
    if t.path.exists() {
        return Err(io(
            "refusing to overwrite",
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                t.path.display().to_string(),
            ),
        ));
    }
    std::fs::rename(&t.tmp, &t.path).map_err(|e| io("renaming", e))
}

/// Writes a small file atomically (tmp, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// The directory a path is in; `.` for a bare file name (whose `parent()` is the empty path,
/// which cannot be opened to fsync it).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;

    /// Whether the file's `msg_uid` column chunk has a dictionary page.
    fn uid_has_dictionary(uids: Vec<&str>) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("source_id", DataType::Utf8, false),
            Field::new("msg_uid", DataType::Utf8, false),
        ]));
        let n = uids.len();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["rsu-1"; n])),
                Arc::new(StringArray::from(uids)),
            ],
        )
        .unwrap();
        let settings = FileSettings {
            row_group_rows: 1000,
            zstd_level: 1,
        };
        let done = commit(
            dir.path(),
            "f.parquet",
            &[batch],
            &["source_id"],
            None,
            &settings,
        )
        .unwrap();
        let file = File::open(&done.path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let meta = reader.metadata().row_group(0).column(1).clone();
        assert_eq!(meta.column_path().string(), "msg_uid");
        meta.dictionary_page_offset().is_some()
    }

    /// The sort by ranked strings and times orders rows exactly as arrow's lexsort does
    /// (ascending, nulls first), keeps ties in arrival order, and says when nothing moves.
    #[test]
    fn rows_are_sorted_by_source_then_time_as_lexsort_does() {
        use arrow::array::TimestampMicrosecondArray;
        use arrow::datatypes::TimeUnit;
        let n = 2_000u32;
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let sources = ["rsu-10", "rsu-2", "obu-a", "", "rsu-1"];
        let source: Vec<Option<&str>> = (0..n)
            .map(|_| match next(7) {
                6 => None,
                k => Some(sources[k as usize % sources.len()]),
            })
            .collect();
        // Few distinct times, so that ties are common.
        let time: Vec<Option<i64>> = (0..n)
            .map(|_| match next(9) {
                0 => None,
                _ => Some(next(40) as i64 - 20),
            })
            .collect();
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("source_id", DataType::Utf8, true),
            Field::new("event_ts", ts, true),
            Field::new("row", DataType::UInt32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(source)),
                Arc::new(TimestampMicrosecondArray::from(time).with_timezone("UTC")),
                Arc::new(UInt32Array::from_iter_values(0..n)),
            ],
        )
        .unwrap();
        let sort = ["source_id", "event_ts"];
        let ours = take_record_batch(&batch, &sort_order(&batch, &sort).unwrap().unwrap()).unwrap();
        let columns: Vec<SortColumn> = sort
            .iter()
            .map(|c| SortColumn {
                values: batch.column_by_name(c).unwrap().clone(),
                options: None,
            })
            .collect();
        let arrow =
            take_record_batch(&batch, &lexsort_to_indices(&columns, None).unwrap()).unwrap();
        // The same key sequence as arrow's...
        assert_eq!(ours.column(0), arrow.column(0));
        assert_eq!(ours.column(1), arrow.column(1));
        // ...with ties in arrival order.
        let row = ours
            .column(2)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        for i in 1..ours.num_rows() {
            let same = |c: usize| {
                let a = ours.column(c).slice(i - 1, 1);
                let b = ours.column(c).slice(i, 1);
                a == b
            };
            if same(0) && same(1) {
                assert!(
                    row.value(i - 1) < row.value(i),
                    "tie out of arrival order at {i}"
                );
            }
        }
        // Sorted input (by time alone, too) is left as it is.
        assert!(sort_order(&ours, &sort).unwrap().is_none());
        let by_time = ["event_ts"];
        let once =
            take_record_batch(&batch, &sort_order(&batch, &by_time).unwrap().unwrap()).unwrap();
        assert!(sort_order(&once, &by_time).unwrap().is_none());
        // A key of another type goes through lexsort.
        let by_row = ["row"];
        assert!(sort_order(&batch, &by_row).unwrap().is_none());
    }

    /// Columns whose values are nearly all different are written plain; repeating ones keep
    /// their dictionary, and small files are left as they are.
    #[test]
    fn dictionaries_only_for_columns_whose_values_repeat() {
        use arrow::array::{Float64Array, TimestampMicrosecondArray};
        use arrow::datatypes::TimeUnit;
        let dictionaries = |n: usize| {
            let dir = tempfile::tempdir().unwrap();
            let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            let schema = Arc::new(Schema::new(vec![
                Field::new("source_id", DataType::Utf8, false),
                Field::new("lat_deg", DataType::Float64, false),
                Field::new("recv_ts", ts, false),
                Field::new("lane", DataType::Int64, false),
                Field::new("name", DataType::Utf8, false),
            ]));
            let names: Vec<String> = (0..n).map(|i| format!("car-{i}")).collect();
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(vec!["rsu-1"; n])),
                    Arc::new(Float64Array::from_iter_values(
                        (0..n).map(|i| 39.9 + i as f64 * 1e-7),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            (0..n as i64).map(|i| 1_700_000_000_000_000 + i * 1_037),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 6))),
                    Arc::new(StringArray::from_iter_values(names)),
                ],
            )
            .unwrap();
            let settings = FileSettings {
                row_group_rows: 1 << 20,
                zstd_level: 1,
            };
            let done = commit(
                dir.path(),
                "f.parquet",
                &[batch],
                &["source_id", "recv_ts"],
                None,
                &settings,
            )
            .unwrap();
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(File::open(&done.path).unwrap()).unwrap();
            let rg = reader.metadata().row_group(0).clone();
            rg.columns()
                .iter()
                .map(|c| {
                    (
                        c.column_path().string(),
                        c.dictionary_page_offset().is_some(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let want = |flags: [bool; 5]| {
            ["source_id", "lat_deg", "recv_ts", "lane", "name"]
                .into_iter()
                .map(String::from)
                .zip(flags)
                .collect::<Vec<_>>()
        };
        assert_eq!(dictionaries(5_000), want([true, false, false, true, false]));
        assert_eq!(dictionaries(500), want([true; 5]));
    }

    #[test]
    fn message_ids_get_a_dictionary_only_when_rows_share_them() {
        // One row per message (`_messages`, a BSM): every id once, a dictionary only costs.
        assert!(!uid_has_dictionary(vec!["a1", "b2", "c3", "d4"]));
        // Exploded rows of one message sit together and share its id.
        assert!(uid_has_dictionary(vec!["a1", "a1", "a1", "b2", "b2"]));
    }

    #[test]
    fn commits_sorted_compressed_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("source_id", DataType::Utf8, false),
            Field::new("event_ts", DataType::Int64, false),
        ]));
        let batch = |s: Vec<&str>, t: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(s)),
                    Arc::new(Int64Array::from(t)),
                ],
            )
            .unwrap()
        };
        let batches = vec![
            batch(vec!["b", "a"], vec![2, 9]),
            batch(vec!["a", "b"], vec![1, 1]),
        ];
        let settings = FileSettings {
            row_group_rows: 1000,
            zstd_level: 1,
        };
        let done = commit(
            dir.path(),
            "c-1.parquet",
            &batches,
            &["source_id", "event_ts"],
            Some("{}"),
            &settings,
        )
        .unwrap();
        assert_eq!(done.rows, 4);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["c-1.parquet"]);
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(File::open(&done.path).unwrap()).unwrap();
        let meta = reader.metadata().clone();
        let got: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let got = concat_batches(&got[0].schema(), &got).unwrap();
        let ids: Vec<&str> = got
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let ts: Vec<i64> = got
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(ids, vec!["a", "a", "b", "b"]);
        assert_eq!(ts, vec![1, 9, 1, 2]);
        let col = meta.row_group(0).column(0);
        assert!(matches!(col.compression(), Compression::ZSTD(_)));
        assert!(col.statistics().is_some());
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|k| k.key == "v2x.schema"));
        // Refuses to overwrite an existing file.
        assert!(commit(dir.path(), "c-1.parquet", &batches, &[], None, &settings).is_err());
    }
}
