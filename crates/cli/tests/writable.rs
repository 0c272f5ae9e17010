//! Writable providers end to end: the example `config` provider (a Rust library with a
//! transactional store) hosted isolated by a real daemon; schema checks, events and their
//! filters, the slow-subscriber bound, access control with real peer credentials, and the
//! crash test: writers against a provider (and a daemon) killed at random moments.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{BIN, Daemon, named, wait_until, workspace_library};
use purveyor_client::{Client, ClientError, Push};
use purveyor_model::{ClassPath, CompareOp, Condition, Identifier, Instance, InstanceKey, Value};

fn config_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| workspace_library("libpurveyor_config.so", "purveyor-example-config"))
}

fn config_manifest(hosting: &str) -> (&'static str, String) {
    (
        "config",
        format!(
            "name = \"config\"\nhosting = \"{hosting}\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\", \"subscribe\"]\ncall_timeout = \"5s\"\n",
            config_library().display().to_string()
        ),
    )
}

/// A daemon serving the config provider isolated, its state in the daemon's temp dir.
fn start(args: &[&str]) -> Daemon {
    Daemon::start(&[config_manifest("isolated")], args, &[])
}

fn class() -> ClassPath {
    common::class("config.setting")
}

fn id(s: &str) -> Identifier {
    Identifier::new(s).unwrap()
}

fn setting(name: &str, ty: &str, value: &str) -> Instance {
    Instance::from_pairs([
        ("name", Value::String(name.into())),
        ("type", Value::String(ty.into())),
        ("value", Value::String(value.into())),
    ])
}

fn value_of(client: &mut Client, name: &str) -> Option<String> {
    match client.get(&class(), &named(name)) {
        Ok(i) => match i.get("value") {
            Some(Value::String(s)) => Some(s.clone()),
            other => panic!("setting {name} has value {other:?}"),
        },
        Err(ClientError::NotFound { .. }) => None,
        Err(e) => panic!("get {name}: {e}"),
    }
}

fn transfer(
    client: &mut Client,
    from: &str,
    to: &str,
    amount: i64,
) -> Result<Option<Value>, ClientError> {
    let args = Instance::from_pairs([
        ("to", Value::String(to.into())),
        ("amount", Value::I64(amount)),
    ]);
    client.call(&class(), &id("transfer"), &named(from), args)
}

fn rename(client: &mut Client, from: &str, to: &str) -> Result<Option<Value>, ClientError> {
    let args = Instance::from_pairs([("to", Value::String(to.into()))]);
    client.call(&class(), &id("rename"), &named(from), args)
}

fn message(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::InvalidRequest { message }) => message,
        Err(e) => panic!("expected invalid_request, got {e:?}"),
    }
}

#[test]
fn puts_deletes_and_calls_are_checked_against_the_schema() {
    let daemon = start(&[]);
    let mut c = daemon.client();
    let cls = class();
    // Wrong type, unknown property, missing key: refused before the provider sees them.
    let wrong = Instance::from_pairs([
        ("name", Value::String("a".into())),
        ("value", Value::U64(1)),
    ]);
    assert_eq!(
        message(c.put(&cls, wrong)),
        "property \"value\" of config.setting has type u64 but the schema says string"
    );
    let unknown = Instance::from_pairs([
        ("name", Value::String("a".into())),
        ("colour", Value::String("x".into())),
    ]);
    assert_eq!(
        message(c.put(&cls, unknown)),
        "property \"colour\" is not in the schema of config.setting"
    );
    let keyless = Instance::from_pairs([("value", Value::String("x".into()))]);
    assert_eq!(
        message(c.put(&cls, keyless)),
        "key property \"name\" of config.setting is missing"
    );
    assert_eq!(
        message(c.delete(&cls, &InstanceKey::new())),
        "config.setting is keyed by name: give exactly those properties (got (singleton))"
    );
    // The provider's own checks come back as invalid_request too.
    assert_eq!(
        message(c.put(&cls, setting("n", "i64", "ten"))),
        "setting \"n\": \"ten\" is not a valid i64"
    );
    c.put(&cls, setting("a", "i64", "10")).unwrap();
    c.put(&cls, setting("b", "i64", "1")).unwrap();
    // Calls: unknown method, missing, unknown and mistyped arguments.
    assert!(matches!(
        c.call(&cls, &id("explode"), &named("a"), Instance::new()),
        Err(ClientError::NotFound { message }) if message == "class config.setting has no method \"explode\" (it has rename, transfer)"
    ));
    assert_eq!(
        message(c.call(
            &cls,
            &id("transfer"),
            &named("a"),
            Instance::from_pairs([("to", Value::String("b".into()))])
        )),
        "method config.setting.transfer needs parameter \"amount\" (i64)"
    );
    assert_eq!(
        message(c.call(
            &cls,
            &id("rename"),
            &named("a"),
            Instance::from_pairs([
                ("to", Value::String("c".into())),
                ("force", Value::Bool(true))
            ])
        )),
        "method config.setting.rename has no parameter \"force\""
    );
    assert_eq!(
        message(c.call(
            &cls,
            &id("transfer"),
            &named("a"),
            Instance::from_pairs([("to", Value::String("b".into())), ("amount", Value::U64(1))])
        )),
        "parameter \"amount\" of config.setting.transfer has type i64, not u64"
    );
    // And a good call returns its typed result.
    assert_eq!(transfer(&mut c, "a", "b", 4).unwrap(), Some(Value::I64(6)));
    assert_eq!(value_of(&mut c, "b").as_deref(), Some("5"));
    c.delete(&cls, &named("b")).unwrap();
    assert!(matches!(
        c.delete(&cls, &named("b")),
        Err(ClientError::NotFound { .. })
    ));
    // The CLI: the same checks, with exit codes.
    let cli = |args: &[&str]| daemon.cli(args);
    let out = cli(&["set", "config.setting", "name=c", "value=hi"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["call", "config.setting.rename", "name=c", "to=d"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["get", "config.setting", "name=d", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"value\": \"hi\""),
        "{out:?}"
    );
    let out = cli(&["set", "config.setting", "name=e", "type=i64", "value=ten"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"ten\" is not a valid i64"));
    let out = cli(&["set", "config.setting", "name=e", "colour=x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("class config.setting has no property \"colour\"")
    );
}

/// The requests the daemon has answered so far (this one included).
fn daemon_requests(client: &mut Client) -> u64 {
    let host = client
        .get(&common::class("purveyor.host"), &InstanceKey::new())
        .unwrap();
    match host.get("requests") {
        Some(Value::U64(n)) => *n,
        other => panic!("purveyor.host requests is {other:?}"),
    }
}

/// A client that does not use direct channels: everything through the daemon.
fn through_daemon(daemon: &Daemon) -> Client {
    Client::connect_socket(
        &daemon.socket,
        &purveyor_client::ConnectOptions::default().direct(false),
    )
    .unwrap()
}

/// After two puts through the daemon a client puts and deletes on a direct channel to the
/// worker: the daemon answers none of them, each is checked as the daemon checks it, and
/// their events reach a subscriber of the daemon's, in order.
#[test]
fn puts_and_deletes_go_on_a_direct_channel_checked_and_with_their_events() {
    let daemon = start(&[]);
    let cls = class();
    let mut sub = daemon.client();
    sub.subscribe(&cls, None, vec![]).unwrap();
    let mut w = daemon.client();
    w.put(&cls, setting("a", "string", "1")).unwrap();
    assert!(w.direct_channels().is_empty(), "one put is not enough");
    w.put(&cls, setting("b", "string", "2")).unwrap();
    assert_eq!(w.direct_channels().len(), 1, "{:?}", w.direct_channels());
    let before = daemon_requests(&mut w);
    for (name, value) in [("c", "3"), ("d", "4"), ("a", "5"), ("e", "6")] {
        w.put(&cls, setting(name, "string", value)).unwrap();
    }
    w.delete(&cls, &named("e")).unwrap();
    // Refused on the channel (the schema's checks and the provider's own).
    let bad = [
        Instance::from_pairs([
            ("name", Value::String("a".into())),
            ("value", Value::U64(1)),
        ]),
        Instance::from_pairs([("value", Value::String("x".into()))]),
        setting("n", "i64", "ten"),
    ];
    let refusals: Vec<String> = bad
        .iter()
        .map(|instance| message(w.put(&cls, instance.clone())))
        .collect();
    let no_key = message(w.delete(&cls, &InstanceKey::new()));
    let gone = w.delete(&cls, &named("e")).unwrap_err().to_string();
    assert_eq!(
        daemon_requests(&mut w) - before,
        1,
        "the daemon answered only the second count"
    );
    // In the daemon's own words.
    let mut plain = through_daemon(&daemon);
    for (instance, direct) in bad.into_iter().zip(refusals) {
        assert_eq!(direct, message(plain.put(&cls, instance)));
    }
    assert_eq!(no_key, message(plain.delete(&cls, &InstanceKey::new())));
    assert_eq!(
        gone,
        plain.delete(&cls, &named("e")).unwrap_err().to_string()
    );
    assert!(value_of(&mut plain, "e").is_none());
    assert_eq!(w.direct_channels().len(), 1, "refusals keep the channel");
    for (name, value) in [("a", "5"), ("b", "2"), ("c", "3"), ("d", "4")] {
        assert_eq!(value_of(&mut plain, name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(
        events_of(&mut sub, Duration::from_millis(500)),
        [
            "changed action=created name=a value=1 version=1",
            "changed action=created name=b value=2 version=1",
            "changed action=created name=c value=3 version=1",
            "changed action=created name=d value=4 version=1",
            "changed action=updated name=a value=5 version=2",
            "changed action=created name=e value=6 version=1",
            "changed action=deleted name=e value=6 version=1",
        ]
    );
}

/// A class the channel may not put (here: its manifest does not offer `put`) is put
/// through the daemon, which answers with its own error; reads stay on the channel.
#[test]
fn a_put_the_channel_may_not_make_goes_through_the_daemon() {
    let (name, manifest) = config_manifest("isolated");
    let manifest = manifest.replace("\"put\", ", "");
    let daemon = Daemon::start(&[(name, manifest)], &[], &[]);
    let cls = class();
    let mut c = daemon.client();
    for _ in 0..2 {
        assert!(c.enumerate(&cls, &InstanceKey::new()).unwrap().is_empty());
    }
    assert_eq!(c.direct_channels().len(), 1);
    let refused = |c: &mut Client| match c.put(&cls, setting("x", "string", "1")) {
        Err(ClientError::Unsupported { message }) => message,
        other => panic!("{other:?}"),
    };
    let expected = refused(&mut through_daemon(&daemon));
    assert!(expected.contains("put"), "{expected}");
    for _ in 0..3 {
        assert_eq!(refused(&mut c), expected);
    }
    assert_eq!(c.direct_channels().len(), 1, "the channel stays for reads");
}

fn events_of(client: &mut Client, wait: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some((_, push)) = client.next_event(Some(wait)).unwrap() {
        seen.push(match push {
            Push::Event { event, data, .. } => {
                let fields: Vec<String> = data
                    .values()
                    .filter(|(n, _)| n.as_str() != "type")
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                format!("{event} {}", fields.join(" "))
            }
            Push::Lost { dropped } => format!("lost {dropped}"),
            other => format!("{other:?}"),
        });
    }
    seen
}

#[test]
fn events_reach_the_subscribers_whose_filters_match() {
    let daemon = start(&[]);
    let cls = class();
    let mut all = daemon.client();
    let mut deletions = daemon.client();
    let mut renames = daemon.client();
    let mut big = daemon.client();
    all.subscribe(&cls, None, vec![]).unwrap();
    let deleted = Condition {
        property: id("action"),
        op: CompareOp::Eq,
        value: Value::String("deleted".into()),
    };
    deletions
        .subscribe(&cls, Some(&id("changed")), vec![deleted])
        .unwrap();
    renames
        .subscribe(&cls, Some(&id("renamed")), vec![])
        .unwrap();
    let version2 = Condition {
        property: id("version"),
        op: CompareOp::Ge,
        value: Value::U64(2),
    };
    big.subscribe(&cls, None, vec![version2]).unwrap();
    // Bad subscriptions get exact errors.
    assert!(matches!(
        all.subscribe(&cls, Some(&id("exploded")), vec![]),
        Err(ClientError::NotFound { message }) if message == "class config.setting has no event \"exploded\" (it has changed, renamed)"
    ));
    let bad = Condition {
        property: id("colour"),
        op: CompareOp::Eq,
        value: Value::U64(1),
    };
    assert_eq!(
        message(all.subscribe(&cls, None, vec![bad])),
        "no event of config.setting has a property \"colour\" to filter on"
    );

    let mut w = daemon.client();
    w.put(&cls, setting("x", "string", "1")).unwrap();
    w.put(&cls, setting("x", "string", "2")).unwrap();
    rename(&mut w, "x", "y").unwrap();
    w.delete(&cls, &named("y")).unwrap();
    let wait = Duration::from_millis(300);
    assert_eq!(
        events_of(&mut all, wait),
        [
            "changed action=created name=x value=1 version=1",
            "changed action=updated name=x value=2 version=2",
            "renamed from=x to=y",
            "changed action=deleted name=y value=2 version=3",
        ]
    );
    assert_eq!(
        events_of(&mut deletions, wait),
        ["changed action=deleted name=y value=2 version=3"]
    );
    assert_eq!(events_of(&mut renames, wait), ["renamed from=x to=y"]);
    assert_eq!(
        events_of(&mut big, wait),
        [
            "changed action=updated name=x value=2 version=2",
            "changed action=deleted name=y value=2 version=3",
        ]
    );
    // Unsubscribed (or disconnected) subscribers get nothing more.
    drop(big);
    let mut r = daemon.client();
    let h = r.subscribe(&cls, None, vec![]).unwrap();
    r.unsubscribe(h).unwrap();
    assert!(matches!(
        r.unsubscribe(h),
        Err(ClientError::NotFound { .. })
    ));
    w.put(&cls, setting("z", "string", "1")).unwrap();
    assert!(events_of(&mut r, wait).is_empty());
    let host = w
        .get(
            &ClassPath::new("purveyor.events").unwrap(),
            &InstanceKey::new(),
        )
        .unwrap();
    assert_eq!(host.get("subscriptions"), Some(&Value::U64(3)));
}

#[test]
fn a_slow_subscriber_loses_counted_events_and_delays_nobody() {
    let daemon = start(&["--event-queue", "8"]);
    let cls = class();
    let mut slow = daemon.client();
    slow.subscribe(&cls, None, vec![]).unwrap();
    // 16 KiB values: the socket's buffers hold a few dozen events, the queue 8 more.
    let big = "v".repeat(16 * 1024);
    let mut w = daemon.client();
    let n = 120u64;
    let started = Instant::now();
    for i in 0..n {
        w.put(&cls, setting(&format!("s{i}"), "string", &big))
            .unwrap();
    }
    // The writer was never held up by the subscriber that does not read.
    assert!(started.elapsed() < Duration::from_secs(60));
    let mut events = 0u64;
    let mut lost = 0u64;
    while let Some((_, push)) = slow.next_event(Some(Duration::from_millis(500))).unwrap() {
        match push {
            Push::Event { .. } => events += 1,
            Push::Lost { dropped } => lost += dropped,
            other => panic!("unexpected push {other:?}"),
        }
    }
    assert!(lost > 0, "nothing was dropped ({events} events)");
    assert_eq!(
        events + lost,
        n,
        "every event is either delivered or counted as lost"
    );
    let host = w
        .get(
            &ClassPath::new("purveyor.events").unwrap(),
            &InstanceKey::new(),
        )
        .unwrap();
    assert_eq!(host.get("events_dropped"), Some(&Value::U64(lost)));
}

/// Runs the CLI as `uid`/`gid` (real peer credentials on the socket).
fn as_user(daemon: &Daemon, uid: u32, gid: u32, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .uid(uid)
        .gid(gid)
        .env_remove("PURVEYOR_SOCKET")
        .output()
        .unwrap()
}

/// A daemon with access `policy` whose socket other users may reach, and the policy's
/// file; `None` (the test is skipped) unless this runs as root, which running clients as
/// other users needs.
fn open_to_other_users(policy: &str) -> Option<(Daemon, tempfile::NamedTempFile)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running clients as other users needs root");
        return None;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), policy).unwrap();
    let daemon = start(&["--access", file.path().to_str().unwrap()]);
    // Let other users reach the socket: its directory and the socket itself.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    Some((daemon, file))
}

/// Each access decision as a table of users × operations, enforced by the daemon on the
/// credentials of real processes. Needs root (to run clients as other users).
#[test]
fn access_is_enforced_per_namespace_with_peer_credentials() {
    let Some((daemon, _policy)) = open_to_other_users(
        "[namespace.config]\nread = [\"@local\"]\nwrite = [\"uid:65533\"]\ncall = [\"gid:65533\"]\nsubscribe = [\"uid:65533\"]\n",
    ) else {
        return;
    };
    daemon
        .client()
        .put(&class(), setting("a", "i64", "1"))
        .unwrap();
    daemon
        .client()
        .put(&class(), setting("b", "i64", "1"))
        .unwrap();
    let nobody = (65534, 65534);
    let writer = (65533, 65534);
    let caller = (65532, 65533);
    let set = ["set", "config.setting", "name=a", "value=2"];
    let call = [
        "call",
        "config.setting.transfer",
        "name=a",
        "to=b",
        "amount=1",
    ];
    let get = ["get", "config.setting", "name=a"];
    let sys = ["get", "system.load"];
    let subscribe = ["events", "config.setting", "--timeout", "100ms"];
    type Case<'a> = ((u32, u32), &'a [&'a str], Option<&'a str>);
    let table: &[Case] = &[
        (nobody, &sys, None),
        (nobody, &get, None),
        (
            nobody,
            &set,
            Some("lacks the write permission on config.setting"),
        ),
        (
            nobody,
            &call,
            Some("lacks the call permission on config.setting"),
        ),
        (
            nobody,
            &subscribe,
            Some("lacks the subscribe permission on config.setting"),
        ),
        (writer, &set, None),
        (writer, &subscribe, None),
        (writer, &call, Some("lacks the call permission")),
        (caller, &call, None),
        (caller, &set, Some("lacks the write permission")),
        (nobody, &["get", "purveyor.host"], None),
        (
            nobody,
            &["providers", "enable", "config"],
            Some("lacks the write permission on purveyor"),
        ),
    ];
    for ((uid, gid), args, refusal) in table {
        let out = as_user(&daemon, *uid, *gid, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match refusal {
            None => assert!(out.status.success(), "uid {uid} {args:?}: {stderr}"),
            Some(why) => {
                assert_eq!(
                    out.status.code(),
                    Some(4),
                    "uid {uid} {args:?} should be refused: {stderr}"
                );
                assert!(stderr.contains(why), "uid {uid} {args:?}: {stderr}");
            }
        }
    }
    // The provider saw who wrote: updated_by is the writer's uid.
    let a = daemon.client().get(&class(), &named("a")).unwrap();
    assert_eq!(a.get("updated_by"), Some(&Value::U64(65532)));
    // ls shows a user only the classes it may read.
    let out = as_user(&daemon, nobody.0, nobody.1, &["ls", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("system.load") && text.contains("config.setting"),
        "{text}"
    );
}

/// An access policy: everyone local reads `config`, only uid 65533 writes it.
const WRITER_ONLY_65533: &str =
    "[namespace.config]\nread = [\"@local\"]\nwrite = [\"uid:65533\"]\n";

/// Set when this test binary runs itself as another user: the daemon's socket.
const AS_USER_SOCKET: &str = "PURVEYOR_TEST_AS_USER_SOCKET";
/// Set too when that user should wait for a line on stdin between its two puts.
const AS_USER_PAUSE: &str = "PURVEYOR_TEST_AS_USER_PAUSE";

/// This test binary, running only `test` (with its output), as `uid`.
fn this_test_as(uid: u32, test: &str, socket: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(AS_USER_SOCKET, socket)
        .uid(uid)
        .gid(65534);
    command
}

/// A child process, killed (by its pid) and reaped if the test ends before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What a run of `puts_as_this_user` said, from its output.
fn as_user_said(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        // The harness may start the line with the test's name.
        .filter_map(|l| l.split_once("as user: "))
        .map(|(_, said)| said.to_string())
        .collect()
}

/// A reload that takes a user's write permission away closes the direct channels the
/// old policy opened: the user's next put goes through the daemon and is refused there,
/// where the channel would have made it.
#[test]
fn a_reload_that_revokes_writing_closes_the_channels_opened_before() {
    const NAME: &str = "a_reload_that_revokes_writing_closes_the_channels_opened_before";
    if let Some(socket) = std::env::var_os(AS_USER_SOCKET) {
        return puts_as_this_user(Path::new(&socket));
    }
    let Some((daemon, policy)) = open_to_other_users(WRITER_ONLY_65533) else {
        return;
    };
    let child = this_test_as(65533, NAME, &daemon.socket)
        .env(AS_USER_PAUSE, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("as user: paused") {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "the user's side ended before pausing: {said}");
        said.push_str(&line);
    }
    std::fs::write(policy.path(), "[namespace.config]\nread = [\"@local\"]\n").unwrap();
    daemon.client().reload().unwrap();
    std::io::Write::write_all(child.0.stdin.as_mut().unwrap(), b"go\n").unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut said).unwrap();
    assert!(child.0.wait().unwrap().success(), "{said}");
    let said = as_user_said(&said);
    assert_eq!(said[..3], ["channels 1", "put ok", "paused"], "{said:?}");
    assert!(
        said[3].starts_with("put: access denied: uid 65533 lacks the write permission"),
        "{said:?}"
    );
    let w = daemon.client().get(&class(), &named("w")).unwrap();
    assert_eq!(w.get("value"), Some(&Value::String("1".into())));
}

/// The access policy decides which classes a channel takes puts of, for the caller on the
/// other end: a user who may read but not write `config.setting` has a channel whose puts
/// go through the daemon (and are refused there), a user who may write puts on it. Real
/// peer credentials: the test runs itself as each user (needs root).
#[test]
fn a_channel_takes_puts_only_where_the_policy_lets_its_caller_write() {
    if let Some(socket) = std::env::var_os(AS_USER_SOCKET) {
        return puts_as_this_user(Path::new(&socket));
    }
    let Some((daemon, _policy)) = open_to_other_users(WRITER_ONLY_65533) else {
        return;
    };
    let as_user = |uid: u32| {
        let test = "a_channel_takes_puts_only_where_the_policy_lets_its_caller_write";
        let out = this_test_as(uid, test, &daemon.socket).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "uid {uid}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        as_user_said(&stdout)
    };
    assert_eq!(
        as_user(65533),
        [
            "channels 1",
            "put ok",
            "put ok",
            "the daemon answered 0 puts"
        ]
    );
    let refused = "put: access denied: uid 65534 lacks the write permission on config.setting";
    let nobody = as_user(65534);
    assert_eq!(nobody.len(), 4, "{nobody:?}");
    assert_eq!(nobody[0], "channels 1");
    assert!(nobody[1].starts_with(refused), "{nobody:?}");
    assert!(nobody[2].starts_with(refused), "{nobody:?}");
    assert_eq!(nobody[3], "the daemon answered 2 puts");
    // The provider saw who wrote, on the channel.
    let w = daemon.client().get(&class(), &named("w")).unwrap();
    assert_eq!(w.get("updated_by"), Some(&Value::U64(65533)));
}

/// The other user's side: two reads (a channel opens), two puts; says what happened.
fn puts_as_this_user(socket: &Path) {
    let mut c =
        Client::connect_socket(socket, &purveyor_client::ConnectOptions::default()).unwrap();
    for _ in 0..2 {
        c.enumerate(&class(), &InstanceKey::new()).unwrap();
    }
    println!("as user: channels {}", c.direct_channels().len());
    let before = daemon_requests(&mut c);
    for value in ["1", "2"] {
        match c.put(&class(), setting("w", "string", value)) {
            Ok(()) => println!("as user: put ok"),
            Err(e) => println!("as user: put: {e}"),
        }
        if value == "1" && std::env::var_os(AS_USER_PAUSE).is_some() {
            // Until the test has changed something (a line on stdin).
            println!("as user: paused");
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            std::io::stdin().read_line(&mut String::new()).unwrap();
        }
    }
    let answered = daemon_requests(&mut c) - before - 1;
    println!("as user: the daemon answered {answered} puts");
}

// --- The crash test -------------------------------------------------------------------

const ACCOUNTS: usize = 8;
const START_BALANCE: i64 = 1000;

/// What the writers know was acknowledged.
#[derive(Default)]
struct Acked {
    /// Settings a put acknowledged, with the value it wrote.
    puts: BTreeMap<String, String>,
}

fn pid_of_provider(client: &mut Client) -> Option<u32> {
    client
        .providers()
        .ok()?
        .into_iter()
        .find(|p| p.name.as_str() == "config")
        .and_then(|p| p.pid)
}

fn connect_retrying(socket: &Path, stop: &AtomicBool) -> Option<Client> {
    let options = purveyor_client::ConnectOptions {
        reply_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    while !stop.load(Ordering::Relaxed) {
        if let Ok(c) = Client::connect_socket(socket, &options) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The next number of a xorshift sequence (repeatable randomness for the crash test).
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One writer: puts of its own settings (each acknowledged one recorded), transfers
/// between the shared accounts, and renames of its own token back and forth.
fn writer(
    n: usize,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    ops: Arc<AtomicU64>,
) {
    let cls = class();
    let mut client = match connect_retrying(&socket, &stop) {
        Some(c) => c,
        None => return,
    };
    let token = |side: &str| format!("token{n}-{side}");
    let mut i = 0u64;
    let mut rng = n as u64 * 7919 + 1;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        xorshift(&mut rng);
        let result = match i % 3 {
            0 => {
                let name = format!("w{n}-{i}");
                let value = format!("{}", rng % 1_000_000);
                let r = client
                    .put(&cls, setting(&name, "string", &value))
                    .map(|_| None);
                if r.is_ok() {
                    acked.lock().unwrap().puts.insert(name, value);
                }
                r
            }
            1 => {
                let from = (rng % ACCOUNTS as u64) as usize;
                let to = (from + 1 + (rng >> 8) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                transfer(
                    &mut client,
                    &format!("acct{from}"),
                    &format!("acct{to}"),
                    (rng % 50) as i64 - 10,
                )
            }
            _ => {
                // Wherever the token is now (a rename whose answer was lost may have
                // happened or not), move it to the other name.
                let here = ["a", "b"]
                    .into_iter()
                    .find(|s| client.get(&cls, &named(&token(s))).is_ok());
                match here {
                    Some(side) => rename(
                        &mut client,
                        &token(side),
                        &token(if side == "a" { "b" } else { "a" }),
                    ),
                    None => Ok(None),
                }
            }
        };
        ops.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(_) => {}
            // The provider was killed under the call, or is restarting: go on.
            Err(
                ClientError::ProviderFailed { .. }
                | ClientError::Timeout { .. }
                | ClientError::NotFound { .. }
                | ClientError::InvalidRequest { .. },
            ) => {}
            // The daemon went away: connect again.
            Err(_) => match connect_retrying(&socket, &stop) {
                Some(c) => client = c,
                None => return,
            },
        }
    }
}

/// Checks every invariant against the store as the restarted system serves it.
fn check_invariants(client: &mut Client, acked: &Acked, writers: usize) {
    let all = client.enumerate(&class(), &InstanceKey::new()).unwrap();
    let values: BTreeMap<String, String> = all
        .iter()
        .map(|i| match (i.get("name"), i.get("value")) {
            (Some(Value::String(n)), Some(Value::String(v))) => (n.clone(), v.clone()),
            other => panic!("malformed setting {other:?}"),
        })
        .collect();
    for (name, value) in &acked.puts {
        assert_eq!(
            values.get(name),
            Some(value),
            "acknowledged put of {name} is lost"
        );
    }
    let sum: i64 = (0..ACCOUNTS)
        .map(|a| values[&format!("acct{a}")].parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        sum,
        START_BALANCE * ACCOUNTS as i64,
        "a transfer was half applied"
    );
    for n in 0..writers {
        let sides: BTreeSet<&str> = ["a", "b"]
            .into_iter()
            .filter(|s| values.contains_key(&format!("token{n}-{s}")))
            .collect();
        assert_eq!(
            sides.len(),
            1,
            "token {n} is under {sides:?}: a rename was half applied"
        );
    }
}

/// Runs writers for `duration` while killing the provider's worker (or the whole daemon)
/// at random moments; returns (kills, operations).
fn crash_run(
    daemon: &mut Daemon,
    kill_daemon: bool,
    duration: Duration,
    writers: usize,
    acked: &Arc<Mutex<Acked>>,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..writers)
        .map(|n| {
            let (socket, stop, acked, ops) = (
                daemon.socket.clone(),
                stop.clone(),
                acked.clone(),
                ops.clone(),
            );
            std::thread::spawn(move || writer(n, socket, stop, acked, ops))
        })
        .collect();
    let mut kills = 0u64;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        xorshift(&mut rng);
        std::thread::sleep(Duration::from_millis(30 + rng % 170));
        if kill_daemon {
            daemon.kill();
            kills += 1;
            daemon.spawn();
        } else if let Some(pid) = pid_of_provider(&mut daemon.client()) {
            // SAFETY: SIGKILL to the provider's worker, a child of our daemon.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            kills += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a writer panicked");
    }
    (kills, ops.load(Ordering::Relaxed))
}

/// Waits (up to 10 s) until the daemon serves the class again, after a kill.
fn serving(daemon: &Daemon, what: &str) {
    wait_until(what, Duration::from_secs(10), || {
        daemon
            .client()
            .enumerate(&class(), &InstanceKey::new())
            .is_ok()
    });
}

/// The proof that nothing is lost. `PURVEYOR_CRASH_SECS` lengthens each phase (the
/// benchmark variant, `bench/crash`).
#[test]
fn acknowledged_writes_survive_provider_and_daemon_kills() {
    let secs: u64 = std::env::var("PURVEYOR_CRASH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let writers = 4;
    let mut daemon = start(&["--quarantine-after", "0"]);
    {
        let mut c = daemon.client();
        for a in 0..ACCOUNTS {
            c.put(
                &class(),
                setting(&format!("acct{a}"), "i64", &START_BALANCE.to_string()),
            )
            .unwrap();
        }
        for n in 0..writers {
            c.put(&class(), setting(&format!("token{n}-a"), "string", "t"))
                .unwrap();
        }
    }
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (provider_kills, ops1) = crash_run(
        &mut daemon,
        false,
        Duration::from_secs(secs),
        writers,
        &acked,
    );
    // The last kill may have landed just before this: the next call meets the dying
    // worker (`provider_failed`) until a new one serves.
    serving(&daemon, "the restarted worker to serve");
    check_invariants(&mut daemon.client(), &acked.lock().unwrap(), writers);
    let (daemon_kills, ops2) = crash_run(
        &mut daemon,
        true,
        Duration::from_secs(secs),
        writers,
        &acked,
    );
    serving(&daemon, "the restarted daemon to serve");
    check_invariants(&mut daemon.client(), &acked.lock().unwrap(), writers);
    let puts = acked.lock().unwrap().puts.len();
    eprintln!(
        "crash test: survived {provider_kills} provider kills and {daemon_kills} daemon kills; {} operations, {puts} acknowledged puts, all present",
        ops1 + ops2
    );
    assert!(
        provider_kills >= 5 && daemon_kills >= 5,
        "too few kills to prove anything"
    );
    assert!(
        puts >= 10,
        "too few acknowledged writes to prove anything ({puts})"
    );
}

const TICKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/providers/python/ticker.py"
);

/// An external provider raises events outside any call; the host checks them (a bogus one
/// is dropped and recorded), delivers the matching ones, and keeps the provider loaded
/// while anyone subscribes, then releases it when idle.
#[test]
fn an_external_provider_raises_events_of_its_own_and_stays_loaded_while_subscribed() {
    let manifest = format!(
        "name = \"ticker\"\nhosting = \"external\"\ncommand = [\"python3\", {TICKER:?}]\nclasses = [\"demo.ticker\"]\ncapabilities = [\"get\", \"subscribe\"]\nclear_after = \"300ms\"\n"
    );
    let interval: &std::ffi::OsStr = "40".as_ref();
    let daemon = Daemon::start(
        &[("ticker", manifest)],
        &[],
        &[("TICKER_INTERVAL_MS", interval)],
    );
    let ticker = ClassPath::new("demo.ticker").unwrap();
    let status = |d: &Daemon| {
        d.client()
            .providers()
            .unwrap()
            .into_iter()
            .find(|p| p.name.as_str() == "ticker")
            .unwrap()
    };
    let mut sub = daemon.client();
    let even = Condition {
        property: id("parity"),
        op: CompareOp::Eq,
        value: Value::String("even".into()),
    };
    sub.subscribe(&ticker, Some(&id("tick")), vec![even])
        .unwrap();
    // Well past clear_after: the subscription keeps the provider loaded.
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Some((_, Push::Event { data, .. })) =
            sub.next_event(Some(Duration::from_millis(500))).unwrap()
        {
            let Some(Value::U64(n)) = data.get("n") else {
                panic!("tick without n: {data:?}")
            };
            seen.push(*n);
        }
    }
    assert!(seen.len() >= 5, "too few ticks: {seen:?}");
    assert!(
        seen.iter().all(|n| n % 2 == 0),
        "the filter let odd ticks through: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ticks out of order: {seen:?}"
    );
    let s = status(&daemon);
    assert_eq!((s.loads, s.unloads), (1, 0), "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("declares no event \"bogus\"")),
        "{s:?}"
    );
    // Without subscribers it is idle, and released.
    drop(sub);
    wait_until("the ticker to be released", Duration::from_secs(10), || {
        status(&daemon).unloads == 1
    });
}

/// The async client subscribes too: events arrive while the same connection makes
/// requests, and the wait ends with an error when the daemon goes away.
#[test]
fn the_async_client_receives_events_while_it_makes_requests() {
    let mut daemon = start(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = daemon.socket.clone();
    let client = runtime.block_on(async {
        let c = purveyor_client::AsyncClient::connect_socket(
            &socket,
            &purveyor_client::ConnectOptions::default(),
        )
        .await
        .unwrap();
        c.subscribe(&class(), Some(&id("changed")), vec![])
            .await
            .unwrap();
        c
    });
    let mut w = daemon.client();
    w.put(&class(), setting("x", "string", "1")).unwrap();
    w.put(&class(), setting("x", "string", "2")).unwrap();
    runtime.block_on(async {
        for want in ["1", "2"] {
            let (_, push) = tokio::time::timeout(Duration::from_secs(10), client.next_event())
                .await
                .expect("an event within 10 s")
                .unwrap();
            let Push::Event { data, .. } = push else {
                panic!("unexpected push {push:?}")
            };
            assert_eq!(data.get("value"), Some(&Value::String(want.into())));
            // Requests on the same connection go on meanwhile.
            client.get(&class(), &named("x")).await.unwrap();
        }
    });
    daemon.kill();
    let ended = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), client.next_event()).await
    });
    assert!(
        matches!(ended, Ok(Err(ClientError::Protocol { .. }))),
        "{ended:?}"
    );
}
