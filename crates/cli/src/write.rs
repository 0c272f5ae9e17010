//! `purveyor set`, `delete`, `call` and `events`: writing to providers and following
//! their events.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use purveyor_client::{Client, Mode, Push};
use purveyor_model::{
    ClassPath, ClassSchema, Condition, Identifier, Instance, InstanceKey, Timestamp, Value,
};

use crate::{out, print_json, render};

/// `NAME=VALUE…` typed by the class's properties.
fn assignments(schema: &ClassSchema, args: &[String]) -> Result<Instance> {
    let parsed = InstanceKey::parse(schema, args)?;
    Ok(parsed
        .values()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect())
}

pub fn set(client: &mut Client, json: bool, class: &str, args: &[String]) -> Result<ExitCode> {
    let class = ClassPath::new(class)?;
    let schema = client.describe(&class)?;
    let instance = assignments(&schema, args)?;
    let key = instance.key(&schema);
    client.put(&class, instance)?;
    if json {
        print_json(&serde_json::json!({"class": class, "key": key.to_string(), "done": true}))?;
    } else {
        out(&format!("{class} {key}: set\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(client: &mut Client, json: bool, class: &str, args: &[String]) -> Result<ExitCode> {
    let class = ClassPath::new(class)?;
    let schema = client.describe(&class)?;
    // The host checks that this is exactly the key, and says which properties it needs.
    let key = InstanceKey::parse(&schema, args)?;
    client.delete(&class, &key)?;
    if json {
        print_json(&serde_json::json!({"class": class, "key": key.to_string(), "done": true}))?;
    } else {
        out(&format!("{class} {key}: deleted\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn call(client: &mut Client, json: bool, target: &str, args: &[String]) -> Result<ExitCode> {
    let Some((class, method)) = target.rsplit_once('.') else {
        bail!("{target:?} is not CLASS.METHOD (like config.setting.rename)");
    };
    let class = ClassPath::new(class)?;
    let method = Identifier::new(method)?;
    let schema = client.describe(&class)?;
    let Some(def) = schema.method(method.as_str()) else {
        let have: Vec<&str> = schema.methods().iter().map(|m| m.name.as_str()).collect();
        bail!(
            "class {class} has no method {method:?}{}",
            if have.is_empty() {
                String::new()
            } else {
                format!(" (it has {})", have.join(", "))
            }
        );
    };
    let mut key = InstanceKey::new();
    let mut call_args = Instance::new();
    for arg in args {
        let Some((name, text)) = arg.split_once('=') else {
            bail!("{arg:?} is not of the form NAME=VALUE");
        };
        if let Some(prop) = schema.keys().find(|k| k.name.as_str() == name) {
            key.insert(prop.name.clone(), parse(text, prop.ty, name)?);
        } else if let Some(param) = def.params.iter().find(|p| p.name.as_str() == name) {
            call_args.insert(param.name.clone(), parse(text, param.ty, name)?);
        } else {
            bail!("{name:?} is neither a key property of {class} nor a parameter of {method}");
        }
    }
    let result = client.call(&class, &method, &key, call_args)?;
    if json {
        print_json(&serde_json::json!({
            "result": result.as_ref().map(render::plain_json),
        }))?;
    } else if let Some(value) = result {
        out(&format!("{value}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse(text: &str, ty: purveyor_model::ValueType, name: &str) -> Result<Value> {
    Value::parse_as(text, ty).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

pub struct EventsArgs<'a> {
    pub class: &'a str,
    pub event: Option<&'a str>,
    pub filters: &'a [String],
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
}

pub struct ChangesArgs<'a> {
    pub class: &'a str,
    pub filters: &'a [String],
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
    pub within: Duration,
    pub counters: bool,
}

/// `events --changes`: instances created, deleted and modified, one line each.
pub fn changes(client: &mut Client, json: bool, args: ChangesArgs<'_>) -> Result<ExitCode> {
    let class = ClassPath::new(args.class)?;
    let schema = client.describe(&class)?;
    // Conditions are on the instance: typed by the class's properties.
    let instance = purveyor_model::EventDef {
        name: Identifier::new("change")?,
        properties: schema.properties().to_vec(),
        description: String::new(),
    };
    let filter = args
        .filters
        .iter()
        .map(|text| Condition::parse(&class, &instance, text).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let handle = client.watch_changes(&class, filter, args.within, args.counters)?;
    if !json {
        eprintln!(
            "watching {class} for changes every {} (handle {handle}); waiting",
            humantime::format_duration(args.within)
        );
    }
    let keys: Vec<&str> = schema.keys().map(|k| k.name.as_str()).collect();
    print_pushes(client, json, args.count, args.timeout, "changes", |push| {
        let Push::Change {
            change,
            instance,
            changed,
            ..
        } = push
        else {
            return Ok(None);
        };
        let change = serde_json::to_value(change)?;
        let kind = change.as_str().unwrap_or("?").to_string();
        if json {
            let changed: Vec<serde_json::Value> = changed
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "property": c.name,
                        "old": c.old.as_ref().map(render::plain_json),
                        "new": c.new.as_ref().map(render::plain_json),
                    })
                })
                .collect();
            return Ok(Some(
                serde_json::json!({
                    "time": Timestamp::now().0,
                    "class": class,
                    "change": kind,
                    "instance": render::instance_json(&instance),
                    "changed": changed,
                })
                .to_string(),
            ));
        }
        let key: Vec<String> = keys
            .iter()
            .filter_map(|k| instance.get(k).map(|v| format!("{k}={v}")))
            .collect();
        let shown = |v: &Option<purveyor_model::Value>| {
            v.as_ref().map_or("-".to_string(), |v| v.to_string())
        };
        let detail: Vec<String> = if changed.is_empty() {
            instance
                .values()
                .filter(|(n, _)| !keys.contains(&n.as_str()))
                .map(|(n, v)| format!("{n}={v}"))
                .collect()
        } else {
            changed
                .iter()
                .map(|c| format!("{}: {} -> {}", c.name, shown(&c.old), shown(&c.new)))
                .collect()
        };
        Ok(Some(format!(
            "{} {kind} {} {}",
            render::timestamp(Timestamp::now().0),
            key.join(" "),
            detail.join(" ")
        )))
    })
}

/// Prints one line per push `line` turns into one, until `count` such lines or no push
/// within `timeout`; a report of `what` lost (the client read too slowly) is printed too.
fn print_pushes(
    client: &mut Client,
    json: bool,
    count: Option<u64>,
    timeout: Option<Duration>,
    what: &str,
    mut line: impl FnMut(Push) -> Result<Option<String>>,
) -> Result<ExitCode> {
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    while count.is_none_or(|c| seen < c) {
        let Some((_, push)) = client.next_event(timeout)? else {
            // Timed out waiting: done.
            break;
        };
        let text = match push {
            Push::Lost { dropped } if json => serde_json::json!({ "lost": dropped }).to_string(),
            Push::Lost { dropped } => {
                format!("({dropped} {what} lost: this client read too slowly)")
            }
            other => {
                let shown = format!("{other:?}");
                match line(other)? {
                    Some(text) => {
                        seen += 1;
                        text
                    }
                    None => shown,
                }
            }
        };
        let mut lock = stdout.lock();
        writeln!(lock, "{text}")?;
        lock.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn events(client: &mut Client, json: bool, args: EventsArgs<'_>) -> Result<ExitCode> {
    let class = ClassPath::new(args.class)?;
    let schema = client.describe(&class)?;
    let event = args.event.map(Identifier::new).transpose()?;
    let filter = args
        .filters
        .iter()
        .map(|text| Condition::parse_for_events(&schema, event.as_ref(), text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let handle = client.subscribe(&class, event.as_ref(), filter)?;
    if matches!(client.mode(), Mode::Embedded) {
        eprintln!(
            "purveyor: no daemon is running: only changes made by this process raise events here"
        );
    }
    if !json {
        eprintln!("subscribed to {class} events (handle {handle}); waiting");
    }
    print_pushes(client, json, args.count, args.timeout, "events", |push| {
        let Push::Event { event, data, .. } = push else {
            return Ok(None);
        };
        if json {
            return Ok(Some(
                serde_json::json!({
                    "time": Timestamp::now().0,
                    "class": class,
                    "event": event,
                    "data": render::instance_json(&data),
                })
                .to_string(),
            ));
        }
        let fields: Vec<String> = data.values().map(|(n, v)| format!("{n}={v}")).collect();
        Ok(Some(format!(
            "{} {event} {}",
            render::timestamp(Timestamp::now().0),
            fields.join(" ")
        )))
    })
}
