//! What classes there are: `list_classes`, `describe`, and the exporters' views
//! ([`export_classes`], [`scrape`]) that must not wake idle providers.

use std::sync::Arc;

use futures_util::future::join_all;
use purveyor_hosting::Hosted;
use purveyor_model::{ClassPath, InstanceKey, NamespacePath, ProviderState};
use purveyor_protocol::{ClassList, ErrorCode, InstanceList, RemoteError, Request, Response};
use purveyor_provider::Caller;

use crate::access::Permission;
use crate::calls::{acquire, allowed, loaded_for};
use crate::cx::Cx;
use crate::manifest::Manifest;
use crate::outcomes::{remote, schema_for};
use crate::slot::Slot;
use crate::state::Shared;

/// The classes the caller may read, under `namespace` (all when `None`).
pub(super) async fn list(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    namespace: Option<NamespacePath>,
) -> Result<Response, RemoteError> {
    let access = host.access();
    let mut refused: Option<String> = None;
    let mut readable =
        |class: &ClassPath| match access.check(cx.caller, Permission::Read, class.as_str()) {
            Ok(()) => true,
            Err(why) => {
                refused.get_or_insert(why);
                false
            }
        };
    let mut list = collect(host, namespace.as_slice(), &|_: &Slot| true, cx.caller).await;
    // Classes the caller may not read are left out, as if they were not there.
    list.classes.retain(|c| readable(c.path()));
    if list.classes.is_empty()
        && list.problems.is_empty()
        && let Some(ns) = namespace
    {
        return Err(match refused {
            Some(why) => RemoteError::new(ErrorCode::AccessDenied, why),
            None => RemoteError::new(ErrorCode::NotFound, format!("no class in namespace {ns}")),
        });
    }
    list.classes.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(Response::Classes(list))
}

/// One class's schema.
pub(super) async fn describe(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Read, class.as_str())?;
    let (slot, loaded) = loaded_for(host, cx.caller, &class, None).await?;
    Ok(Response::Class(
        schema_for(&slot, &loaded, &class)?.as_ref().clone(),
    ))
}

/// The classes under `namespaces` (every class when empty) that `caller` may read, for an
/// exporter such as the HTTP gateway's `/metrics`. A scrape must not wake providers that
/// idle unload released: only providers that are loaded now are asked, plus those `wake`
/// allows loading.
pub(crate) async fn export_classes(
    host: &Arc<Shared>,
    namespaces: &[NamespacePath],
    wake: &(dyn Fn(&Manifest) -> bool + Sync),
    caller: &Caller,
) -> ClassList {
    let take = |slot: &Slot| slot.state() == ProviderState::Loaded || wake(slot.manifest());
    let mut list = collect(host, namespaces, &take, caller).await;
    let access = host.access();
    list.classes.retain(|c| {
        access
            .check(caller, Permission::Read, c.path().as_str())
            .is_ok()
    });
    list.classes.sort_by(|a, b| a.path().cmp(b.path()));
    list
}

/// The instances of `class` for an exporter: an `Enumerate` by `caller` whose provider
/// calls do not count as use (the context is passive), so periodic scrapes do not keep
/// an otherwise idle provider loaded.
pub(crate) async fn scrape(
    host: &Arc<Shared>,
    class: ClassPath,
    caller: &Caller,
) -> Result<InstanceList, RemoteError> {
    let request = Request::Enumerate {
        class,
        selector: InstanceKey::new(),
    };
    let cx = Cx {
        passive: true,
        ..Cx::one_off(caller)
    };
    match super::answer(host, cx, request).await? {
        Response::Instances(list) => Ok(list),
        other => Err(RemoteError::new(
            ErrorCode::Internal,
            format!("enumerate answered {other:?}"),
        )),
    }
}

/// The classes under `namespaces` (all when empty) of the providers `take` accepts,
/// loading them; one problem per provider that failed.
async fn collect(
    host: &Arc<Shared>,
    namespaces: &[NamespacePath],
    take: &(dyn Fn(&Slot) -> bool + Sync),
    caller: &Caller,
) -> ClassList {
    let wanted =
        |class: &ClassPath| namespaces.is_empty() || namespaces.iter().any(|ns| ns.contains(class));
    let overlaps = |ns: &NamespacePath| {
        namespaces.is_empty() || namespaces.iter().any(|want| want.overlaps(ns))
    };
    let registry = host.registry();
    let slots: Vec<&Arc<Slot>> = registry
        .slots()
        .values()
        .filter(|s| {
            (s.manifest().classes.iter().any(wanted)
                || s.manifest().namespaces.iter().any(overlaps))
                && take(s)
        })
        .collect();
    // A requestor provider's classes are its caller's worker's.
    let loads = join_all(
        slots
            .iter()
            .map(|slot| async move { acquire(host, &slot.for_caller(caller)?).await }),
    )
    .await;
    let mut list = ClassList {
        classes: Vec::new(),
        problems: Vec::new(),
    };
    for (slot, loaded) in slots.iter().zip(loads) {
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                list.problems.push(error);
                continue;
            }
        };
        let manifest = slot.manifest();
        for class in manifest.classes.iter().filter(|c| wanted(c)) {
            if let Some(schema) = loaded.schemas().get(class) {
                list.classes.push(schema.as_ref().clone());
            }
        }
        if !manifest.namespaces.is_empty() {
            match filled(slot, loaded.hosted()) {
                Ok(classes) => list.classes.extend(
                    classes
                        .into_iter()
                        .filter(|c| manifest.in_namespace(c.path()) && wanted(c.path())),
                ),
                Err(error) => list.problems.push(error),
            }
        }
    }
    list
}

/// The classes a provider that fills a namespace describes now.
fn filled(slot: &Slot, hosted: &Hosted) -> Result<Vec<purveyor_model::ClassSchema>, RemoteError> {
    match hosted.classes_now() {
        Some(now) => now.map_err(|e| remote(slot, &e)),
        None => Ok(Vec::new()),
    }
}
