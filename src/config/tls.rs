//! The TLS the server speaks, kept as the PEM it was configured with, so that both listeners that
//! carry patient data are set up from the same certificates: the gRPC listener through tonic's
//! `ServerTlsConfig`, the FHIR listener through a rustls `ServerConfig` built here. Both use the
//! ring provider and the same client-certificate rule.

use std::fmt;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::RootCertStore;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The FHIR listener speaks HTTP/1.1 only.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The server's certificate chain and key, and the CA client certificates must chain to (mTLS).
/// Built only valid: [`TlsMaterial::new`] parses every PEM and checks the key fits the chain.
#[derive(Clone)]
pub struct TlsMaterial {
    cert_chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    /// Whether a connection without a client certificate is taken (bearer tokens are also
    /// accepted); a certificate that is presented must chain to the CA all the same.
    client_auth_optional: bool,
    /// The FHIR listener's configuration, built once from the PEM above.
    http: Arc<rustls::ServerConfig>,
}

impl TlsMaterial {
    /// Server TLS from PEM; with `client_ca_pem`, client certificates are asked for and must
    /// chain to it (required unless `client_auth_optional`).
    pub fn new(
        cert_chain_pem: Vec<u8>,
        key_pem: Vec<u8>,
        client_ca_pem: Option<Vec<u8>>,
        client_auth_optional: bool,
    ) -> Result<Self, TlsError> {
        let http = Arc::new(http_config(&cert_chain_pem, &key_pem, client_ca_pem.as_deref(), client_auth_optional)?);
        Ok(Self { cert_chain_pem, key_pem, client_ca_pem, client_auth_optional, http })
    }

    /// The gRPC listener's TLS, for tonic.
    pub fn grpc(&self) -> ServerTlsConfig {
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_chain_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => tls.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(self.client_auth_optional),
            None => tls,
        }
    }

    /// The FHIR listener's TLS (ALPN `http/1.1`).
    pub fn http(&self) -> Arc<rustls::ServerConfig> {
        self.http.clone()
    }

    /// Whether client certificates are asked for (mTLS).
    pub fn requests_client_certificates(&self) -> bool {
        self.client_ca_pem.is_some()
    }
}

/// Never prints the key.
impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("client_auth_optional", &self.client_auth_optional)
            .finish_non_exhaustive()
    }
}

/// What is wrong with the TLS settings, naming the part (the flag is added by the caller).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate in the certificate file")]
    NoCertificate,
    #[error("the certificate file is not PEM: {0}")]
    Certificate(String),
    #[error("the key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    Key(String),
    #[error("the client CA file holds no usable PEM certificate{0}")]
    ClientCa(String),
    #[error("the certificate and key do not make a TLS server: {0}")]
    Server(String),
}

fn http_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
    client_auth_optional: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Server(e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| TlsError::ClientCa(format!(": {e}")))?;
                roots.add(cert).map_err(|e| TlsError::ClientCa(format!(": {e}")))?;
            }
            if roots.is_empty() {
                return Err(TlsError::ClientCa(String::new()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if client_auth_optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::ClientCa(format!(": {e}")))?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Server(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> (rcgen::CertifiedKey<rcgen::KeyPair>, rcgen::CertifiedKey<rcgen::KeyPair>) {
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("server certificate");
        let ca = rcgen::generate_simple_self_signed(vec!["client CA".to_string()]).expect("CA certificate");
        (server, ca)
    }

    #[test]
    fn valid_pem_makes_both_listeners_and_the_fhir_one_speaks_http1() {
        let (server, ca) = pki();
        let (cert, key) = (server.cert.pem().into_bytes(), server.signing_key.serialize_pem().into_bytes());
        let tls = TlsMaterial::new(cert.clone(), key.clone(), None, false).expect("server TLS");
        assert_eq!(tls.http().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!tls.requests_client_certificates());
        let _ = tls.grpc();
        let mtls = TlsMaterial::new(cert, key, Some(ca.cert.pem().into_bytes()), true).expect("mTLS");
        assert!(mtls.requests_client_certificates());
        assert!(!format!("{mtls:?}").contains("PRIVATE KEY"), "{mtls:?}");
    }

    #[test]
    fn each_bad_part_is_named() {
        let (server, other) = pki();
        let (cert, key) = (server.cert.pem().into_bytes(), server.signing_key.serialize_pem().into_bytes());
        let wrong_key = other.signing_key.serialize_pem().into_bytes();
        let cases = [
            (b"not a certificate".to_vec(), key.clone(), None::<Vec<u8>>, "no PEM certificate"),
            (cert.clone(), b"no key here".to_vec(), None, "no PEM private key"),
            (cert.clone(), key.clone(), Some(b"nothing".to_vec()), "client CA file"),
            (cert, wrong_key, None, "do not make a TLS server"),
        ];
        for (cert, key, ca, expected) in cases {
            let err = TlsMaterial::new(cert, key, ca, false).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
