//! Who is calling, and what they may do.
//!
//! Authentication turns a call's [`Credentials`] (a JWT bearer token, or an mTLS client certificate,
//! plus the stated purpose of use and end user) into a [`Caller`]. It knows no protocol: each
//! inbound edge reads the credentials off its own request (the gRPC interceptor in
//! `api::grpc::interceptor`) and maps the error. Authorisation decisions are all in [`policy`],
//! which the registry consults for every operation: nothing else decides who may see or change what.
//!
//! Permissions travel with the identity: in token claims (`org`, `roles`, `pointer_types`,
//! `regions`), so the identity provider is the policy point, as in NHS national services; for mTLS,
//! in a clients file keyed by certificate common name. Either way an operator changes them without
//! a rebuild.

pub mod jwt;
pub mod mtls;
pub mod policy;

use crate::domain::{NhsNumber, OdsCode, RegionCode};
use crate::error::RegistryError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a caller may do. A caller can hold several.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Registers, updates, supersedes and deletes its own organisation's pointers.
    Producer,
    /// Searches, reads and locates pointers, stating a purpose of use.
    Consumer,
    /// Restricts and unrestricts patients.
    Admin,
    /// Reads access logs and the audit export.
    Auditor,
    /// The patient-facing portal: reads a patient's access log.
    Portal,
    /// Another registry node calling on behalf of its own caller (federation).
    Peer,
}

impl Role {
    pub fn parse(input: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(input.trim().to_ascii_lowercase())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Portal => "portal",
            Role::Peer => "peer",
        }
    }
}

/// Why the caller is asking, from the `x-purpose-of-use` metadata.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Purpose {
    DirectCare,
    /// Break-glass: sees a restricted patient's pointers, and the audit says so.
    Emergency,
    PatientRequest,
    Administration,
    Audit,
}

impl Purpose {
    pub const ALL: [Purpose; 5] =
        [Purpose::DirectCare, Purpose::Emergency, Purpose::PatientRequest, Purpose::Administration, Purpose::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::DirectCare => "direct-care",
            Purpose::Emergency => "emergency",
            Purpose::PatientRequest => "patient-request",
            Purpose::Administration => "administration",
            Purpose::Audit => "audit",
        }
    }

    pub fn parse(input: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(input.trim()))
    }
}

/// A set of permitted values, or all of them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Scope<T: Ord> {
    All,
    Only(BTreeSet<T>),
}

impl<T: Ord> Scope<T> {
    pub fn allows(&self, value: &T) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(values) => values.contains(value),
        }
    }
}

/// An authenticated caller and what it stated about this request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Caller {
    /// The calling application: token subject or certificate common name.
    pub application: String,
    pub organisation: OdsCode,
    pub roles: BTreeSet<Role>,
    /// Pointer type codes it may touch.
    pub pointer_types: Scope<String>,
    /// Regions a producer may register for.
    pub regions: Scope<RegionCode>,
    /// `x-end-user`: the person the application acts for, if it says.
    pub end_user: Option<String>,
    /// `x-purpose-of-use`.
    pub purpose: Option<Purpose>,
    /// The patient a patient-facing caller acts for (the token's `nhs_number` claim, as NHS login
    /// issues it). A `portal` caller may read only this patient's access log.
    pub patient: Option<NhsNumber>,
    /// Authentication is switched off (loopback development only): every check passes.
    pub unrestricted: bool,
}

impl Caller {
    /// The caller when authentication is off: local development on loopback.
    pub fn local_developer() -> Self {
        Self {
            application: "local-developer".into(),
            organisation: OdsCode::parse("LOCAL").unwrap_or_else(|_| unreachable!("LOCAL is a valid ODS code")),
            roles: [Role::Producer, Role::Consumer, Role::Admin, Role::Auditor].into_iter().collect(),
            pointer_types: Scope::All,
            regions: Scope::All,
            end_user: None,
            purpose: Some(Purpose::DirectCare),
            patient: None,
            unrestricted: true,
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.unrestricted || self.roles.contains(&role)
    }
}

/// How callers prove who they are. Built from configuration at startup.
#[derive(Clone)]
pub enum Authenticator {
    /// No authentication: every call is [`Caller::local_developer`]. Only allowed on loopback.
    Disabled,
    Enabled {
        jwt: Option<Arc<jwt::JwtVerifier>>,
        mtls: Option<Arc<mtls::ClientDirectory>>,
    },
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Disabled => f.write_str("Authenticator::Disabled"),
            Authenticator::Enabled { jwt, mtls } => {
                write!(f, "Authenticator::Enabled {{ jwt: {}, mtls: {} }}", jwt.is_some(), mtls.is_some())
            }
        }
    }
}

pub const PURPOSE_HEADER: &str = "x-purpose-of-use";
pub const END_USER_HEADER: &str = "x-end-user";
const MAX_END_USER_LEN: usize = 128;

/// What a call presents, as the edge read it off the wire: header values as raw bytes (the edge
/// does not judge them), and the client certificate chain when the connection has one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    pub authorization: Option<&'a [u8]>,
    pub purpose: Option<&'a [u8]>,
    pub end_user: Option<&'a [u8]>,
    /// The client's certificate chain (leaf first, DER), on an mTLS connection.
    pub peer_certificates: Option<&'a [Vec<u8>]>,
}

fn text<'a>(value: &'a [u8], field: &str) -> Result<&'a str, RegistryError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|t| t.chars().all(|c| !c.is_control()))
        .ok_or_else(|| bad_metadata(field, "must be text"))
}

impl Authenticator {
    /// Establishes the caller: credentials first (UNAUTHENTICATED if missing or bad), then the
    /// stated purpose and end user (INVALID_ARGUMENT if malformed).
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Caller, RegistryError> {
        let mut caller = match self {
            Authenticator::Disabled => Caller::local_developer(),
            Authenticator::Enabled { jwt, mtls } => match (credentials.authorization, jwt, mtls) {
                (Some(header), Some(verifier), _) => {
                    let header =
                        std::str::from_utf8(header).map_err(|_| unauthenticated("malformed authorization header"))?;
                    let token = header
                        .strip_prefix("Bearer ")
                        .ok_or_else(|| unauthenticated("authorization must be `Bearer <token>`"))?;
                    verifier.verify(token.trim())?
                }
                (Some(_), None, _) => return Err(unauthenticated("bearer tokens are not accepted here")),
                (None, _, Some(clients)) => clients.identify(credentials.peer_certificates)?,
                (None, _, None) => return Err(unauthenticated("credentials required: authorization: Bearer <token>")),
            },
        };
        if let Some(purpose) = credentials.purpose {
            let text = text(purpose, PURPOSE_HEADER)?;
            caller.purpose = Some(Purpose::parse(text).ok_or_else(|| {
                let all: Vec<&str> = Purpose::ALL.iter().map(|p| p.as_str()).collect();
                bad_metadata(PURPOSE_HEADER, &format!("must be one of: {}", all.join(", ")))
            })?);
        }
        if let Some(user) = credentials.end_user {
            let text = text(user, END_USER_HEADER)?;
            if text.is_empty() || text.len() > MAX_END_USER_LEN || text.chars().any(char::is_control) {
                return Err(bad_metadata(
                    END_USER_HEADER,
                    &format!("must be 1 to {MAX_END_USER_LEN} printable characters"),
                ));
            }
            caller.end_user = Some(text.to_string());
        }
        Ok(caller)
    }
}

pub fn unauthenticated(reason: &str) -> RegistryError {
    RegistryError::Unauthenticated(reason.to_string())
}

fn bad_metadata(field: &str, reason: &str) -> RegistryError {
    RegistryError::invalid(field, reason)
}
