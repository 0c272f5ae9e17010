//! What the blocking and async socket clients share: the hello they send, how they read the
//! welcome, and how they turn a server message into a reply.

use purveyor_protocol::{
    Encoding, Hello, Outcome, PROTOCOL_MINOR, PROTOCOL_VERSION, Push, Response, ServerMessage,
    Welcome, decode_server_message, encode_frame,
};

use crate::ClientError;

/// The hello frame.
pub(crate) fn hello_frame(
    encoding: Encoding,
    client: &str,
    ui: bool,
    direct_dialogs: bool,
) -> Vec<u8> {
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        minor: PROTOCOL_MINOR,
        encoding,
        client: client.into(),
        ui,
        direct_dialogs,
    };
    let mut out = Vec::new();
    encode_frame(Encoding::Json, &hello, u32::MAX, &mut out).expect("a hello always encodes");
    out
}

/// The server's answer to the hello: a welcome, or a goodbye that says why not.
pub(crate) fn parse_welcome(payload: &[u8], encoding: Encoding) -> Result<Welcome, ClientError> {
    if let Ok(welcome) = serde_json::from_slice::<Welcome>(payload) {
        if welcome.encoding != encoding || welcome.protocol != PROTOCOL_VERSION {
            return Err(ClientError::protocol(format!(
                "the server answered with protocol {} and encoding {}; asked for {PROTOCOL_VERSION} and {encoding}",
                welcome.protocol, welcome.encoding
            )));
        }
        return Ok(welcome);
    }
    match serde_json::from_slice::<ServerMessage>(payload) {
        Ok(ServerMessage::Goodbye { error }) => Err(error.into()),
        _ => Err(ClientError::protocol(format!(
            "the server's first frame is not a welcome: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ))),
    }
}

/// What one frame from the server means to the client.
pub(crate) enum Incoming {
    Reply(u32, Result<Response, ClientError>),
    /// A message for a subscription (or, later, a dialog): its handle and content.
    Push(u32, Push),
    Goodbye(ClientError),
}

pub(crate) fn parse_incoming(encoding: Encoding, payload: &[u8]) -> Result<Incoming, ClientError> {
    let msg: ServerMessage = decode_server_message(encoding, payload)
        .map_err(|e| ClientError::protocol(e.to_string()))?;
    Ok(match msg {
        ServerMessage::Reply { id, outcome } => Incoming::Reply(
            id,
            match outcome {
                Outcome::Ok(response) => Ok(response),
                Outcome::Err(error) => Err(error.into()),
            },
        ),
        ServerMessage::Push { handle, push } => Incoming::Push(handle, push),
        ServerMessage::Goodbye { error } => Incoming::Goodbye(error.into()),
    })
}

/// A hello that could not be written because the daemon had already closed the
/// connection: not an error yet, since the daemon closes that way only after saying why
/// (a connection limit's goodbye), which the handshake then reads. Any other error stands.
pub(crate) fn refused_early(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Ok(()),
        _ => Err(e),
    }
}
