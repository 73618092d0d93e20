//! HTTPS for the public listener: the rustls server configuration (TLS 1.2 and 1.3 only, the
//! ring provider's suites: AES-GCM and ChaCha20-Poly1305 with ECDHE; ALPN `h2` and
//! `http/1.1`) and the certificate store that reads `http.tls.cert_file` and `key_file` again
//! when either file changes (checked by [`CertStore::reload_if_changed`], which the daemon
//! calls every few seconds and on SIGHUP). A file that does not load keeps the running
//! certificate and is logged; handshakes never wait for a reload.
//!
//! Owns: loading and swapping the certificate. May not touch: sockets (the server does the
//! handshakes).

use contract::config::TlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not PEM the server can use: {message}", path = path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{path}: no certificate in the file", path = path.display())]
    NoCertificate { path: PathBuf },
    #[error("certificate {cert} and key {key} do not go together: {source}", cert = cert.display(), key = key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The modification times and sizes of both files, to notice a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cert: Option<(SystemTime, u64)>,
    key: Option<(SystemTime, u64)>,
}

fn stamp_of(p: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(p).ok()?;
    Some((md.modified().ok()?, md.len()))
}

/// The certificate in force and where it comes from.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Stamp>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// The ring provider: TLS 1.3 AES-GCM and ChaCha20-Poly1305 suites, TLS 1.2 ECDHE with the
/// same AEADs, X25519 and the NIST curves. rustls marks it deprecated because ring has no
/// post-quantum key exchange; the alternative (aws-lc-rs) would add a C and CMake build to
/// every machine that builds Sluice, for a key exchange that protects WHIP/WHEP signalling
/// (the media keys come from DTLS-SRTP, not from this TLS session).
#[allow(deprecated)]
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Read a certificate chain and its key, and check that they belong together.
pub fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| pem_error(cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_file, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_error(key_file, e))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        source,
    })
}

impl CertStore {
    /// Load the configured pair (an error here stops the start).
    pub fn open(cfg: &TlsConfig) -> Result<Arc<CertStore>, TlsError> {
        let provider = Arc::new(provider());
        let stamp = Stamp {
            cert: stamp_of(&cfg.cert_file),
            key: stamp_of(&cfg.key_file),
        };
        let ck = load_pair(&cfg.cert_file, &cfg.key_file, &provider)?;
        Ok(Arc::new(CertStore {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            provider,
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(stamp),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// The rustls server configuration serving this store's certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut c = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// Read both files again if either changed since the last load (or always, with
    /// `force`). Returns whether a new certificate is in force.
    pub fn reload_if_changed(&self, force: bool) -> bool {
        let now = Stamp {
            cert: stamp_of(&self.cert_file),
            key: stamp_of(&self.key_file),
        };
        {
            let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && *last == now {
                return false;
            }
            // A pair that fails to load is not retried until a file changes again.
            *last = now;
        }
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS certificate not reloaded; the running one stays");
                false
            }
        }
    }

    /// Successful and failed reloads so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }

    /// The DER of the leaf certificate in force.
    pub fn leaf_der(&self) -> Vec<u8> {
        let ck = self.resolve_current();
        ck.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    fn resolve_current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
