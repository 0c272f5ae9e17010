//! The blocking client.

// Without the embedded host, a socket is the only transport.
#![cfg_attr(not(feature = "embedded"), allow(irrefutable_let_patterns))]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use purveyor_model::{
    ClassPath, ClassSchema, Condition, Identifier, Instance, InstanceKey, NamespacePath, Value,
};
use purveyor_protocol::{
    ClassList, ClientMessage, Encoding, FrameBuffer, HostStatus, ProviderStatus, Push, QueryRows,
    Request, Response, encode_frame,
};

use crate::dialog::{DialogUi, OpenDialog, UiAction};
use crate::dialog_channels::DialogChannels;
use crate::direct::{DIRECT_SINCE, DirectRoutes, Lost, Plan, Use};
use crate::stream::Stream;
use crate::wire::{Incoming, hello_frame, parse_incoming, parse_welcome};
use crate::{ClientError, ConnectOptions, Mode, Target, typed};
use purveyor_protocol::DialogInput;
use purveyor_protocol::dialog_channel;

/// A blocking client. Requests go one at a time through [`Client::request`], or pipelined
/// through [`Client::send`] and [`Client::recv`].
pub struct Client {
    transport: Transport,
    mode: Mode,
    next_id: u32,
    /// Shows dialogs while this client waits, when the application installed one.
    ui: Option<Box<dyn DialogUi + Send>>,
    /// Requests the dialog driver sent, whose replies nobody waits for.
    internal: std::collections::HashSet<u32>,
    /// Requests whose replies nobody will collect, handed back by streams dropped with
    /// reads still in flight ([`crate::io::IoStream`]).
    pub(crate) orphans: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    /// Direct channels to isolated workers, when the daemon offers them and the options
    /// allow.
    direct: Option<DirectRoutes>,
}

enum Transport {
    Socket(SocketConn),
    #[cfg(feature = "embedded")]
    Embedded(Embedded),
}

struct SocketConn {
    stream: Stream,
    frames: FrameBuffer,
    out: Vec<u8>,
    encoding: Encoding,
    max_frame: u32,
    /// Replies that arrived while waiting for another.
    early: HashMap<u32, Result<Response, ClientError>>,
    /// Pushes (subscription events) that arrived while waiting for a reply.
    pushes: std::collections::VecDeque<(u32, Push)>,
    /// Requests sent whose replies have not arrived ([`Client::in_flight`]).
    outstanding: std::collections::BTreeSet<u32>,
    /// Descriptors the daemon passed (`io_open` with `pass_fd`), in arrival order.
    pub(crate) fds: std::collections::VecDeque<std::os::fd::OwnedFd>,
    /// How many of `fds` belong to replies parsed and not yet collected (`claim_fds`).
    unclaimed: usize,
    /// Dialogs' direct channels (`ConnectOptions::direct_dialogs`).
    dialogs: DialogChannels,
    /// For messages: the daemon's socket and how long a reply may take.
    path: PathBuf,
    reply_timeout: Duration,
}

#[cfg(feature = "embedded")]
struct Embedded {
    runtime: tokio::runtime::Runtime,
    host: purveyor_host::Host,
    /// This client's caller and subscriptions.
    session: purveyor_host::Session,
    /// Replies of pipelined sends, in send order.
    queued: std::collections::VecDeque<(u32, Result<Response, ClientError>)>,
    pushes: std::collections::VecDeque<(u32, Push)>,
}

impl Client {
    /// Connects as `options` say. With [`Target::Auto`], a missing or refused socket means
    /// "no daemon": the client runs an embedded host instead.
    pub fn connect(options: &ConnectOptions) -> Result<Client, ClientError> {
        match (&options.target, options.socket_path()) {
            (Target::Remote(settings), _) => Self::connect_remote(settings, options),
            (Target::Embedded, _) | (_, None) => Self::embedded(options),
            (Target::Socket(_), Some(path)) => Self::connect_socket(&path, options),
            (Target::Auto, Some(path)) => match Self::connect_socket(&path, options) {
                Err(ClientError::Connect { source, .. })
                    if matches!(
                        source.kind(),
                        ErrorKind::NotFound | ErrorKind::ConnectionRefused
                    ) =>
                {
                    Self::embedded(options)
                }
                other => other,
            },
        }
    }

    /// Connects to the daemon on `path`.
    pub fn connect_socket(path: &Path, options: &ConnectOptions) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mode = Mode::Daemon {
            socket: path.to_owned(),
        };
        Self::over(Stream::Unix(stream), path, mode, options)
    }

    /// Connects to a daemon on another machine over TLS (`docs/remote.md`).
    pub fn connect_remote(
        settings: &purveyor_remote::ClientSettings,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let address = settings.address.to_string();
        // TLS on this thread: no bridge thread to wake for each request.
        let stream = purveyor_remote::TlsClient::connect(settings)
            .map_err(|e| crate::error::remote_connect(&address, e))?;
        let mut client = Self::over(
            Stream::Tls(Box::new(stream)),
            Path::new(&address),
            Mode::Remote {
                address: address.clone(),
            },
            options,
        )?;
        // Direct channels pass a socket: never across machines.
        client.direct = None;
        Ok(client)
    }

    /// The handshake on `stream` (a daemon's socket, or TLS to one), named `path` in
    /// errors.
    fn over(
        mut stream: Stream,
        path: &Path,
        mode: Mode,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        stream
            .set_read_timeout(Some(options.reply_timeout))
            .map_err(connect_err)?;
        let direct_dialogs = options.direct_dialogs && matches!(stream, Stream::Unix(_));
        let hello = stream.write_all(&hello_frame(
            options.encoding,
            &options.client_name,
            options.ui,
            direct_dialogs,
        ));
        // A daemon that refuses the connection (a connection limit) says why and closes
        // before reading the hello: the reason is still there to read.
        hello
            .or_else(crate::wire::refused_early)
            .map_err(connect_err)?;
        let mut frames = FrameBuffer::new(purveyor_protocol::MAX_FRAME_DEFAULT);
        let welcome = loop {
            if let Some(payload) = frames
                .next_frame()
                .map_err(|e| ClientError::protocol(e.to_string()))?
            {
                break parse_welcome(payload, options.encoding)?;
            }
            read_some(
                &mut stream,
                &mut frames,
                &mut Default::default(),
                path,
                options.reply_timeout,
                HANDSHAKE,
            )?;
        };
        Ok(Client {
            transport: Transport::Socket(SocketConn {
                stream,
                frames,
                out: Vec::with_capacity(1024),
                encoding: options.encoding,
                max_frame: welcome.max_frame,
                early: HashMap::new(),
                pushes: Default::default(),
                outstanding: Default::default(),
                fds: Default::default(),
                unclaimed: 0,
                dialogs: DialogChannels::default(),
                path: path.to_owned(),
                reply_timeout: options.reply_timeout,
            }),
            mode,
            next_id: 1,
            ui: None,
            internal: Default::default(),
            orphans: Default::default(),
            direct: (options.direct && !options.ui && welcome.minor >= DIRECT_SINCE)
                .then(DirectRoutes::default),
        })
    }

    #[cfg(feature = "embedded")]
    fn embedded(options: &ConnectOptions) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Internal {
                message: format!("cannot start the embedded host's runtime: {e}"),
            })?;
        let host = crate::default_host(
            purveyor_protocol::HostMode::Embedded,
            options.provider_dirs.clone(),
        );
        let session = host.session(purveyor_host::Caller::current_process());
        session.set_shows(options.ui);
        Ok(Client {
            transport: Transport::Embedded(Embedded {
                runtime,
                host,
                session,
                queued: Default::default(),
                pushes: Default::default(),
            }),
            mode: Mode::Embedded,
            next_id: 1,
            ui: None,
            internal: Default::default(),
            orphans: Default::default(),
            direct: None,
        })
    }

    #[cfg(not(feature = "embedded"))]
    fn embedded(_options: &ConnectOptions) -> Result<Client, ClientError> {
        Err(ClientError::Unsupported {
            message: "this build of the client has no embedded host (feature `embedded`)".into(),
        })
    }

    /// Which host this client talks to.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Sends one request and waits for its reply. A get, enumerate, put or delete of a
    /// provider in an isolated worker may go on a direct channel to it (see
    /// [`ConnectOptions::direct`]).
    pub fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        if self.direct.is_some() && self.ui.is_none() && Use::of(&request).is_some() {
            return self.routed(request);
        }
        let id = self.send(request)?;
        self.recv_for(id)
    }

    /// A get, enumerate, put or delete: on its class's direct channel if it has one
    /// (through the daemon if that fails — a write only if the worker cannot have made
    /// it), else through the daemon, asking for a channel once the class has been used
    /// often enough.
    fn routed(&mut self, request: Request) -> Result<Response, ClientError> {
        let (class, what) = Use::of(&request).expect("only reads and writes are routed");
        let write = what != Use::Read;
        let routes = self.direct.as_mut().expect("checked by the caller");
        match routes.plan(class, what) {
            Plan::Channel(at) => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let routes = self.direct.as_mut().expect("checked by the caller");
                match routes.call(at, id, &request) {
                    // Not made: the daemon makes it, and this class's next writes of its
                    // kind (a provider's own `unsupported` looks the same: it made nothing,
                    // and is asked once more, through the daemon); or the worker no longer
                    // serves the provider: the channel is done.
                    Ok(Err(ClientError::Unsupported { .. })) if write => {
                        routes.refused_write(class, what)
                    }
                    Ok(Err(ClientError::ShuttingDown { .. })) if write => {
                        routes.drop_channel(at);
                    }
                    Ok(reply) => return reply,
                    Err(Lost {
                        sent: true,
                        provider,
                    }) if write => {
                        let verb = if what == Use::Put { "put" } else { "delete" };
                        return Err(ClientError::ProviderFailed {
                            message: format!(
                                "provider {provider} closed its direct channel before answering the {verb} of {class} (its worker exited or was killed): the {verb} may or may not have been made"
                            ),
                            provider: Some(provider),
                        });
                    }
                    // The channel failed: the daemon restarts the provider, or says how
                    // it died.
                    Err(_) => {}
                }
                let id = self.send(request)?;
                self.recv_for(id)
            }
            Plan::Daemon => {
                let id = self.send(request)?;
                self.recv_for(id)
            }
            Plan::DaemonThenAttach => {
                let class = class.clone();
                let id = self.send(request)?;
                let reply = self.recv_for(id);
                if reply.is_ok() {
                    self.attach(class);
                }
                reply
            }
        }
    }

    /// Asks the daemon for a direct channel for `class`; `unsupported` routes the class
    /// through the daemon for good, another error until more reads.
    fn attach(&mut self, class: ClassPath) {
        let asked = self.send(Request::Direct {
            class: class.clone(),
        });
        let answer = asked.and_then(|id| self.recv_for(id));
        let timeout = match &self.transport {
            Transport::Socket(conn) => conn.reply_timeout,
            #[cfg(feature = "embedded")]
            Transport::Embedded(_) => return,
        };
        let fd = match &answer {
            Ok(Response::Direct { .. }) => self.take_fd(),
            _ => None,
        };
        let Some(routes) = self.direct.as_mut() else {
            return;
        };
        match (answer, fd) {
            (
                Ok(Response::Direct {
                    provider, classes, ..
                }),
                Some(fd),
            ) => {
                let stream = UnixStream::from(fd);
                match stream.set_read_timeout(Some(timeout)) {
                    Ok(()) => routes.attached(provider.to_string(), classes, stream),
                    Err(_) => routes.refused(&class, false),
                }
            }
            (Err(ClientError::Unsupported { .. }), _) => routes.refused(&class, true),
            _ => routes.refused(&class, false),
        }
    }

    /// The providers this client reads through direct channels, with their classes.
    pub fn direct_channels(&self) -> Vec<(String, Vec<ClassPath>)> {
        self.direct
            .as_ref()
            .map(DirectRoutes::channels)
            .unwrap_or_default()
    }

    /// The next descriptor the daemon passed, in arrival order.
    pub(crate) fn take_fd(&mut self) -> Option<std::os::fd::OwnedFd> {
        match &mut self.transport {
            Transport::Socket(conn) => {
                conn.unclaimed = conn.unclaimed.saturating_sub(1);
                conn.fds.pop_front()
            }
            #[cfg(feature = "embedded")]
            Transport::Embedded(_) => None,
        }
    }

    /// Whether this client talks to a daemon over a socket (which can pass descriptors).
    pub(crate) fn on_socket(&self) -> bool {
        matches!(self.transport, Transport::Socket(_))
    }

    /// The ids of requests sent on this connection whose replies have not arrived (the
    /// dialog driver's own excepted). After the connection fails (a goodbye, a lost
    /// network: `docs/remote.md`), these are the requests whose fate is unknown.
    pub fn in_flight(&self) -> Vec<u32> {
        match &self.transport {
            Transport::Socket(conn) => conn
                .outstanding
                .iter()
                .copied()
                .filter(|id| !self.internal.contains(id))
                .collect(),
            // An embedded host answers each request as it is sent.
            #[cfg(feature = "embedded")]
            Transport::Embedded(_) => Vec::new(),
        }
    }

    /// Sends a request without waiting; returns its id. Collect replies with
    /// [`Client::recv`], in whatever order the host finishes them.
    pub fn send(&mut self, request: Request) -> Result<u32, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        match &mut self.transport {
            Transport::Socket(conn) => {
                let msg = ClientMessage::Request { id, request };
                let before = conn.out.len();
                if let Err(e) = encode_frame(conn.encoding, &msg, conn.max_frame, &mut conn.out) {
                    conn.out.truncate(before);
                    return Err(ClientError::InvalidRequest {
                        message: e.to_string(),
                    });
                }
                conn.outstanding.insert(id);
                // Written when a read would wait (or a batch is full): requests sent back
                // to back while replies are at hand go out in one write.
                if conn.out.len() >= SEND_BATCH {
                    conn.flush()?;
                }
            }
            #[cfg(feature = "embedded")]
            Transport::Embedded(e) => {
                let result = match self.ui.as_deref_mut() {
                    // The provider may open an in-call dialog: show it while the call runs.
                    Some(ui) => e.handle_showing(request, ui),
                    None => e.runtime.block_on(e.host.handle_in(request, &e.session)),
                };
                e.queued.push_back((id, result.map_err(Into::into)));
            }
        }
        Ok(id)
    }

    /// Shows dialogs with `ui` from now on: those of this client's calls (connect with
    /// [`ConnectOptions::ui`]) and, for an agent, spontaneous ones.
    pub fn set_dialog_ui(&mut self, ui: Box<dyn DialogUi + Send>) {
        self.ui = Some(ui);
    }

    /// Makes this client its user's UI agent; returns the agent's handle.
    pub fn register_agent(&mut self) -> Result<u32, ClientError> {
        match self.request(Request::RegisterAgent)? {
            Response::Agent { handle } => Ok(handle),
            other => Err(typed::unexpected("agent", &other)),
        }
    }

    /// Says dialog `handle` is shown (the driver does this itself after
    /// [`DialogUi::open`]).
    pub fn dialog_ready(&mut self, handle: u32) -> Result<(), ClientError> {
        typed::done(self.request(Request::DialogReady { handle })?)
    }

    /// Sends input (a button, fields, data) to the provider of dialog `handle`.
    pub fn dialog_send(&mut self, handle: u32, input: DialogInput) -> Result<(), ClientError> {
        match self
            .route(vec![Request::DialogSend { handle, input }])
            .pop()
        {
            Some(request) => typed::done(self.request(request)?),
            None => Ok(()),
        }
    }

    /// Closes dialog `handle`; its provider is told the user closed it.
    pub fn dialog_close(&mut self, handle: u32) -> Result<(), ClientError> {
        let request = self.route(vec![Request::DialogClose { handle }]);
        typed::done(self.request(request.into_iter().next().expect("a close is sent"))?)
    }

    /// Passes the dialog pushes waiting on the socket to the UI, and sends what it does.
    fn drive_dialogs(&mut self) -> Result<(), ClientError> {
        let Transport::Socket(conn) = &mut self.transport else {
            return Ok(());
        };
        if self.ui.is_none() {
            return Ok(());
        }
        let (dialog, rest) = conn.pushes.drain(..).partition(|(_, push)| is_dialog(push));
        conn.pushes = rest;
        let mut requests = Vec::new();
        for (handle, push) in Vec::from(dialog) {
            requests.extend(self.drive_socket_push(handle, push));
        }
        for request in requests {
            let id = self.send(request)?;
            self.internal.insert(id);
        }
        Ok(())
    }

    /// [`Client::drive_push`] for a push that came through the daemon: a dialog's channel
    /// is read out first, so what the provider sent on it comes before its close, and
    /// before the updates it sent through the daemon once the channel was full.
    fn drive_socket_push(&mut self, handle: u32, push: Push) -> Vec<Request> {
        let mut requests = Vec::new();
        if let Transport::Socket(conn) = &mut self.transport {
            let earlier = match &push {
                Push::DialogClosed { .. } => conn.dialogs.close(handle),
                Push::DialogUpdate { .. } => conn.dialogs.pending(handle),
                _ => Vec::new(),
            };
            let closing = matches!(push, Push::DialogClosed { .. });
            for update in earlier {
                let answer = self.drive_push(handle, Push::DialogUpdate { update });
                // A closed dialog's answers have nowhere to go.
                if !closing {
                    requests.extend(answer);
                }
            }
        }
        requests.extend(self.drive_push(handle, push));
        requests
    }

    /// What the UI does with a dialog push, as the requests to send (those its direct
    /// channel carries already sent).
    fn drive_push(&mut self, handle: u32, push: Push) -> Vec<Request> {
        let Some(ui) = self.ui.as_deref_mut() else {
            return Vec::new();
        };
        let opening = matches!(push, Push::DialogOpen { .. });
        let requests = drive(ui, handle, push);
        if let (true, Transport::Socket(conn)) = (opening, &mut self.transport) {
            conn.dialogs.shown(handle);
        }
        self.route(requests)
    }

    /// Sends the inputs of dialogs with a direct channel on it; closes the channel of a
    /// dialog the UI closes. Returns what still goes to the daemon.
    fn route(&mut self, requests: Vec<Request>) -> Vec<Request> {
        let Transport::Socket(conn) = &mut self.transport else {
            return requests;
        };
        if conn.dialogs.is_empty() {
            return requests;
        }
        let mut out = Vec::with_capacity(requests.len());
        for request in requests {
            match request {
                Request::DialogSend { handle, input } => {
                    if let Some(input) = conn.dialogs.send(handle, input) {
                        out.push(Request::DialogSend { handle, input });
                    }
                }
                Request::DialogClose { handle } => {
                    // The inputs written stay readable by the provider; the close comes
                    // after them.
                    conn.dialogs.close(handle);
                    out.push(Request::DialogClose { handle });
                }
                other => out.push(other),
            }
        }
        out
    }

    /// Shows the updates that came on direct channels, and sends what the UI does.
    fn drive_channels(&mut self) -> Result<(), ClientError> {
        let Transport::Socket(conn) = &mut self.transport else {
            return Ok(());
        };
        if conn.dialogs.is_empty() {
            return Ok(());
        }
        for (handle, update) in conn.dialogs.arrived() {
            for request in self.drive_push(handle, Push::DialogUpdate { update }) {
                self.request(request).map(drop).or_else(benign)?;
            }
        }
        Ok(())
    }

    /// The next push when this client has direct dialog channels: one already read, or
    /// the first to come while the channels are watched too (`None` when only a channel
    /// spoke, or at `give_up`).
    fn next_push_or_channel(
        &mut self,
        give_up: Option<std::time::Instant>,
    ) -> Result<Option<(u32, Push)>, ClientError> {
        let Transport::Socket(conn) = &mut self.transport else {
            return Ok(None);
        };
        if let Some(push) = conn.next_push(Some(Duration::ZERO))? {
            return Ok(Some(push));
        }
        let Stream::Unix(socket) = &conn.stream else {
            return Ok(None);
        };
        let socket = std::os::fd::AsRawFd::as_raw_fd(socket);
        let mut fds = conn.dialogs.fds();
        fds.push(socket);
        // Waits in slices of an hour when there is no limit.
        let left = give_up.map_or(Duration::from_secs(3600), |at| {
            at.saturating_duration_since(std::time::Instant::now())
        });
        conn.flush()?;
        dialog_channel::wait_readable(&fds, left);
        if !purveyor_protocol::poll::readable_now(socket) {
            return Ok(None);
        }
        // One read of what came: a push, or a reply kept for its caller.
        conn.next_push(Some(Duration::from_millis(1)))
    }

    /// Forgets the replies to requests `ids`: those that arrived are dropped, the others
    /// will be when they arrive.
    pub(crate) fn forget_replies(&mut self, ids: impl IntoIterator<Item = u32>) {
        let Transport::Socket(conn) = &mut self.transport else {
            return;
        };
        for id in ids {
            if conn.early.remove(&id).is_none() && conn.outstanding.contains(&id) {
                self.internal.insert(id);
            }
        }
    }

    /// Takes in the requests dropped streams left in flight.
    fn adopt_orphans(&mut self) {
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        if !orphans.is_empty() {
            self.forget_replies(orphans);
        }
    }

    /// The next reply to arrive, with its request id.
    pub fn recv(&mut self) -> Result<(u32, Result<Response, ClientError>), ClientError> {
        self.adopt_orphans();
        match &mut self.transport {
            Transport::Socket(conn) => {
                // Replies to the dialog driver's own requests are nobody's.
                let internal = &mut self.internal;
                conn.early.retain(|id, _| !internal.remove(id));
                if let Some(&id) = conn.early.keys().next() {
                    let reply = conn.early.remove(&id).expect("key just seen");
                    return Ok((id, reply));
                }
                loop {
                    let showing = self.ui.is_some();
                    let Transport::Socket(conn) = &mut self.transport else {
                        unreachable!("matched above")
                    };
                    match conn.next_reply(showing)? {
                        Some((id, _)) if self.internal.remove(&id) => {}
                        Some(reply) => return Ok(reply),
                        None => self.drive_dialogs()?,
                    }
                }
            }
            #[cfg(feature = "embedded")]
            Transport::Embedded(e) => {
                e.queued
                    .pop_front()
                    .ok_or_else(|| ClientError::InvalidRequest {
                        message: "recv called with no request in flight".into(),
                    })
            }
        }
    }

    pub(crate) fn recv_for(&mut self, id: u32) -> Result<Response, ClientError> {
        self.adopt_orphans();
        loop {
            if let Transport::Socket(conn) = &mut self.transport
                && let Some(reply) = conn.early.remove(&id)
            {
                return reply;
            }
            let showing = self.ui.is_some();
            let (got, reply) = match &mut self.transport {
                Transport::Socket(conn) => match conn.next_reply(showing)? {
                    Some(reply) => reply,
                    None => {
                        self.drive_dialogs()?;
                        continue;
                    }
                },
                #[cfg(feature = "embedded")]
                Transport::Embedded(_) => self.recv()?,
            };
            if got == id {
                return reply;
            }
            if self.internal.remove(&got) {
                continue;
            }
            if let Transport::Socket(conn) = &mut self.transport {
                conn.early.insert(got, reply);
            }
        }
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        typed::pong(self.request(Request::Ping)?)
    }

    pub fn status(&mut self) -> Result<HostStatus, ClientError> {
        typed::status(self.request(Request::Status)?)
    }

    /// Every class in `namespace` (all when `None`), and the providers that failed to say.
    pub fn list_classes(
        &mut self,
        namespace: Option<&NamespacePath>,
    ) -> Result<ClassList, ClientError> {
        typed::classes(self.request(Request::ListClasses {
            namespace: namespace.cloned(),
        })?)
    }

    pub fn describe(&mut self, class: &ClassPath) -> Result<ClassSchema, ClientError> {
        typed::class(self.request(Request::Describe {
            class: class.clone(),
        })?)
    }

    /// Instances of `class` matching `selector` (all of them for an empty selector).
    pub fn enumerate(
        &mut self,
        class: &ClassPath,
        selector: &InstanceKey,
    ) -> Result<Vec<Instance>, ClientError> {
        typed::instances(self.request(Request::Enumerate {
            class: class.clone(),
            selector: selector.clone(),
        })?)
    }

    /// Runs a SQL query over classes (`docs/query.md`); with `plan`, the answer also says
    /// what each class was asked.
    pub fn query(&mut self, sql: &str, plan: bool) -> Result<QueryRows, ClientError> {
        typed::rows(self.request(Request::Query {
            sql: sql.to_string(),
            plan,
        })?)
    }

    /// The instance of `class` with this full key (empty for a singleton).
    pub fn get(&mut self, class: &ClassPath, key: &InstanceKey) -> Result<Instance, ClientError> {
        typed::instance(self.request(Request::Get {
            class: class.clone(),
            key: key.clone(),
        })?)
    }

    pub fn providers(&mut self) -> Result<Vec<ProviderStatus>, ClientError> {
        typed::providers(self.request(Request::ListProviders)?)
    }

    /// Creates or updates an instance; returns once the provider has committed it.
    pub fn put(&mut self, class: &ClassPath, instance: Instance) -> Result<(), ClientError> {
        typed::done(self.request(typed::put(class, instance))?)
    }

    /// Deletes the instance with this full key.
    pub fn delete(&mut self, class: &ClassPath, key: &InstanceKey) -> Result<(), ClientError> {
        typed::done(self.request(typed::delete(class, key))?)
    }

    /// Calls `method` of the instance with `key` (empty for a singleton or a static
    /// method); returns its result.
    pub fn call(
        &mut self,
        class: &ClassPath,
        method: &Identifier,
        key: &InstanceKey,
        args: Instance,
    ) -> Result<Option<Value>, ClientError> {
        typed::returned(self.request(typed::call(class, method, key, args))?)
    }

    /// Subscribes to `class`'s events (all, or the one named) whose data satisfies every
    /// condition; returns the subscription's handle. Read them with
    /// [`Client::next_event`].
    pub fn subscribe(
        &mut self,
        class: &ClassPath,
        event: Option<&Identifier>,
        filter: Vec<Condition>,
    ) -> Result<u32, ClientError> {
        typed::subscribed(self.request(typed::subscribe(class, event, filter))?)
    }

    /// Watches `class` for instances created, deleted and modified (`docs/query.md`,
    /// "Change events"): the host polls it every `interval` and diffs by key; changes to
    /// instances that satisfy every condition come as [`Push::Change`] through
    /// [`Client::next_event`]. With `counters`, a counter that moves is a modification.
    pub fn watch_changes(
        &mut self,
        class: &ClassPath,
        filter: Vec<purveyor_model::Condition>,
        interval: std::time::Duration,
        counters: bool,
    ) -> Result<u32, ClientError> {
        typed::subscribed(self.request(Request::WatchChanges {
            class: class.clone(),
            filter,
            interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
            counters,
        })?)
    }

    pub fn unsubscribe(&mut self, handle: u32) -> Result<(), ClientError> {
        typed::done(self.request(Request::Unsubscribe { handle })?)
    }

    /// The next push (an event, or a report of events lost because this client read too
    /// slowly) with its subscription handle; `None` if none arrives within `timeout`
    /// (`None`: wait as long as it takes).
    pub fn next_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<(u32, Push)>, ClientError> {
        if self.ui.is_none() {
            return self.next_push(timeout);
        }
        // Dialog pushes go to the UI, as do updates on direct channels; the first other
        // push is returned.
        let give_up = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            self.drive_channels()?;
            let left = give_up.map(|at| at.saturating_duration_since(std::time::Instant::now()));
            let channels = matches!(&self.transport, Transport::Socket(c) if !c.dialogs.is_empty());
            let next = if channels {
                self.next_push_or_channel(give_up)?
            } else {
                self.next_push(left)?
            };
            let Some((handle, push)) = next else {
                if channels && !left.is_some_and(|l| l.is_zero()) {
                    continue;
                }
                return Ok(None);
            };
            if !is_dialog(&push) {
                return Ok(Some((handle, push)));
            }
            for request in self.drive_socket_push(handle, push) {
                self.request(request).map(drop).or_else(benign)?;
            }
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(None);
            }
        }
    }

    fn next_push(&mut self, timeout: Option<Duration>) -> Result<Option<(u32, Push)>, ClientError> {
        match &mut self.transport {
            Transport::Socket(conn) => conn.next_push(timeout),
            #[cfg(feature = "embedded")]
            Transport::Embedded(e) => {
                if e.pushes.is_empty() {
                    let sink = e.session.sink().clone();
                    let wait = async {
                        loop {
                            let got = sink.take();
                            if !got.is_empty() {
                                return got;
                            }
                            sink.ready().await;
                        }
                    };
                    let got = match timeout {
                        Some(t) => e
                            .runtime
                            .block_on(async { tokio::time::timeout(t, wait).await.ok() }),
                        None => Some(e.runtime.block_on(wait)),
                    };
                    e.pushes.extend(got.unwrap_or_default());
                }
                Ok(e.pushes.pop_front())
            }
        }
    }

    /// Lets a quarantined provider load again; returns its status.
    pub fn enable_provider(
        &mut self,
        name: &purveyor_model::ProviderName,
    ) -> Result<Vec<ProviderStatus>, ClientError> {
        typed::providers(self.request(Request::EnableProvider { name: name.clone() })?)
    }

    /// Makes the daemon re-read its manifests, access policy and `http.toml`
    /// (`docs/lifecycle.md`, "Reload"): what changed, or why nothing did.
    pub fn reload(&mut self) -> Result<purveyor_protocol::ReloadReport, ClientError> {
        typed::reloaded(self.request(Request::Reload)?)
    }
}

/// A reply and the id of its request.
type Reply = (u32, Result<Response, ClientError>);

/// What a dialog push makes the UI do, as the requests that carry it to the host: a
/// dialog that opened is signalled ready once `open` has shown it.
fn drive(ui: &mut (dyn DialogUi + Send), handle: u32, push: Push) -> Vec<Request> {
    let act = |action: UiAction| match action {
        UiAction::Wait => None,
        UiAction::Send(input) => Some(Request::DialogSend { handle, input }),
        UiAction::Close => Some(Request::DialogClose { handle }),
    };
    match push {
        Push::DialogOpen {
            provider,
            request,
            deadline_ms,
            form,
        } => {
            let action = ui.open(&OpenDialog {
                handle,
                provider,
                request,
                deadline_ms,
                form,
            });
            std::iter::once(Request::DialogReady { handle })
                .chain(act(action))
                .collect()
        }
        Push::DialogUpdate { update } => act(ui.update(handle, &update)).into_iter().collect(),
        Push::DialogClosed { reason } => {
            ui.closed(handle, &reason);
            Vec::new()
        }
        _ => Vec::new(),
    }
}

fn is_dialog(push: &Push) -> bool {
    matches!(
        push,
        Push::DialogOpen { .. }
            | Push::DialogUpdate { .. }
            | Push::DialogClosed { .. }
            | Push::DialogChannel
    )
}

/// A dialog request that failed because the dialog closed meanwhile is no error.
fn benign(e: ClientError) -> Result<(), ClientError> {
    match &e {
        ClientError::NotFound { .. } => Ok(()),
        _ => Err(e),
    }
}

#[cfg(feature = "embedded")]
impl Embedded {
    /// Answers `request` while showing the dialogs it opens with `ui`.
    fn handle_showing(
        &mut self,
        request: Request,
        ui: &mut (dyn DialogUi + Send),
    ) -> Result<Response, purveyor_protocol::RemoteError> {
        let Embedded {
            runtime,
            host,
            session,
            pushes,
            ..
        } = self;
        runtime.block_on(async {
            let call = host.handle_in(request, session);
            tokio::pin!(call);
            loop {
                tokio::select! {
                    result = &mut call => return result,
                    () = session.sink().ready() => {
                        for (handle, push) in session.sink().take() {
                            if !is_dialog(&push) {
                                pushes.push_back((handle, push));
                                continue;
                            }
                            for request in drive(ui, handle, push) {
                                // The dialog may have closed meanwhile: nothing to do.
                                let _ = host.handle_in(request, session).await;
                            }
                        }
                    }
                }
            }
        })
    }
}

/// Requests encoded and not yet written are written once they reach this many bytes, or
/// before any read that would wait.
const SEND_BATCH: usize = 64 * 1024;

impl Drop for SocketConn {
    fn drop(&mut self) {
        // Requests sent and never waited for still go (a close, a forgotten stream's) —
        // within the reply timeout: a daemon that reads nothing must not hang the drop.
        if !self.out.is_empty()
            && self
                .stream
                .set_write_timeout(Some(self.reply_timeout))
                .is_ok()
        {
            let _ = self.flush();
        }
    }
}

impl SocketConn {
    /// Writes the requests [`Client::send`] encoded. Called before every read that may
    /// wait, so a reply is never awaited for a request still here.
    fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(&self.out);
        self.out.clear();
        written.map_err(|e| self.stream.error(e, false))
    }

    /// The next reply; with `showing`, `None` as soon as a dialog push arrives (the
    /// caller shows it: the reply may wait for it).
    fn next_reply(&mut self, showing: bool) -> Result<Option<Reply>, ClientError> {
        loop {
            if let Some((id, data)) = self.take_io_data()? {
                self.outstanding.remove(&id);
                return Ok(Some((id, Ok(Response::IoData(data)))));
            }
            let frame = self
                .frames
                .next_frame()
                .map_err(|e| ClientError::protocol(e.to_string()))?;
            if let Some(payload) = frame {
                let incoming = parse_incoming(self.encoding, payload)?;
                self.claim_fds(&incoming);
                match incoming {
                    Incoming::Reply(id, reply) => {
                        self.outstanding.remove(&id);
                        return Ok(Some((id, reply)));
                    }
                    Incoming::Push(handle, push) => {
                        let dialog = is_dialog(&push);
                        self.pushes.push_back((handle, push));
                        if dialog && showing {
                            return Ok(None);
                        }
                        continue;
                    }
                    Incoming::Goodbye(error) => return Err(error),
                }
            }
            self.flush()?;
            read_some(
                &mut self.stream,
                &mut self.frames,
                &mut self.fds,
                &self.path,
                self.reply_timeout,
                "a request",
            )?;
        }
    }
}

impl SocketConn {
    /// Takes the descriptor a `dialog_channel` push names as it is parsed: the one after
    /// those of the replies parsed before it and not yet collected (a reply's is collected
    /// by its caller, in order).
    fn claim_fds(&mut self, incoming: &Incoming) {
        match incoming {
            Incoming::Reply(
                _,
                Ok(Response::IoOpened { fd: true, .. } | Response::Direct { .. }),
            ) => self.unclaimed += 1,
            Incoming::Push(handle, Push::DialogChannel) => {
                if let Some(fd) = self.fds.remove(self.unclaimed) {
                    self.dialogs.add(*handle, fd);
                }
            }
            _ => {}
        }
    }

    /// A large `io_data` reply whose head has arrived, read straight into its own vector:
    /// its bytes are copied once, from the socket, instead of into the frame buffer and
    /// again out of it.
    fn take_io_data(&mut self) -> Result<Option<(u32, Vec<u8>)>, ClientError> {
        if self.encoding != Encoding::Binary {
            return Ok(None);
        }
        let Some((id, head, len)) = self.frames.io_data_head(DIRECT_READ) else {
            return Ok(None);
        };
        let arrived = &self.frames.unparsed()[head..];
        let mut data = Vec::with_capacity(len);
        data.extend_from_slice(&arrived[..arrived.len().min(len)]);
        self.frames.discard(head + data.len());
        let mut got = data.len();
        data.resize(len, 0);
        self.flush()?;
        while got < len {
            got += read_into(
                &mut self.stream,
                &mut data[got..],
                &mut self.fds,
                &self.path,
                self.reply_timeout,
                "a request",
            )?;
        }
        Ok(Some((id, data)))
    }

    fn next_push(&mut self, timeout: Option<Duration>) -> Result<Option<(u32, Push)>, ClientError> {
        let give_up = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if let Some(push) = self.pushes.pop_front() {
                return Ok(Some(push));
            }
            if let Some(payload) = self
                .frames
                .next_frame()
                .map_err(|e| ClientError::protocol(e.to_string()))?
            {
                let incoming = parse_incoming(self.encoding, payload)?;
                self.claim_fds(&incoming);
                match incoming {
                    Incoming::Reply(id, reply) => {
                        self.outstanding.remove(&id);
                        self.early.insert(id, reply);
                    }
                    Incoming::Push(handle, push) => return Ok(Some((handle, push))),
                    Incoming::Goodbye(error) => return Err(error),
                }
                continue;
            }
            let left = match give_up {
                Some(at) => match at.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(None),
                },
                None => None,
            };
            self.flush()?;
            self.stream.set_read_timeout(left)?;
            let read = self.stream.recv(self.frames.spare(), &mut self.fds);
            self.stream.set_read_timeout(Some(self.reply_timeout))?;
            match read {
                Ok(0) => {
                    return Err(ClientError::protocol(format!(
                        "the daemon at {} closed the connection",
                        self.path.display()
                    )));
                }
                Ok(n) => self.frames.filled(n),
                // A read timeout (`SO_RCVTIMEO`) is EAGAIN; ETIMEDOUT is a dead TCP
                // connection (keepalive, `TCP_USER_TIMEOUT`).
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.stream.error(e, false)),
            }
        }
    }
}

/// Reads what has arrived into `frames`. A timeout, or the daemon closing the connection,
/// is an error that names the socket and what was awaited.
fn read_some(
    stream: &mut Stream,
    frames: &mut FrameBuffer,
    fds: &mut std::collections::VecDeque<std::os::fd::OwnedFd>,
    path: &Path,
    timeout: Duration,
    awaiting: &str,
) -> Result<(), ClientError> {
    // A new frame is read in a small piece first, so a large `io_data` reply's head can
    // be seen before its bytes land in the frame buffer (`SocketConn::take_io_data`).
    let fresh = frames.unparsed().is_empty();
    let spare = frames.spare();
    let spare = if fresh {
        let n = spare.len().min(FIRST_READ);
        &mut spare[..n]
    } else {
        spare
    };
    let n = read_into(stream, spare, fds, path, timeout, awaiting)?;
    frames.filled(n);
    Ok(())
}

/// A frame at least this large that is an `io_data` reply is read straight into its
/// vector.
const DIRECT_READ: usize = 64 * 1024;
/// The most read into an empty frame buffer at once.
const FIRST_READ: usize = 16 * 1024;

/// Reads what has arrived into `into` (at least one byte); a timeout, or the daemon
/// closing the connection, is an error that names the socket and what was awaited.
fn read_into(
    stream: &mut Stream,
    into: &mut [u8],
    fds: &mut std::collections::VecDeque<std::os::fd::OwnedFd>,
    path: &Path,
    timeout: Duration,
    awaiting: &str,
) -> Result<usize, ClientError> {
    // The daemon answers most requests within microseconds: look before blocking, so
    // the reply does not have to wake this thread on a halted CPU
    // (`purveyor_protocol::poll`).
    stream.poll_briefly();
    match stream.recv(into, fds) {
        Ok(0) => Err(ClientError::protocol(format!(
            "the daemon at {} closed the connection during {awaiting}",
            path.display()
        ))),
        Ok(n) => Ok(n),
        // A read timeout (`SO_RCVTIMEO`) is EAGAIN; ETIMEDOUT is a dead TCP connection.
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(ClientError::Timeout {
            provider: None,
            message: format!(
                "the daemon at {} did not answer {awaiting} within {timeout:?}",
                path.display()
            ),
        }),
        Err(e) => Err(stream.error(e, awaiting == HANDSHAKE)),
    }
}

/// What the handshake is called in errors (and how a read knows it is one).
const HANDSHAKE: &str = "the handshake";

#[cfg(feature = "embedded")]
impl Drop for Embedded {
    fn drop(&mut self) {
        // Run the providers' cleanup hooks before the process moves on.
        self.runtime.block_on(self.host.shutdown());
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
