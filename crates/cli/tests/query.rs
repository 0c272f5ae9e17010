//! SQL queries end to end: a real daemon, the built-in classes, the CLI and the client.

mod common;

use common::{BIN, Daemon};
use purveyor_model::Value;

/// `WHERE pid = <ours>` asks `system.process` for one instance (a get), never an
/// enumerate; the answer is this process, typed as its properties are.
#[test]
fn key_equality_is_a_get_and_the_columns_keep_their_types() {
    let d = Daemon::start(&[], &[], &[]);
    let pid = std::process::id();
    let rows = d
        .client()
        .query(
            &format!("SELECT pid, name, rss FROM system.process WHERE pid = {pid}"),
            true,
        )
        .unwrap();
    assert_eq!(
        rows.plan,
        [format!("system.process: get pid={pid} → 1 instance")]
    );
    assert_eq!(rows.rows.len(), 1);
    assert_eq!(rows.rows[0][0], Some(Value::U64(pid as u64)));
    assert!(matches!(rows.rows[0][2], Some(Value::U64(rss)) if rss > 0));
    assert_eq!(rows.columns[2].unit, Some(purveyor_model::Unit::Bytes));
}

/// Aggregates and a join across two providers' classes (the system provider's processes
/// and the host's own providers list), through the CLI, as a table and as JSON.
#[test]
fn joins_aggregates_and_the_cli() {
    let d = Daemon::start(&[], &[], &[]);
    let out = d.cli(&[
        "query",
        "SELECT count(*) AS n FROM system.process AS p JOIN purveyor.host AS h ON h.pid = p.pid",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rows"][0]["n"], 1, "{json}");
    let out = d.cli(&[
        "query",
        "SELECT name, count(*) AS n FROM system.process GROUP BY name ORDER BY n DESC LIMIT 3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().contains("name"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
}

/// Errors name the problem and where it is; exit codes are those of `get`.
#[test]
fn errors_name_the_place_and_exit_like_get() {
    let d = Daemon::start(&[], &[], &[]);
    let out = d.cli(&["query", "SELECT * FROM system.nowhere"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no class system.nowhere at byte 14"), "{err}");
    let out = d.cli(&["query", "SELECT nope FROM system.process"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such column: nope"), "{err}");
    assert_ne!(out.status.code(), Some(0));
    let out = d.cli(&["query", "DELETE FROM system.process"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("table process may not be modified"), "{err}");
    let out = d.cli(&["query", "CREATE TABLE t(x)"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only queries that read"), "{err}");
    let out = d.cli(&["query", "SELECT pid FROM system.process WHERE rss > 'lots'"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("type mismatch at byte 43: system.process.rss is u64, compared with 'lots'"),
        "{err}"
    );
    // The embedded host answers the same way.
    let out = std::process::Command::new(BIN)
        .args([
            "--embedded",
            "query",
            "SELECT pid FROM system.process WHERE pid = 1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `watch_changes` on a class whose provider raises no events: a process started after
/// the subscription is `created`, and `deleted` once it is gone, with the filter applied.
/// The filter is on the parent (this test), which the child has from its fork on: one on
/// its name would see it first as `modified` when a poll fell between its fork and its
/// exec (the name changes at the exec), as documented for filters.
#[test]
fn change_events_for_a_class_without_events() {
    use purveyor_client::{ChangeKind, Push};
    let d = Daemon::start(&[], &[], &[]);
    let mut c = d.client();
    let class = common::class("system.process");
    let me = Value::U64(u64::from(std::process::id()));
    let filter = vec![purveyor_model::Condition {
        property: purveyor_model::Identifier::new("ppid").unwrap(),
        op: purveyor_model::CompareOp::Eq,
        value: me.clone(),
    }];
    c.watch_changes(&class, filter, std::time::Duration::from_millis(100), false)
        .unwrap();
    // Let the first poll set the baseline.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    let mut seen = Vec::new();
    let mut killed = false;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < give_up {
        let Some((_, push)) = c
            .next_event(Some(std::time::Duration::from_millis(500)))
            .unwrap()
        else {
            continue;
        };
        let Push::Change {
            change, instance, ..
        } = push
        else {
            panic!("{push:?}")
        };
        assert_eq!(instance.get("ppid"), Some(&me), "the filter applies");
        if instance.get("pid") != Some(&Value::U64(pid)) {
            continue;
        }
        seen.push(change);
        if change == ChangeKind::Created && !killed {
            child.kill().unwrap();
            child.wait().unwrap();
            killed = true;
        }
        if change == ChangeKind::Deleted {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.first(), Some(&ChangeKind::Created), "{seen:?}");
    assert_eq!(seen.last(), Some(&ChangeKind::Deleted), "{seen:?}");
}

/// Two subscribers to one class at one interval share one poll, and the polling stops
/// when the last leaves.
#[test]
fn change_polls_are_shared_and_stop_with_the_last_subscriber() {
    let d = Daemon::start(&[], &[], &[]);
    let class = common::class("system.memory");
    let interval = std::time::Duration::from_millis(100);
    let (mut a, mut b) = (d.client(), d.client());
    a.watch_changes(&class, vec![], interval, false).unwrap();
    b.watch_changes(&class, vec![], interval, false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = d.status("system").calls;
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let polls = d.status("system").calls - before;
    // About 10 in that second for both together; 20 if each had its own poll.
    assert!((5..=15).contains(&polls), "{polls} polls in a second");
    drop((a, b));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let after = d.status("system").calls;
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        d.status("system").calls,
        after,
        "polling went on with no subscriber"
    );
}

const MANY_C: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../bench/benches/curves/many.c"
);

/// A daemon with in-daemon providers `n1000` and `n1000b` (the curves' C library: class
/// `bench.NAME`, key `id`, 1 000 instances each).
fn two_thousand_instance_classes() -> Daemon {
    static LIB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let lib =
        LIB.get_or_init(|| common::compile("libmany.so", MANY_C, &["-shared", "-fPIC", "-O2"]));
    let manifest = |name: &str| {
        (
            name.to_string(),
            format!(
                "name = \"{name}\"\nhosting = \"in-daemon\"\nlibrary = {:?}\nclasses = [\"bench.{name}\"]\ncapabilities = [\"enumerate\", \"get\"]\n",
                lib.display().to_string()
            ),
        )
    };
    let (a, b) = (manifest("n1000"), manifest("n1000b"));
    Daemon::start(&[(&a.0, a.1), (&b.0, b.1)], &[], &[])
}

/// Pushdown proven by the providers' call counts: a key equality is one get; a filter on
/// another property one enumerate; a join of two providers' classes reads each at most
/// a handful of times (one enumerate each, or a few gets then one enumerate), not once
/// per row.
#[test]
fn pushdown_and_a_join_by_the_providers_call_counts() {
    let d = two_thousand_instance_classes();
    let mut c = d.client();
    let calls = |name: &str| d.status(name).calls;
    let rows = c
        .query("SELECT value FROM bench.n1000 WHERE id = 5", true)
        .unwrap();
    assert_eq!(rows.rows, [vec![Some(Value::U64(35))]]);
    assert_eq!(rows.plan, ["bench.n1000: get id=5 → 1 instance"]);
    let after_get = calls("n1000");
    let rows = c
        .query("SELECT count(*) FROM bench.n1000 WHERE value > 6930", false)
        .unwrap();
    assert_eq!(rows.rows, [vec![Some(Value::I64(9))]]);
    assert_eq!(calls("n1000") - after_get, 1, "one enumerate");
    let (a0, b0) = (calls("n1000"), calls("n1000b"));
    let rows = c
        .query(
            "SELECT count(*), sum(b.value) FROM bench.n1000 AS a JOIN bench.n1000b AS b ON b.id = a.id",
            true,
        )
        .unwrap();
    assert_eq!(
        rows.rows,
        [vec![
            Some(Value::I64(1000)),
            Some(Value::I64(7 * 999 * 1000 / 2))
        ]]
    );
    let (a1, b1) = (calls("n1000") - a0, calls("n1000b") - b0);
    assert!(a1 + b1 <= 10, "{a1} + {b1} calls; plan {:?}", rows.plan);
}
