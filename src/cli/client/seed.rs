//! `nrl seed`: synthetic patients and pointers for demos and load tests.
//!
//! Everything is a pure function of `--seed` and the server's directories, so a re-run registers
//! nothing new (every entry comes back EXISTING) and load tests can rely on the `--out` list:
//! - patients walk the NHS test range (999 000 0000 to 999 999 9999) in a seed-dependent order
//!   that never repeats, so more patients with the same seed is a superset of fewer;
//! - a patient's pointers depend only on (seed, NHS number, pointer index), so raising
//!   `--pointers-per-patient` adds pointers and keeps the existing ones;
//! - each pointer's producer_reference includes the seed, so two seeds that pick the same patient
//!   never collide on (nhs_number, custodian, producer_reference) with different content.

use super::{code_name, connect, emit, emit_json, locator_client, note, registry_client, ClientError, ServerArgs};
use crate::domain::NhsNumber;
use crate::proto::nrl::v1 as pb;
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// Synthetic patients to register.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub patients: u32,
    /// Pointers registered for each patient.
    #[arg(long, value_name = "M", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pointers_per_patient: u32,
    /// Generator seed: the same seed gives the same patients and pointers.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Write the patients' NHS numbers here, one per line.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Pointers per BatchCreatePointers call (the server takes at most 1000).
    #[arg(long, value_name = "B", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How many failed entries are shown; the rest are only counted.
const ERRORS_SHOWN: usize = 5;

const FIRST_PREFIX: u64 = 999_000_000;
const PREFIXES: u64 = 1_000_000;

/// Trust-like and GP-practice-like ODS codes. Trusts hold most shared records.
const TRUSTS: &[&str] = &["RR8", "RP5", "RA7", "RJ1", "R0A", "RTH", "RW1", "RXH", "RYJ", "RJZ"];
const PRACTICES: &[&str] = &["Y05868", "B86010", "P84014", "M85063", "F85002", "A81001"];

/// Clinical settings (SNOMED CT) a record may come from.
const SETTINGS: &[(&str, &str)] = &[
    ("394814009", "General practice"),
    ("394802001", "General medicine"),
    ("394587001", "Psychiatry"),
    ("394537008", "Pediatric specialty"),
    ("394576009", "Accident & emergency"),
];

/// A plausible rendition: content type, format, retrieval mechanism, stability and the url path
/// style that goes with them.
struct Rendition {
    content_type: &'static str,
    format: &'static str,
    mechanism: pb::RetrievalMechanism,
    stability: pb::Stability,
    path: &'static str,
}

const RENDITIONS: &[Rendition] = &[
    Rendition {
        content_type: "application/pdf",
        format: "urn:nhs-ic:unstructured",
        mechanism: pb::RetrievalMechanism::Ssp,
        stability: pb::Stability::Static,
        path: "documents",
    },
    Rendition {
        content_type: "application/pdf",
        format: "urn:nhs-ic:unstructured",
        mechanism: pb::RetrievalMechanism::Direct,
        stability: pb::Stability::Static,
        path: "documents",
    },
    Rendition {
        content_type: "text/html",
        format: "urn:nhs-ic:unstructured",
        mechanism: pb::RetrievalMechanism::InContext,
        stability: pb::Stability::Dynamic,
        path: "view",
    },
    Rendition {
        content_type: "application/fhir+json",
        format: "urn:nhs-ic:structured",
        mechanism: pb::RetrievalMechanism::Ssp,
        stability: pb::Stability::Dynamic,
        path: "fhir/DocumentReference",
    },
    Rendition {
        content_type: "application/json",
        format: "urn:nhs-ic:record-contact",
        mechanism: pb::RetrievalMechanism::Direct,
        stability: pb::Stability::Static,
        path: "contact",
    },
];

/// Document dates fall in 2019-01-01 to 2025-12-31 (UTC).
const DATE_START: i64 = 1_546_300_800;
const DATE_SPAN_SECS: u64 = 7 * 365 * 86_400;

/// SplitMix64: tiny, fast and fully specified, so a seed means the same data in every build
/// (`rand`'s StdRng makes no such promise across versions).
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough below `n` for test data (the modulo bias is under 2^-40 here).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// An independent stream for a child of `parent` (a patient of a seed, a pointer of a patient).
fn derive(parent: u64, child: u64) -> u64 {
    SplitMix64::new(parent ^ child.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// What the seeded data is drawn from: the server's own directory and catalogue, sorted so the
/// order they are listed in does not matter.
pub struct SeedPlan {
    seed: u64,
    regions: Vec<String>,
    types: Vec<(pb::Coding, pb::Coding)>,
}

impl SeedPlan {
    pub fn new(seed: u64, mut regions: Vec<String>, mut types: Vec<(pb::Coding, pb::Coding)>) -> Option<Self> {
        regions.sort();
        regions.dedup();
        types.sort_by(|a, b| a.0.code.cmp(&b.0.code));
        (!regions.is_empty() && !types.is_empty()).then_some(Self { seed, regions, types })
    }

    /// Every valid NHS number of the test range, each once, in an order set by the seed. The
    /// stride is coprime to the range size, so the walk is a permutation of it.
    pub fn patients(&self) -> impl Iterator<Item = NhsNumber> {
        let mut rng = SplitMix64::new(self.seed);
        let offset = rng.next_u64() % PREFIXES;
        let mut stride = (rng.next_u64() % PREFIXES) | 1;
        while stride.is_multiple_of(5) {
            stride += 2;
        }
        (0..PREFIXES).filter_map(move |i| NhsNumber::from_prefix(FIRST_PREFIX + (offset + i * stride) % PREFIXES))
    }

    /// The first `count` pointers of a patient, spread over 1 to 3 regions.
    pub fn pointers(&self, nhs_number: NhsNumber, count: usize) -> Vec<pb::PointerInput> {
        let patient = derive(self.seed, nhs_number.as_u64());
        let mut rng = SplitMix64::new(patient);
        let region_count = (1 + rng.below(3)).min(self.regions.len());
        let mut order: Vec<usize> = (0..self.regions.len()).collect();
        for i in 0..region_count {
            let j = i + rng.below(order.len() - i);
            order.swap(i, j);
        }
        let home: Vec<&str> = order[..region_count].iter().map(|&i| self.regions[i].as_str()).collect();
        (0..count).map(|j| self.pointer(nhs_number, patient, j, home[j % home.len()])).collect()
    }

    fn pointer(&self, nhs_number: NhsNumber, patient: u64, index: usize, region: &str) -> pb::PointerInput {
        let mut rng = SplitMix64::new(derive(patient, index as u64));
        let (ty, category) = &self.types[rng.below(self.types.len())];
        let custodian =
            if rng.below(10) < 7 { TRUSTS[rng.below(TRUSTS.len())] } else { PRACTICES[rng.below(PRACTICES.len())] };
        let author = match rng.below(3) {
            0 => "",
            1 => custodian,
            _ => PRACTICES[rng.below(PRACTICES.len())],
        };
        let reference = format!("nrl-seed-{}-{nhs_number}-{index}", self.seed);
        let host = format!(
            "https://{}.records.example.nhs.uk/{}",
            region.to_ascii_lowercase(),
            custodian.to_ascii_lowercase()
        );
        let rendition = &RENDITIONS[rng.below(RENDITIONS.len())];
        let mut renditions = vec![content(&host, rendition, &reference)];
        // Some records also offer a structured rendition next to the document.
        if rendition.format == "urn:nhs-ic:unstructured" && rng.below(4) == 0 {
            renditions.push(content(&host, &RENDITIONS[3], &reference));
        }
        let (setting_code, setting_display) = SETTINGS[rng.below(SETTINGS.len())];
        let date = DATE_START + (rng.next_u64() % DATE_SPAN_SECS) as i64;
        pb::PointerInput {
            nhs_number: nhs_number.to_string(),
            region: region.to_string(),
            custodian: custodian.to_string(),
            author: author.to_string(),
            r#type: ty.code.clone(),
            category: category.code.clone(),
            content: renditions,
            practice_setting: Some(pb::Coding { code: setting_code.to_string(), display: setting_display.to_string() }),
            document_date: Some(prost_types::Timestamp { seconds: date, nanos: 0 }),
            producer_reference: reference,
            related_asid: String::new(),
        }
    }
}

fn content(host: &str, rendition: &Rendition, reference: &str) -> pb::Content {
    pb::Content {
        url: format!("{host}/{}/{reference}", rendition.path),
        content_type: rendition.content_type.to_string(),
        format: rendition.format.to_string(),
        retrieval_mechanism: rendition.mechanism as i32,
        stability: rendition.stability as i32,
    }
}

#[derive(Default)]
struct Tally {
    created: u64,
    existing: u64,
    failed: u64,
    /// The first few failures, ready to print.
    errors: Vec<String>,
}

impl Tally {
    fn fail(&mut self, text: String) {
        self.failed += 1;
        if self.errors.len() < ERRORS_SHOWN {
            self.errors.push(text);
        }
    }

    /// Tallies one batch's outcomes. `first` is the position of the batch's first entry in the
    /// whole run and `owner` names the patient of an entry by that position.
    fn record(
        &mut self,
        first: u64,
        entries: usize,
        outcomes: Vec<pb::BatchOutcome>,
        owner: impl Fn(u64) -> Option<NhsNumber>,
    ) {
        let answered = outcomes.len();
        for outcome in outcomes {
            let at = first + u64::from(outcome.index);
            let patient = owner(at).map_or_else(|| "?".to_string(), |n| n.to_string());
            match outcome.result {
                Some(pb::batch_outcome::Result::Created(_)) => self.created += 1,
                Some(pb::batch_outcome::Result::Existing(_)) => self.existing += 1,
                Some(pb::batch_outcome::Result::Error(e)) => {
                    let field = if e.field.is_empty() { String::new() } else { format!(" {}", e.field) };
                    self.fail(format!(
                        "entry {at} (patient {patient}){field}: {}: {}",
                        code_name(tonic::Code::from(e.code)),
                        e.message
                    ));
                }
                None => self.fail(format!("entry {at} (patient {patient}): the server gave no result")),
            }
        }
        // The contract promises one outcome per entry; count any it skipped as failures.
        for missing in answered..entries {
            self.fail(format!("entry {}: no outcome in the response", first + missing as u64));
        }
    }
}

pub async fn run(args: SeedArgs) -> Result<(), ClientError> {
    // Open the output file first: finding it unwritable after a long run would waste the run.
    let mut out = match &args.out {
        Some(path) => Some(BufWriter::new(
            std::fs::File::create(path).map_err(|e| ClientError::Usage(format!("--out {}: {e}", path.display())))?,
        )),
        None => None,
    };
    let channel = connect(&args.server).await?;
    let mut locator = locator_client(channel.clone());
    let regions = locator
        .list_regions(pb::ListRegionsRequest {})
        .await?
        .into_inner()
        .regions
        .into_iter()
        .map(|r| r.code)
        .collect();
    let types = locator
        .list_pointer_types(pb::ListPointerTypesRequest {})
        .await?
        .into_inner()
        .types
        .into_iter()
        .filter_map(|t| Some((t.r#type?, t.category?)))
        .collect();
    let plan = SeedPlan::new(args.seed, regions, types)
        .ok_or_else(|| ClientError::Incomplete("the server lists no regions or no pointer types".into()))?;

    let wanted = args.patients as usize;
    let patients: Vec<NhsNumber> = plan.patients().take(wanted).collect();
    if patients.len() < wanted {
        return Err(ClientError::Usage(format!(
            "--patients {wanted}: the test range holds only {} valid NHS numbers",
            patients.len()
        )));
    }

    let mut registry = registry_client(channel);
    let batch_size = args.batch_size as usize;
    let per_patient = args.pointers_per_patient as usize;
    let mut tally = Tally::default();
    let mut batch = Vec::with_capacity(batch_size);
    let mut sent = 0u64;
    let started = Instant::now();
    for (i, nhs_number) in patients.iter().enumerate() {
        batch.extend(plan.pointers(*nhs_number, per_patient));
        let last = i + 1 == patients.len();
        while batch.len() >= batch_size || (last && !batch.is_empty()) {
            let take = batch.len().min(batch_size);
            let chunk: Vec<pb::PointerInput> = batch.drain(..take).collect();
            let response = registry
                .batch_create_pointers(pb::BatchCreatePointersRequest { pointers: chunk })
                .await
                .map_err(|status| {
                    note(&format!(
                        "nrl seed: stopped after {sent} pointers ({} created, {} existing, {} failed)",
                        tally.created, tally.existing, tally.failed
                    ));
                    ClientError::Rpc(status)
                })?;
            // Pointers go out in patient order, per_patient each, so a position names its patient.
            tally.record(sent, take, response.into_inner().outcomes, |at| {
                patients.get(usize::try_from(at).ok()? / per_patient).copied()
            });
            sent += take as u64;
        }
    }
    let elapsed = started.elapsed();

    if let (Some(writer), Some(path)) = (out.as_mut(), &args.out) {
        let written = patients.iter().try_for_each(|n| writeln!(writer, "{n}")).and_then(|()| writer.flush());
        written.map_err(|e| ClientError::Incomplete(format!("cannot write --out {}: {e}", path.display())))?;
    }

    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { sent as f64 / secs } else { 0.0 };
    if args.server.json {
        emit_json(&json!({
            "patients": patients.len(),
            "pointers": sent,
            "created": tally.created,
            "existing": tally.existing,
            "failed": tally.failed,
            "elapsed_ms": secs * 1000.0,
            "pointers_per_second": rate,
            "errors": tally.errors,
        }))?;
    } else {
        let mut text = format!(
            "seeded {} patients, {sent} pointers: {} created, {} existing, {} failed in {secs:.2} s ({rate:.0} pointers/s)\n",
            patients.len(),
            tally.created,
            tally.existing,
            tally.failed
        );
        if let Some(path) = &args.out {
            text += &format!("wrote {} NHS numbers to {}\n", patients.len(), path.display());
        }
        emit(&text)?;
    }
    if tally.failed == 0 {
        return Ok(());
    }
    for error in &tally.errors {
        note(&format!("  {error}"));
    }
    Err(ClientError::Incomplete(format!(
        "{} of {sent} pointers failed (first {} shown above)",
        tally.failed,
        tally.errors.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PointerTypeCatalogue, RegionDirectory};
    use std::collections::BTreeSet;

    fn plan(seed: u64) -> SeedPlan {
        let regions = RegionDirectory::default_directory().regions().map(|r| r.code.to_string()).collect();
        let types = PointerTypeCatalogue::default_catalogue()
            .types()
            .map(|t| {
                let coding =
                    |c: &crate::domain::Coding| pb::Coding { code: c.code.clone(), display: c.display.clone() };
                (coding(&t.coding), coding(&t.category))
            })
            .collect();
        SeedPlan::new(seed, regions, types).expect("built-in directories are not empty")
    }

    #[test]
    fn patients_are_distinct_valid_test_numbers_fixed_by_the_seed() {
        let first: Vec<NhsNumber> = plan(1).patients().take(2000).collect();
        assert_eq!(first.len(), 2000);
        assert!(first.iter().all(|n| n.is_test_number()));
        assert!(first.iter().all(|n| NhsNumber::parse(&n.to_string()) == Ok(*n)));
        assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 2000);
        let again: Vec<NhsNumber> = plan(1).patients().take(2000).collect();
        assert_eq!(first, again);
        let other: Vec<NhsNumber> = plan(2).patients().take(2000).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn the_walk_covers_the_whole_test_range_once() {
        let all: BTreeSet<u64> = plan(7).patients().map(NhsNumber::as_u64).collect();
        let valid = (FIRST_PREFIX..FIRST_PREFIX + PREFIXES).filter(|p| NhsNumber::from_prefix(*p).is_some()).count();
        assert_eq!(all.len(), valid);
    }

    #[test]
    fn pointers_depend_only_on_seed_patient_and_index() {
        let p = plan(1);
        let patient = p.patients().next().expect("a patient");
        let three = p.pointers(patient, 3);
        let five = p.pointers(patient, 5);
        assert_eq!(three, five[..3]);
        assert_eq!(three, plan(1).pointers(patient, 3));
        let refs: BTreeSet<&str> = five.iter().map(|x| x.producer_reference.as_str()).collect();
        assert_eq!(refs.len(), 5, "producer references are unique");
        assert_ne!(plan(2).pointers(patient, 3), three);
    }

    #[test]
    fn patients_span_one_to_three_regions_and_content_is_https() {
        let p = plan(3);
        let mut spans = BTreeSet::new();
        for patient in p.patients().take(200) {
            let pointers = p.pointers(patient, 6);
            let regions: BTreeSet<&str> = pointers.iter().map(|x| x.region.as_str()).collect();
            spans.insert(regions.len());
            for pointer in &pointers {
                assert!(!pointer.content.is_empty());
                for c in &pointer.content {
                    assert!(c.url.starts_with(&format!(
                        "https://{}.records.example.nhs.uk/",
                        pointer.region.to_ascii_lowercase()
                    )));
                }
            }
        }
        assert_eq!(spans, BTreeSet::from([1, 2, 3]));
    }
}
