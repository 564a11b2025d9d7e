//! Redis store benchmark: bulk registration throughput, Redis memory per pointer, and search rate,
//! each beside a baseline measured in the same run.
//!
//! ```sh
//! cargo bench --bench redis_store                          # 1,000,000 pointers
//! NRL_BENCH_POINTERS=200000 cargo bench --bench redis_store
//! NRL_BENCH_REDIS_ARGS="--hash-max-listpack-value 64" cargo bench --bench redis_store  # Redis's default
//! ```
//!
//! By default redis-server gets the settings README's Redis section asks for
//! (`--hash-max-listpack-value 512 --hash-max-listpack-entries 256`); `NRL_BENCH_REDIS_ARGS`
//! replaces them.
//!
//! It starts a private `redis-server` (no persistence, so the figures are Redis's own limits) and
//! drives the real `Registry` over the real `RedisStore`: one client, batches of 1000 with 4 in flight, 3 pointers
//! per patient, every pointer with a producer_reference (as bulk extracts have). gRPC is not in
//! the loop here; `loadtest/` covers the service end to end.

use chrono::{TimeZone, Utc};
use nrl_registry::auth::Caller;
use nrl_registry::clock::SystemClock;
use nrl_registry::domain::query::{PageRequest, PointerQuery};
use nrl_registry::domain::ReferenceData;
use nrl_registry::domain::{
    Content, ContentFormat, ContentType, ContentUrl, NhsNumber, OdsCode, PointerDraft, ProducerReference,
    RetrievalMechanism, Stability,
};
use nrl_registry::registry::Registry;
use nrl_registry::store::memory::MemoryStore;
use nrl_registry::store::redis::{RedisConfig, RedisStore};
use nrl_registry::store::PointerStore;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use testkit::redis::{RedisOptions, RedisServer};

const BATCH: usize = 1000;
/// Batches in flight at once from the one client.
const IN_FLIGHT: usize = 4;
/// The settings README's Redis section asks for.
const RECOMMENDED_REDIS_ARGS: &str = "--hash-max-listpack-value 512 --hash-max-listpack-entries 256";
const PER_PATIENT: usize = 3;
const SEARCH_CONCURRENCY: usize = 32;
const SEARCH_SECONDS: u64 = 5;
/// Patients whose keys are measured one by one with MEMORY USAGE.
const SAMPLE_PATIENTS: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// The i-th valid NHS number of the synthetic test range.
fn patient(i: usize) -> NhsNumber {
    static PATIENTS: OnceLock<Vec<NhsNumber>> = OnceLock::new();
    let all = PATIENTS.get_or_init(|| {
        let wanted = env_usize("NRL_BENCH_POINTERS", 1_000_000) / PER_PATIENT + 1;
        (999_000_000u64..=999_999_999).filter_map(NhsNumber::from_prefix).take(wanted).collect()
    });
    all[i % all.len()]
}

fn drafts(reference: &ReferenceData, patients: std::ops::Range<usize>) -> Vec<PointerDraft> {
    let regions: Vec<_> = reference.regions.regions().map(|r| r.code.clone()).collect();
    let types: Vec<_> = reference.pointer_types.types().cloned().collect();
    let custodians = ["RR8", "RP5", "RA7", "RJ1", "R0A", "RTH", "RW1", "Y05868"];
    let mut out = Vec::with_capacity(patients.len() * PER_PATIENT);
    for p in patients {
        let nhs = patient(p);
        for j in 0..PER_PATIENT {
            let region = regions[(p + j) % regions.len()].clone();
            let custodian = custodians[(p * 7 + j) % custodians.len()];
            let reference = format!("bench-{nhs}-{j}");
            out.push(PointerDraft {
                nhs_number: nhs,
                region: region.clone(),
                custodian: OdsCode::parse(custodian).expect("valid ODS"),
                author: None,
                pointer_type: types[(p + j * 5) % types.len()].clone(),
                content: vec![Content {
                    url: ContentUrl::parse(&format!(
                        "https://{}.records.example.nhs.uk/{}/DocumentReference/{reference}",
                        region.as_str().to_lowercase(),
                        custodian.to_lowercase()
                    ))
                    .expect("valid url"),
                    content_type: ContentType::Pdf,
                    format: ContentFormat::Unstructured,
                    retrieval_mechanism: RetrievalMechanism::Ssp,
                    stability: Stability::Static,
                }],
                practice_setting: None,
                document_date: Utc.timestamp_opt(1_700_000_000 + p as i64, 0).single(),
                producer_reference: ProducerReference::parse(&reference).ok(),
                related_asid: None,
            });
        }
    }
    out
}

fn info_field(server: &RedisServer, section: &str, field: &str) -> u64 {
    server
        .cli(&["INFO", section])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// `MEMORY USAGE key SAMPLES 0` (exact) of each key, through one redis-cli process; 0 for a
/// missing key.
fn memory_usage(port: u16, keys: &[String]) -> Vec<u64> {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli (from redis-tools) runs");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for key in keys {
            writeln!(stdin, "MEMORY USAGE {key} SAMPLES 0").expect("write to redis-cli");
        }
    }
    let output = child.wait_with_output().expect("redis-cli finishes");
    String::from_utf8_lossy(&output.stdout).lines().map(|l| l.trim().parse().unwrap_or(0)).collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Loads `pointers` in batches of `BATCH`, `IN_FLIGHT` batches at a time over the one client
/// connection (as a bulk loader pipelines its calls); returns (overall pointers/s, median batch
/// latency in ms).
async fn load(registry: &Registry, reference: &ReferenceData, pointers: usize) -> (f64, f64) {
    use futures::StreamExt;
    let patients = pointers / PER_PATIENT;
    let per_batch = BATCH / PER_PATIENT;
    let started = Instant::now();
    let batches = (0..patients).step_by(per_batch).map(|first| first..(first + per_batch).min(patients));
    let mut latencies: Vec<f64> = futures::stream::iter(batches)
        .map(|range| async move {
            let batch = drafts(reference, range).into_iter().map(Ok).collect::<Vec<_>>();
            let t = Instant::now();
            let results = registry.create_batch(&Caller::local_developer(), batch).await;
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                panic!("batch entry failed: {e}");
            }
            t.elapsed().as_secs_f64() * 1000.0
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    ((patients * PER_PATIENT) as f64 / started.elapsed().as_secs_f64(), median(&mut latencies))
}

/// Searches random patients from `SEARCH_CONCURRENCY` tasks for a few seconds; returns ops/s.
async fn search_rate(registry: &Registry, patients: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(SEARCH_SECONDS);
    let started = Instant::now();
    let tasks = (0..SEARCH_CONCURRENCY).map(|t| {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            let mut i = t * 7919;
            while Instant::now() < deadline {
                i = (i * 48271 + 11) % patients.max(1);
                let query = PointerQuery::for_patient(patient(i));
                let page = registry
                    .search(&Caller::local_developer(), &query, PageRequest { size: 50, after: None })
                    .await
                    .expect("search");
                assert_eq!(page.pointers.len(), PER_PATIENT);
                done += 1;
            }
            done
        })
    });
    let mut total = 0;
    for task in futures::future::join_all(tasks).await {
        total += task.expect("search task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn redis_benchmark(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", port.as_str(), "-q"])
        .args(args)
        .output()
        .expect("redis-benchmark (from redis-tools) runs");
    // -q prints "SET: 123456.79 requests per second, p50=0.2 msec" with carriage returns.
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    text.rsplit('\r').next().unwrap_or(&text).trim().to_string()
}

fn main() {
    let pointers = env_usize("NRL_BENCH_POINTERS", 1_000_000);
    let extra: Vec<String> = std::env::var("NRL_BENCH_REDIS_ARGS")
        .unwrap_or_else(|_| RECOMMENDED_REDIS_ARGS.into())
        .split_whitespace()
        .map(String::from)
        .collect();
    let server = RedisServer::start(RedisOptions { extra_args: extra.clone(), ..RedisOptions::default() });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let reference = Arc::new(ReferenceData::default());

    println!("# nrl-registry Redis store benchmark");
    println!("pointers: {pointers} ({PER_PATIENT} per patient, batches of {BATCH}); redis args: {extra:?}");
    println!(
        "redis: {}",
        server.cli(&["INFO", "server"]).lines().find(|l| l.starts_with("redis_version")).unwrap_or("")
    );

    println!("\n## Baseline: redis-benchmark on the same server");
    println!(
        "SET, 1 client, pipeline 1000:  {}",
        redis_benchmark(server.port(), &["-t", "set", "-n", "500000", "-c", "1", "-P", "1000"])
    );
    // The closest raw-Redis equivalent of a bulk load: one client pipelining a script that
    // writes two hash fields of one key per call.
    let sha = server.cli(&[
        "SCRIPT",
        "LOAD",
        "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); redis.call('HSET', KEYS[1], ARGV[3], ARGV[1]); return 1",
    ]);
    println!(
        "EVALSHA of a 2-HSET script, 1 client, pipeline 1000: {}",
        redis_benchmark(
            server.port(),
            &[
                "-n",
                "500000",
                "-c",
                "1",
                "-P",
                "1000",
                "-r",
                "1000000",
                "EVALSHA",
                sha.as_str(),
                "1",
                "b:{__rand_int__}:p",
                "__rand_int__",
                "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
                "r|RR8|__rand_int__",
            ]
        )
    );
    server.cli(&["FLUSHALL"]);

    runtime.block_on(async {
        let mut config = RedisConfig::parse(&server.url()).expect("url");
        config.timeout = Duration::from_secs(5);
        let store = RedisStore::connect(&config, Arc::new(reference.pointer_types.clone())).await.expect("connect");
        let store = Arc::new(store);
        let redis_store: Arc<dyn PointerStore> = store.clone();
        let registry = Registry::new(redis_store, store, reference.clone(), Arc::new(SystemClock));

        server.cli(&["CONFIG", "RESETSTAT"]);
        let before = info_field(&server, "memory", "used_memory");
        let (overall, batch_ms) = load(&registry, &reference, pointers).await;
        let after = info_field(&server, "memory", "used_memory");
        let keys = server.cli(&["DBSIZE"]);
        println!(
            "\n## Bulk registration into Redis (Registry::create_batch, one client, {IN_FLIGHT} batches in flight)"
        );
        println!("pointers/s overall: {overall:.0} (goal >= 50000); median batch of {BATCH}: {batch_ms:.1} ms");
        // Where Redis spent its time during the load (the scripts' own calls are counted inside
        // their EVALSHA too).
        let stats = server.cli(&["INFO", "commandstats"]);
        let wanted = ["evalsha", "xadd", "hset", "hexists", "rpush"];
        let spent: Vec<String> = stats
            .lines()
            .filter_map(|l| {
                let (name, fields) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                wanted.contains(&name).then(|| {
                    let field =
                        |key: &str| fields.split(',').find_map(|f| f.strip_prefix(key)).unwrap_or("?").to_string();
                    format!("{name} calls={} usec={}", field("calls="), field("usec="))
                })
            })
            .collect();
        println!("redis time: {}", spent.join("; "));
        println!("\n## Redis memory (INFO memory used_memory, after - before)");
        println!(
            "{} bytes over {pointers} pointers in {keys} keys: {:.1} bytes/pointer, everything written",
            after - before,
            (after - before) as f64 / pointers as f64
        );
        // What those bytes are: the patients' pointer hashes (the goal), and what every write also
        // appends: the change feed and the audit (per patient log and the export stream).
        let sample: Vec<NhsNumber> =
            (0..SAMPLE_PATIENTS).map(|i| patient(i * (pointers / PER_PATIENT) / SAMPLE_PATIENTS)).collect();
        let per_patient = |key: fn(NhsNumber) -> String| {
            let keys: Vec<String> = sample.iter().map(|n| key(*n)).collect();
            let total: u64 = memory_usage(server.port(), &keys).iter().sum();
            total as f64 / (SAMPLE_PATIENTS * PER_PATIENT) as f64
        };
        let hash = per_patient(|n| format!("nrl:{{{n}}}:p"));
        let audit = per_patient(|n| format!("nrl:{{{n}}}:a"));
        let global = |key: &str| {
            memory_usage(server.port(), &[key.to_string()]).first().copied().unwrap_or(0) as f64 / pointers as f64
        };
        let (export, feed) = (global("nrl:audit"), global("nrl:feed"));
        println!(
            "per pointer (MEMORY USAGE, {SAMPLE_PATIENTS} patients sampled): pointer hash {hash:.1} B (goal <= 300); \
             patient audit log {audit:.1} B; audit export stream {export:.1} B; change feed {feed:.1} B"
        );

        let patients = pointers / PER_PATIENT;
        let redis_rate = search_rate(&registry, patients).await;

        let memory = Arc::new(MemoryStore::new());
        let memory_store: Arc<dyn PointerStore> = memory.clone();
        let memory_registry = Registry::new(memory_store, memory, reference.clone(), Arc::new(SystemClock));
        let (memory_load, _) = load(&memory_registry, &reference, pointers).await;
        let memory_rate = search_rate(&memory_registry, patients).await;
        println!("\n## Search (Registry::search, {SEARCH_CONCURRENCY} concurrent tasks, {SEARCH_SECONDS} s, no gRPC)");
        println!(
            "redis: {redis_rate:.0} searches/s; memory: {memory_rate:.0} searches/s; ratio {:.2}",
            redis_rate / memory_rate
        );
        println!("(memory store bulk load for comparison: {memory_load:.0} pointers/s)");
    });
}
