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
mod name;
mod provider;
mod schema;
mod value;

pub use filter::{CompareOp, Condition, matches_all};
pub use instance::{Instance, InstanceKey, KeyError};
pub use name::{ClassPath, Identifier, NameError, NamespacePath, ProviderName};
pub use provider::{Capability, Hosting, ProviderState};
pub use schema::{
    ClassSchema, EventDef, MethodDef, ParamDef, PropertyDef, SchemaError, Semantic, Unit,
};
pub use value::{ParseValueError, ScalarType, Timestamp, Value, ValueType};
