//! Change events for any class (WMI's intrinsic events, `docs/query.md`): two
//! enumerations of a class diffed by key, and what each subscriber gets of the diff. Pure
//! functions of instances, tested with made-up ones; the polling lives in
//! `requests/subscribe.rs` and the subscriptions in [`crate::events`].
//!
//! **The rule for counters.** A property whose semantic is `counter` or `delta` moves on
//! its own all the time; its moving is not a modification unless the subscriber asked for
//! counters. A modification a subscriber gets lists only the properties it cares about,
//! and one where nothing else changed is not sent to it at all.

use std::collections::BTreeMap;

use purveyor_model::{ClassSchema, Condition, Instance, Semantic, matches_all};
use purveyor_protocol::{ChangeKind, PropertyChange, Push};

/// A class's instances by key (the key properties' values, as text).
pub(crate) type Snapshot = BTreeMap<String, Instance>;

/// The instances of one enumeration, by key.
pub(crate) fn snapshot(schema: &ClassSchema, instances: Vec<Instance>) -> Snapshot {
    instances
        .into_iter()
        .map(|i| {
            let key: Vec<String> = schema
                .keys()
                .map(|k| {
                    i.get(k.name.as_str())
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default()
                })
                .collect();
            (key.join("\u{1f}"), i)
        })
        .collect()
}

/// One instance's change between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub kind: ChangeKind,
    /// As it is now; as it was, when deleted.
    pub instance: Instance,
    /// Every property that changed (modified only), in the schema's order.
    pub changed: Vec<PropertyChange>,
}

/// What changed from `old` to `new`, in key order: created, deleted and modified
/// instances.
pub(crate) fn diff(schema: &ClassSchema, old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, now) in new {
        match old.get(key) {
            None => changes.push(Change {
                kind: ChangeKind::Created,
                instance: now.clone(),
                changed: Vec::new(),
            }),
            Some(before) => {
                let changed: Vec<PropertyChange> = schema
                    .properties()
                    .iter()
                    .filter_map(|p| {
                        let (a, b) = (before.get(p.name.as_str()), now.get(p.name.as_str()));
                        (a != b).then(|| PropertyChange {
                            name: p.name.clone(),
                            old: a.cloned(),
                            new: b.cloned(),
                        })
                    })
                    .collect();
                if !changed.is_empty() {
                    changes.push(Change {
                        kind: ChangeKind::Modified,
                        instance: now.clone(),
                        changed,
                    });
                }
            }
        }
    }
    for (key, before) in old {
        if !new.contains_key(key) {
            changes.push(Change {
                kind: ChangeKind::Deleted,
                instance: before.clone(),
                changed: Vec::new(),
            });
        }
    }
    changes
}

/// What a subscriber with `filter` (on the instance) and `counters` gets of `change`, as
/// the push to send it; `None` when it gets nothing.
pub(crate) fn view(
    schema: &ClassSchema,
    change: &Change,
    filter: &[Condition],
    counters: bool,
) -> Option<Push> {
    if !matches_all(filter, &change.instance) {
        return None;
    }
    let changed: Vec<PropertyChange> = change
        .changed
        .iter()
        .filter(|c| {
            counters
                || !schema
                    .property(c.name.as_str())
                    .is_some_and(|p| matches!(p.semantic, Semantic::Counter | Semantic::Delta))
        })
        .cloned()
        .collect();
    if change.kind == ChangeKind::Modified && changed.is_empty() {
        return None;
    }
    Some(Push::Change {
        class: schema.path().clone(),
        change: change.kind,
        instance: change.instance.clone(),
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::{CompareOp, Identifier, PropertyDef, Unit, Value};

    fn schema() -> ClassSchema {
        ClassSchema::fixed(
            "test.proc",
            "",
            vec![
                PropertyDef::new("pid", "u64", Unit::None, Semantic::Key, ""),
                PropertyDef::new("name", "string", Unit::None, Semantic::Discrete, ""),
                PropertyDef::new("cpu", "u64", Unit::None, Semantic::Counter, ""),
            ],
        )
    }

    fn proc(pid: u64, name: &str, cpu: u64) -> Instance {
        Instance::from_pairs([
            ("pid", Value::U64(pid)),
            ("name", Value::String(name.into())),
            ("cpu", Value::U64(cpu)),
        ])
    }

    #[test]
    fn created_deleted_and_modified_by_key_with_old_and_new_values() {
        let s = schema();
        let old = snapshot(&s, vec![proc(1, "init", 5), proc(2, "sshd", 7)]);
        let new = snapshot(
            &s,
            vec![proc(1, "init", 9), proc(3, "bash", 0), proc(2, "ssh", 7)],
        );
        let changes = diff(&s, &old, &new);
        let kinds: Vec<(ChangeKind, u64)> = changes
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.instance.get("pid").unwrap().as_f64().unwrap() as u64,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Modified, 1),
                (ChangeKind::Modified, 2),
                (ChangeKind::Created, 3)
            ]
        );
        assert_eq!(
            changes[1].changed,
            [PropertyChange {
                name: Identifier::new("name").unwrap(),
                old: Some(Value::String("sshd".into())),
                new: Some(Value::String("ssh".into())),
            }]
        );
        let gone = diff(&s, &new, &old);
        assert!(gone.iter().any(|c| c.kind == ChangeKind::Deleted
            && c.instance.get("name") == Some(&Value::String("bash".into()))));
        assert!(diff(&s, &old, &old).is_empty());
    }

    #[test]
    fn a_counter_moving_is_a_modification_only_for_who_asks_and_filters_apply() {
        let s = schema();
        let old = snapshot(&s, vec![proc(1, "init", 5)]);
        let new = snapshot(&s, vec![proc(1, "init", 9)]);
        let change = &diff(&s, &old, &new)[0];
        assert_eq!(view(&s, change, &[], false), None);
        let Some(Push::Change { changed, .. }) = view(&s, change, &[], true) else {
            panic!("a subscriber asking for counters gets the move")
        };
        assert_eq!(changed[0].name.as_str(), "cpu");
        let sshd = [Condition {
            property: Identifier::new("name").unwrap(),
            op: CompareOp::Eq,
            value: Value::String("sshd".into()),
        }];
        assert_eq!(view(&s, change, &sshd, true), None);
        let born = diff(
            &s,
            &Snapshot::new(),
            &snapshot(&s, vec![proc(4, "sshd", 0)]),
        );
        assert!(matches!(
            view(&s, &born[0], &sshd, false),
            Some(Push::Change {
                change: ChangeKind::Created,
                ..
            })
        ));
    }
}
