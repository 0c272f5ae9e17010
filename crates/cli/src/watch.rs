//! `purveyor watch`: samples a class at an interval and shows counters as rates.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use purveyor_client::Client;
use purveyor_model::{ClassSchema, Instance, InstanceKey, Semantic, Unit, Value};
use serde_json::json;

use crate::render;

pub fn run(
    client: &mut Client,
    schema: &ClassSchema,
    selector: &InstanceKey,
    interval: Duration,
    count: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    let tty = std::io::stdout().is_terminal() && !json;
    let mut previous: Option<(Instant, Vec<Instance>)> = None;
    let mut shown = 0u64;
    loop {
        let taken = Instant::now();
        let sample = client.enumerate(schema.path(), selector)?;
        if let Some((then, before)) = &previous {
            let elapsed = taken.duration_since(*then);
            let rates = rates(schema, before, &sample, elapsed);
            let text = if json {
                format!("{}\n", sample_json(schema, &sample, &rates))
            } else {
                let mut text = String::new();
                if tty {
                    text.push_str("\x1b[H\x1b[2J");
                }
                text.push_str(&format!(
                    "{}  every {}  (counters per second)\n",
                    schema.path(),
                    humantime::format_duration(interval)
                ));
                text.push_str(&table(schema, &sample, &rates));
                text
            };
            crate::out(&text)?;
            shown += 1;
            if count.is_some_and(|c| shown >= c) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        previous = Some((taken, sample));
        std::thread::sleep(interval.saturating_sub(taken.elapsed()));
    }
}

/// What two samples say about each instance's properties, by instance key and property:
/// a counter's rate per second, a delta's difference, and an average's mean over the
/// interval (a gauge `X` with counters `X_sum` and `X_count`: Δsum / Δcount; see
/// `docs/counter-file.md`). A counter that went backwards (a restart, a wrap) has no
/// value for this interval: the older sample is dropped rather than showing nonsense.
pub fn rates(
    schema: &ClassSchema,
    before: &[Instance],
    after: &[Instance],
    elapsed: Duration,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let secs = elapsed.as_secs_f64();
    let mut out = BTreeMap::new();
    if secs <= 0.0 {
        return out;
    }
    let old: BTreeMap<String, &Instance> = before
        .iter()
        .map(|i| (i.key(schema).to_string(), i))
        .collect();
    let is_counter = |name: &str| {
        schema
            .property(name)
            .is_some_and(|p| matches!(p.semantic, Semantic::Counter | Semantic::Delta))
    };
    for instance in after {
        let key = instance.key(schema).to_string();
        let Some(prev) = old.get(&key) else { continue };
        let change = |name: &str| {
            let (a, b) = (
                prev.get(name).and_then(Value::as_f64)?,
                instance.get(name).and_then(Value::as_f64)?,
            );
            (b >= a).then_some(b - a)
        };
        let mut per = BTreeMap::new();
        for p in schema.properties() {
            let name = p.name.as_str();
            let derived = match p.semantic {
                Semantic::Counter => change(name).map(|d| d / secs),
                Semantic::Delta => change(name),
                Semantic::Gauge => {
                    let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
                    if is_counter(&sum) && is_counter(&count) {
                        match (change(&sum), change(&count)) {
                            (Some(ds), Some(dc)) if dc > 0.0 => Some(ds / dc),
                            _ => None,
                        }
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some(v) = derived {
                per.insert(name.to_owned(), v);
            }
        }
        out.insert(key, per);
    }
    out
}

fn table(
    schema: &ClassSchema,
    sample: &[Instance],
    rates: &BTreeMap<String, BTreeMap<String, f64>>,
) -> String {
    let header: Vec<&str> = schema
        .properties()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut t = render::table(header);
    for instance in sample {
        let key = instance.key(schema).to_string();
        let row: Vec<String> = schema
            .properties()
            .iter()
            .map(|p| {
                let derived = rates.get(&key).and_then(|r| r.get(p.name.as_str()));
                match (p.semantic, derived) {
                    (Semantic::Counter, Some(rate)) => rate_cell(*rate, p.unit),
                    (Semantic::Counter | Semantic::Delta, None) => "-".into(),
                    (_, Some(v)) => render::float(*v),
                    (_, None) => render::cell(instance.get(p.name.as_str()), p),
                }
            })
            .collect();
        t.add_row(row);
    }
    for (i, p) in schema.properties().iter().enumerate() {
        if p.ty.is_numeric() && p.semantic != Semantic::Key {
            render::align_right(&mut t, i);
        }
    }
    render::table_text(&t)
}

/// A rate as a person reads it: seconds per second as a percentage, bytes per second in
/// binary units, anything else per second.
fn rate_cell(rate: f64, unit: Unit) -> String {
    match unit {
        Unit::Seconds => format!("{:.1}%", rate * 100.0),
        Unit::Bytes => format!("{}/s", render::bytes(rate)),
        _ => format!("{}/s", render::float(rate)),
    }
}

fn sample_json(
    schema: &ClassSchema,
    sample: &[Instance],
    rates: &BTreeMap<String, BTreeMap<String, f64>>,
) -> serde_json::Value {
    let instances: Vec<serde_json::Value> = sample
        .iter()
        .map(|i| {
            let mut value = render::instance_json(i);
            let key = i.key(schema).to_string();
            value["rates"] = json!(rates.get(&key).cloned().unwrap_or_default());
            value
        })
        .collect();
    json!({
        "time": render::timestamp(purveyor_model::Timestamp::now().0),
        "class": schema.path().as_str(),
        "instances": instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::{ClassPath, PropertyDef};

    fn schema() -> ClassSchema {
        ClassSchema::new(
            ClassPath::new("t.net").unwrap(),
            "",
            vec![
                PropertyDef::new("if", "string", Unit::None, Semantic::Key, ""),
                PropertyDef::new("rx", "u64", Unit::Bytes, Semantic::Counter, ""),
                PropertyDef::new("q", "u64", Unit::Count, Semantic::Gauge, ""),
            ],
            vec![],
            vec![],
        )
        .unwrap()
    }

    fn inst(name: &str, rx: u64) -> Instance {
        Instance::from_pairs([
            ("if", Value::String(name.into())),
            ("rx", Value::U64(rx)),
            ("q", Value::U64(7)),
        ])
    }

    #[test]
    fn rates_come_from_two_samples_by_key() {
        let s = schema();
        let r = rates(
            &s,
            &[inst("a", 100), inst("b", 10)],
            &[inst("b", 30), inst("a", 300)],
            Duration::from_secs(2),
        );
        assert_eq!(r["if=a"]["rx"], 100.0);
        assert_eq!(r["if=b"]["rx"], 10.0);
        assert!(!r["if=a"].contains_key("q"), "gauges have no rate");
    }

    /// Deltas are differences; an average is Δsum / Δcount over the interval.
    #[test]
    fn deltas_and_averages_come_from_two_samples() {
        let s = ClassSchema::new(
            ClassPath::new("app.shop").unwrap(),
            "",
            vec![
                PropertyDef::new("errors", "u64", Unit::Count, Semantic::Delta, ""),
                PropertyDef::new("latency", "f64", Unit::Microseconds, Semantic::Gauge, ""),
                PropertyDef::new(
                    "latency_sum",
                    "u64",
                    Unit::Microseconds,
                    Semantic::Counter,
                    "",
                ),
                PropertyDef::new("latency_count", "u64", Unit::Count, Semantic::Counter, ""),
            ],
            vec![],
            vec![],
        )
        .unwrap();
        let at = |errors: u64, sum: u64, count: u64| {
            Instance::from_pairs([
                ("errors", Value::U64(errors)),
                ("latency", Value::F64(sum as f64 / count as f64)),
                ("latency_sum", Value::U64(sum)),
                ("latency_count", Value::U64(count)),
            ])
        };
        let r = rates(
            &s,
            &[at(5, 1000, 10)],
            &[at(8, 1600, 13)],
            Duration::from_secs(2),
        );
        let r = r.values().next().unwrap();
        assert_eq!(r["errors"], 3.0);
        assert_eq!(r["latency"], 200.0);
        assert_eq!(
            r["latency_sum"], 300.0,
            "the sum is still a counter: per second"
        );
    }

    #[test]
    fn a_counter_that_goes_backwards_has_no_rate() {
        let s = schema();
        let r = rates(
            &s,
            &[inst("a", 500)],
            &[inst("a", 20)],
            Duration::from_secs(1),
        );
        assert!(!r["if=a"].contains_key("rx"));
        let r = rates(&s, &[], &[inst("new", 20)], Duration::from_secs(1));
        assert!(!r.contains_key("if=new"), "a new instance has no rate yet");
        assert_eq!(rate_cell(0.25, Unit::Seconds), "25.0%");
        assert_eq!(rate_cell(2048.0, Unit::Bytes), "2.0 KiB/s");
    }
}
