//! rustls configurations: TLS 1.3 only, the ring provider, certificates from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;
use crate::config::{ClientSettings, ServerSettings, read_file};

/// ring's provider: no cmake or assembler to build (aws-lc-rs needs both). rustls marks
/// it deprecated for lacking post-quantum key exchange; X25519 and the NIST curves remain.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The daemon's TLS: its certificate and key, and client certificates required and
/// verified against `client_ca`.
pub fn server_config(settings: &ServerSettings) -> Result<Arc<rustls::ServerConfig>, Error> {
    let roots = Arc::new(roots(&settings.client_ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| config_error(&settings.client_ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS 1.3 is not available: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&settings.certificate)?, key(&settings.key)?)
        .map_err(|e| config_error(&settings.key, e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The HTTP gateway's TLS (`--http https://…`): the daemon's certificate and key, no
/// client certificate asked (HTTP callers are identified by tokens), ALPN `http/1.1`.
pub fn https_config(settings: &ServerSettings) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS 1.3 is not available: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain(&settings.certificate)?, key(&settings.key)?)
        .map_err(|e| config_error(&settings.key, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: the daemon's certificate verified against `ca` for the address's
/// host, and this client's certificate if it has one.
pub fn client_config(settings: &ClientSettings) -> Result<Arc<rustls::ClientConfig>, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS 1.3 is not available: {e}")))?
        .with_root_certificates(roots(&settings.ca)?);
    let mut config = match (&settings.certificate, &settings.key) {
        (Some(cert), Some(key_path)) => builder
            .with_client_auth_cert(chain(cert)?, key(key_path)?)
            .map_err(|e| config_error(key_path, e))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The ALPN name of Purveyor's protocol over TLS.
pub(crate) const ALPN: &[u8] = b"purveyor/1";

fn config_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {e}", path.display()))
}

fn chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(path, format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(config_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| config_error(path, format!("holds no PEM private key ({e})")))
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in chain(path)? {
        roots
            .add(cert)
            .map_err(|e| config_error(path, format!("not a usable CA certificate ({e})")))?;
    }
    Ok(roots)
}
