//! TLS for the collector's two listeners: one certificate and key, and for mutual TLS the CAs a
//! client's certificate must chain to, read once at startup and used by gRPC and HTTP alike.
//!
//! The files are parsed into a rustls configuration before anything serves, so a wrong path, a key
//! that does not match or a CA file with no certificate stops startup with the file named, rather
//! than failing every handshake later.

use std::path::Path;
use std::sync::Arc;

use proto::tonic::transport::{Certificate, Identity, ServerTlsConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsSettings;
use crate::error::{Error, Result};

/// Loaded TLS material for both listeners.
#[derive(Clone)]
pub(crate) struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    http: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Tls").field("mutual", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files `settings` names.
    pub(crate) fn load(settings: &TlsSettings) -> Result<Self> {
        let cert_pem = read("tls.cert", &settings.cert)?;
        let key_pem = read("tls.key", &settings.key)?;
        let client_ca_pem = settings.client_ca.as_deref().map(|path| read("tls.client_ca", path)).transpose()?;

        let chain = certificates("tls.cert", &settings.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad("tls.key", &settings.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", &settings.cert, e))?;
        let builder = match (&settings.client_ca, &client_ca_pem) {
            (Some(path), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for ca in certificates("tls.client_ca", path, pem)? {
                    roots.add(ca).map_err(|e| bad("tls.client_ca", path, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| bad("tls.client_ca", path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut http = builder.with_single_cert(chain, key).map_err(|e| bad("tls.key", &settings.key, e))?;
        // The HTTP server speaks HTTP/1.1 only (what Telegraf, Prometheus and OTLP/HTTP clients use).
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { cert_pem, key_pem, client_ca_pem, http: Arc::new(http) })
    }

    /// Whether clients must present a certificate.
    pub(crate) fn is_mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// The gRPC server's configuration (tonic builds its own rustls configuration, with HTTP/2's ALPN).
    pub(crate) fn grpc(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// The HTTP server's configuration.
    pub(crate) fn http(&self) -> axum_server::tls_rustls::RustlsConfig {
        axum_server::tls_rustls::RustlsConfig::from_config(self.http.clone())
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| bad(key, path, e))
}

/// Every certificate of a PEM file; a file with none is an error, not an empty chain.
fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(key, path, e))?;
    if certs.is_empty() {
        return Err(bad(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn bad(key: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls { key: key.to_owned(), path: path.display().to_string(), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_bad_file_names_its_setting_and_path() {
        let dir = std::env::temp_dir().join(format!("runnel-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = write(&dir, "empty.pem", "");
        let settings = TlsSettings { cert: empty.clone(), key: empty.clone(), client_ca: None };
        let err = Tls::load(&settings).unwrap_err().to_string();
        assert_eq!(err, format!("tls.cert {}: no PEM certificate in the file", empty.display()));

        let missing = dir.join("missing.pem");
        let err = Tls::load(&TlsSettings { cert: missing.clone(), key: empty, client_ca: None }).unwrap_err().to_string();
        assert!(err.starts_with(&format!("tls.cert {}: ", missing.display())), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
