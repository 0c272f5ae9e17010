//! Where to connect, and how.

use std::path::PathBuf;

use purveyor_protocol::Encoding;

/// Which host to talk to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Target {
    /// The daemon on the default socket if one answers, else an embedded host.
    #[default]
    Auto,
    /// The daemon on this socket; an error if none answers.
    Socket(PathBuf),
    /// A host inside this process, whether or not a daemon runs.
    Embedded,
    /// A daemon on another machine, over TLS (`docs/remote.md`): everything but direct
    /// channels and passed descriptors works as on the local socket.
    Remote(purveyor_remote::ClientSettings),
}

/// Which host a connected client talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Daemon {
        socket: PathBuf,
    },
    Embedded,
    /// A daemon reached over TLS at this address (`tls://HOST:PORT`).
    Remote {
        address: String,
    },
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub target: Target,
    /// The encoding after the handshake.
    pub encoding: Encoding,
    /// How this client names itself in the daemon's logs.
    pub client_name: String,
    /// For an embedded host: the manifest directories (the defaults when `None`).
    pub provider_dirs: Option<Vec<PathBuf>>,
    /// How long to wait for any one reply from a daemon before giving up.
    pub reply_timeout: std::time::Duration,
    /// This client shows in-call dialogs (install a [`crate::DialogUi`]); without it, a
    /// provider that asks for one is told "no UI available".
    pub ui: bool,
    /// Reads of a provider in an isolated worker may go on a direct channel to the worker
    /// (`docs/protocol.md`, "Direct channels"). On unless `PURVEYOR_DIRECT=0`.
    pub direct: bool,
    /// As a UI agent, take dialogs from providers in isolated workers on direct channels
    /// to the worker (`docs/dialogs.md`, "Direct channels"): their updates and this
    /// client's inputs skip the daemon. Only over a local socket, and only for a client
    /// that shows dialogs with a [`crate::DialogUi`] through [`crate::Client::next_event`]
    /// (a client reading raw pushes would not see the updates). Off by default.
    pub direct_dialogs: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            target: Target::Auto,
            encoding: Encoding::Binary,
            client_name: concat!("purveyor-client/", env!("CARGO_PKG_VERSION")).into(),
            provider_dirs: None,
            reply_timeout: std::time::Duration::from_secs(60),
            ui: false,
            direct: std::env::var_os("PURVEYOR_DIRECT").is_none_or(|v| v != "0"),
            direct_dialogs: false,
        }
    }
}

impl ConnectOptions {
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Whether this client shows in-call dialogs (see [`ConnectOptions::ui`]).
    pub fn ui(mut self, ui: bool) -> Self {
        self.ui = ui;
        self
    }

    /// Whether this agent takes dialogs on direct channels (see
    /// [`ConnectOptions::direct_dialogs`]).
    pub fn direct_dialogs(mut self, direct: bool) -> Self {
        self.direct_dialogs = direct;
        self
    }

    /// Whether reads may go on direct channels to isolated workers (see
    /// [`ConnectOptions::direct`]).
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    pub fn provider_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.provider_dirs = Some(dirs);
        self
    }

    pub(crate) fn socket_path(&self) -> Option<PathBuf> {
        match &self.target {
            Target::Auto => Some(purveyor_protocol::default_socket_path()),
            Target::Socket(path) => Some(path.clone()),
            Target::Embedded | Target::Remote(_) => None,
        }
    }
}
