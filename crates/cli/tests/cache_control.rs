//! Cache control as data (`docs/lifecycle.md`, "Cache control"): the kinds' `clear_after`
//! windows are instances of `purveyor.cache_control` that the daemon's owner sets, in
//! force at once on idle timers, kept across restarts, refused to others.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Daemon, as_nobody, root_or_skip, wait_until, workspace_library};
use purveyor_model::ProviderState;

fn greeting_manifest() -> String {
    let lib = workspace_library("libpurveyor_example.so", "purveyor-example-provider");
    format!(
        "name = \"greeting\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"demo.greeting\"]\ncapabilities = [\"enumerate\", \"get\"]\n",
        lib.display().to_string()
    )
}

/// `kind`'s window in milliseconds and its source, as `purveyor get --json` shows them.
fn window(d: &Daemon, kind: &str) -> (u64, String) {
    let out = d.cli(&[
        "get",
        "purveyor.cache_control",
        &format!("kind={kind}"),
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let i = &json["instances"][0];
    (
        i["clear_after_ms"].as_u64().unwrap(),
        i["source"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_kinds_window_is_set_applied_at_once_and_kept() {
    let mut d = Daemon::start(&[("greeting", greeting_manifest())], &[], &[]);
    assert_eq!(window(&d, "instance"), (300_000, "default".into()));

    // Loaded, with the default five minutes ahead of it.
    assert!(d.cli(&["get", "demo.greeting", "name=a"]).status.success());
    assert_eq!(d.status("greeting").state, ProviderState::Loaded);
    let out = d.cli(&[
        "set",
        "purveyor.cache_control",
        "kind=instance",
        "clear_after_ms=300",
    ]);
    assert!(out.status.success(), "{out:?}");
    // The sleeping idle timer is woken and releases it with the new window.
    wait_until(
        "the idle provider to be released",
        Duration::from_secs(10),
        || d.status("greeting").state == ProviderState::Registered,
    );

    // Kept across a restart.
    d.kill();
    d.spawn();
    assert_eq!(window(&d, "instance"), (300, "set".into()));
    wait_until(
        "the provider to be released again",
        Duration::from_secs(10),
        || d.status("greeting").state == ProviderState::Registered,
    );

    // Bad values are refused with the range; delete returns to the default.
    let out = d.cli(&[
        "set",
        "purveyor.cache_control",
        "kind=io",
        "clear_after_ms=5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside 100 ms"));
    let out = d.cli(&[
        "set",
        "purveyor.cache_control",
        "kind=widget",
        "clear_after_ms=500",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown provider kind \"widget\""));
    assert!(
        d.cli(&["delete", "purveyor.cache_control", "kind=instance"])
            .status
            .success()
    );
    assert_eq!(window(&d, "instance"), (300_000, "default".into()));
}

#[test]
fn only_the_owner_may_set_it() {
    if !root_or_skip("acting as nobody needs root") {
        return;
    }
    let d = Daemon::start(&[], &[], &[]);
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let read = as_nobody(&d, &["get", "purveyor.cache_control", "kind=counter"]);
    assert!(read.status.success(), "{read:?}");
    let out = as_nobody(
        &d,
        &[
            "set",
            "purveyor.cache_control",
            "kind=counter",
            "clear_after_ms=1000",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(window(&d, "counter"), (600_000, "default".into()));
}

/// The blocking client writes pipelined requests together, before it waits for a reply
/// (`Client::send`): many sent back to back are all answered, in any order, and one sent
/// and never waited for still reaches the daemon when the client is dropped.
#[test]
fn pipelined_requests_are_written_before_a_wait_and_when_the_client_goes() {
    use purveyor_model::{ClassPath, Instance, InstanceKey, Value};
    use purveyor_protocol::Request;
    let d = Daemon::start(&[], &[], &[]);
    let host = ClassPath::new("purveyor.host").unwrap();
    let mut c = d.client();
    let ids: std::collections::BTreeSet<u32> = (0..500)
        .map(|_| {
            c.send(Request::Get {
                class: host.clone(),
                key: InstanceKey::new(),
            })
            .unwrap()
        })
        .collect();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..ids.len() {
        let (id, reply) = c.recv().unwrap();
        reply.unwrap();
        answered.insert(id);
    }
    assert_eq!(answered, ids);

    let mut setter = d.client();
    setter
        .send(Request::Put {
            class: ClassPath::new("purveyor.cache_control").unwrap(),
            instance: Instance::from_pairs([
                ("kind", Value::String("event".into())),
                ("clear_after_ms", Value::U64(4321)),
            ]),
        })
        .unwrap();
    drop(setter);
    wait_until(
        "the put sent by a client that left",
        Duration::from_secs(10),
        || window(&d, "event").0 == 4321,
    );
}
