//! An example writable provider: class `config.setting`, typed settings keyed by `name`,
//! kept in the provider's transactional store, with two methods and change events.
//!
//! - `purveyor set config.setting name=color type=string value=blue`
//! - `purveyor call config.setting.rename name=color to=colour`
//! - `purveyor call config.setting.transfer name=a to=b amount=5` (i64 settings: moves
//!   `amount` from one to the other in one transaction)
//! - `purveyor events config.setting --filter action=deleted`
//!
//! Every change commits durably before it is acknowledged, in one transaction, so a
//! provider killed at any moment loses no acknowledged change and never half-applies one
//! (a rename leaves the setting under exactly one of its names; a transfer keeps the sum).
//!
//! Build: `cargo build -p purveyor-example-config` → `target/debug/libpurveyor_config.so`;
//! manifest `examples/providers/config/config.toml`.

use purveyor_provider::model::{
    ClassPath, ClassSchema, EventDef, Identifier, Instance, InstanceKey, MethodDef, ParamDef,
    PropertyDef, Semantic, Timestamp, Unit, Value, ValueType,
};
use purveyor_provider::store::{Store, WriteTx};
use purveyor_provider::{CallContext, Provider, ProviderError, export_provider};

const CLASS: &str = "config.setting";
const TABLE: &str = "settings";
const TYPES: [&str; 5] = ["string", "i64", "u64", "f64", "bool"];

pub struct Config {
    store: Store,
}

impl Config {
    /// Opens the store in the state directory (`$PURVEYOR_STATE_DIR/config`).
    pub fn new() -> Result<Self, ProviderError> {
        Ok(Config {
            store: Store::open("config")?,
        })
    }

    /// Opens the store at `path` (tests).
    pub fn at(path: &std::path::Path) -> Result<Self, ProviderError> {
        Ok(Config {
            store: Store::open_at(path)?,
        })
    }
}

fn text<'a>(instance: &'a Instance, name: &str) -> Option<&'a str> {
    match instance.get(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn name_of(key: &InstanceKey) -> Result<&str, ProviderError> {
    match key.get("name") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ProviderError::InvalidArgument(
            "a setting is named by name=NAME".into(),
        )),
    }
}

fn arg<'a>(args: &'a Instance, name: &str) -> Result<&'a Value, ProviderError> {
    args.get(name)
        .ok_or_else(|| ProviderError::InvalidArgument(format!("missing argument {name}")))
}

fn existing(tx: &WriteTx, name: &str) -> Result<Instance, ProviderError> {
    tx.instance(TABLE, name)?
        .ok_or_else(|| ProviderError::NotFound(format!("no setting named {name:?}")))
}

fn version(setting: &Instance) -> u64 {
    match setting.get("version") {
        Some(Value::U64(v)) => *v,
        _ => 0,
    }
}

/// The setting after a change: version bumped, stamped with when and by whom.
fn stamped(mut setting: Instance, previous: u64, ctx: &CallContext) -> Instance {
    setting.set("version", Value::U64(previous + 1));
    setting.set("updated", Value::Timestamp(Timestamp::now()));
    setting.set("updated_by", Value::U64(ctx.caller.uid.into()));
    setting
}

fn changed(
    ctx: &CallContext,
    class: &ClassPath,
    action: &str,
    setting: &Instance,
) -> Result<(), ProviderError> {
    let mut data = Instance::from_pairs([("action", Value::String(action.into()))]);
    for p in ["name", "type", "value", "version"] {
        if let Some(v) = setting.get(p) {
            data.set(p, v.clone());
        }
    }
    ctx.emit(class, "changed", data)
}

fn parse_i64(setting: &Instance) -> Result<i64, ProviderError> {
    let name = text(setting, "name").unwrap_or("?");
    if text(setting, "type") != Some("i64") {
        return Err(ProviderError::InvalidArgument(format!(
            "setting {name:?} is not an i64 setting"
        )));
    }
    text(setting, "value")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ProviderError::Failed(format!("setting {name:?} holds no valid i64")))
}

impl Provider for Config {
    fn classes(&self) -> Vec<ClassSchema> {
        let p = PropertyDef::new;
        use Semantic::{Discrete, Key};
        let properties = vec![
            p("name", "string", Unit::None, Key, "the setting's name"),
            p(
                "type",
                "string",
                Unit::None,
                Discrete,
                "string, i64, u64, f64 or bool (default string)",
            ),
            p(
                "value",
                "string",
                Unit::None,
                Discrete,
                "the value, checked against its type",
            ),
            p(
                "version",
                "u64",
                Unit::None,
                Discrete,
                "changes so far (set by the provider)",
            ),
            p(
                "updated",
                "timestamp",
                Unit::None,
                Discrete,
                "last change (set by the provider)",
            ),
            p(
                "updated_by",
                "u64",
                Unit::None,
                Discrete,
                "uid of the last writer (set by the provider)",
            ),
        ];
        let id = |s: &str| Identifier::new(s).expect("valid name");
        let methods = vec![
            MethodDef {
                name: id("rename"),
                params: vec![ParamDef::new("to", "string", false, "the new name")],
                result: None,
                description: "Renames the setting, atomically".into(),
            },
            MethodDef {
                name: id("transfer"),
                params: vec![
                    ParamDef::new("to", "string", false, "the i64 setting that receives"),
                    ParamDef::new("amount", "i64", false, "how much to move"),
                ],
                result: Some(ValueType::Scalar(purveyor_provider::model::ScalarType::I64)),
                description: "Moves an amount from this i64 setting to another, atomically; returns this setting's new value".into(),
            },
        ];
        let events = vec![
            EventDef {
                name: id("changed"),
                properties: vec![
                    p("name", "string", Unit::None, Discrete, "the setting"),
                    p(
                        "action",
                        "string",
                        Unit::None,
                        Discrete,
                        "created, updated, deleted, renamed or transferred",
                    ),
                    p("type", "string", Unit::None, Discrete, "its type"),
                    p("value", "string", Unit::None, Discrete, "its value"),
                    p("version", "u64", Unit::None, Discrete, "its version"),
                ],
                description: "A setting was created, updated or deleted".into(),
            },
            EventDef {
                name: id("renamed"),
                properties: vec![
                    p("from", "string", Unit::None, Discrete, "the old name"),
                    p("to", "string", Unit::None, Discrete, "the new name"),
                ],
                description: "A setting was renamed".into(),
            },
        ];
        let schema = ClassSchema::new(
            ClassPath::new(CLASS).expect("valid class"),
            "Typed settings, kept in a transactional store",
            properties,
            methods,
            events,
        )
        .expect("valid schema");
        vec![schema]
    }

    fn enumerate(
        &self,
        _class: &ClassPath,
        _ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        self.store.read(|tx| tx.instances(TABLE))
    }

    fn get(
        &self,
        _class: &ClassPath,
        key: &InstanceKey,
        _ctx: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        let name = name_of(key)?;
        self.store.read(|tx| tx.instance(TABLE, name))
    }

    fn put(
        &self,
        class: &ClassPath,
        instance: Instance,
        ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let name = text(&instance, "name")
            .ok_or_else(|| ProviderError::InvalidArgument("name is missing".into()))?
            .to_string();
        for computed in ["version", "updated", "updated_by"] {
            if instance.get(computed).is_some() {
                return Err(ProviderError::InvalidArgument(format!(
                    "{computed} is set by the provider, not by a put"
                )));
            }
        }
        self.store.write(|tx| {
            let old = tx.instance(TABLE, &name)?;
            let ty = text(&instance, "type")
                .or_else(|| old.as_ref().and_then(|o| text(o, "type")))
                .unwrap_or("string")
                .to_string();
            let parsed = match ty.parse::<ValueType>() {
                Ok(parsed) if TYPES.contains(&ty.as_str()) => parsed,
                _ => {
                    return Err(ProviderError::InvalidArgument(format!(
                        "type {ty:?} is not one of {}",
                        TYPES.join(", ")
                    )));
                }
            };
            let value = text(&instance, "value")
                .or_else(|| old.as_ref().and_then(|o| text(o, "value")))
                .ok_or_else(|| {
                    ProviderError::InvalidArgument(format!(
                        "setting {name:?} is new: give it a value"
                    ))
                })?
                .to_string();
            Value::parse_as(&value, parsed)
                .map_err(|e| ProviderError::InvalidArgument(format!("setting {name:?}: {e}")))?;
            let setting = Instance::from_pairs([
                ("name", Value::String(name.clone())),
                ("type", Value::String(ty)),
                ("value", Value::String(value)),
            ]);
            let setting = stamped(setting, old.as_ref().map_or(0, version), ctx);
            tx.put_instance(TABLE, &name, &setting)?;
            let action = if old.is_some() { "updated" } else { "created" };
            changed(ctx, class, action, &setting)
        })
    }

    fn delete(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let name = name_of(key)?;
        self.store.write(|tx| {
            let old = existing(tx, name)?;
            tx.remove(TABLE, name)?;
            changed(ctx, class, "deleted", &old)
        })
    }

    fn call(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        method: &Identifier,
        args: Instance,
        ctx: &CallContext,
    ) -> Result<Option<Value>, ProviderError> {
        let name = name_of(key)?;
        let Value::String(to) = arg(&args, "to")? else {
            return Err(ProviderError::InvalidArgument("to must be a string".into()));
        };
        match method.as_str() {
            "rename" => self.store.write(|tx| {
                let old = existing(tx, name)?;
                if tx.instance(TABLE, to)?.is_some() {
                    return Err(ProviderError::InvalidArgument(format!(
                        "a setting named {to:?} exists already"
                    )));
                }
                let mut moved = old.clone();
                moved.set("name", Value::String(to.clone()));
                let moved = stamped(moved, version(&old), ctx);
                tx.remove(TABLE, name)?;
                tx.put_instance(TABLE, to, &moved)?;
                ctx.emit(
                    class,
                    "renamed",
                    Instance::from_pairs([
                        ("from", Value::String(name.to_string())),
                        ("to", Value::String(to.clone())),
                    ]),
                )?;
                Ok(None)
            }),
            "transfer" => {
                let Value::I64(amount) = *arg(&args, "amount")? else {
                    return Err(ProviderError::InvalidArgument(
                        "amount must be an i64".into(),
                    ));
                };
                if to == name {
                    return Err(ProviderError::InvalidArgument(
                        "a setting cannot transfer to itself".into(),
                    ));
                }
                self.store.write(|tx| {
                    let from = existing(tx, name)?;
                    let dest = existing(tx, to)?;
                    let (a, b) = (parse_i64(&from)?, parse_i64(&dest)?);
                    let overflow =
                        || ProviderError::InvalidArgument("the transfer overflows i64".into());
                    let a2 = a.checked_sub(amount).ok_or_else(overflow)?;
                    let b2 = b.checked_add(amount).ok_or_else(overflow)?;
                    for (setting, value) in [(from, a2), (dest, b2)] {
                        let n = text(&setting, "name").unwrap_or_default().to_string();
                        let previous = version(&setting);
                        let mut updated = setting;
                        updated.set("value", Value::String(value.to_string()));
                        let updated = stamped(updated, previous, ctx);
                        tx.put_instance(TABLE, &n, &updated)?;
                        changed(ctx, class, "transferred", &updated)?;
                    }
                    Ok(Some(Value::I64(a2)))
                })
            }
            other => Err(ProviderError::Unsupported(format!(
                "{class} has no method {other}"
            ))),
        }
    }
}

export_provider!(Config::new);

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, ty: &str, value: &str) -> Instance {
        Instance::from_pairs([
            ("name", Value::String(name.into())),
            ("type", Value::String(ty.into())),
            ("value", Value::String(value.into())),
        ])
    }

    fn key(name: &str) -> InstanceKey {
        let mut k = InstanceKey::new();
        k.insert(Identifier::new("name").unwrap(), Value::String(name.into()));
        k
    }

    #[test]
    fn settings_survive_reopening_and_methods_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let class = ClassPath::new(CLASS).unwrap();
        let ctx = CallContext::internal();
        {
            let c = Config::at(&path).unwrap();
            c.put(&class, setting("a", "i64", "10"), &ctx).unwrap();
            c.put(&class, setting("b", "i64", "0"), &ctx).unwrap();
            let err = c.put(&class, setting("c", "i64", "ten"), &ctx).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid argument: setting \"c\": \"ten\" is not a valid i64"
            );
            let args = Instance::from_pairs([
                ("to", Value::String("b".into())),
                ("amount", Value::I64(3)),
            ]);
            let got = c
                .call(
                    &class,
                    &key("a"),
                    &Identifier::new("transfer").unwrap(),
                    args,
                    &ctx,
                )
                .unwrap();
            assert_eq!(got, Some(Value::I64(7)));
            // A transfer to a missing setting changes nothing.
            let bad = Instance::from_pairs([
                ("to", Value::String("nope".into())),
                ("amount", Value::I64(1)),
            ]);
            assert!(
                c.call(
                    &class,
                    &key("a"),
                    &Identifier::new("transfer").unwrap(),
                    bad,
                    &ctx
                )
                .is_err()
            );
            let rename = Instance::from_pairs([("to", Value::String("bb".into()))]);
            c.call(
                &class,
                &key("b"),
                &Identifier::new("rename").unwrap(),
                rename,
                &ctx,
            )
            .unwrap();
        }
        let events = ctx.take_events();
        let actions: Vec<String> = events.iter().map(|e| format!("{}", e.event)).collect();
        assert_eq!(
            actions,
            ["changed", "changed", "changed", "changed", "renamed"]
        );
        let c = Config::at(&path).unwrap();
        let all = c.enumerate(&class, &ctx).unwrap();
        let pairs: Vec<(String, String)> = all
            .iter()
            .map(|s| {
                (
                    text(s, "name").unwrap().to_string(),
                    text(s, "value").unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(pairs, [("a".into(), "7".into()), ("bb".into(), "3".into())]);
        assert_eq!(all[1].get("version"), Some(&Value::U64(3)));
    }
}
