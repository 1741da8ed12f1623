//! Compiles a schema profile into a plan: a tree of the JSON paths it reads, resolved once, so
//! decoding a message does no per-field lookups by name beyond matching object keys.
//!
//! Paths are dotted; `name[]` marks a list, and a leading `[]` a payload that is a list at the
//! top level. Every list on a field's path must lie on the profile's `rows` path: the lists on
//! that path are the explode levels (1 = outermost), level 0 is the message itself.

use std::collections::HashMap;

use crate::schema::{ColumnType, FieldDef, KindSchema, ProfileDef, SchemaError, TimeFormat};

/// Where a leaf value lands: the explode level of its record and its index in that record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub level: u8,
    pub index: u16,
}

/// One node of the path tree.
#[derive(Debug, Default)]
pub struct Node {
    /// This node's value is read into a slot.
    pub leaf: Option<Slot>,
    /// Object members we read; anything else is skipped.
    pub children: Vec<(Box<str>, Node)>,
    /// This node is a list whose elements are records of the given level.
    pub list: Option<(u8, Box<Node>)>,
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
}

#[derive(Debug)]
pub struct ColumnPlan {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub source: ColumnSource,
    pub scale: Option<f64>,
    /// `1 / scale` when that is a whole number: dividing by it gives the correctly rounded
    /// result (355 / 50 = 7.1, where 355 * 0.02 = 7.1000000000000005).
    pub divisor: Option<f64>,
    pub offset: Option<f64>,
    pub unavailable: Vec<f64>,
    pub unavailable_at_or_above: Option<f64>,
    /// Normalisation table: lower-case code or name -> canonical name.
    pub enum_map: Option<HashMap<String, std::sync::Arc<str>>>,
    pub time_format: TimeFormat,
}

#[derive(Debug)]
pub struct TimePlan {
    pub slot: Slot,
    pub format: TimeFormat,
    pub moy: Option<Slot>,
}

/// A compiled profile (one part of it, when it has parts).
#[derive(Debug)]
pub struct Plan {
    pub root: Node,
    /// Slots per record at each level.
    pub widths: Vec<usize>,
    /// Level whose records become rows.
    pub row_level: u8,
    pub columns: Vec<ColumnPlan>,
    pub event_time: Vec<TimePlan>,
    pub event_time_fallback_recv: bool,
    pub source_id: Vec<Slot>,
}

struct Builder<'a> {
    kind: &'a str,
    profile: &'a str,
    root: Node,
    widths: Vec<usize>,
    rows_lists: Vec<String>,
    slots: HashMap<String, Slot>,
}

impl Builder<'_> {
    fn err(&self, reason: String) -> SchemaError {
        SchemaError::Invalid {
            kind: self.kind.to_string(),
            reason: format!("profile {}: {reason}", self.profile),
        }
    }

    /// Adds a path to the tree and returns its slot (shared when two columns read one path).
    fn leaf(&mut self, path: &str) -> Result<Slot, SchemaError> {
        if let Some(s) = self.slots.get(path) {
            return Ok(*s);
        }
        let segments = split_path(path).ok_or_else(|| self.err(format!("bad path {path:?}")))?;
        // Check that every list on the path is a prefix of the rows path.
        let mut prefix = String::new();
        let mut level = 0u8;
        for (name, is_list) in &segments {
            if !prefix.is_empty() && !name.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(name);
            if *is_list {
                prefix.push_str("[]");
                if self.rows_lists.get(level as usize) != Some(&prefix) {
                    return Err(self.err(format!(
                        "path {path:?} goes through a list that is not on the rows path"
                    )));
                }
                level += 1;
            }
        }
        if segments.last().is_some_and(|(_, l)| *l) {
            return Err(self.err(format!("path {path:?} ends in a list")));
        }
        let index = self.widths[level as usize];
        self.widths[level as usize] += 1;
        let slot = Slot {
            level,
            index: u16::try_from(index).map_err(|_| self.err("too many fields".into()))?,
        };
        let node = walk_mut(&mut self.root, &segments);
        node.leaf = Some(slot);
        self.slots.insert(path.to_string(), slot);
        Ok(slot)
    }
}

/// Walks (creating as needed) the nodes of a split path and returns the last one.
fn walk_mut<'n>(root: &'n mut Node, segments: &[(String, bool)]) -> &'n mut Node {
    let mut node = root;
    let mut lvl = 0u8;
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
            lvl += 1;
            let (_, elem) = node.list.get_or_insert_with(|| (lvl, Box::default()));
            node = elem.as_mut();
        }
    }
    node
}

/// Splits `a.b[].c` into `[("a", false), ("b", true), ("c", false)]`; `[]` alone is the root.
fn split_path(path: &str) -> Option<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for (i, part) in path.split('.').enumerate() {
        let (name, is_list) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        if name.is_empty() && !(is_list && i == 0) {
            return None;
        }
        if name.contains(['[', ']']) {
            return None;
        }
        out.push((name.to_string(), is_list));
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
    if lists.len() > 250 {
        return Err(SchemaError::Invalid {
            kind: schema.kind.clone(),
            reason: "too many levels".into(),
        });
    }
    let mut b = Builder {
        kind: &schema.kind,
        profile: name,
        root: Node::default(),
        widths: vec![0; lists.len() + 1],
        rows_lists: lists,
        slots: HashMap::new(),
    };
    if let Some(segments) = split_path(&p.rows) {
        walk_mut(&mut b.root, &segments);
    }
    let mut columns = Vec::with_capacity(schema.columns.len());
    for c in &schema.columns {
        let def = p.fields.get(&c.name).map(|f| f.def()).unwrap_or_default();
        let source = if let Some(v) = &def.constant {
            ColumnSource::Const(constant(v))
        } else {
            let paths = def.path.paths();
            if paths.is_empty() {
                ColumnSource::Absent
            } else {
                ColumnSource::Slots(
                    paths
                        .iter()
                        .map(|path| b.leaf(path))
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        columns.push(column_plan(schema, c, def, source));
    }
    let mut event_time = Vec::new();
    for t in &p.event_time {
        let slot = b.leaf(&t.path)?;
        let moy = t.moy.as_deref().map(|m| b.leaf(m)).transpose()?;
        event_time.push(TimePlan {
            slot,
            format: t.format,
            moy,
        });
    }
    let source_id = match &p.source_id {
        Some(spec) => spec
            .paths()
            .iter()
            .map(|path| b.leaf(path))
            .collect::<Result<_, _>>()?,
        None => vec![],
    };
    let row_level = (b.widths.len() - 1) as u8;
    Ok(Plan {
        root: b.root,
        widths: b.widths,
        row_level,
        columns,
        event_time,
        event_time_fallback_recv: p.event_time_fallback_recv,
        source_id,
    })
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
) -> ColumnPlan {
    let enum_map = def
        .enum_name
        .as_ref()
        .and_then(|e| schema.enums.get(e))
        .map(|m| {
            let mut map = HashMap::new();
            for (code, name) in m {
                let canonical: std::sync::Arc<str> = name.as_str().into();
                map.insert(code.to_ascii_lowercase(), canonical.clone());
                map.insert(name.to_ascii_lowercase(), canonical);
            }
            map
        });
    ColumnPlan {
        name: c.name.clone(),
        ty: c.ty,
        nullable: c.nullable,
        source,
        scale: def.scale,
        divisor: def.scale.and_then(|s| {
            let d = 1.0 / s;
            (s != 0.0 && d.is_finite() && (d - d.round()).abs() < 1e-9 && d.round() > 1.0)
                .then(|| d.round())
        }),
        offset: def.offset,
        unavailable: def.unavailable,
        unavailable_at_or_above: def.unavailable_at_or_above,
        enum_map,
        time_format: def.time_format.unwrap_or(TimeFormat::Auto),
    }
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
        assert!(split_path("a[0]").is_none());
    }
}
