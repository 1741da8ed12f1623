//! V2X-Seq CSV for `replay`: the public DAIR-V2X / V2X-Seq datasets (Beijing Yizhuang) as
//! payloads of the collector's own kinds, so they go through the real pipeline.
//!
//! A file is V2X-Seq CSV when its first non-empty line (after an optional UTF-8 BOM) is a CSV
//! header with a `timestamp` column. Columns are found by name (any case, any order); extra
//! columns such as `city`, `tag`, `vic_tag` or `from_side` are ignored. Quoted fields follow
//! RFC 4180, blank lines are skipped, and a bad line is an error naming its line.
//!
//! In the published data `timestamp` is epoch seconds as a float (`1626155191.2`, 10 Hz),
//! `intersect_id` is text such as `yizhuang#4-1_po`, `type` is `VEHICLE`, `PEDESTRIAN` or
//! `BICYCLE`, `sub_type` is `CAR`, `VAN`, `TRUCK`, `BUS`, `CYCLIST`, `MOTORCYCLIST`,
//! `TRICYCLIST`, `PEDESTRIAN` or `UNKNOWN`, `id` is an integer (`100001`), `x`/`y` are metres in
//! the dataset's map frame (the frame of its HD maps), `theta` is radians counter-clockwise from
//! east, traffic-light colours are the words `RED`, `YELLOW`, `GREEN`, `direction` is `EAST`,
//! `NORTH`, `SOUTH` or `WEST`, and `lane_id` is an HD-map lane id such as `15312342_1_-1`.
//!
//! # Trajectories
//!
//! Columns `timestamp, id, type, sub_type, x, y, z, length, width, height, theta, v_x, v_y,
//! intersect_id`; `sub_type`, `z`, `theta`, `v_x` and `v_y` may be empty (in V2X-Traj, the
//! sibling dataset in the same format, some ego rows have no `theta`, `v_x` or `v_y`). The rows
//! of one `(timestamp, intersect_id)` make one frame, published as a `vehicle_object` std
//! payload on `V2X/VEH/{source_id}/OBJECTS/UP`:
//!
//! - `timestamp` epoch ms, `sensor` `"fused"`, `frame_id` `"v2xseq_map"` (x/y stay map-frame
//!   metres, never latitude/longitude);
//! - per row one object: `position {x, y, z}`, `theta`, `velocity {x: v_x, y: v_y}` (no z),
//!   `size {length, width, height}`, `type` and `sub_type` lower-cased (`VEHICLE` becomes the
//!   schema's `vehicle`; values the schema does not list, such as `EGO_VEHICLE`, stay as sent,
//!   lower-cased); empty values are left out, so they become nulls;
//! - `id`: an integer id as it is; any other id text gets `id` = its xxh3-64 hash with the top
//!   bit cleared (stable across files and runs) and the text itself in `id_text`
//!   (`object_id_text` in the data), so nothing is lost.
//!
//! # Traffic lights
//!
//! Columns `timestamp, x, y, direction, lane_id, color_1, remain_1, color_2, remain_2, color_3,
//! remain_3, intersect_id`. The rows of one `(timestamp, intersect_id)` make one `spat_phase`
//! std payload on `V2X/RSU/{source_id}/SPAT/UP`: `{"timeStamp": epoch ms, "intersections":
//! [{"intersectionId": {"id": ...}, "phases": [...]}]}`, one phase per row:
//!
//! - phase `id` = 1 + xxh3-64 of `DIRECTION|lane_id` (direction upper-cased, lane id as sent)
//!   modulo 2^31 - 1: stable across files and runs, one per approach lane;
//! - `intersectionId.id`: `intersect_id` when it is a 32-bit integer, otherwise 1 + its xxh3-64
//!   modulo 2^31 - 1 (the readable name is the source id);
//! - `color_1`/`remain_1` are the current state, `color_2`/`remain_2` and `color_3`/`remain_3`
//!   the two that follow, with their durations (across the V2X-Traj traffic-light files
//!   `remain_1` runs from 0 while `remain_2`/`remain_3` never go below 4 s, as durations of
//!   whole states do, not countdowns).
//!   Each becomes a phase state with its CSAE light (`RED` 3, `YELLOW` 7, `GREEN` 5 permissive
//!   green: the data does not say a movement is protected; also flashing variants, `BLACK`/
//!   `DARK` 1, `UNKNOWN` 0) and CSAE countdowns in 0.1 s: state 1 `startTime` 0 and
//!   `likelyEndTime` remain_1; each next state starts where the previous one likely ends and
//!   lasts its remain. States stop at the first empty colour. A colour given as a number is
//!   an error: the dataset never sends one, and the numbering would be a guess. The light's
//!   own `x`/`y` are checked but not sent (SPAT has no place for them; `lane_id` links the
//!   phase to the map).
//!
//! The SPAT time is the top-level epoch-ms `timeStamp`, not CSAE `moy` + `secMark`: `moy` counts
//! from the start of a year the decoder would take from the receive time, which would move a
//! 2021 capture into the year it is replayed.
//!
//! # Source id and topic
//!
//! The source id is `intersect_id` with every character outside `A-Z a-z 0-9 _ . -` replaced by
//! `_` (leading non-alphanumerics dropped, at most 64 bytes): `yizhuang#4-1_po` becomes
//! `yizhuang_4-1_po`. `--topic` replaces the built-in topic; a `{source_id}` in it is replaced
//! by that source id. Frames are published in time order, intersections in order of first
//! appearance; `Item::time_ms` is the frame's time, for `--realtime`.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use csv::StringRecord;
use serde_json::{Map, Value, json};
use xxhash_rust::xxh3::xxh3_64;

use super::replay::Item;
use crate::route::is_safe_identifier;

/// Why a V2X-Seq CSV file cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error(
        "a CSV header with `timestamp` but neither the V2X-Seq trajectory columns ({}) nor the traffic-light columns ({})",
        TRAJECTORY.join(", "),
        TRAFFIC_LIGHT.join(", ")
    )]
    UnknownHeader,
    #[error("V2X-Seq {table} CSV: the header lacks column(s) {}", missing.join(", "))]
    MissingColumns {
        table: Table,
        missing: Vec<&'static str>,
    },
    #[error("line {line}: column {column} appears twice in the header")]
    DuplicateColumn { line: u64, column: &'static str },
    #[error("line {line}: {found} fields where the header has {expected}")]
    FieldCount {
        line: u64,
        found: usize,
        expected: usize,
    },
    #[error("line {line}: {column} is empty")]
    Empty { line: u64, column: &'static str },
    #[error("line {line}: {column} {value:?} {problem}")]
    Invalid {
        line: u64,
        column: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("line {line}: intersect_id {value:?} gives no usable source id; pass --topic")]
    NoSourceId { line: u64, value: String },
    #[error("{0}")]
    Csv(#[from] csv::Error),
}

/// The two V2X-Seq tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Trajectory,
    TrafficLight,
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Table::Trajectory => "trajectory",
            Table::TrafficLight => "traffic-light",
        })
    }
}

const TRAJECTORY: [&str; 14] = [
    "timestamp",
    "id",
    "type",
    "sub_type",
    "x",
    "y",
    "z",
    "length",
    "width",
    "height",
    "theta",
    "v_x",
    "v_y",
    "intersect_id",
];

const TRAFFIC_LIGHT: [&str; 12] = [
    "timestamp",
    "x",
    "y",
    "direction",
    "lane_id",
    "color_1",
    "remain_1",
    "color_2",
    "remain_2",
    "color_3",
    "remain_3",
    "intersect_id",
];

const OBJECTS_TOPIC: &str = "V2X/VEH/{source_id}/OBJECTS/UP";
const SPAT_TOPIC: &str = "V2X/RSU/{source_id}/SPAT/UP";

/// True when the first non-empty line is a CSV header with a `timestamp` column. The body must
/// already be without its BOM.
pub fn is_v2xseq_csv(body: &[u8]) -> bool {
    let Some(line) = body
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .find(|l| !l.is_empty())
    else {
        return false;
    };
    if matches!(line.first(), Some(b'{' | b'[')) {
        return false;
    }
    reader(line)
        .records()
        .next()
        .and_then(Result::ok)
        .is_some_and(|r| r.iter().any(|f| f.eq_ignore_ascii_case("timestamp")))
}

/// Parses a V2X-Seq trajectory or traffic-light CSV into payloads; see the module docs.
pub fn parse(body: &[u8], topic: Option<&str>) -> Result<Vec<Item>, CsvError> {
    let lines = LineIndex::new(body);
    let mut records = reader(body).into_records();
    let (header, header_line) = loop {
        match records.next() {
            None => return Err(CsvError::UnknownHeader),
            Some(r) => {
                let r = r?;
                if !is_blank(&r) {
                    let line = lines.line_of(&r);
                    break (r, line);
                }
            }
        }
    };
    let names: Vec<String> = header.iter().map(str::to_ascii_lowercase).collect();
    let has = |n: &str| names.iter().any(|h| h == n);
    let table = if ["direction", "lane_id", "color_1", "remain_1"]
        .iter()
        .any(|n| has(n))
    {
        Table::TrafficLight
    } else if ["id", "type", "theta", "length"].iter().any(|n| has(n)) {
        Table::Trajectory
    } else {
        return Err(CsvError::UnknownHeader);
    };
    let mut rows = Rows {
        records,
        lines: &lines,
        width: header.len(),
    };
    let mut frames = Frames::default();
    match table {
        Table::Trajectory => {
            let cols = locate(&names, header_line, table, TRAJECTORY)?;
            while let Some(row) = rows.next_row()? {
                let (time_ms, intersect, object) = trajectory_row(&row, &cols)?;
                frames.push(time_ms, intersect, row.line, object);
            }
        }
        Table::TrafficLight => {
            let cols = locate(&names, header_line, table, TRAFFIC_LIGHT)?;
            while let Some(row) = rows.next_row()? {
                let (time_ms, intersect, phase) = traffic_light_row(&row, &cols)?;
                frames.push(time_ms, intersect, row.line, phase);
            }
        }
    }
    frames.into_items(table, topic)
}

fn reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

/// A whitespace-only line reads as one empty field.
fn is_blank(r: &StringRecord) -> bool {
    r.iter().all(str::is_empty)
}

/// Line numbers from byte offsets: the reader's own line count leaves out the blank lines it
/// skips, and a record's offset is where that skipping began.
struct LineIndex<'a> {
    body: &'a [u8],
    newlines: Vec<usize>,
}

impl LineIndex<'_> {
    fn new(body: &[u8]) -> LineIndex<'_> {
        let newlines = body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        LineIndex { body, newlines }
    }

    /// The 1-based line a record starts on.
    fn line_of(&self, r: &StringRecord) -> u64 {
        let mut at = r
            .position()
            .and_then(|p| usize::try_from(p.byte()).ok())
            .unwrap_or(0);
        while matches!(self.body.get(at), Some(b'\r' | b'\n')) {
            at += 1;
        }
        self.newlines.partition_point(|nl| *nl < at) as u64 + 1
    }
}

/// A column the table needs, and where the header has it.
#[derive(Debug, Clone, Copy)]
struct Col {
    name: &'static str,
    index: usize,
}

fn locate<const N: usize>(
    names: &[String],
    line: u64,
    table: Table,
    wanted: [&'static str; N],
) -> Result<[Col; N], CsvError> {
    let mut missing = Vec::new();
    let mut cols = [Col { name: "", index: 0 }; N];
    for (col, name) in cols.iter_mut().zip(wanted) {
        let mut at = names.iter().enumerate().filter(|(_, h)| *h == name);
        match (at.next(), at.next()) {
            (Some((index, _)), None) => *col = Col { name, index },
            (Some(_), Some(_)) => return Err(CsvError::DuplicateColumn { line, column: name }),
            (None, _) => missing.push(name),
        }
    }
    if missing.is_empty() {
        Ok(cols)
    } else {
        Err(CsvError::MissingColumns { table, missing })
    }
}

/// The data records after the header, blank lines skipped.
struct Rows<'a> {
    records: csv::StringRecordsIntoIter<&'a [u8]>,
    lines: &'a LineIndex<'a>,
    width: usize,
}

impl Rows<'_> {
    fn next_row(&mut self) -> Result<Option<Row>, CsvError> {
        for r in self.records.by_ref() {
            let record = r?;
            if is_blank(&record) {
                continue;
            }
            let line = self.lines.line_of(&record);
            if record.len() != self.width {
                return Err(CsvError::FieldCount {
                    line,
                    found: record.len(),
                    expected: self.width,
                });
            }
            return Ok(Some(Row { record, line }));
        }
        Ok(None)
    }
}

/// One data line, with typed access that names the line and column on failure.
struct Row {
    record: StringRecord,
    line: u64,
}

impl Row {
    /// The field, `None` when empty.
    fn opt_text(&self, c: Col) -> Option<&str> {
        self.record.get(c.index).filter(|s| !s.is_empty())
    }

    fn text(&self, c: Col) -> Result<&str, CsvError> {
        self.opt_text(c).ok_or(CsvError::Empty {
            line: self.line,
            column: c.name,
        })
    }

    fn invalid(&self, c: Col, value: &str, problem: &'static str) -> CsvError {
        CsvError::Invalid {
            line: self.line,
            column: c.name,
            value: value.to_string(),
            problem,
        }
    }

    /// A finite number; empty and `NaN` (how pandas writes a missing value) are `None`.
    fn opt_num(&self, c: Col) -> Result<Option<f64>, CsvError> {
        let Some(s) = self.opt_text(c) else {
            return Ok(None);
        };
        match s.parse::<f64>() {
            Ok(v) if v.is_nan() => Ok(None),
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.invalid(c, s, "is not a number")),
        }
    }

    fn num(&self, c: Col) -> Result<f64, CsvError> {
        self.opt_num(c)?.ok_or_else(|| match self.opt_text(c) {
            Some(s) => self.invalid(c, s, "is not a number"),
            None => CsvError::Empty {
                line: self.line,
                column: c.name,
            },
        })
    }

    /// Epoch time in ms; seconds (the dataset's float) or milliseconds, judged by magnitude.
    fn time_ms(&self, c: Col) -> Result<i64, CsvError> {
        let v = self.num(c)?;
        crate::decode::time::epoch_auto_us(v)
            .map(|us| (us + 500).div_euclid(1000))
            .ok_or_else(|| self.invalid(c, self.opt_text(c).unwrap_or(""), "is not an epoch time"))
    }
}

fn trajectory_row(row: &Row, cols: &[Col; 14]) -> Result<(i64, String, Value), CsvError> {
    let [
        timestamp,
        id,
        ty,
        sub_type,
        x,
        y,
        z,
        length,
        width,
        height,
        theta,
        v_x,
        v_y,
        intersect,
    ] = *cols;
    let time_ms = row.time_ms(timestamp)?;
    let mut o = Map::new();
    let id = row.text(id)?;
    match integer_id(id) {
        Some(n) => {
            o.insert("id".into(), n.into());
        }
        None => {
            o.insert("id".into(), text_id_hash(id).into());
            o.insert("id_text".into(), id.into());
        }
    }
    o.insert("type".into(), row.text(ty)?.to_ascii_lowercase().into());
    if let Some(s) = row.opt_text(sub_type) {
        o.insert("sub_type".into(), s.to_ascii_lowercase().into());
    }
    o.insert(
        "position".into(),
        numbers(&[
            ("x", Some(row.num(x)?)),
            ("y", Some(row.num(y)?)),
            ("z", row.opt_num(z)?),
        ]),
    );
    if let Some(t) = row.opt_num(theta)? {
        o.insert("theta".into(), t.into());
    }
    o.insert(
        "velocity".into(),
        numbers(&[("x", row.opt_num(v_x)?), ("y", row.opt_num(v_y)?)]),
    );
    o.insert(
        "size".into(),
        numbers(&[
            ("length", Some(row.num(length)?)),
            ("width", Some(row.num(width)?)),
            ("height", Some(row.num(height)?)),
        ]),
    );
    Ok((time_ms, row.text(intersect)?.to_string(), Value::Object(o)))
}

/// An object of the numbers that are present.
fn numbers(fields: &[(&str, Option<f64>)]) -> Value {
    Value::Object(
        fields
            .iter()
            .filter_map(|(k, v)| v.map(|v| ((*k).to_string(), Value::from(v))))
            .collect(),
    )
}

/// An id that is an integer, also as pandas writes one from a float column (`100001.0`).
fn integer_id(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        let f = s.parse::<f64>().ok()?;
        (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    })
}

/// The stable integer standing for a text id: xxh3-64 with the top bit cleared.
pub fn text_id_hash(s: &str) -> i64 {
    (xxh3_64(s.as_bytes()) & (i64::MAX as u64)) as i64
}

/// A positive 31-bit number standing for a text: 1 + xxh3-64 modulo 2^31 - 1.
fn hash31(s: &str) -> i64 {
    1 + (xxh3_64(s.as_bytes()) % (i32::MAX as u64)) as i64
}

/// The SPAT phase id of one approach lane; see the module docs.
pub fn phase_id(direction: &str, lane_id: &str) -> i64 {
    hash31(&format!("{}|{lane_id}", direction.to_ascii_uppercase()))
}

/// The SPAT intersection id of an `intersect_id`; see the module docs.
pub fn intersection_id(intersect_id: &str) -> i64 {
    intersect_id
        .parse::<i32>()
        .map_or_else(|_| hash31(intersect_id), i64::from)
}

fn traffic_light_row(row: &Row, cols: &[Col; 12]) -> Result<(i64, String, Value), CsvError> {
    let [
        timestamp,
        x,
        y,
        direction,
        lane_id,
        color_1,
        remain_1,
        color_2,
        remain_2,
        color_3,
        remain_3,
        intersect,
    ] = *cols;
    let time_ms = row.time_ms(timestamp)?;
    // Checked so a broken file is reported, though SPAT has no place for the light's position.
    row.num(x)?;
    row.num(y)?;
    let id = phase_id(row.text(direction)?, row.text(lane_id)?);
    let mut states = Vec::new();
    // CSAE countdowns in 0.1 s from now: each state starts where the previous one ends.
    let mut start = 0i64;
    for (k, (color, remain)) in [
        (color_1, remain_1),
        (color_2, remain_2),
        (color_3, remain_3),
    ]
    .into_iter()
    .enumerate()
    {
        let color_text = if k == 0 {
            row.text(color)?
        } else {
            match row.opt_text(color) {
                Some(c) => c,
                None => break,
            }
        };
        let light = csae_light(color_text).ok_or_else(|| {
            row.invalid(
                color,
                color_text,
                "is not a light colour (RED, YELLOW, GREEN, FLASHING_*, BLACK, UNKNOWN)",
            )
        })?;
        let seconds = row.num(remain)?;
        if seconds < 0.0 {
            return Err(row.invalid(remain, row.opt_text(remain).unwrap_or(""), "is negative"));
        }
        let end = start + (seconds * 10.0).round() as i64;
        states.push(json!({"light": light, "timing": {"counting": {
            "startTime": start, "likelyEndTime": end}}}));
        start = end;
    }
    let phase = json!({"id": id, "phaseStates": states});
    Ok((time_ms, row.text(intersect)?.to_string(), phase))
}

/// The CSAE light number of a colour word, any case, `-`, `_` or space between words.
fn csae_light(color: &str) -> Option<u8> {
    let c = color.to_ascii_lowercase().replace(['-', ' '], "_");
    Some(match c.as_str() {
        "unknown" | "unavailable" => 0,
        "black" | "dark" | "off" => 1,
        "flashing_red" | "flash_red" => 2,
        "red" => 3,
        "flashing_green" | "flash_green" => 4,
        "green" | "permissive_green" => 5,
        "protected_green" => 6,
        "yellow" | "amber" => 7,
        "flashing_yellow" | "flash_yellow" | "flashing_amber" => 8,
        _ => return None,
    })
}

/// The source id of an `intersect_id`; see the module docs.
pub fn source_id(intersect_id: &str) -> Option<String> {
    let mapped: String = intersect_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    is_safe_identifier(&mapped).then_some(mapped)
}

/// Rows grouped by (time, intersection); intersections numbered in order of first appearance.
#[derive(Default)]
struct Frames {
    intersections: Vec<(String, u64)>,
    index: HashMap<String, usize>,
    frames: BTreeMap<(i64, usize), Vec<Value>>,
}

impl Frames {
    fn push(&mut self, time_ms: i64, intersect: String, line: u64, element: Value) {
        let n = match self.index.get(&intersect) {
            Some(n) => *n,
            None => {
                let n = self.intersections.len();
                self.index.insert(intersect.clone(), n);
                self.intersections.push((intersect, line));
                n
            }
        };
        self.frames.entry((time_ms, n)).or_default().push(element);
    }

    fn into_items(self, table: Table, topic: Option<&str>) -> Result<Vec<Item>, CsvError> {
        let template = topic.unwrap_or(match table {
            Table::Trajectory => OBJECTS_TOPIC,
            Table::TrafficLight => SPAT_TOPIC,
        });
        let topics = self
            .intersections
            .iter()
            .map(|(intersect, line)| {
                if !template.contains("{source_id}") {
                    return Ok(template.to_string());
                }
                let id = source_id(intersect).ok_or_else(|| CsvError::NoSourceId {
                    line: *line,
                    value: intersect.clone(),
                })?;
                Ok(template.replace("{source_id}", &id))
            })
            .collect::<Result<Vec<_>, CsvError>>()?;
        let items = self
            .frames
            .into_iter()
            .map(|((time_ms, n), elements)| {
                let payload = match table {
                    Table::Trajectory => json!({"timestamp": time_ms, "sensor": "fused",
                        "frame_id": "v2xseq_map", "objects": elements}),
                    Table::TrafficLight => json!({"timeStamp": time_ms, "intersections": [{
                        "intersectionId": {"id": intersection_id(&self.intersections[n].0)},
                        "phases": elements}]}),
                };
                Item {
                    topic: topics[n].clone(),
                    payload: Bytes::from(payload.to_string()),
                    time_ms: Some(time_ms),
                }
            })
            .collect();
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two intersections, extra columns, columns out of the documented order, rows grouped by
    /// object (as the published files are), a quoted field, CRLF and a blank line.
    const TRAJECTORIES: &str = "city,timestamp,id,type,sub_type,tag,x,y,z,length,width,height,theta,v_x,v_y,intersect_id\r\n\
PEK,1626155191.2,100001,VEHICLE,CAR,OTHERS,417630.072477,4731292.5,0.0,4.193262,1.660346,1.516335,2.110587,-0.04137,0.066339,yizhuang#4-1_po\r\n\
PEK,1626155191.3,100001,VEHICLE,CAR,OTHERS,417630.600217,4731291.9,0.0,4.192796,1.656584,1.512959,2.1099,0.0,0.0,yizhuang#4-1_po\r\n\
\r\n\
PEK,1626155191.2,100002,PEDESTRIAN,,TARGET_AGENT,417640.0,4731280.0,,0.5,0.5,1.7,,,,\"yizhuang#4-1_po\"\r\n\
PEK,1626155191.2,7,BICYCLE,CYCLIST,OTHERS,417000.5,4731000.25,0.1,1.8,0.6,1.5,-1.5,1.0,-2.0,yizhuang#7-1_po\r\n";

    const LIGHTS: &str = "\u{feff}\n\ntimestamp,x,y,direction,lane_id,color_1,remain_1,color_2,remain_2,color_3,remain_3,intersect_id,city\n\
1626155191.2,417600.5,4731300.5,EAST,15312342_1_-1,GREEN,12.5,YELLOW,3,RED,60,yizhuang#4-1_po,PEK\n\
1626155191.2,417601.5,4731301.5,north,15132559_1_-2,red,0,green,20,,,yizhuang#4-1_po,PEK\n\
1626155191.3,417600.5,4731300.5,EAST,15312342_1_-1,GREEN,12.4,YELLOW,3,RED,60,yizhuang#4-1_po,PEK\n";

    fn payload(i: &Item) -> Value {
        serde_json::from_slice(&i.payload).unwrap()
    }

    fn parse_str(s: &str, topic: Option<&str>) -> Result<Vec<Item>, CsvError> {
        let b = s.as_bytes();
        let body = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
        assert!(is_v2xseq_csv(body), "not detected: {s:?}");
        parse(body, topic)
    }

    #[test]
    fn detection_wants_a_timestamp_header_and_not_json() {
        assert!(is_v2xseq_csv(b"\n  \n\"timestamp\",\"x\"\n"));
        assert!(is_v2xseq_csv(b"TimeStamp,id\n"));
        assert!(!is_v2xseq_csv(b"{\"timestamp\": 1}\n"));
        assert!(!is_v2xseq_csv(b"[{\"timestamp\": 1}]"));
        assert!(!is_v2xseq_csv(b"time,id\n1,2\n"));
        assert!(!is_v2xseq_csv(b""));
    }

    #[test]
    fn trajectory_rows_become_one_object_frame_per_time_and_intersection() {
        let items = parse_str(TRAJECTORIES, None).unwrap();
        let frames: Vec<(&str, Option<i64>, usize)> = items
            .iter()
            .map(|i| {
                let n = payload(i)["objects"].as_array().unwrap().len();
                (i.topic.as_str(), i.time_ms, n)
            })
            .collect();
        assert_eq!(
            frames,
            vec![
                (
                    "V2X/VEH/yizhuang_4-1_po/OBJECTS/UP",
                    Some(1_626_155_191_200),
                    2
                ),
                (
                    "V2X/VEH/yizhuang_7-1_po/OBJECTS/UP",
                    Some(1_626_155_191_200),
                    1
                ),
                (
                    "V2X/VEH/yizhuang_4-1_po/OBJECTS/UP",
                    Some(1_626_155_191_300),
                    1
                ),
            ]
        );
        let first = payload(&items[0]);
        assert_eq!(first["timestamp"], 1_626_155_191_200i64);
        assert_eq!(first["sensor"], "fused");
        assert_eq!(first["frame_id"], "v2xseq_map");
        assert_eq!(
            first["objects"][0],
            json!({"id": 100001, "type": "vehicle", "sub_type": "car",
                "position": {"x": 417630.072477, "y": 4731292.5, "z": 0.0}, "theta": 2.110587,
                "velocity": {"x": -0.04137, "y": 0.066339},
                "size": {"length": 4.193262, "width": 1.660346, "height": 1.516335}})
        );
        // Empty sub_type, z, theta and velocity are left out, not zeros.
        assert_eq!(
            first["objects"][1],
            json!({"id": 100002, "type": "pedestrian",
                "position": {"x": 417640.0, "y": 4731280.0}, "velocity": {},
                "size": {"length": 0.5, "width": 0.5, "height": 1.7}})
        );
        assert_eq!(payload(&items[1])["objects"][0]["type"], "bicycle");
    }

    #[test]
    fn text_ids_keep_their_text_beside_a_stable_hash() {
        let csv = "timestamp,id,type,sub_type,x,y,z,length,width,height,theta,v_x,v_y,intersect_id\n\
1626155191.2,a1b2-c3,VEHICLE,VAN,1,2,0,4,2,1.5,0,0,0,10\n\
1626155191.2,100001.0,VEHICLE,VAN,1,2,0,4,2,1.5,0,0,0,10\n";
        let items = parse_str(csv, None).unwrap();
        let p = payload(&items[0]);
        assert_eq!(p["objects"][0]["id"], text_id_hash("a1b2-c3"));
        assert_eq!(p["objects"][0]["id_text"], "a1b2-c3");
        assert!(text_id_hash("a1b2-c3") >= 0);
        assert_eq!(p["objects"][1]["id"], 100001);
        assert!(p["objects"][1].get("id_text").is_none());
        assert_eq!(items[0].topic, "V2X/VEH/10/OBJECTS/UP");
    }

    #[test]
    fn traffic_lights_become_spat_phases_with_chained_countdowns() {
        let items = parse_str(LIGHTS, None).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].topic, "V2X/RSU/yizhuang_4-1_po/SPAT/UP");
        assert_eq!(items[0].time_ms, Some(1_626_155_191_200));
        let p = payload(&items[0]);
        assert_eq!(p["timeStamp"], 1_626_155_191_200i64);
        let ix = &p["intersections"][0];
        assert_eq!(
            ix["intersectionId"]["id"],
            intersection_id("yizhuang#4-1_po")
        );
        let east = phase_id("east", "15312342_1_-1");
        assert_eq!(
            ix["phases"][0],
            json!({"id": east, "phaseStates": [
                {"light": 5, "timing": {"counting": {"startTime": 0, "likelyEndTime": 125}}},
                {"light": 7, "timing": {"counting": {"startTime": 125, "likelyEndTime": 155}}},
                {"light": 3, "timing": {"counting": {"startTime": 155, "likelyEndTime": 755}}}]})
        );
        // Lower-case words; the states stop at the first empty colour.
        assert_eq!(
            ix["phases"][1]["phaseStates"],
            json!([
                {"light": 3, "timing": {"counting": {"startTime": 0, "likelyEndTime": 0}}},
                {"light": 5, "timing": {"counting": {"startTime": 0, "likelyEndTime": 200}}}])
        );
        // The same lane gets the same phase id in the next frame (and in any other file).
        assert_eq!(
            payload(&items[1])["intersections"][0]["phases"][0]["id"],
            east
        );
    }

    #[test]
    fn ids_are_stable_and_in_range() {
        assert_eq!(intersection_id("1207"), 1207);
        let h = intersection_id("yizhuang#4-1_po");
        assert!((1..=i64::from(i32::MAX)).contains(&h));
        assert_eq!(h, intersection_id("yizhuang#4-1_po"));
        assert_ne!(
            phase_id("EAST", "15312342_1_-1"),
            phase_id("WEST", "15312342_1_-1")
        );
        assert_eq!(phase_id("East", "l1"), phase_id("EAST", "l1"));
        assert_eq!(
            source_id("yizhuang#4-1_po").as_deref(),
            Some("yizhuang_4-1_po")
        );
        assert_eq!(source_id("#12 路口").as_deref(), Some("12___"));
        assert_eq!(source_id("###"), None);
        assert_eq!(source_id(&"a".repeat(80)).map(|s| s.len()), Some(64));
    }

    #[test]
    fn a_given_topic_replaces_the_builtin_one() {
        let items = parse_str(LIGHTS, Some("v2x/v1/rsu/{source_id}/spat/up")).unwrap();
        assert_eq!(items[0].topic, "v2x/v1/rsu/yizhuang_4-1_po/spat/up");
        let items = parse_str(LIGHTS, Some("V2X/RSU/R1/SPAT/UP")).unwrap();
        assert!(items.iter().all(|i| i.topic == "V2X/RSU/R1/SPAT/UP"));
        // With a fixed topic an intersect_id that makes no source id is fine.
        let csv = "timestamp,x,y,direction,lane_id,color_1,remain_1,color_2,remain_2,color_3,remain_3,intersect_id\n\
1626155191.2,1,2,EAST,l1,RED,5,,,,,###\n";
        assert_eq!(parse_str(csv, Some("V2X/RSU/R1/SPAT/UP")).unwrap().len(), 1);
        let err = parse_str(csv, None).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("--topic"), "{err}");
    }

    #[test]
    fn malformed_files_are_errors_that_name_the_line() {
        let header =
            "timestamp,id,type,sub_type,x,y,z,length,width,height,theta,v_x,v_y,intersect_id";
        let row = "1626155191.2,1,VEHICLE,CAR,1,2,0,4,2,1.5,0,0,0,yizhuang#4-1_po";
        let err = |body: String| parse_str(&body, None).unwrap_err().to_string();

        let e = err("timestamp,id,type,x,y,intersect_id\n".into());
        assert!(
            e.contains("trajectory") && e.contains("sub_type, z, length"),
            "{e}"
        );
        let e = err("timestamp,x,y,color_1,intersect_id\n".into());
        assert!(
            e.contains("traffic-light") && e.contains("direction, lane_id"),
            "{e}"
        );
        let e = err("timestamp,foo\n1,2\n".into());
        assert!(e.contains("neither"), "{e}");
        let e = err(format!("{header},x\n"));
        assert!(e.contains("line 1") && e.contains("twice"), "{e}");
        let e = err(format!(
            "{header}\n{row}\n\n{}\n",
            row.replace(",1,2,0,", ",1,abc,0,")
        ));
        assert!(
            e.contains("line 4") && e.contains("y \"abc\" is not a number"),
            "{e}"
        );
        let e = err(format!(
            "\r\n \n{header}\n{}\n",
            row.replace(",1,2,0,", ",1,2,zero,")
        ));
        assert!(e.contains("line 4") && e.contains("z \"zero\""), "{e}");
        let e = err(format!("{header}\n{}\n", row.replace("VEHICLE", "")));
        assert!(e.contains("line 2") && e.contains("type is empty"), "{e}");
        let e = err(format!("{header}\n{}\n", row.replace(",4,2,", ",inf,2,")));
        assert!(e.contains("length \"inf\""), "{e}");
        let e = err(format!("{header}\n{row},extra\n"));
        assert!(e.contains("line 2") && e.contains("15 fields"), "{e}");
        let e = err(format!("{header}\n{}\n", row.replace("1626155191.2", "-3")));
        assert!(e.contains("not an epoch time"), "{e}");
        let e = err(format!("{header}\n{row}\n1626155191.3,\"unterminated\n"));
        assert!(e.contains("line 3"), "{e}");

        let lights = "timestamp,x,y,direction,lane_id,color_1,remain_1,color_2,remain_2,color_3,remain_3,intersect_id";
        let e = err(format!("{lights}\n1626155191.2,1,2,EAST,l1,3,5,,,,,i\n"));
        assert!(e.contains("color_1 \"3\" is not a light colour"), "{e}");
        let e = err(format!("{lights}\n1626155191.2,1,2,EAST,l1,RED,-1,,,,,i\n"));
        assert!(e.contains("remain_1 \"-1\" is negative"), "{e}");
        let e = err(format!(
            "{lights}\n1626155191.2,1,2,EAST,l1,RED,5,GREEN,,,,i\n"
        ));
        assert!(e.contains("remain_2 is empty"), "{e}");
    }

    #[test]
    fn replayed_frames_decode_through_the_real_schemas() {
        use crate::config::{TimeConfig, TimestampUnit};
        use crate::decode::{DecodeSettings, Decoder, Outcome, TimeWindow};
        use crate::route::{Router, builtin_routes};
        use arrow::array::AsArray;
        use arrow::datatypes::Float64Type;
        let router = Router::new("/", &builtin_routes()).unwrap();
        let settings = DecodeSettings {
            max_payload_bytes: 64 * 1024,
            quarantine_keep_bytes: 1024,
            window: TimeWindow::from_config(&TimeConfig::default()).unwrap(),
            unit: TimestampUnit::Us,
        };
        let mut d = Decoder::new(router, crate::schema::load_all(None).unwrap(), settings).unwrap();
        let recv_us = 1_800_000_000_000_000;
        let mut rows = 0;
        for i in parse_str(TRAJECTORIES, None)
            .unwrap()
            .iter()
            .chain(&parse_str(LIGHTS, None).unwrap())
        {
            match d.decode(&i.topic, &i.payload, recv_us) {
                Outcome::Filed { rows: n, .. } => rows += n,
                other => panic!(
                    "{} {}: {other:?}",
                    i.topic,
                    String::from_utf8_lossy(&i.payload)
                ),
            }
        }
        // 4 objects; 3 + 2 + 3 phase states.
        assert_eq!(rows, 4 + 8);
        let mut lights = Vec::new();
        for b in d.take_batches() {
            let col = |name: &str| b.batch.column_by_name(name).unwrap().clone();
            match &*b.table {
                "spat_phase" => {
                    let light = col("light");
                    let end = col("likely_end_time_s");
                    let (light, end) =
                        (light.as_string::<i32>(), end.as_primitive::<Float64Type>());
                    for i in 0..b.batch.num_rows() {
                        lights.push((light.value(i).to_string(), end.value(i)));
                    }
                }
                "vehicle_object" => {
                    let types = col("object_type");
                    let types = types.as_string::<i32>();
                    assert!(
                        types
                            .iter()
                            .flatten()
                            .all(|t| ["vehicle", "pedestrian", "bicycle"].contains(&t))
                    );
                }
                crate::message_index::TABLE => {}
                other => panic!("rows in {other}"),
            }
        }
        lights.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(lights[0], ("red".to_string(), 0.0));
        assert!(lights.contains(&("permissive_green".to_string(), 12.5)));
        assert!(lights.contains(&("yellow".to_string(), 15.5)));
    }
}
