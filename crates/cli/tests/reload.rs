//! Reload without restart (`docs/lifecycle.md`, "Reload"): `SIGHUP` and `purveyor
//! reload` re-read the manifests and the access policy on a running daemon, all or
//! nothing, with connections kept open.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Daemon, as_nobody, root_or_skip, wait_until, workspace_library};
use purveyor_model::{ClassPath, InstanceKey, Value};

fn greeting_manifest() -> String {
    let lib = workspace_library("libpurveyor_example.so", "purveyor-example-provider");
    format!(
        "name = \"greeting\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"demo.greeting\"]\ncapabilities = [\"enumerate\", \"get\"]\n",
        lib.display().to_string()
    )
}

fn providers_dir(d: &Daemon) -> std::path::PathBuf {
    d.dir.path().join("providers")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A manifest added while the daemon runs is served after `SIGHUP`, on a connection that
/// was opened before it; a new broken manifest is refused with its file and line, and
/// what was served keeps being served.
#[test]
fn a_new_manifest_is_served_after_sighup_on_an_open_connection() {
    let d = Daemon::start(&[], &[], &[]);
    let mut client = d.client();
    let greeting = ClassPath::new("demo.greeting").unwrap();
    let mut key = InstanceKey::new();
    key.insert("name".parse().unwrap(), Value::String("reload".into()));
    assert!(client.get(&greeting, &key).is_err(), "not served yet");

    std::fs::write(providers_dir(&d).join("greeting.toml"), greeting_manifest()).unwrap();
    // SAFETY: kill sends SIGHUP to our own child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    wait_until(
        "the new provider to be served",
        Duration::from_secs(10),
        || client.get(&greeting, &key).is_ok(),
    );
    let got = client.get(&greeting, &key).unwrap();
    assert_eq!(
        got.get("message"),
        Some(&Value::String("hello, reload".into())),
        "{got:?}"
    );
    assert!(d.log().contains("SIGHUP received"), "{}", d.log());

    // A broken manifest: refused as a whole, naming the file and the line.
    std::fs::write(
        providers_dir(&d).join("broken.toml"),
        "name = \"broken\"\nhosting = \"sideways\"\n",
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("reload refused"), "{err}");
    assert!(err.contains("broken.toml:2"), "{err}");
    assert!(client.get(&greeting, &key).is_ok());

    // Removing it again makes the reload go through; removing greeting retires it.
    std::fs::remove_file(providers_dir(&d).join("broken.toml")).unwrap();
    std::fs::remove_file(providers_dir(&d).join("greeting.toml")).unwrap();
    let out = d.cli(&["reload", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["removed"],
        serde_json::json!(["greeting"]),
        "{report}"
    );
    let err = client.get(&greeting, &key).unwrap_err().to_string();
    assert!(
        err.contains("no provider serves class demo.greeting"),
        "{err}"
    );
}

/// A changed manifest: the provider's old worker is released after the reload, and the
/// next request loads the new one; an unchanged provider keeps its worker.
#[test]
fn a_changed_provider_is_released_and_loads_anew() {
    let d = Daemon::start(&[("greeting", greeting_manifest())], &[], &[]);
    let out = d.cli(&["get", "demo.greeting", "name=one"]);
    assert!(out.status.success(), "{out:?}");
    let before = d.status("greeting").pid.expect("a worker");

    let changed = greeting_manifest() + "description = \"changed\"\n";
    std::fs::write(providers_dir(&d).join("greeting.toml"), changed).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("providers changed  greeting"), "{said}");
    wait_until("the old worker to exit", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{before}")).exists()
    });
    let out = d.cli(&["get", "demo.greeting", "name=two"]);
    assert!(out.status.success(), "{out:?}");
    let after = d.status("greeting");
    assert_ne!(after.pid, Some(before));

    // Nothing changed: nothing released.
    let out = d.cli(&["reload"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("providers changed  none"));
    assert_eq!(d.status("greeting").pid, after.pid);
}

/// A broken policy is refused with its file and line, and the policy in force is still
/// enforced; a good one takes effect on the connections already open. Only the daemon's
/// owner may reload.
#[test]
fn a_broken_policy_is_refused_and_the_old_one_still_enforced() {
    if !root_or_skip("acting as nobody needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = dir.path().join("access.toml");
    std::fs::write(&policy, "[namespace.system]\nread = [\"@owner\"]\n").unwrap();
    let d = Daemon::start(&[], &["--access", policy.to_str().unwrap()], &[]);
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let denied = as_nobody(&d, &["get", "system.load"]);
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");

    std::fs::write(&policy, "[namespace.system]\nreed = [\"@local\"]\n").unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("access.toml:2"), "{err}");
    assert!(err.contains("unknown field `reed`"), "{err}");
    let still = as_nobody(&d, &["get", "system.load"]);
    assert_eq!(
        still.status.code(),
        Some(4),
        "the old policy holds: {still:?}"
    );

    // nobody may not reload.
    let out = as_nobody(&d, &["reload"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    std::fs::write(&policy, "[namespace.system]\nread = [\"@local\"]\n").unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(policy.to_str().unwrap()));
    let allowed = as_nobody(&d, &["get", "system.load"]);
    assert!(allowed.status.success(), "{allowed:?}");
}

/// A daemon keeps two runtime threads when a library is hosted in-daemon at start (a hung
/// library holds its thread for good); one started with a single thread warns when a
/// reload brings such a library in (`docs/lifecycle.md`, "Calls and deadlines").
#[test]
fn an_in_daemon_library_keeps_a_second_thread_and_a_reload_that_adds_one_warns() {
    let in_daemon = greeting_manifest().replace("\"isolated\"", "\"in-daemon\"");
    let d = Daemon::start(&[("greeting", in_daemon.clone())], &[], &[]);
    let threads = |d: &Daemon| {
        let log = d.log();
        let line = log
            .lines()
            .find(|l| l.contains("async runtime threads"))
            .unwrap_or_else(|| panic!("no runtime line in {log}"))
            .to_string();
        // The number ends the line (after `threads=`, perhaps with colour codes).
        let digits: String = line
            .trim_end()
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits.parse::<usize>().unwrap_or_else(|_| panic!("{line}"))
    };
    assert!(threads(&d) >= 2, "{}", d.log());
    drop(d);

    let d = Daemon::start(&[], &["--threads", "1"], &[]);
    assert_eq!(threads(&d), 1);
    std::fs::write(providers_dir(&d).join("greeting.toml"), in_daemon).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the warning in the log", Duration::from_secs(5), || {
        d.log()
            .contains("hosted in-daemon on a daemon started with one runtime thread")
    });
    let log = d.log();
    let warning = log
        .lines()
        .find(|l| l.contains("one runtime thread"))
        .unwrap();
    assert!(warning.contains("greeting"), "{warning}");
}
