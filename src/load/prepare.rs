//! Data for the scenarios, from a seeded server: `prepare` writes the message arrays the configs'
//! `data-file`s name, and `fill` registers bulk pointers for patients the scenarios do not use
//! (the 10M-pointer run).
//!
//! Which patients each file uses:
//! - `search-hit.json`, `locate.json`, `get.json`: the first `count` seeded patients (from the NHS
//!   numbers `nrl seed --out` wrote, in seed order);
//! - `search-miss.json`: `count` valid test-range NHS numbers that were not seeded, from the top of
//!   the range down (`fill` starts at the bottom);
//! - `create.json`, `batch-create.json`: the unseeded numbers below those, so writes never change
//!   what the hit searches return and never turn a miss into a hit.

use crate::domain::NhsNumber;
use crate::proto::nrl::v1 as pb;
use pb::pointer_registry_client::PointerRegistryClient;
use pb::record_locator_client::RecordLocatorClient;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

const FIRST_PREFIX: u64 = 999_000_000;
const LAST_PREFIX: u64 = 999_999_999;
const MAX_MESSAGE_BYTES: usize = crate::domain::limits::MAX_MESSAGE_BYTES;

/// Where the calls go and what they carry.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`.
    pub server: String,
    /// Bearer token (without `Bearer `), when the server runs with authentication.
    pub token: Option<String>,
    pub purpose: String,
}

#[derive(Clone)]
struct Credentials {
    authorization: Option<AsciiMetadataValue>,
    purpose: AsciiMetadataValue,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.authorization {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request.metadata_mut().insert(crate::auth::PURPOSE_HEADER, self.purpose.clone());
        Ok(request)
    }
}

type Connection = InterceptedService<Channel, Credentials>;

async fn connect(target: &Target) -> Result<Connection, String> {
    let endpoint = Endpoint::from_shared(target.server.clone())
        .map_err(|e| format!("--server {:?}: {e}", target.server))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", target.server))?;
    let credentials = Credentials {
        authorization: target
            .token
            .as_deref()
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| "--token must be printable ASCII".to_string())?,
        purpose: target.purpose.parse().map_err(|_| "--purpose must be printable ASCII".to_string())?,
    };
    Ok(InterceptedService::new(channel, credentials))
}

fn registry(connection: Connection) -> PointerRegistryClient<Connection> {
    PointerRegistryClient::new(connection)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The server's region codes and pointer type codes, sorted.
async fn directories(connection: &Connection) -> Result<(Vec<String>, Vec<String>), String> {
    let mut locator = RecordLocatorClient::new(connection.clone());
    let mut regions: Vec<String> = locator
        .list_regions(pb::ListRegionsRequest {})
        .await
        .map_err(|s| format!("ListRegions: {s}"))?
        .into_inner()
        .regions
        .into_iter()
        .map(|r| r.code)
        .collect();
    let mut types: Vec<String> = locator
        .list_pointer_types(pb::ListPointerTypesRequest {})
        .await
        .map_err(|s| format!("ListPointerTypes: {s}"))?
        .into_inner()
        .types
        .into_iter()
        .filter_map(|t| t.r#type.map(|c| c.code))
        .collect();
    regions.sort();
    types.sort();
    if regions.is_empty() || types.is_empty() {
        return Err("the server lists no regions or no pointer types".into());
    }
    Ok((regions, types))
}

/// Reads NHS numbers, one per line (blank lines and `#` comments skipped).
pub fn read_patients(path: &Path) -> Result<Vec<NhsNumber>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(i, line)| {
            NhsNumber::parse(line.trim()).map_err(|e| format!("{}:{}: {line:?}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// What `prepare` makes.
#[derive(Debug, Clone)]
pub struct PrepareArgs {
    pub target: Target,
    /// NHS numbers of the seeded patients, in seed order (`nrl seed --out`).
    pub patients_file: PathBuf,
    pub out_dir: PathBuf,
    /// Messages per file.
    pub count: usize,
    /// Custodian of created pointers (a producer token's `org` when auth is on).
    pub custodian: String,
    /// Pointers per BatchCreatePointers message, and how many such messages.
    pub batch_size: usize,
    pub batches: usize,
}

/// A pointer the way a producer would send it, as proto JSON. `reference` may hold template
/// actions (a fresh producer_reference per call).
fn pointer_json(
    nhs: NhsNumber,
    i: usize,
    regions: &[String],
    types: &[String],
    custodian: &str,
    reference: &str,
) -> Value {
    let region = &regions[(nhs.as_u64() as usize + i) % regions.len()];
    let pointer_type = &types[(nhs.as_u64() as usize / 7 + i) % types.len()];
    json!({
        "nhs_number": nhs.to_string(),
        "region": region,
        "custodian": custodian,
        "author": custodian,
        "type": pointer_type,
        "content": [{
            "url": format!("https://{}.records.example.nhs.uk/{}/DocumentReference/{nhs}-{i}",
                region.to_ascii_lowercase(), custodian.to_ascii_lowercase()),
            "content_type": "application/pdf",
            "format": "urn:nhs-ic:unstructured",
            "retrieval_mechanism": "RETRIEVAL_MECHANISM_SSP",
            "stability": "STABILITY_STATIC"
        }],
        "practice_setting": {"code": "394802001", "display": "General medicine"},
        "document_date": "2024-05-01T09:30:00Z",
        "producer_reference": reference
    })
}

/// Valid test-range NHS numbers not in `used`, from the top of the range down.
fn unused_numbers(used: &HashSet<NhsNumber>, count: usize) -> Vec<NhsNumber> {
    (FIRST_PREFIX..=LAST_PREFIX)
        .rev()
        .filter_map(NhsNumber::from_prefix)
        .filter(|n| !used.contains(n))
        .take(count)
        .collect()
}

fn write_json(dir: &Path, name: &str, value: &Value) -> Result<PathBuf, String> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Writes the data files; returns the paths written.
pub async fn prepare(args: &PrepareArgs) -> Result<Vec<PathBuf>, String> {
    let patients = read_patients(&args.patients_file)?;
    if patients.is_empty() {
        return Err(format!("{}: no NHS numbers", args.patients_file.display()));
    }
    std::fs::create_dir_all(&args.out_dir).map_err(|e| format!("{}: {e}", args.out_dir.display()))?;
    let connection = connect(&args.target).await?;
    let (regions, types) = directories(&connection).await?;
    let mut client = registry(connection);
    let count = args.count.max(1);

    let hit = &patients[..count.min(patients.len())];
    let mut get = Vec::new();
    for nhs in hit {
        let request = pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { nhs_number: nhs.to_string(), ..Default::default() }),
            page_size: 1,
            page_token: String::new(),
        };
        let page =
            client.search_pointers(request).await.map_err(|s| format!("SearchPointers for a seeded patient: {s}"))?;
        match page.into_inner().pointers.into_iter().next() {
            Some(pointer) => get.push(json!({"id": pointer.id})),
            None => {
                return Err("a patient from the patients file has no pointers: was it seeded on this server?".into())
            }
        }
    }
    // Misses, then the patients the writes go to, all from numbers that were not seeded: the
    // writes must not change what the hit searches find.
    let used: HashSet<NhsNumber> = patients.iter().copied().collect();
    let per_patient = 3;
    let batch_count = (args.batches * args.batch_size).div_ceil(per_patient).max(1);
    let unused = unused_numbers(&used, 2 * count + batch_count);
    if unused.len() < 2 * count + batch_count {
        return Err("the test range has too few unseeded NHS numbers left for misses and writes".into());
    }
    let (miss, rest) = unused.split_at(count);
    let (create_patients, batch_patients) = rest.split_at(count);

    let mut written = Vec::new();
    let query = |n: &NhsNumber| json!({"query": {"nhs_number": n.to_string()}});
    written.push(write_json(&args.out_dir, "search-hit.json", &Value::Array(hit.iter().map(query).collect()))?);
    written.push(write_json(&args.out_dir, "search-miss.json", &Value::Array(miss.iter().map(query).collect()))?);
    written.push(write_json(
        &args.out_dir,
        "locate.json",
        &Value::Array(hit.iter().map(|n| json!({"nhs_number": n.to_string()})).collect()),
    )?);
    written.push(write_json(&args.out_dir, "get.json", &Value::Array(get))?);
    written.push(write_json(
        &args.out_dir,
        "create.json",
        &Value::Array(
            create_patients
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let pointer = pointer_json(*n, i, &regions, &types, &args.custodian, "load-{{newUUID}}");
                    json!({ "pointer": pointer })
                })
                .collect(),
        ),
    )?);
    let batches: Vec<Value> = (0..args.batches)
        .map(|b| {
            let pointers: Vec<Value> = (0..args.batch_size)
                .map(|i| {
                    let at = b * args.batch_size + i;
                    let nhs = batch_patients[(at / per_patient) % batch_patients.len()];
                    pointer_json(nhs, at, &regions, &types, &args.custodian, &format!("load-{{{{.UUID}}}}-{i}"))
                })
                .collect();
            json!({ "pointers": pointers })
        })
        .collect();
    written.push(write_json(&args.out_dir, "batch-create.json", &Value::Array(batches))?);
    Ok(written)
}

/// What `fill` registers.
#[derive(Debug, Clone)]
pub struct FillArgs {
    pub target: Target,
    /// Stop after this many pointers.
    pub pointers: u64,
    pub per_patient: usize,
    /// NHS numbers to leave alone (the seeded patients, the miss list).
    pub exclude: Vec<PathBuf>,
    pub batch_size: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
    pub custodian: String,
}

/// How a fill went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FillSummary {
    pub patients: u64,
    pub pointers: u64,
    pub created: u64,
    pub existing: u64,
    pub failed: u64,
    pub seconds: f64,
    pub pointers_per_second: f64,
    pub first_error: Option<String>,
}

/// Registers `args.pointers` pointers, `per_patient` each, for test-range patients from the bottom
/// of the range up, skipping excluded ones. Idempotent: references are `fill-{NHS}-{i}`, so a
/// re-run reports them as existing.
pub async fn fill(args: &FillArgs) -> Result<FillSummary, String> {
    let mut excluded = HashSet::new();
    for path in &args.exclude {
        excluded.extend(read_patients(path)?);
    }
    let connection = connect(&args.target).await?;
    let (regions, types) = directories(&connection).await?;
    let client = registry(connection);
    let batch_size = args.batch_size.clamp(1, 1000);
    let per_patient = args.per_patient.max(1);
    let mut candidates =
        (FIRST_PREFIX..=LAST_PREFIX).filter_map(NhsNumber::from_prefix).filter(|n| !excluded.contains(n));

    let started = Instant::now();
    let mut summary = FillSummary {
        patients: 0,
        pointers: 0,
        created: 0,
        existing: 0,
        failed: 0,
        seconds: 0.0,
        pointers_per_second: 0.0,
        first_error: None,
    };
    let mut in_flight = tokio::task::JoinSet::new();
    let mut pending: Vec<pb::PointerInput> = Vec::with_capacity(batch_size);
    let mut exhausted = false;
    loop {
        // Fill one batch.
        while pending.len() < batch_size && summary.pointers < args.pointers && !exhausted {
            let Some(nhs) = candidates.next() else {
                exhausted = true;
                break;
            };
            summary.patients += 1;
            let take = (per_patient as u64).min(args.pointers - summary.pointers) as usize;
            for i in 0..take {
                pending.push(pointer_input(nhs, i, &regions, &types, &args.custodian));
            }
            summary.pointers += take as u64;
        }
        let done = pending.is_empty();
        if !done {
            // A patient's pointers may overfill the batch: the rest start the next one.
            let rest = pending.split_off(pending.len().min(batch_size));
            let batch = std::mem::replace(&mut pending, rest);
            let mut client = client.clone();
            in_flight.spawn(async move {
                let n = batch.len();
                (n, client.batch_create_pointers(pb::BatchCreatePointersRequest { pointers: batch }).await)
            });
        }
        while in_flight.len() >= args.concurrency.max(1) || (done && !in_flight.is_empty()) {
            let Some(joined) = in_flight.join_next().await else { break };
            let (n, result) = joined.map_err(|e| format!("a batch task failed: {e}"))?;
            match result {
                Ok(response) => {
                    for outcome in response.into_inner().outcomes {
                        match outcome.result {
                            Some(pb::batch_outcome::Result::Created(_)) => summary.created += 1,
                            Some(pb::batch_outcome::Result::Existing(_)) => summary.existing += 1,
                            Some(pb::batch_outcome::Result::Error(e)) => {
                                summary.failed += 1;
                                summary.first_error.get_or_insert(format!("{}: {}", e.field, e.message));
                            }
                            None => summary.failed += 1,
                        }
                    }
                }
                Err(status) => {
                    summary.failed += n as u64;
                    summary.first_error.get_or_insert(status.to_string());
                }
            }
        }
        if done {
            break;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.pointers_per_second =
        if summary.seconds > 0.0 { (summary.created + summary.existing) as f64 / summary.seconds } else { 0.0 };
    Ok(summary)
}

fn pointer_input(nhs: NhsNumber, i: usize, regions: &[String], types: &[String], custodian: &str) -> pb::PointerInput {
    let region = &regions[(nhs.as_u64() as usize + i) % regions.len()];
    let reference = format!("fill-{nhs}-{i}");
    pb::PointerInput {
        nhs_number: nhs.to_string(),
        region: region.clone(),
        custodian: custodian.to_string(),
        author: custodian.to_string(),
        r#type: types[(nhs.as_u64() as usize / 7 + i) % types.len()].clone(),
        category: String::new(),
        content: vec![pb::Content {
            url: format!(
                "https://{}.records.example.nhs.uk/{}/DocumentReference/{reference}",
                region.to_ascii_lowercase(),
                custodian.to_ascii_lowercase()
            ),
            content_type: "application/pdf".into(),
            format: "urn:nhs-ic:unstructured".into(),
            retrieval_mechanism: pb::RetrievalMechanism::Ssp as i32,
            stability: pb::Stability::Static as i32,
        }],
        practice_setting: Some(pb::Coding { code: "394802001".into(), display: "General medicine".into() }),
        document_date: Some(prost_types::Timestamp { seconds: 1_714_555_800, nanos: 0 }),
        producer_reference: reference,
        related_asid: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_numbers_are_valid_test_numbers_outside_the_used_set() {
        let top: Vec<NhsNumber> =
            (FIRST_PREFIX..=LAST_PREFIX).rev().filter_map(NhsNumber::from_prefix).take(3).collect();
        let used: HashSet<NhsNumber> = top[..2].iter().copied().collect();
        let unused = unused_numbers(&used, 2);
        assert_eq!(unused[0], top[2]);
        assert!(unused.iter().all(|n| n.is_test_number() && !used.contains(n)));
    }
}
