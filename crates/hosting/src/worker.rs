//! The isolated worker (`purveyor worker`): loads provider libraries into a process of its
//! own and serves them over the provider channel on stdin/stdout (`docs/provider-abi.md`).
//!
//! The same library runs unchanged here and in the daemon: both go through
//! [`LibraryProvider`]. The thread that reads a request also answers it, then reads the
//! next: a fast call costs no hand-off and no wake-up of another thread. A slow call does
//! not stop the others: a watcher thread that sees calls running while nobody has read the
//! channel for a tick wakes a spare thread to read (or starts one), so the other
//! providers of a host group, and the answers to a call's dialog, wait at most about a
//! tick. A change (put, delete, method call) usually waits for the disk, so its thread
//! hands the channel to a spare before calling: concurrent changes reach the provider
//! together and can share one commit of its store. When the slow call ends, its thread
//! finds another reading and becomes a spare.
//! The worker exits when stdin closes (the host released it or died).
//!
//! Invariants: only the thread holding `input` reads the channel; a thread that cannot
//! take `input` waits as a spare, never on the lock, so finishing a call never wakes
//! another thread; while a call runs, some thread reads within about [`TICK`] (up to
//! [`MAX_THREADS`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, TryLockError};
use std::time::{Duration, Instant};

use purveyor_protocol::{
    Encoding, FaultKind, FrameBuffer, PROVIDER_ABI_VERSION, ProviderCall, ProviderFault,
    ProviderHello, ProviderReady, ProviderReply, ProviderRequest, ProviderResponse, decode,
    encode_frame,
};
use purveyor_provider::abi::panic_message;

use crate::library::LibraryProvider;
use crate::lock::{Locked, RwLocked};
use crate::procedures::ProcedureServer;

mod dialog_channels;
mod direct;

/// Threads started with the worker: one reader and spares.
const THREADS: usize = 4;
/// The most threads: a call waiting on a dialog holds its thread, and a thread is started
/// whenever none is left to read (the dialog's answer must be read by someone).
const MAX_THREADS: usize = 64;
/// How long calls may run with nobody reading the channel before a spare is woken.
const TICK: Duration = Duration::from_millis(2);
/// A watcher that has seen no call for this long parks until the next one.
const PARK_AFTER: Duration = Duration::from_secs(1);
const MAX_FRAME: u32 = 64 << 20;

struct Input {
    file: File,
    frames: FrameBuffer,
}

struct Worker {
    encoding: Encoding,
    input: Mutex<Input>,
    output: Arc<Mutex<File>>,
    /// Threads serving (reading, answering or waiting as spares).
    threads: AtomicUsize,
    /// Calls being answered.
    busy: AtomicUsize,
    /// A thread is in a read of the channel.
    reading: AtomicBool,
    /// When a request was last read, in nanoseconds after `epoch`.
    last_read: AtomicU64,
    epoch: Instant,
    spares: Mutex<Spares>,
    spare_wake: Condvar,
    /// The watcher parks after [`PARK_AFTER`] without calls; the first call wakes it.
    watcher_parked: AtomicBool,
    watcher_wake: Condvar,
    providers: RwLock<HashMap<String, Arc<LibraryProvider>>>,
    /// I/O procedure libraries, by provider name.
    procedures: RwLock<HashMap<String, Arc<ProcedureServer>>>,
    /// Direct channels open now.
    channels: AtomicUsize,
    /// The direct channels, for closing a provider's (a channel's thread holds it).
    open_channels: Mutex<direct::OpenChannels>,
    /// Each provider's direct use since the host last heard of it.
    uses: Mutex<HashMap<String, Arc<direct::UseReport>>>,
    /// Direct calls running now (for their deadlines).
    running: Mutex<direct::RunningCalls>,
    /// Dialogs' direct channels handed over and not yet given to their library.
    dialog_sockets: dialog_channels::Waiting,
}

/// Runs the worker until stdin closes. Returns the process exit code.
pub fn run() -> i32 {
    // The channel gets private copies of stdin and stdout; fd 1 then points at stderr and
    // fd 0 at /dev/null, so a provider that prints cannot corrupt the channel.
    let (input, output) = match private_channel() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("purveyor worker: cannot set up its channel: {e}");
            return 2;
        }
    };
    let attach = direct::attach_socket();
    // A strict sandbox, before the first request is read.
    if let Err(e) = crate::sandbox::apply_from_env() {
        eprintln!("purveyor worker: sandbox: {e}");
        return 2;
    }
    let mut input = Input {
        file: input,
        frames: FrameBuffer::new(MAX_FRAME),
    };
    let mut output = output;
    let hello: ProviderHello = match read_frame(&mut input) {
        Ok(Some(payload)) => match serde_json::from_slice(&payload) {
            Ok(hello) => hello,
            Err(e) => {
                eprintln!("purveyor worker: malformed hello: {e}");
                return 2;
            }
        },
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("purveyor worker: {e}");
            return 2;
        }
    };
    let mut frame = Vec::new();
    let ready = ProviderReady {
        abi: PROVIDER_ABI_VERSION,
    };
    if encode_frame(Encoding::Json, &ready, MAX_FRAME, &mut frame).is_err()
        || output.write_all(&frame).is_err()
    {
        return 2;
    }
    if hello.abi != PROVIDER_ABI_VERSION {
        eprintln!(
            "purveyor worker: the host speaks provider ABI version {}; this worker speaks version {PROVIDER_ABI_VERSION}",
            hello.abi
        );
        return 2;
    }
    let worker = Arc::new(Worker {
        encoding: hello.encoding,
        input: Mutex::new(input),
        output: Arc::new(Mutex::new(output)),
        threads: THREADS.into(),
        busy: 0.into(),
        reading: false.into(),
        last_read: 0.into(),
        epoch: Instant::now(),
        spares: Mutex::new(Spares::default()),
        spare_wake: Condvar::new(),
        watcher_parked: false.into(),
        watcher_wake: Condvar::new(),
        providers: RwLock::new(HashMap::new()),
        procedures: RwLock::new(HashMap::new()),
        channels: 0.into(),
        open_channels: Mutex::default(),
        uses: Mutex::new(HashMap::new()),
        running: Mutex::new(Default::default()),
        dialog_sockets: Default::default(),
    });
    if let Some(socket) = attach {
        let w = worker.clone();
        std::thread::spawn(move || w.take_channels(socket));
    }
    for _ in 1..THREADS {
        let w = worker.clone();
        std::thread::spawn(move || w.serve());
    }
    let w = worker.clone();
    std::thread::spawn(move || w.watch());
    worker.serve()
}

/// Threads waiting to be asked to read.
#[derive(Default)]
struct Spares {
    waiting: usize,
    /// Wake-ups asked for and not yet taken.
    wanted: usize,
}

impl Worker {
    /// Serves until the channel closes, then exits the process.
    fn serve(self: &Arc<Self>) -> ! {
        loop {
            let mut input = match self.input.try_lock() {
                Ok(input) => input,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    // Another thread reads: wait until the watcher needs one more.
                    self.wait_as_spare();
                    continue;
                }
            };
            self.reading.store(true, Ordering::SeqCst);
            let read = read_frame(&mut input);
            self.last_read.store(self.now(), Ordering::SeqCst);
            self.reading.store(false, Ordering::SeqCst);
            drop(input);
            let payload = match read {
                Ok(Some(p)) => p,
                Ok(None) => std::process::exit(0),
                Err(e) => {
                    eprintln!("purveyor worker: {e}");
                    std::process::exit(2);
                }
            };
            let request: ProviderRequest = match decode(self.encoding, &payload) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("purveyor worker: {e}");
                    std::process::exit(2);
                }
            };
            let id = request.id;
            // Dialog news is never answered, and must not wait behind a busy thread.
            let news = id == 0 && matches!(request.call, ProviderCall::Dialog { .. });
            if news {
                self.deliver_news(request);
                continue;
            }
            self.call_begins();
            if matches!(
                request.call,
                ProviderCall::Put { .. } | ProviderCall::Delete { .. } | ProviderCall::Call { .. }
            ) {
                // A change usually waits for the disk: the channel goes to another thread
                // now, so concurrent changes reach the provider together (and share its
                // store's commit) instead of queueing a tick behind this one.
                self.add_reader(&mut self.spares.locked());
            }
            let reply =
                catch_unwind(AssertUnwindSafe(|| self.answer(request))).unwrap_or_else(|panic| {
                    fault(
                        FaultKind::Failed,
                        format!("the provider panicked: {}", panic_message(&*panic)),
                    )
                });
            let mut frame = Vec::new();
            let response = ProviderResponse { id, reply };
            if let Err(e) = encode_frame(self.encoding, &response, MAX_FRAME, &mut frame) {
                let response = ProviderResponse {
                    id,
                    reply: fault(FaultKind::Failed, format!("cannot encode the reply: {e}")),
                };
                frame.clear();
                let _ = encode_frame(self.encoding, &response, MAX_FRAME, &mut frame);
            }
            let mut out = self.output.locked();
            if out.write_all(&frame).is_err() {
                std::process::exit(0);
            }
            drop(out);
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A call starts: counted busy, and the watcher woken if it parked.
    fn call_begins(&self) {
        if self.busy.fetch_add(1, Ordering::SeqCst) == 0
            && self.watcher_parked.swap(false, Ordering::SeqCst)
        {
            let _spares = self.spares.locked();
            self.watcher_wake.notify_one();
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Waits until the watcher asks for a reader.
    fn wait_as_spare(&self) {
        let mut spares = self.spares.locked();
        spares.waiting += 1;
        while spares.wanted == 0 {
            spares = self
                .spare_wake
                .wait(spares)
                .unwrap_or_else(|p| p.into_inner());
        }
        spares.wanted -= 1;
        spares.waiting -= 1;
    }

    /// The watcher: every tick while calls run, if nobody is reading and nobody has read
    /// for a tick, wakes a spare to read (or starts a thread when none is waiting).
    fn watch(self: Arc<Self>) {
        let mut last_busy = Instant::now();
        let mut spares = self.spares.locked();
        loop {
            spares = self
                .watcher_wake
                .wait_timeout(spares, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if self.busy.load(Ordering::SeqCst) == 0 {
                if last_busy.elapsed() >= PARK_AFTER {
                    // The host's counts of direct calls are brought up to date first.
                    drop(spares);
                    self.flush_uses();
                    spares = self.spares.locked();
                    self.watcher_parked.store(true, Ordering::SeqCst);
                    // A call that started before the flag was set is seen here.
                    while self.watcher_parked.load(Ordering::SeqCst)
                        && self.busy.load(Ordering::SeqCst) == 0
                    {
                        spares = self
                            .watcher_wake
                            .wait(spares)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                    self.watcher_parked.store(false, Ordering::SeqCst);
                    last_busy = Instant::now();
                }
                continue;
            }
            last_busy = Instant::now();
            // Direct calls: deadlines, and use the host must hear of. Not under the
            // spares lock: a reply may be written.
            drop(spares);
            self.check_running();
            spares = self.spares.locked();
            let quiet = self
                .now()
                .saturating_sub(self.last_read.load(Ordering::SeqCst));
            if self.reading.load(Ordering::SeqCst) || quiet < TICK.as_nanos() as u64 {
                continue;
            }
            self.add_reader(&mut spares);
        }
    }

    /// Wakes a spare to read the channel, or starts a thread when none is waiting (up to
    /// [`MAX_THREADS`]).
    fn add_reader(self: &Arc<Self>, spares: &mut Spares) {
        if spares.waiting > spares.wanted {
            spares.wanted += 1;
            self.spare_wake.notify_one();
        } else if self.threads.fetch_add(1, Ordering::SeqCst) < MAX_THREADS {
            let w = self.clone();
            std::thread::spawn(move || w.serve());
        } else {
            self.threads.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn answer(&self, request: ProviderRequest) -> ProviderReply {
        match &request.call {
            ProviderCall::Load { library } => {
                match LibraryProvider::open(Path::new(library), &request.provider).and_then(
                    |mut p| {
                        p.attach_host(self.dialog_line(&request.provider, p.encoding()))?;
                        Ok(p)
                    },
                ) {
                    Ok(p) => {
                        self.providers
                            .write_locked()
                            .insert(request.provider.clone(), Arc::new(p));
                        ProviderReply::Loaded
                    }
                    Err(e) => fault(FaultKind::Failed, e),
                }
            }
            ProviderCall::LoadIo { library } => {
                match ProcedureServer::from_library(Path::new(library)) {
                    Ok(server) => {
                        self.procedures
                            .write_locked()
                            .insert(request.provider.clone(), Arc::new(server));
                        ProviderReply::Loaded
                    }
                    Err(e) => fault(FaultKind::Failed, e),
                }
            }
            ProviderCall::CloseDirect { policy } => {
                self.close_channels(&request.provider, *policy);
                ProviderReply::Done {
                    result: None,
                    events: Vec::new(),
                }
            }
            ProviderCall::Release => {
                // Dropping the last reference runs the library's cleanup entry point.
                self.providers.write_locked().remove(&request.provider);
                self.procedures.write_locked().remove(&request.provider);
                ProviderReply::Released
            }
            call if call.is_io() => {
                let server = self
                    .procedures
                    .read_locked()
                    .get(&request.provider)
                    .cloned();
                match server {
                    Some(server) => server.answer(request.call, request.caller),
                    None => fault(
                        FaultKind::NotFound,
                        format!(
                            "this worker has no I/O procedure library {:?} loaded",
                            request.provider
                        ),
                    ),
                }
            }
            _ => {
                let provider = self.providers.read_locked().get(&request.provider).cloned();
                match provider {
                    Some(p) => p
                        .forward(&request)
                        .unwrap_or_else(|e| ProviderReply::Error(purveyor_provider::abi::fault(e))),
                    None => fault(
                        FaultKind::NotFound,
                        format!("this worker has no provider {:?} loaded", request.provider),
                    ),
                }
            }
        }
    }
}

impl Worker {
    /// The line a library's dialog messages take: to the host, named for `provider`.
    fn dialog_line(&self, provider: &str, library: Encoding) -> crate::library::HostLineFn {
        let (output, encoding, provider) =
            (self.output.clone(), self.encoding, provider.to_string());
        Box::new(move |bytes| {
            let Ok(mut message) = decode::<ProviderResponse>(library, bytes) else {
                eprintln!("purveyor worker: provider {provider} sent a malformed dialog message");
                return;
            };
            if let ProviderReply::Dialog {
                provider: named, ..
            } = &mut message.reply
            {
                named.clone_from(&provider);
            } else {
                return;
            }
            message.id = 0;
            let mut frame = Vec::new();
            if encode_frame(encoding, &message, MAX_FRAME, &mut frame).is_ok() {
                let mut out = output.locked();
                let _ = out.write_all(&frame);
            }
        })
    }
}

fn fault(kind: FaultKind, message: String) -> ProviderReply {
    ProviderReply::Error(ProviderFault { kind, message })
}

fn read_frame(input: &mut Input) -> Result<Option<Vec<u8>>, String> {
    loop {
        match input.frames.next_frame() {
            Ok(Some(p)) => return Ok(Some(p.to_vec())),
            Ok(None) => {}
            Err(e) => return Err(format!("bad frame from the host: {e}")),
        }
        let n = input
            .file
            .read(input.frames.spare())
            .map_err(|e| format!("reading from the host failed: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        input.frames.filled(n);
    }
}

/// Private copies of fds 0 and 1 for the channel; fd 0 becomes /dev/null, fd 1 stderr.
fn private_channel() -> std::io::Result<(File, File)> {
    let input = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let output = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let null = File::open("/dev/null")?;
    // SAFETY: dup2 on descriptors this process owns; fds 0 and 1 are replaced atomically
    // and the channel keeps its own copies made above.
    unsafe {
        if libc::dup2(null.as_raw_fd(), 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((input, output))
}
