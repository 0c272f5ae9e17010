//! Provider manifests: one TOML file per provider, validated with errors that name the file,
//! the line and the field (format in `docs/manifest.md`).

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use purveyor_model::{Capability, ClassPath, Hosting, NamespacePath, ProviderName};
use serde::Deserialize;
use toml::Spanned;

/// The idle interval used when a manifest gives none.
pub const DEFAULT_CLEAR_AFTER: Duration = Duration::from_secs(300);
/// The call deadline used when a manifest gives none.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest `clear_after` accepted.
pub const MIN_CLEAR_AFTER: Duration = Duration::from_millis(100);

pub use confine::{ProviderLimits, RunAs};

/// A validated provider manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: ProviderName,
    pub description: String,
    pub hosting: Hosting,
    pub entry: Entry,
    pub classes: Vec<ClassPath>,
    /// Namespaces the provider fills at run time (`"app.*"` in `classes`): every class
    /// below them is its, with the schema it gives when asked. Builtin providers only.
    pub namespaces: Vec<NamespacePath>,
    /// The I/O procedures the provider installs globally (`io = ["XOR "]`).
    pub io: Vec<purveyor_io::FourCC>,
    pub capabilities: BTreeSet<Capability>,
    /// What the provider mainly serves; picks its default `clear_after`.
    pub kind: ProviderKind,
    /// An idle provider is released no earlier than this after its last use, and no later
    /// than twice this. Without `clear_after` in the file, the host configuration's
    /// default for the provider's kind ([`DEFAULT_CLEAR_AFTER`] until the registry applies
    /// it).
    pub clear_after: Duration,
    /// Whether the file gave `clear_after`.
    pub clear_after_given: bool,
    /// A pure provider exists only to serve requests; a non-pure one may live on after
    /// release and is not counted as loaded.
    pub pure: bool,
    pub call_timeout: Duration,
    /// `user`/`group` (isolated and external only; `None`: the daemon's own).
    pub run_as: Option<RunAs>,
    /// `user = "requestor"`: the worker runs as each caller; `run_as` is set only on a
    /// user's own copy (`slot/requestor.rs`).
    pub requestor: bool,
    /// `[limits]` (isolated and external only).
    pub limits: ProviderLimits,
    /// `sandbox = "strict"`: the paths it may read besides its library (`sandbox_read`).
    pub sandbox: Option<Vec<PathBuf>>,
    pub source: ManifestSource,
}

/// What a provider mainly serves (`kind` in a manifest). Like cache-control classes, each
/// kind has its own default `clear_after` in the host configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// Instances and methods (the default).
    Instance,
    /// Counters, read on every scrape.
    Counter,
    /// Events to subscribers.
    Event,
    /// I/O procedures.
    Io,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Instance,
        ProviderKind::Counter,
        ProviderKind::Event,
        ProviderKind::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Instance => "instance",
            ProviderKind::Counter => "counter",
            ProviderKind::Event => "event",
            ProviderKind::Io => "io",
        }
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProviderKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown provider kind {s:?} (expected instance, counter, event or io)")
            })
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host starts for a provider, by hosting model.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// `hosting = "builtin"`: a provider compiled into the binary, by name.
    Builtin(String),
    /// `hosting = "in-daemon"` or `"isolated"`: a shared library exporting the install
    /// function; isolated providers with the same `host_group` share one worker.
    Library {
        path: PathBuf,
        host_group: Option<String>,
    },
    /// `hosting = "external"`: an executable and its arguments.
    External { command: Vec<String> },
}

impl Manifest {
    /// The directory of the manifest file (external providers run there).
    pub fn dir(&self) -> Option<&Path> {
        match &self.source {
            ManifestSource::File(file) => file.parent().filter(|d| !d.as_os_str().is_empty()),
            ManifestSource::Builtin(_) => None,
        }
    }

    /// `path` as written in this manifest: relative paths are relative to the manifest's
    /// directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        match &self.source {
            ManifestSource::File(file) if p.is_relative() => {
                file.parent().map_or_else(|| p.clone(), |dir| dir.join(&p))
            }
            _ => p,
        }
    }
}

/// Where a manifest was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    File(PathBuf),
    /// Compiled into the binary; a file with the same provider name replaces it.
    Builtin(String),
}

/// One thing wrong with one manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file (or `builtin:NAME`).
    pub file: String,
    /// 1-based line and column, when the problem has a place.
    pub line: Option<(u32, u32)>,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    hosting: Spanned<String>,
    builtin: Option<Spanned<String>>,
    library: Option<Spanned<String>>,
    host_group: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    classes: Option<Spanned<Vec<Spanned<String>>>>,
    /// Four-character codes of the I/O procedures the provider installs globally.
    #[serde(default)]
    io: Option<Spanned<Vec<Spanned<String>>>>,
    capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    kind: Option<Spanned<String>>,
    clear_after: Option<Spanned<String>>,
    pure: Option<bool>,
    call_timeout: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    limits: Option<Spanned<confine::RawLimits>>,
    sandbox: Option<Spanned<String>>,
    sandbox_read: Option<Vec<String>>,
}

impl Manifest {
    /// Reads and validates the manifest file at `path`. Every problem found is returned,
    /// not only the first.
    pub fn load(path: &Path) -> Result<Manifest, Vec<ManifestError>> {
        let file = path.display().to_string();
        let text = crate::config_file::read_text(path).map_err(|e| {
            vec![ManifestError {
                file: file.clone(),
                line: None,
                field: None,
                message: format!("cannot read: {e}"),
            }]
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).map(String::from);
        Self::parse(
            &text,
            ManifestSource::File(path.to_owned()),
            stem.as_deref(),
        )
    }

    /// Validates manifest text. `expected_name`, when given, is the name the file's name
    /// promises (`system` for `system.toml`).
    pub fn parse(
        text: &str,
        source: ManifestSource,
        expected_name: Option<&str>,
    ) -> Result<Manifest, Vec<ManifestError>> {
        let file = source.to_string();
        let mut errors = Errors {
            file: &file,
            text,
            list: Vec::new(),
        };
        let Some(raw) = raw(text, &mut errors) else {
            return Err(errors.list);
        };

        let name = name(&raw, expected_name, &mut errors);

        let hosting = hosting(&raw, &mut errors);
        let entry = hosting.and_then(|hosting| entry(&raw, hosting, &mut errors));

        let io = io_codes(&raw, &mut errors);
        let listed = raw
            .classes
            .as_ref()
            .map_or(&[][..], |c| c.get_ref().as_slice());
        check_io_or_classes(&raw, &io, hosting, &mut errors);
        let (classes, namespaces) = class_list(listed, hosting, &mut errors);

        let capabilities = capabilities(&raw, &mut errors);

        let kind = match &raw.kind {
            None if !io.is_empty() => ProviderKind::Io,
            None => ProviderKind::Instance,
            Some(k) => k.get_ref().parse().unwrap_or_else(|message| {
                errors.push(Some(k.span()), Some("kind"), message);
                ProviderKind::Instance
            }),
        };
        let clear_after = clear_after(&raw, &mut errors);
        let (run_as, requestor, limits) = confine::confinement(&raw, hosting, &mut errors);
        let sandbox = confine::sandbox(&raw, hosting, &mut errors);
        let call_timeout = duration(
            &raw.call_timeout,
            "call_timeout",
            DEFAULT_CALL_TIMEOUT,
            &mut errors,
        );

        match (name, hosting, entry, clear_after, call_timeout) {
            (Some(name), Some(hosting), Some(entry), Some(clear_after), Some(call_timeout))
                if errors.list.is_empty() =>
            {
                Ok(Manifest {
                    name,
                    description: raw.description,
                    hosting,
                    entry,
                    classes,
                    namespaces,
                    io,
                    capabilities,
                    kind,
                    clear_after,
                    clear_after_given: raw.clear_after.is_some(),
                    pure: raw.pure.unwrap_or(true),
                    call_timeout,
                    run_as,
                    requestor,
                    limits,
                    sandbox,
                    source,
                })
            }
            _ => Err(errors.list),
        }
    }

    /// Whether `class` is the provider's, by name or by namespace.
    pub fn serves(&self, class: &ClassPath) -> bool {
        self.classes.contains(class) || self.in_namespace(class)
    }

    /// Whether `class` lies in one of the namespaces the provider fills at run time.
    pub fn in_namespace(&self, class: &ClassPath) -> bool {
        self.namespaces.iter().any(|ns| ns.contains(class))
    }

    /// Whether the manifest offers `capability`.
    pub fn offers(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// Reads every `*.toml` file in `dir`, in name order. Returns the valid manifests and every
/// problem found.
pub fn load_dir(dir: &Path) -> (Vec<Manifest>, Vec<ManifestError>) {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ManifestError {
                file: dir.display().to_string(),
                line: None,
                field: None,
                message: format!("cannot read providers directory: {e}"),
            });
            return (manifests, errors);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        match Manifest::load(&path) {
            Ok(m) => manifests.push(m),
            Err(e) => errors.extend(e),
        }
    }
    (manifests, errors)
}

/// The manifest's TOML, or `None` with the error recorded (naming the field at fault).
fn raw(text: &str, errors: &mut Errors<'_>) -> Option<RawManifest> {
    match toml::from_str(text) {
        Ok(raw) => Some(raw),
        Err(e) => {
            let message = e.message().trim();
            let field =
                if message.starts_with("missing field") || message.starts_with("unknown field") {
                    quoted_field(message)
                } else {
                    e.span().and_then(|span| key_at(text, span.start))
                };
            errors.push(e.span(), field.as_deref(), message.replace('\n', "; "));
            None
        }
    }
}

/// The hosting model.
fn hosting(raw: &RawManifest, errors: &mut Errors<'_>) -> Option<Hosting> {
    match raw.hosting.get_ref().as_str() {
        "builtin" => Some(Hosting::Builtin),
        "in-daemon" => Some(Hosting::InDaemon),
        "isolated" => Some(Hosting::Isolated),
        "external" => Some(Hosting::External),
        other => {
            errors.push(
                Some(raw.hosting.span()),
                Some("hosting"),
                format!(
                    "unknown hosting model {other:?} (expected \"builtin\", \"in-daemon\", \"isolated\" or \"external\")"
                ),
            );
            None
        }
    }
}

/// A provider serves classes or installs I/O procedures (not builtin ones), not both.
fn check_io_or_classes(
    raw: &RawManifest,
    io: &[purveyor_io::FourCC],
    hosting: Option<Hosting>,
    errors: &mut Errors<'_>,
) {
    let listed = raw
        .classes
        .as_ref()
        .map_or(&[][..], |c| c.get_ref().as_slice());
    let classes_span = raw.classes.as_ref().map(|c| c.span());
    let io_span = raw.io.as_ref().map(|c| c.span());
    if raw.io.is_some() {
        if io.is_empty() && errors.list.is_empty() {
            errors.push(
                io_span.clone(),
                Some("io"),
                "an I/O procedure provider must install at least one code".into(),
            );
        }
        if !listed.is_empty() {
            errors.push(
                classes_span,
                Some("classes"),
                "an I/O procedure provider (with `io`) serves no classes in this version".into(),
            );
        }
        if hosting == Some(Hosting::Builtin) {
            errors.push(
                io_span,
                Some("io"),
                "builtin I/O procedures are the host's own (DOS, MEM, GZ, TAR); a provider of I/O procedures is a library or an executable".into(),
            );
        }
    } else if listed.is_empty() {
        errors.push(
            classes_span.or(Some(0..0)),
            Some("classes"),
            "a provider must serve at least one class (or install I/O procedures with `io`)".into(),
        );
    }
}

/// How long the provider stays loaded unused: at least [`MIN_CLEAR_AFTER`].
fn clear_after(raw: &RawManifest, errors: &mut Errors<'_>) -> Option<Duration> {
    let clear_after = duration(&raw.clear_after, "clear_after", DEFAULT_CLEAR_AFTER, errors);
    if let Some(d) = clear_after
        && d < MIN_CLEAR_AFTER
    {
        errors.push(
            raw.clear_after.as_ref().map(|s| s.span()),
            Some("clear_after"),
            format!(
                "{} is shorter than the minimum of {}",
                humantime::format_duration(d),
                humantime::format_duration(MIN_CLEAR_AFTER)
            ),
        );
    }
    clear_after
}

/// The provider's name, which a file's name must match (`expected`).
fn name(
    raw: &RawManifest,
    expected: Option<&str>,
    errors: &mut Errors<'_>,
) -> Option<ProviderName> {
    match ProviderName::new(raw.name.get_ref().as_str()) {
        Ok(name) => {
            if let Some(expected) = expected
                && expected != name.as_str()
            {
                errors.push(
                    Some(raw.name.span()),
                    Some("name"),
                    format!(
                        "provider {:?} must be in a file named {}.toml (one manifest per provider, named after it)",
                        name.as_str(),
                        name.as_str()
                    ),
                );
            }
            Some(name)
        }
        Err(e) => {
            errors.push(Some(raw.name.span()), Some("name"), e.to_string());
            None
        }
    }
}

/// The I/O procedure codes the provider installs, each once.
fn io_codes(raw: &RawManifest, errors: &mut Errors<'_>) -> Vec<purveyor_io::FourCC> {
    let mut io = Vec::new();
    for code in raw.io.iter().flat_map(|list| list.get_ref()) {
        match code.get_ref().parse::<purveyor_io::FourCC>() {
            Ok(c) if io.contains(&c) => errors.push(
                Some(code.span()),
                Some("io"),
                format!("I/O procedure {c} is listed twice"),
            ),
            Ok(c) => io.push(c),
            Err(e) => errors.push(Some(code.span()), Some("io"), e.to_string()),
        }
    }
    io
}

/// The classes and namespaces (`ns.*`, builtin only) listed, each once.
fn class_list(
    listed: &[Spanned<String>],
    hosting: Option<Hosting>,
    errors: &mut Errors<'_>,
) -> (Vec<ClassPath>, Vec<NamespacePath>) {
    let mut classes = Vec::new();
    let mut namespaces = Vec::new();
    // Seen so far, for the repeats check in O(n log n) (a list is scanned in O(n)).
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for class in listed {
        if let Some(ns) = class.get_ref().strip_suffix(".*") {
            match NamespacePath::new(ns) {
                Ok(_) if hosting.is_some_and(|h| h != Hosting::Builtin) => errors.push(
                    Some(class.span()),
                    Some("classes"),
                    format!(
                        "a whole namespace ({ns}.*) can only be served by a builtin provider in this version"
                    ),
                ),
                Ok(path) if namespaces.contains(&path) => errors.push(
                    Some(class.span()),
                    Some("classes"),
                    format!("namespace {path}.* is listed twice"),
                ),
                Ok(path) => namespaces.push(path),
                Err(e) => errors.push(Some(class.span()), Some("classes"), e.to_string()),
            }
            continue;
        }
        match ClassPath::new(class.get_ref().as_str()) {
            Ok(path) if !seen.insert(path.as_str().to_owned()) => errors.push(
                Some(class.span()),
                Some("classes"),
                format!("class {path} is listed twice"),
            ),
            Ok(path) => classes.push(path),
            Err(e) => errors.push(Some(class.span()), Some("classes"), e.to_string()),
        }
    }
    (classes, namespaces)
}

/// The capabilities offered: enumerate and get unless the manifest says.
fn capabilities(raw: &RawManifest, errors: &mut Errors<'_>) -> BTreeSet<Capability> {
    let mut capabilities = BTreeSet::new();
    match &raw.capabilities {
        None => {
            capabilities.insert(Capability::Enumerate);
            capabilities.insert(Capability::Get);
        }
        Some(list) => {
            for cap in list.get_ref() {
                match Capability::ALL.iter().find(|c| c.as_str() == cap.get_ref()) {
                    Some(c) => {
                        capabilities.insert(*c);
                    }
                    None => errors.push(
                        Some(cap.span()),
                        Some("capabilities"),
                        format!(
                            "unknown capability {:?} (expected enumerate, get, put, delete, call or subscribe)",
                            cap.get_ref()
                        ),
                    ),
                }
            }
        }
    }
    capabilities
}

fn entry(raw: &RawManifest, hosting: Hosting, errors: &mut Errors<'_>) -> Option<Entry> {
    let mut refuse = |field: &str, span: Range<usize>, when: &str| {
        errors.push(
            Some(span),
            Some(field),
            format!("`{field}` is only allowed with {when}"),
        );
    };
    if hosting != Hosting::Builtin
        && let Some(b) = &raw.builtin
    {
        refuse("builtin", b.span(), "hosting = \"builtin\"");
    }
    if !matches!(hosting, Hosting::InDaemon | Hosting::Isolated)
        && let Some(l) = &raw.library
    {
        refuse(
            "library",
            l.span(),
            "hosting = \"in-daemon\" or \"isolated\"",
        );
    }
    if hosting != Hosting::Isolated
        && let Some(g) = &raw.host_group
    {
        refuse("host_group", g.span(), "hosting = \"isolated\"");
    }
    if hosting != Hosting::External
        && let Some(c) = &raw.command
    {
        refuse("command", c.span(), "hosting = \"external\"");
    }
    let hosting_span = raw.hosting.span();
    let mut missing = |field: &str| {
        errors.push(
            Some(hosting_span.clone()),
            Some(field),
            format!("hosting = \"{}\" needs a `{field}` field", hosting.as_str()),
        );
        None
    };
    match hosting {
        Hosting::Builtin => match &raw.builtin {
            Some(b) => Some(Entry::Builtin(b.get_ref().clone())),
            None => missing("builtin"),
        },
        Hosting::InDaemon | Hosting::Isolated => match &raw.library {
            Some(l) => Some(Entry::Library {
                path: PathBuf::from(l.get_ref()),
                host_group: raw.host_group.as_ref().map(|g| g.get_ref().clone()),
            }),
            None => missing("library"),
        },
        Hosting::External => match &raw.command {
            Some(c) if c.get_ref().is_empty() => {
                errors.push(
                    Some(c.span()),
                    Some("command"),
                    "the command is empty".into(),
                );
                None
            }
            Some(c) => Some(Entry::External {
                command: c.get_ref().clone(),
            }),
            None => missing("command"),
        },
        _ => None,
    }
}

fn duration(
    value: &Option<Spanned<String>>,
    field: &str,
    default: Duration,
    errors: &mut Errors<'_>,
) -> Option<Duration> {
    let Some(value) = value else {
        return Some(default);
    };
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                Some(value.span()),
                Some(field),
                format!(
                    "{:?} is not a duration ({e}); write it like \"30s\", \"5m\" or \"1h 30m\"",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// Collects errors for one file, turning byte spans into lines and columns.
struct Errors<'a> {
    file: &'a str,
    text: &'a str,
    list: Vec<ManifestError>,
}

impl Errors<'_> {
    fn push(&mut self, span: Option<Range<usize>>, field: Option<&str>, message: String) {
        let line = span.map(|span| line_col(self.text, span.start));
        self.list.push(ManifestError {
            file: self.file.to_owned(),
            line,
            field: field.map(String::from),
            message,
        });
    }
}

fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line as u32, column as u32)
}

/// The bare key assigned on the line holding `offset`: `pure` for `pure = "yes"`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    // By bytes: the parser's offset may fall inside a character; a line starts after a
    // newline, which is a character of its own.
    let start = text.as_bytes()[..offset.min(text.len())]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line = &text[start..];
    let key = line[..line.find('=')?].trim();
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    bare.then(|| key.to_owned())
}

/// The field a toml error message is about: "missing field `classes`" → `classes`.
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

impl fmt::Display for ManifestError {
    /// `providers/x.toml:3:8: field `hosting`: unknown hosting model "dll" (...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, column)) = self.line {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Display for ManifestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestSource::File(path) => write!(f, "{}", path.display()),
            ManifestSource::Builtin(name) => write!(f, "builtin:{name}"),
        }
    }
}

mod confine;
#[cfg(test)]
mod tests;
