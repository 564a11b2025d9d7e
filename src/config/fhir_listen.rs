//! `--fhir-listen`: where the FHIR listener goes, checked against the gRPC address and the
//! loopback rule.

use super::{AuthConfig, ServeArgs};
use crate::admin::{AdminConfig, BoundAddress};
use crate::auth::Authenticator;
use std::net::SocketAddr;

/// Where the FHIR listener goes (`listen: None`: off), and the address it bound.
#[derive(Clone, Debug, Default)]
pub struct FhirConfig {
    pub listen: Option<SocketAddr>,
    /// Reports the address actually bound, for listening on port 0 (tests).
    pub bound: BoundAddress,
}

/// The FHIR listener's address: none for `off`; on loopback only while authentication is off;
/// never the gRPC address.
pub(super) fn address(
    args: &ServeArgs,
    grpc: Option<SocketAddr>,
    auth: Option<&AuthConfig>,
) -> Result<Option<SocketAddr>, String> {
    let name = args.name("fhir_listen");
    let listen =
        AdminConfig::parse_listen(&args.fhir_listen).map_err(|e| format!("{name}={:?}: {e}", args.fhir_listen))?;
    match listen {
        Some(fhir) if Some(fhir) == grpc && fhir.port() != 0 => {
            Err(format!("{name}={fhir}: the same address as {}", args.name("listen")))
        }
        Some(fhir)
            if !fhir.ip().is_loopback()
                && matches!(auth, Some(a) if matches!(a.authenticator, Authenticator::Disabled)) =>
        {
            Err(format!("{name}={fhir}: authentication is off, so the FHIR API listens on loopback only"))
        }
        listen => Ok(listen),
    }
}
