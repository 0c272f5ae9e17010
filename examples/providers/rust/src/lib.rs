//! An example provider library: class `demo.greeting`, keyed by `name`, counting how
//! often each name was greeted, with the pid of the process serving it.
//!
//! Build: `cargo build -p purveyor-example-provider` → `target/debug/libpurveyor_example.so`.
//! The manifest `examples/providers/rust/manifest/greeting.toml` hosts it isolated; change
//! `hosting` to `"in-daemon"` to load it into the daemon. `get` with name `panic` panics,
//! to show that a panic becomes an error for that request and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

use purveyor_provider::model::{
    ClassPath, ClassSchema, Instance, InstanceKey, PropertyDef, Semantic, Unit, Value,
};
use purveyor_provider::{CallContext, Provider, ProviderError, export_provider};

pub struct Greeting {
    greeted: AtomicU64,
    pid: u32,
}

impl Greeting {
    pub fn new() -> Result<Self, ProviderError> {
        Ok(Greeting {
            greeted: AtomicU64::new(0),
            // The serving process's id, read once: it cannot change while it serves
            // (getpid is a system call, not worth making per call).
            pid: std::process::id(),
        })
    }

    fn instance(&self, name: &str) -> Instance {
        // One table of names for every instance this provider builds.
        purveyor_provider::model::instance! {
            "name" => Value::String(name.to_string()),
            "message" => Value::String(format!("hello, {name}")),
            "greeted" => Value::U64(self.greeted.fetch_add(1, Ordering::Relaxed) + 1),
            "pid" => Value::U64(u64::from(self.pid)),
        }
    }
}

impl Provider for Greeting {
    fn classes(&self) -> Vec<ClassSchema> {
        let p = PropertyDef::new;
        vec![ClassSchema::fixed(
            "demo.greeting",
            "A greeting per name",
            vec![
                p("name", "string", Unit::None, Semantic::Key, "who"),
                p(
                    "message",
                    "string",
                    Unit::None,
                    Semantic::Discrete,
                    "the greeting",
                ),
                p(
                    "greeted",
                    "u64",
                    Unit::Count,
                    Semantic::Counter,
                    "greetings so far",
                ),
                p(
                    "pid",
                    "u64",
                    Unit::None,
                    Semantic::Discrete,
                    "the serving process",
                ),
            ],
        )]
    }

    fn enumerate(
        &self,
        _class: &ClassPath,
        _ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        Ok(vec![self.instance("world")])
    }

    fn get(
        &self,
        _class: &ClassPath,
        key: &InstanceKey,
        _ctx: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        match key.get("name") {
            Some(Value::String(name)) if name == "panic" => panic!("asked to panic"),
            Some(Value::String(name)) => Ok(Some(self.instance(name))),
            _ => Ok(None),
        }
    }
}

export_provider!(Greeting::new);
