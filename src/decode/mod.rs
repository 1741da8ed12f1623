//! Decode: payload bytes -> typed rows in SI units with event times, straight into Arrow
//! builders, one set per (kind, event hour). Anything that cannot be filed becomes a
//! quarantine row with its reason; a message is filed whole or quarantined whole.

pub mod extract;
mod geo;
pub mod plan;
pub mod time;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder,
};
use arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType,
};
use arrow::record_batch::RecordBatch;

use crate::FastMap;
use crate::config::{TimeConfig, TimestampUnit};
use crate::quarantine::{QuarantineBuilder, Reason, Rejection};
use crate::route::{RouteError, Router, is_safe_identifier};
use crate::schema::{ColumnType, KindSchema, PositionComponent, SchemaError, TimeFormat};
use extract::{Records, Scalar};
use plan::{ColumnPlan, ColumnSource, Constant, Plan, PositionPlan, Slot};

pub const US_PER_HOUR: i64 = 3_600_000_000;

/// A kind's schema, compiled.
pub struct KindDecoder {
    pub schema: KindSchema,
    /// Index of the message-counter column and its modulo, when the schema declares one.
    sequence: Option<(usize, i64, Option<usize>)>,
    gaps: metrics::Counter,
    gap_messages: metrics::Counter,
    pub arrow: SchemaRef,
    /// Lower-case profile name -> plans (one, or one per part).
    profiles: FastMap<String, Vec<Plan>>,
    messages: metrics::Counter,
    rows: metrics::Counter,
    ignored_fields: metrics::Counter,
    /// Profiles with `detect` paths, in name order. The names live as long as the process
    /// (a handful per kind, leaked once when the schema is compiled).
    detectable: Vec<&'static str>,
}

impl KindDecoder {
    pub fn new(schema: KindSchema, unit: TimestampUnit) -> Result<KindDecoder, SchemaError> {
        let mut profiles = FastMap::default();
        for (name, p) in &schema.profiles {
            let parts: Vec<&str> = if p.parts.is_empty() {
                vec![name.as_str()]
            } else {
                p.parts.iter().map(String::as_str).collect()
            };
            let plans = parts
                .iter()
                .map(|part| plan::compile(&schema, part, &schema.profiles[*part]))
                .collect::<Result<Vec<_>, _>>()?;
            profiles.insert(name.clone(), plans);
        }
        let arrow = arrow_schema(&schema, unit);
        let kind = schema.kind.clone();
        let detectable = schema
            .profiles
            .iter()
            .filter(|(_, p)| !p.detect.is_empty())
            .map(|(name, _)| &*Box::leak(name.clone().into_boxed_str()))
            .collect();
        let sequence = schema.sequence.as_ref().and_then(|s| {
            let i = schema.columns.iter().position(|c| c.name == s.column)?;
            let per = s
                .per
                .as_ref()
                .and_then(|p| schema.columns.iter().position(|c| &c.name == p));
            Some((i, s.modulo, per))
        });
        Ok(KindDecoder {
            sequence,
            gaps: metrics::counter!("v2x_gaps_total", "kind" => kind.clone()),
            gap_messages: metrics::counter!("v2x_gap_messages_total", "kind" => kind.clone()),
            schema,
            arrow,
            profiles,
            messages: metrics::counter!("v2x_decode_messages_total", "kind" => kind.clone()),
            rows: metrics::counter!("v2x_decode_rows_total", "kind" => kind.clone()),
            ignored_fields: metrics::counter!("v2x_decode_ignored_fields_total", "kind" => kind),
            detectable,
        })
    }

    fn plans(&self, profile: &str) -> Option<&[Plan]> {
        let key: Cow<str> = if profile.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(profile.to_ascii_lowercase())
        } else {
            Cow::Borrowed(profile)
        };
        self.profiles.get(key.as_ref()).map(Vec::as_slice)
    }
}

fn ts_type(unit: TimestampUnit) -> DataType {
    match unit {
        TimestampUnit::Us => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        TimestampUnit::Ms => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

fn data_type(ty: ColumnType, unit: TimestampUnit) -> DataType {
    match ty {
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Timestamp => ts_type(unit),
        // The element field as arrow's ListBuilder makes it, so batches match the schema.
        list => DataType::List(Arc::new(Field::new(
            "item",
            data_type(list.item().unwrap_or(ColumnType::Utf8), unit),
            true,
        ))),
    }
}

/// The Arrow schema of a kind: the common columns, then the declared ones with their unit
/// and doc in the field metadata, and the whole schema file as JSON in the schema metadata.
pub fn arrow_schema(schema: &KindSchema, unit: TimestampUnit) -> SchemaRef {
    let mut fields = vec![
        Field::new("event_ts", ts_type(unit), false),
        Field::new("recv_ts", ts_type(unit), false),
        Field::new("source_id", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("profile", DataType::Utf8, false),
        Field::new("msg_uid", DataType::Utf8, false),
    ];
    for c in &schema.columns {
        let ty = data_type(c.ty, unit);
        let meta = HashMap::from([
            ("unit".to_string(), c.unit.clone()),
            ("doc".to_string(), c.doc.clone()),
        ]);
        fields.push(Field::new(&c.name, ty, c.nullable).with_metadata(meta));
    }
    let meta = HashMap::from([
        ("v2x.kind".to_string(), schema.kind.clone()),
        ("v2x.schema".to_string(), schema.to_json()),
    ]);
    Arc::new(Schema::new(fields).with_metadata(meta))
}

/// A converted value, waiting until the whole message is known to be good.
#[derive(Debug, Clone)]
enum Cell<'a> {
    Null,
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(Cow<'a, str>),
    /// A canonical enum name, shared with the plan.
    Name(Arc<str>),
    /// The elements of a list column.
    List(Vec<Cell<'a>>),
}

enum ColBuilder {
    F64(Float64Builder),
    I64(Int64Builder),
    I32(Int32Builder),
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Ts(Int64Builder),
    ListF64(ListBuilder<Float64Builder>),
    ListI64(ListBuilder<Int64Builder>),
    ListI32(ListBuilder<Int32Builder>),
    ListStr(ListBuilder<StringBuilder>),
}

impl ColBuilder {
    fn new(ty: ColumnType) -> ColBuilder {
        match ty {
            ColumnType::Float64 => ColBuilder::F64(Float64Builder::new()),
            ColumnType::Int64 => ColBuilder::I64(Int64Builder::new()),
            ColumnType::Int32 => ColBuilder::I32(Int32Builder::new()),
            ColumnType::Utf8 => ColBuilder::Str(StringBuilder::new()),
            ColumnType::Bool => ColBuilder::Bool(BooleanBuilder::new()),
            ColumnType::Timestamp => ColBuilder::Ts(Int64Builder::new()),
            ColumnType::ListFloat64 => ColBuilder::ListF64(ListBuilder::new(Float64Builder::new())),
            ColumnType::ListInt64 => ColBuilder::ListI64(ListBuilder::new(Int64Builder::new())),
            ColumnType::ListInt32 => ColBuilder::ListI32(ListBuilder::new(Int32Builder::new())),
            ColumnType::ListUtf8 => ColBuilder::ListStr(ListBuilder::new(StringBuilder::new())),
        }
    }

    /// Cells were converted for this column's type, so the pairing always fits.
    fn append(&mut self, cell: &Cell, unit: TimestampUnit) {
        match (self, cell) {
            (ColBuilder::F64(b), Cell::F64(v)) => b.append_value(*v),
            (ColBuilder::I64(b), Cell::I64(v)) => b.append_value(*v),
            (ColBuilder::I32(b), Cell::I64(v)) => b.append_value(*v as i32),
            (ColBuilder::Str(b), Cell::Str(v)) => b.append_value(v),
            (ColBuilder::Str(b), Cell::Name(v)) => b.append_value(v),
            (ColBuilder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (ColBuilder::Ts(b), Cell::I64(v)) => b.append_value(scale_ts(*v, unit)),
            (ColBuilder::ListF64(b), Cell::List(items)) => {
                for item in items {
                    match item {
                        Cell::F64(v) => b.values().append_value(*v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListI64(b), Cell::List(items)) => {
                for item in items {
                    match item {
                        Cell::I64(v) => b.values().append_value(*v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListI32(b), Cell::List(items)) => {
                for item in items {
                    match item {
                        Cell::I64(v) => b.values().append_value(*v as i32),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListStr(b), Cell::List(items)) => {
                for item in items {
                    match item {
                        Cell::Str(v) => b.values().append_value(v),
                        Cell::Name(v) => b.values().append_value(v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListF64(b), _) => b.append(false),
            (ColBuilder::ListI64(b), _) => b.append(false),
            (ColBuilder::ListI32(b), _) => b.append(false),
            (ColBuilder::ListStr(b), _) => b.append(false),
            (ColBuilder::F64(b), _) => b.append_null(),
            (ColBuilder::I64(b), _) | (ColBuilder::Ts(b), _) => b.append_null(),
            (ColBuilder::I32(b), _) => b.append_null(),
            (ColBuilder::Str(b), _) => b.append_null(),
            (ColBuilder::Bool(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self, unit: TimestampUnit) -> ArrayRef {
        match self {
            ColBuilder::F64(b) => Arc::new(b.finish()),
            ColBuilder::I64(b) => Arc::new(b.finish()),
            ColBuilder::I32(b) => Arc::new(b.finish()),
            ColBuilder::Str(b) => Arc::new(b.finish()),
            ColBuilder::Bool(b) => Arc::new(b.finish()),
            ColBuilder::Ts(b) => ts_array(b.finish(), unit),
            ColBuilder::ListF64(b) => Arc::new(b.finish()),
            ColBuilder::ListI64(b) => Arc::new(b.finish()),
            ColBuilder::ListI32(b) => Arc::new(b.finish()),
            ColBuilder::ListStr(b) => Arc::new(b.finish()),
        }
    }
}

fn scale_ts(us: i64, unit: TimestampUnit) -> i64 {
    match unit {
        TimestampUnit::Us => us,
        TimestampUnit::Ms => us.div_euclid(1000),
    }
}

fn ts_array(values: arrow::array::Int64Array, unit: TimestampUnit) -> ArrayRef {
    match unit {
        TimestampUnit::Us => Arc::new(
            values
                .reinterpret_cast::<TimestampMicrosecondType>()
                .with_timezone("UTC"),
        ),
        TimestampUnit::Ms => Arc::new(
            values
                .reinterpret_cast::<TimestampMillisecondType>()
                .with_timezone("UTC"),
        ),
    }
}

/// Builders for the rows of one kind and one event hour.
struct RowBuilders {
    event_ts: Int64Builder,
    recv_ts: Int64Builder,
    source_id: StringBuilder,
    topic: StringBuilder,
    profile: StringBuilder,
    msg_uid: StringBuilder,
    cols: Vec<ColBuilder>,
    rows: usize,
}

impl RowBuilders {
    fn new(schema: &KindSchema) -> RowBuilders {
        RowBuilders {
            event_ts: Int64Builder::new(),
            recv_ts: Int64Builder::new(),
            source_id: StringBuilder::new(),
            topic: StringBuilder::new(),
            profile: StringBuilder::new(),
            msg_uid: StringBuilder::new(),
            cols: schema
                .columns
                .iter()
                .map(|c| ColBuilder::new(c.ty))
                .collect(),
            rows: 0,
        }
    }

    fn finish(&mut self, arrow: &SchemaRef, unit: TimestampUnit) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            ts_array(self.event_ts.finish(), unit),
            ts_array(self.recv_ts.finish(), unit),
            Arc::new(self.source_id.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.profile.finish()),
            Arc::new(self.msg_uid.finish()),
        ];
        columns.extend(self.cols.iter_mut().map(|c| c.finish(unit)));
        self.rows = 0;
        RecordBatch::try_new(arrow.clone(), columns).expect("builders follow the kind's schema")
    }
}

/// One received message as the decoder sees it; `uid` is [`msg_uid_u128`] of topic and
/// payload, computed once by whoever first needs it.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub recv_us: i64,
    pub uid: u128,
}

impl<'a> Raw<'a> {
    pub fn new(topic: &'a str, payload: &'a [u8], recv_us: i64) -> Raw<'a> {
        Raw {
            topic,
            payload,
            recv_us,
            uid: msg_uid_u128(topic, payload),
        }
    }
}

/// Decoded rows ready for the writer: one table, one hour partition.
#[derive(Debug)]
pub struct Batch {
    /// Kind name, or `_quarantine`.
    pub table: Arc<str>,
    /// Start of the hour partition, microseconds since the epoch.
    pub hour_us: i64,
    pub batch: RecordBatch,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Filed as this many rows (0 for an empty list, such as an RSM seeing nobody).
    Filed {
        kind: usize,
        rows: usize,
    },
    Quarantined(Reason),
}

/// The plausibility window for event times.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    pub min_us: i64,
    pub max_future_us: i64,
    pub max_past_us: Option<i64>,
}

impl TimeWindow {
    pub fn from_config(t: &TimeConfig) -> Option<TimeWindow> {
        Some(TimeWindow {
            min_us: time::parse_rfc3339_us(&t.min_event_time)?,
            max_future_us: (t.max_future_skew_s * 1e6) as i64,
            max_past_us: t.max_past_skew_s.map(|s| (s * 1e6) as i64),
        })
    }

    fn check(&self, event_us: i64, recv_us: i64) -> Result<(), String> {
        if event_us < self.min_us {
            return Err(format!(
                "event time {} is before the earliest plausible time",
                fmt_us(event_us)
            ));
        }
        if event_us > recv_us + self.max_future_us {
            return Err(format!(
                "event time {} is more than {} s ahead of receive time {}",
                fmt_us(event_us),
                self.max_future_us / 1_000_000,
                fmt_us(recv_us)
            ));
        }
        if let Some(past) = self.max_past_us
            && event_us < recv_us - past
        {
            return Err(format!(
                "event time {} is more than {} s before receive time {}",
                fmt_us(event_us),
                past / 1_000_000,
                fmt_us(recv_us)
            ));
        }
        Ok(())
    }
}

pub fn fmt_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{us} us"))
}

/// Settings the decoder needs.
#[derive(Debug, Clone)]
pub struct DecodeSettings {
    pub max_payload_bytes: usize,
    pub quarantine_keep_bytes: usize,
    pub window: TimeWindow,
    pub unit: TimestampUnit,
}

/// Routes and decodes messages into per-(kind, hour) builders.
pub struct Decoder {
    router: Arc<Router>,
    /// What the topics seen lately routed to.
    route_cache: crate::route::RouteCache,
    kinds: Vec<KindDecoder>,
    kind_index: FastMap<String, usize>,
    settings: DecodeSettings,
    open: FastMap<(usize, i64), RowBuilders>,
    quarantine: FastMap<i64, QuarantineBuilder>,
    /// `_messages` rows per receive hour.
    index: FastMap<i64, crate::message_index::IndexBuilder>,
    quarantine_counters: HashMap<Reason, metrics::Counter>,
    lineage: Vec<u32>,
    pending_rows: usize,
    sequences: SequenceTracker,
    /// Message-counter jumps are reported (off for `reprocess`: a selection of old messages
    /// is no stream, its jumps are no loss).
    track_gaps: bool,
    activity: crate::status::Activity,
}

/// Per (kind, source): the last message counter, and the gaps seen.
#[derive(Debug, Default)]
pub struct SequenceTracker {
    /// Per kind index: source -> last counter (looked up by `&str`: no allocation per message).
    last: Vec<FastMap<Box<str>, i64>>,
    tracked: usize,
    /// Gap events and messages missed, per (kind, source).
    pub gaps: HashMap<(usize, String), (u64, u64)>,
    pub total_missed: u64,
}

/// Sources tracked at most (a flood of invented source ids cannot grow memory without bound).
const MAX_TRACKED_SOURCES: usize = 100_000;

impl SequenceTracker {
    /// Returns how many messages were missed before this one (0 when in order or repeated).
    fn observe(&mut self, kind: usize, source: &str, value: i64, modulo: i64) -> u64 {
        let value = value.rem_euclid(modulo);
        if self.last.len() <= kind {
            self.last.resize_with(kind + 1, FastMap::default);
        }
        let last = &mut self.last[kind];
        let missed = match last.get_mut(source) {
            None => {
                if self.tracked < MAX_TRACKED_SOURCES {
                    self.tracked += 1;
                    last.insert(source.into(), value);
                }
                return 0;
            }
            Some(last) => {
                let previous = std::mem::replace(last, value);
                if value == previous {
                    return 0;
                }
                ((value - previous - 1).rem_euclid(modulo)) as u64
            }
        };
        if missed > 0 {
            let g = self.gaps.entry((kind, source.to_string())).or_default();
            g.0 += 1;
            g.1 += missed;
            self.total_missed += missed;
        }
        missed
    }
}

struct Staged<'a> {
    source_id: Cow<'a, str>,
    profile: &'a str,
    events: Vec<i64>,
    cells: Vec<Cell<'a>>,
}

impl Decoder {
    pub fn new(
        router: Router,
        schemas: Vec<KindSchema>,
        settings: DecodeSettings,
    ) -> Result<Decoder, SchemaError> {
        let kinds = schemas
            .into_iter()
            .map(|s| KindDecoder::new(s, settings.unit))
            .collect::<Result<Vec<_>, _>>()?;
        let kind_index = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (k.schema.kind.clone(), i))
            .collect();
        let quarantine_counters = Reason::ALL
            .iter()
            .map(|r| {
                (
                    *r,
                    metrics::counter!("v2x_quarantine_messages_total", "reason" => r.as_str()),
                )
            })
            .collect();
        let activity = crate::status::Activity::new(kinds.len());
        Ok(Decoder {
            activity,
            router: Arc::new(router),
            route_cache: Default::default(),
            kinds,
            kind_index,
            settings,
            open: FastMap::default(),
            quarantine: FastMap::default(),
            index: FastMap::default(),
            quarantine_counters,
            lineage: Vec::new(),
            pending_rows: 0,
            sequences: SequenceTracker::default(),
            track_gaps: true,
        })
    }

    /// Turns the reporting of message-counter jumps on (the default) or off.
    pub fn set_gap_tracking(&mut self, on: bool) {
        self.track_gaps = on;
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn kinds(&self) -> &[KindDecoder] {
        &self.kinds
    }

    /// Messages per kind and per source, and recent quarantine examples.
    pub fn activity(&self) -> &crate::status::Activity {
        &self.activity
    }

    /// Rows (and quarantine rows) waiting in builders.
    pub fn pending_rows(&self) -> usize {
        self.pending_rows
    }

    /// Routes, decodes and buffers one message.
    pub fn decode(&mut self, topic: &str, payload: &[u8], recv_us: i64) -> Outcome {
        self.decode_raw(&Raw::new(topic, payload, recv_us))
    }

    /// As [`Decoder::decode`], for a caller that already has the message's id.
    pub fn decode_raw(&mut self, m: &Raw) -> Outcome {
        if m.payload.len() > self.settings.max_payload_bytes {
            let r = Rejection::new(
                Reason::TooLarge,
                format!(
                    "payload of {} bytes exceeds decode.max_payload_bytes = {}",
                    m.payload.len(),
                    self.settings.max_payload_bytes
                ),
            );
            return self.reject(m, None, None, r);
        }
        let router = Arc::clone(&self.router);
        let route = match router.route_cached(m.topic, &mut self.route_cache) {
            Ok(route) => route,
            Err(RouteError::NoMatch) => {
                let r = Rejection::new(Reason::UnknownTopic, "topic matches no route template");
                return self.reject(m, None, None, r);
            }
            Err(RouteError::UnsafeSourceId) => {
                let r = Rejection::new(
                    Reason::InvalidSourceId,
                    "the source id segment of the topic is not a safe identifier",
                );
                return self.reject(m, None, None, r);
            }
        };
        match self.kind_index.get(route.kind).copied() {
            Some(k) => self.decode_with(
                k,
                route.profile,
                !route.profile_named,
                route.fallback_kinds,
                route.source_id,
                m,
            ),
            None => {
                let r = Rejection::new(
                    Reason::UnknownKind,
                    format!("no schema for kind {:?}", route.kind),
                );
                self.reject(m, None, None, r)
            }
        }
    }

    /// Decodes a message as a given kind and profile (used by `decode` and `schema check`).
    pub fn decode_as(
        &mut self,
        kind: usize,
        profile: &str,
        topic_source: Option<&str>,
        m: &Raw,
    ) -> Outcome {
        self.decode_with(kind, profile, false, &[], topic_source, m)
    }

    /// As [`Decoder::decode_as`] for a profile nobody named (the route's default): when it
    /// cannot decode the message, a profile of the kind whose `detect` paths are all present
    /// gets it instead.
    pub fn decode_detecting(
        &mut self,
        kind: usize,
        profile: &str,
        topic_source: Option<&str>,
        m: &Raw,
    ) -> Outcome {
        self.decode_with(kind, profile, true, &[], topic_source, m)
    }

    fn decode_with(
        &mut self,
        kind: usize,
        profile: &str,
        detect: bool,
        fallback_kinds: &[String],
        topic_source: Option<&str>,
        m: &Raw,
    ) -> Outcome {
        let mut kind = kind;
        let body = m.payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(m.payload);
        let repaired: String;
        let mut body = body;
        let mut staged = self.stage(kind, profile, topic_source, body, m.recv_us);
        if let Err(r) = &staged
            && r.reason == Reason::InvalidJson
            && std::str::from_utf8(body).is_err()
        {
            // GB2312-era text that is not UTF-8: keep the message, replace the bad bytes.
            repaired = String::from_utf8_lossy(body).into_owned();
            body = repaired.as_bytes();
            staged = self.stage(kind, profile, topic_source, body, m.recv_us);
        }
        if detect
            && let Err(r) = &staged
            && r.reason != Reason::InvalidJson
            && let Some(other) = self.detect_profile(kind, profile, body)
        {
            staged = self.stage(kind, other, topic_source, body, m.recv_us);
        }
        // Another kind that the route says may arrive here, when its shape is detected.
        if let Err(r) = &staged
            && r.reason != Reason::InvalidJson
        {
            let other = fallback_kinds.iter().find_map(|name| {
                let k = *self.kind_index.get(name)?;
                Some((k, self.detect_profile(k, "", body)?))
            });
            if let Some((k, p)) = other
                && let Ok(s) = self.stage(k, p, topic_source, body, m.recv_us)
            {
                kind = k;
                staged = Ok(s);
            }
        }
        match staged {
            Err(r) => self.reject(m, Some(kind), topic_source, r),
            Ok(staged) => {
                let rows = staged.events.len();
                let newest = staged.events.iter().max().copied();
                let uid_hex = hex128(m.uid);
                let uid = std::str::from_utf8(&uid_hex).unwrap_or_default();
                let hour = m.recv_us.div_euclid(US_PER_HOUR) * US_PER_HOUR;
                self.index
                    .entry(hour)
                    .or_default()
                    .push(&crate::message_index::Indexed {
                        recv_us: m.recv_us,
                        event_us: newest,
                        kind: &self.kinds[kind].schema.kind,
                        source_id: &staged.source_id,
                        topic: m.topic,
                        profile: staged.profile,
                        rows,
                        payload_bytes: m.payload.len(),
                        msg_uid: uid,
                    });
                self.pending_rows += 1;
                self.activity
                    .filed(kind, &staged.source_id, rows, newest, m.recv_us);
                self.track_sequence(kind, &staged);
                self.append(kind, m, uid, staged);
                let k = &self.kinds[kind];
                k.messages.increment(1);
                k.rows.increment(rows as u64);
                Outcome::Filed { kind, rows }
            }
        }
    }

    /// The first profile (other than `tried`) whose `detect` paths are all present in `body`.
    fn detect_profile(&self, kind: usize, tried: &str, body: &[u8]) -> Option<&'static str> {
        let k = &self.kinds[kind];
        k.detectable.iter().find_map(|name| {
            if name.eq_ignore_ascii_case(tried) {
                return None;
            }
            let plan = k.plans(name)?.first()?;
            let records = extract::extract(plan, body).ok()?;
            let all = plan
                .detect
                .iter()
                .all(|s| !matches!(records.get(*s, &[0]), Scalar::Null));
            all.then_some(*name)
        })
    }

    /// Message-counter jumps per source become a metric and a log line.
    fn track_sequence(&mut self, kind: usize, s: &Staged) {
        let Some((col, modulo, per)) = self.kinds[kind].sequence else {
            return;
        };
        if !self.track_gaps {
            return;
        }
        let ncols = self.kinds[kind].schema.columns.len();
        if s.events.is_empty() || ncols == 0 {
            return;
        }
        let Some(Cell::I64(v)) = s.cells.get(col) else {
            return;
        };
        // The counter's owner: the source, or the source and the device it relays for.
        let owner: Cow<str> = match per.and_then(|p| s.cells.get(p)) {
            Some(Cell::Str(id)) => Cow::Owned(format!("{}/{id}", s.source_id)),
            Some(Cell::I64(id)) => Cow::Owned(format!("{}/{id}", s.source_id)),
            _ => Cow::Borrowed(&s.source_id),
        };
        let missed = self.sequences.observe(kind, &owner, *v, modulo);
        if missed > 0 {
            self.activity.gap(&s.source_id);
            let k = &self.kinds[kind];
            k.gaps.increment(1);
            k.gap_messages.increment(missed);
            let _span =
                tracing::info_span!("message", kind = %k.schema.kind, source_id = %s.source_id)
                    .entered();
            tracing::warn!(
                missed,
                counter = *v,
                "message counter jumped: messages lost upstream"
            );
        }
    }

    /// Gaps seen so far: (kind, source) -> (gap events, messages missed).
    pub fn sequence_gaps(&self) -> &SequenceTracker {
        &self.sequences
    }

    fn reject(
        &mut self,
        m: &Raw,
        kind: Option<usize>,
        source: Option<&str>,
        r: Rejection,
    ) -> Outcome {
        if let Some(c) = self.quarantine_counters.get(&r.reason) {
            c.increment(1);
        }
        self.activity
            .quarantined(kind, source, m, r.reason, &r.detail);
        let kind = kind.map(|k| self.kinds[k].schema.kind.as_str());
        if tracing::enabled!(tracing::Level::DEBUG) {
            let _span = tracing::debug_span!(
                "message",
                kind = kind.unwrap_or("-"),
                source_id = source.unwrap_or("-")
            )
            .entered();
            tracing::debug!(topic = %m.topic.escape_debug(), reason = %r.reason, error = %r.detail, "quarantined");
        }
        let hour = m.recv_us.div_euclid(US_PER_HOUR) * US_PER_HOUR;
        let uid_hex = hex128(m.uid);
        let m = crate::quarantine::Quarantined {
            recv_us: m.recv_us,
            topic: m.topic,
            kind,
            payload: m.payload,
            msg_uid: std::str::from_utf8(&uid_hex).unwrap_or_default(),
        };
        self.quarantine
            .entry(hour)
            .or_default()
            .push(&m, self.settings.quarantine_keep_bytes, &r);
        self.pending_rows += 1;
        Outcome::Quarantined(r.reason)
    }

    /// Parses and converts every row of a message without touching the builders.
    fn stage<'a>(
        &mut self,
        kind: usize,
        profile: &'a str,
        topic_source: Option<&'a str>,
        body: &'a [u8],
        recv_us: i64,
    ) -> Result<Staged<'a>, Rejection> {
        let k = &self.kinds[kind];
        let plans = k.plans(profile).ok_or_else(|| {
            Rejection::new(
                Reason::UnknownProfile,
                format!(
                    "kind {} has no payload profile {:?} (known: {})",
                    k.schema.kind,
                    profile,
                    k.schema
                        .profiles
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let ncols = k.schema.columns.len();
        let mut staged = Staged {
            source_id: Cow::Borrowed(topic_source.unwrap_or("")),
            profile,
            events: Vec::new(),
            cells: Vec::new(),
        };
        let mut any_rows_list = false;
        for plan in plans {
            let records = extract::extract(plan, body).map_err(|e| {
                let reason = match e.classify() {
                    serde_json::error::Category::Data => Reason::TypeMismatch,
                    _ => Reason::InvalidJson,
                };
                Rejection::new(reason, e.to_string())
            })?;
            if let Some(e) = &records.error {
                return Err(Rejection::new(Reason::TypeMismatch, e.clone()));
            }
            any_rows_list |= plan.row_level == 0 || records.rows_list_seen;
            // Sized once: growing cell by cell cost more than any one column's conversion.
            staged.events.reserve(records.row_count());
            staged.cells.reserve(records.row_count() * ncols);
            if records.ignored_fields > 0 {
                k.ignored_fields.increment(records.ignored_fields);
            }
            let window = &self.settings.window;
            for row in 0..records.row_count() {
                records.lineage(row, &mut self.lineage);
                let lineage = &self.lineage;
                if topic_source.is_none() && staged.source_id.is_empty() {
                    staged.source_id = source_from_payload(plan, &records, lineage)?;
                }
                let event = event_time(plan, &records, lineage, recv_us)?;
                window
                    .check(event, recv_us)
                    .map_err(|e| Rejection::new(Reason::ImplausibleTime, e))?;
                staged.events.push(event);
                let at = At::Row(lineage);
                for col in &plan.columns {
                    let cell = convert(col, plan, &records, at, recv_us, event)?;
                    staged.cells.push(cell);
                }
                debug_assert_eq!(staged.cells.len(), staged.events.len() * ncols);
            }
            if topic_source.is_none() && staged.source_id.is_empty() && records.row_count() == 0 {
                records.lineage(0, &mut self.lineage);
                staged.source_id = source_from_payload(plan, &records, &self.lineage)?;
            }
        }
        if !any_rows_list {
            // An empty list is data ("nobody seen"); no list at all is the wrong shape.
            return Err(Rejection::new(
                Reason::MissingField,
                format!("the list that explodes into rows is absent (profile {profile})"),
            ));
        }
        if staged.source_id.is_empty() {
            return Err(Rejection::new(
                Reason::MissingSourceId,
                "neither the topic nor the payload gives a source id",
            ));
        }
        Ok(staged)
    }

    fn append(&mut self, kind: usize, m: &Raw, uid: &str, s: Staged) {
        let (topic, recv_us) = (m.topic, m.recv_us);
        let k = &self.kinds[kind];
        let ncols = k.schema.columns.len();
        let unit = self.settings.unit;
        for (row, &event) in s.events.iter().enumerate() {
            let hour = event.div_euclid(US_PER_HOUR) * US_PER_HOUR;
            let b = self
                .open
                .entry((kind, hour))
                .or_insert_with(|| RowBuilders::new(&k.schema));
            b.event_ts.append_value(scale_ts(event, unit));
            b.recv_ts.append_value(scale_ts(recv_us, unit));
            b.source_id.append_value(&s.source_id);
            b.topic.append_value(topic);
            b.profile.append_value(s.profile);
            b.msg_uid.append_value(uid);
            for (c, cell) in b
                .cols
                .iter_mut()
                .zip(&s.cells[row * ncols..(row + 1) * ncols])
            {
                c.append(cell, unit);
            }
            b.rows += 1;
        }
        self.pending_rows += s.events.len();
    }

    /// Finishes every builder into batches for the writer.
    pub fn take_batches(&mut self) -> Vec<Batch> {
        let mut out = Vec::with_capacity(self.open.len() + self.quarantine.len());
        for ((kind, hour), mut b) in self.open.drain() {
            if b.rows == 0 {
                continue;
            }
            let k = &self.kinds[kind];
            out.push(Batch {
                table: Arc::from(k.schema.kind.as_str()),
                hour_us: hour,
                batch: b.finish(&k.arrow, self.settings.unit),
            });
        }
        for (hour, mut ix) in self.index.drain() {
            if ix.is_empty() {
                continue;
            }
            out.push(Batch {
                table: Arc::from(crate::message_index::TABLE),
                hour_us: hour,
                batch: ix.finish(),
            });
        }
        for (hour, mut q) in self.quarantine.drain() {
            if q.is_empty() {
                continue;
            }
            out.push(Batch {
                table: Arc::from(crate::quarantine::TABLE),
                hour_us: hour,
                batch: q.finish(),
            });
        }
        self.pending_rows = 0;
        out
    }
}

/// A 128-bit hash of topic and payload, as 32 hex characters: the same delivery always gets
/// the same id, two different payloads practically never do.
pub fn msg_uid(topic: &str, payload: &[u8]) -> String {
    String::from_utf8_lossy(&hex128(msg_uid_u128(topic, payload))).into_owned()
}

/// The 128-bit value behind [`msg_uid`].
pub fn msg_uid_u128(topic: &str, payload: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(topic.as_bytes());
    h.update(&[0]);
    h.update(payload);
    h.digest128()
}

/// 32 lower-case hex digits, without allocating.
fn hex128(v: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        let nibble = ((v >> (124 - 4 * i)) & 0xf) as u8;
        *b = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    out
}

fn source_from_payload<'a>(
    plan: &Plan,
    records: &Records<'_>,
    lineage: &[u32],
) -> Result<Cow<'a, str>, Rejection> {
    for slot in &plan.source_id {
        let text = match records.get(*slot, lineage) {
            Scalar::Str(s) => s.to_string(),
            Scalar::I64(v) => v.to_string(),
            Scalar::U64(v) => v.to_string(),
            _ => continue,
        };
        if text.is_empty() {
            continue;
        }
        if !is_safe_identifier(&text) {
            return Err(Rejection::new(
                Reason::InvalidSourceId,
                "the payload's source id is not a safe identifier",
            ));
        }
        return Ok(Cow::Owned(text));
    }
    Ok(Cow::Borrowed(""))
}

fn event_time(
    plan: &Plan,
    records: &Records<'_>,
    lineage: &[u32],
    recv_us: i64,
) -> Result<i64, Rejection> {
    let mut problems = Vec::new();
    for t in &plan.event_time {
        let v = records.get(t.slot, lineage);
        if *v == Scalar::Null {
            continue;
        }
        // The time the minute (hour, year) is chosen nearest to.
        let reference = match t.anchor {
            None => recv_us,
            Some(a) => match anchor_us(records.get(a, lineage)) {
                Some(us) => us,
                None => {
                    problems.push(format!("{:?} has no anchor time", t.format));
                    continue;
                }
            },
        };
        let found = match &t.parts {
            Some(parts) => date_time_parts_us(parts, records, lineage),
            None => {
                let moy = t.moy.and_then(|m| as_i64(records.get(m, lineage)));
                time_value(v, t.format, moy, reference)
            }
        };
        match found {
            Some(us) => return Ok(us),
            None => problems.push(format!("{v:?} is not a valid {:?} time", t.format)),
        }
    }
    if plan.event_time_fallback_recv {
        return Ok(recv_us);
    }
    let detail = if problems.is_empty() {
        "no event-time field present".to_string()
    } else {
        problems.join("; ")
    };
    Err(Rejection::new(Reason::MissingEventTime, detail))
}

fn anchor_us(v: &Scalar<'_>) -> Option<i64> {
    match v {
        Scalar::Str(s) => time::parse_text_auto_us(s),
        Scalar::Null | Scalar::Object | Scalar::Array | Scalar::Bool(_) => None,
        other => time::epoch_auto_us(as_f64(other)?),
    }
}

/// `DDateTime`: year, month, day, hour, minute and second (milliseconds within the minute)
/// are required; `offset` (minutes east of UTC) is optional.
fn date_time_parts_us(parts: &[Slot; 7], records: &Records<'_>, lineage: &[u32]) -> Option<i64> {
    let get = |i: usize| as_i64(records.get(parts[i], lineage));
    let (year, month, day) = (get(0)?, get(1)?, get(2)?);
    let (hour, minute, ms) = (get(3)?, get(4)?, get(5)?);
    let offset_min = get(6).unwrap_or(0);
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )?;
    if !(0..24).contains(&hour) || !(0..60).contains(&minute) || !(0..61_000).contains(&ms) {
        return None;
    }
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    Some(
        midnight + hour * 3_600_000_000 + minute * 60_000_000 + ms * 1_000
            - offset_min * 60_000_000,
    )
}

fn time_value(v: &Scalar<'_>, format: TimeFormat, moy: Option<i64>, recv_us: i64) -> Option<i64> {
    match format {
        TimeFormat::Auto => match v {
            Scalar::Str(s) => time::parse_text_auto_us(s),
            other => time::epoch_auto_us(as_f64(other)?),
        },
        TimeFormat::EpochMs => time::epoch_ms_us(as_f64(v)?),
        TimeFormat::EpochS => time::epoch_s_us(as_f64(v)?),
        TimeFormat::Rfc3339 => match v {
            Scalar::Str(s) => time::parse_rfc3339_us(s),
            _ => None,
        },
        TimeFormat::BeijingLocal => match v {
            Scalar::Str(s) => time::parse_beijing_local_us(s),
            _ => None,
        },
        TimeFormat::SecMark => {
            let sec_mark = as_i64(v)?;
            match moy {
                Some(m) => time::moy_sec_mark_us(m, sec_mark, recv_us)
                    .or_else(|| time::sec_mark_us(sec_mark, recv_us)),
                None => time::sec_mark_us(sec_mark, recv_us),
            }
        }
        TimeFormat::TimeMark => time::time_mark_us(as_i64(v)?, recv_us),
        // Read from its parts by the caller; a lone value is not one.
        TimeFormat::DateTimeParts => None,
    }
}

fn as_f64(v: &Scalar<'_>) -> Option<f64> {
    match v {
        Scalar::I64(i) => Some(*i as f64),
        Scalar::U64(u) => Some(*u as f64),
        Scalar::F64(f) => Some(*f),
        Scalar::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn as_i64(v: &Scalar<'_>) -> Option<i64> {
    match v {
        Scalar::I64(i) => Some(*i),
        Scalar::U64(u) => i64::try_from(*u).ok(),
        Scalar::F64(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(*f as i64),
        Scalar::Str(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| as_i64(&Scalar::F64(s.parse::<f64>().ok()?)))
        }
        _ => None,
    }
}

/// Where a value is read: for a row (its lineage on the rows path), or in one record of a
/// list beyond the rows.
#[derive(Clone, Copy)]
enum At<'l> {
    Row(&'l [u32]),
    Record(usize),
}

fn value_at<'r, 'de>(records: &'r Records<'de>, slot: Slot, at: At<'_>) -> &'r Scalar<'de> {
    match at {
        At::Row(lineage) => records.get(slot, lineage),
        At::Record(r) => records.get_at(slot, r),
    }
}

fn first_present<'r, 'de>(
    records: &'r Records<'de>,
    slots: &[Slot],
    at: At<'_>,
) -> &'r Scalar<'de> {
    slots
        .iter()
        .map(|s| value_at(records, *s, at))
        .find(|v| **v != Scalar::Null)
        .unwrap_or(&Scalar::Null)
}

/// Converts one column's value for a row into its declared type and unit.
fn convert<'de>(
    col: &ColumnPlan,
    plan: &Plan,
    records: &Records<'de>,
    at: At<'_>,
    recv_us: i64,
    event_us: i64,
) -> Result<Cell<'de>, Rejection> {
    let lineage = match at {
        At::Row(l) => l,
        At::Record(_) => &[][..],
    };
    match &col.source {
        ColumnSource::Absent => null_or_missing(col),
        ColumnSource::Const(c) => Ok(match c {
            Constant::Null => Cell::Null,
            Constant::Bool(b) => Cell::Bool(*b),
            Constant::Int(i) => Cell::I64(*i),
            Constant::Float(f) => Cell::F64(*f),
            Constant::Str(s) => Cell::Str(Cow::Owned(s.clone())),
        }),
        ColumnSource::Position { index, component } => position_cell(
            col,
            &plan.positions[*index],
            *component,
            records,
            lineage,
            recv_us,
        ),
        ColumnSource::Flags {
            object,
            flags,
            choice,
        } => {
            let names = |at: At<'_>| flag_names(records, *object, flags, *choice, at);
            named_cell(col, records, level_and(col, lineage), at, &names)
        }
        ColumnSource::Bits { slots, names } => {
            let names = |at: At<'_>| bit_names(col, records, slots, names, at);
            named_cell(col, records, level_and(col, lineage), at, &names)
        }
        ColumnSource::Slots(slots) => match col.collect {
            Some(level) => {
                if !list_present(records, level, lineage) {
                    return null_or_missing(col);
                }
                let item_ty = col.ty.item().unwrap_or(ColumnType::Utf8);
                let mut items = Vec::new();
                for r in records.elements(level, lineage) {
                    let raw = first_present(records, slots, At::Record(r));
                    items.push(scalar_cell(col, item_ty, raw, recv_us, event_us, true)?);
                }
                Ok(Cell::List(items))
            }
            None => {
                let raw = first_present(records, slots, at);
                scalar_cell(col, col.ty, raw, recv_us, event_us, col.nullable)
            }
        },
    }
}

/// Whether the list of `level` was present (possibly empty) for this row.
fn list_present(records: &Records<'_>, level: u8, lineage: &[u32]) -> bool {
    !records.elements(level, lineage).is_empty() || records.list_seen(level, lineage)
}

/// The collect level of a list column with the row's lineage, if it has one.
fn level_and<'l>(col: &ColumnPlan, lineage: &'l [u32]) -> Option<(u8, &'l [u32])> {
    col.collect.map(|level| (level, lineage))
}

/// The names set at a row or list element (`None`: the value is absent).
type NamesAt<'f> = dyn Fn(At<'_>) -> Result<Option<Vec<Arc<str>>>, Rejection> + 'f;

/// A column of names (flags, a choice, bits): a list of names, their join, or one join per
/// element of a list.
fn named_cell<'de>(
    col: &ColumnPlan,
    records: &Records<'de>,
    collect: Option<(u8, &[u32])>,
    at: At<'_>,
    names: &NamesAt,
) -> Result<Cell<'de>, Rejection> {
    match collect {
        Some((level, lineage)) => {
            if !list_present(records, level, lineage) {
                return null_or_missing(col);
            }
            let mut items = Vec::new();
            for r in records.elements(level, lineage) {
                items.push(match names(At::Record(r))? {
                    Some(n) => Cell::Str(Cow::Owned(join_names(&n))),
                    None => Cell::Null,
                });
            }
            Ok(Cell::List(items))
        }
        None => match names(at)? {
            None => null_or_missing(col),
            Some(n) if col.ty.is_list() => Ok(Cell::List(n.into_iter().map(Cell::Name).collect())),
            Some(n) => Ok(Cell::Str(Cow::Owned(join_names(&n)))),
        },
    }
}

fn join_names(names: &[Arc<str>]) -> String {
    let v: Vec<&str> = names.iter().map(|n| &**n).collect();
    v.join("|")
}

/// Names of the set flags of the object (or of its first present alternative, for a
/// choice), or `None` when the object is absent.
fn flag_names(
    records: &Records<'_>,
    object: Slot,
    flags: &[(Arc<str>, Slot)],
    choice: bool,
    at: At<'_>,
) -> Result<Option<Vec<Arc<str>>>, Rejection> {
    if matches!(value_at(records, object, at), Scalar::Null) {
        return Ok(None);
    }
    if choice {
        return Ok(Some(
            flags
                .iter()
                .find(|(_, slot)| !matches!(value_at(records, *slot, at), Scalar::Null))
                .map(|(name, _)| vec![name.clone()])
                .unwrap_or_default(),
        ));
    }
    let set = |v: &Scalar<'_>| match v {
        Scalar::Bool(b) => *b,
        Scalar::I64(i) => *i != 0,
        Scalar::U64(u) => *u != 0,
        Scalar::F64(f) => *f != 0.0,
        Scalar::Str(s) => s.eq_ignore_ascii_case("true") || s.as_ref() == "1",
        Scalar::Object | Scalar::Array => true,
        Scalar::Null => false,
    };
    Ok(Some(
        flags
            .iter()
            .filter(|(_, slot)| set(value_at(records, *slot, at)))
            .map(|(name, _)| name.clone())
            .collect(),
    ))
}

/// Names of the set bits of a bit string sent as `0`/`1` text (leftmost is bit 0).
fn bit_names(
    col: &ColumnPlan,
    records: &Records<'_>,
    slots: &[Slot],
    names: &[Arc<str>],
    at: At<'_>,
) -> Result<Option<Vec<Arc<str>>>, Rejection> {
    let raw = first_present(records, slots, at);
    let text = match raw {
        Scalar::Null => return Ok(None),
        Scalar::Str(s) => s.trim(),
        other => {
            return Err(Rejection::new(
                Reason::TypeMismatch,
                format!(
                    "column {}: expected a bit string of 0 and 1, found {} {other:?}",
                    col.name,
                    other.type_name()
                ),
            ));
        }
    };
    let digits = text.strip_prefix(['B', 'b']).unwrap_or(text);
    if !digits.bytes().all(|b| b == b'0' || b == b'1') {
        return Err(Rejection::new(
            Reason::TypeMismatch,
            format!(
                "column {}: {text:?} is not a bit string of 0 and 1",
                col.name
            ),
        ));
    }
    Ok(Some(
        digits
            .bytes()
            .zip(names)
            .filter(|(b, _)| *b == b'1')
            .map(|(_, n)| n.clone())
            .collect(),
    ))
}

/// A float from a position's value plan, `None` when absent or unavailable.
fn position_value(
    p: &ColumnPlan,
    records: &Records<'_>,
    at: At<'_>,
    recv_us: i64,
) -> Result<Option<f64>, Rejection> {
    let ColumnSource::Slots(slots) = &p.source else {
        return Ok(None);
    };
    let raw = first_present(records, slots, at);
    match scalar_cell(p, ColumnType::Float64, raw, recv_us, 0, true)? {
        Cell::F64(v) => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// The coordinate `component` of a position, for one point or for each point of a list.
fn position_cell<'de>(
    col: &ColumnPlan,
    pos: &PositionPlan,
    component: PositionComponent,
    records: &Records<'de>,
    lineage: &[u32],
    recv_us: i64,
) -> Result<Cell<'de>, Rejection> {
    let row = At::Row(lineage);
    let origin = match (
        position_value(&pos.origin_lat, records, row, recv_us)?,
        position_value(&pos.origin_lon, records, row, recv_us)?,
    ) {
        (Some(lat), Some(lon)) => geo::Origin::new(lat, lon),
        _ => return null_or_missing(col),
    };
    let pair = |pair: &Option<(ColumnPlan, ColumnPlan)>,
                at: At<'_>|
     -> Result<Option<(f64, f64)>, Rejection> {
        match pair {
            Some((a, b)) => Ok(
                match (
                    position_value(a, records, at, recv_us)?,
                    position_value(b, records, at, recv_us)?,
                ) {
                    (Some(x), Some(y)) => Some((x, y)),
                    _ => None,
                },
            ),
            None => Ok(None),
        }
    };
    let mut chain = geo::Chain::new(&origin, pos.chain);
    let mut point = |at: At<'_>| -> Result<Cell<'de>, Rejection> {
        let p = if let Some((lat, lon)) = pair(&pos.absolute, at)? {
            Some(chain.absolute(lat, lon))
        } else if let Some((e, n)) = pair(&pos.east, at)? {
            Some(chain.metric(e, n))
        } else if let Some((dlat, dlon)) = pair(&pos.delta, at)? {
            Some(chain.angular(dlat, dlon))
        } else {
            None
        };
        Ok(match p {
            Some(p) => Cell::F64(match component {
                PositionComponent::Lat => p.lat,
                PositionComponent::Lon => p.lon,
                PositionComponent::EastM => p.east,
                PositionComponent::NorthM => p.north,
            }),
            None => Cell::Null,
        })
    };
    match pos.collect {
        Some(level) => {
            let mut items = Vec::new();
            for r in records.elements(level, lineage) {
                items.push(point(At::Record(r))?);
            }
            if items.is_empty() && !records.list_seen(level, lineage) {
                return null_or_missing(col);
            }
            Ok(Cell::List(items))
        }
        None => match point(row)? {
            Cell::Null => null_or_missing(col),
            cell => Ok(cell),
        },
    }
}

/// Converts one raw value into `ty` (the column's type, or its element type). Inlined: it
/// runs for every cell, and a call returning the `Result` through memory cost 7 % of a BSM.
#[inline(always)]
fn scalar_cell<'de>(
    col: &ColumnPlan,
    ty: ColumnType,
    raw: &Scalar<'de>,
    recv_us: i64,
    event_us: i64,
    nullable: bool,
) -> Result<Cell<'de>, Rejection> {
    let null = || {
        if nullable {
            Ok(Cell::Null)
        } else {
            null_or_missing(col)
        }
    };
    let mismatch = |what: &str| {
        Rejection::new(
            Reason::TypeMismatch,
            format!(
                "column {}: expected {what}, found {} {:?}",
                col.name,
                raw.type_name(),
                raw
            ),
        )
    };
    if let Scalar::Str(s) = raw
        && s.trim().is_empty()
        && ty != ColumnType::Utf8
    {
        return null();
    }
    let cell = match (ty, raw) {
        (_, Scalar::Null) => return null(),
        (ColumnType::Float64, v) if col.since_event => {
            let x = as_f64(v);
            if x.is_some_and(|x| unavailable(col, x)) {
                return null();
            }
            let seconds = match col.time_format {
                TimeFormat::TimeMark => x.map(|tenths| time::time_mark_after_s(tenths, event_us)),
                format => {
                    time_value(v, format, None, event_us).map(|t| (t - event_us) as f64 / 1e6)
                }
            };
            Cell::F64(seconds.ok_or_else(|| mismatch("a time"))?)
        }
        (ColumnType::Float64, v) => {
            let x = as_f64(v).ok_or_else(|| mismatch("a number"))?;
            if unavailable(col, x) {
                return null();
            }
            let scaled = match (col.divisor, col.scale) {
                (Some(d), _) => x / d,
                (None, Some(s)) => x * s,
                (None, None) => x,
            };
            Cell::F64(scaled + col.offset.unwrap_or(0.0))
        }
        (ColumnType::Int64 | ColumnType::Int32, v) => {
            let x = as_i64(v).ok_or_else(|| mismatch("an integer"))?;
            if unavailable(col, x as f64) {
                return null();
            }
            if ty == ColumnType::Int32 && i32::try_from(x).is_err() {
                return Err(mismatch("a 32-bit integer"));
            }
            Cell::I64(x)
        }
        (ColumnType::Bool, v) => Cell::Bool(match v {
            Scalar::Bool(b) => *b,
            Scalar::I64(0) | Scalar::U64(0) => false,
            Scalar::I64(1) | Scalar::U64(1) => true,
            Scalar::Str(s) if s.eq_ignore_ascii_case("true") || s.as_ref() == "1" => true,
            Scalar::Str(s) if s.eq_ignore_ascii_case("false") || s.as_ref() == "0" => false,
            _ => return Err(mismatch("a boolean")),
        }),
        (ColumnType::Timestamp, v) => match time_value(v, col.time_format, None, recv_us) {
            Some(us) => Cell::I64(us),
            None => return Err(mismatch("a time")),
        },
        (ColumnType::Utf8, v) => {
            let text: Cow<'de, str> = match v {
                // Unescaped strings stay borrowed from the payload.
                Scalar::Str(Cow::Borrowed(b)) => Cow::Borrowed(*b),
                Scalar::Str(s) => Cow::Owned(s.to_string()),
                Scalar::I64(i) => Cow::Owned(i.to_string()),
                Scalar::U64(u) => Cow::Owned(u.to_string()),
                Scalar::F64(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                    Cow::Owned((*f as i64).to_string())
                }
                Scalar::F64(f) => Cow::Owned(f.to_string()),
                Scalar::Bool(b) => Cow::Owned(b.to_string()),
                _ => return Err(mismatch("a string")),
            };
            match &col.enum_map {
                Some(map) => {
                    let trimmed = text.trim();
                    let key: Cow<str> = if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
                        Cow::Owned(trimmed.to_ascii_lowercase())
                    } else {
                        Cow::Borrowed(trimmed)
                    };
                    match map.get(key.as_ref()) {
                        Some(name) => Cell::Name(name.clone()),
                        // An unknown code is kept as sent rather than lost.
                        None => Cell::Str(Cow::Owned(key.into_owned())),
                    }
                }
                None => Cell::Str(text),
            }
        }
        // List types never reach here: their elements are converted one by one.
        (_, _) => return Err(mismatch("a value")),
    };
    Ok(cell)
}

fn unavailable(col: &ColumnPlan, raw: f64) -> bool {
    col.unavailable.contains(&raw) || col.unavailable_at_or_above.is_some_and(|t| raw >= t)
}

fn null_or_missing<'a>(col: &ColumnPlan) -> Result<Cell<'a>, Rejection> {
    if col.nullable {
        Ok(Cell::Null)
    } else {
        Err(Rejection::new(
            Reason::MissingField,
            format!("required column {} is missing or unavailable", col.name),
        ))
    }
}

#[cfg(test)]
mod tests;
