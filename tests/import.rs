//! `nrl import`, end to end: the real binary against a real server on a free port, with files of
//! good, bad and duplicate lines, interrupted and run again. What is checked is what an operator
//! relies on: every good line registered exactly once (counted through the API), every bad line in
//! the report with its reason, the exit code, and no NHS number on the terminal.

use nrl_registry::config::{ServerConfig, StoreConfig};
use nrl_registry::domain::NhsNumber;
use nrl_registry::proto::nrl::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A server from the shared harness, on a runtime of its own so the test can run the binary
/// synchronously. The server is declared first so it is dropped (stopped) before its runtime.
struct Registry {
    server: testkit::TestServer,
    runtime: tokio::runtime::Runtime,
}

impl Registry {
    fn start() -> Self {
        Self::start_with(ServerConfig::for_tests())
    }

    fn start_with(config: ServerConfig) -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("test runtime");
        let server = runtime.block_on(testkit::TestServer::start_with(config));
        Self { server, runtime }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// How many current pointers the patient has, through CountPointers.
    fn count(&self, nhs_number: &str) -> u64 {
        let query = pb::PointerQuery { nhs_number: nhs_number.to_string(), ..Default::default() };
        let mut client = self.server.registry();
        self.runtime
            .block_on(client.count_pointers(pb::CountPointersRequest { query: Some(query) }))
            .unwrap_or_else(|status| panic!("count {nhs_number}: {status}"))
            .into_inner()
            .count
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn import(registry: &Registry, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_nrl"))
        .arg("import")
        .args(args)
        .env("NRL_SERVER", registry.url())
        .stdin(Stdio::null())
        .output()
        .expect("run nrl import");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("import-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write_lines(path: &Path, lines: &[String]) -> String {
    std::fs::write(path, lines.join("\n") + "\n").expect("write the import file");
    path.display().to_string()
}

/// The `index`th valid number of the NHS test range.
fn patient(index: u64) -> String {
    (999_100_000..).filter_map(NhsNumber::from_prefix).nth(index as usize).expect("a test number").to_string()
}

/// A pointer in the CLI's short form; `reference` may be empty (none).
fn short(nhs_number: &str, reference: &str, url: &str) -> String {
    let mut line = json!({
        "nhs_number": nhs_number, "region": "QWO", "custodian": "RR8", "type": "736253002",
        "content": [{"url": url, "content_type": "application/pdf", "format": "urn:nhs-ic:unstructured",
                     "retrieval_mechanism": "DIRECT", "stability": "STATIC"}],
    });
    if !reference.is_empty() {
        line["producer_reference"] = json!(reference);
    }
    line.to_string()
}

/// The same in the canonical protobuf JSON mapping.
fn canonical(nhs_number: &str, reference: &str, url: &str) -> String {
    json!({
        "nhsNumber": nhs_number, "region": "QWO", "custodian": "RR8", "type": "736253002",
        "content": [{"url": url, "contentType": "application/pdf", "format": "urn:nhs-ic:unstructured",
                     "retrievalMechanism": "RETRIEVAL_MECHANISM_DIRECT", "stability": "STABILITY_STATIC"}],
        "producerReference": reference,
    })
    .to_string()
}

/// The report, by line number.
fn report(path: &Path) -> BTreeMap<u64, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("report line {line:?}: {e}"));
            (entry["line"].as_u64().expect("a line number"), entry)
        })
        .collect()
}

fn assert_no_nhs_number(run: &Run, numbers: &[&str]) {
    for number in numbers {
        let spaced = format!("{} {} {}", &number[..3], &number[3..6], &number[6..]);
        for text in [&run.stdout, &run.stderr] {
            assert!(!text.contains(number) && !text.contains(&spaced), "{number} reached the terminal: {run:#?}");
        }
    }
}

#[test]
fn every_line_is_created_already_registered_or_reported_with_its_reason() {
    let registry = Registry::start();
    let dir = scratch("accounting");
    let (p1, p2) = (patient(0), patient(1));
    let lines = vec![
        short(&p1, "R1", "https://qwo.example.nhs.uk/1"),
        canonical(&p1, "R2", "https://qwo.example.nhs.uk/2"),
        format!(r#"{{"nhs_number": "{p1}", "region": "#),
        String::new(),
        short("9434765918", "R3", "https://qwo.example.nhs.uk/3"),
        short(&p2, "R4", "https://qwo.example.nhs.uk/4").replace("736253002", "999999999"),
        short(&p1, "R1", "https://qwo.example.nhs.uk/1"),
        short(&p2, "", "https://qwo.example.nhs.uk/5"),
        short(&p2, "R6", "https://qwo.example.nhs.uk/6").replace("\"region\"", "\"regoin\""),
        short(&p1, "R1", "https://elsewhere.example.nhs.uk/1"),
    ];
    let file = write_lines(&dir.join("extract.ndjson"), &lines);
    let rejects = PathBuf::from(format!("{file}.rejects.ndjson"));
    // One batch in flight, so the first R1 is registered before its conflicting duplicate arrives.
    let args = ["--batch-size", "2", "--in-flight", "1", file.as_str()];

    let first = import(&registry, &args);
    assert_eq!(first.code, Some(2), "some lines refused: {first:#?}");
    assert!(
        first.stdout.starts_with(&format!("imported {file}: 9 lines, 3 created, 1 already registered, 5 refused in ")),
        "{first:#?}"
    );
    assert!(first
        .stdout
        .contains(&format!("refused lines, with their line numbers and reasons: {}", rejects.display())));
    assert!(first.stdout.contains("1 line has no producer_reference"), "{first:#?}");
    assert_eq!(first.stderr.matches("has no producer_reference").count(), 1, "warned once: {first:#?}");
    assert!(first.stderr.contains("line 8 has no producer_reference"), "{first:#?}");
    for shown in [
        "line 3: not JSON",
        "line 5: INVALID_ARGUMENT (nhs_number)",
        "line 6: INVALID_ARGUMENT (type)",
        "line 9: not a pointer",
        "line 10: ALREADY_EXISTS",
    ] {
        assert!(first.stderr.contains(shown), "{shown:?} on stderr: {first:#?}");
    }
    assert_no_nhs_number(&first, &[&p1, &p2, "9434765918"]);

    let refused = report(&rejects);
    let expected = [
        (3, "not JSON: EOF while parsing"),
        (5, "INVALID_ARGUMENT: nhs_number: "),
        (6, "INVALID_ARGUMENT: type: "),
        (9, "not a pointer: unknown field `regoin`"),
        (10, "ALREADY_EXISTS: "),
    ];
    assert_eq!(refused.keys().copied().collect::<Vec<_>>(), expected.map(|(line, _)| line), "{refused:#?}");
    for (line, reason) in expected {
        let entry = &refused[&line];
        assert!(entry["reason"].as_str().is_some_and(|r| r.starts_with(reason)), "line {line}: {entry}");
        assert_eq!(entry["input"].as_str(), Some(lines[line as usize - 1].as_str()), "the line as read");
    }
    assert_eq!(refused[&5]["field"], "nhs_number");
    assert_eq!(refused[&6]["field"], "type");
    assert_eq!(refused[&10]["code"], "ALREADY_EXISTS");
    assert_eq!(registry.count(&p1), 2, "R1 once (its exact duplicate is already registered) and R2");
    assert_eq!(registry.count(&p2), 1);

    // Again: what has a producer_reference is recognised; the line without one is registered again.
    let again = import(&registry, &[&args[..], &["--json"]].concat());
    assert_eq!(again.code, Some(2), "{again:#?}");
    let summary: Value = serde_json::from_str(&again.stdout).expect("--json summary");
    assert_eq!(
        (&summary["lines"], &summary["created"], &summary["existing"], &summary["refused"]),
        (&json!(9), &json!(1), &json!(3), &json!(5)),
        "{summary}"
    );
    assert_eq!(summary["without_producer_reference"], 1);
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["report"], json!(rejects.display().to_string()));
    assert_eq!(report(&rejects).keys().count(), 5, "the report is rewritten, not appended to");
    assert_eq!(registry.count(&p1), 2);
    assert_eq!(registry.count(&p2), 2, "a line without producer_reference cannot be deduplicated");
}

/// `nrl import -` fed by the test, with plain progress lines every second on stderr.
struct StdinImport {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    /// Each stderr line as it comes, and everything it printed once it ends.
    seen: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl StdinImport {
    fn start(registry: &Registry, dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nrl"))
            .args(["import", "-", "--batch-size", "20", "--in-flight", "4", "--progress-interval", "1"])
            .env("NRL_SERVER", registry.url())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nrl import -");
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, seen) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all += &line;
                all.push('\n');
                let _ = lines.send(line);
            }
            all
        });
        Self { child, stdin, seen, stderr: Some(stderr) }
    }

    fn feed(&mut self, lines: &[String]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all((lines.join("\n") + "\n").as_bytes()).expect("feed the import");
        stdin.flush().expect("flush");
    }

    /// Waits for the progress line saying `lines` lines are settled.
    fn settled(&mut self, lines: usize) {
        let settled = format!("nrl import: {lines} lines done");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(line) if line.starts_with(&settled) => return,
                Ok(line) => assert!(!line.contains('\x1b'), "plain progress lines off a terminal: {line:?}"),
                Err(e) => panic!("no {settled:?} within two minutes ({e})"),
            }
        }
    }

    /// Sends `signal` and waits for the import to end, its input still open (so it cannot end by
    /// reaching the end of it instead).
    fn stop(mut self, signal: &str) -> Run {
        let killed = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(killed.success(), "kill {signal}");
        let status = self.child.wait().expect("wait for nrl import");
        self.ended(status)
    }

    /// Closes stdin (the end of the input) and waits for the import to end.
    fn finish(mut self) -> Run {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for nrl import");
        self.ended(status)
    }

    fn ended(mut self, status: std::process::ExitStatus) -> Run {
        drop(self.stdin.take());
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).expect("read stdout");
        }
        let stderr = self.stderr.take().map(|t| t.join().expect("stderr reader")).unwrap_or_default();
        Run { code: status.code(), stdout, stderr }
    }
}

impl Drop for StdinImport {
    /// Kills the import if the test failed before waiting for it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Feeds the first `fed` lines to `nrl import -`, waits until they are settled, then sends `signal`.
fn import_stdin_until(registry: &Registry, lines: &[String], fed: usize, signal: &str) -> Run {
    let mut import = StdinImport::start(registry, &scratch(&format!("stdin{signal}")));
    import.feed(&lines[..fed]);
    import.settled(fed);
    import.stop(signal)
}

#[test]
fn an_interrupted_import_run_again_registers_every_good_line_once() {
    const PATIENTS: u64 = 600;
    const PER_PATIENT: u64 = 4;
    let registry = Registry::start();
    let dir = scratch("interrupted");
    let patients: Vec<String> = (0..PATIENTS).map(patient).collect();
    let mut lines = Vec::new();
    let mut bad = BTreeMap::new();
    for (i, number) in patients.iter().enumerate() {
        for j in 0..PER_PATIENT {
            let (reference, url) = (format!("EXT-{i}-{j}"), format!("https://qwo.example.nhs.uk/{i}/{j}"));
            lines.push(if j % 2 == 0 { short(number, &reference, &url) } else { canonical(number, &reference, &url) });
            if lines.len() % 100 == 99 {
                let (line, reason) = match bad.len() % 3 {
                    0 => (r#"{"nhs_number": "#.to_string(), "not JSON: "),
                    1 => (short("9434765918", &reference, &url), "INVALID_ARGUMENT: nhs_number: "),
                    _ => {
                        (short(number, &format!("BAD-{i}"), &url).replace("736253002", "1"), "INVALID_ARGUMENT: type: ")
                    }
                };
                lines.push(line);
                bad.insert(lines.len() as u64, reason);
            }
        }
    }
    let good = PATIENTS * PER_PATIENT;
    assert_eq!(lines.len() as u64, good + bad.len() as u64);
    let file = write_lines(&dir.join("region.ndjson"), &lines);
    let half = write_lines(&dir.join("first-half.ndjson"), &lines[..lines.len() / 2]);

    // The first half alone, then runs over stdin stopped part-way (Ctrl-C, then kill -9), then the
    // whole file: nothing is registered twice, and the last run accounts for every line.
    let first = import(&registry, &[half.as_str()]);
    assert_eq!(first.code, Some(2), "{first:#?}");
    let interrupted = import_stdin_until(&registry, &lines, 800, "-INT");
    assert_eq!(interrupted.code, Some(130), "{interrupted:#?}");
    assert!(interrupted.stdout.starts_with("stopped importing stdin: 800 lines, "), "{interrupted:#?}");
    assert!(interrupted.stderr.contains("re-run the same command to finish"), "{interrupted:#?}");
    let killed = import_stdin_until(&registry, &lines, 1600, "-KILL");
    assert_eq!(killed.code, None, "killed by a signal: {killed:#?}");

    let last = import(&registry, &["--in-flight", "4", "--batch-size", "50", file.as_str(), "--json"]);
    assert_eq!(last.code, Some(2), "{last:#?}");
    let summary: Value = serde_json::from_str(&last.stdout).expect("--json summary");
    assert_eq!(summary["lines"], json!(lines.len()));
    assert_eq!(summary["refused"], json!(bad.len()));
    let created = summary["created"].as_u64().expect("created");
    let existing = summary["existing"].as_u64().expect("existing");
    assert_eq!(created + existing, good, "{summary}");
    let settled_before = 1600 - bad.keys().filter(|&&line| line <= 1600).count() as u64;
    assert!(existing >= settled_before, "the earlier runs' lines come back as already registered: {summary}");
    assert_no_nhs_number(&last, &patients.iter().map(String::as_str).collect::<Vec<_>>());

    let refused = report(Path::new(&format!("{file}.rejects.ndjson")));
    assert_eq!(refused.keys().copied().collect::<Vec<_>>(), bad.keys().copied().collect::<Vec<_>>());
    for (line, reason) in &bad {
        let entry = &refused[line];
        assert!(entry["reason"].as_str().is_some_and(|r| r.starts_with(reason)), "line {line}: {entry}");
        assert_eq!(entry["input"].as_str(), Some(lines[*line as usize - 1].as_str()));
    }
    for number in &patients {
        assert_eq!(registry.count(number), PER_PATIENT, "patient {number}: every good line once");
    }
}

#[test]
fn a_store_stall_shorter_than_the_retries_is_ridden_out() {
    let mut redis = testkit::redis::RedisServer::start(testkit::redis::RedisOptions::default());
    let mut store = nrl_registry::store::redis::RedisConfig::parse(&redis.url()).expect("harness url");
    store.timeout = Duration::from_millis(300);
    let mut config = ServerConfig::for_tests();
    config.store = StoreConfig::Redis(store);
    let registry = Registry::start_with(config);
    let patients: Vec<String> = (0..200).map(patient).collect();
    let lines: Vec<String> = patients
        .iter()
        .enumerate()
        .flat_map(|(i, number)| {
            (0..4).map(move |j| short(number, &format!("S-{i}-{j}"), &format!("https://qwo.example.nhs.uk/s/{i}/{j}")))
        })
        .collect();

    let mut import = StdinImport::start(&registry, &scratch("stall"));
    import.feed(&lines[..400]);
    import.settled(400);
    // Redis stops answering (its sockets stay open) for longer than a store call may take, so the
    // server answers UNAVAILABLE; the import retries until Redis is back.
    redis.freeze();
    import.feed(&lines[400..]);
    std::thread::sleep(Duration::from_millis(1500));
    redis.thaw();
    let run = import.finish();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.starts_with("imported stdin: 800 lines, "), "{run:#?}");
    assert!(run.stdout.contains(" 0 refused "), "{run:#?}");
    assert!(run.stdout.contains("calls were made again after a transient failure"), "the stall was felt: {run:#?}");
    for number in &patients {
        assert_eq!(registry.count(number), 4, "patient {number}");
    }
}

#[test]
fn local_problems_exit_64_before_anything_is_sent() {
    // Nothing listens here: the file and the report are checked first.
    let nowhere = "http://127.0.0.1:9";
    let dir = scratch("usage");
    let missing = dir.join("missing.ndjson").display().to_string();
    let file = write_lines(&dir.join("x.ndjson"), &[short(&patient(0), "R", "https://x.example.nhs.uk/1")]);
    for (args, problem) in [
        (vec![missing.as_str()], format!("cannot read {missing}")),
        (vec![file.as_str(), "--report", file.as_str()], format!("--report {file} is the file being imported")),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_nrl"))
            .arg("import")
            .args(&args)
            .env("NRL_SERVER", nowhere)
            .output()
            .expect("run nrl import");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("nrl import: {problem}")), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(&file).map(|t| t.lines().count()).ok(), Some(1), "the input is untouched");
}
