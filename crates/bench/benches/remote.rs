//! Remote clients over TLS on loopback (`docs/remote.md`, `docs/performance.md`
//! "Remote"): `get purveyor.host` through `Target::Remote` next to a TLS echo of the same
//! bytes (a blocking rustls client and server, in a process of its own) in every placement
//! (`docs/performance.md`, "Placement"): the echo pinned together with the client (the
//! floor), split across two CPUs (a cross-CPU wake-up), and unpinned; ours unpinned and
//! pinned together. Then the handshake (connect to welcome) next to a bare TLS handshake.
//!
//! Needs the release `purveyor` binary (`bench/run` builds it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use purveyor_bench::{
    BenchDaemon, Floors, Placed, cpus, percentiles, pin_process, pin_this_process, pin_thread,
    release_file, us,
};
use purveyor_client::{
    Client, ConnectOptions, Encoding, RemoteAddress, RemoteSettings, Request, Target,
};
use purveyor_model::{ClassPath, InstanceKey};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 2000;
const HANDSHAKES: usize = 200;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(dir) = std::env::var("PURVEYOR_BENCH_TLS_ECHO") {
        tls_echo(Path::new(&dir));
        return;
    }
    let Some(bin) = release_file("purveyor") else {
        println!("remote: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    let port = free_port();
    std::fs::write(
        d.join("remote.toml"),
        "[tls]\ncertificate = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n[users]\nbench = \"root\"\n",
    )
    .unwrap();
    let listen = format!("tls://127.0.0.1:{port}");
    let config = d.join("remote.toml");
    let daemon = BenchDaemon::start(
        &bin,
        d,
        &[
            "--listen",
            &listen,
            "--remote-config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let echo = EchoProcess::spawn(d);
    let settings = RemoteSettings {
        address: RemoteAddress::parse(&port.to_string()).unwrap(),
        ca: d.join("ca.crt"),
        certificate: Some(d.join("bench.crt")),
        key: Some(d.join("bench.key")),
        dead_after: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
    };
    let options = ConnectOptions::default().target(Target::Remote(settings.clone()));
    // Wait for the listener.
    let mut client = (0..100)
        .find_map(|_| {
            Client::connect(&options).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(50));
                None
            })
        })
        .expect("the daemon's TLS listener");
    println!(
        "# purveyor remote benchmark (loopback, {ROUNDS} rounds of {PER_ROUND}; {} CPUs)",
        purveyor_bench::cpus()
    );
    let request = Request::Get {
        class: ClassPath::new("purveyor.host").unwrap(),
        key: InstanceKey::new(),
    };
    let (_, request_len, reply_len) =
        purveyor_bench::request_and_reply_sizes(&mut client, &request);
    let mut echo_frame = ((request_len.max(4)) as u32).to_le_bytes().to_vec();
    echo_frame.extend_from_slice(&(reply_len as u32).to_le_bytes());
    echo_frame.resize(4 + request_len.max(4), 0);
    let tls = purveyor_remote::client_config(&settings).unwrap();
    let mut echo_stream = tls_connect(&tls, echo.port);
    let mut buf = vec![0u8; 4 + reply_len];
    // The same echo through a client's bridge (a Unix socket pair and the TLS thread):
    // what the client side adds.
    let echo_settings = RemoteSettings {
        address: RemoteAddress::parse(&echo.port.to_string()).unwrap(),
        ..settings.clone()
    };
    let mut bridged = purveyor_remote::connect(&echo_settings, Encoding::Binary).unwrap();
    let mut s = [(); 6].map(|()| Vec::with_capacity(ROUNDS * PER_ROUND));
    // Asked before anything is pinned (pinned, this process sees one CPU).
    let two_cpus = cpus() > 1;
    for round in 0..=ROUNDS {
        let warm = round == 0;
        let time = |samples: &mut Vec<Duration>, one: &mut dyn FnMut()| {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                one();
                if !warm {
                    samples.push(t.elapsed());
                }
            }
        };
        time(&mut s[0], &mut || {
            echo_stream.write_all(&echo_frame).unwrap();
            echo_stream.read_exact(&mut buf).unwrap();
        });
        time(&mut s[1], &mut || {
            client.request(request.clone()).unwrap();
        });
        time(&mut s[4], &mut || {
            bridged.write_all(&echo_frame).unwrap();
            bridged.read_exact(&mut buf).unwrap();
        });
        // Pinned together: the client's threads (its TLS thread too), the daemon, the echo.
        pin_thread(Some(0));
        pin_this_process(Some(0));
        pin_process(daemon.pid(), Some(0));
        pin_process(echo.child.id(), Some(0));
        time(&mut s[2], &mut || {
            echo_stream.write_all(&echo_frame).unwrap();
            echo_stream.read_exact(&mut buf).unwrap();
        });
        time(&mut s[3], &mut || {
            client.request(request.clone()).unwrap();
        });
        // Split: the client on CPU 0, the echo on CPU 1.
        if two_cpus {
            pin_process(echo.child.id(), Some(1));
            time(&mut s[5], &mut || {
                echo_stream.write_all(&echo_frame).unwrap();
                echo_stream.read_exact(&mut buf).unwrap();
            });
        }
        pin_thread(None);
        pin_this_process(None);
        pin_process(daemon.pid(), None);
        pin_process(echo.child.id(), None);
    }
    let [
        echo_free,
        ours_free,
        echo_pinned,
        ours_pinned,
        bridged_free,
        echo_split,
    ] = s.map(|mut v| (!v.is_empty()).then(|| percentiles(&mut v)));
    let placed = Placed {
        request_len,
        reply_len,
        floors: Floors {
            floor: echo_pinned.unwrap(),
            split: echo_split,
            free_echo: echo_free.unwrap(),
        },
        ours: ours_free.unwrap(),
        ours_together: ours_pinned.unwrap(),
        plain_json: None,
        plain_json_together: None,
    };
    // The floor, as every latency bench takes it: the (TLS) echo with client and server
    // pinned together; ours as users get it, unpinned.
    println!(
        "get purveyor.host over TLS ({request_len} B / {reply_len} B, the floor a TLS echo of the same bytes): {}",
        placed.line()
    );
    let bridged_free = bridged_free.unwrap();
    println!(
        "the TLS echo through a client's bridge, unpinned: p50 {:.1} us p99 {:.1} us",
        us(bridged_free.0),
        us(bridged_free.1)
    );

    // Handshakes: a remote client's connect (TCP, TLS, hello, welcome) against a bare TLS
    // handshake with the echo.
    let mut connects = Vec::with_capacity(HANDSHAKES);
    let mut bare = Vec::with_capacity(HANDSHAKES);
    for _ in 0..HANDSHAKES {
        let t = Instant::now();
        let c = Client::connect(&options).unwrap();
        connects.push(t.elapsed());
        drop(c);
        let t = Instant::now();
        let mut s = tls_connect(&tls, echo.port);
        s.write_all(&echo_frame).unwrap();
        s.read_exact(&mut buf).unwrap();
        bare.push(t.elapsed());
    }
    let (c50, c99) = percentiles(&mut connects);
    let (b50, b99) = percentiles(&mut bare);
    println!(
        "remote connect (TCP + TLS 1.3 with client certificate + hello/welcome): p50 {:.2} ms p99 {:.2} ms | bare TLS handshake + one echo p50 {:.2} ms p99 {:.2} ms",
        us(c50) / 1000.0,
        us(c99) / 1000.0,
        us(b50) / 1000.0,
        us(b99) / 1000.0
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA, the server's certificate for 127.0.0.1 and a client certificate `bench`.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    for (file, sans, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("bench", vec![], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(config: &Arc<rustls::ClientConfig>, port: u16) -> TlsStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    TlsStream::new(conn, tcp)
}

/// The TLS echo in a process of its own (this executable): a thread per connection,
/// blocking rustls, each frame `[len][reply_len …]` answered with `reply_len` bytes.
struct EchoProcess {
    child: std::process::Child,
    port: u16,
}

impl EchoProcess {
    fn spawn(dir: &Path) -> EchoProcess {
        let port_file = dir.join("echo.port");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("PURVEYOR_BENCH_TLS_ECHO", dir)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "the TLS echo did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        EchoProcess { child, port }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_echo(dir: &Path) {
    let settings = purveyor_remote::ServerSettings {
        path: dir.join("remote.toml"),
        certificate: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_ca: dir.join("ca.crt"),
        users: Default::default(),
        dead_after: Duration::from_secs(30),
    };
    let config = purveyor_remote::server_config(&settings).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tmp = dir.join("echo.port.tmp");
    std::fs::write(&tmp, port.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("echo.port")).unwrap();
    for tcp in listener.incoming().flatten() {
        let config = config.clone();
        std::thread::spawn(move || {
            tcp.set_nodelay(true).unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut header = [0u8; 4];
            let mut body = Vec::new();
            let mut reply = Vec::new();
            loop {
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                body.resize(u32::from_le_bytes(header) as usize, 0);
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let n = u32::from_le_bytes(body[..4].try_into().unwrap());
                reply.clear();
                reply.extend_from_slice(&n.to_le_bytes());
                reply.resize(4 + n as usize, 0);
                if s.write_all(&reply).is_err() || s.flush().is_err() {
                    return;
                }
            }
        });
    }
}
