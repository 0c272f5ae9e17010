//! One provider hosted without a host: a builtin and a real external process, with a
//! recording [`HostLink`] standing in for the host.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use purveyor_hosting::{
    BuiltinProvider, CallCx, CallError, Dispatch, HostLink, InlineCall, InlineCx, ProcessRef, Spec,
    Watchdog, load,
};
use purveyor_model::{ClassPath, ClassSchema, Instance, PropertyDef, Semantic, Unit, Value};
use purveyor_protocol::{DialogOp, DirectNews, ProviderCall, ProviderReply, RaisedEvent};
use purveyor_provider::{CallContext, Caller, Provider, ProviderError};

/// What a provider asked of its host.
#[derive(Default)]
struct Recorded {
    events: Mutex<Vec<RaisedEvent>>,
    exits: Mutex<Vec<String>>,
}

impl HostLink for Recorded {
    fn dialog_op(&self, _dialog: u32, _op: DialogOp) {}

    fn raised(&self, events: Vec<RaisedEvent>) {
        self.events.lock().unwrap().extend(events);
    }

    fn direct_news(&self, _news: DirectNews, _process: ProcessRef) {}

    fn exited(&self, reason: &str) {
        self.exits.lock().unwrap().push(reason.to_string());
    }
}

/// `slow.thing`: a singleton whose enumerate takes as long as asked, or panics.
struct Slow {
    released: Arc<AtomicBool>,
}

impl Provider for Slow {
    fn classes(&self) -> Vec<ClassSchema> {
        let p = PropertyDef::new("n", "u64", Unit::None, Semantic::Discrete, "n");
        vec![ClassSchema::fixed("slow.thing", "slow", vec![p])]
    }

    fn enumerate(&self, _: &ClassPath, ctx: &CallContext) -> Result<Vec<Instance>, ProviderError> {
        match ctx.caller.uid {
            4242 => panic!("asked by 4242"),
            4343 => std::thread::sleep(Duration::from_millis(500)),
            _ => {}
        }
        Ok(vec![Instance::from_pairs([("n", Value::U64(1))])])
    }

    fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
    }
}

fn slow(dispatch: Dispatch, released: Arc<AtomicBool>) -> Spec {
    let manifest =
        "name = \"slow\"\nhosting = \"builtin\"\nbuiltin = \"slow\"\nclasses = [\"slow.thing\"]\n";
    Spec::Builtin(BuiltinProvider::new(
        "slow",
        manifest,
        dispatch,
        move || {
            Ok(Slow {
                released: released.clone(),
            })
        },
    ))
}

fn enumerate() -> ProviderCall {
    ProviderCall::Enumerate {
        class: ClassPath::new("slow.thing").unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtins_calls_are_bounded_caught_and_released() {
    let released = Arc::new(AtomicBool::new(false));
    let link = Arc::new(Recorded::default());
    // Generous: a panic's backtrace takes a while to capture in a debug build.
    let timeout = Duration::from_secs(5);
    let (hosted, classes) = load(
        "slow",
        slow(Dispatch::Blocking, released.clone()),
        timeout,
        link,
    )
    .await
    .unwrap();
    assert_eq!(classes.len(), 1);
    assert!(!hosted.calls_inline());
    let no_extension = || None;
    let cx = |caller, timeout| CallCx {
        caller,
        timeout,
        ui: 0,
        extend: &no_extension,
    };
    let me = Caller::new(1000, 1000, 1);
    let reply = hosted.call(&cx(&me, timeout), enumerate()).await.unwrap();
    assert!(
        matches!(reply, ProviderReply::Instances(ref v) if v.len() == 1),
        "{reply:?}"
    );
    let panics = Caller::new(4242, 1000, 1);
    let error = hosted
        .call(&cx(&panics, timeout), enumerate())
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Panicked(..)), "{error:?}");
    assert_eq!(error.to_string(), "provider slow panicked: asked by 4242");
    let started = Instant::now();
    let sleeps = Caller::new(4343, 1000, 1);
    let error = hosted
        .call(&cx(&sleeps, Duration::from_millis(100)), enumerate())
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Overdue(..)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "waited for the call"
    );
    hosted.release(timeout, true, false).await;
    assert!(
        released.load(Ordering::Relaxed),
        "the cleanup hook did not run"
    );
}

#[tokio::test]
async fn an_inline_call_runs_on_this_thread_and_a_blocking_one_is_refused_here() {
    let link = Arc::new(Recorded::default());
    let timeout = Duration::from_secs(5);
    let released = Arc::new(AtomicBool::new(false));
    let (hosted, _) = load(
        "slow",
        slow(Dispatch::Inline, released),
        timeout,
        link.clone(),
    )
    .await
    .unwrap();
    assert!(hosted.calls_inline());
    let watchdog = Watchdog::default();
    let me = Caller::new(1000, 1000, 1);
    let never = || panic!("the watchdog acted on a prompt call");
    let cx = InlineCx {
        caller: &me,
        timeout,
        watchdog: &watchdog,
        overdue: &never,
    };
    let reply = hosted
        .call_inline(&cx, InlineCall::Owned(enumerate()))
        .unwrap();
    assert!(matches!(reply, ProviderReply::Instances(_)));
    let (blocking, _) = load(
        "slow",
        slow(Dispatch::Blocking, Arc::default()),
        timeout,
        link,
    )
    .await
    .unwrap();
    let error = blocking
        .call_inline(&cx, InlineCall::Owned(enumerate()))
        .unwrap_err();
    assert!(matches!(error, CallError::NotInline(_)), "{error:?}");
    assert_eq!(hosted.pid(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_process_tells_its_events_and_its_end_through_the_link() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/providers/python");
    let link = Arc::new(Recorded::default());
    let spec = Spec::External {
        program: "python3".into(),
        args: vec!["ticker.py".into()],
        dir: Some(dir),
        io: false,
        confine: purveyor_hosting::Confine::default(),
    };
    let (hosted, classes) = load("ticker", spec, Duration::from_secs(10), link.clone())
        .await
        .unwrap();
    assert_eq!(classes[0].path().as_str(), "demo.ticker");
    let pid = hosted.pid().expect("a process");
    // It raises ticks on its own (every 200 ms): they reach the link.
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.events.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        link.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.event.as_str() == "tick"),
        "no tick reached the link"
    );
    // Killed: its end reaches the link with the reason, and calls fail with it.
    hosted.kill(Some("a test asked"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.exits.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exits = link.exits.lock().unwrap().clone();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert!(exits[0].contains("was killed: a test asked"), "{exits:?}");
    assert!(hosted.dead_reason().is_some());
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
    assert!(!alive, "pid {pid} outlived its kill");
}
