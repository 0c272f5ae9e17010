//! What the daemon reads from `remote.toml`, what a client takes from its flags, its
//! environment and `~/.config/purveyor/remote.toml`, and the address both name
//! (`docs/remote.md`, "Configuration").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::identity::Users;

/// The largest configuration, certificate or key file read.
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// How long a silent peer may go unanswered before its connection is dropped, unless
/// configured.
pub const DEAD_AFTER_DEFAULT: Duration = Duration::from_secs(30);

/// A daemon's side: its certificate, the CA its clients' certificates come from, and how
/// certificate names map to local users.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The file these came from.
    pub path: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub users: Users,
    pub dead_after: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    tls: TlsSection,
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    connections: ConnectionsSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    certificate: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConnectionsSection {
    dead_after: Option<String>,
    #[serde(default)]
    only_listed: bool,
}

impl ServerSettings {
    /// Reads `remote.toml` at `path`; relative file names in it are relative to its
    /// directory. Errors name the file and the line.
    pub fn load(path: &Path) -> Result<ServerSettings, Error> {
        let text = read_text(path)?;
        let file: ServerFile = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let dead_after = duration(path, "connections.dead_after", file.connections.dead_after)?;
        let users = Users::new(file.users, file.connections.only_listed)
            .map_err(|e| Error::Config(format!("{}: [users]: {e}", path.display())))?;
        Ok(ServerSettings {
            path: path.to_owned(),
            certificate: dir.join(file.tls.certificate),
            key: dir.join(file.tls.key),
            client_ca: dir.join(file.tls.client_ca),
            users,
            dead_after,
        })
    }
}

/// A client's side: where the daemon is, the CA that issued the daemon's certificate,
/// and this client's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub address: RemoteAddress,
    pub ca: PathBuf,
    /// Without a certificate the daemon refuses the handshake; it is still sent so that
    /// the daemon says so.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub dead_after: Duration,
    pub connect_timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    ca: Option<PathBuf>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    dead_after: Option<String>,
}

/// What a command line gave (each `None` falls back to the environment, then the file).
#[derive(Debug, Clone, Default)]
pub struct ClientFlags {
    pub address: Option<String>,
    pub ca: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientSettings {
    /// The settings for a remote connection, or `None` when neither `flags.address` nor
    /// `PURVEYOR_REMOTE` names a daemon. The CA, certificate and key come from the flags,
    /// else `PURVEYOR_TLS_CA`, `PURVEYOR_TLS_CERT`, `PURVEYOR_TLS_KEY`, else the client
    /// file (`PURVEYOR_REMOTE_CONFIG`, or `$XDG_CONFIG_HOME/purveyor/remote.toml`, or
    /// `~/.config/purveyor/remote.toml`), whose relative names are relative to it.
    pub fn resolve(flags: ClientFlags) -> Result<Option<ClientSettings>, Error> {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let Some(address) = flags
            .address
            .or_else(|| env("PURVEYOR_REMOTE").map(|v| v.to_string_lossy().into_owned()))
        else {
            return Ok(None);
        };
        let address = RemoteAddress::parse(&address)?;
        let (file, dir) = match client_file() {
            Some(path) if path.exists() => {
                let text = read_text(&path)?;
                let file: ClientFile =
                    toml::from_str(&text).map_err(|e| toml_error(&path, &text, &e))?;
                let dead_after = duration(&path, "dead_after", file.dead_after.clone())?;
                let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
                ((file, dead_after), dir)
            }
            _ => ((ClientFile::default(), DEAD_AFTER_DEFAULT), PathBuf::new()),
        };
        let ((file, dead_after), dir) = (file, dir);
        let pick = |flag: Option<PathBuf>, var: &str, from_file: Option<PathBuf>| {
            flag.or_else(|| env(var).map(PathBuf::from))
                .or_else(|| from_file.map(|p| dir.join(p)))
        };
        let ca = pick(flags.ca, "PURVEYOR_TLS_CA", file.ca).ok_or_else(|| {
            Error::Config(format!(
                "no CA for {address}: pass --tls-ca FILE, set PURVEYOR_TLS_CA, or name `ca` in {}",
                client_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/purveyor/remote.toml".into())
            ))
        })?;
        let certificate = pick(flags.certificate, "PURVEYOR_TLS_CERT", file.certificate);
        let key = pick(flags.key, "PURVEYOR_TLS_KEY", file.key);
        if certificate.is_some() != key.is_some() {
            return Err(Error::Config(
                "a client certificate needs its key, and a key its certificate (--tls-cert with --tls-key)".into(),
            ));
        }
        Ok(Some(ClientSettings {
            address,
            ca,
            certificate,
            key,
            dead_after,
            connect_timeout: Duration::from_secs(10),
        }))
    }
}

/// The client file's path, if a home or config directory is known.
fn client_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PURVEYOR_REMOTE_CONFIG") {
        return Some(path.into());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(config.join("purveyor/remote.toml"))
}

/// A daemon's network address: `HOST:PORT`, `tls://HOST:PORT`, `[IPV6]:PORT`, or a bare
/// `PORT` meaning loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAddress {
    /// A DNS name or an IP address: what the daemon's certificate must name.
    pub host: String,
    pub port: u16,
}

impl RemoteAddress {
    pub fn parse(text: &str) -> Result<RemoteAddress, Error> {
        let bad = |why: &str| {
            let shown: String = text.chars().take(80).collect();
            Error::Config(format!(
                "{shown:?} is not a daemon address ({why}); expected HOST:PORT, tls://HOST:PORT or a port"
            ))
        };
        let rest = text.strip_prefix("tls://").unwrap_or(text);
        if rest.contains("://") {
            return Err(bad("only tls:// is offered"));
        }
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(RemoteAddress {
                host: "127.0.0.1".into(),
                port,
            });
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.len() > 253 {
            return Err(bad("no host"));
        }
        Ok(RemoteAddress {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for RemoteAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "tls://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tls://{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, Error> {
    let bytes = read_file(path)?;
    String::from_utf8(bytes)
        .map_err(|e| Error::Config(format!("{}: it is not UTF-8 text ({e})", path.display())))
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    purveyor_io::read_small_file(path, MAX_FILE)
        .map_err(|e| Error::Config(format!("{}: cannot read it: {e}", path.display())))
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let line = e
        .span()
        .map(|s| {
            format!(
                ":{}",
                // By bytes: the parser's offset may fall inside a character.
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            )
        })
        .unwrap_or_default();
    Error::Config(format!("{}{line}: {}", path.display(), e.message()))
}

fn duration(path: &Path, key: &str, text: Option<String>) -> Result<Duration, Error> {
    let Some(text) = text else {
        return Ok(DEAD_AFTER_DEFAULT);
    };
    let d = humantime::parse_duration(&text)
        .map_err(|e| Error::Config(format!("{}: {key}: {e}", path.display())))?;
    if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&d) {
        return Err(Error::Config(format!(
            "{}: {key}: {text} is outside 2s..1h",
            path.display()
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser's error offset may fall inside a character (found by fuzzing the host's
    /// configuration files, which shared this line count): counted by bytes, no panic.
    #[test]
    fn an_error_inside_a_character_names_its_line() {
        let text = "a = 1\n\"\\\u{80}";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        match toml_error(Path::new("remote.toml"), text, &e) {
            Error::Config(message) => assert!(message.starts_with("remote.toml:2: "), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addresses() {
        let a = |t| RemoteAddress::parse(t).map(|a| (a.host, a.port));
        assert_eq!(a("7443").unwrap(), ("127.0.0.1".into(), 7443));
        assert_eq!(a("tls://h.example:1").unwrap(), ("h.example".into(), 1));
        assert_eq!(a("10.0.0.1:7443").unwrap(), ("10.0.0.1".into(), 7443));
        assert_eq!(a("[::1]:7443").unwrap(), ("::1".into(), 7443));
        assert!(a("http://h:1").is_err());
        assert!(a("h").is_err());
        assert!(a(":1").is_err());
        assert_eq!(
            RemoteAddress::parse("[::1]:2").unwrap().to_string(),
            "tls://[::1]:2"
        );
    }

    #[test]
    fn a_server_file_is_read_and_its_mistakes_are_placed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remote.toml");
        std::fs::write(
            &path,
            "[tls]\ncertificate = \"s.crt\"\nkey = \"/k\"\nclient_ca = \"ca.crt\"\n[users]\n\"alice@laptop\" = \"root\"\n[connections]\ndead_after = \"5s\"\n",
        )
        .unwrap();
        let s = ServerSettings::load(&path).unwrap();
        assert_eq!(s.certificate, dir.path().join("s.crt"));
        assert_eq!(s.key, Path::new("/k"));
        assert_eq!(s.dead_after, Duration::from_secs(5));
        std::fs::write(
            &path,
            "[tls]\ncertificate = \"s\"\nkey = \"k\"\nclient_ca = \"c\"\nkeys = 1\n",
        )
        .unwrap();
        let e = ServerSettings::load(&path).unwrap_err().to_string();
        assert!(e.contains("remote.toml:5:") && e.contains("keys"), "{e}");
        std::fs::write(&path, "[tls]\ncertificate = \"s\"\nkey = \"k\"\nclient_ca = \"c\"\n[connections]\ndead_after = \"1s\"\n").unwrap();
        let e = ServerSettings::load(&path).unwrap_err().to_string();
        assert!(e.contains("outside 2s..1h"), "{e}");
    }
}
