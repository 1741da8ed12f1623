//! Streams a JSON payload through a plan's path tree, keeping only the values the plan reads.
//!
//! No `serde_json::Value` tree is built: the deserializer walks the bytes once, members the
//! plan does not know are skipped with `IgnoredAny`, strings without escapes are borrowed from
//! the payload. Values land in per-level records so that a field outside the exploded list
//! (a frame's `refPos`) is shared by every row under it, whatever the key order.
//!
//! Tolerated on the way: duplicate keys (the last wins), a single object where a list is
//! expected (one element), a one-element list where an object is expected, `null` lists.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::plan::{Node, Plan, Slot};

/// A leaf value as it appeared in the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'de, str>),
    /// An object where a value was expected.
    Object,
    /// A list where a value was expected.
    Array,
}

impl Scalar<'_> {
    pub fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::I64(_) | Scalar::U64(_) | Scalar::F64(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Object => "an object",
            Scalar::Array => "a list",
        }
    }
}

/// The records of one level.
#[derive(Debug)]
pub struct Level<'de> {
    width: usize,
    /// Level of the enclosing records.
    parent_level: u8,
    /// For a list beyond the rows: the slot marking it present in the enclosing record.
    seen: Option<Slot>,
    values: Vec<Scalar<'de>>,
    /// Per record, the index of its enclosing record (non-decreasing: a record's elements
    /// are all read while it is the current one).
    parents: Vec<u32>,
    current: u32,
}

/// What one pass over a payload found.
#[derive(Debug)]
pub struct Records<'de> {
    levels: Vec<Level<'de>>,
    row_level: usize,
    /// The first structural problem (a list where an object belongs, ...).
    pub error: Option<String>,
    /// Whether the outermost exploded list appeared at all (even empty or null).
    pub rows_list_seen: bool,
    /// Object members the plan does not read (counted, then skipped).
    pub ignored_fields: u64,
}

impl<'de> Records<'de> {
    fn new(plan: &Plan) -> Records<'de> {
        let mut levels: Vec<Level<'de>> = plan
            .levels
            .iter()
            .map(|l| Level {
                width: l.width,
                parent_level: l.parent,
                seen: l.seen,
                values: Vec::new(),
                parents: Vec::new(),
                current: 0,
            })
            .collect();
        // Level 0: the message itself, always one record.
        let width0 = levels[0].width;
        levels[0].values.resize(width0, Scalar::Null);
        levels[0].parents.push(0);
        Records {
            levels,
            row_level: plan.row_level as usize,
            error: None,
            rows_list_seen: false,
            ignored_fields: 0,
        }
    }

    fn push_record(&mut self, level: u8) {
        let level = level as usize;
        let parent_level = self.levels[level].parent_level as usize;
        let parent = self.levels[parent_level].current;
        let l = &mut self.levels[level];
        l.current = l.parents.len() as u32;
        l.parents.push(parent);
        let width = l.width;
        l.values.resize(l.values.len() + width, Scalar::Null);
    }

    fn set(&mut self, slot: Slot, v: Scalar<'de>) {
        let l = &mut self.levels[slot.level as usize];
        let i = l.current as usize * l.width + slot.index as usize;
        if let Some(cell) = l.values.get_mut(i) {
            *cell = v;
        }
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }

    /// Number of rows: records at the row level.
    pub fn row_count(&self) -> usize {
        self.levels[self.row_level].parents.len()
    }

    /// Record index at every level of the rows path for row `row`, outermost first.
    pub fn lineage(&self, row: usize, out: &mut Vec<u32>) {
        out.clear();
        out.resize(self.row_level + 1, 0);
        let mut idx = row as u32;
        for level in (0..=self.row_level).rev() {
            out[level] = idx;
            idx = self.levels[level]
                .parents
                .get(idx as usize)
                .copied()
                .unwrap_or(0);
        }
    }

    /// The value of `slot` for the row whose lineage is given (`slot` on the rows path).
    pub fn get(&self, slot: Slot, lineage: &[u32]) -> &Scalar<'de> {
        let l = &self.levels[slot.level as usize];
        let record = lineage.get(slot.level as usize).copied().unwrap_or(0);
        let i = record as usize * l.width + slot.index as usize;
        l.values.get(i).unwrap_or(&Scalar::Null)
    }

    /// The records of a level beyond the rows (a list value) that belong to the row whose
    /// lineage is given.
    pub fn elements(&self, level: u8, lineage: &[u32]) -> std::ops::Range<usize> {
        let l = &self.levels[level as usize];
        let parent = lineage.get(l.parent_level as usize).copied().unwrap_or(0);
        let start = l.parents.partition_point(|&p| p < parent);
        let end = l.parents.partition_point(|&p| p <= parent);
        start..end
    }

    /// Whether the list of `level` (beyond the rows) appeared for the row, even empty.
    pub fn list_seen(&self, level: u8, lineage: &[u32]) -> bool {
        match self.levels[level as usize].seen {
            Some(seen) => matches!(self.get(seen, lineage), Scalar::Bool(true)),
            None => false,
        }
    }

    /// The value of `slot` in record `record` of its level.
    pub fn get_at(&self, slot: Slot, record: usize) -> &Scalar<'de> {
        let l = &self.levels[slot.level as usize];
        l.values
            .get(record * l.width + slot.index as usize)
            .unwrap_or(&Scalar::Null)
    }
}

/// Walks `json` with `plan`. Syntax errors come back as `Err`; structural surprises are in
/// `Records::error`.
pub fn extract<'de>(plan: &Plan, json: &'de [u8]) -> Result<Records<'de>, serde_json::Error> {
    match std::str::from_utf8(json) {
        // Checked once as a whole, so the strings need no check of their own: reading bytes,
        // serde_json validates every key and string it meets (a fifth of a BSM's decode).
        Ok(text) => walk(plan, serde_json::Deserializer::from_str(text)),
        // Not UTF-8: the byte reader says where it breaks, as it always did.
        Err(_) => walk(plan, serde_json::Deserializer::from_slice(json)),
    }
}

fn walk<'de, R: serde_json::de::Read<'de>>(
    plan: &Plan,
    mut de: serde_json::Deserializer<R>,
) -> Result<Records<'de>, serde_json::Error> {
    let mut records = Records::new(plan);
    NodeSeed {
        node: &plan.root,
        records: &mut records,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(records)
}

struct NodeSeed<'p, 'r, 'de> {
    node: &'p Node,
    records: &'r mut Records<'de>,
}

impl<'de> NodeSeed<'_, '_, 'de> {
    fn scalar<E>(self, v: Scalar<'de>) -> Result<(), E> {
        if let Some(list) = &self.node.list
            && list.rows_outer
        {
            self.records.rows_list_seen = true;
        }
        if let Some(slot) = self.node.leaf {
            self.records.set(slot, v);
        } else if v != Scalar::Null {
            let what = if self.node.list.is_some() {
                "a list"
            } else {
                "an object"
            };
            self.records
                .fail(format!("expected {what}, found {}", v.type_name()));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.scalar(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.scalar(Scalar::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.scalar(Scalar::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.scalar(Scalar::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.scalar(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.scalar(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.scalar(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.scalar(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.scalar(Scalar::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let NodeSeed { node, records } = self;
        if let Some(list) = &node.list {
            if let Some(slot) = node.leaf {
                records.set(slot, Scalar::Object);
            }
            records.rows_list_seen |= list.rows_outer;
            if let Some(seen) = list.seen {
                records.set(seen, Scalar::Bool(true));
            }
            // A single object where the standard says a list: one element.
            records.push_record(list.level);
            return NodeSeed {
                node: &list.elem,
                records,
            }
            .visit_map(map);
        }
        if let Some(slot) = node.leaf {
            // Present (flags are read below it; a value column finds an object).
            records.set(slot, Scalar::Object);
        }
        if node.children.is_empty() {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while let Some(child) = map.next_key_seed(KeySeed { node })? {
            match child {
                Some(i) => map.next_value_seed(NodeSeed {
                    node: &node.children[i].1,
                    records: &mut *records,
                })?,
                None => {
                    records.ignored_fields += 1;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let NodeSeed { node, records } = self;
        if let Some(slot) = node.leaf
            && (node.list.is_some() || !node.children.is_empty())
        {
            // Present (a detect path naming a list that is also read below).
            records.set(slot, Scalar::Array);
        }
        if let Some(list) = &node.list {
            records.rows_list_seen |= list.rows_outer;
            if let Some(seen) = list.seen {
                records.set(seen, Scalar::Bool(true));
            }
            while seq
                .next_element_seed(ElemSeed {
                    level: list.level,
                    node: &list.elem,
                    records: &mut *records,
                })?
                .is_some()
            {}
            return Ok(());
        }
        if node.children.is_empty() {
            if let Some(slot) = node.leaf {
                records.set(slot, Scalar::Array);
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        if node.children.iter().any(|(k, _)| k.starts_with('[')) {
            // Elements read by position (`coordinates[1]`).
            let mut i = 0usize;
            loop {
                let key = format!("[{i}]");
                let found = match node.children.iter().find(|(k, _)| **k == *key) {
                    Some((_, child)) => seq
                        .next_element_seed(NodeSeed {
                            node: child,
                            records: &mut *records,
                        })?
                        .is_some(),
                    None => seq.next_element::<IgnoredAny>()?.is_some(),
                };
                if !found {
                    return Ok(());
                }
                i += 1;
            }
        }
        // A list where an object belongs: accept exactly one element.
        let mut count = 0usize;
        while seq
            .next_element_seed(NodeSeed {
                node,
                records: &mut *records,
            })?
            .is_some()
        {
            count += 1;
        }
        if count > 1 {
            records.fail(format!("expected an object, found a list of {count}"));
        }
        Ok(())
    }
}

/// Resolves an object key to the index of a child node, without allocating.
struct KeySeed<'p> {
    node: &'p Node,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        // `[N]` children are list positions, never object keys.
        Ok(self
            .node
            .children
            .iter()
            .position(|(k, _)| k.as_ref() == v && !k.starts_with('[')))
    }
}

/// One list element: opens a record at its level, then reads the element.
struct ElemSeed<'p, 'r, 'de> {
    level: u8,
    node: &'p Node,
    records: &'r mut Records<'de>,
}

impl<'de> DeserializeSeed<'de> for ElemSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.records.push_record(self.level);
        NodeSeed {
            node: self.node,
            records: self.records,
        }
        .deserialize(d)
    }
}
