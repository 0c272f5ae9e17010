//! The host's own provider, `purveyor`: providers and their lifecycle, connections and
//! requests, served like any other provider so `purveyor watch` works on the host itself.

use std::sync::Weak;

use purveyor_model::{ClassPath, ClassSchema, Instance, PropertyDef, Semantic, Unit, Value};
use purveyor_provider::{CallContext, Provider, ProviderError};

use purveyor_hosting::{BuiltinProvider, Dispatch};
use purveyor_protocol::HostMode;

use crate::state::{SERVER_NAME, Shared};

const MANIFEST: &str = r#"
name = "purveyor"
description = "The host's own numbers: each provider's lifecycle and calls, connections, requests"
hosting = "builtin"
builtin = "purveyor"
classes = ["purveyor.host", "purveyor.events", "purveyor.dialogs", "purveyor.provider"]
capabilities = ["enumerate", "get"]
pure = true
clear_after = "1h"
"#;

pub(crate) fn builtin(host: Weak<Shared>) -> BuiltinProvider {
    BuiltinProvider::new("purveyor", MANIFEST, Dispatch::Inline, move || {
        Ok(SelfProvider { host: host.clone() })
    })
}

struct SelfProvider {
    host: Weak<Shared>,
}

impl Provider for SelfProvider {
    fn classes(&self) -> Vec<ClassSchema> {
        use Semantic::{Counter, Discrete, Gauge, Key};
        let p = PropertyDef::new;
        vec![
            ClassSchema::fixed(
                "purveyor.host",
                "The host process",
                vec![
                    p("server", "string", Unit::None, Discrete, "name and version"),
                    p("mode", "string", Unit::None, Discrete, "daemon or embedded"),
                    p("pid", "u64", Unit::None, Discrete, "process id"),
                    p(
                        "started",
                        "timestamp",
                        Unit::None,
                        Discrete,
                        "when the host started",
                    ),
                    p(
                        "providers",
                        "u64",
                        Unit::Count,
                        Gauge,
                        "registered providers",
                    ),
                    p(
                        "providers_loaded",
                        "u64",
                        Unit::Count,
                        Gauge,
                        "loaded pure providers",
                    ),
                    p(
                        "connections_open",
                        "u64",
                        Unit::Count,
                        Gauge,
                        "open client connections",
                    ),
                    p(
                        "connections",
                        "u64",
                        Unit::Count,
                        Counter,
                        "connections accepted",
                    ),
                    p(
                        "requests",
                        "u64",
                        Unit::Operations,
                        Counter,
                        "requests answered",
                    ),
                    p(
                        "connections_refused",
                        "u64",
                        Unit::Count,
                        Counter,
                        "connections refused by conn.total or conn.per_user",
                    ),
                    p(
                        "http_refused",
                        "u64",
                        Unit::Count,
                        Counter,
                        "HTTP connections refused by http.connections",
                    ),
                    p(
                        "io_mem_bytes",
                        "u64",
                        Unit::Bytes,
                        Gauge,
                        "bytes held in MEM buffers, every user's (limit io.mem_total)",
                    ),
                    p(
                        "io_mem_buffers",
                        "u64",
                        Unit::Count,
                        Gauge,
                        "MEM buffers held",
                    ),
                ],
            ),
            ClassSchema::fixed(
                "purveyor.events",
                "Event subscriptions and what was delivered to them",
                vec![
                    p(
                        "subscriptions",
                        "u64",
                        Unit::Count,
                        Gauge,
                        "event subscriptions open",
                    ),
                    p(
                        "events_delivered",
                        "u64",
                        Unit::Count,
                        Counter,
                        "events queued for subscribers",
                    ),
                    p(
                        "events_dropped",
                        "u64",
                        Unit::Count,
                        Counter,
                        "events dropped for subscribers that read too slowly",
                    ),
                ],
            ),
            ClassSchema::fixed(
                "purveyor.dialogs",
                "Dialogs between providers and applications, and the UI agents",
                vec![
                    p("open", "u64", Unit::Count, Gauge, "dialogs open now"),
                    p("agents", "u64", Unit::Count, Gauge, "UI agents registered"),
                    p("opened", "u64", Unit::Count, Counter, "dialogs opened"),
                    p(
                        "refused",
                        "u64",
                        Unit::Count,
                        Counter,
                        "dialogs refused (no agent, no UI available, another user)",
                    ),
                ],
            ),
            ClassSchema::fixed(
                "purveyor.provider",
                "Each registered provider's lifecycle and calls",
                vec![
                    p("name", "string", Unit::None, Key, "provider name"),
                    p(
                        "hosting",
                        "string",
                        Unit::None,
                        Discrete,
                        "builtin, in-daemon, isolated or external",
                    ),
                    p(
                        "state",
                        "string",
                        Unit::None,
                        Discrete,
                        "registered, loading, loaded, releasing or failed",
                    ),
                    p(
                        "pure",
                        "bool",
                        Unit::None,
                        Discrete,
                        "whether it exists only to serve requests",
                    ),
                    p("loads", "u64", Unit::Count, Counter, "times loaded"),
                    p("unloads", "u64", Unit::Count, Counter, "times released"),
                    p("calls", "u64", Unit::Operations, Counter, "calls made"),
                    p(
                        "errors",
                        "u64",
                        Unit::Operations,
                        Counter,
                        "calls and loads that failed",
                    ),
                    p("last_use", "timestamp", Unit::None, Discrete, "last call"),
                ],
            ),
        ]
    }

    fn enumerate(
        &self,
        class: &ClassPath,
        _ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        let host = self
            .host
            .upgrade()
            .ok_or_else(|| ProviderError::Failed("the host has shut down".into()))?;
        match class.as_str() {
            "purveyor.host" => {
                let (providers, loaded) = host.provider_counts();
                let mode = match host.config().mode {
                    HostMode::Daemon => "daemon",
                    HostMode::Embedded => "embedded",
                };
                let counts = host.counters().now();
                Ok(vec![purveyor_model::instance! {
                    "server" => Value::String(SERVER_NAME.into()),
                    "mode" => Value::String(mode.into()),
                    "pid" => Value::U64(host.pid().into()),
                    "started" => Value::Timestamp(host.started()),
                    "providers" => Value::U64(providers.into()),
                    "providers_loaded" => Value::U64(loaded.into()),
                    "connections_open" => Value::U64(counts.connections_open.into()),
                    "connections" => Value::U64(counts.connections_total),
                    "requests" => Value::U64(counts.requests),
                    "connections_refused" => Value::U64(counts.connections_refused),
                    "http_refused" => Value::U64(counts.http_refused),
                    "io_mem_bytes" => Value::U64(host.memory().bytes()),
                    "io_mem_buffers" => Value::U64(host.memory().buffers() as u64),
                }])
            }
            "purveyor.events" => Ok(vec![Instance::from_pairs([
                (
                    "subscriptions",
                    Value::U64(host.events().subscriptions() as u64),
                ),
                ("events_delivered", Value::U64(host.events().delivered())),
                ("events_dropped", Value::U64(host.events().dropped())),
            ])]),
            "purveyor.dialogs" => Ok(vec![Instance::from_pairs([
                ("open", Value::U64(host.dialogs().open_dialogs() as u64)),
                ("agents", Value::U64(host.dialogs().agents() as u64)),
                ("opened", Value::U64(host.dialogs().opened())),
                ("refused", Value::U64(host.dialogs().refused())),
            ])]),
            "purveyor.provider" => Ok(host
                .provider_statuses()
                .into_iter()
                .map(|p| {
                    let mut i = Instance::from_pairs([
                        ("name", Value::String(p.name.to_string())),
                        ("hosting", Value::String(p.hosting.to_string())),
                        ("state", Value::String(p.state.to_string())),
                        ("pure", Value::Bool(p.pure)),
                        ("loads", Value::U64(p.loads)),
                        ("unloads", Value::U64(p.unloads)),
                        ("calls", Value::U64(p.calls)),
                        ("errors", Value::U64(p.errors)),
                    ]);
                    if let Some(t) = p.last_use {
                        i.set("last_use", Value::Timestamp(t));
                    }
                    i
                })
                .collect()),
            other => Err(ProviderError::NotFound(format!("no class {other}"))),
        }
    }
}
