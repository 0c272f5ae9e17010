//! The HTTP gateway end to end: a real daemon with `--http`, the JSON API and its access
//! rules, `/metrics` and what a scrape may load, health and readiness; then the real
//! peers: `promtool check metrics` and a real Prometheus scraping the gateway (both from
//! Debian's `prometheus` package, installed by `.ci/run`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, HttpReply, http, http_addr, wait_until, workspace_library};
use purveyor_counters::{CounterSet, CounterType, Unit};

fn get(addr: SocketAddr, path: &str) -> HttpReply {
    http("GET", addr, path, &[], "")
}

fn demo_library() -> PathBuf {
    workspace_library("libpurveyor_example.so", "purveyor-example-provider")
}

/// The Rust example provider (`demo.greeting`, with a `greeted` counter), isolated, idle
/// after one second.
fn demo_manifest() -> (&'static str, String) {
    (
        "demo",
        format!(
            "name = \"demo\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"demo.greeting\"]\ncapabilities = [\"enumerate\", \"get\"]\nclear_after = \"1s\"\n",
            demo_library().display().to_string()
        ),
    )
}

fn sha256(text: &str) -> String {
    purveyor_gateway::auth::sha256_hex(text)
}

/// A daemon with the gateway on a free loopback port, `files` written into its directory
/// first (`http.toml`, `access.toml`), `args` added.
fn start(
    manifests: &[(&str, String)],
    files: &[(&str, String)],
    args: &[&str],
    counters: &Path,
) -> (Daemon, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<String> = vec!["--http".into(), "127.0.0.1:0".into()];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let flag = match *name {
            "http.toml" => "--http-config",
            "access.toml" => "--access",
            other => panic!("unknown file {other}"),
        };
        all.push(flag.into());
        all.push(path.display().to_string());
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = all.iter().map(String::as_str).collect();
    let daemon = Daemon::start(
        manifests,
        &args,
        &[("PURVEYOR_COUNTERS", counters.as_os_str())],
    );
    // The files are read at start-up; the directory may go.
    let addr = http_addr(&daemon);
    drop(dir);
    (daemon, addr)
}

fn shop(counters: &Path) -> CounterSet {
    CounterSet::builder("shop")
        .help("A shop")
        .counter("sales", CounterType::Counter, Unit::Count, "sales made")
        .counter("queue", CounterType::Raw, Unit::Count, "customers waiting")
        .counter(
            "latency",
            CounterType::Average,
            Unit::Microseconds,
            "per sale",
        )
        .instances(4)
        .create_in(counters)
        .unwrap()
}

#[test]
fn json_api_reads_anonymously_and_writes_only_with_a_token() {
    let counters = tempfile::tempdir().unwrap();
    let config = format!(
        "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nuser = \"root\"\n\n[[token]]\nname = \"viewer\"\nsha256 = \"{}\"\nuser = \"root\"\nread_only = true\n\n[[token]]\nname = \"guest\"\nsha256 = \"{}\"\nuser = \"nobody\"\n",
        sha256("ops-secret"),
        sha256("viewer-secret"),
        sha256("guest-secret")
    );
    let config_library = workspace_library("libpurveyor_config.so", "purveyor-example-config");
    let manifest = (
        "config",
        format!(
            "name = \"config\"\nhosting = \"in-daemon\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\"]\n",
            config_library.display().to_string()
        ),
    );
    let (_daemon, addr) = start(&[manifest], &[("http.toml", config)], &[], counters.path());

    // Reads: the same answers as the socket, as JSON.
    let cpu = get(addr, "/v1/classes/system.cpu/instances?cpu=total");
    assert_eq!(cpu.status, 200, "{}", cpu.body);
    assert_eq!(cpu.header("content-type"), Some("application/json"));
    let cpu = cpu.json();
    assert_eq!(cpu["class"], "system.cpu");
    assert_eq!(cpu["instances"][0]["cpu"]["string"], "total");
    assert!(cpu["instances"][0]["user"]["f64"].as_f64().unwrap() > 0.0);
    let classes = get(addr, "/v1/classes?namespace=system").json();
    assert!(
        classes["classes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "system.memory")
    );
    let schema = get(addr, "/v1/classes/system.memory").json();
    assert_eq!(schema["path"], "system.memory");
    assert_eq!(get(addr, "/v1/status").json()["mode"], "daemon");
    // A query, by URL and by body; each class it reads is checked as the caller.
    let rows = get(
        addr,
        "/v1/query?sql=SELECT%20count(*)%20AS%20n%20FROM%20system.cpu%20WHERE%20cpu%20%3D%20'total'&plan=true",
    );
    assert_eq!(rows.status, 200, "{}", rows.body);
    let rows = rows.json();
    assert_eq!(rows["rows"][0][0]["i64"], 1, "{rows}");
    assert_eq!(
        rows["plan"][0], "system.cpu: get cpu=\"total\" → 1 instance",
        "{rows}"
    );
    let posted = http(
        "POST",
        addr,
        "/v1/query",
        &[("content-type", "application/json")],
        r#"{"sql": "SELECT name FROM config.setting"}"#,
    );
    assert_eq!(posted.status, 403, "{}", posted.body);
    assert_eq!(posted.json()["error"]["code"], "access_denied");
    assert!(get(addr, "/v1/providers").json().as_array().unwrap().len() >= 3);

    // Errors carry the host's code and message, with the matching HTTP status.
    let bad = get(addr, "/v1/classes/system.cpu/instances?colour=red");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "invalid_request");
    assert!(bad.body.contains("colour"), "{}", bad.body);
    let missing = get(addr, "/v1/classes/system.nothing");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(get(addr, "/nowhere").status, 404);
    // Anonymous is the nobody user: the config namespace is the daemon owner's only.
    let private = get(addr, "/v1/classes/config.setting/instances");
    assert_eq!(private.status, 403, "{}", private.body);
    assert!(
        private.body.contains("lacks the read permission"),
        "{}",
        private.body
    );

    // Writes: anonymous gets 401 with a Bearer challenge, a read-only token 403, an
    // unknown token 401; the ops token (acting as root) may.
    let setting = r#"{"name": {"string": "colour"}, "type": {"string": "string"}, "value": {"string": "blue"}}"#;
    let put = |auth: Option<&str>| {
        let header = auth.map(|a| format!("Bearer {a}"));
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("Authorization", h)])
            .unwrap_or_default();
        http(
            "PUT",
            addr,
            "/v1/classes/config.setting/instances",
            &headers,
            setting,
        )
    };
    let anonymous = put(None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert!(anonymous.body.contains("needs a bearer token"));
    assert_eq!(put(Some("viewer-secret")).status, 403);
    assert_eq!(put(Some("guess")).status, 401);
    // A token grants what the access policy gives its user: nobody may not write config.
    let guest = put(Some("guest-secret"));
    assert_eq!(guest.status, 403, "{}", guest.body);
    assert!(
        guest
            .body
            .contains("lacks the write permission on config.setting"),
        "{}",
        guest.body
    );
    let ops = put(Some("ops-secret"));
    assert_eq!(ops.status, 204, "{}", ops.body);
    let auth = [("Authorization", "Bearer ops-secret")];
    let read = http(
        "GET",
        addr,
        "/v1/classes/config.setting/instances?name=colour",
        &auth,
        "",
    );
    assert_eq!(read.json()["instances"][0]["value"]["string"], "blue");
    let call = http(
        "POST",
        addr,
        "/v1/classes/config.setting/methods/rename?name=colour",
        &auth,
        r#"{"to": {"string": "color"}}"#,
    );
    assert_eq!(call.status, 200, "{}", call.body);
    let gone = http(
        "DELETE",
        addr,
        "/v1/classes/config.setting/instances?name=color",
        &auth,
        "",
    );
    assert_eq!(gone.status, 204, "{}", gone.body);
    let after = http(
        "GET",
        addr,
        "/v1/classes/config.setting/instances",
        &auth,
        "",
    )
    .json();
    assert_eq!(after["instances"].as_array().unwrap().len(), 0, "{after}");
    let malformed = http(
        "PUT",
        addr,
        "/v1/classes/config.setting/instances",
        &auth,
        "{",
    );
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("the body is not an instance"),
        "{}",
        malformed.body
    );
}

#[test]
fn metrics_health_and_readiness() {
    let counters = tempfile::tempdir().unwrap();
    let set = shop(counters.path());
    let till = set.instance("till \"1\"").unwrap();
    till.counter("sales").unwrap().add(41);
    till.average("latency").unwrap().observe(2_000);
    let (_daemon, addr) = start(&[], &[], &[], counters.path());

    assert_eq!(get(addr, "/healthz").body, "ok\n");
    let ready = get(addr, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    let text = get(addr, "/metrics");
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = &text.body;
    for line in [
        "# TYPE app_shop_sales_total counter",
        "app_shop_sales_total{exported_instance=\"till \\\"1\\\"\"} 41",
        "# TYPE app_shop_queue gauge",
        "# TYPE app_shop_latency_seconds gauge",
        "app_shop_latency_seconds{exported_instance=\"till \\\"1\\\"\"} 0.002",
        "# TYPE system_cpu_user_seconds_total counter",
        "# TYPE system_memory_total_bytes gauge",
        "# TYPE purveyor_host_requests_total counter",
    ] {
        assert!(body.contains(line), "missing {line:?} in:\n{body}");
    }
    assert!(body.contains("system_cpu_user_seconds_total{cpu=\"total\"} "));

    let open = http(
        "GET",
        addr,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        "",
    );
    assert!(
        open.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for line in [
        "# TYPE app_shop_sales counter",
        "app_shop_sales_total{exported_instance=\"till \\\"1\\\"\"} 41",
        "# UNIT system_memory_total_bytes bytes",
    ] {
        assert!(
            open.body.contains(line),
            "missing {line:?} in:\n{}",
            open.body
        );
    }
    assert!(open.body.ends_with("# EOF\n"));
}

/// A scrape reads providers that are loaded, never loads an idle one unless the
/// configuration names its namespace, and does not keep one loaded.
#[test]
fn scrapes_do_not_load_or_keep_idle_providers() {
    let counters = tempfile::tempdir().unwrap();
    let access = "[namespace.demo]\nread = [\"@local\"]\n".to_string();
    let config = "[metrics]\nexport = [\"system\", \"demo\"]\n".to_string();
    let (daemon, addr) = start(
        &[demo_manifest()],
        &[("access.toml", access.clone()), ("http.toml", config)],
        &[],
        counters.path(),
    );
    let greeted = "demo_greeting_greeted_total{name=\"world\"}";
    let scrape = || get(addr, "/metrics").body;
    assert!(!scrape().contains(greeted));
    assert_eq!(daemon.status("demo").state.to_string(), "registered");

    // Loaded by a client: scraped while it stays loaded.
    let demo = get(addr, "/v1/classes/demo.greeting/instances");
    assert_eq!(demo.status, 200, "{}", demo.body);
    assert!(scrape().contains(greeted));
    // Scraping every 100 ms does not keep it: it is released after its 1 s idle time.
    wait_until(
        "the idle provider to be released",
        Duration::from_secs(15),
        || {
            let _ = scrape();
            std::thread::sleep(Duration::from_millis(100));
            daemon.status("demo").state.to_string() == "registered"
        },
    );
    assert!(!scrape().contains(greeted));
    drop(daemon);

    // `metrics.load` names the namespace: a scrape loads it.
    let config = "[metrics]\nexport = [\"demo\"]\nload = [\"demo\"]\n".to_string();
    let (daemon, addr) = start(
        &[demo_manifest()],
        &[("access.toml", access), ("http.toml", config)],
        &[],
        counters.path(),
    );
    let body = get(addr, "/metrics").body;
    assert!(body.contains(greeted), "{body}");
    assert!(!body.contains("system_"), "only demo is exported: {body}");
    drop(daemon);
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
#[ignore = "needs promtool from Debian's prometheus package; .ci/run installs it"]
fn promtool_accepts_a_scrape() {
    assert!(have("promtool"), "promtool is not installed");
    let counters = tempfile::tempdir().unwrap();
    let set = shop(counters.path());
    // The instance lives as long as its handle.
    let till = set.instance("till1").unwrap();
    till.counter("sales").unwrap().add(1);
    let (_daemon, addr) = start(&[], &[], &[], counters.path());
    let scrape = get(addr, "/metrics").body;
    assert!(scrape.contains("app_shop_sales_total"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: purveyor\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_until("Prometheus to be ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok() && get(addr, "/-/ready").status == 200
        });
        prometheus
    }

    /// The result vector of an instant query.
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let reply = get(self.addr, &path).json();
        assert_eq!(reply["status"], "success", "{query}: {reply}");
        reply["data"]["result"].as_array().unwrap().clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

/// Percent-encodes a query for a URL.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
#[ignore = "needs Debian's prometheus package; .ci/run installs it"]
fn a_real_prometheus_scrapes_the_gateway() {
    assert!(have("prometheus"), "prometheus is not installed");
    let counters = tempfile::tempdir().unwrap();
    let set = shop(counters.path());
    let sales = set.instance("till1").unwrap();
    let (_daemon, addr) = start(&[], &[], &[], counters.path());
    let prometheus = Prometheus::start(addr);

    // Sales go on while Prometheus scrapes every second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let selling = {
        let stop = stop.clone();
        let counter = sales.counter("sales").unwrap();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                counter.add(10);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut rate = Vec::new();
    wait_until(
        "Prometheus to compute a sales rate",
        Duration::from_secs(60),
        || {
            rate = prometheus.query("rate(app_shop_sales_total[10s])");
            rate.first()
                .and_then(|r| r["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    selling.join().unwrap();
    let sample = &rate[0]["metric"];
    assert_eq!(sample["exported_instance"], "till1", "{sample}");
    assert_eq!(sample["job"], "purveyor");
    assert_eq!(sample["instance"], addr.to_string());
    // 10 sales per 50 ms: about 200 a second (the thread sleeps at least 50 ms).
    let per_second: f64 = rate[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((20.0..=250.0).contains(&per_second), "rate {per_second}");

    // The system provider arrived, labelled by its keys.
    let cpu = prometheus.query("system_cpu_user_seconds_total{cpu=\"total\"}");
    assert_eq!(cpu.len(), 1, "{cpu:?}\n{}", prometheus.log());

    // Types as Prometheus recorded them from the scrape.
    let metadata = get(
        prometheus.addr,
        "/api/v1/targets/metadata?match_target=%7Bjob%3D%22purveyor%22%7D",
    )
    .json();
    let kind = |metric: &str| {
        metadata["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == metric)
            .map(|m| m["type"].as_str().unwrap().to_string())
    };
    assert_eq!(
        kind("app_shop_sales").as_deref(),
        Some("counter"),
        "{metadata}"
    );
    assert_eq!(kind("app_shop_queue").as_deref(), Some("gauge"));
    assert_eq!(kind("system_cpu_user_seconds").as_deref(), Some("counter"));
    assert_eq!(kind("system_memory_total_bytes").as_deref(), Some("gauge"));
}

/// `purveyor reload` re-reads `http.toml`: a class excluded afterwards leaves `/metrics`;
/// a broken file is refused with its line and the file in force keeps serving.
#[test]
fn a_reload_rereads_http_toml() {
    let counters = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("http.toml");
    std::fs::write(&config, "[metrics]\nexport = [\"system\"]\n").unwrap();
    let daemon = Daemon::start(
        &[],
        &[
            "--http",
            "127.0.0.1:0",
            "--http-config",
            config.to_str().unwrap(),
        ],
        &[("PURVEYOR_COUNTERS", counters.path().as_os_str())],
    );
    let addr = http_addr(&daemon);
    let memory = "# TYPE system_memory_total_bytes gauge";
    assert!(get(addr, "/metrics").body.contains(memory));

    std::fs::write(
        &config,
        "[metrics]\nexport = [\"system\"]\nexclude = [\"system.memory\"]\n",
    )
    .unwrap();
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(config.to_str().unwrap()), "{said}");
    assert!(!get(addr, "/metrics").body.contains(memory));

    std::fs::write(&config, "[metrics]\nexprot = []\n").unwrap();
    let out = daemon.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.toml:2"), "{err}");
    let body = get(addr, "/metrics").body;
    assert!(
        !body.contains(memory),
        "the file in force still excludes it"
    );
    assert!(body.contains("system_cpu_user_seconds_total"), "{body}");
}
