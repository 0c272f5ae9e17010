//! The binary layout of the wire types, read from their `Deserialize` impls (feature
//! `schema`): each struct's fields in the order postcard writes them, and each enum's
//! variants with the index postcard writes and the shape of each (unit, newtype, tuple,
//! struct with its fields in order). `docs/protocol.md`'s layout tables are made from it
//! and the JSON Schema, and `tests/schema.rs` checks both against the committed files.
//!
//! It works by asking a type to deserialize itself from [`Recorder`], which answers
//! nothing but notes what the type asks for: `deserialize_struct(name, FIELDS)`,
//! `deserialize_enum(name, VARIANTS)`, and for each variant, through an enum access that
//! picks it, the variant's own shape. No value is ever built.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, VariantAccess, Visitor};

/// What a type's `Deserialize` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A struct: its serde name and fields, in order.
    Struct {
        name: &'static str,
        fields: Vec<&'static str>,
    },
    /// An enum: its serde name and variants, each at its index.
    Enum {
        name: &'static str,
        variants: Vec<(&'static str, Shape)>,
    },
    /// Anything else (a string, a map, a sequence): not a container of its own.
    Other(&'static str),
}

/// A variant's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Unit,
    Newtype,
    Tuple(usize),
    Struct(Vec<&'static str>),
    /// The variant's payload could not be looked at.
    Unknown,
}

/// The layout of `T`.
pub fn layout<'de, T: serde::Deserialize<'de>>() -> Layout {
    let mut seen = Seen::default();
    let _ = T::deserialize(Recorder {
        seen: &mut seen,
        pick: None,
    });
    let Some(first) = seen.first.take() else {
        return Layout::Other("unknown");
    };
    match first {
        Layout::Enum { name, variants } => {
            // Once per variant: pick it and note its shape.
            let shapes = (0..variants.len())
                .map(|i| {
                    let mut seen = Seen::default();
                    let _ = T::deserialize(Recorder {
                        seen: &mut seen,
                        pick: Some(i as u32),
                    });
                    seen.shape.unwrap_or(Shape::Unknown)
                })
                .collect::<Vec<_>>();
            Layout::Enum {
                name,
                variants: variants
                    .into_iter()
                    .zip(shapes)
                    .map(|((v, _), s)| (v, s))
                    .collect(),
            }
        }
        other => other,
    }
}

#[derive(Default)]
struct Seen {
    first: Option<Layout>,
    shape: Option<Shape>,
}

/// Stops a deserialization once it has said what it wanted.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct Recorder<'a> {
    seen: &'a mut Seen,
    /// The variant to pick when the type is an enum.
    pick: Option<u32>,
}

impl Recorder<'_> {
    fn note(&mut self, layout: Layout) {
        if self.seen.first.is_none() {
            self.seen.first = Some(layout);
        }
    }
}

macro_rules! other {
    ($($method:ident => $what:literal),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(mut self, _: V) -> Result<V::Value, Stop> {
            self.note(Layout::Other($what));
            Err(Stop)
        })*
    };
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Stop;

    other! {
        deserialize_any => "any", deserialize_bool => "bool", deserialize_i8 => "i8",
        deserialize_i16 => "i16", deserialize_i32 => "i32", deserialize_i64 => "i64",
        deserialize_u8 => "u8", deserialize_u16 => "u16", deserialize_u32 => "u32",
        deserialize_u64 => "u64", deserialize_f32 => "f32", deserialize_f64 => "f64",
        deserialize_char => "char", deserialize_str => "string",
        deserialize_string => "string", deserialize_bytes => "bytes",
        deserialize_byte_buf => "bytes", deserialize_option => "option",
        deserialize_unit => "unit", deserialize_seq => "sequence", deserialize_map => "map",
        deserialize_identifier => "identifier", deserialize_ignored_any => "any",
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.note(Layout::Struct {
            name,
            fields: Vec::new(),
        });
        Err(Stop)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.note(Layout::Other(name));
        Err(Stop)
    }

    fn deserialize_tuple<V: Visitor<'de>>(mut self, _: usize, _: V) -> Result<V::Value, Stop> {
        self.note(Layout::Other("tuple"));
        Err(Stop)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.note(Layout::Other(name));
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.note(Layout::Struct {
            name,
            fields: fields.to_vec(),
        });
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.note(Layout::Enum {
            name,
            variants: variants.iter().map(|v| (*v, Shape::Unknown)).collect(),
        });
        match self.pick {
            Some(index) => visitor.visit_enum(Picked {
                seen: self.seen,
                index,
            }),
            None => Err(Stop),
        }
    }
}

/// An enum access that picks one variant by index and notes its shape.
struct Picked<'a> {
    seen: &'a mut Seen,
    index: u32,
}

impl<'de, 'a> EnumAccess<'de> for Picked<'a> {
    type Error = Stop;
    type Variant = Picked<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Stop> {
        use serde::de::IntoDeserializer;
        let index: de::value::U32Deserializer<Stop> = self.index.into_deserializer();
        let value = seed.deserialize(index)?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for Picked<'_> {
    type Error = Stop;

    fn unit_variant(self) -> Result<(), Stop> {
        self.seen.shape = Some(Shape::Unit);
        Err(Stop)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _: S) -> Result<S::Value, Stop> {
        self.seen.shape = Some(Shape::Newtype);
        Err(Stop)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, _: V) -> Result<V::Value, Stop> {
        self.seen.shape = Some(Shape::Tuple(len));
        Err(Stop)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.seen.shape = Some(Shape::Struct(fields.to_vec()));
        Err(Stop)
    }
}
