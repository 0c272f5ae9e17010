//! The host at its own boundary: requests in, answers out, with a fake builtin provider
//! and (for the lifecycle) tokio's paused clock — no sockets, no sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use purveyor_hosting::{BuiltinProvider, Dispatch};
use purveyor_model::{
    ClassPath, ClassSchema, EventDef, Identifier, Instance, InstanceKey, PropertyDef,
    ProviderState, Semantic, Unit, Value,
};
use purveyor_protocol::{ErrorCode, HostMode, Push, RemoteError, Request, Response};
use purveyor_provider::{CallContext, Caller, Provider, ProviderError};

use crate::{Host, HostBuilder, HostConfig};

/// A provider of `fake.thing`: instances 1, 2 and 3 (`value` = id × 10); reading id 13
/// panics; a put raises `changed`.
struct Fake {
    calls: Arc<AtomicU64>,
}

fn class() -> ClassPath {
    ClassPath::new("fake.thing").unwrap()
}

fn thing(id: u64) -> Instance {
    Instance::from_pairs([("id", Value::U64(id)), ("value", Value::U64(id * 10))])
}

impl Provider for Fake {
    fn classes(&self) -> Vec<ClassSchema> {
        let p = PropertyDef::new;
        let changed = EventDef {
            name: Identifier::new("changed").unwrap(),
            properties: vec![p("id", "u64", Unit::None, Semantic::Discrete, "which")],
            description: "A thing changed".into(),
        };
        let properties = vec![
            p("id", "u64", Unit::None, Semantic::Key, "its id"),
            p("value", "u64", Unit::None, Semantic::Discrete, "its value"),
        ];
        vec![ClassSchema::new(class(), "Things", properties, vec![], vec![changed]).unwrap()]
    }

    fn enumerate(&self, _: &ClassPath, _: &CallContext) -> Result<Vec<Instance>, ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok((1..=3).map(thing).collect())
    }

    fn get(
        &self,
        _: &ClassPath,
        key: &InstanceKey,
        _: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match key.get("id") {
            Some(Value::U64(13)) => panic!("thirteen"),
            Some(Value::U64(id @ 1..=3)) => Ok(Some(thing(*id))),
            _ => Ok(None),
        }
    }

    fn put(
        &self,
        _: &ClassPath,
        instance: Instance,
        ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let id = instance.get("id").cloned().unwrap_or(Value::U64(0));
        ctx.emit(&class(), "changed", Instance::from_pairs([("id", id)]))
    }
}

const MANIFEST: &str = r#"
name = "fake"
hosting = "builtin"
builtin = "fake"
classes = ["fake.thing"]
capabilities = ["enumerate", "get", "put", "subscribe"]
clear_after = "10s"
"#;

/// A host whose only provider (besides its own) is the fake, whose calls it counts.
fn host(dispatch: Dispatch) -> (Host, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let dirs = vec!["/nonexistent/purveyor-test".into()];
    let host = HostBuilder::new(HostConfig::with_dirs(HostMode::Embedded, dirs))
        .builtin(BuiltinProvider::new(
            "fake",
            MANIFEST,
            dispatch,
            move || {
                Ok(Fake {
                    calls: counted.clone(),
                })
            },
        ))
        .build();
    (host, calls)
}

fn key(id: u64) -> InstanceKey {
    let mut key = InstanceKey::new();
    key.insert(Identifier::new("id").unwrap(), Value::U64(id));
    key
}

fn get(id: u64) -> Request {
    Request::Get {
        class: class(),
        key: key(id),
    }
}

fn me() -> Caller {
    Caller::current_process()
}

async fn fake_status(host: &Host) -> purveyor_protocol::ProviderStatus {
    match host.handle(Request::ListProviders, &me()).await.unwrap() {
        Response::Providers(list) => list
            .into_iter()
            .find(|p| p.name.as_str() == "fake")
            .unwrap(),
        other => panic!("{other:?}"),
    }
}

fn code(result: Result<Response, RemoteError>) -> ErrorCode {
    result.expect_err("an error").code
}

#[tokio::test]
async fn requests_reach_the_provider_serving_their_class_and_no_other() {
    let (host, calls) = host(Dispatch::Inline);
    let got = host.handle(get(2), &me()).await.unwrap();
    assert!(
        matches!(&got, Response::Instance(i) if *i == thing(2)),
        "{got:?}"
    );
    let unknown = Request::Get {
        class: ClassPath::new("fake.nothing").unwrap(),
        key: InstanceKey::new(),
    };
    let error = host.handle(unknown, &me()).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(
        error
            .message
            .contains("no provider serves class fake.nothing"),
        "{error}"
    );
    // Not offered by its manifest: refused before the provider is asked.
    let delete = Request::Delete {
        class: class(),
        key: key(1),
    };
    assert_eq!(
        code(host.handle(delete, &me()).await),
        ErrorCode::Unsupported
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_panicking_provider_is_its_error_and_the_host_goes_on() {
    for dispatch in [Dispatch::Inline, Dispatch::Blocking] {
        let (host, _) = host(dispatch);
        let error = host.handle(get(13), &me()).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::ProviderFailed);
        assert!(
            error.message.contains("provider fake panicked: thirteen"),
            "{error}"
        );
        assert!(host.handle(get(1), &me()).await.is_ok());
        let status = fake_status(&host).await;
        assert_eq!((status.calls, status.errors), (2, 1), "{dispatch:?}");
    }
}

#[tokio::test]
async fn the_synchronous_and_the_asynchronous_paths_give_the_same_answers() {
    let (host, calls) = host(Dispatch::Inline);
    let session = host.session(me());
    let shared = host.shared();
    // Loaded first: only a loaded provider is answered at once.
    host.handle(get(1), &me()).await.unwrap();
    let requests = [
        get(1),
        get(7),
        get(13),
        Request::Enumerate {
            class: class(),
            selector: InstanceKey::new(),
        },
        Request::Enumerate {
            class: class(),
            selector: key(3),
        },
        Request::Ping,
    ];
    for request in requests {
        let now = super::answer_now(shared, &session, None, request.clone())
            .unwrap_or_else(|r| panic!("{r:?} was not answered at once"));
        let later = host.handle_in(request.clone(), &session).await;
        assert_eq!(format!("{now:?}"), format!("{later:?}"), "{request:?}");
    }
    // A request that needs waiting is given back untouched.
    let before = calls.load(Ordering::Relaxed);
    let subscribe = Request::Subscribe {
        class: class(),
        event: None,
        filter: vec![],
    };
    assert!(super::answer_now(shared, &session, None, subscribe).is_err());
    assert_eq!(calls.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn subscriptions_need_a_session_and_end_with_it() {
    let (host, _) = host(Dispatch::Inline);
    let subscribe = Request::Subscribe {
        class: class(),
        event: None,
        filter: vec![],
    };
    let error = host.handle(subscribe.clone(), &me()).await.unwrap_err();
    assert!(
        error.message.contains("subscribing needs a session"),
        "{error}"
    );
    let session = host.session(me());
    let Response::Subscribed { handle } = host.handle_in(subscribe, &session).await.unwrap() else {
        panic!("not subscribed");
    };
    let put = Request::Put {
        class: class(),
        instance: thing(2),
    };
    host.handle(put, &me()).await.unwrap();
    let pushes = session.sink().take();
    assert!(
        matches!(&pushes[..], [(h, Push::Event { data, .. })] if *h == handle && data.get("id") == Some(&Value::U64(2))),
        "{pushes:?}"
    );
    assert_eq!(host.shared().events().subscriptions(), 1);
    drop(session);
    assert_eq!(host.shared().events().subscriptions(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_provider_is_released_at_clear_after_and_scrapes_do_not_keep_it() {
    let (host, _) = host(Dispatch::Inline);
    host.handle(get(1), &me()).await.unwrap();
    assert_eq!(fake_status(&host).await.state, ProviderState::Loaded);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // An exporter's scrape reads it but is not use: the clock still runs from the get.
    let scraped = host.scrape(class(), &me()).await.unwrap();
    assert_eq!(scraped.instances.len(), 3);
    tokio::time::sleep(Duration::from_millis(3_900)).await;
    assert_eq!(fake_status(&host).await.state, ProviderState::Loaded);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = fake_status(&host).await;
    assert_eq!(
        (status.state, status.unloads),
        (ProviderState::Registered, 1)
    );
    // A real request is use: it loads it again and restarts the clock.
    host.handle(get(1), &me()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    host.handle(get(2), &me()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let status = fake_status(&host).await;
    assert_eq!((status.state, status.loads), (ProviderState::Loaded, 2));
}
