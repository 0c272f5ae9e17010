//! Counter directories that come and go: a directory missing when the provider starts is
//! served as soon as it is made (its nearest existing ancestor is watched meanwhile), one
//! removed takes its sets with it, and one made again is served again.

use std::path::Path;
use std::time::Duration;

use purveyor_app_counters::AppCounters;
use purveyor_counters::{CounterSet, CounterType, Unit};
use purveyor_provider::Provider;

fn served(p: &AppCounters) -> Vec<String> {
    let mut names: Vec<String> = p
        .classes()
        .iter()
        .map(|c| c.path().as_str().to_owned())
        .collect();
    names.sort();
    names
}

fn publish(dir: &Path, name: &str) -> CounterSet {
    CounterSet::builder(name)
        .counter("requests", CounterType::Counter, Unit::Count, "")
        .create_in(dir)
        .unwrap()
}

#[test]
fn a_directory_made_after_the_start_is_served_at_once_and_again_after_it_was_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("a");
    let dir = top.join("b/counters");
    let p = AppCounters::new(vec![dir.clone()], vec![], Duration::from_secs(60));
    assert!(served(&p).is_empty());
    // Asked again while nothing changed: still nothing, from the ancestor's quiet watch.
    assert!(served(&p).is_empty());

    // Made two levels at a time: the watch moves down the path as each level appears.
    std::fs::create_dir(&top).unwrap();
    assert!(served(&p).is_empty());
    std::fs::create_dir_all(&dir).unwrap();
    let set = publish(&dir, "late");
    assert_eq!(served(&p), ["app.late"]);

    // Removed with everything in it: its set goes.
    std::fs::remove_dir_all(&top).unwrap();
    assert!(served(&p).is_empty(), "{:?}", served(&p));
    drop(set);

    // Made again: served again, with no request in between to notice the gap.
    std::fs::create_dir_all(&dir).unwrap();
    let _set = publish(&dir, "again");
    assert_eq!(served(&p), ["app.again"]);
}
