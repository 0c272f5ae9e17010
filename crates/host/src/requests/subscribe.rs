//! Subscriptions: checked against the class's declared events, bounded per connection
//! (`conn.subscriptions`), held by the session, and holding their provider loaded.

use std::sync::Arc;

use purveyor_model::{Capability, ClassPath, Condition, EventDef, Identifier};
use purveyor_protocol::{ErrorCode, RemoteError, Response};

use crate::calls::loaded_for;
use crate::cx::Cx;
use crate::outcomes::schema_for;
use crate::state::Shared;

pub(super) async fn subscribe(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    event: Option<Identifier>,
    filter: Vec<Condition>,
) -> Result<Response, RemoteError> {
    let session = cx.session("subscribing")?;
    let (slot, loaded) = loaded_for(host, &class, Some(Capability::Subscribe)).await?;
    let schema = schema_for(&slot, &loaded, &class)?;
    let invalid = |m: String| RemoteError::new(ErrorCode::InvalidRequest, m);
    if schema.events().is_empty() {
        return Err(invalid(format!("class {class} declares no events")));
    }
    let events: Vec<&EventDef> = match &event {
        Some(name) => match schema.event(name.as_str()) {
            Some(def) => vec![def],
            None => {
                let have: Vec<&str> = schema.events().iter().map(|e| e.name.as_str()).collect();
                return Err(RemoteError::new(
                    ErrorCode::NotFound,
                    format!(
                        "class {class} has no event {:?} (it has {})",
                        name.as_str(),
                        have.join(", ")
                    ),
                ));
            }
        },
        None => schema.events().iter().collect(),
    };
    // A condition must fit every event it can apply to (one that has its property), and
    // at least one must have it.
    for condition in &filter {
        let mut applies = false;
        for def in &events {
            if def.property(condition.property.as_str()).is_some() {
                applies = true;
                condition.check(&class, def).map_err(invalid)?;
            }
        }
        if !applies {
            return Err(invalid(format!(
                "no event of {class}{} has a property {:?} to filter on",
                event
                    .as_ref()
                    .map(|e| format!(" named {e}"))
                    .unwrap_or_default(),
                condition.property.as_str()
            )));
        }
    }
    let limit = host.config().limits.conn_subscriptions;
    let held = session.sink().subscriptions();
    if held >= limit as usize {
        return Err(RemoteError::new(
            ErrorCode::LimitExceeded,
            format!(
                "this connection holds {held} subscriptions, the limit (conn.subscriptions = {limit}); unsubscribe some first"
            ),
        ));
    }
    let handle =
        host.events()
            .subscribe(class, event, filter, session.sink(), Box::new(slot.pin()));
    Ok(Response::Subscribed { handle })
}

pub(super) fn unsubscribe(
    host: &Shared,
    cx: &Cx<'_>,
    handle: u32,
) -> Result<Response, RemoteError> {
    let ended = cx
        .session
        .is_some_and(|s| host.events().unsubscribe(handle, s.sink()));
    if ended {
        Ok(Response::Done)
    } else {
        Err(RemoteError::new(
            ErrorCode::NotFound,
            format!("this connection has no subscription {handle}"),
        ))
    }
}
