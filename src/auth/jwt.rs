//! JWT bearer tokens: HS256 with a shared secret (development and tests), RS256 or ES256 with the
//! identity provider's public key (production). Expiry, not-before, issuer and audience are checked;
//! `alg: none` and any algorithm not configured are refused.

use super::{unauthenticated, Caller, Role, Scope};
use crate::domain::{NhsNumber, OdsCode, RegionCode};
use crate::error::RegistryError;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The claims a token carries. `pointer_types` and `regions` absent mean "all".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The application.
    pub sub: String,
    pub iss: String,
    /// One audience or several (identity providers send either form).
    pub aud: Audience,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The caller's organisation (ODS code).
    pub org: String,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// The patient a patient-facing application acts for (NHS login's claim name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhs_number: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(value: &str) -> Self {
        Audience::One(value.to_string())
    }
}

/// Key material, from configuration.
pub enum VerifyingKey {
    Hs256Secret(Vec<u8>),
    /// A PEM public key: RSA (RS256) or EC P-256 (ES256).
    PublicPem(Vec<u8>),
}

pub struct JwtVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Clock skew tolerated on exp and nbf.
const LEEWAY_SECS: u64 = 30;

impl JwtVerifier {
    pub fn new(keys: Vec<VerifyingKey>, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let mut loaded = Vec::new();
        for key in keys {
            match key {
                VerifyingKey::Hs256Secret(secret) => {
                    if secret.len() < 32 {
                        return Err(KeyError("the HS256 secret must be at least 32 bytes".into()));
                    }
                    loaded.push((Algorithm::HS256, DecodingKey::from_secret(&secret)));
                }
                VerifyingKey::PublicPem(pem) => {
                    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                        loaded.push((Algorithm::RS256, key));
                    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                        loaded.push((Algorithm::ES256, key));
                    } else {
                        return Err(KeyError("the public key is neither an RSA nor an EC PEM public key".into()));
                    }
                }
            }
        }
        if loaded.is_empty() {
            return Err(KeyError("no JWT key configured".into()));
        }
        Ok(Self { keys: loaded, issuer: issuer.to_string(), audience: audience.to_string() })
    }

    /// Checks the token and turns its claims into a caller. Every failure is UNAUTHENTICATED with
    /// a short reason and nothing from inside the token.
    pub fn verify(&self, token: &str) -> Result<Caller, RegistryError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed token"))?;
        let key = self
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, key)| key)
            .ok_or_else(|| unauthenticated("token algorithm not accepted"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid",
                ErrorKind::InvalidSignature => "token signature invalid",
                ErrorKind::InvalidIssuer => "token issuer not accepted",
                ErrorKind::InvalidAudience => "token audience not accepted",
                ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                _ => "malformed token",
            })
        })?;
        caller_from_claims(&data.claims)
    }
}

/// The caller a token (or an mTLS client entry) describes.
pub fn caller_from_claims(claims: &Claims) -> Result<Caller, RegistryError> {
    let application = claims.sub.trim();
    if application.is_empty() || application.len() > 128 {
        return Err(unauthenticated("token subject must name the application"));
    }
    let organisation = OdsCode::parse(&claims.org).map_err(|_| unauthenticated("token org is not an ODS code"))?;
    let roles = claims
        .roles
        .iter()
        .map(|r| Role::parse(r).ok_or_else(|| unauthenticated("token names an unknown role")))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let pointer_types = match &claims.pointer_types {
        None => Scope::All,
        Some(types) => Scope::Only(types.iter().map(|t| t.trim().to_string()).collect()),
    };
    let regions = match &claims.regions {
        None => Scope::All,
        Some(regions) => Scope::Only(
            regions
                .iter()
                .map(|r| RegionCode::parse(r).ok_or_else(|| unauthenticated("token names a malformed region")))
                .collect::<Result<_, _>>()?,
        ),
    };
    let patient = match &claims.nhs_number {
        None => None,
        Some(n) => {
            Some(NhsNumber::parse(n).map_err(|_| unauthenticated("token nhs_number is not a valid NHS number"))?)
        }
    };
    Ok(Caller {
        application: application.to_string(),
        organisation,
        roles,
        pointer_types,
        regions,
        end_user: None,
        purpose: None,
        patient,
        unrestricted: false,
    })
}

/// Signs claims with an HS256 secret: for `nrl token` (development) and tests.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, KeyError> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .map_err(|e| KeyError(e.to_string()))
}

#[cfg(test)]
mod tests;
