//! Instances and their keys.
//!
//! An instance is a table of property names ([`Names`], shared) and a vector of values in
//! the table's order. A provider builds every instance of a class from one table (usually
//! the schema's own, [`ClassSchema::names`]), a reply is decoded into instances that share
//! one table per distinct set of names, and the host checks a table against a schema once,
//! not once per instance. Per instance there is one vector of values: no map to build,
//! no name to copy, intern or compare.
//!
//! **Binary form** (see `docs/protocol.md`): an instance is the pair (names blob, values);
//! a list of instances is the pair (distinct names blobs, (blob index, values) per
//! instance). A names blob is, per name, one length byte and the name's bytes. The JSON
//! form is an object of name → value, as before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock, OnceLock};

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::refusal::refuse;
use crate::{ClassSchema, Identifier, Value};

/// Below this many names a linear scan finds a name as fast as a binary search.
const LINEAR: usize = 16;

/// The property names of instances, in the order their values are kept. Names are
/// unique. Cloning shares the table.
#[derive(Clone)]
pub struct Names(Arc<NameTable>);

#[derive(Clone, Default)]
struct NameTable {
    names: Vec<Identifier>,
    /// Positions in `names` ordered by name, for lookups in tables longer than `LINEAR`.
    sorted: OnceLock<Vec<u32>>,
    /// The binary form, once encoded or as decoded.
    blob: OnceLock<Box<[u8]>>,
    /// The first schema this table was checked against, and each name's position in it.
    resolved: OnceLock<Resolved>,
}

/// A table's names resolved against one schema (by its id).
#[derive(Clone)]
struct Resolved {
    schema: u64,
    props: Box<[u32]>,
}

/// A table of names that repeats one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("property {0:?} is named twice")]
pub struct DuplicateName(pub String);

static EMPTY: LazyLock<Names> = LazyLock::new(|| Names(Arc::default()));

impl Names {
    /// A table of `names`, in this order.
    pub fn new(names: Vec<Identifier>) -> Result<Self, DuplicateName> {
        let sorted = check_unique(&names)?;
        Ok(Names::checked(names, sorted))
    }

    /// A table of names [`check_unique`] accepted, with the order it computed.
    fn checked(names: Vec<Identifier>, sorted: Option<Vec<u32>>) -> Self {
        let table = NameTable {
            names,
            ..NameTable::default()
        };
        if let Some(sorted) = sorted {
            let _ = table.sorted.set(sorted);
        }
        Names(Arc::new(table))
    }

    /// A table of names fixed in source code.
    ///
    /// # Panics
    /// If a name is not a valid identifier or is repeated.
    pub fn fixed(names: &[&str]) -> Self {
        let names = names
            .iter()
            .map(|n| Identifier::new(n).expect("property name in source code is valid"))
            .collect();
        Names::new(names).expect("property names in source code are unique")
    }

    /// The table with no names.
    pub fn empty() -> Self {
        EMPTY.clone()
    }

    pub fn len(&self) -> usize {
        self.0.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.names.is_empty()
    }

    pub fn as_slice(&self) -> &[Identifier] {
        &self.0.names
    }

    /// Where `name` is in the table.
    pub fn position(&self, name: &str) -> Option<usize> {
        let names = &self.0.names;
        if names.len() <= LINEAR {
            return names.iter().position(|n| n.as_str() == name);
        }
        let sorted = self
            .0
            .sorted
            .get_or_init(|| check_unique(names).ok().flatten().unwrap_or_default());
        sorted
            .binary_search_by(|&at| names[at as usize].as_str().cmp(name))
            .ok()
            .map(|i| sorted[i] as usize)
    }

    /// Whether the two are one table (not merely equal names).
    pub fn same(&self, other: &Names) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Appends `name`, which is not in the table. Copies the table if it is shared.
    fn push(&mut self, name: Identifier) {
        let table = Arc::make_mut(&mut self.0);
        table.blob = OnceLock::new();
        table.resolved = OnceLock::new();
        let at = table.names.len() as u32;
        if let Some(sorted) = table.sorted.get_mut() {
            let names = &table.names;
            let i = sorted.partition_point(|&p| names[p as usize] < name);
            sorted.insert(i, at);
        }
        table.names.push(name);
    }

    /// The binary form: per name, its length in one byte, then its bytes.
    pub(crate) fn blob(&self) -> &[u8] {
        self.0.blob.get_or_init(|| {
            let mut out =
                Vec::with_capacity(self.0.names.iter().map(|n| n.as_str().len() + 1).sum());
            for name in &self.0.names {
                // Identifiers are at most 64 bytes.
                out.push(name.as_str().len() as u8);
                out.extend_from_slice(name.as_str().as_bytes());
            }
            out.into_boxed_slice()
        })
    }

    /// Reads a names blob from a peer. Blobs seen recently on this thread are not parsed
    /// again: the table decoded then is shared (bytes compared, not only hashed).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Names::empty());
        }
        let cacheable = bytes.len() <= DECODE_CACHE_MAX_BLOB;
        let slot = if cacheable {
            let (slot, hit) = DECODED.with(|c| {
                let c = c.borrow();
                let slot = (c.hasher.hash_one(bytes) as usize) % DECODE_CACHE_SLOTS;
                let hit = (c.slots[slot].as_ref())
                    .filter(|n| n.0.blob.get().is_some_and(|b| **b == *bytes))
                    .cloned();
                (slot, hit)
            });
            if let Some(hit) = hit {
                return Ok(hit);
            }
            Some(slot)
        } else {
            None
        };
        let mut names = Vec::new();
        let mut rest = bytes;
        while let Some((&len, tail)) = rest.split_first() {
            let len = len as usize;
            if len > tail.len() {
                return Err(format!(
                    "a names blob ends inside a name: {len} bytes announced, {} left",
                    tail.len()
                ));
            }
            let (name, tail) = tail.split_at(len);
            let name = std::str::from_utf8(name)
                .map_err(|_| "a property name is not UTF-8".to_string())?;
            names.push(Identifier::new(name).map_err(|e| e.to_string())?);
            rest = tail;
        }
        let table = Names::new(names).map_err(|e| e.to_string())?;
        let _ = table.0.blob.set(bytes.into());
        if let Some(slot) = slot {
            DECODED.with(|c| c.borrow_mut().slots[slot] = Some(table.clone()));
        }
        Ok(table)
    }

    /// This table's names resolved against `schema`, if that was the first schema it was
    /// checked against.
    pub(crate) fn resolved(&self, schema: u64) -> Option<&[u32]> {
        self.0
            .resolved
            .get()
            .filter(|r| r.schema == schema)
            .map(|r| &*r.props)
    }

    /// Remembers the table's names resolved against `schema` (the first schema only).
    pub(crate) fn remember(&self, schema: u64, props: Box<[u32]>) {
        let _ = self.0.resolved.set(Resolved { schema, props });
    }
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0.names).finish()
    }
}

/// Blobs decoded recently, per thread, by hash: a reply names the same properties as
/// the last one, so its names are neither parsed nor interned again.
const DECODE_CACHE_SLOTS: usize = 64;
/// Larger blobs are decoded every time (the cache stays small).
const DECODE_CACHE_MAX_BLOB: usize = 16 * 1024;

struct DecodeCache {
    hasher: foldhash::fast::RandomState,
    slots: Vec<Option<Names>>,
}

thread_local! {
    static DECODED: RefCell<DecodeCache> = RefCell::new(DecodeCache {
        hasher: foldhash::fast::RandomState::default(),
        slots: vec![None; DECODE_CACHE_SLOTS],
    });
}

/// `Ok(Some(sorted positions))` for a long table, `Ok(None)` for a short one, or the
/// first repeated name.
fn check_unique(names: &[Identifier]) -> Result<Option<Vec<u32>>, DuplicateName> {
    if names.len() <= LINEAR {
        for (i, a) in names.iter().enumerate() {
            if names[..i].contains(a) {
                return Err(DuplicateName(a.to_string()));
            }
        }
        return Ok(None);
    }
    let mut sorted: Vec<u32> = (0..names.len() as u32).collect();
    sorted.sort_unstable_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
    if let Some(w) = sorted
        .windows(2)
        .find(|w| names[w[0] as usize] == names[w[1] as usize])
    {
        return Err(DuplicateName(names[w[0] as usize].to_string()));
    }
    Ok(Some(sorted))
}

/// The values of one instance of a class, by property name. JSON form: an object
/// `{"cpu": {"string": "cpu0"}, "user": {"f64": 12.5}}`.
///
/// Invariant: `values` has one value per name of `names`, in its order.
#[derive(Clone)]
pub struct Instance {
    names: Names,
    values: Vec<Value>,
}

impl Default for Instance {
    fn default() -> Self {
        Instance::new()
    }
}

impl PartialEq for Instance {
    /// Equal when both have the same properties with equal values, in any order.
    fn eq(&self, other: &Self) -> bool {
        if self.names.same(&other.names) {
            return self.values == other.values;
        }
        self.len() == other.len()
            && self
                .values()
                .all(|(name, value)| other.get(name.as_str()) == Some(value))
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.values()).finish()
    }
}

impl FromIterator<(Identifier, Value)> for Instance {
    /// Builds the instance in one pass; a repeated name keeps its last value.
    fn from_iter<I: IntoIterator<Item = (Identifier, Value)>>(iter: I) -> Self {
        let (names, values): (Vec<Identifier>, Vec<Value>) = iter.into_iter().unzip();
        match check_unique(&names) {
            Ok(sorted) => Instance {
                names: Names::checked(names, sorted),
                values,
            },
            Err(_) => {
                // Each name at its first place with its last value, in O(n log n): the
                // same result as inserting one by one, which is quadratic.
                let mut order: Vec<usize> = (0..names.len()).collect();
                order.sort_by(|&a, &b| names[a].as_str().cmp(names[b].as_str()));
                let mut last_for_first: Vec<Option<usize>> = vec![None; names.len()];
                for run in order.chunk_by(|&a, &b| names[a] == names[b]) {
                    if let (Some(&first), Some(&last)) = (run.first(), run.last()) {
                        last_for_first[first] = Some(last);
                    }
                }
                let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
                let mut kept = Vec::new();
                for (first, name) in names.into_iter().enumerate() {
                    if let Some(value) = last_for_first[first].and_then(|l| values[l].take()) {
                        kept.push((name, value));
                    }
                }
                kept.into_iter().collect()
            }
        }
    }
}

impl Serialize for Instance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_map(self.values());
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Blob(&self.names))?;
        t.serialize_element(&self.values)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Instance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return d.deserialize_map(MapForm);
        }
        struct Pair;
        impl<'de> Visitor<'de> for Pair {
            type Value = Instance;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an instance: a names blob and its values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Instance, A::Error> {
                let NamesBlob(names) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let values: Vec<Value> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Instance::from_table(names, values).map_err(refuse)
            }
        }
        d.deserialize_tuple(2, Pair)
    }
}

/// Reads the JSON form, an object of name → value, keeping the last of repeated names.
struct MapForm;

impl<'de> Visitor<'de> for MapForm {
    type Value = Instance;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of property names to values")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Instance, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(entry) = map.next_entry::<Identifier, Value>()? {
            entries.push(entry);
        }
        Ok(entries.into_iter().collect())
    }
}

/// A table's binary form, written as bytes.
struct Blob<'a>(&'a Names);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.blob())
    }
}

/// A table read from its binary form.
struct NamesBlob(Names);

impl<'de> Deserialize<'de> for NamesBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl<'de> Visitor<'de> for BlobVisitor {
            type Value = NamesBlob;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a names blob")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<NamesBlob, E> {
                Names::decode(v).map(NamesBlob).map_err(refuse)
            }
        }
        d.deserialize_bytes(BlobVisitor)
    }
}

/// The serde form of a list of instances: in binary, each distinct table of names once
/// (tables with the same names are sent as one), then each instance as the index of its
/// table and its values; in JSON, a list of objects. Use with `#[serde(with = ...)]`.
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(instances: &[Instance], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_seq(instances);
        }
        let mut tables: Vec<&Names> = Vec::new();
        let mut by_blob: HashMap<&[u8], u32> = HashMap::new();
        let mut rows = Vec::with_capacity(instances.len());
        let mut last: Option<(&Names, u32)> = None;
        for instance in instances {
            let at = match last {
                Some((names, at)) if names.same(&instance.names) => at,
                _ => *by_blob.entry(instance.names.blob()).or_insert_with(|| {
                    tables.push(&instance.names);
                    tables.len() as u32 - 1
                }),
            };
            last = Some((&instance.names, at));
            rows.push((at, &instance.values));
        }
        let tables: Vec<Blob> = tables.into_iter().map(Blob).collect();
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&tables)?;
        t.serialize_element(&rows)?;
        t.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Instance>, D::Error> {
        if d.is_human_readable() {
            return Vec::<Instance>::deserialize(d);
        }
        struct Pair;
        impl<'de> Visitor<'de> for Pair {
            type Value = Vec<Instance>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of instances: names blobs, then rows")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let tables: Vec<NamesBlob> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let rows: Vec<(u32, Vec<Value>)> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                rows.into_iter()
                    .map(|(at, values)| {
                        let names = tables.get(at as usize).ok_or_else(|| {
                            refuse(format!(
                                "an instance names table {at}, but there are {}",
                                tables.len()
                            ))
                        })?;
                        Instance::from_table(names.0.clone(), values).map_err(refuse)
                    })
                    .collect()
            }
        }
        d.deserialize_tuple(2, Pair)
    }
}

/// The most properties a key or selector may name (a class's keys are a few; a selector
/// naming more than this many properties is refused as it is decoded).
pub const MAX_KEY_PROPERTIES: usize = 256;

/// The key properties that identify an instance. Empty for the one instance of a
/// singleton class.
///
/// Kept as a vector sorted by name, each name once: a key has few properties, and a
/// sorted vector is one small allocation where a tree map is a large node. It encodes
/// as a map of name to value, in name order (the form a `BTreeMap` has).
#[derive(Clone, PartialEq, Default)]
pub struct InstanceKey {
    // Invariant: sorted by name, no name twice.
    values: Vec<(Identifier, Value)>,
}

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.values()).finish()
    }
}

impl Serialize for InstanceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.values())
    }
}

impl<'de> Deserialize<'de> for InstanceKey {
    /// Any order; a repeated name keeps its last value.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = InstanceKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key: a map of property name to value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<InstanceKey, A::Error> {
                let mut entries: Vec<(Identifier, Value)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
                while let Some(entry) = map.next_entry()? {
                    if entries.len() == MAX_KEY_PROPERTIES {
                        return Err(crate::refusal::refuse(format!(
                            "a key or selector names more than {MAX_KEY_PROPERTIES} properties"
                        )));
                    }
                    entries.push(entry);
                }
                Ok(InstanceKey::from_entries(entries))
            }
        }
        d.deserialize_map(KeyVisitor)
    }
}

/// A `NAME=VALUE` selector that does not fit the class's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{0:?} is not of the form NAME=VALUE")]
    NotAssignment(String),
    #[error("class {class} has no property {name:?}")]
    UnknownProperty { class: String, name: String },
    #[error("property {name:?} of {class}: {message}")]
    BadValue {
        class: String,
        name: String,
        message: String,
    },
}

impl Instance {
    pub fn new() -> Self {
        Instance {
            names: Names::empty(),
            values: Vec::new(),
        }
    }

    /// An instance with `values` for the names of `names`, in order: the fast way to
    /// build many instances of one class (`Instance::with_values(schema.names(), …)`).
    ///
    /// # Panics
    /// If there is not exactly one value per name.
    pub fn with_values(names: &Names, values: Vec<Value>) -> Self {
        assert_eq!(
            names.len(),
            values.len(),
            "one value per name: {names:?} has {} names",
            names.len()
        );
        Instance {
            names: names.clone(),
            values,
        }
    }

    pub(crate) fn from_table(names: Names, values: Vec<Value>) -> Result<Self, String> {
        if names.len() != values.len() {
            return Err(format!(
                "an instance has {} property names but {} values",
                names.len(),
                values.len()
            ));
        }
        Ok(Instance { names, values })
    }

    /// Builds an instance from `(name, value)` pairs.
    ///
    /// # Panics
    /// If a name is not a valid identifier: this is for names fixed in source code.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        pairs
            .into_iter()
            .map(|(name, value)| {
                (
                    Identifier::new(name).expect("property name in source code is valid"),
                    value,
                )
            })
            .collect()
    }

    /// Sets a property.
    ///
    /// # Panics
    /// If `name` is not a valid identifier: this is for names fixed in source code; use
    /// [`Instance::insert`] for names that arrive at run time.
    pub fn set(&mut self, name: &str, value: Value) {
        let name = Identifier::new(name).expect("property name in source code is valid");
        self.insert(name, value);
    }

    /// Sets a property, adding it if the instance does not have it.
    pub fn insert(&mut self, name: Identifier, value: Value) {
        match self.names.position(name.as_str()) {
            Some(at) => self.values[at] = value,
            None => {
                self.names.push(name);
                self.values.push(value);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.names.position(name).map(|at| &self.values[at])
    }

    /// The properties, in the order of the instance's table of names.
    pub fn values(&self) -> impl Iterator<Item = (&Identifier, &Value)> {
        self.names.as_slice().iter().zip(&self.values)
    }

    /// The instance's table of names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The values, one per name of [`Instance::names`], in its order.
    pub fn value_slice(&self) -> &[Value] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The instance's key under `schema`.
    pub fn key(&self, schema: &ClassSchema) -> InstanceKey {
        let mut key = InstanceKey::default();
        for prop in schema.keys() {
            if let Some(value) = self.get(prop.name.as_str()) {
                key.insert(prop.name.clone(), value.clone());
            }
        }
        key
    }

    /// Whether every `(name, value)` of `selector` equals this instance's property.
    pub fn matches(&self, selector: &InstanceKey) -> bool {
        selector
            .values()
            .all(|(name, value)| self.get(name.as_str()) == Some(value))
    }
}

impl InstanceKey {
    pub fn new() -> Self {
        Self::default()
    }

    /// A key from entries in any order, a repeated name keeping its last value, in
    /// O(n log n) (inserting one by one into the sorted vector is quadratic).
    fn from_entries(mut entries: Vec<(Identifier, Value)>) -> Self {
        // Stable: equal names stay in arrival order, so the last of a run is the last sent.
        entries.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
        let mut values: Vec<(Identifier, Value)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match values.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => values.push(entry),
            }
        }
        InstanceKey { values }
    }

    /// Sets a key property, replacing its value if it has one.
    pub fn insert(&mut self, name: Identifier, value: Value) {
        match self.position(name.as_str()) {
            Ok(at) => self.values[at].1 = value,
            Err(at) => self.values.insert(at, (name, value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|at| &self.values[at].1)
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.values
            .binary_search_by(|(have, _)| have.as_str().cmp(name))
    }

    /// The key properties, in name order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = (&Identifier, &Value)> {
        self.values.iter().map(|(name, value)| (name, value))
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether this selector names exactly the key properties of `schema`, so that it
    /// identifies at most one instance.
    pub fn is_full_key(&self, schema: &ClassSchema) -> bool {
        let mut count = 0;
        for key in schema.keys() {
            if self.get(key.name.as_str()).is_none() {
                return false;
            }
            count += 1;
        }
        count == self.values.len()
    }

    /// Parses `NAME=VALUE` selectors against `schema`, typing each value by its property.
    /// Any property may be used; a selector that names every key property (and nothing
    /// else) identifies one instance.
    pub fn parse<S: AsRef<str>>(schema: &ClassSchema, args: &[S]) -> Result<Self, KeyError> {
        let class = schema.path().to_string();
        let mut key = InstanceKey::new();
        for arg in args {
            let arg = arg.as_ref();
            let Some((name, text)) = arg.split_once('=') else {
                return Err(KeyError::NotAssignment(arg.into()));
            };
            let Some(prop) = schema.property(name) else {
                return Err(KeyError::UnknownProperty {
                    class,
                    name: name.into(),
                });
            };
            let value = Value::parse_as(text, prop.ty).map_err(|e| KeyError::BadValue {
                class: class.clone(),
                name: name.into(),
                message: e.to_string(),
            })?;
            key.insert(prop.name.clone(), value);
        }
        Ok(key)
    }

    /// The first property this selector names that `schema` does not declare, if any.
    /// The host refuses selectors on unknown properties.
    pub fn unknown_property<'a>(&'a self, schema: &ClassSchema) -> Option<&'a Identifier> {
        self.values
            .iter()
            .map(|(name, _)| name)
            .find(|name| schema.property(name.as_str()).is_none())
    }
}

impl fmt::Display for InstanceKey {
    /// `cpu=cpu0,pid=1`, or `(singleton)` for an empty key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.values.is_empty() {
            return f.write_str("(singleton)");
        }
        for (i, (name, value)) in self.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClassPath, PropertyDef, Semantic, Unit};

    /// The JSON form decodes in any order; a repeated name keeps its last value.
    #[test]
    fn json_instances_keep_the_last_duplicate() {
        let i: Instance =
            serde_json::from_str(r#"{"b":{"u64":1},"a":{"u64":2},"b":{"u64":3}}"#).unwrap();
        assert_eq!(i.len(), 2);
        assert_eq!(i.get("a"), Some(&Value::U64(2)));
        assert_eq!(i.get("b"), Some(&Value::U64(3)));
        let back: Instance = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
        assert_eq!(back, i);
    }

    fn binary<T: Serialize>(value: &T) -> Vec<u8> {
        postcard::to_stdvec(value).unwrap()
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct List(#[serde(with = "list")] Vec<Instance>);

    /// Binary instances carry one table of names per distinct set of names, and decode
    /// into instances that share it.
    #[test]
    fn binary_lists_send_each_table_once_and_decode_shared() {
        let names = Names::fixed(&["pid", "name"]);
        let rows: Vec<Instance> = (0..100)
            .map(|pid| {
                Instance::with_values(&names, vec![Value::U64(pid), Value::String("x".into())])
            })
            .collect();
        // Equal names in another table are sent as the same table too.
        let mut odd = Instance::from_pairs([("pid", Value::U64(7))]);
        odd.set("name", Value::String("y".into()));
        let mut all = rows.clone();
        all.push(odd);
        let bytes = binary(&List(all.clone()));
        // "pid" and "name" appear once on the wire.
        let count = bytes.windows(4).filter(|w| w == b"name").count();
        assert_eq!(count, 1, "{bytes:?}");
        let List(back) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, all);
        assert!(back.iter().all(|i| i.names().same(back[0].names())));
        // A second decode on this thread reuses the first table.
        let List(again) = postcard::from_bytes(&bytes).unwrap();
        assert!(again[0].names().same(back[0].names()));
        // JSON is a list of objects.
        let json = serde_json::to_string(&List(rows[..1].to_vec())).unwrap();
        assert_eq!(json, r#"[{"pid":{"u64":0},"name":{"string":"x"}}]"#);
    }

    /// A peer's bytes are checked: names, counts and table indexes.
    #[test]
    fn hostile_binary_instances_are_refused_with_the_reason() {
        fn why<T: for<'de> Deserialize<'de> + fmt::Debug>(bytes: &[u8]) -> String {
            crate::take_refusal();
            postcard::from_bytes::<T>(bytes).unwrap_err();
            crate::take_refusal().unwrap()
        }
        let err = why::<Instance>;
        let list_err = why::<List>;
        // blob "\x01a\x01a": a name twice.
        assert!(err(&[4, 1, b'a', 1, b'a', 2, 1, 1, 1, 2]).contains("\"a\" is named twice"));
        // blob announces 5 bytes, has 1.
        assert!(err(&[2, 5, b'a', 0]).contains("ends inside a name"));
        // an invalid identifier.
        assert!(err(&[2, 1, b'A', 1, 1, 1]).contains("invalid identifier"));
        // one name, two values.
        assert!(err(&[2, 1, b'a', 2, 1, 1, 1, 2]).contains("1 property names but 2 values"));
        // a row naming table 3 of 1.
        assert!(
            list_err(&[1, 2, 1, b'a', 1, 3, 1, 1, 1]).contains("names table 3, but there are 1")
        );
    }

    #[test]
    fn set_insert_and_lookups_in_long_tables() {
        let mut i = Instance::new();
        for n in (0..40).rev() {
            i.set(&format!("c{n}"), Value::U64(n));
        }
        i.set("c3", Value::U64(33));
        assert_eq!(i.len(), 40);
        assert_eq!(i.get("c3"), Some(&Value::U64(33)));
        assert_eq!(i.get("c39"), Some(&Value::U64(39)));
        assert_eq!(i.get("c40"), None);
        // Insertion order is kept.
        assert_eq!(i.values().next().unwrap().0.as_str(), "c39");
        // A shared table is copied, not changed, by an insert.
        let names = i.names().clone();
        let mut j = i.clone();
        j.set("extra", Value::Bool(true));
        assert_eq!(names.len(), 40);
        assert_eq!(j.get("extra"), Some(&Value::Bool(true)));
        assert_eq!(i.get("extra"), None);
        assert_ne!(i, j);
        assert_eq!(
            Names::new(vec![Identifier::new("x").unwrap(); 2])
                .unwrap_err()
                .to_string(),
            "property \"x\" is named twice"
        );
    }

    #[test]
    fn instances_are_checked_once_per_table() {
        let s = schema();
        let good =
            Instance::from_pairs([("name", Value::String("a".into())), ("pid", Value::U64(1))]);
        assert_eq!(s.check_instance(&good), Ok(()));
        // Resolved once; the types are still checked per instance.
        let mut bad = good.clone();
        bad.insert(Identifier::new("pid").unwrap(), Value::String("one".into()));
        assert!(bad.names().same(good.names()));
        assert_eq!(
            s.check_instance(&bad).unwrap_err(),
            "property \"pid\" of system.process has type string but the schema says u64"
        );
        let built =
            Instance::with_values(s.names(), vec![Value::U64(1), Value::String("b".into())]);
        assert_eq!(s.check_instance(&built), Ok(()));
        let no_key = Instance::from_pairs([("name", Value::String("a".into()))]);
        assert_eq!(
            s.check_instance(&no_key).unwrap_err(),
            "key property \"pid\" of system.process is missing"
        );
        let stranger = Instance::from_pairs([("pid", Value::U64(1)), ("uid", Value::U64(0))]);
        assert_eq!(
            s.check_instance(&stranger).unwrap_err(),
            "property \"uid\" is not in the schema of system.process"
        );
    }

    fn schema() -> ClassSchema {
        ClassSchema::new(
            ClassPath::new("system.process").unwrap(),
            "",
            vec![
                PropertyDef::new("pid", "u64", Unit::None, Semantic::Key, ""),
                PropertyDef::new("name", "string", Unit::None, Semantic::Discrete, ""),
            ],
            vec![],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn parses_selectors_by_schema_type() {
        let s = schema();
        let key = InstanceKey::parse(&s, &["pid=42"]).unwrap();
        assert_eq!(key.get("pid"), Some(&Value::U64(42)));
        assert!(key.is_full_key(&s));
        assert_eq!(key.to_string(), "pid=42");
        let by_name = InstanceKey::parse(&s, &["name=init"]).unwrap();
        assert!(!by_name.is_full_key(&s));
        assert_eq!(
            InstanceKey::parse(&s, &["pid=x"]).unwrap_err().to_string(),
            "property \"pid\" of system.process: \"x\" is not a valid u64"
        );
        assert_eq!(
            InstanceKey::parse(&s, &["uid=0"]).unwrap_err().to_string(),
            "class system.process has no property \"uid\""
        );
        assert_eq!(
            InstanceKey::parse(&s, &["pid"]).unwrap_err().to_string(),
            "\"pid\" is not of the form NAME=VALUE"
        );
    }

    #[test]
    fn keys_encode_as_a_map_in_name_order_and_keep_the_last_duplicate() {
        let id = |n: &str| Identifier::new(n).unwrap();
        let mut key = InstanceKey::new();
        key.insert(id("pid"), Value::U64(1));
        key.insert(id("cpu"), Value::String("cpu0".into()));
        key.insert(id("node"), Value::U64(7));
        key.insert(id("pid"), Value::U64(2));
        let map: std::collections::BTreeMap<Identifier, Value> = [
            (id("node"), Value::U64(7)),
            (id("pid"), Value::U64(2)),
            (id("cpu"), Value::String("cpu0".into())),
        ]
        .into_iter()
        .collect();
        assert_eq!(binary(&key), binary(&map));
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let names: Vec<&str> = key.values().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cpu", "node", "pid"]);
        assert_eq!(key.get("pid"), Some(&Value::U64(2)));
        assert_eq!(key.get("nope"), None);
        let back: InstanceKey = postcard::from_bytes(&binary(&key)).unwrap();
        assert_eq!(back, key);
        let json: InstanceKey =
            serde_json::from_str(r#"{"pid":{"u64":1},"cpu":{"string":"c"},"pid":{"u64":3}}"#)
                .unwrap();
        assert_eq!(json.to_string(), "cpu=c,pid=3");
    }

    /// A 1.9 MB `get` with 100 000 key names in reverse order held a runtime thread for
    /// 7.6 s (inserting each into a sorted vector); instances with repeated names were
    /// built the same way. Both are O(n log n) now: 100 000 names take a fraction of a
    /// second even unoptimized (the bound is generous; the quadratic way took minutes here).
    #[test]
    fn key_decoding_was_quadratic() {
        let n = 100_000;
        let mut json = String::from("{");
        for i in (0..n).rev() {
            json.push_str(&format!("\"k{i:06}\":{{\"u64\":{i}}},"));
        }
        json.push_str("\"k000000\":{\"u64\":7}}");
        let started = std::time::Instant::now();
        // A key names at most MAX_KEY_PROPERTIES: refused as soon as it passes them.
        let err = serde_json::from_str::<InstanceKey>(&json).unwrap_err();
        assert!(
            err.to_string().contains("more than 256 properties"),
            "{err}"
        );
        let most: String = format!(
            "{{{}}}",
            (0..MAX_KEY_PROPERTIES)
                .rev()
                .map(|i| format!("\"k{i:06}\":{{\"u64\":{i}}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let key: InstanceKey = serde_json::from_str(&most).unwrap();
        let instance: Instance = serde_json::from_str(&json).unwrap();
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        assert_eq!(key.values().len(), MAX_KEY_PROPERTIES);
        assert!(key.values().map(|(k, _)| k.as_str()).is_sorted());
        assert_eq!(instance.len(), n);
        assert_eq!(instance.get("k000000"), Some(&Value::U64(7)));
        // The first place a name appeared, its last value.
        assert_eq!(
            instance.values().next().map(|(k, _)| k.as_str()),
            Some("k099999")
        );
        assert_eq!(
            instance.values().last().map(|(k, v)| (k.as_str(), v)),
            Some(("k000000", &Value::U64(7)))
        );
    }

    #[test]
    fn matches_and_keys() {
        let s = schema();
        let inst = Instance::from_pairs([
            ("pid", Value::U64(1)),
            ("name", Value::String("init".into())),
        ]);
        assert!(inst.matches(&InstanceKey::parse(&s, &["name=init"]).unwrap()));
        assert!(!inst.matches(&InstanceKey::parse(&s, &["pid=2"]).unwrap()));
        assert_eq!(inst.key(&s).to_string(), "pid=1");
    }
}
