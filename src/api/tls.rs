//! TLS for the API listener (`server.tls_cert` and `server.tls_key`), so the API, the console
//! and HLS can leave the machine without a proxy in front.
//!
//! Owns reading the PEM files into a rustls server config and the acceptor in force, which
//! SIGHUP swaps for one read from the same files (a renewed certificate). It must not know
//! about connections or routes: [`super::server`] hands it each accepted socket.
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3, HTTP/1.1 only (ALPN `http/1.1`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate or key that cannot be used. Names the key and the file; never holds the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: cannot read certificates: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("server.tls_key {path}: cannot read a private key: {message}")]
    Key { path: PathBuf, message: String },
    #[error("server.tls_key {path} cannot be used with server.tls_cert {cert}: {message}")]
    Mismatch {
        path: PathBuf,
        cert: PathBuf,
        message: String,
    },
}

/// Where the certificate chain and its key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then its intermediates (a `fullchain.pem`).
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads both files and checks that the key goes with the certificate.
    pub fn load(&self) -> Result<TlsAcceptor, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            message: pem_message(&e),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Mismatch {
                path: self.key.clone(),
                cert: self.cert.clone(),
                message: e.to_string(),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::Certificate {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_message(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_message(&e)))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in the file".to_owned()));
    }
    Ok(certs)
}

/// The PEM reader's error, in words an operator can act on.
fn pem_message(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM block of that kind in the file".to_owned(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The acceptor in force, shared by the listener and the daemon (which swaps it on SIGHUP).
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    acceptor: Arc<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads `files`; an error stops the start.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = files.load()?;
        Ok(Self {
            files,
            acceptor: Arc::new(RwLock::new(acceptor)),
        })
    }

    /// The files it was read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and puts them in force for new connections; on an error the
    /// old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = self.files.load()?;
        *self
            .acceptor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = acceptor;
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = files(dir.path());
        let err = f.load().err().expect("no files").to_string();
        assert!(
            err.starts_with("server.tls_cert") && err.contains("cert.pem"),
            "{err}"
        );

        std::fs::write(&f.cert, "not a certificate\n").expect("write");
        let err = f.load().err().expect("no PEM").to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");

        // A certificate block that parses as PEM, and no key.
        std::fs::write(
            &f.cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = f.load().err().expect("no key").to_string();
        assert!(
            err.starts_with("server.tls_key") && err.contains("key.pem"),
            "{err}"
        );

        // A key that is not a key: the error names the file, never its text.
        std::fs::write(
            &f.key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = f.load().err().expect("a bad key").to_string();
        assert!(err.contains("cannot be used with"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
