//! `nrl import FILE`: a region's first load. Reads NDJSON pointers (one per line, in either
//! spelling `create` reads), sends them through BatchCreatePointers with several batches in flight,
//! and accounts for every line: created, already registered, or refused (written to the report with
//! its line number and reason).
//!
//! Re-running the same file after an interruption is safe for every line with a
//! producer_reference: the registry answers it as already registered. A line without one cannot be
//! recognised and is registered again, so the import warns at the first such line.
//!
//! Only counts, rates and times reach the terminal; NHS numbers stay in the file and the report.

mod progress;
mod read;
mod report;

use super::{code_name, connect, emit, emit_json, ClientError, Connection, ServerArgs};
use crate::proto::nrl::v1 as pb;
use futures::stream::{FuturesUnordered, StreamExt};
use pb::batch_outcome::Result as Answer;
use pb::pointer_registry_client::PointerRegistryClient;
use progress::{Done, Progress};
use read::{Batch, Cut, Refusal, Refused};
use report::RejectsFile;
use serde_json::json;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// NDJSON file of pointers, one per line (`-` for stdin), each as `create` reads them: the CLI's
    /// short form or the canonical protobuf JSON. Lines with a producer_reference can be imported
    /// again safely (they come back as already registered); lines without one cannot be
    /// deduplicated and are registered again on every run.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// Where refused lines go, one JSON object per line with the line number, the reason and the
    /// line itself [default: FILE.rejects.ndjson, or import.rejects.ndjson for stdin]. Removed when
    /// nothing is refused.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Pointers per BatchCreatePointers call (the server takes at most 1000).
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,
    /// Batch calls in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub in_flight: u32,
    /// Seconds between progress lines when stderr is not a terminal (a terminal gets a bar).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_interval: u64,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Calls per batch, the first included, before a transient failure (the store or the server briefly
/// unavailable, a deadline, the server shedding load) is given up on.
/// With the backoff doubling from `FIRST_BACKOFF`, the last attempt comes about 8 s after the first:
/// long enough to ride out a Redis failover.
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Refused lines named on the terminal; the report has them all.
const REFUSALS_SHOWN: usize = 5;
/// Room for a batch's pointers in a request, below the server's 4 MiB: the batch is cut once it
/// reaches this, so one more line (at most `MAX_LINE_BYTES`) still fits.
const MAX_REQUEST_BYTES: usize = crate::domain::limits::MAX_MESSAGE_BYTES - read::MAX_LINE_BYTES - 64 * 1024;
/// An answer repeats its pointers with ids and timestamps added, so it may be larger than the request.
const MAX_RESPONSE_BYTES: usize = 4 * crate::domain::limits::MAX_MESSAGE_BYTES;

fn transient(code: tonic::Code) -> bool {
    use tonic::Code::{Aborted, DeadlineExceeded, ResourceExhausted, Unavailable};
    matches!(code, Unavailable | DeadlineExceeded | ResourceExhausted | Aborted)
}

enum Outcome {
    Created,
    Existing,
    Refused(Refusal),
}

/// A batch after its calls: one outcome per entry, `None` for entries left unsettled by a call that
/// failed as a whole (`failed`).
struct Sent {
    batch: Batch,
    outcomes: Vec<Option<Outcome>>,
    failed: Option<tonic::Status>,
    /// Calls made again after a transient failure.
    retries: u32,
}

/// Sends a batch, retrying what failed transiently: the whole call, or single entries. Retrying
/// is safe for entries with a producer_reference, which the registry recognises.
async fn send(mut client: PointerRegistryClient<Connection>, batch: Batch) -> Sent {
    let mut outcomes: Vec<Option<Outcome>> = batch.entries.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..batch.entries.len()).collect();
    let mut attempt = 1;
    while !pending.is_empty() {
        let pointers = pending.iter().map(|&i| batch.entries[i].pointer.clone()).collect();
        let last = attempt == ATTEMPTS;
        let mut again = Vec::new();
        match client.batch_create_pointers(pb::BatchCreatePointersRequest { pointers }).await {
            Ok(response) => {
                let mut answers: Vec<Option<Answer>> = pending.iter().map(|_| None).collect();
                for outcome in response.into_inner().outcomes {
                    if let Some(slot) = answers.get_mut(outcome.index as usize) {
                        *slot = outcome.result;
                    }
                }
                for (&i, answer) in pending.iter().zip(answers) {
                    let settled = match answer {
                        Some(Answer::Created(_)) => Some(Outcome::Created),
                        Some(Answer::Existing(_)) => Some(Outcome::Existing),
                        Some(Answer::Error(e)) => {
                            let code = tonic::Code::from(e.code);
                            let refusal = Refusal::Server { code, field: e.field, message: e.message };
                            (last || !transient(code)).then_some(Outcome::Refused(refusal))
                        }
                        // The contract promises one outcome per entry; ask again, then give up.
                        None => last.then(|| {
                            Outcome::Refused(Refusal::Server {
                                code: tonic::Code::Internal,
                                field: String::new(),
                                message: "the server's answer had no outcome for this entry".into(),
                            })
                        }),
                    };
                    match settled {
                        Some(outcome) => outcomes[i] = Some(outcome),
                        None => again.push(i),
                    }
                }
            }
            Err(status) if transient(status.code()) && !last => again = pending.clone(),
            Err(status) => return Sent { batch, outcomes, failed: Some(status), retries: attempt - 1 },
        }
        pending = again;
        if !pending.is_empty() {
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1)).await;
            attempt += 1;
        }
    }
    Sent { batch, outcomes, failed: None, retries: attempt - 1 }
}

/// Every line's fate so far.
#[derive(Default)]
struct Tally {
    done: Done,
    created: u64,
    existing: u64,
    refused: u64,
    unreferenced: u64,
    retries: u64,
    /// The first refused lines (by line number), as the terminal may show them.
    shown: Vec<(u64, String)>,
}

impl Tally {
    fn refuse(&mut self, refused: &Refused, report: &mut RejectsFile) -> std::io::Result<()> {
        report.write(refused)?;
        self.refused += 1;
        self.shown.push((refused.line, refused.refusal.label()));
        self.shown.sort_unstable();
        self.shown.truncate(REFUSALS_SHOWN);
        Ok(())
    }

    /// Counts a batch's settled lines and reports its refused ones. Returns how many entries a
    /// failed call left unsettled.
    fn settle(&mut self, sent: Sent, report: &mut RejectsFile) -> std::io::Result<u64> {
        let Sent { batch, outcomes, failed, retries } = sent;
        self.retries += u64::from(retries);
        for refused in &batch.refused {
            self.refuse(refused, report)?;
        }
        let mut unsettled = 0;
        for (entry, outcome) in batch.entries.into_iter().zip(outcomes) {
            match outcome {
                Some(Outcome::Created) => self.created += 1,
                Some(Outcome::Existing) => self.existing += 1,
                Some(Outcome::Refused(refusal)) => {
                    self.refuse(&Refused { line: entry.line, text: entry.text, refusal }, report)?;
                }
                None => unsettled += 1,
            }
        }
        self.done.lines += batch.lines - unsettled;
        if failed.is_none() {
            self.done.bytes += batch.bytes;
        }
        self.unreferenced += batch.unreferenced;
        Ok(unsettled)
    }
}

/// Why the import ended before the end of the file.
enum Stop {
    Interrupted,
    /// A call failed as a whole, for good (after retries, or at once for a permanent failure such
    /// as a missing permission): every other batch would fail the same way.
    CallFailed(tonic::Status),
    ReadFailed(String),
}

fn open(file: &str) -> Result<(Box<dyn BufRead + Send>, Option<u64>), ClientError> {
    const BUFFER: usize = 256 * 1024;
    if file == "-" {
        return Ok((Box::new(std::io::BufReader::with_capacity(BUFFER, std::io::stdin())), None));
    }
    let opened = std::fs::File::open(file).map_err(|e| ClientError::Usage(format!("cannot read {file}: {e}")))?;
    let size = opened.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((Box::new(std::io::BufReader::with_capacity(BUFFER, opened)), size))
}

fn report_path(args: &ImportArgs) -> Result<PathBuf, ClientError> {
    let path = match (&args.report, args.file.as_str()) {
        (Some(path), _) => path.clone(),
        (None, "-") => PathBuf::from("import.rejects.ndjson"),
        (None, file) => PathBuf::from(format!("{file}.rejects.ndjson")),
    };
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if args.file != "-" && same(Path::new(&args.file), &path) {
        return Err(ClientError::Usage(format!("--report {} is the file being imported", path.display())));
    }
    Ok(path)
}

pub async fn run(args: ImportArgs) -> Result<(), ClientError> {
    let (input, size) = open(&args.file)?;
    let path = report_path(&args)?;
    let mut report =
        RejectsFile::create(&path).map_err(|e| ClientError::Usage(format!("--report {}: {e}", path.display())))?;
    let client = PointerRegistryClient::new(connect(&args.server).await?)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(crate::domain::limits::MAX_MESSAGE_BYTES);

    let in_flight = args.in_flight as usize;
    let (batches, mut incoming) = mpsc::channel(in_flight);
    let cut = Cut { size: args.batch_size as usize, max_request_bytes: MAX_REQUEST_BYTES };
    // Parsing runs beside the calls. The thread ends at the end of the input, or at its next batch
    // once the receiver is closed; it is not joined, since a read from stdin may never return.
    std::thread::spawn(move || read::read(input, cut, batches));

    let mut progress = Progress::new(size, Duration::from_secs(args.progress_interval));
    let mut tally = Tally::default();
    let mut calls = FuturesUnordered::new();
    let mut ticker = tokio::time::interval(progress::REDRAW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let mut reading = true;
    let mut warned = false;
    let mut stop = None;
    let mut unsettled = 0u64;
    while reading || !calls.is_empty() {
        tokio::select! {
            Some(sent) = calls.next(), if !calls.is_empty() => {
                let sent: Sent = sent;
                let failed = sent.failed.clone();
                unsettled += tally.settle(sent, &mut report).map_err(|e| {
                    ClientError::Incomplete(format!("cannot write the report {}: {e}", path.display()))
                })?;
                if let (Some(status), None) = (failed, &stop) {
                    stop = Some(Stop::CallFailed(status));
                    reading = false;
                    incoming.close();
                }
            }
            next = incoming.recv(), if reading && calls.len() < in_flight => match next {
                Some(Ok(batch)) => {
                    if let (Some(line), false) = (batch.first_unreferenced, warned) {
                        warned = true;
                        progress.note(&format!(
                            "nrl import: warning: line {line} has no producer_reference. Lines without one cannot \
                             be deduplicated: importing this file again registers them again."
                        ));
                    }
                    calls.push(send(client.clone(), batch));
                }
                Some(Err(e)) => {
                    stop = Some(Stop::ReadFailed(e));
                    reading = false;
                }
                None => reading = false,
            },
            _ = ticker.tick() => progress.tick(tally.done),
            _ = &mut interrupt => {
                if matches!(stop, Some(Stop::Interrupted)) {
                    // Dropping the calls in flight cancels them; what they sent may or may not be
                    // registered, which a re-run settles.
                    progress.note(&format!("nrl import: interrupted again; abandoning {} calls in flight", calls.len()));
                    break;
                }
                progress.note("nrl import: interrupted; waiting for the calls in flight (Ctrl-C again to quit now)");
                stop = Some(Stop::Interrupted);
                reading = false;
                incoming.close();
                interrupt = Box::pin(tokio::signal::ctrl_c());
            }
        }
    }
    progress.clear();
    let elapsed = progress.elapsed();
    let written = report
        .finish()
        .map_err(|e| ClientError::Incomplete(format!("cannot write the report {}: {e}", path.display())))?;
    summarise(&args, &tally, elapsed, written.as_deref(), stop.is_some())?;
    outcome(&tally, stop, unsettled, &path)
}

/// The summary, on stdout (text, or JSON with `--json`).
fn summarise(
    args: &ImportArgs,
    tally: &Tally,
    elapsed: Duration,
    report: Option<&Path>,
    stopped: bool,
) -> Result<(), ClientError> {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { tally.done.lines as f64 / secs } else { 0.0 };
    let name = if args.file == "-" { "stdin" } else { args.file.as_str() };
    if args.server.json {
        return emit_json(&json!({
            "file": name,
            "lines": tally.done.lines,
            "created": tally.created,
            "existing": tally.existing,
            "refused": tally.refused,
            "without_producer_reference": tally.unreferenced,
            "retried_calls": tally.retries,
            "complete": !stopped,
            "elapsed_ms": secs * 1000.0,
            "lines_per_second": rate,
            "report": report.map(|p| p.display().to_string()),
        }));
    }
    let verb = if stopped { "stopped importing" } else { "imported" };
    let mut text = format!(
        "{verb} {name}: {} lines, {} created, {} already registered, {} refused in {secs:.2} s ({rate:.0} lines/s)\n",
        tally.done.lines, tally.created, tally.existing, tally.refused
    );
    if let Some(path) = report {
        text += &format!("refused lines, with their line numbers and reasons: {}\n", path.display());
    }
    if tally.retries > 0 {
        text += &format!("{} calls were made again after a transient failure\n", tally.retries);
    }
    match tally.unreferenced {
        0 => {}
        1 => text += "1 line has no producer_reference: importing it again registers it again\n",
        n => text += &format!("{n} lines have no producer_reference: importing them again registers them again\n"),
    }
    emit(&text)
}

/// The exit: 0 when every line is registered (or already was), 2 when lines were refused, 1 when
/// the import stopped early (130 if interrupted).
fn outcome(tally: &Tally, stop: Option<Stop>, unsettled: u64, report: &Path) -> Result<(), ClientError> {
    let rerun = "re-run the same command to finish: lines already registered come back as such";
    match stop {
        Some(Stop::CallFailed(status)) => Err(ClientError::Incomplete(format!(
            "stopped: a batch call failed: {}: {} ({} lines in flight not imported); {rerun}",
            code_name(status.code()),
            status.message(),
            unsettled
        ))),
        Some(Stop::ReadFailed(e)) => Err(ClientError::Incomplete(format!("stopped: {e}; {rerun}"))),
        Some(Stop::Interrupted) => Err(ClientError::Interrupted(format!("interrupted; {rerun}"))),
        None if tally.refused > 0 => {
            let shown: Vec<String> =
                tally.shown.iter().map(|(line, label)| format!("  line {line}: {label}")).collect();
            Err(ClientError::Refused(format!(
                "{} of {} lines refused, each in {} with its reason; the first:\n{}",
                tally.refused,
                tally.done.lines,
                report.display(),
                shown.join("\n")
            )))
        }
        None => Ok(()),
    }
}
