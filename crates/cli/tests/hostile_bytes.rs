//! Hostile bytes, slow clients and floods against a real daemon (issue 22): none may
//! crash it, hang it or grow it without bound. Each test is named after what broke.
//! Clients here speak the wire protocol by hand (`docs/protocol.md`), so they can send
//! what no well-behaved client would.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;

/// A raw connection that said hello in `encoding` ("json" or "binary").
fn connect(daemon: &Daemon, encoding: &str) -> UnixStream {
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let hello =
        format!(r#"{{"protocol":1,"minor":8,"encoding":"{encoding}","client":"hostile-bytes"}}"#);
    send(&mut s, hello.as_bytes());
    let welcome = recv(&mut s).expect("a welcome");
    assert!(String::from_utf8_lossy(&welcome).contains("welcome") || welcome.starts_with(b"{"));
    s
}

fn send(s: &mut UnixStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

/// The next frame's payload; `None` at end of stream.
fn recv(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let mut payload = vec![0; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(payload)
}

fn recv_text(s: &mut UnixStream) -> String {
    String::from_utf8_lossy(&recv(s).expect("a frame")).into_owned()
}

/// Pings on a JSON connection and expects the pong.
fn ping(s: &mut UnixStream, id: u32) {
    send(
        s,
        format!(r#"{{"request":{{"id":{id},"request":"ping"}}}}"#).as_bytes(),
    );
    let reply = recv_text(s);
    assert!(
        reply.contains("pong") && reply.contains(&format!("\"id\":{id}")),
        "{reply}"
    );
}

/// The daemon's resident memory, in bytes.
fn rss(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A binary `get` of `system.load` with id 1 whose key value nests arrays `depth` deep,
/// built from the encoding of a flat one (the value `{"u64": 5}` is its last two bytes).
fn nested_get(depth: usize) -> Vec<u8> {
    // Request variant 0, id 1, Request::Get, class "system.load", a key of one entry
    // "pid" => U64(5), as postcard writes them.
    // Request::Get is the sixth variant (ping, status, list_classes, describe, enumerate,
    // get): index 5.
    let get_index = 5u8;
    let mut flat = vec![0, 1, get_index];
    flat.push(11);
    flat.extend_from_slice(b"system.load");
    flat.push(1);
    flat.push(3);
    flat.extend_from_slice(b"pid");
    let mut deep = flat;
    for _ in 0..depth {
        deep.extend_from_slice(&[7, 1]);
    }
    deep.extend_from_slice(&[1, 5]);
    deep
}

/// A 40 KB binary frame whose key nests arrays 20 000 deep overflowed the decoding
/// thread's stack and aborted the daemon. It is answered `invalid_request` naming the
/// rule, and the connection (and the daemon) go on.
#[test]
fn a_deeply_nested_frame_aborted_the_daemon() {
    let daemon = Daemon::start(&[], &[], &[]);
    let mut s = connect(&daemon, "binary");
    let frame = nested_get(20_000);
    assert!(frame.len() > 40_000);
    send(&mut s, &frame);
    let reply = recv(&mut s).expect("an answer, not a closed connection");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("arrays do not nest"), "{text}");
    // Others are served, and so is this connection.
    ping(&mut connect(&daemon, "json"), 1);
    // Binary ping: ClientMessage::Request (0), id 2, Request::Ping (0).
    send(&mut s, &[0, 2, 0]);
    let pong = recv(&mut s).expect("the connection lives on");
    assert_eq!(pong[..2], [0, 2], "{pong:?}");
}

/// A request with a bad name (a property `Value`, a class `System.Load`, a key `PID`)
/// closed the whole connection with a `protocol` goodbye, losing everything in flight on
/// it. Each is answered `invalid_request` naming the name and the rule.
#[test]
fn a_bad_name_closed_the_connection() {
    let daemon = Daemon::start(&[], &[], &[]);
    let mut s = connect(&daemon, "json");
    for (id, request, named) in [
        (
            1,
            r#"{"put":{"class":"config.setting","instance":{"Value":{"u64":1}}}}"#,
            "Value",
        ),
        (
            2,
            r#"{"get":{"class":"System.Load","key":{}}}"#,
            "System.Load",
        ),
        (
            3,
            r#"{"get":{"class":"system.process","key":{"PID":{"u64":1}}}}"#,
            "PID",
        ),
    ] {
        send(
            &mut s,
            format!(r#"{{"request":{{"id":{id},"request":{request}}}}}"#).as_bytes(),
        );
        let reply = recv_text(&mut s);
        assert!(reply.contains("invalid_request"), "{reply}");
        assert!(reply.contains(&format!("\"id\":{id}")), "{reply}");
        assert!(
            reply.contains(named) && reply.contains("lowercase"),
            "{reply}"
        );
    }
    ping(&mut s, 4);
    // A frame that is not even a request still ends the connection, with a reason.
    send(&mut s, b"{\"hello\":1}");
    let bye = recv_text(&mut s);
    assert!(bye.contains("goodbye") && bye.contains("protocol"), "{bye}");
}

/// Each bad 15 MiB field was written whole to the log and echoed whole in the goodbye
/// (157 MB of log in 1.9 s). A 15 MiB request is now refused by its header
/// (`conn.request_max`, 4 MiB), and what is quoted of a bad field is cut to a few hundred
/// bytes.
#[test]
fn a_huge_bad_field_was_logged_and_echoed_whole() {
    let daemon = Daemon::start(&[], &[], &[]);
    let mut big = connect(&daemon, "json");
    // The header alone: the daemon answers it, before any of the 15 MiB arrives.
    big.write_all(&(15u32 << 20).to_le_bytes()).unwrap();
    let _ = big.write_all(b"{\"request\":");
    let bye = recv_text(&mut big);
    assert!(
        bye.contains("goodbye") && bye.contains("exceeds the limit of 4194304"),
        "{bye}"
    );
    let mut s = connect(&daemon, "json");
    let before = daemon.log().len();
    let huge = "A".repeat((4 << 20) - 4096);
    for id in 1..=3 {
        let request = format!(
            r#"{{"request":{{"id":{id},"request":{{"get":{{"class":"{huge}","key":{{}}}}}}}}}}"#
        );
        send(&mut s, request.as_bytes());
        let reply = recv_text(&mut s);
        assert!(reply.len() < 2048, "a {} byte reply", reply.len());
        assert!(
            reply.contains("invalid_request") && reply.contains("bytes"),
            "{reply}"
        );
    }
    // Not a request at all: the goodbye quotes little of it.
    send(&mut s, format!(r#"{{"{huge}":1}}"#).as_bytes());
    let bye = recv_text(&mut s);
    assert!(bye.len() < 2048 && bye.contains("goodbye"), "{}", bye.len());
    drop(s);
    ping(&mut connect(&daemon, "json"), 1);
    let logged = daemon.log().len() - before;
    assert!(logged < 64 << 10, "{logged} bytes of log");
}

/// Five bytes per connection announcing a 16 MiB frame cost 16 MiB each (the buffer was
/// zero-filled to the announced length): 100 connections took 1.65 GB before any hello.
#[test]
fn an_announced_frame_length_was_allocated_before_its_bytes_came() {
    let daemon = Daemon::start(&[], &[], &[]);
    ping(&mut connect(&daemon, "json"), 1);
    let idle = rss(&daemon);
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = UnixStream::connect(&daemon.socket).unwrap();
        // One write: a daemon that refuses the length at once and closes cannot make a
        // second write fail (EPIPE).
        let mut five = (16u32 << 20).to_le_bytes().to_vec();
        five.push(b'{');
        s.write_all(&five).unwrap();
        held.push(s);
    }
    // The daemon has read them all once a fresh client is answered after them.
    ping(&mut connect(&daemon, "json"), 2);
    std::thread::sleep(Duration::from_millis(200));
    let grown = rss(&daemon).saturating_sub(idle);
    assert!(grown < 32 << 20, "the daemon grew by {} MiB", grown >> 20);
}

/// A client that pipelined `enumerate system.process` without reading grew the daemon to
/// 1.05 GB (three clients: 1.93 GB): replies answered on the spot were buffered without
/// limit, as many as the requests one read brought (here, twenty such clients). Now the
/// daemon stops reading a client once 1 MiB of replies waits for it.
#[test]
fn replies_answered_on_the_spot_bypassed_the_in_flight_limit() {
    let daemon = Daemon::start(&[], &[], &[]);
    let mut quiet = connect(&daemon, "json");
    ping(&mut quiet, 1);
    let idle = rss(&daemon);
    // Binary requests are small (20 bytes): one read brings thousands.
    let mut frame = Vec::new();
    for id in 1..=6000u32 {
        let mut payload = vec![0];
        let mut v = id;
        while v >= 0x80 {
            payload.push((v as u8) | 0x80);
            v >>= 7;
        }
        payload.push(v as u8);
        // Request::Enumerate (variant 4), class "system.process", an empty selector.
        payload.extend_from_slice(&[4, 14]);
        payload.extend_from_slice(b"system.process");
        payload.push(0);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
    }
    let greedy: Vec<UnixStream> = (0..20)
        .map(|_| {
            let s = connect(&daemon, "binary");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // Send what the sockets take, never reading.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut sent = [0usize; 20];
    while std::time::Instant::now() < until && sent.iter().any(|&n| n < frame.len()) {
        for (s, sent) in greedy.iter().zip(sent.iter_mut()) {
            match (&*s).write(&frame[*sent..]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Others are still served promptly, and the daemon did not balloon.
    ping(&mut quiet, 2);
    let grown = rss(&daemon).saturating_sub(idle);
    assert!(grown < 48 << 20, "the daemon grew by {} MiB", grown >> 20);
    drop(greedy);
    ping(&mut quiet, 3);
}

/// A daemon whose counters directory is `counters`.
fn counters_daemon(counters: &std::path::Path) -> Daemon {
    Daemon::start(&[], &[], &[("PURVEYOR_COUNTERS", counters.as_os_str())])
}

/// `purveyor ARGS` against `daemon`, killed (and the test failed) past 20 s.
fn cli_bounded(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        // SAFETY: kill sends a signal to our own child, which may have exited (then the
        // pid is unreaped until wait_with_output below, so it is not reused).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.code().is_some(),
        "purveyor {args:?} hung (killed after 20 s)"
    );
    drop(watchdog);
    out
}

/// A FIFO named `*.counters` in a counters directory hung the whole daemon (even `ping`)
/// until someone opened it for writing: the open blocked before the file-type check. It
/// is refused as a FIFO; a symlink to a secret is refused without quoting it.
#[test]
fn a_fifo_counter_file_hung_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stuck.counters");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cr3t-token-bytes").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("leak.counters")).unwrap();
    let daemon = counters_daemon(dir.path());
    // Answered (no class: both files are refused), not hung.
    let out = cli_bounded(&daemon, &["ls", "app"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no class"),
        "{out:?}"
    );
    ping(&mut connect(&daemon, "json"), 1);
    let log = daemon.log();
    assert!(log.contains("not a regular file (a FIFO)"), "{log}");
    assert!(log.contains("a symbolic link"), "{log}");
    assert!(
        !daemon.log().contains("s3cr3t"),
        "the secret's bytes were logged"
    );
    let hex = format!("{:02x?}", &b"s3cr3t-t"[..]);
    assert!(!daemon.log().contains(&hex));
}

/// A publisher calling `ftruncate` smaller and back in a loop killed the daemon with
/// SIGBUS (a read of its mapping past the shrunk end). The daemon lives, and refuses the
/// file once it has seen it shrink.
#[test]
fn a_shrinking_counter_file_killed_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = purveyor_counters::CounterSet::builder("shrinky");
    for i in 0..64 {
        builder = builder.counter(
            &format!("c{i}"),
            purveyor_counters::CounterType::Counter,
            purveyor_counters::Unit::Count,
            "a counter",
        );
    }
    let set = builder.instances(1024).create_in(dir.path()).unwrap();
    let path = set.path().to_path_buf();
    let full = std::fs::metadata(&path).unwrap().len();
    let daemon = counters_daemon(dir.path());
    let mut client = daemon.client();
    let class = common::class("app.shrinky");
    client.enumerate(&class, &Default::default()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let truncator = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.set_len(4096).unwrap();
                file.set_len(full).unwrap();
            }
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    while std::time::Instant::now() < until {
        match client.enumerate(&class, &Default::default()) {
            Ok(_) => {}
            Err(e) => {
                refused += 1;
                let e = e.to_string();
                assert!(
                    e.contains("shrank")
                        || e.contains("size changed")
                        || e.contains("no provider")
                        || e.contains("not found"),
                    "{e}"
                );
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    truncator.join().unwrap();
    // Alive and serving.
    ping(&mut connect(&daemon, "json"), 1);
    assert!(refused > 0, "the daemon never noticed the file changing");
    drop(set);
}

/// Stream opens of FIFOs pinned blocking threads for ever (600 opens left 515 threads
/// stuck after the clients left; later opens hung, providers could not load, SIGTERM took
/// 11 s). Every file a procedure opens is opened without blocking and must be a regular
/// file: a FIFO or a device is refused at once, whatever the procedure.
#[test]
fn fifo_stream_opens_pinned_blocking_threads() {
    let daemon = Daemon::start(&[], &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let fifo = fifo.to_str().unwrap().to_string();
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "plain\n").unwrap();
    let names = [
        fifo.clone(),
        format!("{}.gz+", fifo),
        format!("{}+member", fifo.replace("pipe", "pipe.tar")),
        "/dev/zero".to_string(),
    ];
    std::os::unix::fs::symlink(&fifo, dir.path().join("pipe.gz")).unwrap();
    std::os::unix::fs::symlink(&fifo, dir.path().join("pipe.tar")).unwrap();
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let name = names[i % names.len()].clone();
            let socket = daemon.socket.clone();
            std::thread::spawn(move || {
                let out = std::process::Command::new(common::BIN)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["cat", &name])
                    .output()
                    .unwrap();
                (name, out)
            })
        })
        .collect();
    for client in clients {
        let (name, out) = client.join().unwrap();
        assert!(!out.status.success(), "{name}: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("not a regular file"), "{name}: {said}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Writing into a FIFO is refused too (nobody reads it).
    let out = cli_bounded(&daemon, &["cp", plain.to_str().unwrap(), &fifo]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{out:?}"
    );
    // Everyone else is served as before.
    let out = cli_bounded(&daemon, &["cat", plain.to_str().unwrap()]);
    assert_eq!(out.stdout, b"plain\n");
}

/// A FIFO or `/dev/zero` as a manifest hung start-up and `purveyor check`, or read until
/// memory ran out. Both are refused by type, and the daemon starts.
#[test]
fn a_fifo_or_dev_zero_manifest_hung_start_up() {
    let daemon = Daemon::start(&[], &[], &[]);
    let providers = daemon.dir.path().join("providers");
    let fifo = providers.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", providers.join("zero.toml")).unwrap();
    let out = cli_bounded(&daemon, &["check", providers.to_str().unwrap()]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("fifo.toml") && said.contains("FIFO"),
        "{said}"
    );
    assert!(
        said.contains("zero.toml") && said.contains("character device"),
        "{said}"
    );
    // A daemon started on that directory starts, and serves.
    let restarted = Daemon::start(&[], &["--providers", providers.to_str().unwrap()], &[]);
    ping(&mut connect(&restarted, "json"), 1);
}

/// Reads frames until a goodbye comes (or the connection ends); returns it.
fn goodbye_within(s: &mut UnixStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).unwrap();
    loop {
        match recv(s) {
            Some(frame) => {
                let text = String::from_utf8_lossy(&frame).into_owned();
                if text.contains("goodbye") {
                    return text;
                }
            }
            None => panic!("the connection ended (or timed out) without a goodbye"),
        }
    }
}

/// A half-sent frame, or a connection that says nothing, held the daemon's resources for
/// ever. A frame must arrive within `conn.frame_time`; a connection holding nothing is
/// closed after `conn.idle`; each is told why.
#[test]
fn half_sent_frames_and_idle_connections_were_held_for_ever() {
    let daemon = Daemon::start(
        &[],
        &["--limit", "conn.frame_time=1s", "--limit", "conn.idle=2s"],
        &[],
    );
    let mut half = connect(&daemon, "json");
    half.write_all(&100u32.to_le_bytes()).unwrap();
    half.write_all(b"{\"req").unwrap();
    let bye = goodbye_within(&mut half, Duration::from_secs(15));
    assert!(
        bye.contains("protocol") && bye.contains("conn.frame_time"),
        "{bye}"
    );
    let mut idle = connect(&daemon, "json");
    ping(&mut idle, 1);
    let bye = goodbye_within(&mut idle, Duration::from_secs(15));
    assert!(
        bye.contains("limit_exceeded") && bye.contains("conn.idle"),
        "{bye}"
    );
    // A client of an older minor gets a code it knows.
    let mut old = UnixStream::connect(&daemon.socket).unwrap();
    send(
        &mut old,
        br#"{"protocol":1,"minor":7,"encoding":"json","client":"old"}"#,
    );
    recv(&mut old).unwrap();
    let bye = goodbye_within(&mut old, Duration::from_secs(15));
    assert!(
        bye.contains("invalid_request") && bye.contains("conn.idle"),
        "{bye}"
    );
}

/// A truncated hello closed the connection with no goodbye (contrary to the protocol).
#[test]
fn a_truncated_hello_got_no_goodbye() {
    let daemon = Daemon::start(&[], &[], &[]);
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.write_all(&60u32.to_le_bytes()).unwrap();
    s.write_all(b"{\"protocol\":1,").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let bye = goodbye_within(&mut s, Duration::from_secs(15));
    assert!(bye.contains("truncated hello"), "{bye}");
}

/// 100 000 subscriptions on one connection were accepted with no cap. One connection may
/// hold `conn.subscriptions`; past that, `limit_exceeded` names the setting.
#[test]
fn subscriptions_per_connection_were_unbounded() {
    let config = common::workspace_library("libpurveyor_config.so", "purveyor-example-config");
    let manifest = format!(
        "name = \"config\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\", \"subscribe\"]\n",
        config.display().to_string()
    );
    let daemon = Daemon::start(
        &[("config", manifest)],
        &["--limit", "conn.subscriptions=3", "--limit", "conn.idle=1s"],
        &[],
    );
    let mut client = daemon.client();
    let class = common::class("config.setting");
    let handles: Vec<u32> = (0..3)
        .map(|_| client.subscribe(&class, None, vec![]).unwrap())
        .collect();
    let err = client.subscribe(&class, None, vec![]).unwrap_err();
    assert!(
        matches!(err, purveyor_client::ClientError::LimitExceeded { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("conn.subscriptions = 3"), "{err}");
    // A connection that holds subscriptions is not idle, however long it is silent.
    std::thread::sleep(Duration::from_millis(2500));
    // One ends: one more may begin.
    client.unsubscribe(handles[0]).unwrap();
    client.subscribe(&class, None, vec![]).unwrap();
}

/// Half-sent HTTP requests were never closed, and HTTP connections had no limit: a client
/// could hold every descriptor. Headers must arrive within `http.header_time`; at most
/// `http.connections` are open at once, more are closed at once (and counted).
#[test]
fn half_sent_http_requests_were_never_closed() {
    use std::net::TcpStream;
    let daemon = Daemon::start(
        &[],
        &[
            "--http",
            "127.0.0.1:0",
            "--limit",
            "http.header_time=1s",
            "--limit",
            "http.connections=4",
        ],
        &[],
    );
    let addr = common::http_addr(&daemon);
    // A request whose headers never finish is closed.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(14), "not closed");
    // Four held connections fill the gateway; a fifth is closed at once, and counted.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = fifth.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = fifth.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let host = daemon
        .client()
        .get(&common::class("purveyor.host"), &Default::default())
        .unwrap();
    assert!(common::u64_of(&host, "http_refused") >= 1);
    // Once they go (closed by their header time), the gateway serves again.
    drop(held);
    let healthy = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        Ok(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
    };
    common::wait_until(
        "the gateway to serve again",
        Duration::from_secs(15),
        || healthy().unwrap_or(false),
    );
}

/// `purveyor check` exited 0 for a directory the daemon refuses (two providers claiming
/// one class); it now reports what the daemon would refuse, and exits 1.
#[test]
fn check_passed_a_directory_the_daemon_refuses() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["one", "two"] {
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nhosting = \"external\"\ncommand = [\"true\"]\nclasses = [\"demo.same\"]\n"
            ),
        )
        .unwrap();
    }
    let out = std::process::Command::new(common::BIN)
        .args(["--embedded", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("demo.same"), "{said}");
}
