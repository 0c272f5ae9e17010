//! Unit tests of the worker's direct channels.

use super::*;

/// A channel of `provider` from policy generation `policy`, and its client's end.
fn channel(provider: &str, policy: u64) -> (Arc<Channel>, UnixStream) {
    let (ours, client) = UnixStream::pair().unwrap();
    let channel = Channel {
        provider: provider.to_string(),
        name: ProviderName::new(provider).unwrap(),
        caller: CallerInfo::default(),
        schemas: HashMap::default(),
        offers_get: true,
        offers_enumerate: true,
        writable: Vec::new(),
        deletable: Vec::new(),
        policy,
        deadline: Duration::from_secs(1),
        usage: Arc::new(UseReport {
            provider: provider.to_string(),
            keep: 1,
            last: 0.into(),
            calls: 0.into(),
            errors: 0.into(),
        }),
        writer: Arc::new(Mutex::new(ours)),
    };
    (Arc::new(channel), client)
}

/// Whether the client's next request would reach the worker.
fn takes_requests(client: &mut UnixStream) -> bool {
    client.write_all(b"x").is_ok()
}

#[test]
fn a_close_ends_older_channels_of_its_provider_and_refuses_them_later() {
    let mut open = OpenChannels::default();
    let (old, mut old_client) = channel("config", 0);
    let (other, mut other_client) = channel("other", 0);
    assert!(open.admit(&old) && open.admit(&other));
    open.close("config", 1);
    assert!(
        !takes_requests(&mut old_client),
        "the old policy's channel is shut"
    );
    assert!(
        takes_requests(&mut other_client),
        "another provider's is not"
    );
    // An attach decided before the reload but arriving after its close: refused.
    let (late, _) = channel("config", 0);
    assert!(!open.admit(&late));
    // One decided under the new policy is served, and a later close of the same
    // generation leaves it alone.
    let (new, mut new_client) = channel("config", 1);
    assert!(open.admit(&new));
    open.close("config", 1);
    assert!(takes_requests(&mut new_client));
}
