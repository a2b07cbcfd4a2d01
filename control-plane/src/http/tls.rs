//! TLS in silo itself (rustls), for deployments without a proxy in front: `--tls-cert` and
//! `--tls-key` (PEM). The certificate and key are read again on SIGHUP and whenever either
//! file changes (checked every 10 s), so a renewal (certbot, cert-manager) needs no
//! restart; a pair that does not load is logged and the one in use stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate in use, swapped in place on reload.
#[derive(Debug)]
pub struct Certificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// When the files last changed, as last read.
    stamp: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{} is not a PEM certificate chain: {e}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    // The key's own text is never part of a message.
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|_| format!("{} is not a PEM private key", key_path.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("{} is not a usable private key", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| "the TLS key does not belong to the certificate".to_owned())?;
    Ok(certified)
}

impl Certificate {
    /// Loads the pair; an error names the file, never its content.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, String> {
        let current = load(cert_path, key_path)?;
        Ok(Arc::new(Certificate {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(current)),
            stamp: RwLock::new((modified(cert_path), modified(key_path))),
        }))
    }

    /// Reads the pair again; keeps the one in use if the new one does not load.
    pub fn reload(&self) {
        match load(&self.cert_path, &self.key_path) {
            Ok(certified) => {
                *self.current.write() = Arc::new(certified);
                *self.stamp.write() = (modified(&self.cert_path), modified(&self.key_path));
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the one in use stays")
            }
        }
    }

    /// Reloads if either file changed since it was last read.
    fn reload_if_changed(&self) {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        if now != *self.stamp.read() {
            self.reload();
        }
    }

    /// The acceptor for connections, reading the certificate in use at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth())
        .unwrap_or_else(|_| rustls::ServerConfig::builder().with_no_client_auth())
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// Reloads on SIGHUP and when the files change; runs for the life of the server.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cert = self.clone();
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                let signalled = async {
                    match &mut hangup {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = signalled => {
                        let cert = cert.clone();
                        let _ = tokio::task::spawn_blocking(move || cert.reload()).await;
                    }
                    _ = tick.tick() => {
                        let cert = cert.clone();
                        let _ = tokio::task::spawn_blocking(move || cert.reload_if_changed()).await;
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}
