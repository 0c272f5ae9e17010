//! The context of one request, passed first to every request function: who asks, in
//! which session, from which connection, with which dialog token, and whether its calls
//! count as use. Nothing about a request is read from task-locals or flags.

use purveyor_protocol::{ErrorCode, RemoteError};
use purveyor_provider::Caller;

use crate::session::Session;

/// Where a request came from on a connection, so that the watchdog can answer a call
/// whose thread is stuck in an in-daemon provider (`server::Site`).
pub(crate) trait CallSite: Sync {
    /// The client's id for the request.
    fn request(&self) -> u32;
    /// Answers the request with `error` and closes the connection, from the watchdog's
    /// thread while the request's own thread is stuck in `provider`.
    fn abandon(&self, error: RemoteError, provider: &str);
    /// Whether the reply may carry bytes spliced from a pipe (a local socket, the binary
    /// encoding: [`crate::pipes`]).
    fn splices(&self) -> bool {
        false
    }
}

/// One request's context. A plain bundle of borrowed parameters (fields are the API).
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a> {
    pub caller: &'a Caller,
    /// The session the request was made in; `None` for a one-off request
    /// ([`crate::Host::handle`]), which cannot hold anything between requests.
    pub session: Option<&'a Session>,
    /// The connection's request, when it came over a socket.
    pub site: Option<&'a dyn CallSite>,
    /// The token a provider may open an in-call dialog with (0: none).
    pub ui: u32,
    /// An exporter's scrape: its provider calls do not count as use, so periodic scrapes
    /// do not keep an otherwise idle provider loaded.
    pub passive: bool,
}

impl<'a> Cx<'a> {
    /// A request by `caller` outside any session.
    pub fn one_off(caller: &'a Caller) -> Self {
        Cx {
            caller,
            session: None,
            site: None,
            ui: 0,
            passive: false,
        }
    }

    /// A request made in `session`, from `site` if it came over a socket.
    pub fn in_session(session: &'a Session, site: Option<&'a dyn CallSite>) -> Self {
        Cx {
            caller: session.caller(),
            session: Some(session),
            site,
            ui: 0,
            passive: false,
        }
    }

    /// The session, for a request that needs one (`what` names it in the error).
    pub fn session(&self, what: &str) -> Result<&'a Session, RemoteError> {
        self.session.ok_or_else(|| {
            RemoteError::new(
                ErrorCode::Unsupported,
                format!("{what} needs a session (a connection); use Host::handle_in"),
            )
        })
    }
}
