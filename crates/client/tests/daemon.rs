//! The daemon end to end: started on a socket in a temp dir by each test, stopped by it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use purveyor_client::{AsyncClient, Client, ClientError, ConnectOptions, Encoding, Mode, Target};
use purveyor_host::{BuiltinProvider, Dispatch, Host, HostBuilder, HostConfig, server, socket};
use purveyor_model::{
    ClassPath, ClassSchema, Instance, InstanceKey, PropertyDef, Semantic, Unit, Value,
};
use purveyor_protocol::{ErrorCode, HostMode, ServerMessage};
use purveyor_provider::{CallContext, Provider, ProviderError};

/// A daemon on a temp socket. Dropping it stops the daemon and waits for it.
struct Daemon {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(make_host: impl FnOnce(&Path) -> Host + Send + 'static) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purveyor.sock");
        let listener = socket::bind(&path, 0o600).unwrap();
        let providers = dir.path().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let host = make_host(&providers);
                server::serve(listener, host, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        Daemon {
            path,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn standard() -> Daemon {
        Daemon::start(|dir| {
            purveyor_client::default_host(HostMode::Daemon, Some(vec![dir.join("none")]))
        })
    }

    fn with_test_providers() -> Daemon {
        Daemon::start(test_host)
    }

    fn client(&self) -> Client {
        self.client_with(Encoding::Binary)
    }

    fn client_with(&self, encoding: Encoding) -> Client {
        let options = ConnectOptions::default()
            .target(Target::Socket(self.path.clone()))
            .encoding(encoding);
        Client::connect(&options).unwrap()
    }

    /// A raw connection after a JSON-encoded handshake.
    fn raw(&self, encoding: &str) -> UnixStream {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello =
            format!(r#"{{"protocol":1,"minor":6,"encoding":"{encoding}","client":"raw-test"}}"#);
        write_frame(&mut s, hello.as_bytes());
        let welcome = read_frame(&mut s).unwrap();
        assert!(
            String::from_utf8_lossy(&welcome).contains("\"server\""),
            "{welcome:?}"
        );
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_frame(s: &mut UnixStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(payload)
}

fn goodbye_of(s: &mut UnixStream) -> purveyor_protocol::RemoteError {
    let payload = read_frame(s).expect("a goodbye frame");
    match serde_json::from_slice::<ServerMessage>(&payload).unwrap() {
        ServerMessage::Goodbye { error } => error,
        other => panic!("expected goodbye, got {other:?}"),
    }
}

fn class(path: &str) -> ClassPath {
    ClassPath::new(path).unwrap()
}

fn key(pairs: &[(&str, Value)]) -> InstanceKey {
    let mut k = InstanceKey::new();
    for (n, v) in pairs {
        k.insert(n.parse().unwrap(), v.clone());
    }
    k
}

// ----- test providers -----

const SLOW_MANIFEST: &str = r#"
name = "slow"
hosting = "builtin"
builtin = "slow"
classes = ["test.slow"]
call_timeout = "500ms"
"#;

const FAULTY_MANIFEST: &str = r#"
name = "faulty"
hosting = "builtin"
builtin = "faulty"
classes = ["test.panics", "test.lies"]
"#;

const BROKEN_MANIFEST: &str = r#"
name = "broken"
hosting = "builtin"
builtin = "broken"
classes = ["test.broken"]
"#;

/// `test.slow`: get `ms=N` sleeps N milliseconds, then answers `{ms: N}`.
struct Slow;

impl Provider for Slow {
    fn classes(&self) -> Vec<ClassSchema> {
        vec![
            ClassSchema::new(
                class("test.slow"),
                "sleeps",
                vec![
                    PropertyDef::new("ms", "u64", Unit::Milliseconds, Semantic::Key, ""),
                    PropertyDef::new("label", "string", Unit::None, Semantic::Discrete, ""),
                ],
                vec![],
                vec![],
            )
            .unwrap(),
        ]
    }

    fn enumerate(&self, _: &ClassPath, _: &CallContext) -> Result<Vec<Instance>, ProviderError> {
        Ok(vec![Instance::from_pairs([
            ("ms", Value::U64(0)),
            ("label", Value::String("zero".into())),
        ])])
    }

    fn get(
        &self,
        _: &ClassPath,
        key: &InstanceKey,
        _: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        let Some(Value::U64(ms)) = key.get("ms") else {
            return Err(ProviderError::InvalidArgument("ms".into()));
        };
        std::thread::sleep(Duration::from_millis(*ms));
        Ok(Some(Instance::from_pairs([
            ("ms", Value::U64(*ms)),
            ("label", Value::String(format!("slept {ms}"))),
        ])))
    }
}

/// `test.panics` panics; `test.lies` returns a string where its schema says u64.
struct Faulty;

impl Provider for Faulty {
    fn classes(&self) -> Vec<ClassSchema> {
        ["test.panics", "test.lies"]
            .iter()
            .map(|c| {
                ClassSchema::new(
                    class(c),
                    "",
                    vec![PropertyDef::new(
                        "n",
                        "u64",
                        Unit::Count,
                        Semantic::Gauge,
                        "",
                    )],
                    vec![],
                    vec![],
                )
                .unwrap()
            })
            .collect()
    }

    fn enumerate(&self, c: &ClassPath, _: &CallContext) -> Result<Vec<Instance>, ProviderError> {
        if c.as_str() == "test.panics" {
            panic!("deliberate test panic");
        }
        Ok(vec![Instance::from_pairs([(
            "n",
            Value::String("not a number".into()),
        )])])
    }
}

fn test_host(dir: &Path) -> Host {
    let loads = Arc::new(AtomicU32::new(0));
    test_host_counting(dir, loads)
}

fn test_host_counting(dir: &Path, slow_loads: Arc<AtomicU32>) -> Host {
    let config = HostConfig::with_dirs(HostMode::Daemon, vec![dir.join("none")]);
    HostBuilder::new(config)
        .builtin(BuiltinProvider::new(
            "slow",
            SLOW_MANIFEST,
            Dispatch::Blocking,
            move || {
                slow_loads.fetch_add(1, Ordering::SeqCst);
                // A slow load, so concurrent first requests overlap it.
                std::thread::sleep(Duration::from_millis(150));
                Ok(Slow)
            },
        ))
        .builtin(BuiltinProvider::new(
            "faulty",
            FAULTY_MANIFEST,
            Dispatch::Inline,
            || Ok(Faulty),
        ))
        .builtin(BuiltinProvider::new(
            "broken",
            BROKEN_MANIFEST,
            Dispatch::Blocking,
            || {
                Err::<Slow, _>(ProviderError::Failed(
                    "the database at /nonexistent is unreachable".into(),
                ))
            },
        ))
        .build()
}

// ----- tests -----

#[test]
fn query_through_the_client() {
    let daemon = Daemon::standard();
    let mut client = daemon.client();
    assert_eq!(
        client.mode(),
        &Mode::Daemon {
            socket: daemon.path.clone()
        }
    );
    client.ping().unwrap();
    let load = client
        .get(&class("system.load"), &InstanceKey::new())
        .unwrap();
    assert!(matches!(load.get("load1"), Some(Value::F64(v)) if *v >= 0.0));
    let me = client
        .get(
            &class("system.process"),
            &key(&[("pid", Value::U64(std::process::id().into()))]),
        )
        .unwrap();
    assert_eq!(me.get("pid"), Some(&Value::U64(std::process::id().into())));
    let status = client.status().unwrap();
    assert_eq!(status.mode, HostMode::Daemon);
    assert!(status.connections_open >= 1);
    let providers = client.providers().unwrap();
    let system = providers
        .iter()
        .find(|p| p.name.as_str() == "system")
        .unwrap();
    assert_eq!(system.state, purveyor_model::ProviderState::Loaded);
    assert!(system.calls >= 2);
}

#[test]
fn errors_are_matchable() {
    let daemon = Daemon::with_test_providers();
    let mut client = daemon.client();
    match client.get(&class("nope.nothing"), &InstanceKey::new()) {
        Err(ClientError::NotFound { message }) => {
            assert_eq!(message, "no provider serves class nope.nothing")
        }
        other => panic!("{other:?}"),
    }
    match client.get(
        &class("test.slow"),
        &key(&[("label", Value::String("x".into()))]),
    ) {
        Err(ClientError::InvalidRequest { message }) => {
            assert_eq!(
                message,
                "test.slow is keyed by ms: give exactly those properties (got label=x)"
            )
        }
        other => panic!("{other:?}"),
    }
    match client.enumerate(&class("test.panics"), &InstanceKey::new()) {
        Err(ClientError::ProviderFailed { provider, message }) => {
            assert_eq!(provider.as_deref(), Some("faulty"));
            assert_eq!(message, "provider faulty panicked: deliberate test panic");
        }
        other => panic!("{other:?}"),
    }
    match client.enumerate(&class("test.lies"), &InstanceKey::new()) {
        Err(ClientError::ProviderFailed { provider, message }) => {
            assert_eq!(provider.as_deref(), Some("faulty"));
            assert_eq!(
                message,
                "provider faulty returned a bad instance: property \"n\" of test.lies has type string but the schema says u64"
            );
        }
        other => panic!("{other:?}"),
    }
    match client.get(&class("test.slow"), &key(&[("ms", Value::U64(3000))])) {
        Err(ClientError::Timeout { provider, message }) => {
            assert_eq!(provider.as_deref(), Some("slow"));
            assert_eq!(message, "provider slow did not answer within 500ms");
        }
        other => panic!("{other:?}"),
    }
    match client.enumerate(&class("test.broken"), &InstanceKey::new()) {
        Err(ClientError::ProviderFailed { provider, message }) => {
            assert_eq!(provider.as_deref(), Some("broken"));
            assert!(
                message.starts_with(
                    "provider broken failed to load: the database at /nonexistent is unreachable (next attempt in "
                ),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Within the back-off, the error says when the next attempt is.
    match client.enumerate(&class("test.broken"), &InstanceKey::new()) {
        Err(ClientError::ProviderFailed { message, .. }) => {
            assert!(
                message.contains("unreachable (next attempt in "),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // After all of that, the daemon still serves.
    let ok = client
        .get(&class("test.slow"), &key(&[("ms", Value::U64(0))]))
        .unwrap();
    assert_eq!(ok.get("label"), Some(&Value::String("slept 0".into())));
    let providers = client.providers().unwrap();
    let broken = providers
        .iter()
        .find(|p| p.name.as_str() == "broken")
        .unwrap();
    assert_eq!(broken.state, purveyor_model::ProviderState::Failed);
    // One panicking and one lying call: each counted once, as a call and as an error.
    let faulty = providers
        .iter()
        .find(|p| p.name.as_str() == "faulty")
        .unwrap();
    assert_eq!((faulty.calls, faulty.errors), (2, 2));
    assert!(
        broken
            .last_error
            .as_deref()
            .unwrap()
            .contains("unreachable")
    );
}

#[test]
fn pipelined_requests_are_answered_out_of_order() {
    let daemon = Daemon::with_test_providers();
    let mut client = daemon.client();
    // Load the provider first so both requests run concurrently.
    client
        .get(&class("test.slow"), &key(&[("ms", Value::U64(0))]))
        .unwrap();
    let slow = client
        .send(purveyor_protocol::Request::Get {
            class: class("test.slow"),
            key: key(&[("ms", Value::U64(300))]),
        })
        .unwrap();
    let fast = client
        .send(purveyor_protocol::Request::Get {
            class: class("test.slow"),
            key: key(&[("ms", Value::U64(1))]),
        })
        .unwrap();
    let (first, _) = client.recv().unwrap();
    let (second, reply) = client.recv().unwrap();
    assert_eq!(
        (first, second),
        (fast, slow),
        "the fast reply must overtake the slow one"
    );
    assert!(reply.is_ok());
}

#[test]
fn concurrent_first_requests_cause_one_load() {
    let loads = Arc::new(AtomicU32::new(0));
    let counted = loads.clone();
    let daemon = Daemon::start(move |dir| test_host_counting(dir, counted));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = ConnectOptions::default().target(Target::Socket(daemon.path.clone()));
        let client = Arc::new(AsyncClient::connect(&options).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .get(&class("test.slow"), &key(&[("ms", Value::U64(i % 3))]))
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let providers = daemon.client().providers().unwrap();
    let slow = providers
        .iter()
        .find(|p| p.name.as_str() == "slow")
        .unwrap();
    assert_eq!(slow.loads, 1);
    assert_eq!(slow.calls, 16);
}

fn assert_daemon_still_serves(daemon: &Daemon) {
    let mut other = daemon.client();
    let load = other
        .get(&class("test.slow"), &key(&[("ms", Value::U64(0))]))
        .unwrap();
    assert_eq!(load.get("ms"), Some(&Value::U64(0)));
}

#[test]
fn garbage_frame_gets_an_error_frame_and_others_are_served() {
    let daemon = Daemon::with_test_providers();
    let mut s = daemon.raw("binary");
    write_frame(&mut s, &[0xff, 0xfe, 0xfd, 0x00, 0x13]);
    let error = goodbye_of_binary(&mut s);
    assert_eq!(error.code, ErrorCode::Protocol);
    assert!(
        error
            .message
            .starts_with("malformed binary payload (5 bytes)"),
        "{}",
        error.message
    );
    assert!(
        read_frame(&mut s).is_none(),
        "the connection is closed after the goodbye"
    );
    assert_daemon_still_serves(&daemon);

    let mut s = daemon.raw("json");
    write_frame(&mut s, b"{\"request\": 42}");
    let error = goodbye_of(&mut s);
    assert_eq!(error.code, ErrorCode::Protocol);
    assert!(
        error.message.starts_with("malformed JSON payload"),
        "{}",
        error.message
    );
    assert_daemon_still_serves(&daemon);
}

fn goodbye_of_binary(s: &mut UnixStream) -> purveyor_protocol::RemoteError {
    let payload = read_frame(s).expect("a goodbye frame");
    match purveyor_protocol::decode::<ServerMessage>(Encoding::Binary, &payload).unwrap() {
        ServerMessage::Goodbye { error } => error,
        other => panic!("expected goodbye, got {other:?}"),
    }
}

#[test]
fn oversized_frame_gets_an_error_frame_and_others_are_served() {
    let daemon = Daemon::with_test_providers();
    let mut s = daemon.raw("json");
    // The limit on what a client sends: conn.request_max (4 MiB), as the welcome says.
    let too_big = (4u32 << 20) + 1;
    s.write_all(&too_big.to_le_bytes()).unwrap();
    let error = goodbye_of(&mut s);
    assert_eq!(error.code, ErrorCode::Protocol);
    assert_eq!(
        error.message,
        format!("frame of {too_big} bytes exceeds the limit of 4194304 bytes")
    );
    assert_daemon_still_serves(&daemon);
}

#[test]
fn truncated_frame_gets_an_error_frame_and_others_are_served() {
    let daemon = Daemon::with_test_providers();
    let mut s = daemon.raw("json");
    s.write_all(&100u32.to_le_bytes()).unwrap();
    s.write_all(b"{\"request\"").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let error = goodbye_of(&mut s);
    assert_eq!(error.code, ErrorCode::Protocol);
    assert_eq!(
        error.message,
        "truncated frame: the connection closed after 14 bytes of a frame"
    );
    assert_daemon_still_serves(&daemon);
}

#[test]
fn disconnect_mid_request_leaves_the_daemon_serving() {
    let daemon = Daemon::with_test_providers();
    {
        let mut s = daemon.raw("json");
        write_frame(
            &mut s,
            br#"{"request":{"id":1,"request":{"get":{"class":"test.slow","key":{"ms":{"u64":200}}}}}}"#,
        );
        // Dropped here, while the provider is still sleeping.
    }
    assert_daemon_still_serves(&daemon);
    // The abandoned connection's task ends once its request finishes; only ours stays.
    let mut client = daemon.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.status().unwrap().connections_open != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned connection never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_daemon_still_serves(&daemon);
}

#[test]
fn bad_handshakes_are_refused_with_a_reason() {
    let daemon = Daemon::with_test_providers();
    let mut s = UnixStream::connect(&daemon.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, br#"{"protocol":99,"encoding":"json"}"#);
    let error = goodbye_of(&mut s);
    assert_eq!(
        error.message,
        "protocol version 99 is not supported; this server speaks version 1"
    );

    // A binary client from before minor 6 would misread instances: it is told why.
    let mut s = UnixStream::connect(&daemon.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, br#"{"protocol":1,"minor":5,"encoding":"binary"}"#);
    let error = goodbye_of(&mut s);
    assert!(
        error.message.starts_with("this client speaks minor version 5 of protocol 1, whose binary instances this server no longer reads"),
        "{}",
        error.message
    );
    // The same client in JSON is served.
    let mut s = UnixStream::connect(&daemon.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, br#"{"protocol":1,"minor":5,"encoding":"json"}"#);
    let welcome: serde_json::Value = serde_json::from_slice(&read_frame(&mut s).unwrap()).unwrap();
    assert_eq!(
        welcome["minor"],
        purveyor_protocol::PROTOCOL_MINOR,
        "{welcome}"
    );

    let mut s = UnixStream::connect(&daemon.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, b"hello?");
    let error = goodbye_of(&mut s);
    assert!(
        error.message.starts_with("malformed hello"),
        "{}",
        error.message
    );
    assert_daemon_still_serves(&daemon);
}

#[test]
fn json_speaker_with_only_a_standard_library_gets_answers() {
    let daemon = Daemon::with_test_providers();
    let mut s = daemon.raw("json");
    write_frame(
        &mut s,
        br#"{"request":{"id":7,"request":{"get":{"class":"test.slow","key":{"ms":{"u64":0}}}}}}"#,
    );
    let reply = String::from_utf8(read_frame(&mut s).unwrap()).unwrap();
    // An instance is a JSON object: its keys may come in any order.
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        r#"{"reply":{"id":7,"outcome":{"ok":{"instance":{"label":{"string":"slept 0"},"ms":{"u64":0}}}}}}"#,
    )
    .unwrap();
    assert_eq!(reply, expected);
}

#[test]
fn requests_sent_right_behind_the_hello_are_answered() {
    let daemon = Daemon::with_test_providers();
    let mut s = UnixStream::connect(&daemon.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    for payload in [
        &br#"{"protocol":1,"encoding":"json"}"#[..],
        br#"{"request":{"id":1,"request":"ping"}}"#,
        br#"{"request":{"id":2,"request":"ping"}}"#,
    ] {
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    s.write_all(&bytes).unwrap(); // one write: hello and two requests
    let _welcome = read_frame(&mut s).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = String::from_utf8(read_frame(&mut s).unwrap()).unwrap();
        assert!(reply.contains(r#""outcome":{"ok":"pong"}"#), "{reply}");
        ids.push(reply.contains(r#""id":1"#));
    }
    ids.sort();
    assert_eq!(ids, vec![false, true]);
}

#[test]
fn requests_in_pieces_and_in_batches_are_each_answered_once() {
    // The server peeks requests and takes them off the socket after answering (server.rs,
    // "Intake"): bytes must be neither lost nor read twice, whether frames arrive split,
    // several at once, or both, and whether answers come at once (ping, purveyor.host
    // from an inline builtin) or later (test.slow on the blocking pool).
    let daemon = Daemon::with_test_providers();
    let mut s = daemon.raw("json");
    let requests = [
        r#""ping""#,
        r#"{"get":{"class":"purveyor.host","key":{}}}"#,
        r#"{"get":{"class":"test.slow","key":{"ms":{"u64":5}}}}"#,
        r#"{"enumerate":{"class":"purveyor.host","selector":{}}}"#,
    ];
    let mut bytes = Vec::new();
    let total = 60u32;
    for id in 1..=total {
        let request = requests[id as usize % requests.len()];
        let payload = format!(r#"{{"request":{{"id":{id},"request":{request}}}}}"#);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload.as_bytes());
    }
    // Chunks of 1 to 97 bytes: some split a header, some hold several frames.
    let mut rest = &bytes[..];
    let mut size = 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        s.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
        size = (size * 7 + 3) % 97 + 1;
        if size % 3 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..total {
        let reply: serde_json::Value =
            serde_json::from_slice(&read_frame(&mut s).unwrap()).unwrap();
        let id = reply["reply"]["id"].as_u64().unwrap();
        assert!(
            reply["reply"]["outcome"]["ok"].is_object()
                || reply["reply"]["outcome"]["ok"] == "pong",
            "{reply}"
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    assert_eq!(seen.len() as u32, total, "every request answered: {seen:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "each answered once: {seen:?}"
    );
    // The connection is still in step: one more request, one more answer.
    write_frame(&mut s, br#"{"request":{"id":99,"request":"ping"}}"#);
    let reply = String::from_utf8(read_frame(&mut s).unwrap()).unwrap();
    assert!(reply.contains(r#""id":99"#), "{reply}");
}

#[test]
fn json_and_binary_encodings_give_the_same_answers() {
    let daemon = Daemon::standard();
    let mut binary = daemon.client_with(Encoding::Binary);
    let mut json = daemon.client_with(Encoding::Json);
    assert_eq!(
        binary.list_classes(None).unwrap(),
        json.list_classes(None).unwrap()
    );
    let pid1 = key(&[("pid", Value::U64(1))]);
    let (a, b) = (
        binary.get(&class("system.process"), &pid1).unwrap(),
        json.get(&class("system.process"), &pid1).unwrap(),
    );
    assert_eq!(a.get("name"), b.get("name"));
    assert_eq!(a.get("started"), b.get("started"));
    let (a, b) = (
        binary
            .get(&class("system.memory"), &InstanceKey::new())
            .unwrap(),
        json.get(&class("system.memory"), &InstanceKey::new())
            .unwrap(),
    );
    assert_eq!(a.get("total"), b.get("total"));
    let (a, b) = (
        binary
            .get(&class("system.host"), &InstanceKey::new())
            .unwrap(),
        json.get(&class("system.host"), &InstanceKey::new())
            .unwrap(),
    );
    for prop in ["hostname", "kernel", "kernel_version", "boot_time", "cpus"] {
        assert_eq!(a.get(prop), b.get(prop), "{prop}");
    }
}

#[test]
fn embedded_and_daemon_modes_give_the_same_answers() {
    let daemon = Daemon::standard();
    let mut remote = daemon.client();
    let options = ConnectOptions::default()
        .target(Target::Embedded)
        .provider_dirs(vec![daemon.path.with_file_name("none")]);
    let mut local = Client::connect(&options).unwrap();
    assert_eq!(local.mode(), &Mode::Embedded);
    assert_eq!(local.status().unwrap().mode, HostMode::Embedded);
    assert_eq!(
        remote.list_classes(None).unwrap(),
        local.list_classes(None).unwrap()
    );
    let (a, b) = (
        remote
            .get(&class("system.host"), &InstanceKey::new())
            .unwrap(),
        local
            .get(&class("system.host"), &InstanceKey::new())
            .unwrap(),
    );
    for prop in ["hostname", "kernel", "boot_time", "cpus"] {
        assert_eq!(a.get(prop), b.get(prop), "{prop}");
    }
    let cpus = |c: &mut Client| -> Vec<Value> {
        c.enumerate(&class("system.cpu"), &InstanceKey::new())
            .unwrap()
            .iter()
            .map(|i| i.get("cpu").unwrap().clone())
            .collect()
    };
    assert_eq!(cpus(&mut remote), cpus(&mut local));
    match (
        remote.get(&class("system.nothing"), &InstanceKey::new()),
        local.get(&class("system.nothing"), &InstanceKey::new()),
    ) {
        (Err(ClientError::NotFound { message: a }), Err(ClientError::NotFound { message: b })) => {
            assert_eq!(a, b)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn auto_target_falls_back_to_embedded_when_no_daemon_listens() {
    let dir = tempfile::tempdir().unwrap();
    let options = ConnectOptions::default().target(Target::Socket(dir.path().join("absent.sock")));
    match Client::connect(&options) {
        Err(ClientError::Connect { path, .. }) => assert!(path.ends_with("absent.sock")),
        other => panic!("a forced socket must not fall back: {other:?}"),
    }
}

#[test]
fn shutdown_tells_connected_clients_goodbye() {
    let mut daemon = Daemon::with_test_providers();
    let mut s = daemon.raw("json");
    daemon.stop.take().unwrap().send(()).unwrap();
    let error = goodbye_of(&mut s);
    assert_eq!(error.code, ErrorCode::ShuttingDown);
    daemon.thread.take().unwrap().join().unwrap();
    assert!(
        UnixStream::connect(&daemon.path).is_err(),
        "nothing listens after shutdown"
    );
}
