//! `query`: SQL over the dataset with DataFusion.
//!
//! Every kind with data is a table of its name (the quarantine table is `quarantine`), read
//! straight from the Parquet tree with the hive partition columns `date` (`YYYY-MM-DD`) and
//! `hour` (`HH`) as text. Filters on `date` and `hour` prune whole partitions. So do filters on
//! `event_ts`: the files of a partition hold exactly the rows whose event time falls in its
//! hour, so `event_ts >= T` implies `(date, hour) >= (date(T), hour(T))`, and each table adds
//! those implied partition filters to the scan. Within the remaining files DataFusion prunes
//! row groups by their statistics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use super::DatasetError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{0}")]
    Sql(#[from] DataFusionError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the result: {0}")]
    Encode(String),
    #[error("{0}")]
    Usage(String),
}

impl QueryError {
    /// 2 for a bad query or bad arguments, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            QueryError::Sql(e) => match e.find_root() {
                DataFusionError::SQL(..)
                | DataFusionError::Plan(_)
                | DataFusionError::SchemaError(..) => 2,
                _ => 1,
            },
            QueryError::Usage(_) => 2,
            QueryError::Dataset(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Output format of `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// A session with one table per kind that has data, from a local directory or an
/// `s3://bucket/prefix` (see [`super::remote`]).
pub async fn context(data: &Path) -> Result<SessionContext, QueryError> {
    let ctx = SessionContext::new_with_config(session_config().with_information_schema(true));
    if let Some(remote) = super::remote::Remote::parse(data)? {
        remote.register_with(&ctx);
        for table in remote.tables().await? {
            let name = match table.as_str() {
                super::QUARANTINE => "quarantine",
                super::MESSAGES => "messages",
                other => other,
            };
            register(&ctx, name, &remote.table_url(&table)).await?;
        }
        return Ok(ctx);
    }
    let data = data.canonicalize().map_err(|_| DatasetError::NoDataDir {
        path: data.to_owned(),
    })?;
    for kind in super::kinds(&data)? {
        if !super::files(&data, &kind)?.is_empty() {
            register(&ctx, &kind, &dir_url(&data.join(&kind))).await?;
        }
    }
    if !super::quarantine_files(&data)?.is_empty() {
        register(&ctx, "quarantine", &dir_url(&data.join(super::QUARANTINE))).await?;
    }
    if !super::message_files(&data)?.is_empty() {
        register(&ctx, "messages", &dir_url(&data.join(super::MESSAGES))).await?;
    }
    Ok(ctx)
}

/// Settings of every session over the dataset: file statistics collected for pruning.
pub(crate) fn session_config() -> SessionConfig {
    SessionConfig::new().with_collect_statistics(true)
}

/// The listing URL of a local table directory.
pub(crate) fn dir_url(dir: &Path) -> String {
    format!("{}/", dir.display())
}

/// Registers the table `name` over the Parquet files below `url` (a directory, with a
/// trailing `/`; local or in a registered object store).
pub(crate) async fn register(
    ctx: &SessionContext,
    name: &str,
    url: &str,
) -> Result<(), QueryError> {
    let url = ListingTableUrl::parse(url)?;
    // Strings as the files declare them (`Utf8`, not DataFusion's default `Utf8View`), so
    // exports keep the dataset's schema. (The session setting does not reach the format.)
    let format = ParquetFormat::default().with_force_view_types(false);
    let options = ListingOptions::new(Arc::new(format))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            ("date".to_string(), DataType::Utf8),
            ("hour".to_string(), DataType::Utf8),
        ]);
    let schema = options.infer_schema(&ctx.state(), &url).await?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)?;
    ctx.register_table(
        name,
        Arc::new(EventTimePruned {
            inner: Arc::new(table),
        }),
    )?;
    Ok(())
}

/// A kind's table that turns `event_ts` bounds into partition filters before the listing
/// table prunes its partitions.
#[derive(Debug)]
struct EventTimePruned {
    inner: Arc<ListingTable>,
}

#[async_trait]
impl TableProvider for EventTimePruned {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut all = filters.to_vec();
        all.extend(partition_filters(filters));
        self.inner.scan(state, projection, &all, limit).await
    }
}

/// Partition filters implied by the `event_ts` bounds among `filters`.
pub fn partition_filters(filters: &[Expr]) -> Vec<Expr> {
    let mut out = Vec::new();
    for f in filters {
        for e in split_conjunction(f) {
            for (bound, lower) in event_ts_bounds(e) {
                let (date, hour) = partition_of(bound);
                let (date_cmp, hour_cmp) = if lower {
                    (
                        col("date").gt(lit(date.clone())),
                        col("hour").gt_eq(lit(hour)),
                    )
                } else {
                    (
                        col("date").lt(lit(date.clone())),
                        col("hour").lt_eq(lit(hour)),
                    )
                };
                out.push(date_cmp.or(col("date").eq(lit(date)).and(hour_cmp)));
            }
        }
    }
    out
}

/// `(bound in microseconds, is_lower_bound)` of one comparison on `event_ts`.
fn event_ts_bounds(e: &Expr) -> Vec<(i64, bool)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (value, op) = match (is_event_ts(left), is_event_ts(right)) {
                (true, false) => (timestamp_us(right), *op),
                (false, true) => match op.swap() {
                    Some(op) => (timestamp_us(left), op),
                    None => return Vec::new(),
                },
                _ => return Vec::new(),
            };
            let Some(v) = value else {
                return Vec::new();
            };
            // Strict bounds exclude their own microsecond: `event_ts < 10:00` needs no file
            // of hour 10.
            match op {
                Operator::Gt => vec![(v.saturating_add(1), true)],
                Operator::GtEq => vec![(v, true)],
                Operator::Lt => vec![(v.saturating_sub(1), false)],
                Operator::LtEq => vec![(v, false)],
                Operator::Eq => vec![(v, true), (v, false)],
                _ => Vec::new(),
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_event_ts(expr) => {
            let mut out = Vec::new();
            if let Some(v) = timestamp_us(low) {
                out.push((v, true));
            }
            if let Some(v) = timestamp_us(high) {
                out.push((v, false));
            }
            out
        }
        _ => Vec::new(),
    }
}

fn is_event_ts(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == "event_ts",
        Expr::Cast(c) => is_event_ts(&c.expr),
        Expr::TryCast(c) => is_event_ts(&c.expr),
        _ => false,
    }
}

fn timestamp_us(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1_000_000),
            ScalarValue::TimestampMillisecond(Some(ms), _) => ms.checked_mul(1_000),
            ScalarValue::TimestampMicrosecond(Some(us), _) => Some(*us),
            ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000)),
            _ => None,
        },
        Expr::Cast(c) => timestamp_us(&c.expr),
        _ => None,
    }
}

/// The `(date, hour)` partition values of an event time.
fn partition_of(us: i64) -> (String, String) {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => (t.format("%Y-%m-%d").to_string(), t.format("%H").to_string()),
        // Out of chrono's range: compare against values that bound every partition.
        None if us < 0 => ("0000-00-00".into(), "00".into()),
        None => ("9999-99-99".into(), "99".into()),
    }
}

/// Runs `sql` and writes the result to `out` (stdout when `None`; Parquet needs a file).
pub async fn run(
    data: &Path,
    sql: &str,
    format: Format,
    out: Option<&Path>,
) -> Result<u64, QueryError> {
    if format == Format::Parquet && out.is_none() {
        return Err(QueryError::Usage(
            "--format parquet needs --out FILE".into(),
        ));
    }
    let ctx = context(data).await?;
    let df = match ctx.sql(sql).await {
        Ok(df) => df,
        Err(e) if e.to_string().contains("not found") => {
            let mut tables: Vec<String> = ctx
                .catalog("datafusion")
                .and_then(|c| c.schema("public"))
                .map(|s| s.table_names())
                .unwrap_or_default();
            tables.sort();
            return Err(QueryError::Usage(format!(
                "{e} (tables with data: {})",
                tables.join(", ")
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await?;
    let sink = Sink::open(format, out, schema, Vec::new())?;
    sink.drain(&mut stream, |_| {}).await
}

/// CSV has no lists: each list column (a lane's node positions, its connections) becomes text
/// holding the list as a JSON array (`[39.5953377,39.5953232]`, `["straight","left"]`, null
/// elements as `null`, a null list as an empty cell), which every CSV reader keeps in one cell.
fn lists_as_json_text(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
    use datafusion::arrow::datatypes::{Field, Float64Type, Int32Type, Int64Type, Schema};
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::List(_)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let DataType::List(item) = field.data_type() else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        };
        let list = column.as_list::<i32>();
        let mut text = StringBuilder::new();
        for i in 0..list.len() {
            if list.is_null(i) {
                text.append_null();
                continue;
            }
            let v = list.value(i);
            let items: Vec<serde_json::Value> = match item.data_type() {
                DataType::Float64 => v
                    .as_primitive::<Float64Type>()
                    .iter()
                    .map(|x| x.into())
                    .collect(),
                DataType::Int64 => v
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|x| x.into())
                    .collect(),
                DataType::Int32 => v
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|x| x.into())
                    .collect(),
                DataType::Utf8 => v.as_string::<i32>().iter().map(|x| x.into()).collect(),
                other => {
                    return Err(QueryError::Encode(format!(
                        "column {}: lists of {other} have no CSV form",
                        field.name()
                    )));
                }
            };
            text.append_value(serde_json::Value::Array(items).to_string());
        }
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(Arc::new(text.finish()));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(encode_err)
}

/// Where a result goes, batch by batch. A file is written under a temporary name (starting
/// with `.`) and renamed into place when complete, so a reader never sees half of it.
pub(crate) struct Sink {
    kind: SinkKind,
    /// (temporary, final) when writing a file.
    file: Option<(PathBuf, PathBuf)>,
}

enum SinkKind {
    Table(Vec<RecordBatch>, Box<dyn std::io::Write + Send>),
    Csv(datafusion::arrow::csv::Writer<Box<dyn std::io::Write + Send>>),
    Json(datafusion::arrow::json::LineDelimitedWriter<Box<dyn std::io::Write + Send>>),
    Parquet(parquet::arrow::ArrowWriter<std::fs::File>),
}

/// `dir/.name.tmp` for `dir/name`.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp"))
}

fn encode_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::Encode(e.to_string())
}

impl Sink {
    /// `out` None is standard output (not for Parquet). `metadata` goes into a Parquet
    /// file's key-value metadata.
    pub(crate) fn open(
        format: Format,
        out: Option<&Path>,
        schema: SchemaRef,
        metadata: Vec<parquet::file::metadata::KeyValue>,
    ) -> Result<Sink, QueryError> {
        let file = out.map(|p| (temp_name(p), p.to_owned()));
        let create = |p: &Path| {
            std::fs::File::create(p).map_err(|source| QueryError::Write {
                path: p.to_owned(),
                source,
            })
        };
        let writer = || -> Result<Box<dyn std::io::Write + Send>, QueryError> {
            Ok(match &file {
                Some((tmp, _)) => Box::new(std::io::BufWriter::new(create(tmp)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            })
        };
        let kind = match format {
            Format::Table => SinkKind::Table(Vec::new(), writer()?),
            Format::Csv => SinkKind::Csv(
                datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(writer()?),
            ),
            Format::Json => {
                SinkKind::Json(datafusion::arrow::json::LineDelimitedWriter::new(writer()?))
            }
            Format::Parquet => {
                let Some((tmp, _)) = &file else {
                    return Err(QueryError::Usage("Parquet output needs a file".into()));
                };
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(
                        parquet::basic::ZstdLevel::try_new(1).map_err(encode_err)?,
                    ))
                    .set_key_value_metadata((!metadata.is_empty()).then_some(metadata))
                    .build();
                let w = parquet::arrow::ArrowWriter::try_new(create(tmp)?, schema, Some(props))
                    .map_err(encode_err)?;
                SinkKind::Parquet(w)
            }
        };
        Ok(Sink { kind, file })
    }

    pub(crate) fn write(&mut self, batch: RecordBatch) -> Result<(), QueryError> {
        match &mut self.kind {
            SinkKind::Table(batches, _) => batches.push(batch),
            SinkKind::Csv(w) => w.write(&lists_as_json_text(&batch)?).map_err(encode_err)?,
            SinkKind::Json(w) => w.write(&batch).map_err(encode_err)?,
            SinkKind::Parquet(w) => w.write(&batch).map_err(encode_err)?,
        }
        Ok(())
    }

    /// Completes the output; a file is fsynced and renamed into place.
    pub(crate) fn finish(self) -> Result<(), QueryError> {
        let write_err = |p: &Path| {
            let p = p.to_owned();
            move |source| QueryError::Write { path: p, source }
        };
        match self.kind {
            SinkKind::Table(batches, mut out) => {
                let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(encode_err)?;
                writeln!(out, "{text}").map_err(encode_err)?;
                out.flush().map_err(encode_err)?;
            }
            SinkKind::Csv(w) => w.into_inner().flush().map_err(encode_err)?,
            SinkKind::Json(mut w) => {
                w.finish().map_err(encode_err)?;
                w.into_inner().flush().map_err(encode_err)?;
            }
            SinkKind::Parquet(w) => {
                w.into_inner().map_err(encode_err)?;
            }
        }
        if let Some((tmp, path)) = self.file {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(write_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
        }
        Ok(())
    }

    /// Writes every batch of `stream`, then completes the output; `each(rows_so_far)` runs
    /// after each batch. On an error the partial file is removed.
    pub(crate) async fn drain(
        mut self,
        stream: &mut datafusion::physical_plan::SendableRecordBatchStream,
        mut each: impl FnMut(u64),
    ) -> Result<u64, QueryError> {
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let written = batch.map_err(QueryError::from).and_then(|b| {
                rows += b.num_rows() as u64;
                self.write(b)
            });
            if let Err(e) = written {
                self.abandon();
                return Err(e);
            }
            each(rows);
        }
        self.finish()?;
        Ok(rows)
    }

    /// Removes a partial file after an error.
    pub(crate) fn abandon(self) {
        if let Some((tmp, _)) = self.file {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

use std::io::Write as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Expr {
        let us = crate::decode::time::parse_rfc3339_us(s).unwrap();
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn event_time_bounds_become_partition_filters() {
        let f = col("event_ts")
            .gt_eq(ts("2026-11-28T09:15:00Z"))
            .and(col("event_ts").lt(ts("2026-11-28T10:00:00Z")));
        let derived = partition_filters(&[f]);
        assert_eq!(derived.len(), 2);
        let text: Vec<String> = derived.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0].contains("2026-11-28") && text[0].contains("09"),
            "{text:?}"
        );
        // `< 10:00` ends in hour 09.
        assert!(
            text[1].contains("09") && !text[1].contains("10"),
            "{text:?}"
        );
        // Reversed operands and BETWEEN.
        let f = ts("2026-11-28T09:15:00Z").lt_eq(col("event_ts"));
        assert_eq!(partition_filters(&[f]).len(), 1);
        let f = col("event_ts").between(ts("2026-11-28T09:00:00Z"), ts("2026-11-28T09:30:00Z"));
        assert_eq!(partition_filters(&[f]).len(), 2);
        // Anything else implies nothing.
        assert!(partition_filters(&[col("speed_mps").gt(lit(3.0))]).is_empty());
        assert!(
            partition_filters(&[col("event_ts").not_eq(ts("2026-11-28T09:00:00Z"))]).is_empty()
        );
    }

    #[test]
    fn partitions_of_times() {
        assert_eq!(
            partition_of(crate::decode::time::parse_rfc3339_us("2026-01-02T03:04:05Z").unwrap()),
            ("2026-01-02".to_string(), "03".to_string())
        );
    }
}
