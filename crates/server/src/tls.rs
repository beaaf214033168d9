//! TLS on the server side: the certificate and key of `[tls]`, read and checked at start-up,
//! as a rustls acceptor (ring provider) that offers HTTP/2 and HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::Arc;

use hodei_core::ValidationError;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSection;

/// The acceptor for `section`, or `None` when TLS is off. Every error names the key at fault.
pub(crate) fn acceptor(section: &TlsSection) -> Result<Option<TlsAcceptor>, ValidationError> {
    let (Some(cert_path), Some(key_path)) = (&section.cert, &section.key) else {
        return Ok(None);
    };
    let certs = read_certificates(cert_path)?;
    let key = read_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ValidationError::new("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ValidationError::new(
                "tls.key",
                format!(
                    "{} does not go with {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ValidationError> {
    let field = "tls.cert";
    let pem = std::fs::read(path)
        .map_err(|e| ValidationError::new(field, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ValidationError::new(field, format!("{} is not valid PEM: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ValidationError::new(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ValidationError> {
    let field = "tls.key";
    let pem = std::fs::read(path)
        .map_err(|e| ValidationError::new(field, format!("cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ValidationError::new(
            field,
            format!("{} holds no usable PEM private key: {e}", path.display()),
        )
    })
}
