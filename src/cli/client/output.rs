//! How responses look on stdout: JSON for `--json` (prost types do not derive serde, so each message
//! is mapped by hand) and aligned text for people. Timestamps are RFC 3339 and enums their short
//! names ("CURRENT", "SSP") in both.

use crate::proto::nrl::v1 as pb;
use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// The short name of a proto enum value, or the raw number when this client does not know it (a
/// newer server may have added values).
fn enum_name(value: i32, known: Option<&'static str>, prefix: &str) -> String {
    match known {
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_string(),
        None => value.to_string(),
    }
}

pub fn status_name(value: i32) -> String {
    let known = pb::PointerStatus::try_from(value).ok().map(|s| s.as_str_name());
    enum_name(value, known, "POINTER_STATUS_")
}

pub fn mechanism_name(value: i32) -> String {
    let known = pb::RetrievalMechanism::try_from(value).ok().map(|m| m.as_str_name());
    enum_name(value, known, "RETRIEVAL_MECHANISM_")
}

pub fn stability_name(value: i32) -> String {
    let known = pb::Stability::try_from(value).ok().map(|s| s.as_str_name());
    enum_name(value, known, "STABILITY_")
}

pub fn region_kind_name(value: i32) -> String {
    let known = pb::RegionKind::try_from(value).ok().map(|k| k.as_str_name());
    enum_name(value, known, "REGION_KIND_")
}

/// RFC 3339 in UTC, or `None` for an absent or out-of-range timestamp.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos).map(|at| at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn timestamp_json(ts: Option<&prost_types::Timestamp>) -> Value {
    rfc3339(ts).map_or(Value::Null, Value::String)
}

fn coding_json(coding: Option<&pb::Coding>) -> Value {
    coding.map_or(Value::Null, |c| json!({ "code": c.code, "display": c.display }))
}

fn content_json(c: &pb::Content) -> Value {
    json!({
        "url": c.url,
        "content_type": c.content_type,
        "format": c.format,
        "retrieval_mechanism": mechanism_name(c.retrieval_mechanism),
        "stability": stability_name(c.stability),
    })
}

pub fn pointer_json(p: &pb::Pointer) -> Value {
    json!({
        "id": p.id,
        "nhs_number": p.nhs_number,
        "region": p.region,
        "custodian": p.custodian,
        "author": p.author,
        "type": coding_json(p.r#type.as_ref()),
        "category": coding_json(p.category.as_ref()),
        "content": p.content.iter().map(content_json).collect::<Vec<_>>(),
        "practice_setting": coding_json(p.practice_setting.as_ref()),
        "document_date": timestamp_json(p.document_date.as_ref()),
        "status": status_name(p.status),
        "supersedes": p.supersedes,
        "superseded_by": p.superseded_by,
        "producer_reference": p.producer_reference,
        "related_asid": p.related_asid,
        "version": p.version,
        "created_at": timestamp_json(p.created_at.as_ref()),
        "updated_at": timestamp_json(p.updated_at.as_ref()),
    })
}

fn optional_pointer_json(p: Option<&pb::Pointer>) -> Value {
    p.map_or(Value::Null, pointer_json)
}

pub fn create_json(r: &pb::CreatePointerResponse) -> Value {
    json!({ "pointer": optional_pointer_json(r.pointer.as_ref()), "created": r.created })
}

pub fn get_json(r: &pb::GetPointerResponse) -> Value {
    json!({ "pointer": optional_pointer_json(r.pointer.as_ref()) })
}

pub fn delete_json(r: &pb::DeletePointerResponse) -> Value {
    json!({ "pointer": optional_pointer_json(r.pointer.as_ref()) })
}

pub fn supersede_json(r: &pb::SupersedePointerResponse) -> Value {
    json!({
        "pointer": optional_pointer_json(r.pointer.as_ref()),
        "superseded": r.superseded.iter().map(pointer_json).collect::<Vec<_>>(),
        "created": r.created,
    })
}

pub fn search_json(pointers: &[pb::Pointer], next_page_token: &str) -> Value {
    json!({
        "pointers": pointers.iter().map(pointer_json).collect::<Vec<_>>(),
        "next_page_token": next_page_token,
    })
}

pub fn count_json(r: &pb::CountPointersResponse) -> Value {
    json!({ "count": r.count })
}

fn region_json(r: &pb::Region) -> Value {
    json!({
        "code": r.code,
        "name": r.name,
        "kind": region_kind_name(r.kind),
        "endpoints": r.endpoints.iter()
            .map(|e| json!({ "purpose": e.purpose, "url": e.url }))
            .collect::<Vec<_>>(),
    })
}

pub fn locate_json(r: &pb::LocatePatientResponse) -> Value {
    let regions: Vec<Value> = r
        .regions
        .iter()
        .map(|loc| {
            json!({
                "region": loc.region.as_ref().map_or(Value::Null, region_json),
                "pointer_counts": loc.pointer_counts.iter()
                    .map(|tc| json!({ "type": coding_json(tc.r#type.as_ref()), "count": tc.count }))
                    .collect::<Vec<_>>(),
                "total": loc.total,
                "last_updated": timestamp_json(loc.last_updated.as_ref()),
            })
        })
        .collect();
    json!({ "nhs_number": r.nhs_number, "regions": regions })
}

pub fn regions_json(r: &pb::ListRegionsResponse) -> Value {
    json!({ "regions": r.regions.iter().map(region_json).collect::<Vec<_>>() })
}

pub fn types_json(r: &pb::ListPointerTypesResponse) -> Value {
    let types: Vec<Value> = r
        .types
        .iter()
        .map(|t| {
            json!({
                "type": coding_json(t.r#type.as_ref()),
                "category": coding_json(t.category.as_ref()),
            })
        })
        .collect();
    json!({ "types": types })
}

/// Pretty JSON with a trailing newline, ready for stdout.
pub fn to_json_text(value: &Value) -> String {
    // Serialising a `Value` cannot fail (its map keys are always strings).
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn display(coding: Option<&pb::Coding>) -> &str {
    coding.map_or("", |c| c.display.as_str())
}

fn coding_text(coding: Option<&pb::Coding>) -> String {
    match coding {
        Some(c) if !c.code.is_empty() || !c.display.is_empty() => {
            format!("{} ({})", c.display, c.code)
        }
        _ => "-".into(),
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() {
        "-"
    } else {
        value
    }
}

/// Every field of one pointer, one per line.
pub fn pointer_text(p: &pb::Pointer) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("id".into(), p.id.clone()),
        ("nhs_number".into(), p.nhs_number.clone()),
        ("status".into(), format!("{} (version {})", status_name(p.status), p.version)),
        ("region".into(), p.region.clone()),
        ("custodian".into(), p.custodian.clone()),
        ("author".into(), or_dash(&p.author).into()),
        ("type".into(), coding_text(p.r#type.as_ref())),
        ("category".into(), coding_text(p.category.as_ref())),
    ];
    for (i, c) in p.content.iter().enumerate() {
        rows.push((
            format!("content[{i}]"),
            format!(
                "{} ({}, {}, {}, {})",
                c.url,
                c.content_type,
                c.format,
                mechanism_name(c.retrieval_mechanism),
                stability_name(c.stability)
            ),
        ));
    }
    rows.extend([
        ("practice_setting".into(), coding_text(p.practice_setting.as_ref())),
        ("document_date".into(), rfc3339(p.document_date.as_ref()).unwrap_or_else(|| "-".into())),
        ("producer_reference".into(), or_dash(&p.producer_reference).into()),
        ("related_asid".into(), or_dash(&p.related_asid).into()),
    ]);
    if !p.supersedes.is_empty() {
        rows.push(("supersedes".into(), p.supersedes.join(", ")));
    }
    if !p.superseded_by.is_empty() {
        rows.push(("superseded_by".into(), p.superseded_by.clone()));
    }
    rows.extend([
        ("created_at".into(), rfc3339(p.created_at.as_ref()).unwrap_or_else(|| "-".into())),
        ("updated_at".into(), rfc3339(p.updated_at.as_ref()).unwrap_or_else(|| "-".into())),
    ]);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    out
}

/// One line per pointer: id, region, custodian, type, status, first content url. The minimum
/// widths fit the built-in directory and catalogue, so the pages of `search --all` line up; longer
/// values from an operator's own files widen their page.
pub fn pointer_lines(pointers: &[pb::Pointer]) -> String {
    const REGION_W: usize = 3;
    const CUSTODIAN_W: usize = 6;
    const TYPE_W: usize = 37;
    let region_w = pointers.iter().map(|p| p.region.len()).fold(REGION_W, usize::max);
    let custodian_w = pointers.iter().map(|p| p.custodian.len()).fold(CUSTODIAN_W, usize::max);
    let type_w = pointers.iter().map(|p| display(p.r#type.as_ref()).chars().count()).fold(TYPE_W, usize::max);
    let mut out = String::new();
    for p in pointers {
        let url = p.content.first().map_or("-", |c| c.url.as_str());
        let _ = writeln!(
            out,
            "{}  {:<region_w$}  {:<custodian_w$}  {:<type_w$}  {:<10}  {}",
            p.id,
            p.region,
            p.custodian,
            display(p.r#type.as_ref()),
            status_name(p.status),
            url
        );
    }
    out
}

pub fn locate_text(r: &pb::LocatePatientResponse) -> String {
    let mut out = String::new();
    let noun = if r.regions.len() == 1 { "region" } else { "regions" };
    let _ = writeln!(out, "NHS number {}: records in {} {noun}", r.nhs_number, r.regions.len());
    for loc in &r.regions {
        let (code, name) = loc.region.as_ref().map_or(("?", ""), |reg| (reg.code.as_str(), reg.name.as_str()));
        let updated = rfc3339(loc.last_updated.as_ref()).unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "{code}  {name}");
        let noun = if loc.total == 1 { "pointer" } else { "pointers" };
        let _ = writeln!(out, "    {} current {noun}, last updated {updated}", loc.total);
        for endpoint in loc.region.iter().flat_map(|reg| &reg.endpoints) {
            let _ = writeln!(out, "    endpoint {}: {}", endpoint.purpose, endpoint.url);
        }
        for tc in &loc.pointer_counts {
            let _ = writeln!(out, "    {:>5}  {}", tc.count, coding_text(tc.r#type.as_ref()));
        }
    }
    out
}

pub fn regions_text(r: &pb::ListRegionsResponse) -> String {
    let name_w = r.regions.iter().map(|reg| reg.name.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for reg in &r.regions {
        let urls: Vec<&str> = reg.endpoints.iter().map(|e| e.url.as_str()).collect();
        let _ = writeln!(
            out,
            "{:<5} {:<7} {:<name_w$}  {}",
            reg.code,
            region_kind_name(reg.kind),
            reg.name,
            urls.join(" ")
        );
    }
    out
}

pub fn types_text(r: &pb::ListPointerTypesResponse) -> String {
    let code_w = r.types.iter().map(|t| t.r#type.as_ref().map_or(0, |c| c.code.len())).max().unwrap_or(0);
    let display_w = r.types.iter().map(|t| display(t.r#type.as_ref()).chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for t in &r.types {
        let code = t.r#type.as_ref().map_or("", |c| c.code.as_str());
        let _ = writeln!(
            out,
            "{code:<code_w$}  {:<display_w$}  {}",
            display(t.r#type.as_ref()),
            coding_text(t.category.as_ref())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_print_short_names_and_unknown_values_as_numbers() {
        assert_eq!(status_name(pb::PointerStatus::Current as i32), "CURRENT");
        assert_eq!(mechanism_name(pb::RetrievalMechanism::InContext as i32), "IN_CONTEXT");
        assert_eq!(stability_name(pb::Stability::Static as i32), "STATIC");
        assert_eq!(region_kind_name(pb::RegionKind::Icb as i32), "ICB");
        assert_eq!(status_name(42), "42");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = prost_types::Timestamp { seconds: 1_767_225_600, nanos: 500_000_000 };
        assert_eq!(rfc3339(Some(&ts)).as_deref(), Some("2026-01-01T00:00:00.500Z"));
        let bad = prost_types::Timestamp { seconds: 0, nanos: -1 };
        assert_eq!(rfc3339(Some(&bad)), None);
        assert_eq!(timestamp_json(None), Value::Null);
    }
}
