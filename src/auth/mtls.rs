//! mTLS client identities: the server asks for a client certificate signed by the configured CA;
//! the certificate's subject common name names an entry in the clients file, which says what the
//! client may do. The file is data (`NRL_MTLS_CLIENTS_FILE`), changed without a rebuild:
//!
//! ```json
//! {"clients": [{"common_name": "qwo-shared-care", "org": "RR8", "roles": ["producer"],
//!               "pointer_types": ["736253002"], "regions": ["QWO"]}]}
//! ```

use super::jwt::{caller_from_claims, Claims};
use super::{unauthenticated, Caller};
use crate::error::RegistryError;
use serde::Deserialize;
use std::collections::HashMap;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    common_name: String,
    org: String,
    roles: Vec<String>,
    #[serde(default)]
    pointer_types: Option<Vec<String>>,
    #[serde(default)]
    regions: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    clients: Vec<ClientEntry>,
}

/// Certificate common name → the caller it is.
pub struct ClientDirectory {
    clients: HashMap<String, Caller>,
}

impl ClientDirectory {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let file: ClientsFile = serde_json::from_str(json).map_err(|e| format!("clients file: {e}"))?;
        let mut clients = HashMap::new();
        for entry in file.clients {
            let claims = Claims {
                sub: entry.common_name.clone(),
                iss: String::new(),
                aud: super::jwt::Audience::One(String::new()),
                exp: 0,
                nbf: None,
                org: entry.org,
                roles: entry.roles,
                pointer_types: entry.pointer_types,
                regions: entry.regions,
                // A certificate names an application, never a patient.
                nhs_number: None,
            };
            let caller = caller_from_claims(&claims)
                .map_err(|e| format!("clients file entry {:?}: {}", entry.common_name, e))?;
            if clients.insert(entry.common_name.clone(), caller).is_some() {
                return Err(format!("clients file lists {:?} twice", entry.common_name));
            }
        }
        Ok(Self { clients })
    }

    /// The caller presenting the request's client certificate.
    pub fn identify(&self, certificates: Option<&[Vec<u8>]>) -> Result<Caller, RegistryError> {
        let certs = certificates
            .ok_or_else(|| unauthenticated("credentials required: a client certificate or a bearer token"))?;
        let leaf = certs.first().ok_or_else(|| unauthenticated("credentials required: a client certificate"))?;
        let (_, cert) =
            X509Certificate::from_der(leaf.as_ref()).map_err(|_| unauthenticated("unreadable client certificate"))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| unauthenticated("client certificate has no common name"))?;
        self.clients.get(common_name).cloned().ok_or_else(|| unauthenticated("client certificate is not registered"))
    }
}
