//! FederatedSearch over three nodes on loopback: a national node (`--federation national`) and two
//! regional nodes, each a real release `nrl serve` process on the memory store, and a patient with
//! pointers in both regions. Latency of N sequential calls (`NRL_BENCH_CALLS`, 2000) and of
//! `NRL_BENCH_CONCURRENT_CALLS` (10,000) calls from `NRL_BENCH_CONCURRENCY` (16) concurrent
//! workers, beside a same-run baseline of a plain SearchPointers against one regional node (the
//! cost of one regional hop), and LocatePatient on the national node (its index).
//!
//! ```sh
//! cargo build --release && NRL_BIN=target/release/nrl cargo bench --bench federation
//! NRL_BENCH_CALLS=5000 NRL_BENCH_CONCURRENCY=32 cargo bench --bench federation
//! ```
//!
//! Without `NRL_BIN` it runs the `nrl` Cargo builds for the bench (the release profile). One
//! HTTP/2 connection per node from the client (as a proxy would hold), every call checked: a
//! FederatedSearch counts as an error unless it is SUCCESS with every pointer of both regions.
//! The client, the three servers and their peer calls share the machine, so on a small machine
//! the figures include CPU contention between them. `cargo test --benches` runs it with 50 calls
//! as a smoke test. Prints a Markdown block for loadtest/RESULTS.md.

use hdrhistogram::Histogram;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::federated_locator_client::FederatedLocatorClient;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::nodes::{self, Federation, FederationPlan};
use tonic::transport::Channel;

const A: &str = "QWO";
const B: &str = "QF7";
/// Pointers of the patient in each region.
const PER_REGION: usize = 3;
const TYPES: [&str; 3] = ["736253002", "1363501000000100", "887701000000100"];
const PATIENT: &str = "9434765919";
const GOAL_P99_MS: f64 = 10.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn pointer(region: &str, ty: &str, i: usize) -> pb::PointerInput {
    pb::PointerInput {
        nhs_number: PATIENT.into(),
        region: region.into(),
        custodian: "RR8".into(),
        r#type: ty.into(),
        content: vec![pb::Content {
            url: format!("https://{}.records.example.nhs.uk/DocumentReference/bench-{i}", region.to_lowercase()),
            content_type: "application/pdf".into(),
            format: "urn:nhs-ic:unstructured".into(),
            retrieval_mechanism: pb::RetrievalMechanism::Ssp as i32,
            stability: pb::Stability::Static as i32,
        }],
        producer_reference: format!("bench-{region}-{i}"),
        ..Default::default()
    }
}

fn query() -> pb::PointerQuery {
    pb::PointerQuery { nhs_number: PATIENT.into(), ..Default::default() }
}

/// Latencies of one scenario.
struct Run {
    name: String,
    concurrency: usize,
    histogram: Histogram<u64>,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
}

impl Run {
    fn ms(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            self.name,
            self.histogram.len(),
            self.concurrency,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.histogram.max() as f64 / 1000.0,
            self.histogram.len() as f64 / self.wall.as_secs_f64(),
            self.errors
        )
    }
}

/// `calls` calls of `one`, spread over `concurrency` workers; each call's latency in µs.
async fn measure<F, Fut>(name: &str, calls: usize, concurrency: usize, one: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let one = Arc::new(one);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let one = one.clone();
            let share = calls / concurrency + usize::from(w < calls % concurrency);
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let (mut errors, mut first_error) = (0, None);
                for _ in 0..share {
                    let t = Instant::now();
                    let result = one().await;
                    histogram.record(t.elapsed().as_micros().max(1) as u64).expect("record");
                    if let Err(e) = result {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                (histogram, errors, first_error)
            })
        })
        .collect();
    let mut run = Run {
        name: name.to_string(),
        concurrency,
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
    };
    for worker in workers {
        let (histogram, errors, first_error) = worker.await.expect("worker");
        run.histogram.add(histogram).expect("merge");
        run.errors += errors;
        if run.first_error.is_none() {
            run.first_error = first_error;
        }
    }
    run.wall = started.elapsed();
    run
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}); load average at start {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

async fn bench(quick: bool) {
    let calls = env_usize("NRL_BENCH_CALLS", if quick { 50 } else { 2000 });
    let concurrency = env_usize("NRL_BENCH_CONCURRENCY", 16).max(1);
    let concurrent_calls = env_usize("NRL_BENCH_CONCURRENT_CALLS", if quick { 50 } else { 10_000 });
    let warmup = env_usize("NRL_BENCH_WARMUP", if quick { 10 } else { 300 });
    let machine = machine();
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let channel = |node: &nodes::NrlNode| -> Channel { node.channel() };
    let mut regional_a = PointerRegistryClient::new(channel(federation.node(A)));
    let mut regional_b = PointerRegistryClient::new(channel(federation.node(B)));
    for i in 0..PER_REGION {
        for (client, region) in [(&mut regional_a, A), (&mut regional_b, B)] {
            let request = pb::CreatePointerRequest { pointer: Some(pointer(region, TYPES[i % TYPES.len()], i)) };
            client.create_pointer(request).await.unwrap_or_else(|s| panic!("seed {region}: {s:?}"));
        }
    }
    let national = channel(&federation.national);
    // Wait until the national index has both regions.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = RecordLocatorClient::new(national.clone())
            .locate_patient(pb::LocatePatientRequest { nhs_number: PATIENT.into() })
            .await
            .map(|r| r.into_inner().regions.iter().map(|r| r.total).sum::<u32>());
        if answer.as_ref().ok() == Some(&((2 * PER_REGION) as u32)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the national index did not show both regions within 10 s: {answer:?}\n{}",
            federation.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let federated = {
        let client = FederatedLocatorClient::new(national.clone());
        move || {
            let mut client = client.clone();
            async move {
                let request =
                    pb::FederatedSearchRequest { query: Some(query()), target_regions: vec![], deadline_ms: 2000 };
                let answer = client
                    .federated_search(request)
                    .await
                    .map_err(|s| format!("{:?} {}", s.code(), s.message()))?
                    .into_inner();
                if answer.overall != pb::OverallOutcome::Success as i32 || answer.pointers.len() != 2 * PER_REGION {
                    return Err(format!(
                        "overall {} with {} pointers: {:?}",
                        answer.overall,
                        answer.pointers.len(),
                        answer.regions
                    ));
                }
                Ok(())
            }
        }
    };
    let baseline = {
        let client = regional_a.clone();
        move || {
            let mut client = client.clone();
            async move {
                let request =
                    pb::SearchPointersRequest { query: Some(query()), page_size: 500, page_token: String::new() };
                let answer = client
                    .search_pointers(request)
                    .await
                    .map_err(|s| format!("{:?} {}", s.code(), s.message()))?
                    .into_inner();
                if answer.pointers.len() != PER_REGION {
                    return Err(format!("{} pointers", answer.pointers.len()));
                }
                Ok(())
            }
        }
    };
    let locate = {
        let client = RecordLocatorClient::new(national.clone());
        move || {
            let mut client = client.clone();
            async move {
                let request = pb::LocatePatientRequest { nhs_number: PATIENT.into() };
                let answer = client
                    .locate_patient(request)
                    .await
                    .map_err(|s| format!("{:?} {}", s.code(), s.message()))?
                    .into_inner();
                if answer.regions.len() != 2 {
                    return Err(format!("{} regions", answer.regions.len()));
                }
                Ok(())
            }
        }
    };

    // Warm up every path (connections, peer channels, allocator).
    measure("warm-up", warmup, 4, federated.clone()).await;
    measure("warm-up", warmup, 4, baseline.clone()).await;
    measure("warm-up", warmup, 4, locate.clone()).await;

    let runs = vec![
        measure("SearchPointers, one regional node (baseline)", calls, 1, baseline.clone()).await,
        measure("FederatedSearch, national → 2 regional nodes", calls, 1, federated.clone()).await,
        measure("LocatePatient, national index", calls, 1, locate.clone()).await,
        measure("SearchPointers, one regional node (baseline)", concurrent_calls, concurrency, baseline).await,
        measure("FederatedSearch, national → 2 regional nodes", concurrent_calls, concurrency, federated).await,
        measure("LocatePatient, national index", concurrent_calls, concurrency, locate).await,
    ];

    let bin = std::env::var("NRL_BIN").map(|b| format!("NRL_BIN={b} ")).unwrap_or_default();
    let command = format!(
        "{bin}CARGO_TARGET_DIR={} NRL_BENCH_CALLS={calls} NRL_BENCH_CONCURRENT_CALLS={concurrent_calls} \
         NRL_BENCH_CONCURRENCY={concurrency} cargo bench --bench federation",
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())
    );
    println!("\n## FederatedSearch over 3 nodes on loopback\n");
    if quick {
        println!("(A smoke run under `cargo test`: few calls, maybe a debug build. Not a measurement.)\n");
    }
    println!("`{command}`\n");
    println!(
        "Three release `nrl serve` processes on 127.0.0.1 (national `--federation national`, regional \
         `--node-regions {A}` and `--node-regions {B}`, memory store, authentication off), one patient with \
         {PER_REGION} pointers in each region; the client holds one HTTP/2 connection per node. Every \
         FederatedSearch is checked (SUCCESS, all {} pointers). Server: `{}`. Machine: {machine}.\n",
        2 * PER_REGION,
        nodes::nrl_bin().display()
    );
    println!("| call | calls | concurrency | p50 ms | p90 ms | p99 ms | max ms | calls/s | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for run in &runs {
        println!("{}", run.row());
    }
    for run in runs.iter().filter(|r| r.errors > 0) {
        println!(
            "\n{} (concurrency {}): first error: {}",
            run.name,
            run.concurrency,
            run.first_error.as_deref().unwrap_or("")
        );
    }
    for run in runs.iter().filter(|r| r.name.starts_with("FederatedSearch")) {
        let p99 = run.ms(0.99);
        println!(
            "\nFederatedSearch at concurrency {}: p99 {p99:.2} ms, goal ≤ {GOAL_P99_MS} ms: {}",
            run.concurrency,
            if p99 <= GOAL_P99_MS { "met" } else { "NOT met" }
        );
    }
    drop(federation);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(bench(quick));
}
