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
        "radar_event",
        include_str!("../../schemas/radar_event.toml"),
    ),
    ("radar_flow", include_str!("../../schemas/radar_flow.toml")),
    ("radar_pass", include_str!("../../schemas/radar_pass.toml")),
    (
        "radar_queue",
        include_str!("../../schemas/radar_queue.toml"),
    ),
    (
        "radar_target",
        include_str!("../../schemas/radar_target.toml"),
    ),
    ("map_lane", include_str!("../../schemas/map_lane.toml")),
    ("psm", include_str!("../../schemas/psm.toml")),
    ("rsi_event", include_str!("../../schemas/rsi_event.toml")),
    (
        "rsm_participant",
        include_str!("../../schemas/rsm_participant.toml"),
    ),
    ("spat_phase", include_str!("../../schemas/spat_phase.toml")),
    ("ssm_object", include_str!("../../schemas/ssm_object.toml")),
    (
        "vehicle_object",
        include_str!("../../schemas/vehicle_object.toml"),
    ),
    (
        "vehicle_state",
        include_str!("../../schemas/vehicle_state.toml"),
    ),
    ("vir", include_str!("../../schemas/vir.toml")),
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
    /// A list of numbers, such as the node positions of a lane.
    #[serde(rename = "list<float64>")]
    ListFloat64,
    #[serde(rename = "list<int64>")]
    ListInt64,
    #[serde(rename = "list<int32>")]
    ListInt32,
    #[serde(rename = "list<utf8>")]
    ListUtf8,
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
            ColumnType::ListFloat64 => "list<float64>",
            ColumnType::ListInt64 => "list<int64>",
            ColumnType::ListInt32 => "list<int32>",
            ColumnType::ListUtf8 => "list<utf8>",
        }
    }

    /// The element type of a list type; `None` for a scalar type.
    pub fn item(self) -> Option<ColumnType> {
        match self {
            ColumnType::ListFloat64 => Some(ColumnType::Float64),
            ColumnType::ListInt64 => Some(ColumnType::Int64),
            ColumnType::ListInt32 => Some(ColumnType::Int32),
            ColumnType::ListUtf8 => Some(ColumnType::Utf8),
            _ => None,
        }
    }

    pub fn is_list(self) -> bool {
        self.item().is_some()
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
    /// Milliseconds within the UTC minute; the minute is the one nearest the receive time (or
    /// the `anchor` time), or comes from `moy` when given.
    SecMark,
    /// J2735 TimeMark: tenths of a second within the UTC hour (0..35999; 36000 and above mean
    /// "more than an hour" or unknown). As an event time the hour is the one nearest the
    /// receive (or anchor) time; with `since_event` the next occurrence at or after the event.
    TimeMark,
    /// An object of date and time parts: `year`, `month`, `day`, `hour`, `minute`, `second`
    /// (milliseconds within the minute) and optionally `offset` (minutes east of UTC), as in
    /// J2735 `DDateTime` and CSAE `DDateTime`. All but `offset` must be present.
    DateTimeParts,
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
    /// With `sec_mark`, `time_mark` or `moy`: path of a full time (any `auto` form) that the
    /// minute, hour or year is chosen nearest to, instead of the receive time. For renderings
    /// that carry the time a gateway received the message (the US ODE's
    /// `metadata.odeReceivedAt`), so that a replayed capture keeps its own date. When the
    /// anchor is absent or not a time, this candidate yields nothing.
    #[serde(default)]
    pub anchor: Option<String>,
}

/// Where a column's value comes from in one profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Path(String),
    Paths(Vec<String>),
    Full(Box<FieldDef>),
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
    /// Divide the raw number (km/h to m/s: `divide = 3.6`); exclusive with `scale`.
    #[serde(default)]
    pub divide: Option<f64>,
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
    /// For timestamp columns, and for number columns with `since_event`.
    #[serde(default)]
    pub time_format: Option<TimeFormat>,
    /// The raw value is a time (in `time_format`); the column holds the seconds from the row's
    /// event time until it (negative when it lies before). J2735 SPaT gives its phase ends as
    /// absolute TimeMarks where CSAE counts down: both become the same countdown.
    #[serde(default)]
    pub since_event: bool,
    /// Named flags, each a path relative to `path` (which names the object holding them): the
    /// column holds the names of those that are set (`true`, a non-zero number, `"1"`/`"true"`,
    /// or an object or list that is present, as a CHOICE is rendered). A `list<utf8>` column
    /// gets the names as a list; a `utf8` column, or each element of a `list<utf8>` whose
    /// path runs through a list, gets them joined by `|`. No flag set gives an empty list or
    /// string; the object absent gives null.
    #[serde(default)]
    pub flags: Option<indexmap::IndexMap<String, String>>,
    /// A CHOICE: alternatives, each a path relative to `path`; the column holds the name of
    /// the first one present (not null), as ODE and CSAE JSON render `laneType` or a VIR
    /// request's `info`.
    #[serde(default)]
    pub choice: Option<indexmap::IndexMap<String, String>>,
    /// A BIT STRING sent as text of `0`/`1` (an optional leading `B`, leftmost is bit 0, as
    /// OpenV2X renders CSAE `AllowedManeuvers`): the names of the set bits, by position, as
    /// `flags` gives them. A value that is not such text goes to quarantine.
    #[serde(default)]
    pub bits: Option<Vec<String>>,
    /// The column is one coordinate of a position declared in the profile's `positions`.
    #[serde(default)]
    pub position: Option<String>,
    /// Which coordinate of `position`: `lat` or `lon` (degrees), `east_m` or `north_m`
    /// (metres from the position's origin on the local tangent plane).
    #[serde(default)]
    pub component: Option<PositionComponent>,
}

/// A coordinate of a declared position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionComponent {
    Lat,
    Lon,
    EastM,
    NorthM,
}

impl PositionComponent {
    pub fn name(self) -> &'static str {
        match self {
            PositionComponent::Lat => "lat",
            PositionComponent::Lon => "lon",
            PositionComponent::EastM => "east_m",
            PositionComponent::NorthM => "north_m",
        }
    }
}

/// Positions given relative to a reference point: J2735 MAP lane nodes (each an offset in cm
/// from the node before, the first from the intersection's reference point), J3224 SDSM and
/// CSAE SSM objects (offsets from the message's reference position), CSAE MAP points
/// (offsets in 1e-7 degree). Declared once here; columns take a coordinate of it.
///
/// Each point is, in this order of preference: an absolute `lat`/`lon`; a metric offset
/// `east`/`north` (metres after `scale`) on the tangent plane at the origin; an angular offset
/// `delta_lat`/`delta_lon` (degrees after `scale`). With `chain`, offsets add up from point to
/// point (the first from the origin, and an absolute point restarts the chain); without it
/// every point is relative to the origin. Metres become degrees on the WGS-84 ellipsoid
/// (geographiclib's geodesic problem), never by a hand-written formula.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionDef {
    /// Reference latitude and longitude, degrees after their `scale`.
    pub origin_lat: FieldSpec,
    pub origin_lon: FieldSpec,
    #[serde(default)]
    pub east: Option<FieldSpec>,
    #[serde(default)]
    pub north: Option<FieldSpec>,
    #[serde(default)]
    pub delta_lat: Option<FieldSpec>,
    #[serde(default)]
    pub delta_lon: Option<FieldSpec>,
    #[serde(default)]
    pub lat: Option<FieldSpec>,
    #[serde(default)]
    pub lon: Option<FieldSpec>,
    /// Offsets add up from point to point.
    #[serde(default)]
    pub chain: bool,
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
            FieldSpec::Full(d) => (**d).clone(),
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
    /// Paths that are all present (not null) in this shape and in no other profile's. When
    /// the topic names no profile and the kind's default profile cannot decode a message, the
    /// first profile whose `detect` paths are all present decodes it instead. The default
    /// profile is always tried first, so a shape that decodes as the default costs nothing.
    #[serde(default)]
    pub detect: Vec<String>,
    /// Positions given relative to a reference point, by name (see [`PositionDef`]).
    #[serde(default)]
    pub positions: BTreeMap<String, PositionDef>,
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
    /// A column whose value names the counter's owner when one source relays several (a
    /// roadside unit forwarding the PSMs of many pedestrians: each device counts on its own).
    #[serde(default)]
    pub per: Option<String>,
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
            if let Some(per) = &seq.per
                && !self
                    .columns
                    .iter()
                    .any(|c| &c.name == per && !c.ty.is_list())
            {
                return Err(self.invalid(format!("sequence.per column {per} is not declared")));
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
                let column = self.columns.iter().find(|c| &c.name == col);
                let ty = column.map(|c| c.ty).unwrap_or(ColumnType::Utf8);
                let bad = |what: &str| self.invalid(format!("profile {pname}: field {col} {what}"));
                match (&def.position, def.component) {
                    (Some(name), Some(_)) => {
                        if !p.positions.contains_key(name) {
                            return Err(bad(&format!("names an undeclared position {name}")));
                        }
                        if !matches!(ty, ColumnType::Float64 | ColumnType::ListFloat64) {
                            return Err(bad(
                                "takes a position: it must be float64 or list<float64>",
                            ));
                        }
                    }
                    (None, None) => {}
                    _ => return Err(bad("needs both `position` and `component`")),
                }
                let named = [
                    def.flags.is_some(),
                    def.choice.is_some(),
                    def.bits.is_some(),
                ];
                if named.iter().filter(|x| **x).count() > 1 {
                    return Err(bad("may have only one of flags, choice and bits"));
                }
                if named.contains(&true) {
                    if !matches!(ty, ColumnType::Utf8 | ColumnType::ListUtf8) {
                        return Err(bad(
                            "has flags, choice or bits: it must be utf8 or list<utf8>",
                        ));
                    }
                    if def.path.paths().len() != 1 && def.bits.is_none() {
                        return Err(bad(
                            "has flags or choice: it needs exactly one `path` (the object)",
                        ));
                    }
                }
                if def.since_event && !matches!(ty, ColumnType::Float64 | ColumnType::ListFloat64) {
                    return Err(bad("has since_event: it must be float64"));
                }
                if def.constant.is_none() && def.position.is_none() && def.path.paths().is_empty() {
                    return Err(bad("has no path"));
                }
            }
            for (name, pos) in &p.positions {
                let metric = pos.east.is_some() || pos.north.is_some();
                let angular = pos.delta_lat.is_some() || pos.delta_lon.is_some();
                let absolute = pos.lat.is_some() || pos.lon.is_some();
                let pairs = pos.east.is_some() == pos.north.is_some()
                    && pos.delta_lat.is_some() == pos.delta_lon.is_some()
                    && pos.lat.is_some() == pos.lon.is_some();
                if !pairs || !(metric || angular || absolute) {
                    return Err(self.invalid(format!(
                        "profile {pname}: position {name} needs east and north, delta_lat and \
                         delta_lon, or lat and lon (in pairs)"
                    )));
                }
            }
            for path in &p.detect {
                if path.contains("[]") {
                    return Err(self.invalid(format!(
                        "profile {pname}: detect path {path:?} may not go through a list"
                    )));
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
