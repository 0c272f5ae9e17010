//! Human tables and script-friendly JSON.

use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{CellAlignment, Table, presets};
use purveyor_client::{HostStatus, Mode, ProviderStatus};
use purveyor_model::{ClassSchema, Instance, PropertyDef, Semantic, Unit, Value};
use serde_json::json;

/// A borderless table with a header row.
pub fn table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    table
}

/// A table's text, without the padding comfy-table leaves at line ends.
pub fn table_text(table: &Table) -> String {
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn classes(classes: &[ClassSchema]) -> String {
    let mut t = table(vec!["CLASS", "KEYS", "PROPERTIES", "DESCRIPTION"]);
    for c in classes {
        let keys: Vec<&str> = c.keys().map(|k| k.name.as_str()).collect();
        t.add_row(vec![
            c.path().to_string(),
            if keys.is_empty() {
                "(singleton)".into()
            } else {
                keys.join(",")
            },
            c.properties().len().to_string(),
            c.description().to_owned(),
        ]);
    }
    table_text(&t)
}

pub fn schema(schema: &ClassSchema) -> String {
    let mut text = format!("{}: {}\n", schema.path(), schema.description());
    let mut t = table(vec!["PROPERTY", "TYPE", "UNIT", "SEMANTIC", "DESCRIPTION"]);
    for p in schema.properties() {
        t.add_row(vec![
            p.name.to_string(),
            p.ty.to_string(),
            unit_name(p.unit).to_owned(),
            format!("{:?}", p.semantic).to_lowercase(),
            p.description.clone(),
        ]);
    }
    text.push_str(&table_text(&t));
    for m in schema.methods() {
        let params: Vec<String> = m
            .params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty))
            .collect();
        let result = m.result.map(|r| format!(" -> {r}")).unwrap_or_default();
        text.push_str(&format!(
            "  method {}({}){result}  {}\n",
            m.name,
            params.join(", "),
            m.description
        ));
    }
    for e in schema.events() {
        text.push_str(&format!("  event {}  {}\n", e.name, e.description));
    }
    text.push('\n');
    text
}

/// Instances as a table: one row per instance, or one row per property for a singleton.
pub fn instances(schema: &ClassSchema, instances: &[Instance]) -> String {
    if schema.is_singleton() {
        let mut t = table(vec!["PROPERTY", "VALUE"]);
        if let Some(instance) = instances.first() {
            for p in schema.properties() {
                t.add_row(vec![
                    p.name.to_string(),
                    cell(instance.get(p.name.as_str()), p),
                ]);
            }
        }
        align_right(&mut t, 1);
        return table_text(&t);
    }
    let header: Vec<&str> = schema
        .properties()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut t = table(header);
    for instance in instances {
        t.add_row(
            schema
                .properties()
                .iter()
                .map(|p| cell(instance.get(p.name.as_str()), p))
                .collect::<Vec<_>>(),
        );
    }
    for (i, p) in schema.properties().iter().enumerate() {
        if p.ty.is_numeric() && p.semantic != Semantic::Key {
            align_right(&mut t, i);
        }
    }
    table_text(&t)
}

pub fn align_right(t: &mut Table, column: usize) {
    if let Some(c) = t.column_mut(column) {
        c.set_cell_alignment(CellAlignment::Right);
    }
}

/// `{"class": ..., "instances": [{"prop": plain JSON value}]}`: numbers as numbers,
/// timestamps as RFC 3339 strings, bytes as hex.
pub fn instances_json(schema: &ClassSchema, instances: &[Instance]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = instances.iter().map(instance_json).collect();
    json!({ "class": schema.path().as_str(), "instances": list })
}

pub fn instance_json(instance: &Instance) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = instance
        .values()
        .map(|(k, v)| (k.to_string(), plain_json(v)))
        .collect();
    serde_json::Value::Object(map)
}

pub fn plain_json(value: &Value) -> serde_json::Value {
    match value {
        Value::I64(v) => json!(v),
        Value::U64(v) => json!(v),
        Value::F64(v) => json!(v),
        Value::Bool(v) => json!(v),
        Value::String(v) => json!(v),
        Value::Bytes(_) => json!(value.to_string()),
        Value::Timestamp(t) => json!(timestamp(t.0)),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(plain_json).collect()),
    }
}

/// A value as a table shows it: bytes in binary units, times as dates, floats rounded.
pub fn cell(value: Option<&Value>, prop: &PropertyDef) -> String {
    let Some(value) = value else {
        return "-".into();
    };
    match (value, prop.unit) {
        (Value::U64(v), Unit::Bytes)
            if matches!(
                prop.semantic,
                Semantic::Gauge | Semantic::Counter | Semantic::Delta
            ) =>
        {
            bytes(*v as f64)
        }
        (Value::Timestamp(t), _) => timestamp(t.0),
        (Value::F64(v), unit) => format!("{}{}", float(*v), unit_suffix(unit)),
        (v, unit) if v.as_f64().is_some() => format!("{v}{}", unit_suffix(unit)),
        (v, _) => v.to_string(),
    }
}

pub fn float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = v;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn timestamp(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn unit_suffix(unit: Unit) -> &'static str {
    match unit {
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Percent => "%",
        Unit::Hertz => "Hz",
        _ => "",
    }
}

pub fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::None => "-",
        Unit::Count => "count",
        Unit::Bytes => "bytes",
        Unit::Seconds => "seconds",
        Unit::Milliseconds => "milliseconds",
        Unit::Microseconds => "microseconds",
        Unit::Nanoseconds => "nanoseconds",
        Unit::Percent => "percent",
        Unit::Ratio => "ratio",
        Unit::Hertz => "hertz",
        Unit::Packets => "packets",
        Unit::Operations => "operations",
        Unit::Pages => "pages",
        _ => "?",
    }
}

/// `purveyor providers`; `costs` are each provider's CPU seconds and resident bytes
/// (from `purveyor.provider`), when the host gave them.
pub fn providers(
    list: &[ProviderStatus],
    costs: &std::collections::HashMap<String, (f64, Option<u64>)>,
) -> String {
    let mut t = table(vec![
        "PROVIDER",
        "HOSTING",
        "STATE",
        "PID",
        "LOADS",
        "UNLOADS",
        "CALLS",
        "ERRORS",
        "CRASHES",
        "CPU",
        "MEM",
        "UNLOAD IN",
        "LAST USE",
        "CLASSES",
    ]);
    for p in list {
        let classes: Vec<&str> = p.classes.iter().map(|c| c.as_str()).collect();
        let state = match (p.state, p.in_flight) {
            (purveyor_model::ProviderState::Loaded, 0) => "idle".to_string(),
            (state, _) => state.to_string(),
        };
        t.add_row(vec![
            p.name.to_string(),
            p.hosting.to_string(),
            state,
            p.pid.map_or("-".into(), |pid| pid.to_string()),
            p.loads.to_string(),
            p.unloads.to_string(),
            p.calls.to_string(),
            p.errors.to_string(),
            p.crashes.to_string(),
            costs
                .get(p.name.as_str())
                .map_or("-".into(), |(cpu, _)| format!("{cpu:.2}s")),
            costs
                .get(p.name.as_str())
                .and_then(|(_, rss)| *rss)
                .map_or("-".into(), |b| bytes(b as f64)),
            p.unload_in_ms.map_or("-".into(), |ms| {
                humantime::format_duration(Duration::from_millis(ms / 1000 * 1000)).to_string()
            }),
            p.last_use.map_or("-".into(), |t| timestamp(t.0)),
            classes.join(","),
        ]);
    }
    for column in 3..=10 {
        align_right(&mut t, column);
    }
    let mut text = table_text(&t);
    for p in list.iter().filter(|p| p.last_error.is_some()) {
        text.push_str(&format!(
            "{}: last error: {}\n",
            p.name,
            p.last_error.as_deref().unwrap_or_default()
        ));
    }
    text
}

pub fn status(s: &HostStatus, mode: &Mode, socket: &std::path::Path) -> String {
    let mode = match mode {
        Mode::Daemon { socket } => format!("daemon on {}", socket.display()),
        Mode::Remote { address } => format!("daemon at {address} (remote, over TLS)"),
        Mode::Embedded => format!(
            "embedded (in this process; no daemon answered on {})",
            socket.display()
        ),
    };
    let dirs = if s.provider_dirs.is_empty() {
        "(none found; built-in providers only)".to_owned()
    } else {
        s.provider_dirs.join(", ")
    };
    let uptime = Duration::from_nanos(
        (purveyor_model::Timestamp::now().0 - s.started.0).max(0) as u64 / 1_000_000_000
            * 1_000_000_000,
    );
    let mut text = format!(
        "host:        {mode}\nserver:      {} (protocol {})\npid:         {}\nuptime:      {}\nproviders:   {} registered, {} loaded\nmanifests:   {dirs}\nconnections: {} open, {} total\nrequests:    {}\n",
        s.server,
        s.protocol,
        s.pid,
        humantime::format_duration(uptime),
        s.providers,
        s.providers_loaded,
        s.connections_open,
        s.connections_total,
        s.requests,
    );
    for problem in &s.manifest_problems {
        text.push_str(&format!("refused:     {problem}\n"));
    }
    text
}

/// A query's rows as a table: property columns shown as `get` shows them (bytes in binary
/// units, times as dates), SQL `NULL` as `NULL`.
pub fn rows(rows: &purveyor_client::QueryRows) -> String {
    let header: Vec<&str> = rows.columns.iter().map(|c| c.name.as_str()).collect();
    let mut t = table(header);
    for row in &rows.rows {
        t.add_row(
            row.iter()
                .zip(&rows.columns)
                .map(|(v, c)| query_cell(v.as_ref(), c.unit))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(first) = rows.rows.first() {
        for (i, v) in first.iter().enumerate() {
            if v.as_ref().is_some_and(|v| v.as_f64().is_some()) {
                align_right(&mut t, i);
            }
        }
    }
    table_text(&t)
}

fn query_cell(value: Option<&Value>, unit: Option<Unit>) -> String {
    let Some(value) = value else {
        return "NULL".into();
    };
    match (value, unit) {
        (Value::U64(v), Some(Unit::Bytes)) => bytes(*v as f64),
        (Value::Timestamp(t), _) => timestamp(t.0),
        (Value::F64(v), unit) => format!("{}{}", float(*v), unit.map_or("", unit_suffix)),
        (v, Some(unit)) if v.as_f64().is_some() => format!("{v}{}", unit_suffix(unit)),
        (v, _) => v.to_string(),
    }
}

/// `{"columns": [{"name", "type", "unit"}], "rows": [{COLUMN: plain JSON value}], "plan": […]}`;
/// a column name that repeats gets `:2`, `:3` after it in the rows' objects.
pub fn rows_json(rows: &purveyor_client::QueryRows) -> serde_json::Value {
    let mut seen = std::collections::HashMap::new();
    let names: Vec<String> = rows
        .columns
        .iter()
        .map(|c| {
            let n = seen.entry(c.name.as_str()).or_insert(0);
            *n += 1;
            if *n == 1 {
                c.name.clone()
            } else {
                format!("{}:{n}", c.name)
            }
        })
        .collect();
    let columns: Vec<serde_json::Value> = rows
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty.map(|t| t.to_string()),
                "unit": c.unit.map(unit_name),
            })
        })
        .collect();
    let list: Vec<serde_json::Value> = rows
        .rows
        .iter()
        .map(|row| {
            let map: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(row)
                .map(|(n, v)| {
                    (
                        n.clone(),
                        v.as_ref().map_or(serde_json::Value::Null, plain_json),
                    )
                })
                .collect();
            serde_json::Value::Object(map)
        })
        .collect();
    json!({ "columns": columns, "rows": list, "plan": rows.plan })
}

/// What `purveyor reload` changed.
pub fn reloaded(r: &purveyor_protocol::ReloadReport) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let file = |f: &Option<String>, none: &str| f.clone().unwrap_or_else(|| none.to_string());
    format!(
        "reloaded\n  providers added    {}\n  providers removed  {}\n  providers changed  {}\n  access policy      {}\n  http.toml          {}\n",
        list(&r.added),
        list(&r.removed),
        list(&r.changed),
        file(&r.policy, "the defaults (no file)"),
        file(&r.http, "not re-read (no gateway, or no file)"),
    )
}
