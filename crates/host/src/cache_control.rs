//! Cache control as data (WMI's `__CacheControl`; `docs/lifecycle.md`, "Cache control"):
//! the `clear_after` default of each provider kind, as the instances of
//! `purveyor.cache_control` that the daemon's owner writes with `purveyor set`.
//!
//! **Invariants.** A kind's window is, in order: the owner's setting (kept in
//! `STATE_DIR/purveyor/cache_control.toml`, written before it takes effect, so an
//! acknowledged `set` survives a restart), else `--clear-after`, else the built-in
//! default. A provider whose manifest gives `clear_after` keeps its own. Every change wakes
//! the idle timers, which look again with the new window at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use purveyor_hosting::lock::Locked;
use purveyor_model::{Instance, Value};

use crate::config::ClearAfter;
use crate::manifest::{MIN_CLEAR_AFTER, ProviderKind};

/// The longest window accepted: 30 days.
pub(crate) const MAX_CLEAR_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

pub(crate) struct CacheControl {
    /// The built-in defaults with `--clear-after` applied.
    base: ClearAfter,
    /// The owner's settings, by kind.
    set: Mutex<BTreeMap<ProviderKind, Duration>>,
    /// Where the settings are kept (`None`: not kept, as in tests of pure logic).
    file: Option<PathBuf>,
    /// Bumped on every change; the idle timers wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

impl CacheControl {
    /// The windows of `base`, with the owner's settings read from `file` (a file that
    /// cannot be read or parsed is reported and left out: the daemon still starts).
    pub fn new(base: ClearAfter, file: Option<PathBuf>) -> Self {
        let set = file.as_ref().map(|f| read(f)).unwrap_or_default();
        CacheControl {
            base,
            set: Mutex::new(set),
            file,
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The file the daemon keeps the settings in.
    pub fn default_file() -> PathBuf {
        purveyor_provider::state_dir().join("purveyor/cache_control.toml")
    }

    /// The window of `kind` now.
    pub fn get(&self, kind: ProviderKind) -> Duration {
        self.set
            .locked()
            .get(&kind)
            .copied()
            .unwrap_or_else(|| self.base.get(kind))
    }

    /// Wakes on every change.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Sets `kind`'s window, kept before it takes effect.
    pub fn set(&self, kind: ProviderKind, window: Duration) -> Result<(), String> {
        if window < MIN_CLEAR_AFTER || window > MAX_CLEAR_AFTER {
            return Err(format!(
                "clear_after_ms {} is outside {} ms – {} ms",
                window.as_millis(),
                MIN_CLEAR_AFTER.as_millis(),
                MAX_CLEAR_AFTER.as_millis()
            ));
        }
        self.change(|set| {
            set.insert(kind, window);
        })
    }

    /// Returns `kind` to `--clear-after` or the built-in default; false if it was not set.
    pub fn clear(&self, kind: ProviderKind) -> Result<bool, String> {
        let mut was = false;
        self.change(|set| was = set.remove(&kind).is_some())?;
        Ok(was)
    }

    /// Applies `edit` to a copy, keeps the copy, then puts it in force and wakes the timers.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<ProviderKind, Duration>),
    ) -> Result<(), String> {
        let mut set = self.set.locked();
        let mut next = set.clone();
        edit(&mut next);
        if let Some(file) = &self.file {
            write(file, &next)?;
        }
        *set = next;
        drop(set);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The instances of `purveyor.cache_control`, one per kind.
    pub fn instances(&self) -> Vec<Instance> {
        let set = self.set.locked();
        ProviderKind::ALL
            .iter()
            .map(|&kind| {
                let built_in = ClearAfter::default().get(kind);
                let (window, source) = match set.get(&kind) {
                    Some(w) => (*w, "set"),
                    None if self.base.get(kind) != built_in => {
                        (self.base.get(kind), "command line")
                    }
                    None => (built_in, "default"),
                };
                Instance::from_pairs([
                    ("kind", Value::String(kind.as_str().into())),
                    ("clear_after_ms", Value::U64(window.as_millis() as u64)),
                    (
                        "default_ms",
                        Value::U64(self.base.get(kind).as_millis() as u64),
                    ),
                    ("source", Value::String(source.into())),
                ])
            })
            .collect()
    }
}

/// The settings in `file`: `[clear_after]` with `KIND = "DURATION"` lines. Read as every
/// configuration file is (`config_file::read_text`: a regular file, without blocking,
/// bounded).
fn read(file: &std::path::Path) -> BTreeMap<ProviderKind, Duration> {
    if std::fs::symlink_metadata(file).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return BTreeMap::new();
    }
    let text = match crate::config_file::read_text(file) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the cache control settings; using the defaults");
            return BTreeMap::new();
        }
    };
    match parse(&text) {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cache control settings left out");
            BTreeMap::new()
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Kept {
    #[serde(default)]
    clear_after: BTreeMap<String, String>,
}

fn parse(text: &str) -> Result<BTreeMap<ProviderKind, Duration>, String> {
    let kept: Kept = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut set = BTreeMap::new();
    for (kind, window) in kept.clear_after {
        let kind: ProviderKind = kind.parse()?;
        let window =
            humantime::parse_duration(&window).map_err(|e| format!("{}: {e}", kind.as_str()))?;
        if !(MIN_CLEAR_AFTER..=MAX_CLEAR_AFTER).contains(&window) {
            return Err(format!(
                "{}: {} is out of range",
                kind.as_str(),
                humantime::format_duration(window)
            ));
        }
        set.insert(kind, window);
    }
    Ok(set)
}

/// Writes the settings: a new file renamed over the old, so a crash leaves one or the other.
fn write(file: &std::path::Path, set: &BTreeMap<ProviderKind, Duration>) -> Result<(), String> {
    let kept = Kept {
        clear_after: set
            .iter()
            .map(|(k, w)| {
                (
                    k.as_str().to_string(),
                    humantime::format_duration(*w).to_string(),
                )
            })
            .collect(),
    };
    // Kinds and durations (`5m 30s`) need no quoting beyond TOML's basic strings.
    let mut text = String::from(
        "# Written by the daemon: `purveyor set purveyor.cache_control` (docs/lifecycle.md).\n[clear_after]\n",
    );
    for (kind, window) in &kept.clear_after {
        text.push_str(&format!("{kind} = \"{window}\"\n"));
    }
    let failed = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", file.display());
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed("make the directory of", e))?;
    }
    let tmp = file.with_extension("toml.new");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| failed("write", e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| failed("write", e))?;
        f.sync_all().map_err(|e| failed("sync", e))?;
    }
    std::fs::rename(&tmp, file).map_err(|e| failed("replace", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_wins_and_is_kept_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("purveyor/cache_control.toml");
        let base = ClearAfter {
            counter: Duration::from_secs(30),
            ..ClearAfter::default()
        };
        let cache = CacheControl::new(base, Some(file.clone()));
        assert_eq!(cache.get(ProviderKind::Counter), Duration::from_secs(30));
        let woken = cache.watch();
        cache
            .set(ProviderKind::Instance, Duration::from_secs(2))
            .unwrap();
        assert!(woken.has_changed().unwrap());
        assert_eq!(cache.get(ProviderKind::Instance), Duration::from_secs(2));
        let sources: Vec<String> = cache
            .instances()
            .iter()
            .map(|i| format!("{:?}", i.get("source").unwrap()))
            .collect();
        assert_eq!(
            sources[..2],
            ["String(\"set\")", "String(\"command line\")"]
        );
        // Kept: a new host reads it back.
        let again = CacheControl::new(ClearAfter::default(), Some(file.clone()));
        assert_eq!(again.get(ProviderKind::Instance), Duration::from_secs(2));
        assert!(again.clear(ProviderKind::Instance).unwrap());
        assert!(!again.clear(ProviderKind::Instance).unwrap());
        let third = CacheControl::new(ClearAfter::default(), Some(file));
        assert_eq!(third.get(ProviderKind::Instance), Duration::from_secs(300));
    }

    #[test]
    fn windows_out_of_range_and_bad_files_are_refused() {
        let cache = CacheControl::new(ClearAfter::default(), None);
        let err = cache
            .set(ProviderKind::Io, Duration::from_millis(5))
            .unwrap_err();
        assert_eq!(err, "clear_after_ms 5 is outside 100 ms – 2592000000 ms");
        assert!(cache.set(ProviderKind::Io, MAX_CLEAR_AFTER * 2).is_err());
        assert_eq!(cache.get(ProviderKind::Io), Duration::from_secs(60));
        assert!(
            parse("[clear_after]\nwidget = \"1s\"\n")
                .unwrap_err()
                .contains("unknown provider kind \"widget\"")
        );
        assert!(parse("[clear_after]\ncounter = \"soon\"\n").is_err());
        assert!(parse("[clear]\n").is_err());
        // Not a regular file (a directory here; a FIFO would be opened without blocking):
        // the defaults, at once.
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheControl::new(ClearAfter::default(), Some(dir.path().to_owned()));
        assert_eq!(cache.get(ProviderKind::Io), Duration::from_secs(60));
    }
}
