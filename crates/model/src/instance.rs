//! Instances and their keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ClassSchema, Identifier, Value};

/// The values of one instance of a class, by property name. JSON form: an object
/// `{"cpu": {"string": "cpu0"}, "user": {"f64": 12.5}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Instance {
    #[serde(deserialize_with = "sorted_map")]
    values: BTreeMap<Identifier, Value>,
}

/// Reads a map into a `BTreeMap` by collecting its entries first and building the tree in
/// one pass: entries arrive in order (they were written from a `BTreeMap`), and one
/// insert per entry would compare names O(n log n) times (an instance of a 1 000-counter
/// set). A repeated name keeps its last value, as inserting would.
fn sorted_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Identifier, Value>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = BTreeMap<Identifier, Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of property names to values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
            while let Some(entry) = map.next_entry::<Identifier, Value>()? {
                entries.push(entry);
            }
            Ok(entries.into_iter().collect())
        }
    }
    d.deserialize_map(Entries)
}

impl FromIterator<(Identifier, Value)> for Instance {
    /// Builds the instance in one pass (fast when the names come sorted).
    fn from_iter<I: IntoIterator<Item = (Identifier, Value)>>(iter: I) -> Self {
        Instance {
            values: iter.into_iter().collect(),
        }
    }
}

/// The key properties that identify an instance. Empty for the one instance of a
/// singleton class.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceKey {
    values: BTreeMap<Identifier, Value>,
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
        Self::default()
    }

    /// Builds an instance from `(name, value)` pairs.
    ///
    /// # Panics
    /// If a name is not a valid identifier: this is for names fixed in source code.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        let mut instance = Self::new();
        for (name, value) in pairs {
            instance.set(name, value);
        }
        instance
    }

    /// Sets a property.
    ///
    /// # Panics
    /// If `name` is not a valid identifier: this is for names fixed in source code; use
    /// [`Instance::insert`] for names that arrive at run time.
    pub fn set(&mut self, name: &str, value: Value) {
        let name = Identifier::new(name).expect("property name in source code is valid");
        self.values.insert(name, value);
    }

    pub fn insert(&mut self, name: Identifier, value: Value) {
        self.values.insert(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn values(&self) -> impl Iterator<Item = (&Identifier, &Value)> {
        self.values.iter()
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
            if let Some(value) = self.values.get(&prop.name) {
                key.values.insert(prop.name.clone(), value.clone());
            }
        }
        key
    }

    /// Whether every `(name, value)` of `selector` equals this instance's property.
    pub fn matches(&self, selector: &InstanceKey) -> bool {
        selector
            .values
            .iter()
            .all(|(name, value)| self.values.get(name) == Some(value))
    }
}

impl InstanceKey {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: Identifier, value: Value) {
        self.values.insert(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn values(&self) -> impl Iterator<Item = (&Identifier, &Value)> {
        self.values.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether this selector names exactly the key properties of `schema`, so that it
    /// identifies at most one instance.
    pub fn is_full_key(&self, schema: &ClassSchema) -> bool {
        let mut count = 0;
        for key in schema.keys() {
            if !self.values.contains_key(&key.name) {
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
            key.values.insert(prop.name.clone(), value);
        }
        Ok(key)
    }

    /// The first property this selector names that `schema` does not declare, if any.
    /// The host refuses selectors on unknown properties.
    pub fn unknown_property<'a>(&'a self, schema: &ClassSchema) -> Option<&'a Identifier> {
        self.values
            .keys()
            .find(|name| schema.property(name.as_str()).is_none())
    }
}

impl fmt::Display for InstanceKey {
    /// `cpu=cpu0,pid=1`, or `(singleton)` for an empty key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.values.is_empty() {
            return f.write_str("(singleton)");
        }
        for (i, (name, value)) in self.values.iter().enumerate() {
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

    /// Instances are decoded in one pass; names in any order land sorted, and a repeated
    /// name keeps its last value.
    #[test]
    fn instances_decode_in_any_order_and_the_last_duplicate_wins() {
        let i: Instance =
            serde_json::from_str(r#"{"b":{"u64":1},"a":{"u64":2},"b":{"u64":3}}"#).unwrap();
        let names: Vec<&str> = i.values().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(i.get("b"), Some(&Value::U64(3)));
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
