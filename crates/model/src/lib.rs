//! Purveyor's data model.
//!
//! Namespaces hold classes; a class has a [`ClassSchema`] of typed properties (each with a
//! [`Unit`] and a [`Semantic`]), methods and events; an [`Instance`] is a set of property
//! values identified by its key properties.
//!
//! **Invariant:** this crate does no I/O. Every name is a validated newtype, so a value of
//! type [`ClassPath`] is always a well-formed class path.

mod filter;
mod instance;
#[cfg(feature = "schema")]
mod json_schema;
mod name;
mod provider;
mod refusal;
mod schema;
mod value;
pub mod wire;

pub use filter::{CompareOp, Condition, matches_all};
pub use instance::{
    DuplicateName, Instance, InstanceKey, KeyError, MAX_KEY_PROPERTIES, Names,
    list as instance_list,
};
pub use name::{ClassPath, Identifier, NameError, NamespacePath, ProviderName};
pub use provider::{Capability, Hosting, ProviderState};
pub use refusal::take_refusal;
pub use schema::{
    ClassSchema, EventDef, MethodDef, ParamDef, PropertyDef, SchemaError, Semantic, Unit,
};
pub use value::{ParseValueError, ScalarType, Timestamp, Value, ValueType};

/// `text` cut to at most `max` bytes (at a character boundary), with how long it was when
/// cut: `"aaaa…(15728640 bytes)"`. For every value from a peer that is echoed in an
/// error or written to a log: a bad 15 MiB field costs a few hundred bytes, not 15 MiB.
pub fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…({} bytes)", &text[..end], text.len()))
}

/// The most bytes of a peer's value quoted in an error message.
pub const QUOTE_MAX: usize = 96;

/// An instance of properties fixed in source code, built from one table of names made
/// once per call site: `instance! { "load1" => Value::F64(0.5), "runnable" => Value::U64(2) }`.
/// The fast way for a provider to build many instances (no name is looked up or copied).
#[macro_export]
macro_rules! instance {
    ($($name:literal => $value:expr),* $(,)?) => {{
        static NAMES: ::std::sync::LazyLock<$crate::Names> =
            ::std::sync::LazyLock::new(|| $crate::Names::fixed(&[$($name),*]));
        $crate::Instance::with_values(&NAMES, ::std::vec![$($value),*])
    }};
}
