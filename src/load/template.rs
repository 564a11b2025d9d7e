//! The subset of Go `text/template` that ghz evaluates in call data and metadata: the call-data
//! fields (`{{.RequestNumber}}`, `{{.UUID}}`, …) and the functions `newUUID`, `randomString N` and
//! `randomInt MIN MAX`. Anything else (sprig functions, pipelines, conditionals) is refused when the
//! config is loaded, so a config that works here means the same to ghz.

use rand::Rng;
use std::cell::OnceCell;
use std::fmt::Write as _;

/// Per-call values a template can refer to (ghz's `CallData`). `.UUID` and the timestamps are
/// drawn once per call, on first use, so every template of a call (data and metadata) sees the
/// same values, as in ghz.
#[derive(Debug, Clone)]
pub struct CallData<'a> {
    pub worker_id: &'a str,
    pub request_number: u64,
    pub method: &'a MethodNames,
    uuid: OnceCell<String>,
    now: OnceCell<chrono::DateTime<chrono::Utc>>,
}

impl<'a> CallData<'a> {
    pub fn new(worker_id: &'a str, request_number: u64, method: &'a MethodNames) -> Self {
        Self { worker_id, request_number, method, uuid: OnceCell::new(), now: OnceCell::new() }
    }

    fn uuid(&self) -> &str {
        self.uuid.get_or_init(|| new_uuid(&mut rand::rng()))
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.now.get_or_init(chrono::Utc::now)
    }
}

/// The method-derived fields of ghz's call data, computed once per scenario.
#[derive(Debug, Clone, Default)]
pub struct MethodNames {
    /// `nrl.v1.PointerRegistry.SearchPointers`
    pub fully_qualified_name: String,
    pub method_name: String,
    pub service_name: String,
    pub input_name: String,
    pub output_name: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    WorkerId,
    RequestNumber,
    FullyQualifiedName,
    MethodName,
    ServiceName,
    InputName,
    OutputName,
    IsClientStreaming,
    IsServerStreaming,
    Timestamp,
    TimestampUnix,
    TimestampUnixMilli,
    TimestampUnixNano,
    Uuid,
}

impl Field {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "WorkerID" => Self::WorkerId,
            "RequestNumber" => Self::RequestNumber,
            "FullyQualifiedName" => Self::FullyQualifiedName,
            "MethodName" => Self::MethodName,
            "ServiceName" => Self::ServiceName,
            "InputName" => Self::InputName,
            "OutputName" => Self::OutputName,
            "IsClientStreaming" => Self::IsClientStreaming,
            "IsServerStreaming" => Self::IsServerStreaming,
            "Timestamp" => Self::Timestamp,
            "TimestampUnix" => Self::TimestampUnix,
            "TimestampUnixMilli" => Self::TimestampUnixMilli,
            "TimestampUnixNano" => Self::TimestampUnixNano,
            "UUID" => Self::Uuid,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
    NewUuid,
    /// `randomString N`; N <= 0 means a random length of 2 to 16, as in ghz.
    RandomString(i64),
    /// `randomInt MIN MAX`: uniform in [MIN, MAX).
    RandomInt(i64, i64),
}

/// A parsed template. [`Template::is_static`] is true when it has no actions, so callers can
/// render it once and reuse the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

const RANDOM_CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl Template {
    /// Parses `text`; the error names the offending action.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            let after_open = &rest[open + 2..];
            let close =
                after_open.find("}}").ok_or_else(|| format!("unclosed action after {:?}", truncate(literal, 40)))?;
            let mut inner = &after_open[..close];
            // `{{- ` trims the whitespace before the action, ` -}}` the whitespace after it.
            let trim_left = inner.starts_with("- ") || inner == "-";
            if trim_left {
                inner = &inner[1..];
                literal = literal.trim_end();
            }
            let trim_right = inner.ends_with(" -");
            if trim_right {
                inner = &inner[..inner.len() - 1];
            }
            if !literal.is_empty() {
                pieces.push(Piece::Text(literal.to_string()));
            }
            pieces.push(parse_action(inner.trim())?);
            rest = &after_open[close + 2..];
            if trim_right {
                rest = rest.trim_start();
            }
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self { pieces })
    }

    pub fn is_static(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    pub fn render(&self, data: &CallData<'_>) -> String {
        let mut out = String::with_capacity(self.pieces.iter().map(piece_len_hint).sum());
        let mut rng = rand::rng();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::NewUuid => out.push_str(&new_uuid(&mut rng)),
                Piece::RandomString(length) => {
                    let length = if *length <= 0 { rng.random_range(2..=16) } else { *length as usize };
                    out.extend(
                        (0..length).map(|_| char::from(RANDOM_CHARSET[rng.random_range(0..RANDOM_CHARSET.len())])),
                    );
                }
                Piece::RandomInt(min, max) => {
                    let value = if max > min { rng.random_range(*min..*max) } else { *min };
                    let _ = write!(out, "{value}");
                }
                Piece::Field(field) => {
                    let m = data.method;
                    let _ = match field {
                        Field::WorkerId => write!(out, "{}", data.worker_id),
                        Field::RequestNumber => write!(out, "{}", data.request_number),
                        Field::FullyQualifiedName => write!(out, "{}", m.fully_qualified_name),
                        Field::MethodName => write!(out, "{}", m.method_name),
                        Field::ServiceName => write!(out, "{}", m.service_name),
                        Field::InputName => write!(out, "{}", m.input_name),
                        Field::OutputName => write!(out, "{}", m.output_name),
                        Field::IsClientStreaming => write!(out, "{}", m.client_streaming),
                        Field::IsServerStreaming => write!(out, "{}", m.server_streaming),
                        Field::Uuid => write!(out, "{}", data.uuid()),
                        Field::Timestamp => {
                            write!(out, "{}", data.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        }
                        Field::TimestampUnix => write!(out, "{}", data.now().timestamp()),
                        Field::TimestampUnixMilli => write!(out, "{}", data.now().timestamp_millis()),
                        Field::TimestampUnixNano => {
                            write!(out, "{}", data.now().timestamp_nanos_opt().unwrap_or_default())
                        }
                    };
                }
            }
        }
        out
    }
}

fn piece_len_hint(piece: &Piece) -> usize {
    match piece {
        Piece::Text(text) => text.len(),
        _ => 36,
    }
}

fn new_uuid(rng: &mut impl Rng) -> String {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string()
}

fn truncate(text: &str, max: usize) -> String {
    let tail: String = text.chars().rev().take(max).collect();
    tail.chars().rev().collect()
}

fn parse_action(action: &str) -> Result<Piece, String> {
    let words: Vec<&str> = action.split_whitespace().collect();
    let int = |word: &str| word.parse::<i64>().map_err(|_| format!("{{{{{action}}}}}: {word:?} is not an integer"));
    match words.as_slice() {
        [field] if field.starts_with('.') => Field::parse(&field[1..])
            .map(Piece::Field)
            .ok_or_else(|| format!("{{{{{action}}}}}: ghz has no call-data field {field}")),
        ["newUUID"] => Ok(Piece::NewUuid),
        ["randomString", n] => Ok(Piece::RandomString(int(n)?)),
        ["randomInt", min, max] => {
            let (min, max) = (int(min)?, int(max)?);
            if min < 0 || max < min {
                return Err(format!("{{{{{action}}}}}: randomInt needs 0 <= MIN <= MAX"));
            }
            Ok(Piece::RandomInt(min, max))
        }
        _ => Err(format!(
            "{{{{{action}}}}}: not supported (use .RequestNumber, .WorkerID, .UUID, .Timestamp*, newUUID, \
             randomString N or randomInt MIN MAX)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, n: u64) -> String {
        let names = MethodNames { method_name: "SearchPointers".into(), ..MethodNames::default() };
        Template::parse(text).expect("parses").render(&CallData::new("w3", n, &names))
    }

    #[test]
    fn plain_text_is_static_and_unchanged() {
        let t = Template::parse(r#"{"a": "b"}"#).expect("parses");
        assert!(t.is_static());
        assert_eq!(render(r#"{"a": "b"}"#, 0), r#"{"a": "b"}"#);
    }

    #[test]
    fn fields_and_functions_render() {
        assert_eq!(
            render("n={{.RequestNumber}} w={{ .WorkerID }} m={{.MethodName}}", 42),
            "n=42 w=w3 m=SearchPointers"
        );
        let uuid = render("{{newUUID}}", 0);
        assert!(uuid::Uuid::parse_str(&uuid).is_ok(), "{uuid}");
        assert_ne!(render("{{newUUID}}", 0), uuid);
        assert_eq!(render("{{randomString 8}}", 0).len(), 8);
        let n: i64 = render("{{randomInt 5 7}}", 0).parse().expect("an integer");
        assert!((5..7).contains(&n));
        let same = render("{{.UUID}}/{{.UUID}}", 0);
        let (a, b) = same.split_once('/').expect("two parts");
        assert_eq!(a, b, "UUID is one value per call");
        let names = MethodNames::default();
        let call = CallData::new("w0", 0, &names);
        let first = Template::parse("{{.UUID}}").expect("parses").render(&call);
        assert_eq!(
            Template::parse("x{{.UUID}}").expect("parses").render(&call),
            format!("x{first}"),
            "across templates"
        );
        assert!(render("{{.TimestampUnix}}", 0).parse::<i64>().is_ok());
    }

    #[test]
    fn trim_markers_trim() {
        assert_eq!(render("a  {{- .RequestNumber -}}  b", 1), "a1b");
    }

    #[test]
    fn unsupported_actions_are_refused() {
        assert!(Template::parse("{{.Nope}}").is_err());
        assert!(Template::parse("{{upper .WorkerID}}").is_err());
        assert!(Template::parse("{{randomInt 1}}").is_err());
        assert!(Template::parse("{{ .RequestNumber").is_err());
    }
}
