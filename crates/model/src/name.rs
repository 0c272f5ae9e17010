//! Validated names: identifiers, namespace paths, class paths and provider names.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest identifier or provider name accepted, in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 64;
/// The longest namespace or class path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 255;

/// Why a name was refused. The message quotes the name and says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("invalid {what} {name:?}: it is empty")]
    Empty { what: &'static str, name: String },
    #[error("invalid {what} {name:?}: it is {len} bytes long, the limit is {max}")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
        max: usize,
    },
    #[error("invalid {what} {name:?}: it must start with a lowercase ASCII letter")]
    BadStart { what: &'static str, name: String },
    #[error(
        "invalid {what} {name:?}: character {ch:?} at byte {at} is not allowed (use {allowed})"
    )]
    BadChar {
        what: &'static str,
        name: String,
        ch: char,
        at: usize,
        allowed: &'static str,
    },
    #[error("invalid {what} {name:?}: segment {segment} is empty")]
    EmptySegment {
        what: &'static str,
        name: String,
        segment: usize,
    },
    #[error(
        "invalid class path {name:?}: it needs a namespace and a class name, like \"system.cpu\""
    )]
    NoNamespace { name: String },
}

/// A lowercase identifier: `[a-z][a-z0-9_]*`, at most 64 bytes. Used for property, method,
/// event and parameter names and for the segments of namespace and class paths.
///
/// Property names recur in every instance, so identifiers are interned per thread: making
/// or decoding a name seen before costs a hash lookup and a reference-count increment, not
/// an allocation and a validation. The cache is bounded ([`INTERN_LIMIT`] names per
/// thread), so names from untrusted peers cannot grow it without limit.
///
/// Equality and order compare the names; two handles to the same interned name compare
/// equal without reading it.
#[derive(Debug, Clone)]
pub struct Identifier(Arc<str>);

impl std::hash::Hash for Identifier {
    // Hashes the name, as `str` does: consistent with `Eq` and with `Borrow<str>`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Identifier {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Identifier {}

impl PartialOrd for Identifier {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Identifier {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

/// How many distinct identifiers each thread keeps interned.
pub const INTERN_LIMIT: usize = 4096;

thread_local! {
    // foldhash: fast on short names, and seeded per process so a peer cannot choose
    // names that collide.
    static INTERNED: RefCell<HashSet<Arc<str>, foldhash::fast::RandomState>> =
        RefCell::new(HashSet::default());
}

/// A dotted namespace path such as `system` or `app.web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct NamespacePath(String);

/// A class path: a namespace path and a class name, such as `system.cpu`. Serialized as
/// its string, written from where it lies (no copy per message).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassPath {
    // Invariant: `full` is a valid namespace path with at least two segments and
    // `split` is the byte index of its last '.'.
    full: String,
    split: usize,
}

/// A provider's name: `[a-z][a-z0-9_-]*`, at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct ProviderName(String);

impl Identifier {
    /// Validates `name` as an identifier.
    pub fn new(name: impl AsRef<str>) -> Result<Self, NameError> {
        let name = name.as_ref();
        let hit = INTERNED.with(|set| set.borrow().get(name).cloned());
        if let Some(hit) = hit {
            return Ok(Identifier(hit));
        }
        check_word(name, "identifier", false)?;
        let id: Arc<str> = Arc::from(name);
        INTERNED.with(|set| {
            let mut set = set.borrow_mut();
            if set.len() < INTERN_LIMIT {
                set.insert(id.clone());
            }
        });
        Ok(Identifier(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl NamespacePath {
    /// Validates `path` as a dotted namespace path.
    pub fn new(path: impl Into<String>) -> Result<Self, NameError> {
        let path = path.into();
        check_path(&path, "namespace path")?;
        Ok(Self(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `class` lies in this namespace or one below it.
    pub fn contains(&self, class: &ClassPath) -> bool {
        let ns = class.namespace_str();
        ns == self.0 || (ns.starts_with(&self.0) && ns.as_bytes()[self.0.len()] == b'.')
    }

    /// Whether the two namespaces are the same, or one lies below the other (then some
    /// class can be in both).
    pub fn overlaps(&self, other: &NamespacePath) -> bool {
        let below = |a: &str, b: &str| {
            a.strip_prefix(b)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        below(&self.0, &other.0) || below(&other.0, &self.0)
    }
}

impl ClassPath {
    /// Validates `path` as a class path (`namespace.class`).
    pub fn new(path: impl Into<String>) -> Result<Self, NameError> {
        let full = path.into();
        check_path(&full, "class path")?;
        let Some(split) = full.rfind('.') else {
            return Err(NameError::NoNamespace {
                name: crate::shorten(&full, crate::QUOTE_MAX).into_owned(),
            });
        };
        Ok(Self { full, split })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The namespace part: `system` for `system.cpu`.
    pub fn namespace(&self) -> NamespacePath {
        NamespacePath(self.namespace_str().to_owned())
    }

    /// The class name: `cpu` for `system.cpu`.
    pub fn name(&self) -> &str {
        &self.full[self.split + 1..]
    }

    fn namespace_str(&self) -> &str {
        &self.full[..self.split]
    }
}

impl ProviderName {
    /// Validates `name` as a provider name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_word(&name, "provider name", true)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_word(name: &str, what: &'static str, dash: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty {
            what,
            name: name.into(),
        });
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(NameError::TooLong {
            what,
            name: crate::shorten(name, crate::QUOTE_MAX).into_owned(),
            len: name.len(),
            max: MAX_IDENTIFIER_LEN,
        });
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return Err(NameError::BadStart {
            what,
            name: name.into(),
        });
    }
    let allowed = if dash {
        "a-z, 0-9, '_' and '-'"
    } else {
        "a-z, 0-9 and '_'"
    };
    for (at, ch) in name.char_indices() {
        let ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || (dash && ch == '-');
        if !ok {
            return Err(NameError::BadChar {
                what,
                name: name.into(),
                ch,
                at,
                allowed,
            });
        }
    }
    Ok(())
}

/// Whether `path` is a valid dotted path: one pass over its bytes, for the common case of
/// a good name. Exactly the paths [`explain_path`] accepts (a test holds the two together);
/// a refused one is checked again by the slow path, which says what is wrong.
fn valid_path(path: &[u8]) -> bool {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return false;
    }
    let mut start = 0;
    for (at, &b) in path.iter().enumerate() {
        let ok = if b == b'.' {
            let ok = at > start && at - start <= MAX_IDENTIFIER_LEN;
            start = at + 1;
            ok
        } else if at == start {
            b.is_ascii_lowercase()
        } else {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
        };
        if !ok {
            return false;
        }
    }
    path.len() > start && path.len() - start <= MAX_IDENTIFIER_LEN
}

fn check_path(path: &str, what: &'static str) -> Result<(), NameError> {
    if valid_path(path.as_bytes()) {
        return Ok(());
    }
    explain_path(path, what)
}

/// [`check_path`]'s slow path: which rule `path` breaks, segment by segment.
fn explain_path(path: &str, what: &'static str) -> Result<(), NameError> {
    if path.is_empty() {
        return Err(NameError::Empty {
            what,
            name: path.into(),
        });
    }
    if path.len() > MAX_PATH_LEN {
        return Err(NameError::TooLong {
            what,
            name: crate::shorten(path, crate::QUOTE_MAX).into_owned(),
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    let mut offset = 0;
    for (index, segment) in path.split('.').enumerate() {
        if segment.is_empty() {
            return Err(NameError::EmptySegment {
                what,
                name: path.into(),
                segment: index + 1,
            });
        }
        check_word(segment, what, false).map_err(|err| match err {
            NameError::BadChar { ch, at, .. } => NameError::BadChar {
                what,
                name: path.into(),
                ch,
                at: offset + at,
                allowed: "a-z, 0-9, '_' and '.' between segments",
            },
            NameError::BadStart { .. } => NameError::BadStart {
                what,
                name: path.into(),
            },
            NameError::TooLong { len, max, .. } => NameError::TooLong {
                what,
                name: path.into(),
                len,
                max,
            },
            other => other,
        })?;
        offset += segment.len() + 1;
    }
    Ok(())
}

macro_rules! string_newtype {
    ($ty:ty, $field:tt) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.$field)
            }
        }
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.$field
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.$field
            }
        }
    };
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Identifier {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl AsRef<str> for Identifier {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Identifier {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Identifier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Identifier;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an identifier")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Identifier, E> {
                Identifier::new(v).map_err(|e| crate::refusal::refuse(e.to_string()))
            }
        }
        // Borrowed when the format allows it: no allocation for an interned name.
        deserializer.deserialize_str(Visitor)
    }
}
string_newtype!(NamespacePath, 0);
string_newtype!(ClassPath, full);

impl Serialize for ClassPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for ClassPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_name(deserializer, "a class path", |s| {
            check_path(s, "class path")?;
            ClassPath::new(s)
        })
    }
}

impl<'de> Deserialize<'de> for NamespacePath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_name(deserializer, "a namespace path", |s| {
            check_path(s, "namespace path")?;
            NamespacePath::new(s)
        })
    }
}

impl<'de> Deserialize<'de> for ProviderName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_name(deserializer, "a provider name", |s| {
            check_word(s, "provider name", true)?;
            ProviderName::new(s)
        })
    }
}

/// Deserializes a name from the string where it lies (borrowed when the format allows):
/// `make` checks it before anything is copied, so a 15 MiB bad name costs no 15 MiB copy.
fn checked_name<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    make: fn(&str) -> Result<T, NameError>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor<T> {
        expecting: &'static str,
        make: fn(&str) -> Result<T, NameError>,
    }
    impl<T> serde::de::Visitor<'_> for Visitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.make)(v).map_err(|e| crate::refusal::refuse(e.to_string()))
        }
    }
    deserializer.deserialize_str(Visitor { expecting, make })
}
string_newtype!(ProviderName, 0);

impl std::borrow::Borrow<str> for Identifier {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_overlap_when_one_is_below_the_other() {
        let ns = |s: &str| NamespacePath::new(s).unwrap();
        assert!(ns("app").overlaps(&ns("app")));
        assert!(ns("app").overlaps(&ns("app.web")));
        assert!(ns("app.web").overlaps(&ns("app")));
        assert!(!ns("app").overlaps(&ns("apps")));
        assert!(!ns("app.web").overlaps(&ns("app.db")));
    }

    #[test]
    fn the_fast_path_check_accepts_exactly_what_the_slow_one_does() {
        let alphabet = ['a', 'z', '0', '_', '.', 'A', '-', 'é'];
        let mut cases: Vec<String> = vec![String::new()];
        let mut last = cases.clone();
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            cases.extend(last.iter().cloned());
        }
        let word = |n: usize| "a".repeat(n);
        for n in [63, 64, 65] {
            cases.push(word(n));
            cases.push(format!("ns.{}", word(n)));
            cases.push(format!("{}.x", word(n)));
        }
        for n in [254, 255, 256] {
            let mut long = vec![word(60); n / 61 + 1].join(".");
            long.truncate(n);
            cases.push(long);
        }
        for case in &cases {
            assert_eq!(
                valid_path(case.as_bytes()),
                explain_path(case, "path").is_ok(),
                "{case:?}"
            );
        }
    }

    #[test]
    fn class_paths_encode_as_their_strings_and_refuse_bad_ones() {
        let path = ClassPath::new("demo.greeting").unwrap();
        assert_eq!(serde_json::to_string(&path).unwrap(), r#""demo.greeting""#);
        let back: ClassPath = serde_json::from_str(r#""demo.greeting""#).unwrap();
        assert_eq!(back, path);
        assert_eq!(back.name(), "greeting");
        let bad = serde_json::from_str::<ClassPath>(r#""demo.Greeting""#).unwrap_err();
        assert!(bad.to_string().contains("demo.Greeting"), "{bad}");
        assert!(serde_json::from_str::<ClassPath>(r#""nonamespace""#).is_err());
    }

    #[test]
    fn class_path_splits_namespace_and_name() {
        let path = ClassPath::new("app.web.requests").unwrap();
        assert_eq!(path.namespace().as_str(), "app.web");
        assert_eq!(path.name(), "requests");
        assert!(NamespacePath::new("app").unwrap().contains(&path));
        assert!(NamespacePath::new("app.web").unwrap().contains(&path));
        assert!(!NamespacePath::new("ap").unwrap().contains(&path));
        assert!(
            !NamespacePath::new("app.web.requests")
                .unwrap()
                .contains(&path)
        );
    }

    #[test]
    fn bad_names_have_exact_messages() {
        let cases: &[(&str, Result<ClassPath, NameError>, &str)] = &[
            (
                "",
                ClassPath::new(""),
                "invalid class path \"\": it is empty",
            ),
            (
                "cpu",
                ClassPath::new("cpu"),
                "invalid class path \"cpu\": it needs a namespace and a class name, like \"system.cpu\"",
            ),
            (
                "System.cpu",
                ClassPath::new("System.cpu"),
                "invalid class path \"System.cpu\": it must start with a lowercase ASCII letter",
            ),
            (
                "system..cpu",
                ClassPath::new("system..cpu"),
                "invalid class path \"system..cpu\": segment 2 is empty",
            ),
            (
                "system.c-pu",
                ClassPath::new("system.c-pu"),
                "invalid class path \"system.c-pu\": character '-' at byte 8 is not allowed (use a-z, 0-9, '_' and '.' between segments)",
            ),
        ];
        for (input, result, message) in cases {
            assert_eq!(
                result.as_ref().unwrap_err().to_string(),
                *message,
                "input {input:?}"
            );
        }
        assert_eq!(
            ProviderName::new("my provider").unwrap_err().to_string(),
            "invalid provider name \"my provider\": character ' ' at byte 2 is not allowed (use a-z, 0-9, '_' and '-')"
        );
        assert!(ProviderName::new("my-provider_2").is_ok());
        assert!(Identifier::new("x".repeat(65)).is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: ClassPath = serde_json::from_str("\"system.cpu\"").unwrap();
        assert_eq!(ok.as_str(), "system.cpu");
        let err = serde_json::from_str::<ClassPath>("\"Bad\"").unwrap_err();
        assert!(err.to_string().contains("invalid class path"), "{err}");
    }
}
