//! `nrl token` (mint a development token), `nrl restrict` (admin) and `nrl access-log` (auditor,
//! patient portal).

use super::{connect, emit, rfc3339_of, ClientError, ServerArgs, MAX_MESSAGE_BYTES};
use crate::auth::jwt::{mint_hs256, Claims};
use crate::config::{DEFAULT_JWT_AUDIENCE, DEFAULT_JWT_ISSUER, ENV_JWT_HS256_SECRET_FILE};
use crate::proto::nrl::v1 as pb;
use pb::audit_log_client::AuditLogClient;
use pb::patient_admin_client::PatientAdminClient;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The caller's organisation (ODS code), e.g. RR8.
    #[arg(long)]
    pub org: String,
    /// A role: producer, consumer, admin, auditor, portal, peer. Repeat for several.
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// A pointer type code the caller may touch; repeat for several. None: all types.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// A region a producer may register for; repeat for several. None: all regions.
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// The patient a `portal` token acts for (its `nhs_number` claim).
    #[arg(long)]
    pub patient: Option<String>,
    /// The application the token names (`sub`).
    #[arg(long, default_value = "nrl-cli")]
    pub app: String,
    /// The server's HS256 secret file.
    #[arg(long, env = ENV_JWT_HS256_SECRET_FILE)]
    pub secret_file: PathBuf,
    #[arg(long, default_value = DEFAULT_JWT_ISSUER)]
    pub issuer: String,
    #[arg(long, default_value = DEFAULT_JWT_AUDIENCE)]
    pub audience: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: i64,
}

/// Prints a signed development token. Production tokens come from the identity provider.
pub fn token(args: TokenArgs) -> Result<(), ClientError> {
    let secret = std::fs::read(&args.secret_file)
        .map_err(|e| ClientError::Usage(format!("--secret-file {}: {e}", args.secret_file.display())))?;
    let claims = Claims {
        sub: args.app,
        iss: args.issuer,
        aud: args.audience.as_str().into(),
        exp: chrono::Utc::now().timestamp() + args.ttl_secs,
        nbf: None,
        org: args.org,
        roles: args.roles,
        pointer_types: (!args.types.is_empty()).then_some(args.types),
        regions: (!args.regions.is_empty()).then_some(args.regions),
        nhs_number: args.patient,
    };
    // The server's own checks (ODS format, known roles) apply when the token is used; check them
    // here too so a typo fails now, not at the first call.
    crate::auth::jwt::caller_from_claims(&claims).map_err(|e| ClientError::Usage(e.message().to_string()))?;
    let token = mint_hs256(secret.trim_ascii(), &claims).map_err(|e| ClientError::Usage(e.to_string()))?;
    emit(&format!("{token}\n"))
}

#[derive(clap::Args, Debug)]
pub struct RestrictArgs {
    #[arg(value_name = "NHS_NUMBER")]
    pub nhs_number: String,
    /// Clear the restriction instead of setting it.
    #[arg(long)]
    pub clear: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn restrict(args: RestrictArgs) -> Result<(), ClientError> {
    let mut client = PatientAdminClient::new(connect(&args.server).await?);
    let response = client
        .set_restriction(pb::SetRestrictionRequest { nhs_number: args.nhs_number, restricted: !args.clear })
        .await?
        .into_inner();
    if args.server.json {
        emit(&format!(
            "{}\n",
            serde_json::json!({"nhs_number": response.nhs_number, "restricted": response.restricted})
        ))
    } else {
        let state = if response.restricted { "restricted" } else { "not restricted" };
        emit(&format!("NHS number {}: {state}\n", response.nhs_number))
    }
}

#[derive(clap::Args, Debug)]
pub struct AccessLogArgs {
    #[arg(value_name = "NHS_NUMBER")]
    pub nhs_number: String,
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    #[arg(long, default_value = "")]
    pub page_token: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn access_log(args: AccessLogArgs) -> Result<(), ClientError> {
    let mut client = AuditLogClient::new(connect(&args.server).await?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let page = client
        .get_access_log(pb::GetAccessLogRequest {
            nhs_number: args.nhs_number,
            page_size: args.page_size,
            page_token: args.page_token,
        })
        .await?
        .into_inner();
    if args.server.json {
        let events: Vec<serde_json::Value> = page
            .events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "time": rfc3339_of(e.time.as_ref()), "application": e.application,
                    "organisation": e.organisation, "end_user": e.end_user, "purpose": e.purpose,
                    "operation": e.operation, "pointer_ids": e.pointer_ids, "outcome": e.outcome,
                    "break_glass": e.break_glass,
                })
            })
            .collect();
        return emit(&format!("{}\n", serde_json::json!({"events": events, "next_page_token": page.next_page_token})));
    }
    let mut out = String::new();
    for e in &page.events {
        out.push_str(&format!(
            "{}  {:<18} {:<8} {:<20} {:<15} {:<18} {} pointer(s){}\n",
            rfc3339_of(e.time.as_ref()).unwrap_or_default(),
            e.operation,
            e.organisation,
            e.application,
            e.purpose,
            e.outcome,
            e.pointer_ids.len(),
            if e.break_glass { "  BREAK-GLASS" } else { "" }
        ));
    }
    if !page.next_page_token.is_empty() {
        out.push_str(&format!("next page: --page-token {}\n", page.next_page_token));
    }
    emit(&out)
}
