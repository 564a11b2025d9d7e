//! `nrl serve`'s authentication flags: JWT keys, the TLS certificates, and mTLS clients. Every
//! problem is reported, each naming the setting as the user gave it.

use super::{read, AuthConfig, ServeArgs, TlsError, TlsMaterial};
use crate::auth::jwt::{JwtVerifier, VerifyingKey};
use crate::auth::mtls::ClientDirectory;
use crate::auth::Authenticator;
use std::sync::Arc;

/// Authentication from the flags: JWT keys, TLS, mTLS clients. Every problem is reported.
pub(super) fn auth_config(args: &ServeArgs) -> Result<AuthConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut keys = Vec::new();
    if let Some(path) = &args.jwt_hs256_secret_file {
        match read(path, &args.name("jwt_hs256_secret_file")) {
            Ok(secret) => keys.push(VerifyingKey::Hs256Secret(secret.trim_ascii().to_vec())),
            Err(e) => problems.push(e),
        }
    }
    if let Some(path) = &args.jwt_public_key_file {
        match read(path, &args.name("jwt_public_key_file")) {
            Ok(pem) => keys.push(VerifyingKey::PublicPem(pem)),
            Err(e) => problems.push(e),
        }
    }
    let jwt = if keys.is_empty() {
        None
    } else {
        JwtVerifier::new(keys, &args.jwt_issuer, &args.jwt_audience)
            .map(Arc::new)
            .map_err(|e| problems.push(format!("JWT: {e}")))
            .ok()
    };
    let (cert_name, key_name) = (args.name("tls_cert_file"), args.name("tls_key_file"));
    let identity = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => match (read(cert, &cert_name), read(key, &key_name)) {
            (Ok(cert), Ok(key)) => Some((cert, key)),
            (cert, key) => {
                problems.extend(cert.err().into_iter().chain(key.err()));
                None
            }
        },
        (None, None) => None,
        _ => {
            problems.push(format!("{cert_name} and {key_name} go together"));
            None
        }
    };
    let (ca_name, clients_name) = (args.name("tls_client_ca_file"), args.name("mtls_clients_file"));
    let (client_ca, mtls) = match (&args.tls_client_ca_file, &args.mtls_clients_file) {
        (None, None) => (None, None),
        (Some(ca), Some(clients)) => {
            let ca = read(ca, &ca_name).map_err(|e| problems.push(e)).ok();
            let clients = read(clients, &clients_name)
                .and_then(|json| {
                    ClientDirectory::from_json(&String::from_utf8_lossy(&json))
                        .map_err(|e| format!("{clients_name}: {e}"))
                })
                .map_err(|e| problems.push(e))
                .ok();
            if args.tls_cert_file.is_none() || args.tls_key_file.is_none() {
                problems.push(format!("{ca_name} needs {cert_name} and {key_name}"));
            }
            (ca, clients.map(Arc::new))
        }
        _ => {
            problems.push(format!("{ca_name} and {clients_name} go together"));
            (None, None)
        }
    };
    let tls = identity.and_then(|(cert, key)| {
        // Client certificates are optional when bearer tokens are also accepted.
        TlsMaterial::new(cert, key, client_ca, jwt.is_some())
            .map_err(|e| {
                let name = match e {
                    TlsError::NoCertificate | TlsError::Certificate(_) => cert_name.clone(),
                    TlsError::Key(_) => key_name.clone(),
                    TlsError::ClientCa(_) => ca_name.clone(),
                    TlsError::Server(_) => format!("{cert_name} and {key_name}"),
                };
                problems.push(format!("{name}: {e}"));
            })
            .ok()
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let authenticator =
        if jwt.is_none() && mtls.is_none() { Authenticator::Disabled } else { Authenticator::Enabled { jwt, mtls } };
    Ok(AuthConfig { authenticator, tls })
}
