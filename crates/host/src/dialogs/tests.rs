//! The hub's routing rules, without sockets or providers: origins record what the hub
//! tells them, sessions are sinks.

use std::sync::Mutex;

use purveyor_protocol::{DialogInput, FormUpdate};

use super::*;

/// What a provider was told: `(dialog, event)` in order.
type Told = Arc<Mutex<Vec<(u32, DialogEvent)>>>;

/// A provider side that records the news it is told.
fn origin(hub: &Arc<DialogHub>) -> (Arc<Origin>, Told) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let record = told.clone();
    let origin = hub.origin(
        "phone".into(),
        Box::new(move |dialog, event| record.lock().unwrap().push((dialog, event))),
        None,
        Box::new(|| Box::new(())),
    );
    (origin, told)
}

fn session(id: u64, uid: u32) -> SessionUi {
    let caller = Caller::new(uid, uid, 1000 + uid);
    SessionUi::new(id, caller, Arc::new(PushSink::new(16)))
}

fn open(call: u32, user: Option<u32>) -> DialogOp {
    DialogOp::Open {
        form: Form {
            title: "Pick up the handset".into(),
            ..Form::default()
        },
        call,
        user,
        agent: None,
        deadline_ms: 0,
    }
}

fn hub() -> Arc<DialogHub> {
    Arc::new(DialogHub::new(Arc::new(
        purveyor_hosting::lock::Current::new(Arc::new(AccessPolicy::defaults())),
    )))
}

/// What the provider was last told.
fn last(told: &Mutex<Vec<(u32, DialogEvent)>>) -> DialogEvent {
    told.lock()
        .unwrap()
        .last()
        .expect("told something")
        .1
        .clone()
}

#[test]
fn an_in_call_dialog_reaches_only_the_client_whose_call_holds_the_token() {
    let hub = hub();
    let (origin, told) = origin(&hub);
    let client = session(1, 1000);
    client.set_shows(true);
    let token = hub.begin_call(&client, Some(7));
    hub.provider_op(&origin, 1, open(token.token, None));
    let DialogEvent::Opened { handle } = last(&told) else {
        panic!("not opened: {:?}", last(&told));
    };
    let pushes = client.sink.take();
    assert!(
        matches!(&pushes[..], [(h, Push::DialogOpen { request: Some(7), .. })] if *h == handle),
        "{pushes:?}"
    );
    // Once the call is over, its token opens nothing.
    drop(token);
    hub.provider_op(&origin, 2, open(token_after_end(), None));
    assert!(
        matches!(last(&told), DialogEvent::Refused { message } if message.contains("no UI available"))
    );
    // A client that does not show dialogs is never asked.
    let quiet = session(2, 1000);
    let token = hub.begin_call(&quiet, None);
    hub.provider_op(&origin, 3, open(token.token, None));
    assert!(
        matches!(last(&told), DialogEvent::Refused { message } if message.contains("cannot show dialogs"))
    );
    assert_eq!((hub.opened(), hub.refused()), (1, 2));
}

/// A token no call holds.
fn token_after_end() -> u32 {
    u32::MAX - 1
}

#[test]
fn a_spontaneous_dialog_goes_to_an_agent_of_its_user_and_no_other() {
    let hub = hub();
    let (origin, told) = origin(&hub);
    hub.provider_op(&origin, 1, open(0, Some(1000)));
    assert!(
        matches!(last(&told), DialogEvent::Refused { message } if message.contains("no UI agent is registered for uid 1000"))
    );
    let stranger = session(1, 2000);
    hub.register_agent(&stranger);
    hub.provider_op(&origin, 2, open(0, Some(1000)));
    assert!(matches!(last(&told), DialogEvent::Refused { .. }));
    assert!(
        stranger.sink.take().is_empty(),
        "another user's agent saw it"
    );
    let agent = session(2, 1000);
    hub.register_agent(&agent);
    hub.provider_op(&origin, 3, open(0, Some(1000)));
    assert!(matches!(last(&told), DialogEvent::Opened { .. }));
    assert_eq!(agent.sink.take().len(), 1);
    // A spontaneous dialog must say whose it is.
    hub.provider_op(&origin, 4, open(0, None));
    assert!(
        matches!(last(&told), DialogEvent::Refused { message } if message.contains("must name its user"))
    );
}

#[test]
fn updates_wait_for_the_ready_signal_and_the_clients_end_closes_its_dialogs() {
    let hub = hub();
    let (origin, told) = origin(&hub);
    let agent = session(1, 1000);
    hub.register_agent(&agent);
    hub.provider_op(&origin, 1, open(0, Some(1000)));
    let DialogEvent::Opened { handle } = last(&told) else {
        panic!("not opened");
    };
    agent.sink.take();
    let update = |text: &str| {
        DialogOp::Update(FormUpdate {
            text: Some(text.into()),
            ..FormUpdate::default()
        })
    };
    hub.provider_op(&origin, 1, update("one"));
    hub.provider_op(&origin, 1, update("two"));
    assert!(
        agent.sink.take().is_empty(),
        "updates before ready were sent"
    );
    hub.ready(&agent, handle).unwrap();
    let texts: Vec<String> = agent
        .sink
        .take()
        .into_iter()
        .map(|(_, push)| match push {
            Push::DialogUpdate { update } => update.text.unwrap_or_default(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["one", "two"]);
    // Only the owning session may answer it.
    let other = session(2, 1000);
    assert!(hub.send(&other, handle, DialogInput::default()).is_err());
    hub.send(&agent, handle, DialogInput::default()).unwrap();
    assert!(matches!(last(&told), DialogEvent::Input(_)));
    // The application goes: the dialog closes and the provider is told why, once.
    hub.session_gone(&agent);
    assert!(
        matches!(last(&told), DialogEvent::Closed { reason } if reason.contains("disconnected"))
    );
    assert_eq!((hub.open_dialogs(), hub.agents()), (0, 0));
    hub.session_gone(&agent);
    let closes = told
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| matches!(e, DialogEvent::Closed { .. }))
        .count();
    assert_eq!(closes, 1);
}

/// A provider side in a worker that takes dialog channels: records the news, and hands
/// over each channel's socket to `handed` (or fails to, with `works` false).
fn worker_origin(hub: &Arc<DialogHub>, works: bool) -> (Arc<Origin>, Told, Arc<Mutex<Vec<u32>>>) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let handed = Arc::new(Mutex::new(Vec::new()));
    let (record, hand) = (told.clone(), handed.clone());
    let origin = hub.origin(
        "phone".into(),
        Box::new(move |dialog, event| record.lock().unwrap().push((dialog, event))),
        Some(Box::new(move |dialog, _socket| {
            if !works {
                return Err("its worker is gone".into());
            }
            hand.lock().unwrap().push(dialog);
            Ok(())
        })),
        Box::new(|| Box::new(())),
    );
    (origin, told, handed)
}

#[test]
fn an_agent_that_asked_gets_a_channel_before_the_open_and_the_worker_the_other_end() {
    let hub = hub();
    let (origin, told, handed) = worker_origin(&hub, true);
    let agent = session(1, 1000);
    agent.set_direct(true);
    hub.register_agent(&agent);
    hub.provider_op(&origin, 4, open(0, Some(1000)));
    let DialogEvent::Direct { handle, fd: -1 } = last(&told) else {
        panic!("not direct: {:?}", last(&told));
    };
    assert_eq!(*handed.lock().unwrap(), [4]);
    let pushes = agent.sink.take();
    assert!(
        matches!(&pushes[..], [(a, Push::DialogChannel), (b, Push::DialogOpen { .. })] if *a == handle && *b == handle),
        "{pushes:?}"
    );
    assert!(
        agent.sink.take_channel(handle).is_some(),
        "the agent's end rides on its push"
    );
    assert!(agent.sink.take_channel(handle).is_none(), "once");
    assert_eq!(hub.direct(), 1);

    // An agent that did not ask, or a hand-over that fails: plain `opened`.
    let plain = session(2, 1001);
    hub.register_agent(&plain);
    hub.provider_op(&origin, 5, open(0, Some(1001)));
    assert!(
        matches!(last(&told), DialogEvent::Opened { .. }),
        "{:?}",
        last(&told)
    );
    assert!(
        !plain
            .sink
            .take()
            .iter()
            .any(|(_, p)| matches!(p, Push::DialogChannel)),
        "no channel for an agent that did not ask"
    );
    let (broken, told, _) = worker_origin(&hub, false);
    hub.provider_op(&broken, 6, open(0, Some(1000)));
    assert!(
        matches!(last(&told), DialogEvent::Opened { .. }),
        "{:?}",
        last(&told)
    );
    assert_eq!(hub.direct(), 1, "a failed hand-over is not counted");
}

#[test]
fn an_agent_that_does_not_read_makes_the_daemon_hold_a_bounded_number_of_channels() {
    let hub = hub();
    let (origin, told, _) = worker_origin(&hub, true);
    let agent = session(1, 1000);
    agent.set_direct(true);
    hub.register_agent(&agent);
    let max = crate::push::CHANNELS_MAX as u32;
    for local in 1..=max {
        hub.provider_op(&origin, local, open(0, Some(1000)));
        assert!(matches!(last(&told), DialogEvent::Direct { .. }));
    }
    // The agent has read none of them: the next goes through the daemon.
    hub.provider_op(&origin, max + 1, open(0, Some(1000)));
    assert!(
        matches!(last(&told), DialogEvent::Opened { .. }),
        "{:?}",
        last(&told)
    );
    assert_eq!(hub.direct(), u64::from(max));
}
