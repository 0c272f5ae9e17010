//! Typed values and their types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The type of a scalar value. Every width is fixed: nothing depends on a peer's word size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    I64,
    U64,
    F64,
    Bool,
    String,
    Bytes,
    Timestamp,
}

/// The type of a property, parameter or result: a scalar or an array of one scalar type.
/// Written `u64`, `string`, `array<u64>` in manifests and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub enum ValueType {
    Scalar(ScalarType),
    Array(ScalarType),
}

/// Nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// A typed value. JSON form: `{"u64": 5}`, `{"string": "eth0"}`, `{"array": [{"u64": 1}]}`.
///
/// Arrays do not nest: an array's elements are scalars, and decoding refuses an array
/// inside an array (`docs/protocol.md`, "Limits"), so decoding a value never recurses
/// more than one level, whatever the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "Decoded")]
pub enum Value {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(Timestamp),
    /// Every element has the same scalar type (checked against the schema by the host).
    Array(Vec<Value>),
}

/// [`Value`] as decoded: the same variants in the same order (so the same JSON names and
/// binary indexes), with an array holding [`Element`]s, which cannot be arrays.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Decoded {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(Timestamp),
    Array(Vec<Element>),
}

/// An array's element: a scalar. The `Array` variant exists to be refused by name.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Element {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(Timestamp),
    Array(Nested),
}

/// An array inside an array: always refused, before its contents are read.
enum Nested {}

impl<'de> Deserialize<'de> for Nested {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(crate::refusal::refuse(
            "arrays do not nest: an array's elements are scalars".into(),
        ))
    }
}

impl From<Element> for Value {
    fn from(element: Element) -> Self {
        match element {
            Element::I64(v) => Value::I64(v),
            Element::U64(v) => Value::U64(v),
            Element::F64(v) => Value::F64(v),
            Element::Bool(v) => Value::Bool(v),
            Element::String(v) => Value::String(v),
            Element::Bytes(v) => Value::Bytes(v),
            Element::Timestamp(v) => Value::Timestamp(v),
            Element::Array(never) => match never {},
        }
    }
}

impl From<Decoded> for Value {
    fn from(decoded: Decoded) -> Self {
        match decoded {
            Decoded::I64(v) => Value::I64(v),
            Decoded::U64(v) => Value::U64(v),
            Decoded::F64(v) => Value::F64(v),
            Decoded::Bool(v) => Value::Bool(v),
            Decoded::String(v) => Value::String(v),
            Decoded::Bytes(v) => Value::Bytes(v),
            Decoded::Timestamp(v) => Value::Timestamp(v),
            Decoded::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
        }
    }
}

impl Value {
    /// Appends `Value::U64(n)` to `values`, written in place: the fast way to fill a
    /// vector with many counters. `values.push(Value::U64(n))` in a loop spilled the whole
    /// value to the stack around the push's growth call and copied it with wide loads that
    /// stall on the narrow stores before them — 4–6 ns a value, most of what a reply of
    /// 1 000 counters cost to build or decode.
    #[inline(always)]
    pub fn push_u64(values: &mut Vec<Value>, n: u64) {
        values.reserve(1);
        let len = values.len();
        // SAFETY: `reserve` left room for one more value, so the slot at `len` is inside
        // the allocation and unused; it is written before the length is raised over it.
        unsafe {
            values.as_mut_ptr().add(len).write(Value::U64(n));
            values.set_len(len + 1);
        }
    }
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
        )
    }
}

/// A command-line or query text that does not parse as the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a valid {expected}")]
pub struct ParseValueError {
    pub text: String,
    pub expected: ValueType,
}

impl ScalarType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScalarType::I64 => "i64",
            ScalarType::U64 => "u64",
            ScalarType::F64 => "f64",
            ScalarType::Bool => "bool",
            ScalarType::String => "string",
            ScalarType::Bytes => "bytes",
            ScalarType::Timestamp => "timestamp",
        }
    }

    /// Whether values of this type are numbers (may carry the counter or gauge semantics).
    pub fn is_numeric(self) -> bool {
        matches!(self, ScalarType::I64 | ScalarType::U64 | ScalarType::F64)
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "i64" => ScalarType::I64,
            "u64" => ScalarType::U64,
            "f64" => ScalarType::F64,
            "bool" => ScalarType::Bool,
            "string" => ScalarType::String,
            "bytes" => ScalarType::Bytes,
            "timestamp" => ScalarType::Timestamp,
            _ => return None,
        })
    }
}

impl ValueType {
    pub fn scalar(self) -> ScalarType {
        match self {
            ValueType::Scalar(s) | ValueType::Array(s) => s,
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Scalar(s) if s.is_numeric())
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Scalar(s) => f.write_str(s.as_str()),
            ValueType::Array(s) => write!(f, "array<{}>", s.as_str()),
        }
    }
}

impl FromStr for ValueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = match s.strip_prefix("array<").and_then(|r| r.strip_suffix('>')) {
            Some(inner) => ScalarType::parse(inner).map(ValueType::Array),
            None => ScalarType::parse(s).map(ValueType::Scalar),
        };
        parsed.ok_or_else(|| {
            format!(
                "unknown type {s:?} (expected i64, u64, f64, bool, string, bytes, timestamp or array<...> of one of them)"
            )
        })
    }
}

impl TryFrom<String> for ValueType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ValueType> for String {
    fn from(t: ValueType) -> String {
        t.to_string()
    }
}

impl Value {
    /// The type of this value; an empty array reports `array<u64>` by convention.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::I64(_) => ValueType::Scalar(ScalarType::I64),
            Value::U64(_) => ValueType::Scalar(ScalarType::U64),
            Value::F64(_) => ValueType::Scalar(ScalarType::F64),
            Value::Bool(_) => ValueType::Scalar(ScalarType::Bool),
            Value::String(_) => ValueType::Scalar(ScalarType::String),
            Value::Bytes(_) => ValueType::Scalar(ScalarType::Bytes),
            Value::Timestamp(_) => ValueType::Scalar(ScalarType::Timestamp),
            Value::Array(items) => ValueType::Array(
                items
                    .first()
                    .map(|v| v.value_type().scalar())
                    .unwrap_or(ScalarType::U64),
            ),
        }
    }

    /// Whether this value conforms to `ty` (arrays: every element has the element type).
    #[inline]
    pub fn conforms_to(&self, ty: ValueType) -> bool {
        match ty {
            ValueType::Scalar(s) => self.scalar_type() == Some(s),
            ValueType::Array(elem) => match self {
                Value::Array(items) => items.iter().all(|v| v.scalar_type() == Some(elem)),
                _ => false,
            },
        }
    }

    /// A scalar's type; `None` for an array.
    #[inline]
    fn scalar_type(&self) -> Option<ScalarType> {
        Some(match self {
            Value::I64(_) => ScalarType::I64,
            Value::U64(_) => ScalarType::U64,
            Value::F64(_) => ScalarType::F64,
            Value::Bool(_) => ScalarType::Bool,
            Value::String(_) => ScalarType::String,
            Value::Bytes(_) => ScalarType::Bytes,
            Value::Timestamp(_) => ScalarType::Timestamp,
            Value::Array(_) => return None,
        })
    }

    /// The value as a float, for numeric values (rates and averages are computed on these).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::I64(v) => Some(v as f64),
            Value::U64(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// Parses command-line text as a value of type `ty` (`true`, `42`, `-1.5`, `eth0`;
    /// timestamps as nanoseconds since the epoch; bytes as hex; arrays comma-separated).
    pub fn parse_as(text: &str, ty: ValueType) -> Result<Value, ParseValueError> {
        let err = || ParseValueError {
            text: text.into(),
            expected: ty,
        };
        match ty {
            ValueType::Array(elem) => {
                if text.is_empty() {
                    return Ok(Value::Array(Vec::new()));
                }
                text.split(',')
                    .map(|part| Value::parse_as(part.trim(), ValueType::Scalar(elem)))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
                    .map_err(|_| err())
            }
            ValueType::Scalar(s) => match s {
                ScalarType::I64 => text.parse().map(Value::I64).map_err(|_| err()),
                ScalarType::U64 => text.parse().map(Value::U64).map_err(|_| err()),
                ScalarType::F64 => text.parse().map(Value::F64).map_err(|_| err()),
                ScalarType::Bool => match text {
                    "true" | "yes" | "1" => Ok(Value::Bool(true)),
                    "false" | "no" | "0" => Ok(Value::Bool(false)),
                    _ => Err(err()),
                },
                ScalarType::String => Ok(Value::String(text.into())),
                ScalarType::Bytes => parse_hex(text).map(Value::Bytes).ok_or_else(err),
                ScalarType::Timestamp => text
                    .parse()
                    .map(|ns| Value::Timestamp(Timestamp(ns)))
                    .map_err(|_| err()),
            },
        }
    }
}

impl fmt::Display for Value {
    /// The plain text form used in tables and keys: numbers as numbers, strings unquoted,
    /// bytes as hex, timestamps as nanoseconds, arrays comma-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => f.write_str(v),
            Value::Bytes(v) => v.iter().try_for_each(|b| write!(f, "{b:02x}")),
            Value::Timestamp(t) => write!(f, "{}", t.0),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_as_text() {
        for text in [
            "i64",
            "u64",
            "f64",
            "bool",
            "string",
            "bytes",
            "timestamp",
            "array<f64>",
        ] {
            let ty: ValueType = text.parse().unwrap();
            assert_eq!(ty.to_string(), text);
        }
        assert!("array<array<u64>>".parse::<ValueType>().is_err());
        assert!(
            "int"
                .parse::<ValueType>()
                .unwrap_err()
                .contains("unknown type \"int\"")
        );
    }

    #[test]
    fn parse_and_conform() {
        let u = Value::parse_as("42", ValueType::Scalar(ScalarType::U64)).unwrap();
        assert_eq!(u, Value::U64(42));
        assert!(u.conforms_to(ValueType::Scalar(ScalarType::U64)));
        assert!(!u.conforms_to(ValueType::Scalar(ScalarType::I64)));
        let arr = Value::parse_as("1, 2,3", "array<i64>".parse().unwrap()).unwrap();
        assert_eq!(
            arr,
            Value::Array(vec![Value::I64(1), Value::I64(2), Value::I64(3)])
        );
        assert!(arr.conforms_to("array<i64>".parse().unwrap()));
        assert!(!arr.conforms_to("array<u64>".parse().unwrap()));
        assert!(!arr.conforms_to(ValueType::Scalar(ScalarType::I64)));
        assert!(!Value::I64(1).conforms_to("array<i64>".parse().unwrap()));
        let nested = Value::Array(vec![Value::Array(vec![])]);
        assert!(!nested.conforms_to("array<u64>".parse().unwrap()));
        assert!(Value::Array(vec![]).conforms_to("array<string>".parse().unwrap()));
        assert_eq!(
            Value::parse_as("-1", ValueType::Scalar(ScalarType::U64))
                .unwrap_err()
                .to_string(),
            "\"-1\" is not a valid u64"
        );
        assert_eq!(
            Value::parse_as("00ff", ValueType::Scalar(ScalarType::Bytes)).unwrap(),
            Value::Bytes(vec![0, 255])
        );
    }

    #[test]
    fn json_form_is_tagged() {
        let json = serde_json::to_string(&Value::U64(5)).unwrap();
        assert_eq!(json, r#"{"u64":5}"#);
        let v: Value = serde_json::from_str(r#"{"array":[{"string":"a"}]}"#).unwrap();
        assert_eq!(v, Value::Array(vec![Value::String("a".into())]));
    }

    /// A 40 KB binary value nested 20 000 deep used to overflow the decoding thread's
    /// stack and abort the daemon; arrays do not nest, so it is refused at the second level,
    /// in both encodings, and the same bytes as a valid array decode as before.
    #[test]
    fn deeply_nested_arrays_overflowed_the_stack() {
        let depth = 20_000;
        // Binary: variant index 7 (array) and a length of 1, `depth` times, then a u64.
        let mut binary = Vec::new();
        for _ in 0..depth {
            binary.extend_from_slice(&[7, 1]);
        }
        binary.extend_from_slice(&[1, 5]);
        crate::take_refusal();
        assert!(postcard::from_bytes::<Value>(&binary).is_err());
        let why = crate::take_refusal().expect("the reason is kept");
        assert!(why.contains("arrays do not nest"), "{why}");
        let json = format!(
            "{}{{\"u64\":5}}{}",
            "{\"array\":[".repeat(depth),
            "]}".repeat(depth)
        );
        assert!(serde_json::from_str::<Value>(&json).is_err());
        let nested = r#"{"array":[{"array":[{"u64":5}]}]}"#;
        let err = serde_json::from_str::<Value>(nested)
            .unwrap_err()
            .to_string();
        assert!(err.contains("arrays do not nest"), "{err}");
        // One level still round-trips in both encodings, with the same bytes as before.
        let flat = Value::Array(vec![Value::U64(5), Value::U64(6)]);
        let bytes = postcard::to_allocvec(&flat).unwrap();
        assert_eq!(bytes, [7, 2, 1, 5, 1, 6]);
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), flat);
    }
}
