//! Fuzz targets: every decoder that takes untrusted bytes, driven by bolero.
//!
//! Under `cargo test` each target runs on its kept inputs (`tests/__fuzz__/TARGET/corpus`
//! and `crashes`: seeds and every input that ever broke something) and then on random
//! inputs for `BOLERO_RANDOM_TEST_TIME_MS` (1 s by default): the short budget CI runs.
//! `bench/fuzz [SECS]` runs them longer, coverage-guided when `cargo-bolero` is installed
//! (`docs/performance.md`, "Fuzzing"). Each target asserts what must hold for any input:
//! no panic, no hang, memory bounded by the input, and a value that decodes encodes again.
//!
//! Each prints its executions per second (`--nocapture` shows them).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use purveyor_protocol::{
    ClientMessage, DirectAttach, Encoding, FrameBuffer, Hello, ProviderRequest, ProviderResponse,
    ServerMessage, decode, decode_server_message, encode_frame, encode_payload,
    encode_server_frame,
};

/// Runs `target` on bolero's inputs, counting them; prints the rate when done. A macro,
/// so that `check!` is in each test: cargo-bolero finds a target by where `check!` is.
macro_rules! run {
    ($name:literal, $target:expr) => {{
        let count = AtomicU64::new(0);
        let started = Instant::now();
        let target = typed($target);
        bolero::check!().for_each(|input: &[u8]| {
            count.fetch_add(1, Ordering::Relaxed);
            target(input);
        });
        let n = count.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "fuzz target {}: {n} executions in {secs:.2} s ({:.0}/s)",
            $name,
            n as f64 / secs.max(1e-9)
        );
    }};
}

/// Gives a closure its argument type (`&[u8]` of any lifetime).
fn typed<F: Fn(&[u8]) + std::panic::RefUnwindSafe>(f: F) -> F {
    f
}

/// Decodes a message in both encodings; what decodes must encode again, and decode to
/// something that encodes the same.
fn messages<T>(input: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    for encoding in [Encoding::Binary, Encoding::Json] {
        if let Ok(message) = decode::<T>(encoding, input) {
            let mut once = Vec::new();
            encode_payload(encoding, &message, &mut once).expect("what decodes encodes");
            let again: T = decode(encoding, &once).expect("what was encoded decodes");
            let mut twice = Vec::new();
            encode_payload(encoding, &again, &mut twice).expect("and encodes again");
            assert_eq!(once, twice, "{encoding:?}: not stable");
        }
    }
}

/// Frames cut from any bytes, arriving in chunks of any size: no panic, and the buffer
/// never much larger than what arrived.
#[test]
fn frames() {
    run!("frames", |input| {
        let Some((&step, bytes)) = input.split_first() else {
            return;
        };
        let step = usize::from(step).max(1);
        let mut frames = FrameBuffer::new(1 << 16);
        let mut fed = 0;
        for chunk in bytes.chunks(step) {
            let spare = frames.spare();
            let n = spare.len().min(chunk.len());
            spare[..n].copy_from_slice(&chunk[..n]);
            frames.filled(n);
            fed += n;
            assert!(frames.capacity() <= 2 * (fed + 16 * 1024) + 4096);
            while let Ok(Some(_)) = frames.next_frame() {}
        }
    });
}

/// What a client sends the daemon (and a worker on a direct channel), and the envelope
/// the server reads to answer a bad request.
#[test]
fn client_messages() {
    run!("client_messages", |input| {
        messages::<ClientMessage>(input);
        for encoding in [Encoding::Binary, Encoding::Json] {
            let _ = ClientMessage::request_id(encoding, input);
        }
    });
}

/// What the daemon sends a client (replies, pushes, goodbyes); and the hand codec for
/// replies carrying instances (`purveyor_model::wire`), which must agree with serde on
/// any bytes: the same message (the same bytes again) or the same error.
#[test]
fn server_messages() {
    run!("server_messages", |input| {
        messages::<ServerMessage>(input);
        for encoding in [Encoding::Binary, Encoding::Json] {
            match (
                decode_server_message(encoding, input),
                decode::<ServerMessage>(encoding, input),
            ) {
                (Ok(ours), Ok(theirs)) => {
                    let (mut x, mut y) = (Vec::new(), Vec::new());
                    encode_server_frame(encoding, &ours, u32::MAX, &mut x).unwrap();
                    encode_frame(encoding, &theirs, u32::MAX, &mut y).unwrap();
                    assert_eq!(x, y, "{encoding:?}: the hand codec disagrees with serde");
                }
                (Err(ours), Err(theirs)) => assert_eq!(ours, theirs),
                (ours, theirs) => panic!("{encoding:?}: hand {ours:?}, serde {theirs:?}"),
            }
        }
    });
}

/// A client's hello, and what the host tells a worker of a direct channel (both JSON).
#[test]
fn hellos_and_attaches() {
    run!("hellos_and_attaches", |input| {
        let _ = serde_json::from_slice::<Hello>(input);
        let _ = serde_json::from_slice::<DirectAttach>(input);
    });
}

/// What either end of a dialog's direct channel reads from the other (a provider's
/// updates, an application's inputs): as one message, and as a stream of frames on a
/// socket, ending at the peer's end without a panic or a hang.
#[test]
fn dialog_channels() {
    use purveyor_protocol::DialogMessage;
    use purveyor_protocol::dialog_channel::{DialogChannel, Received};
    run!("dialog_channels", |input| {
        messages::<DialogMessage>(input);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // Within what one socket holds, so the write never waits for the reader.
        let bytes = &input[..input.len().min(64 << 10)];
        std::io::Write::write_all(&mut &theirs, bytes).unwrap();
        drop(theirs);
        let mut channel = DialogChannel::new(ours.into()).unwrap();
        for _ in 0..=bytes.len() {
            if channel.read() == Received::Ended {
                return;
            }
        }
        panic!("a channel of {} bytes did not end", bytes.len());
    });
}

/// What a provider process or library answers the host.
#[test]
fn provider_responses() {
    run!("provider_responses", |input| {
        messages::<ProviderResponse>(input)
    });
}

/// What the host sends a worker (a worker decodes it).
#[test]
fn provider_requests() {
    run!("provider_requests", |input| {
        messages::<ProviderRequest>(input)
    });
}

thread_local! {
    /// One scratch directory per thread, reused by every execution on it.
    static SCRATCH: tempfile::TempDir = tempfile::tempdir().unwrap();
}

/// Writes `input` as the file `name` of this thread's scratch directory; gives its path.
fn as_file(name: &str, input: &[u8]) -> std::path::PathBuf {
    let path = SCRATCH.with(|dir| dir.path().join(name));
    std::fs::write(&path, input).unwrap();
    path
}

/// A counter file: checked, then read whole.
#[test]
fn counter_files() {
    run!("counter_files", |input| {
        let path = as_file("x.counters", input);
        if let Ok(file) = purveyor_counters::CounterFile::open(&path) {
            let _ = file.snapshot();
            let _ = file.instances();
        }
    });
}

/// A PCP MMV file: checked, then every class read.
#[test]
fn mmv_files() {
    run!("mmv_files", |input| {
        let path = as_file("x", input);
        let _ = purveyor_app_counters::read_mmv_file(&path);
    });
}

/// Manifests, the access policy and the gateway's configuration, from any text.
#[test]
fn configuration_files() {
    run!("configuration_files", |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        let path = Path::new("/fuzz/x.toml");
        let _ = purveyor_host::Manifest::parse(
            text,
            purveyor_host::ManifestSource::File(path.to_owned()),
            Some("x"),
        );
        let _ = purveyor_host::AccessPolicy::parse(path, text);
        let _ = purveyor_gateway::GatewayConfig::parse(path, text);
    });
}

/// I/O names (`backup.tar+etc/hosts`).
#[test]
fn io_names() {
    run!("io_names", |input| {
        if let Ok(text) = std::str::from_utf8(input)
            && let Ok(name) = purveyor_io::IoName::parse(text)
        {
            // What parses displays, and parses again to the same.
            let shown = name.to_string();
            assert_eq!(
                purveyor_io::IoName::parse(&shown)
                    .map(|n| n.to_string())
                    .ok(),
                Some(shown)
            );
        }
    });
}

/// Tar archives and gzip streams, read through the built-in procedures.
#[test]
fn tar_and_gzip() {
    run!("tar_and_gzip", |input| {
        let registry = purveyor_io::Registry::new();
        let tar = as_file("x.tar", input);
        let dir = tar.parent().unwrap().to_owned();
        as_file("x.gz", input);
        for name in ["x.tar+hosts", "x.tar+a/b", "x.gz+"] {
            let name = format!("{}/{name}", dir.display());
            if let Ok(mut stream) = registry.open(&name, purveyor_io::OpenMode::Read) {
                // Bounded: never more out of a gzip stream than a fixed budget.
                let mut out = Vec::new();
                let _ = (&mut stream).take(16 << 20).read_to_end(&mut out);
            }
        }
    });
}
