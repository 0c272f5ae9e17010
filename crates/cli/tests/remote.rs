//! Remote clients for real (`docs/remote.md`): the daemon and the client in two network
//! namespaces joined by a veth pair, each with its own temp directory, so nothing local
//! (the socket, peer credentials, files) crosses — only TLS on TCP. Certificates are made
//! by the test (rcgen). Needs root and `ip` (iproute2): skipped without root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;

const DAEMON_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
const PORT: &str = "7443";

/// Two network namespaces, `d` (the daemon's) and `c` (the client's), joined by a veth
/// pair; deleted (and with them the pair) when dropped.
struct Net {
    d: String,
    c: String,
    veth_d: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) is needed: .ci/run installs it");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new() -> Net {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            d: format!("pvd{tag}"),
            c: format!("pvc{tag}"),
            veth_d: format!("vd{tag}"),
        };
        let veth_c = format!("vc{tag}");
        ip(&["netns", "add", &net.d]);
        ip(&["netns", "add", &net.c]);
        ip(&[
            "link",
            "add",
            &net.veth_d,
            "type",
            "veth",
            "peer",
            "name",
            &veth_c,
        ]);
        ip(&["link", "set", &net.veth_d, "netns", &net.d]);
        ip(&["link", "set", &veth_c, "netns", &net.c]);
        for (ns, dev, addr) in [
            (&net.d, &net.veth_d, DAEMON_IP),
            (&net.c, &veth_c, CLIENT_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Cuts the cable: the daemon's end goes down (and with it the pair's carrier).
    fn cut(&self) {
        ip(&["-n", &self.d, "link", "set", &self.veth_d, "down"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.d, &self.c] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The daemon in its namespace with `manifests`, listening for TLS on `DAEMON_IP`, its
/// `remote.toml` mapping certificate `operator` to root; and the client side's directory
/// with the CA and the certificates of `operator` and `nobody`.
struct Remote {
    daemon: Daemon,
    client_dir: tempfile::TempDir,
    pki: Pki,
    net: Net,
}

fn remote(manifests: &[(&str, String)]) -> Remote {
    let net = Net::new();
    let pki = Pki::new("test CA");
    let server = tempfile::tempdir().unwrap();
    pki.issue(server.path(), "server", "daemon", &[DAEMON_IP]);
    pki.write_ca(&server.path().join("clients-ca.crt"));
    let config = server.path().join("remote.toml");
    std::fs::write(
        &config,
        "[tls]\ncertificate = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"clients-ca.crt\"\n[users]\noperator = \"root\"\n[connections]\ndead_after = \"3s\"\n",
    )
    .unwrap();
    // Remote clients may read `config` (the built-in `@local` grants are not theirs).
    let access = server.path().join("access.toml");
    std::fs::write(
        &access,
        "[namespace.config]\nread = [\"@remote\", \"@local\"]\n",
    )
    .unwrap();
    let listen = format!("tls://{DAEMON_IP}:{PORT}");
    let daemon = Daemon::start_under(
        &["ip", "netns", "exec", &net.d],
        manifests,
        &[
            "--listen",
            &listen,
            "--remote-config",
            config.to_str().unwrap(),
            "--access",
            access.to_str().unwrap(),
        ],
        &[],
    );
    // The daemon's files stay with it: the client side never sees this directory.
    std::mem::forget(server);
    let client_dir = tempfile::tempdir().unwrap();
    pki.write_ca(&client_dir.path().join("ca.crt"));
    pki.issue(client_dir.path(), "operator", "operator", &[]);
    pki.issue(client_dir.path(), "nobody", "nobody", &[]);
    std::fs::write(
        client_dir.path().join("remote.toml"),
        "dead_after = \"3s\"\n",
    )
    .unwrap();
    wait_until("the TLS listener", Duration::from_secs(10), || {
        daemon
            .log()
            .contains("listening for remote clients over TLS")
    });
    Remote {
        daemon,
        client_dir,
        pki,
        net,
    }
}

impl Remote {
    /// `purveyor ARGS` in the client's namespace, as certificate `who` (or none), with
    /// nothing local: no daemon socket, a home of its own.
    fn command(&self, who: Option<&str>, args: &[&str]) -> Command {
        let dir = self.client_dir.path();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.net.c, BIN])
            .args(["--remote", &format!("{DAEMON_IP}:{PORT}")])
            .arg("--tls-ca")
            .arg(dir.join("ca.crt"));
        if let Some(who) = who {
            command
                .arg("--tls-cert")
                .arg(dir.join(format!("{who}.crt")))
                .arg("--tls-key")
                .arg(dir.join(format!("{who}.key")));
        }
        command
            .args(args)
            .env("HOME", dir)
            .env("PURVEYOR_SOCKET", dir.join("no-daemon-here.sock"))
            .env("PURVEYOR_REMOTE_CONFIG", dir.join("remote.toml"))
            .env_remove("PURVEYOR_REMOTE")
            .stdin(Stdio::null());
        command
    }

    /// A Rust client's settings for the `operator` certificate, finding the daemon dead
    /// after `dead_after`.
    fn operator(&self, dead_after: Duration) -> purveyor_client::RemoteSettings {
        let dir = self.client_dir.path();
        purveyor_client::RemoteSettings {
            address: purveyor_client::RemoteAddress::parse(&format!("{DAEMON_IP}:{PORT}")).unwrap(),
            ca: dir.join("ca.crt"),
            certificate: Some(dir.join("operator.crt")),
            key: Some(dir.join("operator.key")),
            dead_after,
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn run(&self, who: Option<&str>, args: &[&str]) -> Output {
        self.command(who, args).output().unwrap()
    }

    /// The command line for a tmux pane.
    fn shell(&self, who: &str, args: &str) -> String {
        let dir = self.client_dir.path().display();
        format!(
            "HOME={dir} PURVEYOR_SOCKET={dir}/none.sock PURVEYOR_REMOTE_CONFIG={dir}/remote.toml ip netns exec {} {BIN} --remote {DAEMON_IP}:{PORT} --tls-ca {dir}/ca.crt --tls-cert {dir}/{who}.crt --tls-key {dir}/{who}.key {args}",
            self.net.c
        )
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

fn config_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| workspace_library("libpurveyor_config.so", "purveyor-example-config"))
}

fn config_manifest() -> (&'static str, String) {
    (
        "config",
        format!(
            "name = \"config\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\", \"subscribe\"]\n",
            config_library().display().to_string()
        ),
    )
}

#[test]
fn reads_writes_calls_events_and_streams_cross_the_network_as_the_certificates_user() {
    if !root_or_skip("network namespaces need root") {
        return;
    }
    let r = remote(&[config_manifest()]);
    let status = ok(&r.run(Some("operator"), &["status"]));
    assert!(
        status.contains(&format!(
            "daemon at tls://{DAEMON_IP}:{PORT} (remote, over TLS)"
        )),
        "{status}"
    );
    for (name, value) in [("a", "10"), ("b", "0")] {
        let name = format!("name={name}");
        let value = format!("value={value}");
        ok(&r.run(
            Some("operator"),
            &["set", "config.setting", &name, "type=i64", &value],
        ));
    }
    // A subscriber in the client's namespace sees the next write's event.
    let said = r.client_dir.path().join("events.err");
    let events = r
        .command(
            Some("operator"),
            &[
                "events",
                "config.setting",
                "--timeout",
                "20s",
                "--count",
                "1",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(events.id());
    let subscribed = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&said)
            .unwrap_or_default()
            .contains("subscribed to config.setting")
    });
    assert!(
        subscribed,
        "{}",
        std::fs::read_to_string(&said).unwrap_or_default()
    );
    ok(&r.run(
        Some("operator"),
        &[
            "call",
            "config.setting.transfer",
            "name=a",
            "to=b",
            "amount=3",
        ],
    ));
    let out = events.wait_with_output().unwrap();
    let seen = ok(&out);
    assert!(
        seen.contains("name=a") || seen.contains("name=b") || seen.contains("transfer"),
        "{seen}"
    );
    let got = ok(&r.run(
        Some("operator"),
        &["get", "config.setting", "name=b", "--json"],
    ));
    assert!(got.contains("\"3\""), "{got}");
    // Queries and the providers' status, remotely.
    let rows = ok(&r.run(
        Some("operator"),
        &[
            "query",
            "SELECT name, value FROM config.setting WHERE name = 'b'",
            "--json",
        ],
    ));
    assert!(rows.contains("\"3\""), "{rows}");
    let providers = ok(&r.run(Some("operator"), &["providers", "--json"]));
    assert!(providers.contains("\"config\""), "{providers}");
    // The policy applies to the certificate's user: nobody reads but may not write.
    let got = ok(&r.run(
        Some("nobody"),
        &["get", "config.setting", "name=a", "--json"],
    ));
    assert!(got.contains("\"7\""), "{got}");
    let refused = err(
        &r.run(
            Some("nobody"),
            &["set", "config.setting", "name=a", "value=1"],
        ),
        4,
    );
    assert!(
        refused.contains("lacks the write permission on config.setting"),
        "{refused}"
    );
    assert!(
        refused.contains("uid 65534") || refused.contains("65534"),
        "{refused}"
    );
    let refused = err(&r.run(Some("nobody"), &["reload"]), 4);
    assert!(!refused.is_empty());
    // `@local` grants (the system namespace's reads) are not for remote clients.
    let refused = err(&r.run(Some("nobody"), &["get", "system.load"]), 4);
    assert!(refused.contains("by built-in default"), "{refused}");
    // A stream's data comes through the connection (no descriptor crosses machines),
    // read with the remote user's rights.
    let file = r.daemon.dir.path().join("hello.txt");
    std::fs::write(&file, "read over TLS\n").unwrap();
    let cat = ok(&r.run(Some("operator"), &["cat", file.to_str().unwrap()]));
    assert_eq!(cat, "read over TLS\n");
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill signals a child this test started (gone already, or not).
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn a_client_without_a_certificate_or_with_a_strangers_is_refused_at_the_handshake() {
    if !root_or_skip("network namespaces need root") {
        return;
    }
    let r = remote(&[]);
    let none = r.run(None, &["get", "purveyor.host"]);
    let stderr = err(&none, 4);
    assert!(stderr.contains("requires a client certificate"), "{stderr}");
    let stranger = Pki::new("another CA");
    stranger.issue(r.client_dir.path(), "stranger", "operator", &[]);
    let out = r.run(Some("stranger"), &["get", "purveyor.host"]);
    let stderr = err(&out, 4);
    assert!(
        stderr.contains("refused this client's certificate"),
        "{stderr}"
    );
    // A certificate of the right CA whose name is no local user.
    r.pki
        .issue(r.client_dir.path(), "ghost", "ghost-of-nobody", &[]);
    let out = r.run(Some("ghost"), &["get", "purveyor.host"]);
    let stderr = err(&out, 4);
    assert!(
        stderr.contains("\"ghost-of-nobody\"") && stderr.contains("does not exist here"),
        "{stderr}"
    );
    wait_until("the refusals counted", Duration::from_secs(5), || {
        let out = r.daemon.cli(&["get", "purveyor.host", "--json"]);
        let host: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        host["instances"][0]["remote_refused"].as_u64() == Some(3)
    });
    assert_eq!(
        r.daemon.log().matches("remote connection refused").count(),
        3
    );
}

#[test]
#[ignore = "needs tmux; .ci/run installs it and runs the ignored tests"]
fn dialogs_are_shown_on_the_remote_terminal_and_a_cut_network_ends_them_on_both_sides() {
    if !root_or_skip("network namespaces need root") {
        return;
    }
    let lib = workspace_library("libpurveyor_dialogs.so", "purveyor-example-dialogs");
    let manifest = |name: &str, classes: &str| {
        format!(
            "name = \"{name}\"\nhosting = \"isolated\"\nlibrary = {lib:?}\nclasses = [{classes}]\ncapabilities = [\"enumerate\", \"get\", \"call\"]\n"
        )
    };
    let r = remote(&[
        ("phone", manifest("phone", "\"phone.line\"")),
        (
            "confirm",
            manifest("confirm", "\"demo.vault\", \"demo.dialog_probe\""),
        ),
    ]);
    let dir = r.client_dir.path();

    // In-call: the remote terminal asks, and its answers finish the call.
    let call = Tmux::start(
        dir,
        "call",
        &format!(
            "{}; echo EXIT=$?; sleep 60",
            r.shell("operator", "call demo.vault.destroy name=photos")
        ),
    );
    call.destroy_photos();

    // Spontaneous: the remote user's agent gets the phone's dialog, dialled on the
    // daemon's machine by the same user (root, through the operator certificate).
    let agent = Tmux::start(dir, "agent", &r.shell("operator", "agent"));
    agent.wait_for("showing dialogs for uid 0");
    let out = r
        .daemon
        .cli(&["call", "phone.line.dial", "number=555-0100", "talk_ms=300"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait_for("[1] Talk  [2] Hang up");
    agent.keys(&["1", "Enter"]);
    agent.wait_for("555-0100 hung up. You may hang up now.");
    agent.keys(&["1", "Enter"]);
    agent.wait_for("closed: call ended");

    // The network is cut while a dialog is open: the provider is told the application
    // went away, and the remote terminal is told the connection was lost.
    let cut = Tmux::start(
        dir,
        "cut",
        &format!(
            "{}; echo EXIT=$?; sleep 60",
            r.shell("operator", "call demo.dialog_probe.ask")
        ),
    );
    cut.wait_for("Pick one");
    r.net.cut();
    let probe = || {
        let out = r.daemon.cli(&["get", "demo.dialog_probe", "--json"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(
        "the provider to hear the application went away",
        Duration::from_secs(20),
        || probe().contains("the application (uid 0) disconnected"),
    );
    cut.keys(&["1", "Enter"]);
    let screen = cut.wait_for("EXIT=");
    assert!(!screen.contains("EXIT=0"), "{screen}");
    assert!(
        screen.contains(&format!(
            "the connection to tls://{DAEMON_IP}:{PORT} was lost"
        )),
        "{screen}"
    );
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it makes stay
/// there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn a_lost_network_fails_the_requests_in_flight_and_names_them() {
    use purveyor_client::{Client, ConnectOptions, Push, Request, Target};
    use purveyor_model::{Identifier, Instance, InstanceKey};
    if !root_or_skip("network namespaces need root") {
        return;
    }
    let lib = workspace_library("libpurveyor_dialogs.so", "purveyor-example-dialogs");
    let r = remote(&[(
        "confirm",
        format!(
            "name = \"confirm\"\nhosting = \"isolated\"\nlibrary = {lib:?}\nclasses = [\"demo.vault\", \"demo.dialog_probe\"]\ncapabilities = [\"enumerate\", \"get\", \"call\"]\n"
        ),
    )]);
    let settings = r.operator(Duration::from_secs(3));
    let client_ns = r.net.c.clone();
    let settings_again = settings.clone();
    let (mut client, id) = in_netns(&client_ns, move || {
        let options = ConnectOptions::default()
            .target(Target::Remote(settings))
            .ui(true);
        let mut client = Client::connect(&options).unwrap();
        let id = client
            .send(Request::Call {
                class: common::class("demo.dialog_probe"),
                method: Identifier::new("ask").unwrap(),
                key: InstanceKey::new(),
                args: Instance::new(),
            })
            .unwrap();
        (client, id)
    });
    // The dialog is open: the call waits for an answer.
    match client.next_event(Some(Duration::from_secs(10))).unwrap() {
        Some((_, Push::DialogOpen { .. })) => {}
        other => panic!("expected the dialog, got {other:?}"),
    }
    assert_eq!(client.in_flight(), [id]);
    // A direct channel passes a socket: refused on a remote connection, saying why.
    let mut other = in_netns(&client_ns, {
        let settings = settings_again.clone();
        move || {
            Client::connect(&ConnectOptions::default().target(Target::Remote(settings))).unwrap()
        }
    });
    let refused = other
        .request(Request::Direct {
            class: common::class("demo.vault"),
        })
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("direct channels need a local Unix socket"),
        "{refused}"
    );
    r.net.cut();
    let started = std::time::Instant::now();
    let err = client.recv().unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "the connection to tls://{DAEMON_IP}:{PORT} was lost"
        )),
        "{err}"
    );
    // Within about dead_after (3 s), not TCP's default minutes.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.in_flight(), [id]);
}

#[test]
fn the_async_client_speaks_tls_itself_and_is_told_why_it_is_refused() {
    use purveyor_client::{AsyncClient, ConnectOptions, Target};
    if !root_or_skip("network namespaces need root") {
        return;
    }
    let r = remote(&[]);
    let settings = r.operator(Duration::from_secs(5));
    let (got, refused) = in_netns(&r.net.c.clone(), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let options = ConnectOptions::default().target(Target::Remote(settings.clone()));
            let c = AsyncClient::connect(&options).await.unwrap();
            let host = c
                .get(
                    &common::class("purveyor.host"),
                    &purveyor_model::InstanceKey::new(),
                )
                .await
                .unwrap();
            let mut anonymous = settings;
            anonymous.certificate = None;
            anonymous.key = None;
            let options = ConnectOptions::default().target(Target::Remote(anonymous));
            let refused = match AsyncClient::connect(&options).await {
                Ok(c) => c
                    .get(
                        &common::class("purveyor.host"),
                        &purveyor_model::InstanceKey::new(),
                    )
                    .await
                    .map(|_| ())
                    .unwrap_err(),
                Err(e) => e,
            };
            (host, refused.to_string())
        })
    });
    assert!(got.get("pid").is_some(), "{got:?}");
    assert!(
        refused.contains("requires a client certificate"),
        "{refused}"
    );
}
