//! The async client: many requests in flight from many tasks over one connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use purveyor_model::{
    ClassPath, ClassSchema, Condition, Identifier, Instance, InstanceKey, NamespacePath, Value,
};
use purveyor_protocol::{
    ClassList, ClientMessage, Encoding, FrameBuffer, HostStatus, ProviderStatus, Push, PushQueue,
    QueryRows, Request, Response, encode_frame,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The halves of a connection's stream: a daemon's socket, or TLS to a remote one.
type ReadStream = Box<dyn AsyncRead + Send + Unpin>;
type WriteStream = Box<dyn AsyncWrite + Send + Unpin>;
/// What a failed read or write of a remote connection means ([`purveyor_remote::explain`]).
type Explain = Arc<dyn Fn(&std::io::Error, bool) -> ClientError + Send + Sync>;
use tokio::sync::oneshot;

use crate::wire::{Incoming, hello_frame, parse_incoming, parse_welcome};
use crate::{ClientError, ConnectOptions, Mode, Target, typed};

type Reply = Result<Response, ClientError>;
type Pending = Arc<Mutex<PendingState>>;

/// An async client. Clone-free sharing: methods take `&self`, so tasks can share one
/// client (behind an `Arc`) and their requests are pipelined on one connection.
pub struct AsyncClient {
    transport: Transport,
    mode: Mode,
    /// Pushes taken from the queue and not yet returned by `next_event`.
    taken: Mutex<std::collections::VecDeque<(u32, Push)>>,
}

enum Transport {
    Socket(Socket),
    #[cfg(feature = "embedded")]
    Embedded {
        host: purveyor_host::Host,
        session: purveyor_host::Session,
    },
}

struct Socket {
    writer: tokio::sync::Mutex<WriteStream>,
    pending: Pending,
    pushes: Arc<Pushes>,
    next_id: AtomicU32,
    encoding: Encoding,
    max_frame: u32,
    reader: tokio::task::JoinHandle<()>,
}

/// Pushes the reader received, bounded like the server's queue, and their wake-up.
struct Pushes {
    queue: PushQueue,
    notify: tokio::sync::Notify,
}

/// Pushes the client keeps before the application reads them; more are dropped and
/// reported as lost.
const PUSH_QUEUE: usize = 4096;

#[derive(Default)]
struct PendingState {
    waiting: HashMap<u32, oneshot::Sender<Reply>>,
    /// Set when the connection ends; later requests fail with it.
    closed: Option<String>,
}

impl AsyncClient {
    /// Connects as `options` say; see [`crate::Client::connect`].
    pub async fn connect(options: &ConnectOptions) -> Result<AsyncClient, ClientError> {
        match (&options.target, options.socket_path()) {
            (Target::Remote(settings), _) => Self::connect_remote(settings, options).await,
            (Target::Embedded, _) | (_, None) => Self::embedded(options),
            (Target::Socket(_), Some(path)) => Self::connect_socket(&path, options).await,
            (Target::Auto, Some(path)) => match Self::connect_socket(&path, options).await {
                Err(ClientError::Connect { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    Self::embedded(options)
                }
                other => other,
            },
        }
    }

    /// Connects to the daemon on `path`.
    pub async fn connect_socket(
        path: &Path,
        options: &ConnectOptions,
    ) -> Result<AsyncClient, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let mode = Mode::Daemon {
            socket: path.to_owned(),
        };
        Self::over(stream, path, mode, options, None).await
    }

    /// Connects to a daemon on another machine over TLS (`docs/remote.md`), read and
    /// written on this runtime's tasks.
    pub async fn connect_remote(
        settings: &purveyor_remote::ClientSettings,
        options: &ConnectOptions,
    ) -> Result<AsyncClient, ClientError> {
        let address = settings.address.to_string();
        let stream = purveyor_remote::connect_tls(settings)
            .await
            .map_err(|e| crate::error::remote_connect(&address, e))?;
        let mode = Mode::Remote {
            address: address.clone(),
        };
        let shown = address.clone();
        let explain: Explain = Arc::new(move |e, before_welcome| {
            let (code, message) = purveyor_remote::explain(&shown, e, before_welcome);
            purveyor_protocol::RemoteError::new(code, message).into()
        });
        Self::over(stream, Path::new(&address), mode, options, Some(explain)).await
    }

    /// The handshake on `stream` (a daemon's socket, or a bridge to one), named `path` in
    /// errors.
    async fn over<S>(
        mut stream: S,
        path: &Path,
        mode: Mode,
        options: &ConnectOptions,
        explain: Option<Explain>,
    ) -> Result<AsyncClient, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        // Direct dialog channels are the blocking client's (its `next_event` reads them).
        let frame = hello_frame(options.encoding, &options.client_name, options.ui, false);
        let hello = match stream.write_all(&frame).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        // A daemon that refuses the connection (a connection limit) says why and closes
        // before reading the hello: the reason is still there to read.
        hello
            .or_else(crate::wire::refused_early)
            .map_err(connect_err)?;
        let mut frames = FrameBuffer::new(purveyor_protocol::MAX_FRAME_DEFAULT);
        let handshake = async {
            loop {
                if let Some(payload) = frames
                    .next_frame()
                    .map_err(|e| ClientError::protocol(e.to_string()))?
                {
                    return parse_welcome(payload, options.encoding);
                }
                let n = match stream.read(frames.spare()).await {
                    Ok(n) => n,
                    Err(e) => {
                        return Err(match &explain {
                            Some(explain) => explain(&e, true),
                            None => e.into(),
                        });
                    }
                };
                if n == 0 {
                    return Err(ClientError::protocol(
                        "the daemon closed the connection during the handshake",
                    ));
                }
                frames.filled(n);
            }
        };
        let welcome = tokio::time::timeout(options.reply_timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout {
                provider: None,
                message: "the daemon did not answer the handshake in time".into(),
            })??;
        let (read, write) = tokio::io::split(stream);
        let (read, write): (ReadStream, WriteStream) = (Box::new(read), Box::new(write));
        let pending: Pending = Arc::default();
        let pushes = Arc::new(Pushes {
            queue: PushQueue::new(PUSH_QUEUE),
            notify: tokio::sync::Notify::new(),
        });
        let reader = tokio::spawn(read_replies(
            read,
            frames,
            options.encoding,
            (pending.clone(), pushes.clone()),
            explain,
        ));
        Ok(AsyncClient {
            transport: Transport::Socket(Socket {
                writer: tokio::sync::Mutex::new(write),
                pending,
                pushes,
                next_id: AtomicU32::new(1),
                encoding: options.encoding,
                max_frame: welcome.max_frame,
                reader,
            }),
            mode,
            taken: Default::default(),
        })
    }

    #[cfg(feature = "embedded")]
    fn embedded(options: &ConnectOptions) -> Result<AsyncClient, ClientError> {
        let host = crate::default_host(
            purveyor_protocol::HostMode::Embedded,
            options.provider_dirs.clone(),
        );
        let session = host.session(purveyor_host::Caller::current_process());
        Ok(AsyncClient {
            transport: Transport::Embedded { host, session },
            mode: Mode::Embedded,
            taken: Default::default(),
        })
    }

    #[cfg(not(feature = "embedded"))]
    fn embedded(_options: &ConnectOptions) -> Result<AsyncClient, ClientError> {
        Err(ClientError::Unsupported {
            message: "this build of the client has no embedded host (feature `embedded`)".into(),
        })
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Sends one request and waits for its reply. Other tasks' requests proceed meanwhile.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        match &self.transport {
            Transport::Socket(socket) => socket.request(request).await,
            #[cfg(feature = "embedded")]
            Transport::Embedded { host, session } => {
                host.handle_in(request, session).await.map_err(Into::into)
            }
        }
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        typed::pong(self.request(Request::Ping).await?)
    }

    pub async fn status(&self) -> Result<HostStatus, ClientError> {
        typed::status(self.request(Request::Status).await?)
    }

    pub async fn list_classes(
        &self,
        namespace: Option<&NamespacePath>,
    ) -> Result<ClassList, ClientError> {
        let request = Request::ListClasses {
            namespace: namespace.cloned(),
        };
        typed::classes(self.request(request).await?)
    }

    pub async fn describe(&self, class: &ClassPath) -> Result<ClassSchema, ClientError> {
        let request = Request::Describe {
            class: class.clone(),
        };
        typed::class(self.request(request).await?)
    }

    pub async fn enumerate(
        &self,
        class: &ClassPath,
        selector: &InstanceKey,
    ) -> Result<Vec<Instance>, ClientError> {
        let request = Request::Enumerate {
            class: class.clone(),
            selector: selector.clone(),
        };
        typed::instances(self.request(request).await?)
    }

    /// Runs a SQL query over classes (`docs/query.md`); with `plan`, the answer also says
    /// what each class was asked.
    pub async fn query(&self, sql: &str, plan: bool) -> Result<QueryRows, ClientError> {
        typed::rows(
            self.request(Request::Query {
                sql: sql.to_string(),
                plan,
            })
            .await?,
        )
    }

    pub async fn get(&self, class: &ClassPath, key: &InstanceKey) -> Result<Instance, ClientError> {
        let request = Request::Get {
            class: class.clone(),
            key: key.clone(),
        };
        typed::instance(self.request(request).await?)
    }

    pub async fn providers(&self) -> Result<Vec<ProviderStatus>, ClientError> {
        typed::providers(self.request(Request::ListProviders).await?)
    }

    /// Makes the daemon re-read its manifests, access policy and `http.toml`.
    pub async fn reload(&self) -> Result<purveyor_protocol::ReloadReport, ClientError> {
        typed::reloaded(self.request(Request::Reload).await?)
    }

    /// Creates or updates an instance; returns once the provider has committed it.
    pub async fn put(&self, class: &ClassPath, instance: Instance) -> Result<(), ClientError> {
        typed::done(self.request(typed::put(class, instance)).await?)
    }

    /// Deletes the instance with this full key.
    pub async fn delete(&self, class: &ClassPath, key: &InstanceKey) -> Result<(), ClientError> {
        typed::done(self.request(typed::delete(class, key)).await?)
    }

    /// Calls `method` of the instance with `key` (empty for a singleton or a static
    /// method); returns its result.
    pub async fn call(
        &self,
        class: &ClassPath,
        method: &Identifier,
        key: &InstanceKey,
        args: Instance,
    ) -> Result<Option<Value>, ClientError> {
        typed::returned(self.request(typed::call(class, method, key, args)).await?)
    }

    /// Subscribes to `class`'s events (all, or the one named) whose data satisfies every
    /// condition; returns the handle. Read them with [`AsyncClient::next_event`].
    pub async fn subscribe(
        &self,
        class: &ClassPath,
        event: Option<&Identifier>,
        filter: Vec<Condition>,
    ) -> Result<u32, ClientError> {
        typed::subscribed(self.request(typed::subscribe(class, event, filter)).await?)
    }

    /// Watches `class` for instances created, deleted and modified (see
    /// `Client::watch_changes`); the changes come through [`AsyncClient::next_event`].
    pub async fn watch_changes(
        &self,
        class: &ClassPath,
        filter: Vec<purveyor_model::Condition>,
        interval: std::time::Duration,
        counters: bool,
    ) -> Result<u32, ClientError> {
        typed::subscribed(
            self.request(Request::WatchChanges {
                class: class.clone(),
                filter,
                interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
                counters,
            })
            .await?,
        )
    }

    pub async fn unsubscribe(&self, handle: u32) -> Result<(), ClientError> {
        typed::done(self.request(Request::Unsubscribe { handle }).await?)
    }

    /// The next push (an event, or a report of events lost because this client read too
    /// slowly) with its subscription handle. Waits for one; fails when the connection
    /// closes. One task should read events; requests go on meanwhile.
    pub async fn next_event(&self) -> Result<(u32, Push), ClientError> {
        loop {
            if let Some(push) = self.lock_taken().pop_front() {
                return Ok(push);
            }
            match &self.transport {
                Transport::Socket(socket) => {
                    let woken = socket.pushes.notify.notified();
                    let got = socket.pushes.queue.take();
                    if !got.is_empty() {
                        self.lock_taken().extend(got);
                        continue;
                    }
                    let closed = socket
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .closed
                        .clone();
                    if let Some(why) = closed {
                        return Err(ClientError::protocol(why));
                    }
                    woken.await;
                }
                #[cfg(feature = "embedded")]
                Transport::Embedded { session, .. } => {
                    let got = session.sink().take();
                    if got.is_empty() {
                        session.sink().ready().await;
                    }
                    self.lock_taken().extend(got);
                }
            }
        }
    }

    fn lock_taken(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u32, Push)>> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Socket {
    async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_frame(
            self.encoding,
            &ClientMessage::Request { id, request },
            self.max_frame,
            &mut frame,
        )
        .map_err(|e| ClientError::InvalidRequest {
            message: e.to_string(),
        })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(why) = &pending.closed {
                return Err(ClientError::protocol(why.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        let written = {
            let mut writer = self.writer.lock().await;
            match writer.write_all(&frame).await {
                // TLS holds written bytes until flushed.
                Ok(()) => writer.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = written {
            self.forget(id);
            return Err(e.into());
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(ClientError::protocol(
                "the connection closed before the reply",
            )),
        }
    }

    fn forget(&self, id: u32) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .remove(&id);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads replies and hands each to the request that waits for it. When the connection
/// ends, every waiting request fails with the reason.
async fn read_replies(
    mut read: ReadStream,
    mut frames: FrameBuffer,
    encoding: Encoding,
    (pending, pushes): (Pending, Arc<Pushes>),
    explain: Option<Explain>,
) {
    let why = loop {
        match frames.next_frame() {
            Ok(Some(payload)) => match parse_incoming(encoding, payload) {
                Ok(Incoming::Reply(id, reply)) => {
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .waiting
                        .remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(reply);
                    }
                    continue;
                }
                Ok(Incoming::Push(handle, push)) => {
                    pushes.queue.offer(handle, push);
                    pushes.notify.notify_one();
                    continue;
                }
                Ok(Incoming::Goodbye(error)) => break error.to_string(),
                Err(error) => break error.to_string(),
            },
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        match read.read(frames.spare()).await {
            Ok(0) => break "the daemon closed the connection".to_owned(),
            Ok(n) => frames.filled(n),
            Err(e) => match &explain {
                Some(explain) => break explain(&e, false).to_string(),
                None => break format!("reading from the daemon failed: {e}"),
            },
        }
    };
    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
    pending.closed = Some(why.clone());
    for (_, tx) in pending.waiting.drain() {
        let _ = tx.send(Err(ClientError::protocol(why.clone())));
    }
    // A task waiting for an event learns that none will come.
    pushes.notify.notify_one();
}
