//! Class schemas: properties with units and semantics, methods and events.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{ClassPath, Identifier, Instance, Names, Value, ValueType};

/// What a property's number means to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Semantic {
    /// Part of the instance's identity. Key properties are scalar and never floats.
    Key,
    /// An instant value, shown as is.
    Gauge,
    /// A monotonic count; consumers show its rate per second from two samples.
    Counter,
    /// A value that changes rarely (a name, a state, a version).
    Discrete,
    /// A monotonic count; consumers show the difference between two samples. (Last, so
    /// that the binary encoding of the others is unchanged.)
    Delta,
}

/// The unit of a property. Consumers convert from these (the OpenMetrics gateway names
/// metrics after the base unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unit {
    None,
    Count,
    Bytes,
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
    Percent,
    Ratio,
    Hertz,
    Packets,
    Operations,
    Pages,
}

/// One property of a class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PropertyDef {
    pub name: Identifier,
    #[serde(rename = "type")]
    pub ty: ValueType,
    pub unit: Unit,
    pub semantic: Semantic,
    #[serde(default)]
    pub description: String,
}

/// One parameter of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ParamDef {
    pub name: Identifier,
    #[serde(rename = "type")]
    pub ty: ValueType,
    #[serde(default)]
    pub optional: bool,
    #[serde(default)]
    pub description: String,
}

/// A method: typed parameters and an optional typed result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MethodDef {
    pub name: Identifier,
    #[serde(default)]
    pub params: Vec<ParamDef>,
    #[serde(default)]
    pub result: Option<ValueType>,
    #[serde(default)]
    pub description: String,
}

/// An event a class can raise, with the properties it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventDef {
    pub name: Identifier,
    #[serde(default)]
    pub properties: Vec<PropertyDef>,
    #[serde(default)]
    pub description: String,
}

/// A class's schema. Built with [`ClassSchema::new`], which checks it; a schema that
/// arrives from the wire is checked the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "RawSchema", into = "RawSchema")]
pub struct ClassSchema {
    // Invariant: property, method and event names are unique; key properties are scalar,
    // not f64; counter and gauge properties are numeric.
    raw: RawSchema,
    derived: Derived,
}

/// What is derived from a schema's definition once, when it is built.
#[derive(Clone)]
struct Derived {
    /// The property names in declaration order: the table instances of this class are
    /// built from. Its lookups are what [`ClassSchema::property`] uses (a binary search
    /// above 16 properties: checking an instance of a 1 000-counter set must not cost a
    /// million string comparisons).
    names: Names,
    /// Tells this schema apart from others in the tables of names that were checked
    /// against it (clones share it: they are the same definition).
    id: u64,
    /// The positions of the key properties.
    keys: Box<[u32]>,
    /// Each property's type, in declaration order: checking the values of a large
    /// instance walks this dense array, not the property definitions.
    types: Box<[ValueType]>,
}

// Derived from `raw`: two schemas are equal when their definitions are.
impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

/// Why a schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    #[error("class {class}: {what} {name:?} is declared twice")]
    Duplicate {
        class: String,
        what: &'static str,
        name: String,
    },
    #[error(
        "class {class}: key property {name:?} has type {ty}; keys must be a scalar other than f64"
    )]
    BadKeyType {
        class: String,
        name: String,
        ty: ValueType,
    },
    #[error(
        "class {class}: property {name:?} is a {semantic:?} but has type {ty}; it must be i64, u64 or f64"
    )]
    NotNumeric {
        class: String,
        name: String,
        semantic: Semantic,
        ty: ValueType,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawSchema {
    path: ClassPath,
    #[serde(default)]
    description: String,
    properties: Vec<PropertyDef>,
    #[serde(default)]
    methods: Vec<MethodDef>,
    #[serde(default)]
    events: Vec<EventDef>,
}

impl ClassSchema {
    /// Checks and builds a schema. A class with no key property is a singleton: it has at
    /// most one instance.
    pub fn new(
        path: ClassPath,
        description: impl Into<String>,
        properties: Vec<PropertyDef>,
        methods: Vec<MethodDef>,
        events: Vec<EventDef>,
    ) -> Result<Self, SchemaError> {
        RawSchema {
            path,
            description: description.into(),
            properties,
            methods,
            events,
        }
        .try_into()
    }

    /// A schema fixed in source code (a built-in provider's), with no methods or events.
    ///
    /// # Panics
    /// If the path or the schema is invalid: a bug in the provider, caught by its tests.
    pub fn fixed(path: &str, description: &str, properties: Vec<PropertyDef>) -> Self {
        let path = ClassPath::new(path).expect("class path in source code is valid");
        Self::new(path, description, properties, vec![], vec![])
            .expect("schema in source code is valid")
    }

    pub fn path(&self) -> &ClassPath {
        &self.raw.path
    }

    pub fn description(&self) -> &str {
        &self.raw.description
    }

    pub fn properties(&self) -> &[PropertyDef] {
        &self.raw.properties
    }

    pub fn methods(&self) -> &[MethodDef] {
        &self.raw.methods
    }

    pub fn events(&self) -> &[EventDef] {
        &self.raw.events
    }

    pub fn method(&self, name: &str) -> Option<&MethodDef> {
        self.raw.methods.iter().find(|m| m.name.as_str() == name)
    }

    pub fn event(&self, name: &str) -> Option<&EventDef> {
        self.raw.events.iter().find(|e| e.name.as_str() == name)
    }

    pub fn property(&self, name: &str) -> Option<&PropertyDef> {
        self.derived
            .names
            .position(name)
            .map(|at| &self.raw.properties[at])
    }

    /// The property names in declaration order, as a table to build instances from:
    /// `Instance::with_values(schema.names(), values)`. Instances built so are checked
    /// against this schema without looking a name up.
    pub fn names(&self) -> &Names {
        &self.derived.names
    }

    /// The key properties, in declaration order.
    pub fn keys(&self) -> impl Iterator<Item = &PropertyDef> {
        // From the positions found once: a class of 1 000 counters has no key to scan for.
        (self.derived.keys.iter()).map(|&at| &self.raw.properties[at as usize])
    }

    /// A class without key properties has at most one instance.
    pub fn is_singleton(&self) -> bool {
        self.keys().next().is_none()
    }

    /// Checks an instance against this schema: every value names a declared property and
    /// has its type, and every key property is present. Returns a message naming the
    /// property that is wrong.
    ///
    /// The names are resolved once per table of names (see [`Names`]): instances built
    /// from [`ClassSchema::names`], or decoded from one reply, cost a type check per value.
    pub fn check_instance(&self, instance: &Instance) -> Result<(), String> {
        let names = instance.names();
        let props = &self.raw.properties;
        let values = instance.value_slice();
        if names.same(&self.derived.names) {
            return self.check_types(values.iter().zip(0..));
        }
        if let Some(at) = names.resolved(self.derived.id) {
            return self.check_types(values.iter().zip(at.iter().copied()));
        }
        let mut at = Vec::with_capacity(names.len());
        for name in names.as_slice() {
            let Some(i) = self.derived.names.position(name.as_str()) else {
                return Err(format!(
                    "property {:?} is not in the schema of {}",
                    name.as_str(),
                    self.path()
                ));
            };
            at.push(i as u32);
        }
        for &key in &self.derived.keys {
            if !at.contains(&key) {
                return Err(format!(
                    "key property {:?} of {} is missing",
                    props[key as usize].name.as_str(),
                    self.path()
                ));
            }
        }
        self.check_types(values.iter().zip(at.iter().copied()))?;
        names.remember(self.derived.id, at.into_boxed_slice());
        Ok(())
    }

    /// Checks each value's type against that of the property at its position. Names and
    /// keys are known good.
    fn check_types<'a>(&self, pairs: impl Iterator<Item = (&'a Value, u32)>) -> Result<(), String> {
        let types = &self.derived.types;
        for (value, at) in pairs {
            let ty = types[at as usize];
            if !value.conforms_to(ty) {
                return Err(format!(
                    "property {:?} of {} has type {} but the schema says {}",
                    self.raw.properties[at as usize].name.as_str(),
                    self.path(),
                    value.value_type(),
                    ty
                ));
            }
        }
        Ok(())
    }
}

impl MethodDef {
    /// Checks a call's arguments: every argument names a parameter and has its type, and
    /// every required parameter is given. The message names the argument that is wrong.
    pub fn check_args(&self, class: &ClassPath, args: &Instance) -> Result<(), String> {
        for (name, value) in args.values() {
            let Some(param) = self.params.iter().find(|p| p.name == *name) else {
                return Err(format!(
                    "method {class}.{} has no parameter {:?}",
                    self.name,
                    name.as_str()
                ));
            };
            if !value.conforms_to(param.ty) {
                return Err(format!(
                    "parameter {:?} of {class}.{} has type {}, not {}",
                    name.as_str(),
                    self.name,
                    param.ty,
                    value.value_type()
                ));
            }
        }
        if let Some(missing) = self
            .params
            .iter()
            .find(|p| !p.optional && args.get(p.name.as_str()).is_none())
        {
            return Err(format!(
                "method {class}.{} needs parameter {:?} ({})",
                self.name,
                missing.name.as_str(),
                missing.ty
            ));
        }
        Ok(())
    }
}

impl EventDef {
    pub fn property(&self, name: &str) -> Option<&PropertyDef> {
        self.properties.iter().find(|p| p.name.as_str() == name)
    }

    /// Checks an event's data: every value names one of the event's properties and has
    /// its type.
    pub fn check_data(&self, class: &ClassPath, data: &Instance) -> Result<(), String> {
        for (name, value) in data.values() {
            let Some(prop) = self.property(name.as_str()) else {
                return Err(format!(
                    "event {class}.{} has no property {:?}",
                    self.name,
                    name.as_str()
                ));
            };
            if !value.conforms_to(prop.ty) {
                return Err(format!(
                    "property {:?} of event {class}.{} has type {}, not {}",
                    name.as_str(),
                    self.name,
                    prop.ty,
                    value.value_type()
                ));
            }
        }
        Ok(())
    }
}

impl ParamDef {
    /// Shorthand for parameters fixed in source code, like [`PropertyDef::new`].
    ///
    /// # Panics
    /// If `name` or `ty` is invalid.
    pub fn new(name: &str, ty: &str, optional: bool, description: &str) -> Self {
        ParamDef {
            name: Identifier::new(name).expect("parameter name in source code is valid"),
            ty: ty.parse().expect("parameter type in source code is valid"),
            optional,
            description: description.into(),
        }
    }
}

impl TryFrom<RawSchema> for ClassSchema {
    type Error = SchemaError;

    fn try_from(raw: RawSchema) -> Result<Self, SchemaError> {
        let class = raw.path.to_string();
        unique(&class, "property", raw.properties.iter().map(|p| &p.name))?;
        unique(&class, "method", raw.methods.iter().map(|m| &m.name))?;
        unique(&class, "event", raw.events.iter().map(|e| &e.name))?;
        for method in &raw.methods {
            unique(&class, "parameter", method.params.iter().map(|p| &p.name))?;
        }
        for prop in raw
            .properties
            .iter()
            .chain(raw.events.iter().flat_map(|e| &e.properties))
        {
            match prop.semantic {
                Semantic::Key
                    if matches!(prop.ty, ValueType::Array(_))
                        || prop.ty == ValueType::Scalar(crate::ScalarType::F64) =>
                {
                    return Err(SchemaError::BadKeyType {
                        class,
                        name: prop.name.to_string(),
                        ty: prop.ty,
                    });
                }
                Semantic::Counter | Semantic::Delta | Semantic::Gauge if !prop.ty.is_numeric() => {
                    return Err(SchemaError::NotNumeric {
                        class,
                        name: prop.name.to_string(),
                        semantic: prop.semantic,
                        ty: prop.ty,
                    });
                }
                _ => {}
            }
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let names = raw.properties.iter().map(|p| p.name.clone()).collect();
        let derived = Derived {
            // Unique: checked just above.
            names: Names::new(names).expect("property names are unique"),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            keys: (raw.properties.iter().enumerate())
                .filter(|(_, p)| p.semantic == Semantic::Key)
                .map(|(i, _)| i as u32)
                .collect(),
            types: raw.properties.iter().map(|p| p.ty).collect(),
        };
        Ok(ClassSchema { raw, derived })
    }
}

impl From<ClassSchema> for RawSchema {
    fn from(schema: ClassSchema) -> RawSchema {
        schema.raw
    }
}

fn unique<'a>(
    class: &str,
    what: &'static str,
    names: impl Iterator<Item = &'a Identifier>,
) -> Result<(), SchemaError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(SchemaError::Duplicate {
                class: class.into(),
                what,
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

impl PropertyDef {
    /// Shorthand used by providers: `PropertyDef::new("rx_bytes", "u64", Unit::Bytes,
    /// Semantic::Counter, "bytes received")`.
    ///
    /// # Panics
    /// If `name` or `ty` is invalid: this is for names and types fixed in source code.
    pub fn new(name: &str, ty: &str, unit: Unit, semantic: Semantic, description: &str) -> Self {
        PropertyDef {
            name: Identifier::new(name).expect("property name in source code is valid"),
            ty: ty.parse().expect("property type in source code is valid"),
            unit,
            semantic,
            description: description.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn schema(props: Vec<PropertyDef>) -> Result<ClassSchema, SchemaError> {
        ClassSchema::new(
            ClassPath::new("test.thing").unwrap(),
            "",
            props,
            vec![],
            vec![],
        )
    }

    #[test]
    fn rejects_bad_schemas() {
        let dup = schema(vec![
            PropertyDef::new("a", "u64", Unit::Count, Semantic::Gauge, ""),
            PropertyDef::new("a", "u64", Unit::Count, Semantic::Gauge, ""),
        ]);
        assert_eq!(
            dup.unwrap_err().to_string(),
            "class test.thing: property \"a\" is declared twice"
        );
        let float_key = schema(vec![PropertyDef::new(
            "k",
            "f64",
            Unit::None,
            Semantic::Key,
            "",
        )]);
        assert!(matches!(float_key, Err(SchemaError::BadKeyType { .. })));
        let text_counter = schema(vec![PropertyDef::new(
            "c",
            "string",
            Unit::None,
            Semantic::Counter,
            "",
        )]);
        assert!(matches!(text_counter, Err(SchemaError::NotNumeric { .. })));
    }

    #[test]
    fn checks_instances() {
        let s = schema(vec![
            PropertyDef::new("k", "string", Unit::None, Semantic::Key, ""),
            PropertyDef::new("n", "u64", Unit::Count, Semantic::Counter, ""),
        ])
        .unwrap();
        assert!(!s.is_singleton());
        let good = Instance::from_pairs([("k", Value::String("a".into())), ("n", Value::U64(1))]);
        assert_eq!(s.check_instance(&good), Ok(()));
        let wrong_type =
            Instance::from_pairs([("k", Value::String("a".into())), ("n", Value::I64(1))]);
        assert_eq!(
            s.check_instance(&wrong_type).unwrap_err(),
            "property \"n\" of test.thing has type i64 but the schema says u64"
        );
        let no_key = Instance::from_pairs([("n", Value::U64(1))]);
        assert!(
            s.check_instance(&no_key)
                .unwrap_err()
                .contains("key property \"k\"")
        );
    }

    #[test]
    fn checks_method_arguments() {
        let class = ClassPath::new("config.setting").unwrap();
        let rename = MethodDef {
            name: Identifier::new("rename").unwrap(),
            params: vec![
                ParamDef::new("to", "string", false, ""),
                ParamDef::new("force", "bool", true, ""),
            ],
            result: None,
            description: String::new(),
        };
        let ok = Instance::from_pairs([("to", Value::String("b".into()))]);
        assert_eq!(rename.check_args(&class, &ok), Ok(()));
        assert_eq!(
            rename.check_args(&class, &Instance::new()).unwrap_err(),
            "method config.setting.rename needs parameter \"to\" (string)"
        );
        let wrong = Instance::from_pairs([("to", Value::U64(1))]);
        assert_eq!(
            rename.check_args(&class, &wrong).unwrap_err(),
            "parameter \"to\" of config.setting.rename has type string, not u64"
        );
        let unknown = Instance::from_pairs([
            ("to", Value::String("b".into())),
            ("into", Value::String("c".into())),
        ]);
        assert_eq!(
            rename.check_args(&class, &unknown).unwrap_err(),
            "method config.setting.rename has no parameter \"into\""
        );
    }

    #[test]
    fn wire_schema_is_checked() {
        let json = r#"{"path":"a.b","properties":[
            {"name":"x","type":"string","unit":"none","semantic":"gauge"}]}"#;
        let err = serde_json::from_str::<ClassSchema>(json).unwrap_err();
        assert!(err.to_string().contains("must be i64, u64 or f64"), "{err}");
    }
}
