//! Both bridges over real TLS on loopback: bytes carried both ways, the certificate's
//! user handed to the server, and each way of being refused told to the client.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use purveyor_protocol::{Encoding, ServerMessage};
use purveyor_remote::{ClientSettings, Listener, RemoteAddress, ServerSettings, Users};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// Writes a certificate named `cn` (for `sans`) signed by `ca`, and its key, into `dir`.
fn issue(
    dir: &Path,
    ca: &Ca,
    file: &str,
    cn: &str,
    sans: &[&str],
    client: bool,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

struct Setup {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    port: u16,
    accepted: tokio::sync::mpsc::Receiver<purveyor_remote::Accepted>,
    client: ClientSettings,
    ca: Ca,
    dir: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let ca = ca("test CA");
    let (server_crt, server_key) = issue(&path, &ca, "server", "daemon", &["127.0.0.1"], false);
    let (client_crt, client_key) = issue(&path, &ca, "nobody", "nobody", &[], true);
    std::fs::write(path.join("ca.crt"), ca.cert.pem()).unwrap();
    let settings = ServerSettings {
        path: path.join("remote.toml"),
        certificate: server_crt,
        key: server_key,
        client_ca: path.join("ca.crt"),
        users: Users::default(),
        dead_after: Duration::from_secs(10),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = Arc::new(Listener::new(&settings, Duration::from_secs(5)).unwrap());
    let tcp = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (tx, accepted) = tokio::sync::mpsc::channel(4);
    runtime.spawn(purveyor_remote::listen(tcp, listener, tx));
    let client = ClientSettings {
        address: RemoteAddress::parse(&port.to_string()).unwrap(),
        ca: path.join("ca.crt"),
        certificate: Some(client_crt),
        key: Some(client_key),
        dead_after: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
    };
    Setup {
        _dir: dir,
        runtime,
        port,
        accepted,
        client,
        ca,
        dir: path,
    }
}

/// The goodbye a refused client reads in answer to its first bytes.
fn goodbye(mut stream: std::os::unix::net::UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(b"\x02\0\0\0{}");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    assert!(bytes.len() > 4, "no goodbye: {bytes:?}");
    match serde_json::from_slice::<ServerMessage>(&bytes[4..]).unwrap() {
        ServerMessage::Goodbye { error } => error.message,
        other => panic!("not a goodbye: {other:?}"),
    }
}

#[test]
fn bytes_cross_both_ways_as_the_certificates_user() {
    let mut s = setup();
    let mut client = purveyor_remote::connect(&s.client, Encoding::Binary).unwrap();
    let accepted = s.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), s.accepted.recv())
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(accepted.user.certificate, "nobody");
    assert_eq!(accepted.user.uid, 65534);
    let mut server = accepted.stream;
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let writer = {
        let mut client = client.try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || client.write_all(&big).unwrap())
    };
    s.runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == big, "bytes differ after the crossing");
        server.write_all(b"back").await.unwrap();
        server.flush().await.unwrap();
    });
    writer.join().unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
    // The server's end closing ends the client's stream.
    s.runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        server.shutdown().await.unwrap();
    });
    drop(server);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn a_client_without_a_certificate_is_told_one_is_required() {
    let mut s = setup();
    s.client.certificate = None;
    s.client.key = None;
    let stream = purveyor_remote::connect(&s.client, Encoding::Binary).unwrap();
    let message = goodbye(stream);
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let mut s = setup();
    let other = ca("another CA");
    let (c, k) = issue(&s.dir, &other, "stranger", "nobody", &[], true);
    s.client.certificate = Some(c);
    s.client.key = Some(k);
    let message = goodbye(purveyor_remote::connect(&s.client, Encoding::Binary).unwrap());
    assert!(
        message.contains("refused this client's certificate"),
        "{message}"
    );
}

#[test]
fn a_certificate_naming_no_user_is_refused_with_the_name() {
    let mut s = setup();
    let (c, k) = issue(&s.dir, &s.ca, "ghost", "no-such-user-here", &[], true);
    s.client.certificate = Some(c);
    s.client.key = Some(k);
    let message = goodbye(purveyor_remote::connect(&s.client, Encoding::Binary).unwrap());
    assert!(
        message.contains("\"no-such-user-here\"") && message.contains("does not exist here"),
        "{message}"
    );
}

#[test]
fn a_daemon_certificate_for_another_name_is_not_trusted() {
    let mut s = setup();
    s.client.address = RemoteAddress::parse(&format!("localhost:{}", s.port)).unwrap();
    let e = purveyor_remote::connect(&s.client, Encoding::Binary).unwrap_err();
    assert!(e.to_string().contains("handshake failed"), "{e}");
}
