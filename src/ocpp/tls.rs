//! The `wss://` side's TLS (security profiles 2 and 3): the rustls server config built
//! from `[ocpp] tls_cert_file`, `tls_key_file` and `client_ca_file`, and the slot that
//! SIGHUP swaps a new one into.
//!
//! rustls with the ring provider: TLS 1.3 and 1.2 only (rustls has no older version and
//! no compression), ECDHE suites only. The whitepaper's two static-RSA suites
//! (`TLS_RSA_WITH_AES_*_GCM_SHA*`) are not among them: rustls never offers them
//! (docs/ocpp.md says what to set on such a charger). A client certificate is optional at
//! this layer (profile 2 chargers have none); when one is presented it must chain to
//! `client_ca_file` and be valid now, or the handshake fails. Which charger it names is
//! decided after the handshake (`super::binding`).

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsConfig;

/// A TLS file that cannot be used; names the config key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}` ({path}): {message}")]
pub struct TlsError {
    /// The key, e.g. `ocpp.tls_key_file`.
    pub key: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, path, e))?;
    if certs.is_empty() {
        return Err(err(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The rustls server config for `cfg`, its files read now.
///
/// # Errors
/// [`TlsError`] naming the key whose file is unreadable, empty or does not fit.
pub fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("ocpp.tls_cert_file", &cfg.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| err("ocpp.tls_key_file", &cfg.key_file, e))?;
    let verifier = match &cfg.client_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("ocpp.client_ca_file", path)? {
                roots
                    .add(c)
                    .map_err(|e| err("ocpp.client_ca_file", path, e))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| err("ocpp.client_ca_file", path, e))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("ocpp.tls_cert_file", &cfg.cert_file, e))?
        .with_client_cert_verifier(verifier)
        // ring refuses RSA keys under 2048 bits and curves other than P-256/P-384 here.
        .with_single_cert(chain, key)
        .map_err(|e| err("ocpp.tls_key_file", &cfg.key_file, e))?;
    // WebSocket is HTTP/1.1; nothing to negotiate.
    config.alpn_protocols.clear();
    Ok(config)
}

/// The config the `wss://` listener accepts with; [`Slot::reload`] swaps in a new one
/// without touching connected chargers (their sessions keep the config they began with).
pub struct Slot {
    cfg: RwLock<TlsConfig>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Slot {
    /// Loads `cfg`'s files.
    ///
    /// # Errors
    /// [`TlsError`] when they cannot be used.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(server_config(cfg)?)),
            cfg: RwLock::new(cfg.clone()),
        })
    }

    /// The config a new connection is accepted with.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files of `cfg` (the new config's, or the same paths again) and, when
    /// they are usable, accepts new connections with them; otherwise keeps the old ones.
    ///
    /// # Errors
    /// [`TlsError`] when the new files cannot be used (the old config stays in force).
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), TlsError> {
        let new = server_config(cfg)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg.clone();
        Ok(())
    }

    /// The files in force.
    pub fn config(&self) -> TlsConfig {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
