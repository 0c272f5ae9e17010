//! Access control: who may read, write, call methods of and subscribe to each namespace
//! (the analogue of WMI's namespace security descriptors; format in `docs/security.md`).
//!
//! A policy is a list of rules, one per namespace (`"*"` for all). For a request on a
//! class, the most specific rule that mentions the permission decides; a rule's
//! namespace covers itself and every namespace below it. The built-in defaults come
//! last: reads and subscriptions of `system`, `app` and `purveyor` for every local user,
//! everything else for the daemon's own user. Root and the daemon's own user are always
//! allowed.
//!
//! **Invariant:** every request that touches a class is checked here, with the socket's
//! peer credentials, before any provider is loaded or called.

use std::fmt;
use std::path::Path;

use purveyor_provider::Caller;
use serde::Deserialize;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// List classes, describe, enumerate, get.
    Read,
    /// Put and delete.
    Write,
    /// Call methods.
    Call,
    /// Subscribe to events.
    Subscribe,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Call,
        Permission::Subscribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Call => "call",
            Permission::Subscribe => "subscribe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Someone a rule grants a permission to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `@local`: every user who can reach the socket (not remote clients).
    Local,
    /// `@remote`: every client on another machine, whatever user its certificate maps to.
    Remote,
    /// `@owner`: the user the daemon runs as.
    Owner,
    /// `user:NAME` or `uid:N`.
    Uid(u32),
    /// `group:NAME` or `gid:N`: members by primary or supplementary group.
    Gid(u32),
}

/// One namespace's grants; `None` for a permission the rule does not mention.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    /// `""` for every namespace.
    namespace: String,
    grants: [Option<Vec<(Principal, String)>>; 4],
    /// The file the rule came from, or `built-in default`.
    source: String,
}

/// The daemon's access policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessPolicy {
    /// Most specific namespace first; the defaults after the configured rules.
    rules: Vec<Rule>,
    owner: u32,
    /// `(user, agent_user)`: the agents of `agent_user` may also show `user`'s dialogs.
    dialog_delegates: Vec<(u32, u32)>,
}

/// A refused policy file, naming the file, the line and the entry.
pub type AccessError = crate::config_file::FileError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    namespace: std::collections::BTreeMap<String, toml::Spanned<RawRule>>,
    /// `alice = ["user:root"]`: root's agents may also show alice's dialogs.
    #[serde(default)]
    dialogs: std::collections::BTreeMap<toml::Spanned<String>, Vec<toml::Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    read: Option<Vec<toml::Spanned<String>>>,
    write: Option<Vec<toml::Spanned<String>>>,
    call: Option<Vec<toml::Spanned<String>>>,
    subscribe: Option<Vec<toml::Spanned<String>>>,
}

impl AccessPolicy {
    /// The built-in defaults alone.
    pub fn defaults() -> Self {
        Self::with_rules(Vec::new())
    }

    fn with_rules(mut rules: Vec<Rule>) -> Self {
        let local = || Some(vec![(Principal::Local, "@local".to_string())]);
        let owner = || Some(vec![(Principal::Owner, "@owner".to_string())]);
        for ns in ["system", "app", "purveyor"] {
            rules.push(Rule {
                namespace: ns.into(),
                grants: [local(), None, None, local()],
                source: "built-in default".into(),
            });
        }
        // Streams through I/O procedures: files are opened with the caller's own
        // permissions, so every local user may use them.
        rules.push(Rule {
            namespace: "io".into(),
            grants: [local(), local(), None, None],
            source: "built-in default".into(),
        });
        rules.push(Rule {
            namespace: String::new(),
            grants: [owner(), owner(), owner(), owner()],
            source: "built-in default".into(),
        });
        // Stable: among equal namespaces, configured rules (pushed first) come first.
        rules.sort_by_key(|r| std::cmp::Reverse(r.namespace.len()));
        AccessPolicy {
            rules,
            // SAFETY: geteuid has no preconditions and cannot fail.
            owner: unsafe { libc::geteuid() },
            dialog_delegates: Vec::new(),
        }
    }

    /// Reads a policy file; its rules take precedence over the defaults.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        Self::parse(path, &crate::config_file::read(path)?)
    }

    /// Parses a policy file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, AccessError> {
        let error = |span: Option<std::ops::Range<usize>>, message: String| {
            AccessError::at(path, text, span, message)
        };
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| error(e.span(), e.message().to_string()))?;
        let mut rules = Vec::new();
        for (namespace, rule) in raw.namespace {
            let span = rule.span();
            let rule = rule.into_inner();
            let namespace = match namespace.as_str() {
                "*" => String::new(),
                ns => {
                    purveyor_model::NamespacePath::new(ns)
                        .map_err(|e| error(Some(span.clone()), format!("namespace {ns:?}: {e}")))?;
                    ns.to_string()
                }
            };
            let mut grants: [Option<Vec<(Principal, String)>>; 4] = Default::default();
            for (perm, list) in
                Permission::ALL
                    .into_iter()
                    .zip([rule.read, rule.write, rule.call, rule.subscribe])
            {
                let Some(list) = list else { continue };
                let mut principals = Vec::new();
                for entry in list {
                    let principal = parse_principal(entry.get_ref()).map_err(|message| {
                        error(
                            Some(entry.span()),
                            format!("{perm} of namespace {namespace:?}: {message}"),
                        )
                    })?;
                    principals.push((principal, entry.into_inner()));
                }
                grants[perm.index()] = Some(principals);
            }
            rules.push(Rule {
                namespace,
                grants,
                source: path.display().to_string(),
            });
        }
        let mut delegates = Vec::new();
        for (user, agents) in raw.dialogs {
            let uid = user_principal(user.get_ref()).map_err(|message| {
                error(
                    Some(user.span()),
                    format!("dialogs of {:?}: {message}", user.get_ref()),
                )
            })?;
            for agent in agents {
                let agent_uid = user_principal(agent.get_ref()).map_err(|message| {
                    error(
                        Some(agent.span()),
                        format!("dialogs of {:?}: {message}", user.get_ref()),
                    )
                })?;
                delegates.push((uid, agent_uid));
            }
        }
        let mut policy = Self::with_rules(rules);
        policy.dialog_delegates = delegates;
        Ok(policy)
    }

    /// Whether a UI agent of `agent_uid` may show a dialog meant for `user`: the same
    /// user, or one the policy's `[dialogs]` table allows. Root gets no exception:
    /// dialogs carry secrets.
    pub fn may_show_dialogs(&self, agent_uid: u32, user: u32) -> bool {
        agent_uid == user || self.dialog_delegates.contains(&(user, agent_uid))
    }

    /// The daemon's own user, which (with root) the policy always allows.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Whether `caller` has `permission` on the namespace or class `path`; the refusal
    /// names the permission, the namespace, who has it, and the rule's file.
    pub fn check(&self, caller: &Caller, permission: Permission, path: &str) -> Result<(), String> {
        if caller.uid == 0 || caller.uid == self.owner {
            return Ok(());
        }
        let Some((rule, allowed)) = self.decider(permission, path) else {
            return Err(format!("no rule grants {permission} on {path}"));
        };
        let granted = allowed.iter().any(|(p, _)| match p {
            Principal::Local => !caller.remote,
            Principal::Remote => caller.remote,
            Principal::Owner => caller.uid == self.owner,
            Principal::Uid(uid) => caller.uid == *uid,
            Principal::Gid(gid) => caller.gid == *gid || caller.groups.contains(gid),
        });
        if granted {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|(_, text)| text.as_str()).collect();
        Err(format!(
            "access denied: uid {} lacks the {permission} permission on {path} (namespace {}: {permission} is granted to {}, by {})",
            caller.uid,
            if rule.namespace.is_empty() {
                "*"
            } else {
                &rule.namespace
            },
            if names.is_empty() {
                "nobody".to_string()
            } else {
                names.join(", ")
            },
            rule.source
        ))
    }

    /// The most specific rule covering `path` that mentions `permission`.
    fn decider(
        &self,
        permission: Permission,
        path: &str,
    ) -> Option<(&Rule, &[(Principal, String)])> {
        self.rules.iter().find_map(|rule| {
            let covers = rule.namespace.is_empty()
                || path
                    .strip_prefix(rule.namespace.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
            if !covers {
                return None;
            }
            rule.grants[permission.index()]
                .as_deref()
                .map(|grants| (rule, grants))
        })
    }
}

fn parse_principal(text: &str) -> Result<Principal, String> {
    match text {
        "@local" => return Ok(Principal::Local),
        "@remote" => return Ok(Principal::Remote),
        "@owner" => return Ok(Principal::Owner),
        _ => {}
    }
    let (kind, name) = text.split_once(':').ok_or_else(|| {
        format!("{text:?} is not @local, @remote, @owner, user:NAME, uid:N, group:NAME or gid:N")
    })?;
    match kind {
        "uid" => name
            .parse()
            .map(Principal::Uid)
            .map_err(|_| format!("{text:?}: {name:?} is not a number")),
        "gid" => name
            .parse()
            .map(Principal::Gid)
            .map_err(|_| format!("{text:?}: {name:?} is not a number")),
        "user" => user_ids(name)
            .map(|(uid, _)| uid)
            .map(Principal::Uid)
            .ok_or_else(|| format!("{text:?}: there is no user named {name:?}")),
        "group" => group_id(name)
            .map(Principal::Gid)
            .ok_or_else(|| format!("{text:?}: there is no group named {name:?}")),
        _ => Err(format!(
            "{text:?} is not @local, @remote, @owner, user:NAME, uid:N, group:NAME or gid:N"
        )),
    }
}

/// A user in the `[dialogs]` table: `NAME`, `user:NAME` or `uid:N`.
fn user_principal(text: &str) -> Result<u32, String> {
    let spelled = if text.contains(':') {
        text.to_string()
    } else {
        format!("user:{text}")
    };
    match parse_principal(&spelled)? {
        Principal::Uid(uid) => Ok(uid),
        _ => Err(format!("{text:?} is not a user (NAME, user:NAME or uid:N)")),
    }
}

/// The uid and primary gid of the user `name` (through NSS), if there is one.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let user = purveyor_io::users::user_by_name(name).ok().flatten()?;
    Some((user.uid, user.gid))
}

/// The gid of the group `name` (through NSS), if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    purveyor_io::users::group_id(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller::new(uid, gid, u32::MAX)
    }

    #[test]
    fn remote_clients_are_not_local_and_remote_names_them() {
        let text = "[namespace.config]\nread = [\"@remote\"]\n";
        let policy = AccessPolicy::parse(Path::new("/etc/purveyor/access.toml"), text).unwrap();
        let mut far = caller(1000, 1000);
        far.remote = true;
        let near = caller(1000, 1000);
        // The built-in `@local` of the system namespace is not for remote clients.
        assert!(policy.check(&near, Permission::Read, "system.cpu").is_ok());
        let refused = policy
            .check(&far, Permission::Read, "system.cpu")
            .unwrap_err();
        assert!(refused.contains("@local"), "{refused}");
        assert!(policy.check(&far, Permission::Read, "config.x").is_ok());
        assert!(policy.check(&near, Permission::Read, "config.x").is_err());
    }

    /// Every decision of the defaults and of a configured file, as a table of callers ×
    /// operations.
    #[test]
    fn decisions_table() {
        let text = r#"
[namespace.config]
read = ["@local"]
write = ["uid:1000", "gid:50"]
subscribe = ["gid:50"]

[namespace."config.secret"]
read = ["uid:1000"]
"#;
        let mut policy = AccessPolicy::parse(Path::new("/etc/purveyor/access.toml"), text).unwrap();
        // Not one of the callers below, whoever runs the tests.
        policy.owner = 4000;
        let owner = policy.owner;
        let alice = caller(1000, 1000);
        let bob = caller(1001, 50);
        let eve = caller(1002, 1002);
        let root = caller(0, 0);
        use Permission::*;
        let table: &[(&str, &Caller, Permission, &str, bool)] = &[
            ("system read by anyone", &eve, Read, "system.cpu", true),
            (
                "system subscribe by anyone",
                &eve,
                Subscribe,
                "system.cpu",
                true,
            ),
            (
                "system write only by owner",
                &eve,
                Write,
                "system.cpu",
                false,
            ),
            ("system call only by owner", &eve, Call, "system.cpu", false),
            ("app read by anyone", &eve, Read, "app.shop", true),
            (
                "other namespace read by owner only",
                &eve,
                Read,
                "demo.thing",
                false,
            ),
            ("root may do anything", &root, Write, "demo.thing", true),
            (
                "owner may do anything",
                &caller(owner, 0),
                Call,
                "demo.thing",
                true,
            ),
            (
                "configured read for all",
                &eve,
                Read,
                "config.setting",
                true,
            ),
            (
                "configured write by uid",
                &alice,
                Write,
                "config.setting",
                true,
            ),
            (
                "configured write by group",
                &bob,
                Write,
                "config.setting",
                true,
            ),
            (
                "configured write refused",
                &eve,
                Write,
                "config.setting",
                false,
            ),
            (
                "unmentioned call falls back to defaults",
                &alice,
                Call,
                "config.setting",
                false,
            ),
            (
                "subscribe by group",
                &bob,
                Subscribe,
                "config.setting",
                true,
            ),
            (
                "subscribe refused",
                &alice,
                Subscribe,
                "config.setting",
                false,
            ),
            (
                "more specific namespace wins",
                &eve,
                Read,
                "config.secret.key",
                false,
            ),
            (
                "more specific namespace grants",
                &alice,
                Read,
                "config.secret.key",
                true,
            ),
            (
                "write inherited below",
                &alice,
                Write,
                "config.secret.key",
                true,
            ),
            ("a prefix is not a parent", &eve, Read, "configs.x", false),
        ];
        for (what, who, perm, path, want) in table {
            let got = policy.check(who, *perm, path);
            assert_eq!(got.is_ok(), *want, "{what}: {got:?}");
        }
        assert_eq!(
            policy.check(&eve, Write, "config.setting").unwrap_err(),
            "access denied: uid 1002 lacks the write permission on config.setting (namespace config: write is granted to uid:1000, gid:50, by /etc/purveyor/access.toml)"
        );
        assert!(
            policy
                .check(&eve, Call, "config.setting")
                .unwrap_err()
                .contains("namespace *: call is granted to @owner, by built-in default")
        );
    }

    /// A group rule matches the caller's supplementary groups as the caller carries them
    /// (fixed at connect), never what its pid's process has now.
    #[test]
    fn supplementary_groups_count_as_fixed_at_connect() {
        let policy = AccessPolicy::parse(
            Path::new("a.toml"),
            "[namespace.demo]\nread = [\"gid:77\"]\n",
        )
        .unwrap();
        let mut who = caller(4242, 4242);
        assert!(policy.check(&who, Permission::Read, "demo.x").is_err());
        who.groups = vec![12, 77].into();
        assert!(policy.check(&who, Permission::Read, "demo.x").is_ok());
        // The pid is this very process, whatever groups it has: they are not consulted.
        let mut this = caller(4242, 4242);
        this.pid = std::process::id();
        assert!(policy.check(&this, Permission::Read, "demo.x").is_err());
    }

    #[test]
    fn bad_files_name_the_line_and_entry() {
        let path = Path::new("/etc/purveyor/access.toml");
        let err = |text: &str| AccessPolicy::parse(path, text).unwrap_err().to_string();
        assert_eq!(
            err("[namespace.config]\nread = [\"@local\"]\nwrite = [\"user:no-such-user-here\"]\n"),
            "/etc/purveyor/access.toml:3: write of namespace \"config\": \"user:no-such-user-here\": there is no user named \"no-such-user-here\""
        );
        assert_eq!(
            err("[namespace.config]\nread = [\"everyone\"]\n"),
            "/etc/purveyor/access.toml:2: read of namespace \"config\": \"everyone\" is not @local, @remote, @owner, user:NAME, uid:N, group:NAME or gid:N"
        );
        assert!(
            err("[namespace.config]\nreed = []\n")
                .starts_with("/etc/purveyor/access.toml:2: unknown field `reed`")
        );
        assert!(err("[namespace.\"Bad Name\"]\nread = []\n").contains("namespace \"Bad Name\""));
        let root = AccessPolicy::parse(
            path,
            "[namespace.x]\nread = [\"user:root\", \"group:root\"]\n",
        )
        .unwrap();
        let x = root.rules.iter().find(|r| r.namespace == "x").unwrap();
        let read = x.grants[0].as_ref().unwrap();
        assert_eq!(read[0].0, Principal::Uid(0));
        assert_eq!(read[1].0, Principal::Gid(0));
    }

    #[test]
    fn the_dialogs_table_lets_named_agents_show_a_users_dialogs() {
        let path = Path::new("/etc/purveyor/access.toml");
        let policy =
            AccessPolicy::parse(path, "[dialogs]\nnobody = [\"root\", \"uid:7\"]\n").unwrap();
        assert!(policy.may_show_dialogs(0, 65534));
        assert!(policy.may_show_dialogs(7, 65534));
        assert!(policy.may_show_dialogs(1000, 1000));
        // Not the other way round, and root gets no exception otherwise.
        assert!(!policy.may_show_dialogs(65534, 0));
        assert!(!policy.may_show_dialogs(0, 1000));
        let err = AccessPolicy::parse(path, "[dialogs]\nnobody = [\"group:root\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/purveyor/access.toml:2: dialogs of \"nobody\": \"group:root\" is not a user (NAME, user:NAME or uid:N)"
        );
    }
}
