//! Event filters: conditions on an event's properties, all of which must hold.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ClassPath, EventDef, Identifier, Instance, Value, ValueType};

/// How a condition compares a property with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// `property OP value`: one condition of a filter. JSON form:
/// `{"property":"name","op":"eq","value":{"string":"color"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Condition {
    pub property: Identifier,
    pub op: CompareOp,
    pub value: Value,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }

    /// Ordered comparisons need numbers, strings or timestamps.
    fn orders(self) -> bool {
        !matches!(self, CompareOp::Eq | CompareOp::Ne)
    }
}

impl Condition {
    /// A subscription filter of `schema`'s events: against `event` when one is named,
    /// else against the first event that has the property the condition names (or the
    /// first event). `subscribe`'s filters from the CLI and the HTTP gateway alike.
    pub fn parse_for_events(
        schema: &crate::ClassSchema,
        event: Option<&Identifier>,
        text: &str,
    ) -> Result<Condition, String> {
        let name = text.split(['=', '!', '<', '>']).next().unwrap_or_default();
        let def = match event {
            Some(e) => schema.event(e.as_str()),
            None => schema
                .events()
                .iter()
                .find(|d| d.property(name.trim()).is_some())
                .or(schema.events().first()),
        };
        let def = def.ok_or_else(|| format!("class {} declares no events", schema.path()))?;
        Condition::parse(schema.path(), def, text)
    }

    /// Parses `NAME=VALUE`, `NAME!=VALUE`, `NAME<VALUE`, `NAME<=VALUE`, `NAME>VALUE` or
    /// `NAME>=VALUE` against an event's properties, typing the value by the property.
    pub fn parse(class: &ClassPath, event: &EventDef, text: &str) -> Result<Condition, String> {
        let at = text
            .find(['=', '!', '<', '>'])
            .ok_or_else(|| format!("filter {text:?} is not NAME=VALUE (or !=, <, <=, >, >=)"))?;
        let (name, rest) = text.split_at(at);
        let (op, value) = [
            ("!=", CompareOp::Ne),
            ("<=", CompareOp::Le),
            (">=", CompareOp::Ge),
            ("=", CompareOp::Eq),
            ("<", CompareOp::Lt),
            (">", CompareOp::Gt),
        ]
        .into_iter()
        .find_map(|(sym, op)| rest.strip_prefix(sym).map(|v| (op, v)))
        .ok_or_else(|| format!("filter {text:?} is not NAME=VALUE (or !=, <, <=, >, >=)"))?;
        let prop = event.property(name.trim()).ok_or_else(|| {
            format!(
                "event {class}.{} has no property {:?} to filter on",
                event.name,
                name.trim()
            )
        })?;
        let value = Value::parse_as(value, prop.ty)
            .map_err(|e| format!("filter on {:?}: {e}", prop.name.as_str()))?;
        let condition = Condition {
            property: prop.name.clone(),
            op,
            value,
        };
        condition.check(class, event)?;
        Ok(condition)
    }

    /// Checks the condition against the event's schema: the property exists, the value has
    /// its type, and an ordered comparison is on an orderable type.
    pub fn check(&self, class: &ClassPath, event: &EventDef) -> Result<(), String> {
        let prop = event.property(self.property.as_str()).ok_or_else(|| {
            format!(
                "event {class}.{} has no property {:?} to filter on",
                event.name,
                self.property.as_str()
            )
        })?;
        if !self.value.conforms_to(prop.ty) {
            return Err(format!(
                "filter on {:?} of event {class}.{}: the property has type {}, the value {}",
                prop.name.as_str(),
                event.name,
                prop.ty,
                self.value.value_type()
            ));
        }
        let orderable = matches!(prop.ty, ValueType::Scalar(s) if !matches!(s, crate::ScalarType::Bool | crate::ScalarType::Bytes));
        if self.op.orders() && !orderable {
            return Err(format!(
                "filter on {:?} of event {class}.{}: {} cannot be compared with {}",
                prop.name.as_str(),
                event.name,
                prop.ty,
                self.op.as_str()
            ));
        }
        Ok(())
    }

    /// Whether `data` satisfies the condition. A missing property satisfies nothing.
    pub fn matches(&self, data: &Instance) -> bool {
        let Some(have) = data.get(self.property.as_str()) else {
            return false;
        };
        match self.op {
            CompareOp::Eq => have == &self.value,
            CompareOp::Ne => have != &self.value,
            op => {
                let Some(order) = compare(have, &self.value) else {
                    return false;
                };
                match op {
                    CompareOp::Lt => order == Ordering::Less,
                    CompareOp::Le => order != Ordering::Greater,
                    CompareOp::Gt => order == Ordering::Greater,
                    _ => order != Ordering::Less,
                }
            }
        }
    }
}

/// Every condition holds (an empty filter matches everything).
pub fn matches_all(filter: &[Condition], data: &Instance) -> bool {
    filter.iter().all(|c| c.matches(data))
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::I64(x), Value::I64(y)) => Some(x.cmp(y)),
        (Value::U64(x), Value::U64(y)) => Some(x.cmp(y)),
        (Value::F64(x), Value::F64(y)) => x.partial_cmp(y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.property, self.op.as_str(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PropertyDef, Semantic, Unit};

    fn event() -> (ClassPath, EventDef) {
        (
            ClassPath::new("config.setting").unwrap(),
            EventDef {
                name: Identifier::new("changed").unwrap(),
                properties: vec![
                    PropertyDef::new("name", "string", Unit::None, Semantic::Discrete, ""),
                    PropertyDef::new("version", "u64", Unit::None, Semantic::Discrete, ""),
                    PropertyDef::new("deleted", "bool", Unit::None, Semantic::Discrete, ""),
                ],
                description: String::new(),
            },
        )
    }

    #[test]
    fn parses_and_matches_each_operator() {
        let (class, ev) = event();
        let data = Instance::from_pairs([
            ("name", Value::String("color".into())),
            ("version", Value::U64(3)),
            ("deleted", Value::Bool(false)),
        ]);
        let cases = [
            ("name=color", true),
            ("name!=color", false),
            ("version<3", false),
            ("version<=3", true),
            ("version>2", true),
            ("version>=4", false),
            ("deleted=false", true),
            ("name>b", true),
        ];
        for (text, want) in cases {
            let c = Condition::parse(&class, &ev, text).unwrap();
            assert_eq!(c.matches(&data), want, "{text}");
        }
        let missing = Condition::parse(&class, &ev, "name=x").unwrap();
        assert!(!missing.matches(&Instance::new()));
    }

    #[test]
    fn refuses_bad_filters_with_exact_errors() {
        let (class, ev) = event();
        assert_eq!(
            Condition::parse(&class, &ev, "colour=red").unwrap_err(),
            "event config.setting.changed has no property \"colour\" to filter on"
        );
        assert_eq!(
            Condition::parse(&class, &ev, "version=x").unwrap_err(),
            "filter on \"version\": \"x\" is not a valid u64"
        );
        assert_eq!(
            Condition::parse(&class, &ev, "deleted<true").unwrap_err(),
            "filter on \"deleted\" of event config.setting.changed: bool cannot be compared with <"
        );
        assert!(Condition::parse(&class, &ev, "version").is_err());
        let wrong = Condition {
            property: Identifier::new("version").unwrap(),
            op: CompareOp::Eq,
            value: Value::String("3".into()),
        };
        assert_eq!(
            wrong.check(&class, &ev).unwrap_err(),
            "filter on \"version\" of event config.setting.changed: the property has type u64, the value string"
        );
    }
}
