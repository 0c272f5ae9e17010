//! `GET /v1/classes/{class}/events`: a class's events as Server-Sent Events
//! (`docs/http.md`, "Events").
//!
//! Each stream is a session of the request's identity holding one subscription, with the
//! same event and filters `subscribe` takes (`?event=NAME&filter=COND&filter=COND`). Every
//! message has an `id` (1, 2, … on this stream). Events are not kept: a client that
//! reconnects with `Last-Event-ID` is first sent a `lost` message saying that events after
//! that id may be missing. The stream ends when the client goes or the daemon stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{Stream, StreamExt};
use purveyor_host::Session;
use purveyor_model::{Condition, Identifier};
use purveyor_protocol::{ErrorCode, Push, Request, Response as Answer};

use crate::http::{Failure, Gateway, class_path, identity, schema};

/// How often a quiet stream sends a comment, so proxies and clients see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The most filters one stream may give.
const MAX_FILTERS: usize = 64;

pub(crate) async fn events(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(class): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let identity = identity(&gateway, &headers)?;
    let class = class_path(&class)?;
    let (event, filters) = params(query.as_deref().unwrap_or_default())?;
    let schema = schema(&gateway, &identity, &class).await?;
    let filter = filters
        .iter()
        .map(|text| Condition::parse_for_events(&schema, event.as_ref(), text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, e))?;
    let session = gateway.host.session(identity.caller.clone());
    let request = Request::Subscribe {
        class,
        event,
        filter,
    };
    match gateway.host.handle_in(request, &session).await? {
        Answer::Subscribed { .. } => {}
        other => return Err(crate::http::unexpected(&other)),
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let opened = Event::default().comment(format!("subscribed to {} events", schema.path()));
    let stream = Messages {
        session,
        stopping: gateway.stopping.clone(),
        queue: last
            .map(|after| {
                let data = serde_json::json!({ "lost": {
                    "after": after,
                    "reason": "events are not kept: those raised since that id may be missing"
                }});
                VecDeque::from([("lost", data.to_string())])
            })
            .unwrap_or_default(),
        next_id: 1,
    }
    .into_stream();
    // A comment first: the client knows the subscription is in place.
    let stream = futures_util::stream::once(async move { Ok(opened) }).chain(stream);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// `event=NAME` and each `filter=COND` of the query string (percent-decoded).
fn params(query: &str) -> Result<(Option<Identifier>, Vec<String>), Failure> {
    let bad =
        |message: String| Failure::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message);
    let mut event = None;
    let mut filters = Vec::new();
    for (key, value) in form_urlencoded(query) {
        match key.as_str() {
            "event" => {
                event = Some(Identifier::new(value.as_str()).map_err(|e| {
                    bad(format!(
                        "{:?} is not an event name: {e}",
                        purveyor_protocol::shorten(&value, 64)
                    ))
                })?);
            }
            "filter" if filters.len() < MAX_FILTERS => filters.push(value),
            "filter" => return Err(bad(format!("more than {MAX_FILTERS} filters"))),
            other => {
                return Err(bad(format!(
                    "unknown parameter {:?}: events take event=NAME and filter=CONDITION",
                    purveyor_protocol::shorten(other, 64)
                )));
            }
        }
    }
    Ok((event, filters))
}

/// `application/x-www-form-urlencoded` pairs: `+` is a space, `%XX` a byte.
fn form_urlencoded(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

fn decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One stream's state: its session (holding the subscription), the daemon's stop
/// signal, and messages waiting to be sent.
struct Messages {
    session: Session,
    stopping: tokio::sync::watch::Receiver<bool>,
    queue: VecDeque<(&'static str, String)>,
    next_id: u64,
}

impl Messages {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut m| async move {
            loop {
                if let Some((name, data)) = m.queue.pop_front() {
                    let event = Event::default()
                        .event(name)
                        .id(m.next_id.to_string())
                        .data(data);
                    m.next_id += 1;
                    return Some((Ok(event), m));
                }
                if *m.stopping.borrow() {
                    return None;
                }
                for (_, push) in m.session.sink().take() {
                    m.queue.push_back(message(&push));
                }
                if !m.queue.is_empty() {
                    continue;
                }
                let sink = m.session.sink().clone();
                tokio::select! {
                    () = sink.ready() => {}
                    changed = m.stopping.changed() => {
                        // The gateway is gone: so is the stream.
                        if changed.is_err() {
                            return None;
                        }
                    }
                }
            }
        })
    }
}

/// An SSE message for a push: named by its kind (`event`, `lost`, …), its data the
/// push's JSON form as the protocol has it.
fn message(push: &Push) -> (&'static str, String) {
    let name = match push {
        Push::Event { .. } => "event",
        Push::Lost { .. } => "lost",
        Push::Change { .. } => "change",
        _ => "message",
    };
    let data = serde_json::to_string(push).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("this push could not be written: {e}") }).to_string()
    });
    (name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded_and_checked() {
        let (event, filters) = params("event=changed&filter=name%3Dx+y&filter=n%3E2").unwrap();
        assert_eq!(event.unwrap().as_str(), "changed");
        assert_eq!(filters, ["name=x y", "n>2"]);
        assert!(params("colour=red").is_err());
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%C3%A9%"), "é%");
        assert_eq!(decode("é%é"), "é%é");
    }
}
