//! The machine-readable protocol cannot drift from the types: `docs/protocol.schema.json`
//! (the JSON Schema of every message and structure, made by `schemars`) and the binary
//! layout tables in `docs/protocol.md` (made by `purveyor_protocol::layout` from the types'
//! `Deserialize` impls, with the schema's field types) are generated here and compared
//! with the committed files. After changing a wire type, regenerate them with
//!
//!     PURVEYOR_BLESS=1 cargo test -p purveyor-protocol --test schema
//!
//! and commit the result with the change.

use std::collections::BTreeMap;
use std::path::Path;

use purveyor_protocol::layout::{Layout, Shape, layout};
use serde_json::{Value as Json, json};

/// Every type in the schema's `$defs`, with its layout (`None`: a scalar or a string in
/// the binary form, described in `docs/protocol.md`, "Scalars").
fn layouts() -> BTreeMap<&'static str, Option<Layout>> {
    use purveyor_model as m;
    use purveyor_protocol as p;
    macro_rules! of {
        ($($ty:ty),* $(,)?) => {
            BTreeMap::from([$((stringify!($ty).rsplit("::").next().unwrap(), Some(layout::<$ty>()))),*])
        };
    }
    let mut all = of![
        p::Hello,
        p::Welcome,
        p::ClientMessage,
        p::ServerMessage,
        p::Request,
        p::Response,
        p::Push,
        p::Outcome,
        p::RemoteError,
        p::ErrorCode,
        p::Encoding,
        p::HostMode,
        p::HostStatus,
        p::ProviderStatus,
        p::ClassList,
        p::InstanceList,
        p::IoMode,
        p::IoWhence,
        p::IoProcedureInfo,
        p::QueryRows,
        p::QueryColumn,
        p::ChangeKind,
        p::PropertyChange,
        p::ReloadReport,
        p::Form,
        p::Field,
        p::FieldKind,
        p::Button,
        p::Progress,
        p::FormUpdate,
        p::DialogInput,
        m::ClassSchema,
        m::PropertyDef,
        m::MethodDef,
        m::ParamDef,
        m::EventDef,
        m::Unit,
        m::Semantic,
        m::Condition,
        m::CompareOp,
        m::Hosting,
        m::ProviderState,
        m::Value,
    ];
    // Strings, numbers and the instance maps: no container layout of their own.
    for scalar in [
        "ClassPath",
        "Identifier",
        "NamespacePath",
        "ProviderName",
        "ValueType",
        "Timestamp",
        "Instance",
        "InstanceKey",
    ] {
        all.insert(scalar, None);
    }
    all
}

fn schema() -> Json {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let roots = [
        generator.subschema_for::<purveyor_protocol::Hello>(),
        generator.subschema_for::<purveyor_protocol::Welcome>(),
        generator.subschema_for::<purveyor_protocol::ClientMessage>(),
        generator.subschema_for::<purveyor_protocol::ServerMessage>(),
    ];
    let defs = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://purveyor.invalid/protocol.schema.json",
        "title": format!(
            "Purveyor wire protocol {}.{} (JSON encoding)",
            purveyor_protocol::PROTOCOL_VERSION,
            purveyor_protocol::PROTOCOL_MINOR
        ),
        "description": "Every frame's payload, generated from the Rust types (crates/protocol/tests/schema.rs). The client sends a Hello, then ClientMessages; the server answers a Welcome, then ServerMessages. docs/protocol.md describes the exchange and the binary encoding.",
        "oneOf": roots.iter().map(|r| r.as_value().clone()).collect::<Vec<_>>(),
        "$defs": defs,
    })
}

/// A field's or payload's type as the tables show it.
fn shown(schema: &Json) -> String {
    if let Some(r) = schema.get("$ref").and_then(Json::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(title) = schema.get("title").and_then(Json::as_str) {
        return title.to_string();
    }
    if let Some(any) = schema.get("anyOf").and_then(Json::as_array) {
        let parts: Vec<String> = any
            .iter()
            .filter(|s| s.get("type") != Some(&json!("null")))
            .map(shown)
            .collect();
        return format!("{}?", parts.join(" | "));
    }
    if schema.get("oneOf").is_some() || schema.get("enum").is_some() {
        return "enum".into();
    }
    match schema.get("type") {
        Some(Json::Array(types)) => {
            let inner: Vec<&Json> = types.iter().filter(|t| *t != "null").collect();
            let mut one = schema.clone();
            one["type"] = inner.first().map(|t| (*t).clone()).unwrap_or(Json::Null);
            format!("{}?", shown(&one))
        }
        Some(Json::String(t)) => match (t.as_str(), schema.get("format").and_then(Json::as_str)) {
            ("integer", Some(f)) => f.replace("uint", "u").replace("int", "i"),
            ("integer", None) => "integer".into(),
            ("number", _) => "f64".into(),
            ("boolean", _) => "bool".into(),
            ("string", _) => "string".into(),
            ("array", _) => format!(
                "[{}]",
                schema.get("items").map(shown).unwrap_or_else(|| "?".into())
            ),
            ("object", _) => match schema.get("additionalProperties") {
                Some(v) if v.is_object() => format!("map string → {}", shown(v)),
                _ => "object".into(),
            },
            (other, _) => other.into(),
        },
        _ => "any".into(),
    }
}

/// The definition of `name`'s property `field` (following a struct's `properties`).
fn property<'a>(def: &'a Json, field: &str) -> Option<&'a Json> {
    def.get("properties")?.get(field)
}

/// The schema of variant `variant` of an externally tagged enum's definition.
fn variant_schema<'a>(def: &'a Json, variant: &str) -> Option<&'a Json> {
    def.get("oneOf")?
        .as_array()?
        .iter()
        .find_map(|v| property(v, variant))
}

fn tables(schema: &Json) -> String {
    let defs = &schema["$defs"];
    let mut out = String::from(
        "<!-- layout: generated from the types by crates/protocol/tests/schema.rs; do not edit -->\n",
    );
    for (name, layout) in layouts() {
        let Some(layout) = layout else { continue };
        let def = &defs[name];
        match layout {
            Layout::Struct { fields, .. } => {
                out += &format!(
                    "\n**{name}** (struct: its fields in this order, no names)\n\n| # | field | type |\n|---|---|---|\n"
                );
                for (i, f) in fields.iter().enumerate() {
                    let ty = property(def, f).map(shown).unwrap_or_else(|| "?".into());
                    out += &format!("| {i} | `{f}` | {ty} |\n");
                }
            }
            Layout::Enum { variants, .. } => {
                out += &format!(
                    "\n**{name}** (enum: the variant's index, then its payload)\n\n| index | variant | payload, in order |\n|---|---|---|\n"
                );
                for (i, (v, shape)) in variants.iter().enumerate() {
                    let payload = match shape {
                        Shape::Unit => "—".to_string(),
                        Shape::Newtype => variant_schema(def, v)
                            .map(shown)
                            .unwrap_or_else(|| "?".into()),
                        Shape::Tuple(n) => format!("{n} values"),
                        Shape::Struct(fields) => fields
                            .iter()
                            .map(|f| {
                                let ty = variant_schema(def, v)
                                    .and_then(|s| property(s, f))
                                    .map(shown)
                                    .unwrap_or_else(|| "?".into());
                                format!("`{f}`: {ty}")
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                        Shape::Unknown => "?".into(),
                    };
                    out += &format!("| {i} | `{v}` | {payload} |\n");
                }
            }
            Layout::Other(what) => out += &format!("\n**{name}**: {what}\n"),
        }
    }
    out += "<!-- layout: end -->\n";
    out
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn bless() -> bool {
    std::env::var_os("PURVEYOR_BLESS").is_some_and(|v| v == "1")
}

const AGAIN: &str = "regenerate with PURVEYOR_BLESS=1 cargo test -p purveyor-protocol --test schema, and commit the result";

#[test]
fn every_definition_has_a_layout_and_every_layout_a_definition() {
    let schema = schema();
    let defs: Vec<&String> = schema["$defs"].as_object().unwrap().keys().collect();
    let known = layouts();
    for def in &defs {
        assert!(
            known.contains_key(def.as_str()),
            "{def} is in the schema but not in layouts(): add it"
        );
    }
    for name in known.keys() {
        assert!(
            defs.iter().any(|d| d == name),
            "{name} is in layouts() but no message uses it"
        );
    }
}

#[test]
fn the_json_schema_in_docs_matches_the_types() {
    let text = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
    let path = root().join("docs/protocol.schema.json");
    if bless() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/protocol.schema.json is out of date: {AGAIN}"
    );
}

#[test]
fn the_binary_layout_tables_in_docs_match_the_types() {
    let tables = tables(&schema());
    let path = root().join("docs/protocol.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let begin = doc
        .find("<!-- layout: generated")
        .expect("the layout section's start marker");
    let end = doc.find("<!-- layout: end -->\n").expect("its end marker")
        + "<!-- layout: end -->\n".len();
    if bless() {
        let updated = format!("{}{}{}", &doc[..begin], tables, &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        doc[begin..end] == tables,
        "the layout tables in docs/protocol.md are out of date: {AGAIN}"
    );
}

/// The recorder reads what postcard writes: a struct's fields in declaration order and
/// each variant's index (checked against postcard's own bytes for one of each).
#[test]
fn the_layout_is_what_postcard_writes() {
    let Layout::Enum { variants, .. } = layout::<purveyor_protocol::Request>() else {
        panic!("Request is an enum")
    };
    let at = variants.iter().position(|(v, _)| *v == "io_list").unwrap();
    let bytes = postcard::to_allocvec(&purveyor_protocol::Request::IoList).unwrap();
    assert_eq!(bytes, vec![at as u8]);
    let Layout::Struct { fields, .. } = layout::<purveyor_protocol::PropertyChange>() else {
        panic!("PropertyChange is a struct")
    };
    assert_eq!(fields, ["name", "old", "new"]);
}
