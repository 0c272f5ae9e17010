//! Loading a slot's provider: the manifest's entry becomes a [`Spec`] for
//! `purveyor-hosting`, a worker is shared within a host group, the schemas it describes
//! are checked against the manifest, and its [`HostLink`] connects it to the host's
//! dialogs, events and lifecycle.

use std::sync::{Arc, OnceLock, Weak};

use purveyor_hosting::{Confine, HostLink, LoadError, ProcessConn, ProcessRef, Spec, spawn_worker};
use purveyor_model::{ClassPath, ClassSchema, Hosting};
use purveyor_protocol::{DialogOp, DirectNews, ErrorCode, RaisedEvent, RemoteError};

use crate::dialogs::{DialogHub, Origin};
use crate::manifest::{Entry, Manifest};
use crate::outcomes::{deliver, remote};
use crate::policy;
use crate::slot::{LoadResult, Loaded, Lost, SchemaSet, Slot};
use crate::state::Shared;

/// Loads the provider a slot describes, wherever its manifest says it runs. Runs on its
/// own task (see [`Slot::acquire`]).
pub(crate) async fn load(host: Arc<Shared>, slot: Arc<Slot>) -> LoadResult {
    let manifest = slot.manifest();
    let name = manifest.name.to_string();
    let timeout = manifest.call_timeout;
    let spec = spec(&host, manifest).await.map_err(|e| remote(&slot, &e))?;
    let link = Arc::new(Link {
        slot: Arc::downgrade(&slot),
        hub: Arc::downgrade(host.dialogs()),
        bus: Arc::downgrade(host.events()),
        origin: OnceLock::new(),
        schemas: OnceLock::new(),
    });
    let (hosted, classes) = purveyor_hosting::load(&name, spec, timeout, link.clone())
        .await
        .map_err(|e| remote(&slot, &e))?;
    let schemas = check_schemas(&slot, classes)?;
    let _ = link.schemas.set(schemas.clone());
    // A provider that can open dialogs gets an origin: news goes to it, and its release
    // (or its process's end) closes its dialogs.
    let hold = hosted.dialog_news().map(|news| {
        let channels = hosted.dialog_channels();
        let origin = host
            .dialogs()
            .origin(name.clone(), news, channels, pin_for(&slot));
        let _ = link.origin.set(origin.clone());
        Box::new(host.dialogs().guard(origin)) as Box<dyn Send + Sync>
    });
    Ok(Loaded::new(hosted, schemas, hold))
}

/// A worker for `name`: the spare if there is one (`crate::spare`), else a new one; either
/// way another spare is started behind it when the host keeps one.
async fn worker(
    host: &Shared,
    program: &std::path::Path,
    name: &str,
    label: String,
    timeout: std::time::Duration,
    confine: &Confine,
) -> Result<Arc<ProcessConn>, LoadError> {
    // The spare runs as the daemon, unconfined: a confined provider gets a worker of its own.
    if !host.config().spare_worker || !confine.is_empty() {
        return spawn_worker(program, name, label, timeout, confine).await;
    }
    let spare = host.spare().take();
    host.spare().refill(program.to_owned(), timeout);
    match spare {
        Some(worker) => {
            worker.rename(label);
            Ok(worker)
        }
        None => spawn_worker(program, name, label, timeout, confine).await,
    }
}

/// A provider that runs as a user of its own gets its state directory
/// (`STATE_DIR/NAME`, where the SDK store keeps its database) made and owned by that user.
fn own_state_dir(manifest: &Manifest) -> Result<(), LoadError> {
    let dir = purveyor_provider::state_dir().join(manifest.name.as_str());
    if manifest.sandbox.is_some() {
        // A sandboxed worker may write only there: it must exist before it starts.
        std::fs::create_dir_all(&dir).map_err(|e| {
            LoadError::Failed(
                manifest.name.to_string(),
                format!("cannot make {}: {e}", dir.display()),
            )
        })?;
    }
    // A requestor provider's worker acts with its caller's rights: the provider's state
    // directory is not handed to each of them in turn.
    let Some(run_as) = manifest.run_as.as_ref().filter(|_| !manifest.requestor) else {
        return Ok(());
    };
    let failed = |e: std::io::Error| {
        LoadError::Failed(
            manifest.name.to_string(),
            format!("cannot give {} to user {}: {e}", dir.display(), run_as.user),
        )
    };
    std::fs::create_dir_all(&dir).map_err(failed)?;
    std::os::unix::fs::chown(&dir, Some(run_as.uid), Some(run_as.gid)).map_err(failed)
}

/// The confinement `manifest` asks for: its user (with that user's supplementary groups)
/// and its limits the kernel enforces (memory is the host's to watch: `crate::limits`).
pub(crate) fn confine(manifest: &Manifest) -> Confine {
    use purveyor_hosting::confine::{Identity, RlimitResource};
    let identity = manifest.run_as.as_ref().map(|r| Identity {
        uid: r.uid,
        gid: r.gid,
        groups: purveyor_io::users::groups_of(&r.user, r.gid),
    });
    let l = &manifest.limits;
    let rlimits = [
        (RlimitResource::Cpu, l.cpu.map(|d| d.as_secs().max(1))),
        (RlimitResource::OpenFiles, l.open_files),
        (RlimitResource::Processes, l.processes),
    ]
    .into_iter()
    .filter_map(|(r, v)| v.map(|v| (r, v)))
    .collect();
    let sandbox = manifest.sandbox.as_ref().map(|read| {
        let mut read = read.clone();
        match &manifest.entry {
            Entry::Library { path, .. } => read.push(manifest.resolve(&path.to_string_lossy())),
            // An external program runs in the manifest's directory, and may be named there.
            Entry::External { command } => {
                read.extend(manifest.dir().map(std::path::Path::to_path_buf));
                if command[0].contains('/') {
                    read.push(manifest.resolve(&command[0]));
                }
            }
            Entry::Builtin(_) => {}
        }
        purveyor_hosting::sandbox::Sandbox {
            read,
            write: vec![purveyor_provider::state_dir().join(manifest.name.as_str())],
        }
    });
    Confine {
        identity,
        rlimits,
        sandbox,
    }
}

/// What `manifest` asks to load. An isolated provider of a host group joins the group's
/// worker if it is running, else starts it.
async fn spec(host: &Shared, manifest: &Manifest) -> Result<Spec, LoadError> {
    let name = manifest.name.to_string();
    let io = !manifest.io.is_empty();
    Ok(match &manifest.entry {
        Entry::Builtin(entry) => Spec::Builtin(host.builtin(entry).cloned().ok_or_else(|| {
            LoadError::Failed(
                name.clone(),
                format!("this build of purveyor has no builtin provider {entry:?}"),
            )
        })?),
        Entry::Library { path, .. } if manifest.hosting == Hosting::InDaemon => {
            let path = manifest.resolve(&path.to_string_lossy());
            if io {
                Spec::Procedures { path }
            } else {
                Spec::Library { path }
            }
        }
        Entry::Library { path, host_group } => {
            own_state_dir(manifest)?;
            let path = manifest.resolve(&path.to_string_lossy());
            let program = host
                .config()
                .worker_program()
                .map_err(|e| LoadError::Failed(name.clone(), e))?;
            let timeout = manifest.call_timeout;
            let conn = match host_group {
                Some(group) => {
                    let mut workers = host.workers().lock().await;
                    match workers.get(group).and_then(Weak::upgrade) {
                        Some(conn) if conn.dead_reason().is_none() => conn,
                        _ => {
                            let label = format!("worker of host group {group}");
                            let conn =
                                worker(host, &program, &name, label, timeout, &confine(manifest))
                                    .await?;
                            workers.insert(group.clone(), Arc::downgrade(&conn));
                            conn
                        }
                    }
                }
                None => {
                    let label = format!("worker for provider {name}");
                    worker(host, &program, &name, label, timeout, &confine(manifest)).await?
                }
            };
            Spec::Worker { conn, path, io }
        }
        Entry::External { command } => {
            own_state_dir(manifest)?;
            // A bare name is looked up in PATH; a path is relative to the manifest.
            let program = if command[0].contains('/') {
                manifest.resolve(&command[0]).into_os_string()
            } else {
                command[0].clone().into()
            };
            let mut args: Vec<std::ffi::OsString> = command[1..].iter().map(Into::into).collect();
            let confine = confine(manifest);
            // A strict sandbox is set up by a trampoline of ours, which then execs the
            // program: Landlock and seccomp stay in force across the exec.
            let program = if confine.sandbox.is_some() {
                let trampoline = host.config().worker_program().map_err(|e| {
                    LoadError::Failed(name.clone(), format!("cannot sandbox it: {e}"))
                })?;
                args.splice(0..0, ["sandbox-exec".into(), "--".into(), program]);
                trampoline.into_os_string()
            } else {
                program
            };
            Spec::External {
                program,
                args,
                dir: manifest.dir().map(Into::into),
                io,
                confine,
            }
        }
    })
}

/// How a loaded provider reaches the host. Holds everything weakly: a provider never
/// keeps its slot, the dialog hub or the event bus alive.
struct Link {
    slot: Weak<Slot>,
    hub: Weak<DialogHub>,
    bus: Weak<crate::events::EventBus>,
    /// Its dialogs' origin, set once loaded (operations before then are dropped).
    origin: OnceLock<Arc<Origin>>,
    /// Its schemas, for checking the events it raises on its own.
    schemas: OnceLock<SchemaSet>,
}

impl HostLink for Link {
    fn dialog_op(&self, dialog: u32, op: DialogOp) {
        match (self.hub.upgrade(), self.origin.get()) {
            (Some(hub), Some(origin)) => hub.provider_op(origin, dialog, op),
            _ => tracing::debug!(
                dialog,
                "a dialog operation before the provider finished loading; dropped"
            ),
        }
    }

    fn raised(&self, events: Vec<RaisedEvent>) {
        let (Some(bus), Some(slot), Some(schemas)) =
            (self.bus.upgrade(), self.slot.upgrade(), self.schemas.get())
        else {
            return;
        };
        deliver(&bus, &slot, events, |class: &ClassPath| {
            schemas.get(class).cloned().ok_or_else(|| {
                RemoteError::new(ErrorCode::NotFound, format!("no schema for {class}"))
            })
        });
    }

    fn direct_news(&self, news: DirectNews, process: ProcessRef) {
        if let DirectNews::Events { events } = news {
            // A direct put's events: checked and delivered as a put's of the host's own.
            return self.raised(events);
        }
        if let Some(slot) = self.slot.upgrade() {
            direct_news(&slot, news, &process);
        }
    }

    fn exited(&self, reason: &str) {
        if let (Some(hub), Some(origin)) = (self.hub.upgrade(), self.origin.get()) {
            hub.origin_gone(
                origin.id(),
                &format!("provider {} went away: {reason}", origin.provider()),
            );
        }
    }
}

/// Acts on a worker's news of `slot`'s direct channels: use keeps the provider loaded and
/// counts its calls; a missed deadline kills the worker, as one of the host's own calls
/// would (if `process` is still the one serving the slot).
fn direct_news(slot: &Arc<Slot>, news: DirectNews, process: &ProcessRef) {
    match news {
        DirectNews::Used {
            calls,
            errors,
            keep_ms,
        } => slot.used_directly(calls, errors, std::time::Duration::from_millis(keep_ms)),
        DirectNews::Events { .. } => {}
        DirectNews::Overdue { deadline_ms } => {
            let Some(loaded) = slot.loaded_now() else {
                return;
            };
            if !loaded.hosted().runs_in(process) {
                return;
            }
            let message = format!(
                "provider {} did not answer a direct call within {}",
                slot.manifest().name,
                humantime::format_duration(std::time::Duration::from_millis(deadline_ms))
            );
            tracing::warn!(provider = %slot.manifest().name, "{message}; killing its process");
            loaded.hosted().kill(Some(&message));
            slot.lost(&loaded, Lost::Killed);
            slot.record_error(&slot.error(ErrorCode::Timeout, message));
        }
    }
}

/// How long a worker keeps news of a direct channel's use before telling the host.
pub(crate) fn direct_keep(slot: &Slot) -> std::time::Duration {
    policy::direct_keep(slot.clear_after())
}

/// What keeps `slot`'s provider loaded while one of its dialogs is open.
fn pin_for(slot: &Arc<Slot>) -> Box<dyn Fn() -> Box<dyn Send + Sync> + Send + Sync> {
    let slot = Arc::downgrade(slot);
    Box::new(move || Box::new(slot.upgrade().map(|s| s.pin())))
}

/// The provider must describe exactly the classes its manifest lists.
fn check_schemas(slot: &Slot, classes: Vec<ClassSchema>) -> Result<SchemaSet, RemoteError> {
    let manifest = slot.manifest();
    let name = &manifest.name;
    let mut set = SchemaSet::default();
    for schema in classes {
        if manifest.in_namespace(schema.path()) && !manifest.classes.contains(schema.path()) {
            // Filled at run time: asked for when needed.
            continue;
        }
        if !manifest.classes.contains(schema.path()) {
            return Err(slot.error(
                ErrorCode::ProviderFailed,
                format!(
                    "provider {name} describes class {} that its manifest ({}) does not list",
                    schema.path(),
                    manifest.source
                ),
            ));
        }
        set.insert(schema.path().clone(), Arc::new(schema));
    }
    if let Some(missing) = manifest.classes.iter().find(|c| !set.contains_key(*c)) {
        return Err(slot.error(
            ErrorCode::ProviderFailed,
            format!(
                "provider {name} does not describe class {missing}, which its manifest ({}) lists",
                manifest.source
            ),
        ));
    }
    Ok(set)
}
