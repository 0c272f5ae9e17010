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
classes = ["purveyor.host", "purveyor.events", "purveyor.dialogs", "purveyor.provider", "purveyor.cache_control"]
capabilities = ["enumerate", "get", "put", "delete"]
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
                        "remote_refused",
                        "u64",
                        Unit::Count,
                        Counter,
                        "remote (TLS) connections refused before their session: certificate, user, handshake limit or time",
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
                    p(
                        "io_pipes",
                        "u64",
                        Unit::Count,
                        Gauge,
                        "pipes carrying plain files' bytes to local clients (at most 32)",
                    ),
                    p(
                        "cpu_seconds",
                        "f64",
                        Unit::Seconds,
                        Counter,
                        "the host process's CPU time (user + system)",
                    ),
                    p(
                        "rss_bytes",
                        "u64",
                        Unit::Bytes,
                        Gauge,
                        "the host process's resident memory",
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
                    p(
                        "direct",
                        "u64",
                        Unit::Count,
                        Counter,
                        "dialogs opened on a direct channel between the provider's worker and the agent",
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
                    p(
                        "cpu_seconds",
                        "f64",
                        Unit::Seconds,
                        Counter,
                        "CPU time: its process's, or its calls' on the host's threads",
                    ),
                    p(
                        "rss_bytes",
                        "u64",
                        Unit::Bytes,
                        Gauge,
                        "its process's resident memory (isolated and external, while loaded)",
                    ),
                    p(
                        "timeouts",
                        "u64",
                        Unit::Operations,
                        Counter,
                        "calls past their deadline",
                    ),
                    p(
                        "crashes",
                        "u64",
                        Unit::Count,
                        Counter,
                        "times its process crashed or was killed",
                    ),
                    p("in_flight", "u64", Unit::Count, Gauge, "calls running now"),
                    p(
                        "bytes_out",
                        "u64",
                        Unit::Bytes,
                        Counter,
                        "bytes of requests sent to its current process, or its in-daemon library",
                    ),
                    p(
                        "bytes_in",
                        "u64",
                        Unit::Bytes,
                        Counter,
                        "bytes of answers received from its current process, or its in-daemon library",
                    ),
                    p(
                        "limit_kills",
                        "u64",
                        Unit::Count,
                        Counter,
                        "times its process was stopped for passing a limit",
                    ),
                    p(
                        "pid",
                        "u64",
                        Unit::None,
                        Discrete,
                        "its process (while loaded)",
                    ),
                    p(
                        "latency_p50_ms",
                        "f64",
                        Unit::Milliseconds,
                        Gauge,
                        "median call time (bucket bound, within 2x)",
                    ),
                    p(
                        "latency_p99_ms",
                        "f64",
                        Unit::Milliseconds,
                        Gauge,
                        "99th percentile call time (bucket bound, within 2x)",
                    ),
                ],
            ),
            ClassSchema::fixed(
                "purveyor.cache_control",
                "How long an idle provider of each kind stays loaded (its clear_after, unless its manifest gives one); the daemon's owner sets it",
                vec![
                    p(
                        "kind",
                        "string",
                        Unit::None,
                        Key,
                        "instance, counter, event or io",
                    ),
                    p(
                        "clear_after_ms",
                        "u64",
                        Unit::Milliseconds,
                        Discrete,
                        "the window now (written by set; 100 ms to 30 days)",
                    ),
                    p(
                        "default_ms",
                        "u64",
                        Unit::Milliseconds,
                        Discrete,
                        "the window without a setting (built in, or --clear-after)",
                    ),
                    p(
                        "source",
                        "string",
                        Unit::None,
                        Discrete,
                        "set, command line or default",
                    ),
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
            "purveyor.host" => Ok(vec![host_instance(&host)]),
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
                ("direct", Value::U64(host.dialogs().direct())),
            ])]),
            "purveyor.provider" => Ok(provider_instances(&host)),
            "purveyor.cache_control" => Ok(host.cache_control().instances()),
            other => Err(ProviderError::NotFound(format!("no class {other}"))),
        }
    }

    /// `purveyor.cache_control`: a kind's `clear_after_ms`, kept and in force at once.
    fn put(
        &self,
        class: &ClassPath,
        instance: Instance,
        _ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let host = self.host()?;
        if class.as_str() != "purveyor.cache_control" {
            return Err(ProviderError::Unsupported(format!(
                "{class} cannot be written"
            )));
        }
        let kind = kind_of(&instance)?;
        let Some(Value::U64(ms)) = instance.get("clear_after_ms") else {
            return Err(ProviderError::InvalidArgument(
                "purveyor.cache_control needs clear_after_ms (u64, milliseconds)".into(),
            ));
        };
        host.cache_control()
            .set(kind, std::time::Duration::from_millis(*ms))
            .map_err(ProviderError::InvalidArgument)?;
        tracing::info!(
            kind = kind.as_str(),
            clear_after_ms = ms,
            "cache control set"
        );
        Ok(())
    }

    /// `purveyor.cache_control`: a kind back to `--clear-after` or the built-in default.
    fn delete(
        &self,
        class: &ClassPath,
        key: &purveyor_model::InstanceKey,
        _ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let host = self.host()?;
        if class.as_str() != "purveyor.cache_control" {
            return Err(ProviderError::Unsupported(format!(
                "instances of {class} cannot be deleted"
            )));
        }
        let kind = match key.get("kind") {
            Some(Value::String(k)) => k
                .parse::<crate::manifest::ProviderKind>()
                .map_err(ProviderError::NotFound)?,
            _ => return Err(ProviderError::InvalidArgument("kind is needed".into())),
        };
        if !host
            .cache_control()
            .clear(kind)
            .map_err(ProviderError::Failed)?
        {
            return Err(ProviderError::NotFound(format!(
                "the {} window is not set (it is the default)",
                kind.as_str()
            )));
        }
        tracing::info!(kind = kind.as_str(), "cache control back to its default");
        Ok(())
    }
}

impl SelfProvider {
    fn host(&self) -> Result<std::sync::Arc<Shared>, ProviderError> {
        self.host
            .upgrade()
            .ok_or_else(|| ProviderError::Failed("the host has shut down".into()))
    }
}

/// The provider kind an instance of `purveyor.cache_control` names.
fn kind_of(instance: &Instance) -> Result<crate::manifest::ProviderKind, ProviderError> {
    match instance.get("kind") {
        Some(Value::String(k)) => k.parse().map_err(ProviderError::InvalidArgument),
        _ => Err(ProviderError::InvalidArgument("kind is needed".into())),
    }
}

/// `purveyor.host`: the host's counts and its process's cost.
fn host_instance(host: &Shared) -> Instance {
    let (providers, loaded) = host.provider_counts();
    let mode = match host.config().mode {
        HostMode::Daemon => "daemon",
        HostMode::Embedded => "embedded",
    };
    let counts = host.counters().now();
    // This process (the host is embedded in it, or is the daemon).
    let me = crate::accounting::self_usage();
    // Every property in the one table of names the macro keeps: a property set after it
    // would copy the table and lose its resolution against the schema on every request.
    purveyor_model::instance! {
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
        "remote_refused" => Value::U64(counts.remote_refused),
        "io_mem_bytes" => Value::U64(host.memory().bytes()),
        "io_mem_buffers" => Value::U64(host.memory().buffers() as u64),
        "io_pipes" => Value::U64(crate::pipes::PIPES.made() as u64),
        "cpu_seconds" => Value::F64(me.cpu.as_secs_f64()),
        "rss_bytes" => Value::U64(me.rss_bytes),
    }
}

/// `purveyor.provider`: every provider's lifecycle, counts and cost.
fn provider_instances(host: &Shared) -> Vec<Instance> {
    host.registry()
        .all_slots()
        .iter()
        .map(|slot| {
            let p = slot.status();
            let usage = slot.usage();
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
            i.set("cpu_seconds", Value::F64(usage.cpu.as_secs_f64()));
            if let Some(rss) = usage.rss_bytes {
                i.set("rss_bytes", Value::U64(rss));
            }
            i.set("timeouts", Value::U64(usage.timeouts));
            i.set("limit_kills", Value::U64(usage.limit_kills));
            if let Some((to, from)) = usage.bytes {
                i.set("bytes_out", Value::U64(to));
                i.set("bytes_in", Value::U64(from));
            }
            i.set("crashes", Value::U64(p.crashes));
            i.set("in_flight", Value::U64(p.in_flight.into()));
            if let Some(pid) = p.pid {
                i.set("pid", Value::U64(pid.into()));
            }
            let ms = |d: std::time::Duration| Value::F64(d.as_secs_f64() * 1e3);
            if let Some(p50) = usage.p50 {
                i.set("latency_p50_ms", ms(p50));
            }
            if let Some(p99) = usage.p99 {
                i.set("latency_p99_ms", ms(p99));
            }
            i
        })
        .collect()
}
