//! From classes to metrics: which classes a scrape covers, and how each numeric property
//! becomes a metric family (name, type, unit, labels). The exposition formats
//! (`exposition.rs`) and the OTLP exporter write what [`gather`] returns.
//!
//! Naming (documented in `docs/http.md`): `<class path with dots as _>_<property>`, then
//! the base unit (`_bytes`, `_seconds`, `_ratio`, `_hertz`) unless the property name
//! already ends with it; values in milliseconds, microseconds and nanoseconds are
//! converted to seconds and percentages to ratios. Counters (the `counter` and `delta`
//! semantics) get `_total` in the exposition. Key properties become labels; a key named
//! `instance` or `job` (labels Prometheus sets on every target) becomes `exported_instance`
//! or `exported_job`, as Prometheus itself would rename it.

use std::collections::HashSet;

use futures_util::future::join_all;
use purveyor_host::{Caller, Host, Manifest};
use purveyor_model::{
    ClassSchema, Hosting, Instance, NamespacePath, PropertyDef, Semantic, Unit, Value,
};

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic: consumers compute rates. Written with `_total`.
    Counter,
    /// An instant value.
    Gauge,
}

/// One metric family: a numeric property of a class, across its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The name without the unit and without `_total` (`system_cpu_user`).
    pub stem: String,
    /// The base unit, part of the name (`seconds`).
    pub unit: Option<&'static str>,
    pub kind: Kind,
    /// From the property's description, else the class's.
    pub help: String,
    pub samples: Vec<Sample>,
}

impl Family {
    /// The family's name with its unit, without `_total` (`system_cpu_user_seconds`).
    pub fn name(&self) -> String {
        match self.unit {
            Some(unit) => format!("{}_{unit}", self.stem),
            None => self.stem.clone(),
        }
    }
}

/// One value of a family, for one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values, in the class's key order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One scrape's data.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub families: Vec<Family>,
    /// Classes that could not be read, with the reason (reported as comments and in the
    /// log; the rest of the scrape is served).
    pub problems: Vec<String>,
}

impl Snapshot {
    /// How many samples the snapshot holds.
    pub fn samples(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }
}

/// What `/metrics` exports (`[metrics]` in the gateway's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Namespaces whose classes are exported.
    pub export: Vec<NamespacePath>,
    /// Namespaces or classes left out, even when under `export`.
    pub exclude: Vec<NamespacePath>,
    /// Namespaces whose providers a scrape may load when idle-unloaded. Builtin
    /// providers (compiled into the daemon) are always loaded; other providers are only
    /// scraped while they are loaded anyway, unless listed here.
    pub load: Vec<NamespacePath>,
}

impl Default for Selection {
    fn default() -> Self {
        let ns = |s: &str| NamespacePath::new(s).expect("default namespace is valid");
        Selection {
            export: vec![ns("system"), ns("app"), ns("purveyor")],
            exclude: Vec::new(),
            load: Vec::new(),
        }
    }
}

impl Selection {
    /// Whether a scrape may load this provider when it is not loaded.
    fn may_load(&self, manifest: &Manifest) -> bool {
        manifest.hosting == Hosting::Builtin
            || manifest
                .classes
                .iter()
                .any(|c| self.load.iter().any(|ns| ns.contains(c)))
            || manifest
                .namespaces
                .iter()
                .any(|n| self.load.iter().any(|ns| ns.overlaps(n)))
    }
}

impl Selection {
    /// Whether `class` is left out: `exclude` names it, or a namespace it is in.
    pub fn excludes(&self, class: &purveyor_model::ClassPath) -> bool {
        self.exclude
            .iter()
            .any(|ns| ns.as_str() == class.as_str() || ns.contains(class))
    }
}

/// Reads every exported class as `caller` (its access rules apply) and converts it.
pub async fn gather(host: &Host, selection: &Selection, caller: &Caller) -> Snapshot {
    let wake = |m: &Manifest| selection.may_load(m);
    let list = host.export_classes(&selection.export, &wake, caller).await;
    let classes: Vec<ClassSchema> = list
        .classes
        .into_iter()
        .filter(|c| !selection.excludes(c.path()))
        .collect();
    let mut snapshot = Snapshot {
        families: Vec::new(),
        problems: list.problems.iter().map(|p| p.message.clone()).collect(),
    };
    let reads = join_all(
        classes
            .iter()
            .map(|c| host.scrape(c.path().clone(), caller)),
    )
    .await;
    let mut names = HashSet::new();
    for (schema, read) in classes.iter().zip(reads) {
        match read {
            Ok(list) => convert(schema, &list.instances, &mut names, &mut snapshot),
            Err(error) => snapshot
                .problems
                .push(format!("{}: {}", schema.path(), error.message)),
        }
    }
    snapshot
}

/// Adds one class's families to `snapshot`. A name another family already took is
/// reported as a problem and left out.
pub fn convert(
    schema: &ClassSchema,
    instances: &[Instance],
    names: &mut HashSet<String>,
    snapshot: &mut Snapshot,
) {
    let keys: Vec<&PropertyDef> = schema.keys().collect();
    let labels: Vec<Vec<(String, String)>> = instances
        .iter()
        .map(|instance| {
            keys.iter()
                .map(|k| {
                    let value = instance.get(k.name.as_str()).map(Value::to_string);
                    (label_name(k.name.as_str()), value.unwrap_or_default())
                })
                .collect()
        })
        .collect();
    let class = sanitize(schema.path().as_str());
    for prop in schema.properties() {
        let kind = match prop.semantic {
            Semantic::Key => continue,
            Semantic::Counter | Semantic::Delta => Kind::Counter,
            Semantic::Gauge | Semantic::Discrete => Kind::Gauge,
        };
        let Some((unit, scale)) = base_unit(prop) else {
            continue;
        };
        let stem = stem(&class, prop.name.as_str(), unit);
        let family_name = match unit {
            Some(u) => format!("{stem}_{u}"),
            None => stem.clone(),
        };
        if !names.insert(family_name.clone()) {
            snapshot.problems.push(format!(
                "{}.{}: metric name {family_name} is taken by another property; left out",
                schema.path(),
                prop.name
            ));
            continue;
        }
        let samples = instances
            .iter()
            .zip(&labels)
            .filter_map(|(instance, labels)| {
                let value = number(instance.get(prop.name.as_str())?)? * scale;
                Some(Sample {
                    labels: labels.clone(),
                    value,
                })
            })
            .collect::<Vec<_>>();
        if samples.is_empty() {
            continue;
        }
        let help = if prop.description.is_empty() {
            format!("{} {}", schema.path(), prop.name)
        } else {
            prop.description.clone()
        };
        snapshot.families.push(Family {
            stem,
            unit,
            kind,
            help,
            samples,
        });
    }
}

/// The base unit a property is exported in and the factor to it; `None` for a property
/// that is not a number (strings, byte strings, arrays).
fn base_unit(prop: &PropertyDef) -> Option<(Option<&'static str>, f64)> {
    use purveyor_model::{ScalarType, ValueType};
    match prop.ty {
        ValueType::Scalar(ScalarType::I64 | ScalarType::U64 | ScalarType::F64) => {}
        ValueType::Scalar(ScalarType::Bool) => return Some((None, 1.0)),
        // Nanoseconds since the epoch, exported in seconds (like process_start_time_seconds).
        ValueType::Scalar(ScalarType::Timestamp) => return Some((Some("seconds"), 1e-9)),
        _ => return None,
    }
    Some(match prop.unit {
        Unit::Bytes => (Some("bytes"), 1.0),
        Unit::Seconds => (Some("seconds"), 1.0),
        Unit::Milliseconds => (Some("seconds"), 1e-3),
        Unit::Microseconds => (Some("seconds"), 1e-6),
        Unit::Nanoseconds => (Some("seconds"), 1e-9),
        Unit::Percent => (Some("ratio"), 0.01),
        Unit::Ratio => (Some("ratio"), 1.0),
        Unit::Hertz => (Some("hertz"), 1.0),
        // Counts of things: the thing is in the property's name (`rx_packets`).
        _ => (None, 1.0),
    })
}

/// The family name without unit: the class and the property, with the property's own
/// unit suffix dropped when the base unit replaces it (`latency_ms` → `latency`,
/// `rx_bytes` → `rx`, so that the unit is written once).
fn stem(class: &str, property: &str, unit: Option<&str>) -> String {
    let property = sanitize(property);
    let mut base = property.as_str();
    if let Some(unit) = unit {
        let suffixes: &[&str] = match unit {
            "seconds" => &[
                "_seconds", "_secs", "_sec", "_ms", "_msec", "_us", "_usec", "_ns", "_nsec",
            ],
            "bytes" => &["_bytes"],
            "ratio" => &["_ratio", "_percent", "_pct"],
            "hertz" => &["_hertz", "_hz"],
            _ => &[],
        };
        if suffixes.iter().any(|s| &s[1..] == base) {
            // The property is named after its unit (`bytes`): the unit alone says it.
            return class.to_string();
        }
        if let Some(stripped) = suffixes.iter().find_map(|s| base.strip_suffix(s)) {
            base = stripped;
        }
    }
    format!("{class}_{base}")
}

/// A metric or label name: letters, digits and `_`; anything else becomes `_`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A key property's label name; `instance` and `job` are Prometheus' target labels.
fn label_name(key: &str) -> String {
    match key {
        "instance" | "job" => format!("exported_{key}"),
        other => sanitize(other),
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Timestamp(t) => Some(t.0 as f64),
        other => other.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::{ClassPath, Identifier};

    fn schema() -> ClassSchema {
        let p = PropertyDef::new;
        ClassSchema::new(
            ClassPath::new("app.web").unwrap(),
            "a web server",
            vec![
                p(
                    "instance",
                    "string",
                    Unit::None,
                    Semantic::Key,
                    "the instance",
                ),
                p(
                    "requests",
                    "u64",
                    Unit::Count,
                    Semantic::Counter,
                    "requests served",
                ),
                p("latency_ms", "f64", Unit::Milliseconds, Semantic::Gauge, ""),
                p("hit", "f64", Unit::Percent, Semantic::Gauge, "cache hits"),
                p("rx_bytes", "u64", Unit::Bytes, Semantic::Delta, "bytes in"),
                p("stale", "bool", Unit::None, Semantic::Discrete, "gone"),
                p(
                    "version",
                    "string",
                    Unit::None,
                    Semantic::Discrete,
                    "not a number",
                ),
            ],
            vec![],
            vec![],
        )
        .unwrap()
    }

    fn instance(name: &str, requests: u64) -> Instance {
        let id = |s: &str| Identifier::new(s).unwrap();
        [
            (id("instance"), Value::String(name.into())),
            (id("requests"), Value::U64(requests)),
            (id("latency_ms"), Value::F64(250.0)),
            (id("hit"), Value::F64(50.0)),
            (id("rx_bytes"), Value::U64(7)),
            (id("stale"), Value::Bool(true)),
            (id("version"), Value::String("1.2".into())),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn properties_become_families_with_base_units_types_and_key_labels() {
        let mut snapshot = Snapshot::default();
        let instances = [instance("a\"b", 3), instance("c", 4)];
        convert(&schema(), &instances, &mut HashSet::new(), &mut snapshot);
        let table: Vec<(String, Kind, Vec<f64>)> = snapshot
            .families
            .iter()
            .map(|f| {
                (
                    f.name(),
                    f.kind,
                    f.samples.iter().map(|s| s.value).collect(),
                )
            })
            .collect();
        assert_eq!(
            table,
            vec![
                ("app_web_requests".into(), Kind::Counter, vec![3.0, 4.0]),
                (
                    "app_web_latency_seconds".into(),
                    Kind::Gauge,
                    vec![0.25, 0.25]
                ),
                ("app_web_hit_ratio".into(), Kind::Gauge, vec![0.5, 0.5]),
                ("app_web_rx_bytes".into(), Kind::Counter, vec![7.0, 7.0]),
                ("app_web_stale".into(), Kind::Gauge, vec![1.0, 1.0]),
            ]
        );
        let first = &snapshot.families[0].samples[0];
        assert_eq!(
            first.labels,
            vec![("exported_instance".to_string(), "a\"b".to_string())]
        );
        assert_eq!(snapshot.families[0].help, "requests served");
        assert_eq!(snapshot.families[1].help, "app.web latency_ms");
        assert!(snapshot.problems.is_empty());
    }

    #[test]
    fn a_name_taken_twice_is_reported_and_left_out() {
        let mut names = HashSet::new();
        let mut snapshot = Snapshot::default();
        convert(&schema(), &[instance("a", 1)], &mut names, &mut snapshot);
        convert(&schema(), &[instance("a", 1)], &mut names, &mut snapshot);
        assert_eq!(snapshot.families.len(), 5);
        assert_eq!(snapshot.problems.len(), 5);
        assert!(
            snapshot.problems[0].contains("metric name app_web_requests is taken"),
            "{:?}",
            snapshot.problems
        );
    }

    #[test]
    fn stems_drop_a_unit_suffix_the_base_unit_replaces() {
        assert_eq!(stem("a", "latency_ms", Some("seconds")), "a_latency");
        assert_eq!(stem("a", "rx_bytes", Some("bytes")), "a_rx");
        assert_eq!(stem("a", "bytes", Some("bytes")), "a");
        assert_eq!(stem("a", "uptime", Some("seconds")), "a_uptime");
        assert_eq!(stem("a", "rx_packets", None), "a_rx_packets");
        assert_eq!(sanitize("app.my-service"), "app_my_service");
    }
}
