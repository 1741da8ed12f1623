//! Compiles a schema profile into a plan: a tree of the JSON paths it reads, resolved once, so
//! decoding a message does no per-field lookups by name beyond matching object keys.
//!
//! Paths are dotted; `name[]` marks a list, and a leading `[]` a payload that is a list at the
//! top level. Every list on a field's path must lie on the profile's `rows` path: the lists on
//! that path are the explode levels (1 = outermost), level 0 is the message itself.

use std::collections::HashMap;
use std::sync::Arc;

use crate::schema::{
    ColumnType, FieldDef, FieldSpec, KindSchema, PositionComponent, ProfileDef, SchemaError,
    TimeFormat,
};

/// Where a leaf value lands: the level of its record and its index in that record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub level: u8,
    pub index: u16,
}

/// A list in the payload whose elements are records of `level`.
#[derive(Debug)]
pub struct ListNode {
    pub level: u8,
    pub elem: Box<Node>,
    /// The outermost list of the profile's `rows` (whether it appeared at all decides between
    /// "nothing seen" and "wrong shape").
    pub rows_outer: bool,
    /// For a list beyond the rows: a slot of the enclosing record marking that the list was
    /// present, so that an absent list (null) and an empty one (`[]`) stay apart.
    pub seen: Option<Slot>,
}

/// One node of the path tree.
#[derive(Debug, Default)]
pub struct Node {
    /// This node's value is read into a slot (an object with children read below it is
    /// recorded as present).
    pub leaf: Option<Slot>,
    /// Object members we read; anything else is skipped.
    pub children: Vec<(Box<str>, Node)>,
    /// This node is a list.
    pub list: Option<ListNode>,
}

impl Node {
    pub fn child(&self, key: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, n)| n)
    }
}

/// A constant column value.
#[derive(Debug, Clone)]
pub enum Constant {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// How a column gets its value in one profile.
#[derive(Debug)]
pub enum ColumnSource {
    /// Not provided by this profile: null.
    Absent,
    Const(Constant),
    /// Alternatives, first present wins.
    Slots(Vec<Slot>),
    /// The names of the set flags (or the first present alternative, for a choice) of the
    /// object in `object`.
    Flags {
        object: Slot,
        flags: Vec<(Arc<str>, Slot)>,
        choice: bool,
    },
    /// The names of the set bits of a bit string (alternative paths, first present wins).
    Bits {
        slots: Vec<Slot>,
        names: Vec<Arc<str>>,
    },
    /// A coordinate of the profile's position `index` (in [`Plan::positions`]).
    Position {
        index: usize,
        component: PositionComponent,
    },
}

#[derive(Debug)]
pub struct ColumnPlan {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub source: ColumnSource,
    /// For a list column: the level whose records are the list's elements. `None` for a
    /// scalar column, and for a `list<utf8>` of the flags of one object.
    pub collect: Option<u8>,
    pub scale: Option<f64>,
    /// `1 / scale` when that is a whole number: dividing by it gives the correctly rounded
    /// result (355 / 50 = 7.1, where 355 * 0.02 = 7.1000000000000005).
    pub divisor: Option<f64>,
    pub offset: Option<f64>,
    pub unavailable: Vec<f64>,
    pub unavailable_at_or_above: Option<f64>,
    /// Normalisation table: lower-case code or name -> canonical name.
    pub enum_map: Option<crate::FastMap<String, Arc<str>>>,
    pub time_format: TimeFormat,
    pub since_event: bool,
}

/// A compiled [`crate::schema::PositionDef`]. The values are float plans (path, scale,
/// unavailable) converted like columns.
#[derive(Debug)]
pub struct PositionPlan {
    pub name: String,
    pub origin_lat: ColumnPlan,
    pub origin_lon: ColumnPlan,
    pub east: Option<(ColumnPlan, ColumnPlan)>,
    pub delta: Option<(ColumnPlan, ColumnPlan)>,
    pub absolute: Option<(ColumnPlan, ColumnPlan)>,
    pub chain: bool,
    /// The level of the points when they are the elements of a list (a lane's nodes);
    /// `None`: one point per row.
    pub collect: Option<u8>,
}

#[derive(Debug)]
pub struct TimePlan {
    pub slot: Slot,
    pub format: TimeFormat,
    pub moy: Option<Slot>,
    pub anchor: Option<Slot>,
    /// `date_time_parts`: year, month, day, hour, minute, second (ms), offset (minutes).
    pub parts: Option<[Slot; 7]>,
}

/// One level of records: the message (0), each list of the rows path (1..=row_level), then
/// the lists read beyond the rows (list columns).
#[derive(Debug, Clone, Copy)]
pub struct LevelInfo {
    /// Slots per record.
    pub width: usize,
    /// Level of the enclosing record.
    pub parent: u8,
    /// For a list beyond the rows: the enclosing record's slot marking the list present.
    pub seen: Option<Slot>,
}

/// A compiled profile (one part of it, when it has parts).
#[derive(Debug)]
pub struct Plan {
    pub root: Node,
    pub levels: Vec<LevelInfo>,
    /// Level whose records become rows.
    pub row_level: u8,
    pub columns: Vec<ColumnPlan>,
    pub positions: Vec<PositionPlan>,
    pub event_time: Vec<TimePlan>,
    pub event_time_fallback_recv: bool,
    pub source_id: Vec<Slot>,
    /// Level-0 slots that must all be present for this profile to be detected.
    pub detect: Vec<Slot>,
}

/// One list on a path: its level, whether it is the outermost rows list, and (beyond the
/// rows) its presence slot.
type ListStep = (u8, bool, Option<Slot>);

struct Builder<'a> {
    kind: &'a str,
    profile: &'a str,
    root: Node,
    levels: Vec<LevelInfo>,
    rows_lists: Vec<String>,
    /// List prefix beyond the rows path -> its level.
    beyond: HashMap<String, u8>,
    slots: HashMap<String, Slot>,
}

impl Builder<'_> {
    fn err(&self, reason: String) -> SchemaError {
        SchemaError::Invalid {
            kind: self.kind.to_string(),
            reason: format!("profile {}: {reason}", self.profile),
        }
    }

    fn new_slot(&mut self, level: u8) -> Result<Slot, SchemaError> {
        let l = &mut self.levels[level as usize];
        let index = l.width;
        l.width += 1;
        Ok(Slot {
            level,
            index: u16::try_from(index).map_err(|_| self.err("too many fields".into()))?,
        })
    }

    /// Adds a path to the tree and returns its slot (shared when two columns read one path).
    /// Every list on the path must be a list of the rows path, except, with `beyond`, one
    /// list after them whose elements make a list value (the path may then end in `[]`: the
    /// elements themselves).
    fn leaf(&mut self, path: &str, beyond: bool) -> Result<Slot, SchemaError> {
        if let Some(s) = self.slots.get(path) {
            return Ok(*s);
        }
        let segments = split_path(path).ok_or_else(|| self.err(format!("bad path {path:?}")))?;
        let mut prefix = String::new();
        let mut level = 0u8;
        let mut rows_done = 0usize;
        let mut collected = false;
        let mut steps: Vec<ListStep> = Vec::new();
        for (name, is_list) in &segments {
            if !prefix.is_empty() && !name.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(name);
            if !*is_list {
                continue;
            }
            prefix.push_str("[]");
            if !collected && self.rows_lists.get(rows_done) == Some(&prefix) {
                rows_done += 1;
                level = rows_done as u8;
                steps.push((level, rows_done == 1, None));
            } else if beyond && !collected {
                let (l, seen) = self.beyond_level(&prefix, level)?;
                level = l;
                collected = true;
                steps.push((level, false, Some(seen)));
            } else if beyond {
                return Err(self.err(format!(
                    "path {path:?} goes through two lists beyond the rows path"
                )));
            } else {
                return Err(self.err(format!(
                    "path {path:?} goes through a list that is not on the rows path \
                     (only a list column may)"
                )));
            }
        }
        if segments.last().is_some_and(|(_, l)| *l) && !collected {
            return Err(self.err(format!("path {path:?} ends in a list")));
        }
        let slot = self.new_slot(level)?;
        let node = walk_mut(&mut self.root, &segments, &steps);
        node.leaf = Some(slot);
        self.slots.insert(path.to_string(), slot);
        Ok(slot)
    }

    /// The level of a list beyond the rows path, created on first use under `parent`.
    fn beyond_level(&mut self, prefix: &str, parent: u8) -> Result<(u8, Slot), SchemaError> {
        if let Some(&l) = self.beyond.get(prefix) {
            let seen = self.slots[&format!("{prefix}#seen")];
            return Ok((l, seen));
        }
        if self.levels.len() >= 250 {
            return Err(self.err("too many lists".into()));
        }
        let level = self.levels.len() as u8;
        self.levels.push(LevelInfo {
            width: 0,
            parent,
            seen: None,
        });
        let seen = self.new_slot(parent)?;
        self.levels[level as usize].seen = Some(seen);
        self.beyond.insert(prefix.to_string(), level);
        self.slots.insert(format!("{prefix}#seen"), seen);
        Ok((level, seen))
    }

    /// A float value plan for a position's origin or point.
    fn value(
        &mut self,
        schema: &KindSchema,
        spec: &FieldSpec,
        beyond: bool,
    ) -> Result<ColumnPlan, SchemaError> {
        let def = spec.def();
        let slots = def
            .path
            .paths()
            .iter()
            .map(|p| self.leaf(p, beyond))
            .collect::<Result<Vec<_>, _>>()?;
        if slots.is_empty() {
            return Err(self.err("a position value has no path".into()));
        }
        let c = crate::schema::ColumnDef {
            name: def.path.paths().first().copied().unwrap_or_default().into(),
            ty: ColumnType::Float64,
            unit: String::new(),
            nullable: true,
            doc: String::new(),
        };
        column_plan(schema, &c, def, ColumnSource::Slots(slots), None)
            .map_err(|reason| self.err(reason))
    }

    fn position(
        &mut self,
        schema: &KindSchema,
        name: &str,
        p: &ProfileDef,
        positions: &mut Vec<PositionPlan>,
    ) -> Result<usize, SchemaError> {
        if let Some(i) = positions.iter().position(|x| x.name == name) {
            return Ok(i);
        }
        let def = p
            .positions
            .get(name)
            .ok_or_else(|| self.err(format!("no position {name}")))?;
        let origin_lat = self.value(schema, &def.origin_lat, false)?;
        let origin_lon = self.value(schema, &def.origin_lon, false)?;
        let mut pair = |a: &Option<FieldSpec>,
                        b: &Option<FieldSpec>|
         -> Result<Option<(ColumnPlan, ColumnPlan)>, SchemaError> {
            match (a, b) {
                (Some(a), Some(b)) => Ok(Some((
                    self.value(schema, a, true)?,
                    self.value(schema, b, true)?,
                ))),
                _ => Ok(None),
            }
        };
        let east = pair(&def.east, &def.north)?;
        let delta = pair(&def.delta_lat, &def.delta_lon)?;
        let absolute = pair(&def.lat, &def.lon)?;
        let mut levels = Vec::new();
        for (a, b) in [&east, &delta, &absolute].into_iter().flatten() {
            levels.extend(slots_of(a).chain(slots_of(b)).map(|s| s.level));
        }
        levels.sort_unstable();
        levels.dedup();
        let row_level = self.rows_lists.len() as u8;
        let collect = match levels.as_slice() {
            [l] if *l > row_level => Some(*l),
            ls if ls.iter().all(|l| *l <= row_level) => None,
            _ => {
                return Err(self.err(format!(
                    "position {name}: every point value must come from the same list"
                )));
            }
        };
        positions.push(PositionPlan {
            name: name.to_string(),
            origin_lat,
            origin_lon,
            east,
            delta,
            absolute,
            chain: def.chain,
            collect,
        });
        Ok(positions.len() - 1)
    }
}

fn slots_of(c: &ColumnPlan) -> impl Iterator<Item = Slot> + '_ {
    match &c.source {
        ColumnSource::Slots(s) => s.iter().copied(),
        _ => [].iter().copied(),
    }
}

/// Walks (creating as needed) the nodes of a split path and returns the last one. `steps`
/// gives, for each list on the path in order, its level and flags.
fn walk_mut<'n>(
    root: &'n mut Node,
    segments: &[(String, bool)],
    steps: &[ListStep],
) -> &'n mut Node {
    let mut node = root;
    let mut step = steps.iter();
    for (name, is_list) in segments {
        if !name.is_empty() {
            let pos = match node.children.iter().position(|(k, _)| k.as_ref() == name) {
                Some(p) => p,
                None => {
                    node.children.push((name.clone().into(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[pos].1;
        }
        if *is_list {
            let &(level, rows_outer, seen) = step.next().expect("one step per list segment");
            let list = node.list.get_or_insert_with(|| ListNode {
                level,
                elem: Box::default(),
                rows_outer,
                seen,
            });
            node = list.elem.as_mut();
        }
    }
    node
}

/// Splits `a.b[].c` into `[("a", false), ("b", true), ("c", false)]`; `[]` alone is the root.
/// `name[N]` reads element N of a list (`geometry.coordinates[1]`): a child named `[N]`.
fn split_path(path: &str) -> Option<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for (i, part) in path.split('.').enumerate() {
        let (name, is_list) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        let (name, index) = match name.strip_suffix(']').and_then(|n| n.split_once('[')) {
            Some((n, digits))
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (n, Some(digits.parse::<u32>().ok()?))
            }
            _ => (name, None),
        };
        if name.is_empty() && !(is_list && i == 0) {
            return None;
        }
        if name.contains(['[', ']', '#']) {
            return None;
        }
        match index {
            Some(n) => {
                out.push((name.to_string(), false));
                out.push((format!("[{n}]"), is_list));
            }
            None => out.push((name.to_string(), is_list)),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The list prefixes of a rows path: `a.b[].c[]` -> `["a.b[]", "a.b[].c[]"]`.
fn rows_lists(rows: &str) -> Option<Vec<String>> {
    if rows.is_empty() {
        return Some(vec![]);
    }
    let segments = split_path(rows)?;
    if !segments.last()?.1 {
        return None;
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for (name, is_list) in segments {
        if !prefix.is_empty() && !name.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(&name);
        if is_list {
            prefix.push_str("[]");
            out.push(prefix.clone());
        }
    }
    Some(out)
}

/// Compiles one profile (without parts) of a schema.
pub fn compile(schema: &KindSchema, name: &str, p: &ProfileDef) -> Result<Plan, SchemaError> {
    let lists = rows_lists(&p.rows).ok_or_else(|| SchemaError::Invalid {
        kind: schema.kind.clone(),
        reason: format!("profile {name}: rows {:?} must end in a list `[]`", p.rows),
    })?;
    if lists.len() > 200 {
        return Err(SchemaError::Invalid {
            kind: schema.kind.clone(),
            reason: "too many levels".into(),
        });
    }
    let levels = (0..=lists.len())
        .map(|l| LevelInfo {
            width: 0,
            parent: l.saturating_sub(1) as u8,
            seen: None,
        })
        .collect();
    let mut b = Builder {
        kind: &schema.kind,
        profile: name,
        root: Node::default(),
        levels,
        rows_lists: lists,
        beyond: HashMap::new(),
        slots: HashMap::new(),
    };
    let row_level = b.rows_lists.len() as u8;
    if let Some(segments) = split_path(&p.rows) {
        let steps: Vec<ListStep> = (1..=row_level).map(|l| (l, l == 1, None)).collect();
        walk_mut(&mut b.root, &segments, &steps);
    }
    let mut positions = Vec::new();
    let mut columns = Vec::with_capacity(schema.columns.len());
    for c in &schema.columns {
        let def = p.fields.get(&c.name).map(|f| f.def()).unwrap_or_default();
        let list = c.ty.is_list();
        let source = if let Some(v) = &def.constant {
            ColumnSource::Const(constant(v))
        } else if let (Some(pos), Some(component)) = (&def.position, def.component) {
            let index = b.position(schema, pos, p, &mut positions)?;
            ColumnSource::Position { index, component }
        } else if let Some(flags) = def.flags.as_ref().or(def.choice.as_ref()) {
            let base = def
                .path
                .paths()
                .first()
                .copied()
                .unwrap_or_default()
                .to_string();
            let object = b.leaf(&base, list)?;
            let mut out = Vec::with_capacity(flags.len());
            for (flag, rel) in flags {
                out.push((
                    Arc::from(flag.as_str()),
                    b.leaf(&format!("{base}.{rel}"), list)?,
                ));
            }
            ColumnSource::Flags {
                object,
                flags: out,
                choice: def.choice.is_some(),
            }
        } else if let Some(names) = &def.bits {
            let slots = def
                .path
                .paths()
                .iter()
                .map(|path| b.leaf(path, list))
                .collect::<Result<_, _>>()?;
            ColumnSource::Bits {
                slots,
                names: names.iter().map(|n| Arc::from(n.as_str())).collect(),
            }
        } else {
            let paths = def.path.paths();
            if paths.is_empty() {
                ColumnSource::Absent
            } else {
                ColumnSource::Slots(
                    paths
                        .iter()
                        .map(|path| b.leaf(path, list))
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        let collect = match &source {
            ColumnSource::Position { index, .. } => positions[*index].collect,
            ColumnSource::Slots(slots) => level_beyond(slots.iter(), row_level, &b, &c.name)?,
            ColumnSource::Flags { object, flags, .. } => level_beyond(
                std::iter::once(object).chain(flags.iter().map(|(_, s)| s)),
                row_level,
                &b,
                &c.name,
            )?,
            ColumnSource::Bits { slots, .. } => level_beyond(slots.iter(), row_level, &b, &c.name)?,
            ColumnSource::Absent | ColumnSource::Const(_) => None,
        };
        let flags_list = matches!(
            source,
            ColumnSource::Flags { .. } | ColumnSource::Bits { .. }
        ) && list;
        if list && collect.is_none() && !flags_list && !matches!(source, ColumnSource::Absent) {
            return Err(b.err(format!(
                "list column {} needs a path through a list beyond the rows path",
                c.name
            )));
        }
        if !list && collect.is_some() {
            return Err(b.err(format!(
                "column {} goes through a list beyond the rows path: declare it as a list type",
                c.name
            )));
        }
        columns.push(column_plan(schema, c, def, source, collect).map_err(|r| b.err(r))?);
    }
    let mut event_time = Vec::new();
    for t in &p.event_time {
        let slot = b.leaf(&t.path, false)?;
        let moy = t.moy.as_deref().map(|m| b.leaf(m, false)).transpose()?;
        let anchor = t.anchor.as_deref().map(|m| b.leaf(m, false)).transpose()?;
        let parts = match t.format {
            TimeFormat::DateTimeParts => {
                let mut parts = [slot; 7];
                for (i, part) in ["year", "month", "day", "hour", "minute", "second", "offset"]
                    .iter()
                    .enumerate()
                {
                    parts[i] = b.leaf(&format!("{}.{part}", t.path), false)?;
                }
                Some(parts)
            }
            _ => None,
        };
        event_time.push(TimePlan {
            slot,
            format: t.format,
            moy,
            anchor,
            parts,
        });
    }
    let source_id = match &p.source_id {
        Some(spec) => spec
            .paths()
            .iter()
            .map(|path| b.leaf(path, false))
            .collect::<Result<_, _>>()?,
        None => vec![],
    };
    let detect = p
        .detect
        .iter()
        .map(|path| b.leaf(path, false))
        .collect::<Result<Vec<_>, _>>()?;
    if detect.iter().any(|s| s.level != 0) {
        return Err(b.err("detect paths must lie outside every list".into()));
    }
    Ok(Plan {
        root: b.root,
        levels: b.levels,
        row_level,
        columns,
        positions,
        event_time,
        event_time_fallback_recv: p.event_time_fallback_recv,
        source_id,
        detect,
    })
}

/// The one level beyond the rows that `slots` read, if any; an error when they read two.
fn level_beyond<'s>(
    slots: impl Iterator<Item = &'s Slot>,
    row_level: u8,
    b: &Builder,
    column: &str,
) -> Result<Option<u8>, SchemaError> {
    let mut found: Option<u8> = None;
    let mut scalar = false;
    for s in slots {
        if s.level > row_level {
            if found.is_some_and(|f| f != s.level) {
                return Err(b.err(format!("column {column} reads two different lists")));
            }
            found = Some(s.level);
        } else {
            scalar = true;
        }
    }
    if found.is_some() && scalar {
        return Err(b.err(format!(
            "column {column} mixes values inside and outside its list"
        )));
    }
    Ok(found)
}

fn constant(v: &toml::Value) -> Constant {
    match v {
        toml::Value::Boolean(b) => Constant::Bool(*b),
        toml::Value::Integer(i) => Constant::Int(*i),
        toml::Value::Float(f) => Constant::Float(*f),
        toml::Value::String(s) => Constant::Str(s.clone()),
        _ => Constant::Null,
    }
}

fn column_plan(
    schema: &KindSchema,
    c: &crate::schema::ColumnDef,
    def: FieldDef,
    source: ColumnSource,
    collect: Option<u8>,
) -> Result<ColumnPlan, String> {
    let enum_map = def
        .enum_name
        .as_ref()
        .and_then(|e| schema.enums.get(e))
        .map(|m| {
            let mut map = crate::FastMap::default();
            for (code, name) in m {
                let canonical: Arc<str> = name.as_str().into();
                map.insert(code.to_ascii_lowercase(), canonical.clone());
                map.insert(name.to_ascii_lowercase(), canonical);
            }
            map
        });
    let time_format = def.time_format.unwrap_or(TimeFormat::Auto);
    if def.since_event && time_format == TimeFormat::DateTimeParts {
        return Err(format!(
            "column {}: since_event takes a time value, not date_time_parts",
            c.name
        ));
    }
    Ok(ColumnPlan {
        name: c.name.clone(),
        ty: c.ty,
        nullable: c.nullable,
        source,
        collect,
        scale: def.scale,
        divisor: def.divide.or_else(|| {
            def.scale.and_then(|s| {
                let d = 1.0 / s;
                (s != 0.0 && d.is_finite() && (d - d.round()).abs() < 1e-9 && d.round() > 1.0)
                    .then(|| d.round())
            })
        }),
        offset: def.offset,
        unavailable: def.unavailable,
        unavailable_at_or_above: def.unavailable_at_or_above,
        enum_map,
        time_format,
        since_event: def.since_event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_prefixes() {
        assert_eq!(
            rows_lists("content.rsms[].participants[]").unwrap(),
            vec!["content.rsms[]", "content.rsms[].participants[]"]
        );
        assert_eq!(
            rows_lists("[].content[]").unwrap(),
            vec!["[]", "[].content[]"]
        );
        assert!(rows_lists("a.b").is_none());
    }

    #[test]
    fn split_rejects_garbage() {
        assert!(split_path("a..b").is_none());
        assert!(split_path("a.[]").is_none());
        assert!(split_path("a[x]").is_none());
        assert_eq!(
            split_path("g.coordinates[1]").unwrap(),
            vec![
                ("g".to_string(), false),
                ("coordinates".to_string(), false),
                ("[1]".to_string(), false)
            ]
        );
    }
}
