//! The provider registry: every manifest, and which provider serves which class.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use purveyor_model::{ClassPath, NamespacePath, ProviderName};

use crate::cache_control::CacheControl;
use crate::config::HostConfig;
use crate::manifest::{self, Manifest, ManifestError, ManifestSource};
use crate::slot::Slot;
use purveyor_hosting::BuiltinProvider;

/// The name of the host's own provider, which no manifest may replace.
pub(crate) const SELF_PROVIDER: &str = "purveyor";

pub(crate) struct Registry {
    slots: BTreeMap<ProviderName, Arc<Slot>>,
    by_class: HashMap<ClassPath, Arc<Slot>, foldhash::fast::RandomState>,
    /// Namespaces filled at run time (`app.*`), and by whom. A class named by a manifest
    /// wins over a namespace that contains it.
    by_namespace: Vec<(NamespacePath, Arc<Slot>)>,
    /// I/O procedures installed globally, and by whom.
    by_io: HashMap<purveyor_io::FourCC, Arc<Slot>>,
    /// Manifests that were refused, with why. The rest of the registry serves regardless.
    problems: Vec<ManifestError>,
    /// The directories that were read.
    dirs: Vec<PathBuf>,
}

impl Registry {
    /// Every registered provider's slot, by name.
    pub fn slots(&self) -> &BTreeMap<ProviderName, Arc<Slot>> {
        &self.slots
    }

    /// The provider that installs I/O procedure `code` globally.
    /// Every slot: the providers', and each user's of a requestor provider.
    pub fn all_slots(&self) -> Vec<Arc<Slot>> {
        let mut all = Vec::with_capacity(self.slots.len());
        for slot in self.slots.values() {
            all.push(slot.clone());
            all.extend(slot.user_slots());
        }
        all
    }

    pub fn io_slot(&self, code: &purveyor_io::FourCC) -> Option<&Arc<Slot>> {
        self.by_io.get(code)
    }

    /// The I/O procedures installed globally, and by whom.
    pub fn io_slots(&self) -> impl Iterator<Item = (&purveyor_io::FourCC, &Arc<Slot>)> {
        self.by_io.iter()
    }

    /// Manifests that were refused, with why.
    pub fn problems(&self) -> &[ManifestError] {
        &self.problems
    }

    /// The providers directories that were read.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The slot serving `class`: by name, else by namespace.
    pub fn slot_for(&self, class: &ClassPath) -> Option<&Arc<Slot>> {
        self.by_class.get(class).or_else(|| {
            self.by_namespace
                .iter()
                .find(|(ns, _)| ns.contains(class))
                .map(|(_, slot)| slot)
        })
    }

    /// Builds the registry from the built-in manifests, then the providers directories (a
    /// file replaces the built-in manifest of the same name; the first directory wins).
    /// With `previous` (a reload), a provider whose manifest is unchanged keeps its slot —
    /// loaded or not, with its statistics.
    pub fn build<'b>(
        config: &HostConfig,
        builtins: impl Iterator<Item = &'b BuiltinProvider>,
        previous: Option<&Registry>,
        cache: Option<&Arc<CacheControl>>,
    ) -> Registry {
        let mut problems = Vec::new();
        let (chosen, dirs) = choose(config, builtins, &mut problems);
        let mut slots = BTreeMap::new();
        let mut by_class: HashMap<ClassPath, Arc<Slot>, foldhash::fast::RandomState> =
            HashMap::default();
        let mut by_namespace: Vec<(NamespacePath, Arc<Slot>)> = Vec::new();
        let mut by_io: HashMap<purveyor_io::FourCC, Arc<Slot>> = HashMap::new();
        for (name, mut manifest) in chosen {
            if let Some((code, other)) = manifest
                .io
                .iter()
                .find_map(|c| by_io.get(c).map(|s| (c, s)))
            {
                problems.push(ManifestError {
                    file: manifest.source.to_string(),
                    line: None,
                    field: Some("io".into()),
                    message: format!(
                        "I/O procedure {code} is already installed by provider {} ({}); provider {name} is not registered",
                        other.manifest().name, other.manifest().source
                    ),
                });
                continue;
            }
            if !manifest.clear_after_given {
                manifest.clear_after = config.clear_after.get(manifest.kind);
            }
            if let Some(clash) = manifest
                .classes
                .iter()
                .find_map(|c| by_class.get(c).map(|s| (c, s)))
            {
                problems.push(ManifestError {
                    file: manifest.source.to_string(),
                    line: None,
                    field: Some("classes".into()),
                    message: format!(
                        "class {} is already served by provider {} ({}); provider {} is not registered",
                        clash.0, clash.1.manifest().name, clash.1.manifest().source, name
                    ),
                });
                continue;
            }
            let slot = slot(config, &name, manifest, previous, cache);
            for class in &slot.manifest().classes {
                by_class.insert(class.clone(), slot.clone());
            }
            for ns in &slot.manifest().namespaces {
                by_namespace.push((ns.clone(), slot.clone()));
            }
            for code in &slot.manifest().io {
                by_io.insert(*code, slot.clone());
            }
            slots.insert(name, slot);
        }
        for problem in &problems {
            tracing::warn!(%problem, "manifest refused");
        }
        Registry {
            slots,
            by_class,
            by_namespace,
            by_io,
            problems,
            dirs,
        }
    }
}

/// The slot for `manifest`: the previous registry's when its manifest is the same (a
/// reload), else a new one.
fn slot(
    config: &HostConfig,
    name: &ProviderName,
    manifest: Manifest,
    previous: Option<&Registry>,
    cache: Option<&Arc<CacheControl>>,
) -> Arc<Slot> {
    let kept = previous
        .and_then(|p| p.slots.get(name))
        .filter(|old| *old.manifest() == manifest)
        .cloned();
    kept.unwrap_or_else(|| {
        Arc::new(Slot::new(
            manifest,
            config.quarantine_crashes,
            config.crash_window,
            cache.cloned(),
        ))
    })
}

/// The manifest of each provider: the built-in ones, replaced by files of the same name
/// from the providers directories (the first directory wins); and the directories read.
/// What is refused goes to `problems`.
fn choose<'b>(
    config: &HostConfig,
    builtins: impl Iterator<Item = &'b BuiltinProvider>,
    problems: &mut Vec<ManifestError>,
) -> (BTreeMap<ProviderName, Manifest>, Vec<PathBuf>) {
    let mut chosen: BTreeMap<ProviderName, Manifest> = BTreeMap::new();
    for builtin in builtins {
        match Manifest::parse(
            builtin.manifest,
            ManifestSource::Builtin(builtin.name.clone()),
            None,
        ) {
            Ok(m) => {
                chosen.insert(m.name.clone(), m);
            }
            Err(errors) => problems.extend(errors),
        }
    }
    let mut from_files: BTreeMap<ProviderName, PathBuf> = BTreeMap::new();
    let mut dirs = Vec::new();
    for dir in &config.provider_dirs {
        if !dir.exists() {
            continue;
        }
        dirs.push(dir.clone());
        let (manifests, errors) = manifest::load_dir(dir);
        problems.extend(errors);
        for m in manifests {
            let file = m.source.to_string();
            if m.name.as_str() == SELF_PROVIDER {
                problems.push(ManifestError {
                    file,
                    line: None,
                    field: Some("name".into()),
                    message: "the purveyor provider is part of the host and cannot be replaced"
                        .into(),
                });
                continue;
            }
            if let Some(first) = from_files.get(&m.name) {
                tracing::info!(provider = %m.name, used = %first.display(), ignored = %file, "manifest shadowed by an earlier directory");
                continue;
            }
            if let ManifestSource::File(path) = &m.source {
                from_files.insert(m.name.clone(), path.clone());
            }
            chosen.insert(m.name.clone(), m);
        }
    }
    (chosen, dirs)
}
