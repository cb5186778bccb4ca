//! TLS for the MQTT and WebSocket listeners: certificates from a PKCS#12
//! (`.pfx`/`.p12`) file or PEM files, TLS 1.2 and 1.3 through rustls (ring),
//! optional client-certificate verification, and reloading without a
//! restart.
//!
//! [`TlsContext`] holds the current `rustls::ServerConfig` behind an `Arc`
//! that a reload swaps: every handshake takes the config current when it
//! starts, so connections already open keep theirs and new ones get the new
//! certificate. A reload that fails keeps the old config.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use futures_io::{AsyncRead, AsyncWrite};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client may present a certificate; if it does, it must verify
    /// against the client CA.
    Optional,
    /// A client must present a certificate that verifies against the
    /// client CA, or the handshake fails.
    Required,
}

/// Where the server's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// A PKCS#12 file (`.pfx`/`.p12`, read with `certificate_password`) or a
    /// PEM certificate chain (leaf first). A file holding `-----BEGIN` is
    /// read as PEM, any other as PKCS#12.
    pub certificate_path: PathBuf,
    /// The password of a PKCS#12 file (empty = none). Unused with PEM.
    pub certificate_password: String,
    /// The PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted) of a
    /// PEM chain. `None`: the key must be in the certificate file itself.
    pub key_path: Option<PathBuf>,
    /// PEM bundle of the CAs that client certificates must chain to.
    /// Required unless `client_auth` is [`ClientAuth::None`].
    pub client_ca_path: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// The setting a [`TlsError`] is about; [`TlsSource::config_key`] names
/// its key in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSource {
    Certificate,
    Password,
    Key,
    ClientCa,
}

impl TlsSource {
    /// The configuration key of this setting.
    pub fn config_key(self) -> &'static str {
        match self {
            TlsSource::Certificate => "mqtt.server.ssl-certificate-path",
            TlsSource::Password => "mqtt.server.ssl-certificate-password",
            TlsSource::Key => "mqtt.server.ssl-key-path",
            TlsSource::ClientCa => "mqtt.server.ssl-client-ca-path",
        }
    }
}

/// Why certificates could not be loaded. `Display` names the configuration
/// key and the file, e.g.
/// `mqtt.server.ssl-certificate-password: wrong password for /etc/mqtt/server.pfx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub source: TlsSource,
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.source.config_key(),
            self.message,
            self.path.display()
        )
    }
}

impl std::error::Error for TlsError {}

fn error(source: TlsSource, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError {
        source,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The crypto provider of every TLS config: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server config (TLS 1.3 and 1.2) from the files of `settings`.
pub fn load_server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let (certs, key, key_source) = load_certified_key(settings)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| {
            error(
                TlsSource::Certificate,
                &settings.certificate_path,
                format!("TLS setup failed: {e}"),
            )
        })?;
    let builder = match settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        auth => {
            let ca_path = settings.client_ca_path.as_deref().ok_or_else(|| {
                error(
                    TlsSource::ClientCa,
                    Path::new(""),
                    "client certificates are asked for, but no client CA file is set",
                )
            })?;
            let roots = load_client_roots(ca_path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| error(TlsSource::ClientCa, ca_path, format!("unusable CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        let (source, path) = match key_source {
            TlsSource::Key => (
                TlsSource::Key,
                settings
                    .key_path
                    .as_deref()
                    .unwrap_or(&settings.certificate_path),
            ),
            other => (other, settings.certificate_path.as_path()),
        };
        let message = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the private key does not match the certificate".to_owned()
            }
            other => format!("unusable certificate or key: {other}"),
        };
        error(source, path, message)
    })
}

/// The chain, the key, and which setting the key came from.
type CertifiedKeyParts = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    TlsSource,
);

fn read_file(source: TlsSource, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(source, path, format!("cannot read the file: {e}")))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn load_certified_key(settings: &TlsSettings) -> Result<CertifiedKeyParts, TlsError> {
    let path = &settings.certificate_path;
    let bytes = read_file(TlsSource::Certificate, path)?;
    if is_pem(&bytes) {
        load_pem(settings, &bytes)
    } else {
        load_pkcs12(path, &bytes, &settings.certificate_password)
    }
}

fn load_pkcs12(path: &Path, bytes: &[u8], password: &str) -> Result<CertifiedKeyParts, TlsError> {
    use p12_keystore::error::Error as P12Error;

    let store = p12_keystore::KeyStore::from_pkcs12(
        bytes,
        password,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .map_err(|e| match e {
        P12Error::MacError(_) => error(
            TlsSource::Password,
            path,
            "wrong password for the PKCS#12 file",
        ),
        P12Error::DerError(_) | P12Error::InvalidVersion | P12Error::InvalidLength => error(
            TlsSource::Certificate,
            path,
            "neither a PKCS#12 (.pfx/.p12) file nor a PEM certificate",
        ),
        other => error(
            TlsSource::Certificate,
            path,
            format!("cannot open the PKCS#12 file: {other}"),
        ),
    })?;
    let Some((_, chain)) = store.private_key_chain() else {
        return Err(error(
            TlsSource::Certificate,
            path,
            "the PKCS#12 file holds no private key with its certificate",
        ));
    };
    let certs: Vec<CertificateDer<'static>> = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(error(
            TlsSource::Certificate,
            path,
            "the PKCS#12 file holds no certificate for its private key",
        ));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key, TlsSource::Certificate))
}

fn pem_message(e: &pem::Error) -> String {
    format!("not a valid PEM file: {e}")
}

fn load_pem(settings: &TlsSettings, bytes: &[u8]) -> Result<CertifiedKeyParts, TlsError> {
    let path = &settings.certificate_path;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(TlsSource::Certificate, path, pem_message(&e)))?;
    if certs.is_empty() {
        return Err(error(
            TlsSource::Certificate,
            path,
            "the PEM file holds no CERTIFICATE block",
        ));
    }
    let (key_bytes, key_path, source) = match &settings.key_path {
        Some(key_path) => (
            read_file(TlsSource::Key, key_path)?,
            key_path.as_path(),
            TlsSource::Key,
        ),
        None => (bytes.to_vec(), path.as_path(), TlsSource::Key),
    };
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        let encrypted = key_bytes
            .windows(21)
            .any(|w| w == b"ENCRYPTED PRIVATE KEY")
            || key_bytes.windows(9).any(|w| w == b"Proc-Type");
        let message = match e {
            _ if encrypted => {
                "the private key is encrypted; give it unencrypted (e.g. `openssl pkey -in key.pem -out plain.pem`)".to_owned()
            }
            pem::Error::NoItemsFound if settings.key_path.is_none() => {
                "required with a PEM certificate: the certificate file holds no private key, so set the key file".to_owned()
            }
            pem::Error::NoItemsFound => {
                "no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)".to_owned()
            }
            other => pem_message(&other),
        };
        error(source, key_path, message)
    })?;
    Ok((certs, key, source))
}

fn load_client_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let bytes = read_file(TlsSource::ClientCa, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| error(TlsSource::ClientCa, path, pem_message(&e)))?;
        roots.add(cert).map_err(|e| {
            error(
                TlsSource::ClientCa,
                path,
                format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(error(
            TlsSource::ClientCa,
            path,
            "the PEM file holds no CERTIFICATE block",
        ));
    }
    Ok(roots)
}

/// Modification time and length of a file, to notice a change.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A TLS server config that can be reloaded while connections use it.
pub struct TlsContext {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamps at the last load attempt, successful or not.
    stamps: Mutex<Vec<Stamp>>,
    /// Serialises reloads (the poll and a signal may coincide).
    reloading: Mutex<()>,
    reloads: AtomicU64,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("settings", &self.settings)
            .field("reloads", &self.reloads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A finished server handshake.
pub struct TlsAccepted<S> {
    pub stream: futures_rustls::server::TlsStream<S>,
    /// The common name of the client certificate, when one was presented
    /// (and so verified).
    pub client_cert_cn: Option<String>,
}

impl TlsContext {
    /// Loads the certificates; fails when a file is missing or unusable.
    pub fn load(settings: TlsSettings) -> Result<TlsContext, TlsError> {
        // Anything that asks rustls for its process-wide default provider
        // (a TLS client elsewhere in the process) gets ring too. An error
        // only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let stamps = file_stamps(&settings);
        let config = load_server_config(&settings)?;
        Ok(TlsContext {
            settings,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
            reloading: Mutex::new(()),
            reloads: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The config new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reads the files again and, if they are usable, makes them the config
    /// of new handshakes. On error the current config stays. Blocking (file
    /// reads, PKCS#12 key derivation): call it off the executor.
    pub fn reload(&self) -> Result<(), TlsError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = file_stamps(&self.settings);
        let config = load_server_config(&self.settings)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a file changed (modification time or length) since the last
    /// load attempt.
    pub fn files_changed(&self) -> bool {
        let now = file_stamps(&self.settings);
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Checks the files every `interval` and reloads when one changed;
    /// logs the outcome. Runs until dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        loop {
            async_io::Timer::after(interval).await;
            if !self.files_changed() {
                continue;
            }
            let context = self.clone();
            match smol::unblock(move || context.reload()).await {
                Ok(()) => tracing::info!(
                    certificate = %self.settings.certificate_path.display(),
                    "TLS certificate files changed: reloaded; new connections use them"
                ),
                Err(err) => tracing::error!(
                    error = %err,
                    "TLS certificate files changed but cannot be loaded; keeping the previous certificate"
                ),
            }
        }
    }

    /// Runs the server handshake on `stream` with the current config.
    /// Not bounded in time: the caller adds its timeout.
    pub async fn accept<S>(&self, stream: S) -> io::Result<TlsAccepted<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = futures_rustls::TlsAcceptor::from(self.config());
        let stream = acceptor.accept(stream).await?;
        let client_cert_cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf));
        Ok(TlsAccepted {
            stream,
            client_cert_cn,
        })
    }
}

fn file_stamps(settings: &TlsSettings) -> Vec<Stamp> {
    let mut paths = vec![settings.certificate_path.as_path()];
    paths.extend(settings.key_path.as_deref());
    if settings.client_auth != ClientAuth::None {
        paths.extend(settings.client_ca_path.as_deref());
    }
    paths.into_iter().map(stamp).collect()
}

/// The first common name (CN) in a certificate's subject.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};

    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_file() {
        let err = error(TlsSource::Password, Path::new("/x/server.pfx"), "wrong");
        assert_eq!(
            err.to_string(),
            "mqtt.server.ssl-certificate-password: wrong (/x/server.pfx)"
        );
    }

    #[test]
    fn pem_is_recognised() {
        assert!(is_pem(b"junk\n-----BEGIN CERTIFICATE-----\n"));
        assert!(!is_pem(&[0x30, 0x82, 0x01, 0x00]));
    }

    #[test]
    fn missing_and_garbage_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("easy-mqtt-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let settings = |path: PathBuf| TlsSettings {
            certificate_path: path,
            certificate_password: String::new(),
            key_path: None,
            client_ca_path: None,
            client_auth: ClientAuth::None,
        };
        let missing = load_server_config(&settings(dir.join("missing.pfx"))).err();
        assert_eq!(missing.map(|e| e.source), Some(TlsSource::Certificate));

        let garbage = dir.join("garbage.pfx");
        std::fs::write(&garbage, b"this is not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let err = load_server_config(&settings(garbage)).err();
        assert_eq!(
            err.as_ref().map(|e| e.source),
            Some(TlsSource::Certificate),
            "{err:?}"
        );

        let pem = dir.join("empty.pem");
        std::fs::write(
            &pem,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = load_server_config(&settings(pem)).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.message.contains("no CERTIFICATE")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
