//! I/O procedures through the daemon, next to the floor measured in the same run (see
//! `docs/performance.md`): a streaming read of a 1 GiB file (`IO_BENCH_MB` changes the
//! size) with the `DOS ` procedure — as a passed descriptor (the default for a plain local
//! file) and streamed through the socket in 1 MiB requests — next to a plain `read` of
//! the same file, all from the page cache.
//!
//! Needs the release `purveyor` binary (`bench/run` builds it).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use purveyor_bench::{BenchDaemon, release_file};
use purveyor_client::io::READ_CHUNK;
use purveyor_client::{Client, ConnectOptions, IoMode};

const ROUNDS: usize = 3;

fn main() {
    if purveyor_bench::helper_mode() {
        return;
    }
    let Some(bin) = release_file("purveyor") else {
        println!("io: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let mb: usize = std::env::var("IO_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..mb {
            f.write_all(&block).unwrap();
        }
    }
    let bytes = (mb as u64) << 20;
    let daemon = BenchDaemon::start(&bin, dir.path(), &[], &[]);
    let mut client = Client::connect_socket(&daemon.socket, &ConnectOptions::default()).unwrap();

    // Warm the page cache, so every reader below reads memory.
    plain(&path, bytes);
    let mut floor = 0f64;
    let mut passed = 0f64;
    let mut streamed = 0f64;
    for _ in 0..ROUNDS {
        floor = floor.max(rate(bytes, || plain(&path, bytes)));
        passed = passed.max(rate(bytes, || through_daemon(&mut client, &path, bytes)));
        streamed = streamed.max(rate(bytes, || streamed_read(&mut client, &path, bytes)));
    }
    println!("io: streaming read of a {mb} MiB file (page cache), best of {ROUNDS}");
    println!("  plain read (1 MiB buffer)         {floor:8.0} MB/s   (the floor)");
    println!(
        "  daemon, DOS, descriptor passed    {passed:8.0} MB/s   {:5.1}% of plain",
        passed * 100.0 / floor
    );
    println!(
        "  daemon, DOS, streamed (1 MiB reqs) {streamed:7.0} MB/s   {:5.1}% of plain",
        streamed * 100.0 / floor
    );
}

fn rate(bytes: u64, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn plain(path: &Path, bytes: u64) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, bytes);
}

fn through_daemon(client: &mut Client, path: &Path, bytes: u64) {
    let mut stream = client
        .io_open(path.to_str().unwrap(), IoMode::Read)
        .unwrap();
    assert!(stream.is_direct());
    let mut buf = Vec::with_capacity(1 << 20);
    let mut total = 0u64;
    while client.io_read(&mut stream, &mut buf, READ_CHUNK).unwrap() > 0 {
        total += buf.len() as u64;
    }
    client.io_close(stream).unwrap();
    assert_eq!(total, bytes);
}

/// The same file with descriptor passing declined: every byte crosses the socket, read
/// as the client library reads a stream (`READ_AHEAD` reads in flight).
fn streamed_read(client: &mut Client, path: &Path, bytes: u64) {
    let mut stream = client
        .io_open_streamed(path.to_str().unwrap(), IoMode::Read)
        .unwrap();
    assert!(!stream.is_direct());
    let mut buf = Vec::with_capacity(1 << 20);
    let mut total = 0u64;
    while client.io_read(&mut stream, &mut buf, READ_CHUNK).unwrap() > 0 {
        total += buf.len() as u64;
    }
    client.io_close(stream).unwrap();
    assert_eq!(total, bytes);
}
