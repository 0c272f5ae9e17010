//! Subscriptions: checked against the class's declared events, bounded per connection
//! (`conn.subscriptions`), held by the session, and holding their provider loaded.
//!
//! Change subscriptions (`watch_changes`) poll the class instead: one poller per class,
//! interval and caller however many subscribe ([`crate::events::WatchKey`]), enumerating
//! as that caller (access, loading and deadlines as a plain `enumerate`; each poll counts
//! as use) and diffing by key ([`crate::changes`]). The first poll sets the baseline; a
//! poll that fails is skipped (the next compares with the last that succeeded). The poller
//! stops at its first tick after the last subscriber left.

use std::sync::Arc;

use std::time::Duration;

use purveyor_model::{Capability, ClassPath, ClassSchema, Condition, EventDef, Identifier};
use purveyor_protocol::{ErrorCode, RemoteError, Response};
use purveyor_provider::Caller;

use crate::access::Permission;
use crate::calls::{allowed, loaded_for};
use crate::changes::{Snapshot, diff, snapshot, view};
use crate::cx::Cx;
use crate::events::{Watch, WatchKey};
use crate::outcomes::schema_for;
use crate::state::Shared;

/// The shortest and longest interval a change subscription may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

pub(super) async fn subscribe(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    event: Option<Identifier>,
    filter: Vec<Condition>,
) -> Result<Response, RemoteError> {
    let session = cx.session("subscribing")?;
    let (slot, loaded) = loaded_for(host, cx.caller, &class, Some(Capability::Subscribe)).await?;
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
    below_limit(host, session.sink().subscriptions())?;
    let handle =
        host.events()
            .subscribe(class, event, filter, session.sink(), Box::new(slot.pin()));
    Ok(Response::Subscribed { handle })
}

/// `conn.subscriptions`: one more may be held.
fn below_limit(host: &Shared, held: usize) -> Result<(), RemoteError> {
    let limit = host.config().limits.conn_subscriptions;
    if held >= limit as usize {
        return Err(RemoteError::new(
            ErrorCode::LimitExceeded,
            format!(
                "this connection holds {held} subscriptions, the limit (conn.subscriptions = {limit}); unsubscribe some first"
            ),
        ));
    }
    Ok(())
}

/// A change subscription: `class` polled every `interval_ms` as the caller.
pub(super) async fn watch_changes(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    filter: Vec<Condition>,
    interval_ms: u64,
    counters: bool,
) -> Result<Response, RemoteError> {
    let session = cx.session("watching changes")?;
    let invalid = |m: String| RemoteError::new(ErrorCode::InvalidRequest, m);
    let interval = Duration::from_millis(interval_ms);
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(invalid(format!(
            "an interval of {interval_ms} ms: it must be from {} to {} ms",
            MIN_INTERVAL.as_millis(),
            MAX_INTERVAL.as_millis()
        )));
    }
    let (slot, loaded) = loaded_for(host, cx.caller, &class, Some(Capability::Enumerate)).await?;
    let schema = schema_for(&slot, &loaded, &class)?;
    // Conditions are on the instance: typed by the class's properties.
    let instance = EventDef {
        name: Identifier::new("change").expect("an identifier"),
        properties: schema.properties().to_vec(),
        description: String::new(),
    };
    for condition in &filter {
        condition.check(&class, &instance).map_err(invalid)?;
    }
    below_limit(host, session.sink().subscriptions())?;
    let caller = cx.caller.clone();
    let key = WatchKey {
        class: class.clone(),
        interval_ms,
        caller: format!("{}:{}:{:?}", caller.uid, caller.gid, caller.groups),
    };
    let (handle, new) =
        host.events()
            .watch_changes(key, filter, counters, session.sink(), Box::new(slot.pin()));
    if let Some(watch) = new {
        tokio::spawn(poll(host.clone(), caller, schema, interval, watch));
    }
    Ok(Response::Subscribed { handle })
}

/// Polls a watched class until its last subscriber leaves.
async fn poll(
    host: Arc<Shared>,
    caller: Caller,
    schema: Arc<ClassSchema>,
    interval: Duration,
    watch: Arc<Watch>,
) {
    let class = schema.path().clone();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Snapshot> = None;
    loop {
        ticks.tick().await;
        if watch.ended() || host.is_shutting_down() {
            return;
        }
        // The read path of a plain `enumerate` (not `answer`, which routes here: a future
        // of its own type).
        let cx = Cx::one_off(&caller);
        let read = match allowed(&host, &cx, Permission::Read, class.as_str()) {
            Ok(()) => super::read::enumerate(&host, &cx, class.clone(), Default::default()).await,
            Err(e) => Err(e),
        };
        let instances = match read {
            Ok(Response::Instances(list)) => list.instances,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(%class, error = %e.message, "a change poll failed; skipped");
                continue;
            }
        };
        let now = snapshot(&schema, instances);
        if let Some(before) = &last {
            let changes = diff(&schema, before, &now);
            if !changes.is_empty() {
                for sub in watch.subscribers() {
                    for change in &changes {
                        if let Some(push) = view(&schema, change, &sub.filter, sub.counters) {
                            host.events().offer_change(&sub, push);
                        }
                    }
                }
            }
        }
        last = Some(now);
    }
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
