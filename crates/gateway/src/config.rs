//! The gateway's configuration file (`purveyor serve --http-config FILE`, else
//! `/etc/purveyor/http.toml` when it exists): what `/metrics` exports, the bearer tokens
//! that grant more than anonymous reads, and the OTLP export. Format in `docs/http.md`.

use std::path::Path;
use std::time::Duration;

use purveyor_model::NamespacePath;
use serde::Deserialize;

use crate::auth::Token;
use crate::metrics::Selection;

/// The gateway's settings.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    pub metrics: Selection,
    pub tokens: Vec<Token>,
    pub otlp: Option<OtlpConfig>,
    /// `[calls] dialogs = false`: an HTTP caller's `Prefer: respond-async` is ignored, and
    /// a provider asking it something is told "no UI available" (`docs/http.md`).
    pub dialogs_refused: bool,
}

/// Where and how often to push metrics over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The collector's metrics URL (`http://127.0.0.1:4318/v1/metrics`).
    pub endpoint: String,
    pub interval: Duration,
}

/// A refused configuration file, naming the file, the line and the entry.
pub use purveyor_host::config_file::FileError as ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    metrics: Option<RawMetrics>,
    #[serde(default)]
    token: Vec<toml::Spanned<RawToken>>,
    otlp: Option<toml::Spanned<RawOtlp>>,
    calls: Option<RawCalls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    dialogs: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    export: Option<Vec<toml::Spanned<String>>>,
    #[serde(default)]
    exclude: Vec<toml::Spanned<String>>,
    #[serde(default)]
    load: Vec<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: toml::Spanned<String>,
    user: toml::Spanned<String>,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: toml::Spanned<String>,
    interval: Option<toml::Spanned<String>>,
}

impl GatewayConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &purveyor_host::config_file::read(path)?)
    }

    /// Parses a configuration file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let error = |span: Option<std::ops::Range<usize>>, message: String| {
            ConfigError::at(path, text, span, message)
        };
        let raw: Raw =
            toml::from_str(text).map_err(|e| error(e.span(), e.message().to_string()))?;
        let namespaces = |field: &str, list: Vec<toml::Spanned<String>>| {
            list.into_iter()
                .map(|entry| {
                    NamespacePath::new(entry.get_ref().as_str()).map_err(|e| {
                        error(
                            Some(entry.span()),
                            format!("metrics.{field}: {:?}: {e}", entry.get_ref()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut config = GatewayConfig {
            dialogs_refused: raw.calls.and_then(|c| c.dialogs) == Some(false),
            ..GatewayConfig::default()
        };
        if let Some(metrics) = raw.metrics {
            if let Some(export) = metrics.export {
                config.metrics.export = namespaces("export", export)?;
            }
            config.metrics.exclude = namespaces("exclude", metrics.exclude)?;
            config.metrics.load = namespaces("load", metrics.load)?;
        }
        for entry in raw.token {
            let span = entry.span();
            let raw = entry.into_inner();
            let token = Token::new(
                &raw.name,
                raw.sha256.get_ref(),
                raw.user.get_ref(),
                raw.read_only,
            )
            .map_err(|message| {
                error(
                    Some(span.clone()),
                    format!("token {:?}: {message}", raw.name),
                )
            })?;
            config.tokens.push(token);
        }
        if let Some(otlp) = raw.otlp {
            if !cfg!(feature = "otlp") {
                return Err(error(
                    Some(otlp.span()),
                    "[otlp]: this build of purveyor has no OTLP export (build it with `--features otlp`)".into(),
                ));
            }
            let otlp = otlp.into_inner();
            let endpoint = otlp.endpoint.get_ref().clone();
            if !endpoint.starts_with("http://") {
                return Err(error(
                    Some(otlp.endpoint.span()),
                    format!(
                        "otlp.endpoint {endpoint:?}: only http:// endpoints are supported (run the collector on loopback or behind a TLS proxy)"
                    ),
                ));
            }
            let interval = match otlp.interval {
                None => Duration::from_secs(15),
                Some(text) => humantime::parse_duration(text.get_ref())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        error(
                            Some(text.span()),
                            format!(
                                "otlp.interval {:?} is not a duration like \"15s\" or \"1m\"",
                                text.get_ref()
                            ),
                        )
                    })?,
            };
            config.otlp = Some(OtlpConfig { endpoint, interval });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, String> {
        GatewayConfig::parse(Path::new("/etc/purveyor/http.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_export_system_app_and_purveyor() {
        let config = parse("").unwrap();
        let export: Vec<&str> = config.metrics.export.iter().map(|n| n.as_str()).collect();
        assert_eq!(export, ["system", "app", "purveyor"]);
        assert!(config.tokens.is_empty() && config.otlp.is_none());
    }

    #[test]
    #[cfg(feature = "otlp")]
    fn a_full_file_parses() {
        let hash = crate::auth::sha256_hex("s3cret");
        let config = parse(&format!(
            "[metrics]\nexport = [\"system\", \"config\"]\nexclude = [\"system.process\"]\nload = [\"config\"]\n\n\
             [[token]]\nname = \"ops\"\nsha256 = \"{hash}\"\nuser = \"root\"\n\n\
             [otlp]\nendpoint = \"http://127.0.0.1:4318/v1/metrics\"\ninterval = \"5s\"\n"
        ))
        .unwrap();
        assert_eq!(config.metrics.exclude[0].as_str(), "system.process");
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(
            config.otlp,
            Some(OtlpConfig {
                endpoint: "http://127.0.0.1:4318/v1/metrics".into(),
                interval: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_entry() {
        let cases = [
            (
                "[metrics]\nexport = [\"system\", \"bad name\"]\n",
                "/etc/purveyor/http.toml:2: metrics.export: \"bad name\":",
            ),
            (
                "[[token]]\nname = \"ops\"\nsha256 = \"abc\"\nuser = \"root\"\n",
                "/etc/purveyor/http.toml:1: token \"ops\": sha256 must be 64 hex digits",
            ),
            (
                "[[token]]\nname = \"ops\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nuser = \"no-such-user-here\"\n",
                "/etc/purveyor/http.toml:1: token \"ops\": there is no user named \"no-such-user-here\"",
            ),
            (
                "[metric]\n",
                "/etc/purveyor/http.toml:1: unknown field `metric`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    #[cfg(feature = "otlp")]
    fn otlp_errors_name_the_line() {
        let cases = [
            (
                "[otlp]\nendpoint = \"https://collector\"\n",
                "/etc/purveyor/http.toml:2: otlp.endpoint \"https://collector\": only http://",
            ),
            (
                "[otlp]\nendpoint = \"http://x\"\ninterval = \"often\"\n",
                "/etc/purveyor/http.toml:3: otlp.interval \"often\" is not a duration",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    #[cfg(not(feature = "otlp"))]
    fn otlp_needs_the_feature() {
        let error = parse("[otlp]\nendpoint = \"http://127.0.0.1:4318/v1/metrics\"\n").unwrap_err();
        assert!(error.contains("has no OTLP export"), "{error}");
    }
}
