//! The `_quarantine` table: every message that is not filed, with its reason.
//!
//! Rows keep the topic, the raw payload bytes (cut at a configured size for oversized
//! payloads), the reason as a fixed enum, the error text and the receive time. The table is
//! partitioned by receive time like the others (`_quarantine/date=/hour=`).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

/// Why a message was quarantined. The string forms are stable: they are stored in the table
/// and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not JSON (syntax error, truncated, not UTF-8 after repair).
    InvalidJson,
    /// A value or structure of the wrong type for the schema.
    TypeMismatch,
    /// A required column is missing or null.
    MissingField,
    /// No event-time candidate gave a time.
    MissingEventTime,
    /// The event time is outside the plausibility window.
    ImplausibleTime,
    /// The topic matches no route template.
    UnknownTopic,
    /// The route names a kind that has no schema.
    UnknownKind,
    /// The kind has no such payload profile.
    UnknownProfile,
    /// The source id is not a safe identifier.
    InvalidSourceId,
    /// Neither topic nor payload gave a source id.
    MissingSourceId,
    /// The payload is larger than `decode.max_payload_bytes`.
    TooLarge,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::InvalidJson,
        Reason::TypeMismatch,
        Reason::MissingField,
        Reason::MissingEventTime,
        Reason::ImplausibleTime,
        Reason::UnknownTopic,
        Reason::UnknownKind,
        Reason::UnknownProfile,
        Reason::InvalidSourceId,
        Reason::MissingSourceId,
        Reason::TooLarge,
    ];

    /// The reason named `name` (its stable string form).
    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::TypeMismatch => "type_mismatch",
            Reason::MissingField => "missing_field",
            Reason::MissingEventTime => "missing_event_time",
            Reason::ImplausibleTime => "implausible_time",
            Reason::UnknownTopic => "unknown_topic",
            Reason::UnknownKind => "unknown_kind",
            Reason::UnknownProfile => "unknown_profile",
            Reason::InvalidSourceId => "invalid_source_id",
            Reason::MissingSourceId => "missing_source_id",
            Reason::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that could not be filed, with what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

pub const TABLE: &str = "_quarantine";

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "recv_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("topic", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, false),
        Field::new("payload_bytes", DataType::Int64, false),
        Field::new("payload_truncated", DataType::Boolean, false),
        Field::new("msg_uid", DataType::Utf8, false),
    ]))
}

/// The message a quarantine row is about.
pub struct Quarantined<'a> {
    pub recv_us: i64,
    pub topic: &'a str,
    pub kind: Option<&'a str>,
    pub payload: &'a [u8],
    pub msg_uid: &'a str,
}

/// Accumulates quarantine rows for one receive hour.
#[derive(Default)]
pub struct QuarantineBuilder {
    recv_ts: Vec<i64>,
    topic: StringBuilder,
    reason: StringBuilder,
    error: StringBuilder,
    kind: StringBuilder,
    payload: BinaryBuilder,
    payload_bytes: Int64Builder,
    truncated: BooleanBuilder,
    msg_uid: StringBuilder,
}

impl QuarantineBuilder {
    pub fn push(&mut self, m: &Quarantined<'_>, keep_bytes: usize, rejection: &Rejection) {
        self.recv_ts.push(m.recv_us);
        // The topic of a hostile message can be anything; store it, never use it as a path.
        self.topic.append_value(m.topic);
        self.reason.append_value(rejection.reason.as_str());
        self.error.append_value(&rejection.detail);
        self.kind.append_option(m.kind);
        let kept = &m.payload[..m.payload.len().min(keep_bytes)];
        self.payload.append_value(kept);
        self.payload_bytes.append_value(m.payload.len() as i64);
        self.truncated.append_value(kept.len() < m.payload.len());
        self.msg_uid.append_value(m.msg_uid);
    }

    pub fn len(&self) -> usize {
        self.recv_ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recv_ts.is_empty()
    }

    pub fn finish(&mut self) -> RecordBatch {
        let recv: TimestampMicrosecondArray =
            TimestampMicrosecondArray::from(std::mem::take(&mut self.recv_ts)).with_timezone("UTC");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(recv),
            Arc::new(self.topic.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.payload_bytes.finish()),
            Arc::new(self.truncated.finish()),
            Arc::new(self.msg_uid.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("quarantine columns match their schema")
    }
}
