//! The `_messages` table: one small row per filed message, beside the kinds.
//!
//! A kind's rows say what was seen; this table says that a message came at all. An RSM that saw
//! nobody files no row of `rsm_participant`, but it files a row here with `rows = 0`, so "no
//! agents" and "no data" can be told apart. It also gives each source's delay and clock skew:
//! `delay_ms` is the receive time minus the newest event time of the message (network and
//! queueing delay plus the source's clock offset; negative when the source's clock runs ahead).
//!
//! Partitioned by receive time, like `_quarantine` (a message with no rows has no event time),
//! sorted by (`source_id`, `recv_ts`). Quarantined messages are in `_quarantine`, not here.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

pub const TABLE: &str = "_messages";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("recv_ts", ts(), false),
        Field::new("event_ts", ts(), true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("source_id", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("profile", DataType::Utf8, false),
        Field::new("rows", DataType::Int32, false),
        Field::new("payload_bytes", DataType::Int64, false),
        Field::new("delay_ms", DataType::Float64, true),
        Field::new("msg_uid", DataType::Utf8, false),
    ]))
}

/// The column docs, for `schema docs` and the README.
pub const COLUMNS: &[(&str, &str)] = &[
    ("recv_ts", "when the collector received the message (UTC)"),
    (
        "event_ts",
        "the newest event time among the message's rows; null when it gave none",
    ),
    ("kind", "the kind it was filed as"),
    ("source_id", "roadside unit, radar or vehicle that sent it"),
    ("topic", "MQTT topic"),
    ("profile", "payload profile that decoded it"),
    (
        "rows",
        "rows it gave in its kind's table (0: an empty list)",
    ),
    ("payload_bytes", "size of the payload as received"),
    (
        "delay_ms",
        "recv_ts - event_ts in ms: delay plus the source's clock offset (negative: its clock is ahead)",
    ),
    (
        "msg_uid",
        "the message's id, as in its kind's rows: join on it to get them",
    ),
];

/// One filed message.
pub struct Indexed<'a> {
    pub recv_us: i64,
    pub event_us: Option<i64>,
    pub kind: &'a str,
    pub source_id: &'a str,
    pub topic: &'a str,
    pub profile: &'a str,
    pub rows: usize,
    pub payload_bytes: usize,
    pub msg_uid: &'a str,
}

/// Accumulates index rows for one receive hour.
#[derive(Default)]
pub struct IndexBuilder {
    recv_ts: Vec<i64>,
    event_ts: Vec<Option<i64>>,
    kind: StringBuilder,
    source_id: StringBuilder,
    topic: StringBuilder,
    profile: StringBuilder,
    rows: Int32Builder,
    payload_bytes: Int64Builder,
    delay_ms: Float64Builder,
    msg_uid: StringBuilder,
}

impl IndexBuilder {
    pub fn push(&mut self, m: &Indexed<'_>) {
        self.recv_ts.push(m.recv_us);
        self.event_ts.push(m.event_us);
        self.kind.append_value(m.kind);
        self.source_id.append_value(m.source_id);
        self.topic.append_value(m.topic);
        self.profile.append_value(m.profile);
        self.rows
            .append_value(i32::try_from(m.rows).unwrap_or(i32::MAX));
        self.payload_bytes.append_value(m.payload_bytes as i64);
        self.delay_ms
            .append_option(m.event_us.map(|e| (m.recv_us - e) as f64 / 1e3));
        self.msg_uid.append_value(m.msg_uid);
    }

    pub fn is_empty(&self) -> bool {
        self.recv_ts.is_empty()
    }

    pub fn finish(&mut self) -> RecordBatch {
        let recv =
            TimestampMicrosecondArray::from(std::mem::take(&mut self.recv_ts)).with_timezone("UTC");
        let event = TimestampMicrosecondArray::from(std::mem::take(&mut self.event_ts))
            .with_timezone("UTC");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(recv),
            Arc::new(event),
            Arc::new(self.kind.finish()),
            Arc::new(self.source_id.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.profile.finish()),
            Arc::new(self.rows.finish()),
            Arc::new(self.payload_bytes.finish()),
            Arc::new(self.delay_ms.finish()),
            Arc::new(self.msg_uid.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("index columns match their schema")
    }
}
