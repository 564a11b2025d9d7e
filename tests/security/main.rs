//! Authentication and authorisation over real sockets: the authorisation matrix (every role × every
//! RPC × own or other organisation × permitted or unpermitted pointer type), bad tokens, ES256 and
//! RS256 keys, mTLS client certificates (gRPC and FHIR), TLS on the FHIR listener, purpose of use,
//! patient restriction, the loopback-only rule when authentication is off, and NHS numbers kept out
//! of the logs of the real binary.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nrl_registry::auth::jwt::{mint_hs256, Claims, JwtVerifier, VerifyingKey};
use nrl_registry::auth::mtls::ClientDirectory;
use nrl_registry::auth::Authenticator;
use nrl_registry::config::{AuthConfig, ServeArgs, ServerConfig, StoreConfig};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::batch_outcome::Result as BatchResult;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::auth::*;
use testkit::fixtures::*;
use testkit::nodes::nrl_command;
use testkit::process::{TempDir, Watched};
use testkit::TestServer;
use tonic::{Code, Response, Status};

mod authorisation;
mod fhir_tls;
mod logs;
mod loopback;
mod mtls;
mod purpose;
mod restriction;
mod tokens;

const OWN: &str = "RR8";
const OTHER: &str = "RA7";
const PERMITTED: &str = CRISIS_PLAN;
const UNPERMITTED: &str = NEWS2;
/// The matrix's target pointer lives here; a companion pointer every reader may see lives in
/// COMPANION_REGION, so "filtered" shows as fewer results rather than none.
const TARGET_REGION: &str = "QWO";
const COMPANION_REGION: &str = "QE1";

/// Creates `pointer` as `seeder` (a producer allowed to), for the tests' starting data.
async fn seed(seeder: &Clients, pointer: pb::PointerInput) -> pb::Pointer {
    seeder
        .registry
        .clone()
        .create_pointer(pb::CreatePointerRequest { pointer: Some(pointer) })
        .await
        .expect("seed a pointer")
        .into_inner()
        .pointer
        .expect("created pointer")
}

/// A call that needs authentication and nothing else, and a patient read.
async fn probe(channel: &tonic::transport::Channel, credentials: Credentials) -> Vec<Status> {
    let mut clients = Clients::new(channel, credentials);
    let mut statuses = Vec::new();
    if let Err(e) = clients.locator.list_regions(pb::ListRegionsRequest {}).await {
        statuses.push(e);
    }
    let request = pb::CountPointersRequest { query: Some(query(&new_patient())) };
    if let Err(e) = clients.registry.count_pointers(request).await {
        statuses.push(e);
    }
    statuses
}

/// The log of a `nrl` child (its stdout and stderr), for the assertions on what it printed.
fn read_log(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read the nrl log {}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}
