//! TLS on the client side: what a gRPC client trusts when its URL is `https://`.
//!
//! rustls with the ring provider. A client given a CA certificate file trusts that CA only;
//! without one it trusts the system's roots. `http://` URLs stay plaintext.

use std::path::Path;

use hodei_core::ValidationError;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Reads a PEM file of CA certificates, checking that it holds at least one. Errors name
/// `field`, the setting the path came from.
pub fn read_ca_certificates(path: &Path, field: &str) -> Result<Vec<u8>, ValidationError> {
    let pem = std::fs::read(path)
        .map_err(|e| ValidationError::new(field, format!("cannot read {}: {e}", path.display())))?;
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|e| {
            ValidationError::new(field, format!("{} is not valid PEM: {e}", path.display()))
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(ValidationError::new(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

/// Configures TLS on `endpoint` when its URL is `https://`: trust the CA certificates in
/// `ca_cert`, or the system's roots when it is `None`. Other URLs are returned unchanged (a
/// CA file given for an `http://` URL is not used). Errors name `ca_cert`.
pub fn client_tls(endpoint: Endpoint, ca_cert: Option<&Path>) -> Result<Endpoint, ValidationError> {
    if endpoint.uri().scheme_str() != Some("https") {
        return Ok(endpoint);
    }
    let tls = ClientTlsConfig::new();
    let tls = match ca_cert {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read_ca_certificates(
            path, "ca_cert",
        )?)),
        None => tls.with_native_roots(),
    };
    endpoint.tls_config(tls).map_err(|e| {
        let hint = if ca_cert.is_none() {
            " (no CA certificate given: pass --ca-cert or set HODEI_CA_CERT)"
        } else {
            ""
        };
        ValidationError::new("ca_cert", format!("cannot set up TLS: {e}{hint}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_urls_stay_plaintext_and_bad_ca_files_are_named() {
        let endpoint = Endpoint::from_static("http://127.0.0.1:1");
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(
            client_tls(endpoint, Some(missing)).is_ok(),
            "not used for http"
        );

        let endpoint = Endpoint::from_static("https://127.0.0.1:1");
        let error = client_tls(endpoint, Some(missing)).unwrap_err();
        assert_eq!(error.field, "ca_cert");
        assert!(error.reason.contains("/nonexistent/ca.pem"), "{error}");

        let dir = std::env::temp_dir().join(format!("hodei-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = read_ca_certificates(&not_pem, "tls.ca_cert").unwrap_err();
        assert_eq!(error.field, "tls.ca_cert");
        assert!(error.reason.contains("no PEM certificate"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
