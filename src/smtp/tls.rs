//! STARTTLS (RFC 3207): the server side of the TLS upgrade, rustls with the aws-lc-rs provider.
//!
//! Only loads the certificate chain and key named by `smtp.tls_cert`/`smtp.tls_key` into an
//! acceptor; the session decides when to upgrade and throws away what it knew before.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading TLS certificate chain {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("reading TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS certificate and key do not form a usable server config: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from PEM files: the certificate chain (leaf first) and its private key.
///
/// # Errors
/// [`Error`] naming the file that could not be read or the reason rustls refused the pair.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let certificate_error = |message: String| Error::Certificate {
        path: cert.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|err| certificate_error(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| certificate_error(err.to_string()))?;
    if chain.is_empty() {
        return Err(certificate_error("no certificate in the file".to_owned()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|err| Error::Key {
        path: key.to_owned(),
        message: err.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
