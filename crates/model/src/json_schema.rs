//! The JSON Schema of the types whose serde form is written by hand (feature `schema`):
//! names are strings with their patterns, instances objects of tagged values. Used by
//! `purveyor-protocol`'s generator of `docs/protocol.schema.json`.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::{
    ClassPath, Identifier, Instance, InstanceKey, NamespacePath, ProviderName, Timestamp, Value,
};

macro_rules! string_schema {
    ($ty:ty, $name:literal, $pattern:literal, $max:expr, $what:literal) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "maxLength": $max,
                    "description": $what,
                })
            }
        }
    };
}

string_schema!(
    Identifier,
    "Identifier",
    "^[a-z][a-z0-9_]*$",
    crate::name::MAX_IDENTIFIER_LEN,
    "A property, method, event or parameter name: lowercase, at most 64 bytes"
);
string_schema!(
    ClassPath,
    "ClassPath",
    "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$",
    crate::name::MAX_PATH_LEN,
    "A class: dotted identifiers, at least two (`system.process`)"
);
string_schema!(
    NamespacePath,
    "NamespacePath",
    "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)*$",
    crate::name::MAX_PATH_LEN,
    "A namespace: one or more dotted identifiers (`system`)"
);
string_schema!(
    ProviderName,
    "ProviderName",
    "^[a-z][a-z0-9_-]*$",
    crate::name::MAX_IDENTIFIER_LEN,
    "A provider's name (its manifest's file name)"
);

impl JsonSchema for Instance {
    fn schema_name() -> Cow<'static, str> {
        "Instance".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        values_by_name(
            generator,
            "Property name → tagged value. Binary form: a names blob and the values (docs/protocol.md, \"Encodings\")",
        )
    }
}

impl JsonSchema for InstanceKey {
    fn schema_name() -> Cow<'static, str> {
        "InstanceKey".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        values_by_name(
            generator,
            "Key property name → tagged value (empty for a singleton class)",
        )
    }
}

/// An object of property names to tagged values.
fn values_by_name(generator: &mut SchemaGenerator, description: &str) -> Schema {
    let value = generator.subschema_for::<Value>();
    json_schema!({
        "type": "object",
        "description": description,
        "propertyNames": { "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64 },
        "additionalProperties": value,
    })
}

impl JsonSchema for Value {
    fn schema_name() -> Cow<'static, str> {
        "Value".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let timestamp = generator.subschema_for::<Timestamp>();
        let scalars = |generator: &mut SchemaGenerator| -> Vec<serde_json::Value> {
            let _ = generator;
            vec![
                tagged("i64", json_schema!({"type": "integer", "format": "int64"})),
                tagged(
                    "u64",
                    json_schema!({"type": "integer", "format": "uint64", "minimum": 0}),
                ),
                tagged("f64", json_schema!({"type": "number", "format": "double"})),
                tagged("bool", json_schema!({"type": "boolean"})),
                tagged("string", json_schema!({"type": "string"})),
                tagged(
                    "bytes",
                    json_schema!({"type": "array", "items": {"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255}}),
                ),
                tagged("timestamp", timestamp.clone()),
            ]
        };
        let mut all = scalars(generator);
        let elements = scalars(generator);
        all.push(tagged(
            "array",
            json_schema!({"type": "array", "items": {"title": "scalar Value", "oneOf": elements}}),
        ));
        json_schema!({
            "description": "A value tagged with its type, externally: {\"u64\": 5}. Binary: the variant index (i64 0, u64 1, f64 2, bool 3, string 4, bytes 5, timestamp 6, array 7), then the payload. An array's elements are scalars.",
            "oneOf": all,
        })
    }
}

/// `{"TAG": schema}`, with exactly that one key.
fn tagged(tag: &str, schema: Schema) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": { tag: schema },
        "required": [tag],
        "additionalProperties": false,
    })
}
