//! The reading side of `nrl import`: NDJSON lines → parsed pointers, cut into batches, on a thread of
//! its own so parsing overlaps the calls in flight. Lines that do not parse are refused here and
//! travel with the batch that covers them, so every line is accounted for when its batch is.

use super::super::input::parse_pointer;
use crate::proto::nrl::v1 as pb;
use prost::Message as _;
use std::io::BufRead;
use tokio::sync::mpsc;

/// A line longer than this cannot be a pointer (one at every size limit is about 22 KB of JSON), so
/// it is refused unread rather than held in memory whole.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One parsed line, with its text kept for the report in case the server refuses it.
pub struct Entry {
    pub line: u64,
    pub text: String,
    pub pointer: pb::PointerInput,
}

/// Why a line was not registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not UTF-8, not JSON, or too long to be a pointer.
    NotJson(String),
    /// JSON, but not a pointer in either spelling (unknown field, wrong type, bad enum or date).
    NotPointer(String),
    /// Refused by the server: its code, the field it names (maybe empty) and its message.
    Server { code: tonic::Code, field: String, message: String },
}

impl Refusal {
    /// What the terminal may show: the kind of problem and the field, never the values (a reason
    /// can quote the line, and a line holds an NHS number).
    pub fn label(&self) -> String {
        match self {
            Self::NotJson(_) => "not JSON".into(),
            Self::NotPointer(_) => "not a pointer".into(),
            Self::Server { code, field, .. } if field.is_empty() => super::super::code_name(*code).to_string(),
            Self::Server { code, field, .. } => format!("{} ({field})", super::super::code_name(*code)),
        }
    }

    /// The whole reason, for the report file.
    pub fn reason(&self) -> String {
        match self {
            Self::NotJson(detail) => format!("not JSON: {detail}"),
            Self::NotPointer(detail) => format!("not a pointer: {detail}"),
            Self::Server { code, message, .. } => format!("{}: {message}", super::super::code_name(*code)),
        }
    }
}

/// A refused line, with its text as read (lossily decoded if it was not UTF-8).
pub struct Refused {
    pub line: u64,
    pub text: String,
    pub refusal: Refusal,
}

/// A run of consecutive lines: the pointers to send and the lines already refused.
#[derive(Default)]
pub struct Batch {
    /// Position in the file, from 0: batches complete out of order.
    pub seq: u64,
    pub entries: Vec<Entry>,
    pub refused: Vec<Refused>,
    /// Non-blank lines covered.
    pub lines: u64,
    /// Bytes of the file covered (blank lines and line ends included), for the progress.
    pub bytes: u64,
    /// Lines whose pointer has no producer_reference, and the first of them.
    pub unreferenced: u64,
    pub first_unreferenced: Option<u64>,
    /// Encoded size of `entries`, kept under the request limit.
    encoded: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

/// How batches are cut.
#[derive(Clone, Copy)]
pub struct Cut {
    /// Entries (sent or refused) per batch.
    pub size: usize,
    /// Encoded bytes of the entries of one request.
    pub max_request_bytes: usize,
}

/// Reads `input` to its end (or until the receiver is gone), sending batches. A read error ends
/// the stream with that error.
pub fn read(mut input: impl BufRead, cut: Cut, batches: mpsc::Sender<Result<Batch, String>>) {
    let mut line_no = 0u64;
    let mut seq = 0u64;
    let mut batch = Batch::default();
    let mut buf = Vec::new();
    loop {
        let (consumed, too_long) = match read_line(&mut input, &mut buf) {
            Ok(read) => read,
            Err(e) => {
                let _ = batches.blocking_send(Err(format!("cannot read line {}: {e}", line_no + 1)));
                return;
            }
        };
        if consumed == 0 {
            break;
        }
        line_no += 1;
        batch.bytes += consumed as u64;
        if buf.iter().all(u8::is_ascii_whitespace) && !too_long {
            continue;
        }
        batch.lines += 1;
        take_line(&mut batch, line_no, &buf, too_long);
        if batch.entries.len() + batch.refused.len() >= cut.size || batch.encoded >= cut.max_request_bytes {
            batch.seq = seq;
            seq += 1;
            if batches.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                return;
            }
        }
    }
    if !batch.is_empty() {
        batch.seq = seq;
        let _ = batches.blocking_send(Ok(batch));
    }
}

/// Parses one line into `batch`. The caller cuts the batch once its entries reach
/// `max_request_bytes`, so a request holds at most that plus one line's pointer (whose encoding is
/// no longer than its JSON, at most `MAX_LINE_BYTES`).
fn take_line(batch: &mut Batch, line: u64, bytes: &[u8], too_long: bool) {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let text = String::from_utf8_lossy(body).into_owned();
    if too_long {
        let refusal = Refusal::NotJson(format!("the line is longer than {MAX_LINE_BYTES} bytes"));
        batch.refused.push(Refused { line, text: String::new(), refusal });
        return;
    }
    if std::str::from_utf8(body).is_err() {
        batch.refused.push(Refused { line, text, refusal: Refusal::NotJson("the line is not UTF-8".into()) });
        return;
    }
    match parse_pointer(&text) {
        Ok(pointer) => {
            if pointer.producer_reference.is_empty() {
                batch.unreferenced += 1;
                batch.first_unreferenced.get_or_insert(line);
            }
            // The entry's tag and length prefix take a few bytes more than the message itself.
            batch.encoded += pointer.encoded_len() + 8;
            batch.entries.push(Entry { line, text, pointer });
        }
        Err(e) => {
            let refusal = match e.classify() {
                serde_json::error::Category::Data => Refusal::NotPointer(e.to_string()),
                _ => Refusal::NotJson(e.to_string()),
            };
            batch.refused.push(Refused { line, text, refusal });
        }
    }
}

/// Reads one line (its end included) into `buf`, at most `MAX_LINE_BYTES` of it; the rest of a
/// longer line is skipped. Returns the bytes consumed (0 at the end) and whether it was too long.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    buf.clear();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let read = std::io::Read::take(&mut *input, limit).read_until(b'\n', buf)?;
    if read < limit as usize || buf.ends_with(b"\n") {
        return Ok((read, false));
    }
    let mut consumed = read;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            break;
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                consumed += end + 1;
                break;
            }
            None => {
                let skipped = available.len();
                input.consume(skipped);
                consumed += skipped;
            }
        }
    }
    buf.clear();
    Ok((consumed, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"nhs_number":"9434765919","region":"QWO","custodian":"RR8","type":"736253002","content":[{"url":"https://x.example/1","content_type":"text/html","format":"urn:nhs-ic:unstructured","retrieval_mechanism":"SSP","stability":"DYNAMIC"}],"producer_reference":"R1"}"#;

    fn batches(text: &[u8], size: usize) -> Vec<Batch> {
        let (tx, mut rx) = mpsc::channel(1000);
        read(text, Cut { size, max_request_bytes: 3 * 1024 * 1024 }, tx);
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.push(batch.expect("no read error"));
        }
        out
    }

    #[test]
    fn lines_are_numbered_from_one_blank_ones_skipped_and_every_byte_counted() {
        let unreferenced = GOOD.replace(r#","producer_reference":"R1""#, "");
        let text = format!("{GOOD}\n\n{{not json\n{unreferenced}\r\n{{\"region\": 1}}\n{GOOD}");
        let all = batches(text.as_bytes(), 2);
        assert_eq!(all.iter().map(|b| b.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(all.iter().map(|b| b.bytes).sum::<u64>(), text.len() as u64);
        assert_eq!(all.iter().map(|b| b.lines).sum::<u64>(), 5, "the blank line is not counted");
        let sent: Vec<u64> = all.iter().flat_map(|b| b.entries.iter().map(|e| e.line)).collect();
        assert_eq!(sent, [1, 4, 6]);
        let refused: Vec<(u64, &str)> = all
            .iter()
            .flat_map(|b| {
                b.refused
                    .iter()
                    .map(|r| (r.line, if matches!(r.refusal, Refusal::NotJson(_)) { "json" } else { "pointer" }))
            })
            .collect();
        assert_eq!(refused, [(3, "json"), (5, "pointer")]);
        assert_eq!(all.iter().map(|b| b.unreferenced).sum::<u64>(), 1);
        assert_eq!(all.iter().find_map(|b| b.first_unreferenced), Some(4));
        assert_eq!(all[1].refused[0].text, "{\"region\": 1}", "the line end is not part of the text");
    }

    #[test]
    fn an_overlong_line_is_refused_without_being_kept_and_the_next_line_still_read() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{long}\n{GOOD}\n");
        let all = batches(text.as_bytes(), 10);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].bytes, text.len() as u64);
        assert_eq!(all[0].refused.len(), 1);
        assert!(all[0].refused[0].text.is_empty());
        assert_eq!(all[0].entries.iter().map(|e| e.line).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn labels_never_quote_the_line() {
        let parsed = parse_pointer(&GOOD.replace(r#""9434765919""#, "9434765919")).err().map(|e| e.to_string());
        let refusal = Refusal::NotPointer(parsed.unwrap_or_default());
        assert!(refusal.reason().contains("9434765919"), "the report keeps the detail: {}", refusal.reason());
        assert_eq!(refusal.label(), "not a pointer");
        let server = Refusal::Server {
            code: tonic::Code::InvalidArgument,
            field: "nhs_number".into(),
            message: "nhs_number: 9434765918 fails the check".into(),
        };
        assert_eq!(server.label(), "INVALID_ARGUMENT (nhs_number)");
    }
}
