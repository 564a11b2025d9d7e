//! The report of refused lines: NDJSON, one object per refused line, in the order they were
//! settled (not file order: batches finish out of order):
//! `{"line": 7, "reason": "INVALID_ARGUMENT: ...", "code": "INVALID_ARGUMENT", "field": "nhs_number",
//! "input": "<the line as read>"}` (`code` only for the server's refusals, `field` when it names one). `input` is
//! the text of the line, so the refused lines can be fixed and imported again
//! (`jq -r .input REPORT > fixed.ndjson`). It holds NHS numbers, so it is created readable by its
//! owner only.

use super::read::{Refusal, Refused};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One line of the report, its fields in this order.
#[derive(Serialize)]
struct ReportLine<'a> {
    line: u64,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    input: &'a str,
}

pub struct RejectsFile {
    path: PathBuf,
    writer: BufWriter<File>,
    written: u64,
}

impl RejectsFile {
    /// Creates (or truncates) the report at once, so an unwritable path is found before the import
    /// starts rather than at its first refusal.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        // `mode` applies only to a new file; a report left by an earlier run may be wider open.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Self { path: path.to_path_buf(), writer: BufWriter::new(file), written: 0 })
    }

    pub fn write(&mut self, refused: &Refused) -> std::io::Result<()> {
        let (code, field) = match &refused.refusal {
            Refusal::Server { code, field, .. } => {
                (Some(super::super::code_name(*code)), Some(field.as_str()).filter(|f| !f.is_empty()))
            }
            Refusal::NotJson(_) | Refusal::NotPointer(_) => (None, None),
        };
        let entry =
            ReportLine { line: refused.line, reason: refused.refusal.reason(), code, field, input: &refused.text };
        serde_json::to_writer(&mut self.writer, &entry)?;
        self.writer.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Flushes the report; an empty one is removed, so a report on disk always means refusals (and
    /// one left by an earlier run does not linger).
    pub fn finish(mut self) -> std::io::Result<Option<PathBuf>> {
        self.writer.flush()?;
        if self.written == 0 {
            drop(self.writer);
            std::fs::remove_file(&self.path)?;
            return Ok(None);
        }
        Ok(Some(self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_refusal_is_one_json_line_with_the_input_and_an_empty_report_is_removed() {
        let dir = std::env::temp_dir().join(format!("nrl-rejects-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("r.ndjson");
        let mut report = RejectsFile::create(&path).expect("create");
        let server = Refusal::Server {
            code: tonic::Code::InvalidArgument,
            field: "type".into(),
            message: "type: not in the catalogue".into(),
        };
        report.write(&Refused { line: 3, text: "{\"a\": 1}".into(), refusal: server }).expect("write");
        report
            .write(&Refused { line: 9, text: "{oops".into(), refusal: Refusal::NotJson("eof".into()) })
            .expect("write");
        let conflict =
            Refusal::Server { code: tonic::Code::AlreadyExists, field: String::new(), message: "taken".into() };
        report.write(&Refused { line: 12, text: "{}".into(), refusal: conflict }).expect("write");
        assert_eq!(report.finish().expect("finish").as_deref(), Some(path.as_path()));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(r#"{"line":3,"reason":"#), "the line number first: {text}");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        assert_eq!(
            lines[0],
            json!({"line": 3, "reason": "INVALID_ARGUMENT: type: not in the catalogue", "code": "INVALID_ARGUMENT",
                   "field": "type", "input": "{\"a\": 1}"})
        );
        assert_eq!(lines[1], json!({"line": 9, "reason": "not JSON: eof", "input": "{oops"}));
        assert_eq!(
            lines[2],
            json!({"line": 12, "reason": "ALREADY_EXISTS: taken", "code": "ALREADY_EXISTS", "input": "{}"}),
            "no empty field"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }

        let empty = RejectsFile::create(&path).expect("truncate");
        assert_eq!(empty.finish().expect("finish"), None);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
