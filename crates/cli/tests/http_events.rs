//! The gateway's Server-Sent Events and HTTPS, seen by curl (`docs/http.md`, "Events",
//! "HTTPS"): a real daemon, the example `config` provider, and `curl -N` reading the
//! stream while a client writes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Daemon, http_addr, workspace_library};
use purveyor_model::{Instance, Value};

fn config_manifest() -> (&'static str, String) {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    let lib =
        LIB.get_or_init(|| workspace_library("libpurveyor_config.so", "purveyor-example-config"));
    (
        "config",
        format!(
            "name = \"config\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\", \"subscribe\"]\n",
            lib.display().to_string()
        ),
    )
}

/// A daemon whose gateway lets anonymous (`nobody`) readers subscribe to `config`.
fn daemon(http: &str, extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.toml");
    std::fs::write(
        &access,
        "[namespace.config]\nread = [\"@local\"]\nsubscribe = [\"@local\"]\n",
    )
    .unwrap();
    let mut args = vec!["--http", http, "--access", access.to_str().unwrap()];
    args.extend_from_slice(extra);
    let d = Daemon::start(&[config_manifest()], &args, &[]);
    std::mem::forget(dir);
    d
}

fn have_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

/// `curl -sN URL ARGS`, its stdout read line by line; killed when dropped.
struct Curl {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Curl {
    fn start(url: &str, args: &[&str]) -> Curl {
        let mut child = Command::new("curl")
            .args(["-sN", "--max-time", "30"])
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl is needed (.ci/run installs it)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Curl { child, lines }
    }

    /// Lines until one satisfies `want` (bounded); all of them.
    fn until(&self, want: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = want(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("the stream never showed it; saw {seen:#?}"),
            }
        }
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn put(d: &Daemon, name: &str, value: &str) {
    d.client()
        .put(
            &common::class("config.setting"),
            Instance::from_pairs([
                ("name", Value::String(name.into())),
                ("type", Value::String("i64".into())),
                ("value", Value::String(value.into())),
            ]),
        )
        .unwrap();
}

#[test]
fn curl_reads_events_as_server_sent_events_with_filters_and_ids() {
    if !have_curl() {
        eprintln!("skipped: no curl");
        return;
    }
    let d = daemon("127.0.0.1:0", &[]);
    let addr = http_addr(&d);
    let url = format!("http://{addr}/v1/classes/config.setting/events?filter=name%3Dwanted");
    let curl = Curl::start(&url, &[]);
    curl.until(|l| l.starts_with(": subscribed to config.setting events"));
    put(&d, "other", "1");
    put(&d, "wanted", "42");
    let seen = curl.until(|l| l.starts_with("data:"));
    let text = seen.join("\n");
    assert!(seen.iter().any(|l| l == "event: event"), "{text}");
    assert!(seen.iter().any(|l| l == "id: 1"), "{text}");
    assert!(text.contains("wanted") && text.contains("42"), "{text}");
    assert!(
        !text.contains("other"),
        "the filter let another instance's event through: {text}"
    );

    // Reconnecting with Last-Event-ID: told first that events since may be missing.
    let again = Curl::start(&url, &["-H", "Last-Event-ID: 1"]);
    let seen = again.until(|l| l.starts_with("data:"));
    let text = seen.join("\n");
    assert!(seen.iter().any(|l| l == "event: lost"), "{text}");
    assert!(text.contains("\"after\":1"), "{text}");

    // A bad filter is a 400 naming it, before any stream.
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!(
            "http://{addr}/v1/classes/config.setting/events?colour=red"
        ))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.ends_with("\n400") && body.contains("unknown parameter"),
        "{body}"
    );
}

/// A CA and the daemon's certificate for 127.0.0.1, and `remote.toml` naming them.
fn https_files(dir: &Path) -> PathBuf {
    let pki = common::Pki::new("test CA");
    pki.write_ca(&dir.join("ca.crt"));
    pki.issue(dir, "server", "daemon", &["127.0.0.1"]);
    let config = dir.join("remote.toml");
    std::fs::write(
        &config,
        "[tls]\ncertificate = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n",
    )
    .unwrap();
    config
}

#[test]
fn the_gateway_serves_https_and_its_events_with_the_remote_certificate() {
    if !have_curl() {
        eprintln!("skipped: no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = https_files(dir.path());
    let d = daemon(
        "https://127.0.0.1:0",
        &["--remote-config", config.to_str().unwrap()],
    );
    let addr = http_addr(&d);
    let ca = dir.path().join("ca.crt");
    let out = Command::new("curl")
        .args(["-s", "--cacert", ca.to_str().unwrap()])
        .arg(format!("https://{addr}/healthz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{out:?}");
    // Plain HTTP to it is no answer.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{addr}/healthz"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let curl = Curl::start(
        &format!("https://{addr}/v1/classes/config.setting/events"),
        &["--cacert", ca.to_str().unwrap()],
    );
    curl.until(|l| l.starts_with(": subscribed"));
    put(&d, "x", "7");
    let seen = curl.until(|l| l.starts_with("data:"));
    assert!(seen.join("\n").contains("\"x\""), "{seen:#?}");
}

#[test]
fn an_http_callers_dialog_is_answered_through_the_api() {
    let lib = workspace_library("libpurveyor_dialogs.so", "purveyor-example-dialogs");
    let manifest = format!(
        "name = \"confirm\"\nhosting = \"isolated\"\nlibrary = {lib:?}\nclasses = [\"demo.vault\", \"demo.dialog_probe\"]\ncapabilities = [\"enumerate\", \"get\", \"call\"]\ncall_timeout = \"2s\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let http_toml = dir.path().join("http.toml");
    std::fs::write(
        &http_toml,
        format!(
            "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nuser = \"root\"\n",
            purveyor_gateway::auth::sha256_hex("s3cret")
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &[("confirm", manifest)],
        &[
            "--http",
            "127.0.0.1:0",
            "--http-config",
            http_toml.to_str().unwrap(),
        ],
        &[],
    );
    let addr = http_addr(&d);
    let auth = ("Authorization", "Bearer s3cret");
    let destroy = "/v1/classes/demo.vault/methods/destroy?name=photos";

    // Without `Prefer: respond-async` the caller has no UI, as before.
    let plain = common::http(
        "POST",
        addr,
        "/v1/classes/demo.vault/methods/destroy?name=taxes",
        &[auth],
        "",
    );
    assert!(plain.body.contains("no UI available"), "{}", plain.body);

    let opened = common::http(
        "POST",
        addr,
        destroy,
        &[auth, ("Prefer", "respond-async")],
        "",
    );
    assert_eq!(opened.status, 202, "{}", opened.body);
    let location = opened.header("location").expect("a Location").to_string();
    let body = opened.json();
    assert_eq!(body["call"]["href"], location.as_str());
    let dialog = &body["dialogs"][0];
    assert_eq!(dialog["form"]["title"], "Destroy vault photos?", "{body}");
    assert_eq!(dialog["provider"], "confirm");
    let href = dialog["href"].as_str().unwrap().to_string();

    // Someone else cannot see it.
    let stranger = common::http("GET", addr, &location, &[], "");
    assert_eq!(stranger.status, 404, "{}", stranger.body);

    // The user takes longer than the call's 2 s timeout: the deadline waits for them.
    std::thread::sleep(Duration::from_millis(2500));
    let answered = common::http(
        "POST",
        addr,
        &href,
        &[auth],
        r#"{"button": "destroy", "values": {"sure": {"bool": true}, "passphrase": {"string": "purveyor"}}}"#,
    );
    assert_eq!(answered.status, 204, "{}", answered.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let reply = common::http("GET", addr, &format!("{location}?wait=5s"), &[auth], "");
        if reply.status != 202 {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "the call never finished: {}",
            reply.body
        );
    };
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(
        done.json()["returned"]["string"],
        "destroyed photos (812 files)"
    );
    // Fetched once, then forgotten.
    assert_eq!(
        common::http("GET", addr, &location, &[auth], "").status,
        404
    );

    // By policy (`[calls] dialogs = false`, read again by a reload): no UI, as before.
    let text = std::fs::read_to_string(&http_toml).unwrap() + "[calls]\ndialogs = false\n";
    std::fs::write(&http_toml, text).unwrap();
    assert!(d.cli(&["reload"]).status.success(), "{}", d.log());
    let refused = common::http(
        "POST",
        addr,
        "/v1/classes/demo.vault/methods/destroy?name=taxes",
        &[auth, ("Prefer", "respond-async")],
        "",
    );
    assert!(refused.body.contains("no UI available"), "{}", refused.body);
}
