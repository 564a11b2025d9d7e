//! `nrl federated-search`: ask every region holding a patient, through the national node.

use super::{connect, emit, ClientError, ServerArgs, MAX_MESSAGE_BYTES};
use crate::proto::nrl::v1 as pb;
use pb::federated_locator_client::FederatedLocatorClient;

#[derive(clap::Args, Debug)]
pub struct FederatedSearchArgs {
    #[arg(value_name = "NHS_NUMBER")]
    pub nhs_number: String,
    /// Only these regions; repeat for several. None: every region holding the patient.
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Only pointers of these types; repeat for several.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Overall budget in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub deadline_ms: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn outcome(value: i32) -> &'static str {
    match pb::RegionOutcome::try_from(value) {
        Ok(pb::RegionOutcome::Ok) => "OK",
        Ok(pb::RegionOutcome::NoMatch) => "NO_MATCH",
        Ok(pb::RegionOutcome::Timeout) => "TIMEOUT",
        Ok(pb::RegionOutcome::Unavailable) => "UNAVAILABLE",
        Ok(pb::RegionOutcome::PermissionDenied) => "PERMISSION_DENIED",
        Ok(pb::RegionOutcome::Error) => "ERROR",
        _ => "UNSPECIFIED",
    }
}

fn overall(value: i32) -> &'static str {
    match pb::OverallOutcome::try_from(value) {
        Ok(pb::OverallOutcome::Success) => "SUCCESS",
        Ok(pb::OverallOutcome::Partial) => "PARTIAL",
        Ok(pb::OverallOutcome::Failure) => "FAILURE",
        _ => "UNSPECIFIED",
    }
}

pub async fn federated_search(args: FederatedSearchArgs) -> Result<(), ClientError> {
    let mut client =
        FederatedLocatorClient::new(connect(&args.server).await?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let started = std::time::Instant::now();
    let response = client
        .federated_search(pb::FederatedSearchRequest {
            query: Some(pb::PointerQuery { nhs_number: args.nhs_number, types: args.types, ..Default::default() }),
            target_regions: args.regions,
            deadline_ms: args.deadline_ms,
        })
        .await?
        .into_inner();
    let took = started.elapsed();
    if args.server.json {
        let regions: Vec<serde_json::Value> = response
            .regions
            .iter()
            .map(|r| {
                serde_json::json!({"region": r.region, "outcome": outcome(r.outcome), "message": r.message,
                    "latency_ms": r.latency_ms, "pointers": r.pointers.len()})
            })
            .collect();
        let pointers: Vec<serde_json::Value> = response.pointers.iter().map(super::output::pointer_json).collect();
        return emit(&format!(
            "{}\n",
            serde_json::json!({"overall": overall(response.overall), "regions": regions, "pointers": pointers})
        ));
    }
    let mut out = format!("{} in {:.1} ms\n", overall(response.overall), took.as_secs_f64() * 1000.0);
    for r in &response.regions {
        out.push_str(&format!(
            "  {:<6} {:<18} {:>4} pointer(s) {:>6} ms  {}\n",
            r.region,
            outcome(r.outcome),
            r.pointers.len(),
            r.latency_ms,
            r.message
        ));
    }
    for p in &response.pointers {
        let ty = p.r#type.as_ref().map(|t| t.display.as_str()).unwrap_or("");
        let url = p.content.first().map(|c| c.url.as_str()).unwrap_or("");
        out.push_str(&format!("{}  {:<5} {:<8} {:<38} {url}\n", p.id, p.region, p.custodian, ty));
    }
    emit(&out)
}
