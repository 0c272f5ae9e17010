//! Dialogs end to end (`docs/dialogs.md`): a real daemon, the example providers in
//! isolated workers, and clients that show dialogs through the client library's
//! `DialogUi` or read the raw pushes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use purveyor_client::{
    Client, ClientError, ConnectOptions, DialogInput, DialogUi, FormUpdate, OpenDialog, Push,
    Request, UiAction,
};
use purveyor_model::{Identifier, Instance, InstanceKey, Value};

/// Both example providers, with a call timeout shorter than the dialogs the tests hold
/// open (a call's deadline is suspended while its dialog is open).
fn daemon() -> Daemon {
    dialog_daemon("call_timeout = \"2s\"")
}

/// A client that shows dialogs with `ui`.
fn showing(d: &Daemon, ui: impl DialogUi + Send + 'static) -> Client {
    showing_with(d, ui, false)
}

/// A client that shows dialogs with `ui`, taking its agent dialogs on direct channels
/// when `direct` says so.
fn showing_with(d: &Daemon, ui: impl DialogUi + Send + 'static, direct: bool) -> Client {
    let options = ConnectOptions::default().ui(true).direct_dialogs(direct);
    let mut client = Client::connect_socket(&d.socket, &options).unwrap();
    client.set_dialog_ui(Box::new(ui));
    client
}

type Answer = Box<dyn FnMut(&str) -> UiAction + Send>;

/// A UI that logs what it is shown and answers from a script: `answer` gets
/// `open TITLE` or `update TEXT`.
struct Scripted {
    log: Arc<Mutex<Vec<String>>>,
    answer: Answer,
}

impl Scripted {
    fn new(
        answer: impl FnMut(&str) -> UiAction + Send + 'static,
    ) -> (Self, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Scripted {
                log: log.clone(),
                answer: Box::new(answer),
            },
            log,
        )
    }
}

impl DialogUi for Scripted {
    fn open(&mut self, dialog: &OpenDialog) -> UiAction {
        let seen = format!("open {}", dialog.form.title);
        self.log.lock().unwrap().push(seen.clone());
        (self.answer)(&seen)
    }

    fn update(&mut self, _handle: u32, update: &FormUpdate) -> UiAction {
        let seen = match (&update.text, &update.progress) {
            (Some(text), _) => format!("update {text}"),
            (None, Some(p)) => format!("progress {}/{}", p.done, p.total),
            _ => "update".to_string(),
        };
        self.log.lock().unwrap().push(seen.clone());
        (self.answer)(&seen)
    }

    fn closed(&mut self, _handle: u32, reason: &str) {
        self.log.lock().unwrap().push(format!("closed {reason}"));
    }
}

fn press(button: &str, values: &[(&str, Value)]) -> UiAction {
    UiAction::Send(DialogInput {
        button: Some(Identifier::new(button).unwrap()),
        values: Instance::from_pairs(values.iter().cloned()),
    })
}

fn method(name: &str) -> Identifier {
    Identifier::new(name).unwrap()
}

fn call_str(
    client: &mut Client,
    class_path: &str,
    m: &str,
    key: InstanceKey,
    args: Instance,
) -> Result<String, ClientError> {
    match client.call(&class(class_path), &method(m), &key, args)? {
        Some(Value::String(s)) => Ok(s),
        other => panic!("unexpected result {other:?}"),
    }
}

/// `demo.vault.destroy` of `vault`, from a client whose UI answers the dialog by
/// pressing `button` with the confirmation and `passphrase`.
/// The user takes `delay` to answer.
fn destroy(
    d: &Daemon,
    vault: &str,
    button: &'static str,
    passphrase: &'static str,
    delay: Duration,
) -> (Result<String, ClientError>, Arc<Mutex<Vec<String>>>) {
    let (ui, log) = Scripted::new(move |seen| {
        if seen.starts_with("open") {
            std::thread::sleep(delay);
            press(
                button,
                &[
                    ("sure", Value::Bool(true)),
                    ("passphrase", Value::String(passphrase.into())),
                ],
            )
        } else {
            UiAction::Wait
        }
    });
    let mut client = showing(d, ui);
    let result = call_str(
        &mut client,
        "demo.vault",
        "destroy",
        named(vault),
        Instance::new(),
    );
    (result, log)
}

fn last_outcome(d: &Daemon) -> String {
    let probe = d
        .client()
        .get(&class("demo.dialog_probe"), &InstanceKey::new())
        .unwrap();
    match probe.get("last_outcome") {
        Some(Value::String(s)) => s.clone(),
        other => panic!("last_outcome is {other:?}"),
    }
}

#[test]
fn an_in_call_dialog_goes_to_the_caller_and_its_answer_finishes_the_call() {
    let d = daemon();
    // The user takes longer than the call's 2 s timeout: the call waits for them.
    let (done, log) = destroy(
        &d,
        "photos",
        "destroy",
        "purveyor",
        Duration::from_millis(2500),
    );
    let done = done.unwrap();
    assert_eq!(done, "destroyed photos (812 files)");
    // The provider's last update and its close reach the client before the reply.
    assert_eq!(
        *log.lock().unwrap(),
        [
            "open Destroy vault photos?",
            "progress 812/812",
            "closed destroyed"
        ]
    );
    let left: Vec<String> = d
        .client()
        .enumerate(&class("demo.vault"), &InstanceKey::new())
        .unwrap()
        .iter()
        .map(|v| v.get("name").unwrap().to_string())
        .collect();
    assert!(!left.iter().any(|n| n.contains("photos")), "{left:?}");

    // A wrong passphrase and a cancel are the provider's errors.
    let err = destroy(&d, "taxes", "destroy", "guess", Duration::ZERO)
        .0
        .unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    let err = destroy(&d, "taxes", "cancel", "purveyor", Duration::ZERO)
        .0
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("taxes was not destroyed: cancelled"),
        "{err}"
    );
}

#[test]
fn a_client_without_a_ui_is_refused_and_the_provider_is_told_no_ui_available() {
    let d = daemon();
    let err = call_str(
        &mut d.client(),
        "demo.vault",
        "destroy",
        named("photos"),
        Instance::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no UI available"), "{err}");
    assert!(
        last_outcome(&d).starts_with("no UI available"),
        "{}",
        last_outcome(&d)
    );
    // The CLI with stdin not a terminal (and with --no-input) says the same.
    for extra in [&[][..], &["--no-input"][..]] {
        let out = std::process::Command::new(BIN)
            .args(["call", "--socket"])
            .arg(&d.socket)
            .args(["demo.vault.destroy", "name=photos"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("photos was not destroyed: it needs confirmation, and no UI available"),
            "{err}"
        );
    }
}

/// An agent on its own thread (on direct dialog channels when `direct` says so), answering
/// with `answer` until `until` holds for its log (bounded).
fn agent_with(
    d: &Daemon,
    direct: bool,
    answer: impl FnMut(&str) -> UiAction + Send + 'static,
    until: impl Fn(&[String]) -> bool + Send + 'static,
) -> (std::thread::JoinHandle<Vec<String>>, u32) {
    let (ui, log) = Scripted::new(answer);
    let mut client = showing_with(d, ui, direct);
    let handle = client.register_agent().unwrap();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !until(&log.lock().unwrap()) && Instant::now() < deadline {
            client.next_event(Some(Duration::from_millis(50))).unwrap();
        }
        log.lock().unwrap().clone()
    });
    (thread, handle)
}

#[test]
fn a_spontaneous_dialog_reaches_the_agent_and_the_phone_call_runs_through_it() {
    let d = daemon();
    phone_call(&d, false);
    // The daemon's log is written behind it: wait for the line.
    wait_until("the open in the log", Duration::from_secs(10), || {
        d.log().contains("direct=false")
    });
}

#[test]
fn the_phone_call_runs_the_same_on_a_direct_channel() {
    let d = daemon();
    phone_call(&d, true);
    wait_until("a direct open in the log", Duration::from_secs(10), || {
        d.log().contains("direct=true")
    });
    let counts = d
        .client()
        .get(&class("purveyor.dialogs"), &InstanceKey::new())
        .unwrap();
    assert_eq!(counts.get("direct"), Some(&Value::U64(1)), "{counts:?}");
}

/// The phone call through an agent (on direct channels when `direct` says so): every
/// update in order, the close after the last.
fn phone_call(d: &Daemon, direct: bool) {
    let (agent, _) = agent_with(
        d,
        direct,
        |seen| {
            if seen.starts_with("open") {
                press("talk", &[])
            } else if seen.contains("You may hang up now") {
                press("hang_up", &[])
            } else {
                UiAction::Wait
            }
        },
        |log| log.iter().any(|l| l.starts_with("closed")),
    );
    let said = call_str(
        &mut d.client(),
        "phone.line",
        "dial",
        InstanceKey::new(),
        Instance::from_pairs([
            ("number", Value::String("555-0100".into())),
            ("talk_ms", Value::U64(200)),
        ]),
    )
    .unwrap();
    assert!(
        said.starts_with("dialling 555-0100: answer on your UI agent"),
        "{said}"
    );
    let log = agent.join().unwrap();
    assert_eq!(
        log,
        [
            "open Phone: calling 555-0100",
            "update Ringing 555-0100... pick up the handset, then choose Talk.",
            "update Connected to 555-0100. Talking...",
            "update 555-0100 hung up. You may hang up now.",
            "closed call ended",
        ]
    );
}

/// A UI that logs what it is shown, answers nothing, and keeps the last dialog's handle.
#[derive(Default)]
struct Seen {
    log: Vec<String>,
    handle: u32,
}

#[derive(Clone, Default)]
struct Watching(Arc<Mutex<Seen>>);

impl Watching {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap()
    }
}

impl DialogUi for Watching {
    fn open(&mut self, dialog: &OpenDialog) -> UiAction {
        let mut me = self.lock();
        me.handle = dialog.handle;
        me.log.push(format!("open {}", dialog.form.title));
        UiAction::Wait
    }

    fn update(&mut self, _handle: u32, update: &FormUpdate) -> UiAction {
        let text = update.text.clone().unwrap_or_default();
        self.lock().log.push(format!("update {text}"));
        UiAction::Wait
    }

    fn closed(&mut self, _handle: u32, reason: &str) {
        self.lock().log.push(format!("closed {reason}"));
    }
}

#[test]
fn a_direct_channel_keeps_the_order_of_updates_and_of_an_input_before_the_users_close() {
    let d = daemon();
    let ui = Watching::default();
    let mut agent = showing_with(&d, ui.clone(), true);
    agent.register_agent().unwrap();
    let burst = burst_in_background(&d, Instance::from_pairs([("count", Value::U64(50))]));
    until_seen(&mut agent, &ui, |log| {
        log.iter().any(|l| l == "update update 50")
    });
    let expected: Vec<String> = std::iter::once("open Burst".to_string())
        .chain((1..=50).map(|i| format!("update update {i}")))
        .collect();
    assert_eq!(ui.lock().log, expected);
    // The input, then the user's close right behind it: the provider has the input first
    // (it went on the channel, the close through the daemon).
    let handle = ui.lock().handle;
    agent
        .dialog_send(handle, DialogInput::button("done").unwrap())
        .unwrap();
    // The provider may have closed it already, having read the input.
    match agent.dialog_close(handle) {
        Ok(()) | Err(ClientError::NotFound { .. }) => {}
        Err(e) => panic!("closing: {e}"),
    }
    assert_eq!(burst.join().unwrap().unwrap(), "50 updates, then done");
    wait_until("a direct open in the log", Duration::from_secs(10), || {
        d.log().contains("direct=true")
    });
}

#[test]
fn with_no_agent_the_provider_gets_no_agent_at_once() {
    let d = daemon();
    let started = Instant::now();
    let err = call_str(
        &mut d.client(),
        "phone.line",
        "dial",
        InstanceKey::new(),
        Instance::from_pairs([("number", Value::String("555-0100".into()))]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot reach the user: no agent: no UI agent is registered for uid"),
        "{err}"
    );
    // At once: nowhere near the open's 10 s bound or the call's timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Calls `demo.dialog_probe.burst` with `args` from a client of its own, on a thread: the
/// call opens a dialog for an agent and returns when it ends.
fn burst_in_background(
    d: &Daemon,
    args: Instance,
) -> std::thread::JoinHandle<Result<String, ClientError>> {
    let mut client = d.client();
    std::thread::spawn(move || {
        call_str(
            &mut client,
            "demo.dialog_probe",
            "burst",
            InstanceKey::new(),
            args,
        )
    })
}

#[test]
fn updates_sent_before_the_ready_signal_are_held_and_delivered_after_it() {
    let d = daemon();
    let mut agent = d.client();
    agent.register_agent().unwrap();
    let caller = burst_in_background(&d, Instance::from_pairs([("count", Value::U64(5))]));
    let (handle, push) = agent
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert!(
        matches!(push, Push::DialogOpen { ref provider, .. } if provider == "confirm"),
        "{push:?}"
    );
    // The provider sent its five updates right after opening; none arrives before ready.
    assert_eq!(
        agent.next_event(Some(Duration::from_millis(400))).unwrap(),
        None
    );
    agent.dialog_ready(handle).unwrap();
    for i in 1..=5 {
        let (h, push) = agent
            .next_event(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert_eq!(h, handle);
        match push {
            Push::DialogUpdate { update } => {
                assert_eq!(update.text.unwrap(), format!("update {i}"))
            }
            other => panic!("expected update {i}, got {other:?}"),
        }
    }
    agent
        .dialog_send(handle, DialogInput::button("done").unwrap())
        .unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), "5 updates, then done");
    let (h, push) = agent
        .next_event(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (h, push),
        (
            handle,
            Push::DialogClosed {
                reason: "done".into()
            }
        )
    );
}

/// Sends `demo.dialog_probe.ask` from a client that says it shows dialogs but reads the
/// pushes itself; returns the client, the request id and the dialog's handle.
fn ask_raw(d: &Daemon) -> (Client, u32, u32) {
    let mut client =
        Client::connect_socket(&d.socket, &ConnectOptions::default().ui(true)).unwrap();
    let id = client
        .send(Request::Call {
            class: class("demo.dialog_probe"),
            method: method("ask"),
            key: InstanceKey::new(),
            args: Instance::new(),
        })
        .unwrap();
    let (handle, push) = client
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    match push {
        Push::DialogOpen {
            request, ref form, ..
        } => {
            assert_eq!(request, Some(id), "an in-call dialog names its request");
            assert_eq!(form.title, "Pick one");
        }
        other => panic!("expected the dialog, got {other:?}"),
    }
    (client, id, handle)
}

#[test]
fn a_client_that_disconnects_mid_dialog_is_reported_to_the_provider() {
    let d = daemon();
    let (client, _, _) = ask_raw(&d);
    drop(client);
    wait_until(
        "the provider to hear of the disconnect",
        Duration::from_secs(10),
        || last_outcome(&d).contains("disconnected"),
    );
    let outcome = last_outcome(&d);
    assert!(
        outcome.starts_with("the dialog was closed: the application (pid "),
        "{outcome}"
    );
}

#[test]
fn a_provider_that_crashes_mid_dialog_is_reported_to_the_client() {
    let d = daemon();
    let (mut client, id, handle) = ask_raw(&d);
    let pid = d.status("confirm").pid.expect("the worker runs");
    // SAFETY: kill signals the worker process the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let (h, push) = client
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(h, handle);
    match push {
        Push::DialogClosed { reason } => {
            assert!(
                reason.starts_with("provider confirm went away: "),
                "{reason}"
            );
            assert!(reason.contains("SIGKILL"), "{reason}");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    let (got, reply) = client.recv().unwrap();
    assert_eq!(got, id);
    let err = reply.unwrap_err();
    assert!(err.to_string().contains("crashed"), "{err}");
    // The dialog is gone on the host: a late answer is refused, naming it.
    let late = client
        .dialog_send(handle, DialogInput::button("yes").unwrap())
        .unwrap_err();
    assert_eq!(
        late.to_string(),
        format!("this connection has no dialog {handle} (it may have closed)")
    );
}

#[test]
fn an_agent_of_another_user_is_refused() {
    let d = daemon();
    let mut agent = d.client();
    let handle = agent.register_agent().unwrap();
    let probe = |user: u64| {
        call_str(
            &mut d.client(),
            "demo.dialog_probe",
            "probe_agent",
            InstanceKey::new(),
            Instance::from_pairs([
                ("agent", Value::U64(handle.into())),
                ("user", Value::U64(user)),
            ]),
        )
        .unwrap()
    };
    // SAFETY: geteuid has no preconditions.
    let me = u64::from(unsafe { libc::geteuid() });
    let other = if me == 65534 { 1 } else { 65534 };
    assert_eq!(
        probe(other),
        format!(
            "agent {handle} belongs to uid {me}, not to uid {other}: dialogs only reach the same user (or one the access policy's [dialogs] table allows)"
        )
    );
    // The same agent, for its own user, opens.
    assert_eq!(probe(me), "opened");
    assert_eq!(
        probe_missing(&d),
        "no agent: agent 999999 is not registered (it may have gone away)"
    );
    drop(agent);
}

fn probe_missing(d: &Daemon) -> String {
    call_str(
        &mut d.client(),
        "demo.dialog_probe",
        "probe_agent",
        InstanceKey::new(),
        Instance::from_pairs([("agent", Value::U64(999_999)), ("user", Value::U64(0))]),
    )
    .unwrap()
}

#[test]
fn a_dialog_past_its_deadline_is_closed_on_both_sides() {
    let d = daemon();
    let mut agent = d.client();
    agent.register_agent().unwrap();
    let caller = burst_in_background(
        &d,
        Instance::from_pairs([("count", Value::U64(0)), ("deadline_ms", Value::U64(300))]),
    );
    let (handle, push) = agent
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            push,
            Push::DialogOpen {
                deadline_ms: 300,
                ..
            }
        ),
        "{push:?}"
    );
    agent.dialog_ready(handle).unwrap();
    // Nobody answers.
    let (h, push) = agent
        .next_event(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(h, handle);
    assert_eq!(
        push,
        Push::DialogClosed {
            reason: "its deadline passed (open for 300ms)".into()
        }
    );
    let err = caller.join().unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("the dialog was closed: its deadline passed (open for 300ms)"),
        "{err}"
    );
}

#[test]
fn a_trusted_ui_module_renders_the_dialog_that_names_it_and_the_generic_ui_the_rest() {
    use purveyor_client::{Form, ModuleUi};
    let module = workspace_library("libphone_keypad.so", "purveyor-example-ui");
    let trusted = tempfile::tempdir().unwrap();
    std::fs::copy(&module, trusted.path().join("phone-keypad.so")).unwrap();
    let dialog = |handle: u32, ui_module: Option<&str>| OpenDialog {
        handle,
        provider: "phone".into(),
        request: None,
        deadline_ms: 1000,
        form: Form {
            title: "Phone: calling 555-0100".into(),
            ui_module: ui_module.map(Into::into),
            ..Form::default()
        },
    };
    let (generic, log) = Scripted::new(|_| UiAction::Wait);
    let mut ui = ModuleUi::new(vec![trusted.path().to_owned()], generic);
    // The module draws it (and waits for the agent's typed answer): the generic UI is
    // not asked.
    assert_eq!(ui.open(&dialog(1, Some("phone-keypad"))), UiAction::Wait);
    ui.closed(1, "call ended");
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    // A form naming no module, or one that is not there, gets the generic form.
    ui.open(&dialog(2, None));
    ui.open(&dialog(3, Some("no-such-module")));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "open Phone: calling 555-0100",
            "open Phone: calling 555-0100"
        ]
    );

    // A module anyone may write is not trusted: the generic form instead.
    use std::os::unix::fs::PermissionsExt;
    let loose = tempfile::tempdir().unwrap();
    let copy = loose.path().join("phone-keypad.so");
    std::fs::copy(&module, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (generic, log) = Scripted::new(|_| UiAction::Wait);
    let mut ui = ModuleUi::new(vec![loose.path().to_owned()], generic);
    ui.open(&dialog(4, Some("phone-keypad")));
    assert_eq!(*log.lock().unwrap(), ["open Phone: calling 555-0100"]);
}

/// Drives `agent`'s events until its UI's log satisfies `seen` (at most 30 s).
fn until_seen(agent: &mut Client, ui: &Watching, seen: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen(&ui.lock().log) {
        assert!(Instant::now() < deadline, "{:?}", ui.lock().log);
        agent.next_event(Some(Duration::from_millis(50))).unwrap();
    }
}

/// A burst of one update to an agent on a direct channel, the agent's UI having shown it.
fn direct_burst(
    d: &Daemon,
) -> (
    Client,
    Watching,
    std::thread::JoinHandle<Result<String, ClientError>>,
) {
    let ui = Watching::default();
    let mut agent = showing_with(d, ui.clone(), true);
    agent.register_agent().unwrap();
    let burst = burst_in_background(d, Instance::from_pairs([("count", Value::U64(1))]));
    until_seen(&mut agent, &ui, |log| {
        log.iter().any(|l| l == "update update 1")
    });
    (agent, ui, burst)
}

#[test]
fn either_side_of_a_direct_dialog_going_away_is_reported_to_the_other() {
    let d = daemon();
    // The worker dies: the agent is told why, through the daemon.
    let (mut agent, ui, burst) = direct_burst(&d);
    let pid = d.status("confirm").pid.expect("the worker runs");
    // SAFETY: kill signals the worker process the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    until_seen(&mut agent, &ui, |log| {
        log.iter().any(|l| l.starts_with("closed"))
    });
    let closed = ui.lock().log.last().cloned().unwrap();
    assert!(
        closed.starts_with("closed provider confirm went away: ") && closed.contains("SIGKILL"),
        "{closed}"
    );
    assert!(burst.join().unwrap().is_err());
    drop(agent);

    // The agent goes: the provider, waiting on the channel, is told by the daemon.
    let (agent, _, burst) = direct_burst(&d);
    drop(agent);
    let err = burst.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("disconnected"), "{err}");
    let outcome = last_outcome(&d);
    assert!(
        outcome.starts_with("the dialog was closed: the application (pid "),
        "{outcome}"
    );
}

#[test]
fn a_direct_channel_nobody_reads_overflows_to_the_daemon_whose_rules_hold() {
    let d = daemon();
    // An agent that asks for direct channels, then never reads: the channel fills, the
    // rest goes through the daemon, which holds at most 256 for a dialog not yet shown.
    let mut agent = showing_with(&d, Watching::default(), true);
    agent.register_agent().unwrap();
    let burst = burst_in_background(&d, Instance::from_pairs([("count", Value::U64(3_000))]));
    let err = burst.join().unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("sent more than 256 updates before the application showed the dialog"),
        "{err}"
    );
    drop(agent);
}

#[test]
fn an_agent_shows_what_its_channel_held_before_what_came_through_the_daemon() {
    let d = daemon();
    let ui = Watching::default();
    let mut agent = showing_with(&d, ui.clone(), true);
    agent.register_agent().unwrap();
    // The dialog is shown, then the agent looks away while the provider sends more than
    // the channel holds (the rest through the daemon), then reads everything.
    let burst = burst_in_background(&d, Instance::from_pairs([("count", Value::U64(0))]));
    until_seen(&mut agent, &ui, |log| log.iter().any(|l| l == "open Burst"));
    let handle = ui.lock().handle;
    let second = burst_in_background(
        &d,
        Instance::from_pairs([
            ("count", Value::U64(1_500)),
            ("after_button", Value::Bool(true)),
        ]),
    );
    // The first burst waits for a button; the second is a dialog of its own: find it.
    // Once `until_seen` returns the daemon has the agent's ready signal, so the updates
    // that overflow to it are for a dialog shown (the 256-held rule is not in play).
    until_seen(&mut agent, &ui, |log| {
        log.iter().filter(|l| l.starts_with("open")).count() == 2
    });
    let second_handle = ui.lock().handle;
    agent
        .dialog_send(second_handle, DialogInput::button("done").unwrap())
        .unwrap();
    // Now away for a while: the second burst's updates overflow the channel.
    std::thread::sleep(Duration::from_millis(500));
    until_seen(&mut agent, &ui, |log| {
        log.iter().any(|l| l == "update update 1500")
    });
    let updates: Vec<String> = ui
        .lock()
        .log
        .iter()
        .filter(|l| l.starts_with("update "))
        .cloned()
        .collect();
    let expected: Vec<String> = (1..=1_500).map(|i| format!("update update {i}")).collect();
    assert_eq!(updates, expected, "in order, none lost");
    for h in [handle, second_handle] {
        agent
            .dialog_send(h, DialogInput::button("done").unwrap())
            .unwrap();
    }
    assert_eq!(burst.join().unwrap().unwrap(), "0 updates, then done");
    assert_eq!(second.join().unwrap().unwrap(), "1500 updates, then done");
}
