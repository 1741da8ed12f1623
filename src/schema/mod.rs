//! Declared schemas: one TOML file per kind under `schemas/`.
//!
//! A schema file declares the kind's columns (Arrow type, unit, nullability), its enums, its
//! dedup key and, per payload profile, which list explodes into rows, where each column comes
//! from, how it is scaled, which sentinel means "unavailable", and the event-time rule. This
//! module only reads and checks those files (and [`docs`] renders them as Markdown);
//! `decode::plan` compiles them into a plan.

pub mod docs;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The schema files shipped with the binary, so `run` needs no files on disk.
pub const BUILTIN: &[(&str, &str)] = &[
    ("bsm", include_str!("../../schemas/bsm.toml")),
    (
        "device_status",
        include_str!("../../schemas/device_status.toml"),
    ),
    (
        "radar_target",
        include_str!("../../schemas/radar_target.toml"),
    ),
    ("rsi_event", include_str!("../../schemas/rsi_event.toml")),
    (
        "rsm_participant",
        include_str!("../../schemas/rsm_participant.toml"),
    ),
    ("spat_phase", include_str!("../../schemas/spat_phase.toml")),
    (
        "vehicle_object",
        include_str!("../../schemas/vehicle_object.toml"),
    ),
    (
        "vehicle_state",
        include_str!("../../schemas/vehicle_state.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("schema {name}: {source}")]
    Parse {
        name: String,
        source: Box<toml::de::Error>,
    },
    #[error("schema {kind}: {reason}")]
    Invalid { kind: String, reason: String },
}

/// Arrow type of a declared column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Float64,
    Int64,
    Int32,
    Utf8,
    Bool,
    /// A UTC timestamp at the configured resolution.
    Timestamp,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Float64 => "float64",
            ColumnType::Int64 => "int64",
            ColumnType::Int32 => "int32",
            ColumnType::Utf8 => "utf8",
            ColumnType::Bool => "bool",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// SI unit (`m`, `m/s`, `deg`, `s`, ...); empty for unitless values.
    #[serde(default)]
    pub unit: String,
    #[serde(default = "yes")]
    pub nullable: bool,
    #[serde(default)]
    pub doc: String,
}

fn yes() -> bool {
    true
}

/// How a time value is written in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Epoch ms or s (by magnitude, number or string), RFC 3339, or Beijing local
    /// `YYYY-mm-dd HH:MM:SS[.fff]`.
    Auto,
    EpochMs,
    EpochS,
    Rfc3339,
    /// `YYYY-mm-dd HH:MM:SS[.fff]` with no zone, in Beijing time (UTC+8).
    BeijingLocal,
    /// Milliseconds within the UTC minute; the minute is the one nearest the receive time, or
    /// comes from `moy` when given.
    SecMark,
}

/// One candidate for the event time; the first that yields a value wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSource {
    pub path: String,
    pub format: TimeFormat,
    /// With `sec_mark`: path of the MinuteOfTheYear that fixes the minute.
    #[serde(default)]
    pub moy: Option<String>,
}

/// Where a column's value comes from in one profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Path(String),
    Paths(Vec<String>),
    Full(FieldDef),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// One path, or alternatives tried in order (`["pos.lon", "pos.long"]`).
    #[serde(default)]
    pub path: PathSpec,
    /// Multiply the raw number (integer units to SI).
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after scaling.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Raw values meaning "unavailable": they become null.
    #[serde(default)]
    pub unavailable: Vec<f64>,
    /// Raw values at or above this mean "unavailable".
    #[serde(default)]
    pub unavailable_at_or_above: Option<f64>,
    /// Name of an enum in `[enums]`: integers, digit strings and names normalise to the name.
    #[serde(rename = "enum", default)]
    pub enum_name: Option<String>,
    /// A constant instead of a path.
    #[serde(rename = "const", default)]
    pub constant: Option<toml::Value>,
    /// For timestamp columns.
    #[serde(default)]
    pub time_format: Option<TimeFormat>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathSpec {
    #[default]
    None,
    One(String),
    Alternatives(Vec<String>),
}

impl PathSpec {
    pub fn paths(&self) -> Vec<&str> {
        match self {
            PathSpec::None => vec![],
            PathSpec::One(p) => vec![p.as_str()],
            PathSpec::Alternatives(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl FieldSpec {
    pub fn def(&self) -> FieldDef {
        match self {
            FieldSpec::Path(p) => FieldDef {
                path: PathSpec::One(p.clone()),
                ..FieldDef::default()
            },
            FieldSpec::Paths(p) => FieldDef {
                path: PathSpec::Alternatives(p.clone()),
                ..FieldDef::default()
            },
            FieldSpec::Full(d) => d.clone(),
        }
    }
}

/// How one payload shape maps to rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDef {
    #[serde(default)]
    pub doc: String,
    /// Decode the message with each of these profiles and keep all their rows (for messages
    /// carrying two lists, such as RSI events and signs). Excludes the other keys.
    #[serde(default)]
    pub parts: Vec<String>,
    /// Path of the list that explodes into rows (`content.rsms[].participants[]`); empty means
    /// one row per message.
    #[serde(default)]
    pub rows: String,
    /// Path of the source id when the topic does not carry one.
    #[serde(default)]
    pub source_id: Option<PathSpec>,
    /// Event-time candidates, tried in order.
    #[serde(default)]
    pub event_time: Vec<TimeSource>,
    /// When no candidate yields a time, use the receive time instead of quarantining.
    #[serde(default)]
    pub event_time_fallback_recv: bool,
    /// Column name -> where it comes from. Columns not listed are null in this profile.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
}

/// A message counter column, such as BSM `msgCnt` (0..127, wrapping).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceDef {
    pub column: String,
    pub modulo: i64,
}

/// A kind's schema file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSchema {
    pub kind: String,
    #[serde(default)]
    pub description: String,
    /// Columns whose values identify one delivery of one message; used to drop broker
    /// redeliveries. `msg_uid` is a hash of topic and payload bytes, so two different payloads
    /// never share a key.
    pub dedup_key: Vec<String>,
    pub columns: Vec<ColumnDef>,
    /// Enum name -> (code -> canonical name).
    #[serde(default)]
    pub enums: BTreeMap<String, BTreeMap<String, String>>,
    /// The profile used when a route does not name one.
    #[serde(default = "std_profile")]
    pub default_profile: String,
    /// A per-source message counter whose jumps reveal lost messages.
    #[serde(default)]
    pub sequence: Option<SequenceDef>,
    pub profiles: BTreeMap<String, ProfileDef>,
}

fn std_profile() -> String {
    "std".into()
}

/// Columns every kind carries, in front of its declared ones.
pub const COMMON_COLUMNS: &[(&str, &str, &str)] = &[
    ("event_ts", "timestamp", "when the value was measured (UTC)"),
    (
        "recv_ts",
        "timestamp",
        "when the collector received the message (UTC)",
    ),
    (
        "source_id",
        "utf8",
        "roadside unit, radar or vehicle that sent it",
    ),
    ("topic", "utf8", "MQTT topic"),
    ("profile", "utf8", "payload profile used to decode it"),
    (
        "msg_uid",
        "utf8",
        "128-bit hash of topic and payload, shared by the rows of one message",
    ),
];

impl KindSchema {
    pub fn parse(name: &str, text: &str) -> Result<KindSchema, SchemaError> {
        let schema: KindSchema = toml::from_str(text).map_err(|source| SchemaError::Parse {
            name: name.to_string(),
            source: Box::new(source),
        })?;
        schema.check()?;
        Ok(schema)
    }

    fn invalid(&self, reason: impl Into<String>) -> SchemaError {
        SchemaError::Invalid {
            kind: self.kind.clone(),
            reason: reason.into(),
        }
    }

    /// Consistency checks that the type system cannot make.
    fn check(&self) -> Result<(), SchemaError> {
        if !crate::route::is_safe_identifier(&self.kind) || self.kind.starts_with('_') {
            return Err(self.invalid("kind must be a safe identifier"));
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.columns {
            if COMMON_COLUMNS.iter().any(|(n, _, _)| *n == c.name) {
                return Err(self.invalid(format!("column {} is built in", c.name)));
            }
            if c.name == "date" || c.name == "hour" {
                return Err(self.invalid("date and hour are partition columns"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(self.invalid(format!("column {} declared twice", c.name)));
            }
        }
        for k in &self.dedup_key {
            let known = names.contains(k.as_str()) || COMMON_COLUMNS.iter().any(|(n, _, _)| n == k);
            if !known {
                return Err(self.invalid(format!("dedup_key column {k} is not declared")));
            }
        }
        if let Some(seq) = &self.sequence {
            let ok = self.columns.iter().any(|c| {
                c.name == seq.column && matches!(c.ty, ColumnType::Int32 | ColumnType::Int64)
            });
            if !ok || seq.modulo < 2 {
                return Err(
                    self.invalid("sequence.column must be an integer column and modulo >= 2")
                );
            }
        }
        if !self.profiles.contains_key(&self.default_profile) {
            return Err(self.invalid(format!(
                "default_profile {} is not defined",
                self.default_profile
            )));
        }
        for (pname, p) in &self.profiles {
            if pname.to_ascii_lowercase() != *pname {
                return Err(self.invalid(format!("profile name {pname} must be lower case")));
            }
            if !p.parts.is_empty() {
                for part in &p.parts {
                    match self.profiles.get(part) {
                        Some(pp) if pp.parts.is_empty() => {}
                        _ => {
                            return Err(self.invalid(format!(
                                "profile {pname}: part {part} must be a profile without parts"
                            )));
                        }
                    }
                }
                continue;
            }
            for (col, spec) in &p.fields {
                if !names.contains(col.as_str()) {
                    return Err(self.invalid(format!(
                        "profile {pname}: field {col} is not a declared column"
                    )));
                }
                let def = spec.def();
                if let Some(e) = &def.enum_name
                    && !self.enums.contains_key(e)
                {
                    return Err(self.invalid(format!("profile {pname}: unknown enum {e}")));
                }
                if def.constant.is_none() && def.path.paths().is_empty() {
                    return Err(self.invalid(format!("profile {pname}: field {col} has no path")));
                }
            }
            if p.event_time.is_empty() && !p.event_time_fallback_recv {
                return Err(self.invalid(format!(
                    "profile {pname}: needs event_time or event_time_fallback_recv"
                )));
            }
        }
        Ok(())
    }

    /// The JSON written to `<kind>/_schema.json` and into each file's metadata.
    pub fn to_json(&self) -> String {
        let columns: Vec<serde_json::Value> = COMMON_COLUMNS
            .iter()
            .map(|(name, ty, doc)| {
                serde_json::json!({"name": name, "type": ty, "unit": "", "nullable": false, "doc": doc})
            })
            .chain(self.columns.iter().map(|c| {
                serde_json::json!({"name": c.name, "type": c.ty.name(), "unit": c.unit, "nullable": c.nullable, "doc": c.doc})
            }))
            .collect();
        let v = serde_json::json!({
            "kind": self.kind,
            "description": self.description,
            "columns": columns,
            "enums": self.enums,
            "dedup_key": self.dedup_key,
            "partitioning": ["date", "hour"],
            "sort_order": ["source_id", "event_ts"],
            "profiles": self.profiles.keys().collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// Loads the built-in schemas, or every `*.toml` of `dir`.
pub fn load_all(dir: Option<&Path>) -> Result<Vec<KindSchema>, SchemaError> {
    let mut out = Vec::new();
    match dir {
        None => {
            for (name, text) in BUILTIN {
                out.push(KindSchema::parse(name, text)?);
            }
        }
        Some(dir) => {
            let read_err = |source| SchemaError::Read {
                path: dir.display().to_string(),
                source,
            };
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path).map_err(|source| SchemaError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                out.push(KindSchema::parse(&path.display().to_string(), &text)?);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &out {
        if !seen.insert(s.kind.clone()) {
            return Err(s.invalid("kind defined by two files"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_parse_and_check() {
        let all = load_all(None).unwrap();
        assert_eq!(all.len(), BUILTIN.len());
        for s in &all {
            assert!(!s.dedup_key.is_empty(), "{}", s.kind);
            assert!(s.to_json().contains(&s.kind));
        }
    }

    #[test]
    fn schema_dir_matches_builtin() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let from_disk = load_all(Some(&dir)).unwrap();
        assert_eq!(from_disk.len(), BUILTIN.len());
    }

    #[test]
    fn undeclared_field_is_an_error() {
        let text = r#"
kind = "x"
dedup_key = ["msg_uid"]
[[columns]]
name = "a"
type = "float64"
[profiles.std]
event_time_fallback_recv = true
fields = { b = "b" }
"#;
        let err = KindSchema::parse("x", text).unwrap_err().to_string();
        assert!(err.contains("field b is not a declared column"), "{err}");
    }
}
