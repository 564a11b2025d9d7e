//! Generated protobuf types meet domain types here and nowhere else (for gRPC; the CLI and the load
//! runner are clients with their own). proto → domain validates and
//! names the offending field (`pointer.content[0].url`); domain → proto cannot fail.

use crate::domain::limits::{
    DEFAULT_PAGE_SIZE, MAX_CONTENT, MAX_DISPLAY_LEN, MAX_FILTER_VALUES, MAX_PAGE_SIZE, MAX_PAGE_TOKEN_LEN,
    MAX_SUPERSEDES,
};
use crate::domain::locate::RegionSummary;
use crate::domain::query::{decode_page_token, PageRequest, PointerQuery};
use crate::domain::ReferenceData;
use crate::domain::{
    Asid, Coding, Content, ContentFormat, ContentType, ContentUrl, NhsNumber, OdsCode, Pointer, PointerDraft,
    PointerId, PointerStatus, PointerType, ProducerReference, Region, RegionKind, RetrievalMechanism, Stability,
};
use crate::error::RegistryError;
use crate::federation::follower::FeedItem;
use crate::proto::nrl::v1 as pb;
use crate::store::index::{IndexEntry, IndexUpdate};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

type Result<T> = std::result::Result<T, RegistryError>;

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

pub fn nhs_number(input: &str, field: &str) -> Result<NhsNumber> {
    NhsNumber::parse(input).map_err(|e| RegistryError::invalid(field, e))
}

pub fn pointer_id(input: &str, field: &str) -> Result<PointerId> {
    PointerId::parse(input).map_err(|e| RegistryError::invalid(field, e))
}

fn ods(input: &str, field: &str) -> Result<OdsCode> {
    OdsCode::parse(input).map_err(|e| RegistryError::invalid(field, e))
}

/// Free text: bounded length, no control characters.
fn text(input: &str, field: &str, max: usize) -> Result<String> {
    if input.chars().count() > max {
        return Err(RegistryError::invalid(field, format!("must be at most {max} characters")));
    }
    if input.chars().any(char::is_control) {
        return Err(RegistryError::invalid(field, "must not contain control characters"));
    }
    Ok(input.trim().to_string())
}

fn snomed_code(input: &str, field: &str) -> Result<String> {
    let code = input.trim();
    if code.is_empty() {
        return Err(RegistryError::invalid(field, "is required"));
    }
    if !crate::domain::is_snomed_code(code) {
        return Err(RegistryError::invalid(field, "must be a SNOMED CT code (6 to 18 digits)"));
    }
    Ok(code.to_string())
}

pub fn timestamp(ts: &prost_types::Timestamp, field: &str) -> Result<DateTime<Utc>> {
    // Years 1900 to 2200 cover every real document date and keep arithmetic far from overflow.
    const MIN: i64 = -2_208_988_800;
    const MAX: i64 = 7_258_118_400;
    if !(MIN..=MAX).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(RegistryError::invalid(field, "must be a valid timestamp between 1900 and 2200"));
    }
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .ok_or_else(|| RegistryError::invalid(field, "must be a valid timestamp"))
}

pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

fn content(input: &pb::Content, field: &str) -> Result<Content> {
    let url = ContentUrl::parse(&input.url).map_err(|e| RegistryError::invalid(join(field, "url"), e))?;
    let content_type =
        ContentType::parse(&input.content_type).map_err(|e| RegistryError::invalid(join(field, "content_type"), e))?;
    let format = ContentFormat::parse(&input.format).map_err(|e| RegistryError::invalid(join(field, "format"), e))?;
    let retrieval_mechanism = match pb::RetrievalMechanism::try_from(input.retrieval_mechanism) {
        Ok(pb::RetrievalMechanism::Ssp) => RetrievalMechanism::Ssp,
        Ok(pb::RetrievalMechanism::Direct) => RetrievalMechanism::Direct,
        Ok(pb::RetrievalMechanism::Ldr) => RetrievalMechanism::Ldr,
        Ok(pb::RetrievalMechanism::InContext) => RetrievalMechanism::InContext,
        Ok(pb::RetrievalMechanism::Unspecified) | Err(_) => {
            return Err(RegistryError::invalid(
                join(field, "retrieval_mechanism"),
                "is required: SSP, DIRECT, LDR or IN_CONTEXT",
            ))
        }
    };
    let stability = match pb::Stability::try_from(input.stability) {
        Ok(pb::Stability::Static) => Stability::Static,
        Ok(pb::Stability::Dynamic) => Stability::Dynamic,
        Ok(pb::Stability::Unspecified) | Err(_) => {
            return Err(RegistryError::invalid(join(field, "stability"), "is required: STATIC or DYNAMIC"))
        }
    };
    Ok(Content { url, content_type, format, retrieval_mechanism, stability })
}

fn optional_coding(input: Option<&pb::Coding>, field: &str) -> Result<Option<Coding>> {
    let Some(coding) = input.filter(|c| !(c.code.is_empty() && c.display.is_empty())) else {
        return Ok(None);
    };
    Ok(Some(Coding {
        code: snomed_code(&coding.code, &join(field, "code"))?,
        display: text(&coding.display, &join(field, "display"), MAX_DISPLAY_LEN)?,
    }))
}

/// Validates what a producer sent. `prefix` is the request field holding it (e.g. `pointer`).
pub fn draft(input: Option<&pb::PointerInput>, prefix: &str, reference: &ReferenceData) -> Result<PointerDraft> {
    let input = input.ok_or_else(|| RegistryError::invalid(prefix, "is required"))?;
    let f = |name: &str| join(prefix, name);
    let nhs_number = nhs_number(&input.nhs_number, &f("nhs_number"))?;
    let region = reference.regions.parse_code(&input.region).map_err(|e| RegistryError::invalid(f("region"), e))?;
    let custodian = ods(&input.custodian, &f("custodian"))?;
    let author = match input.author.trim() {
        "" => None,
        author => Some(ods(author, &f("author"))?),
    };
    let pointer_type: PointerType =
        reference.pointer_types.pointer_type(&input.r#type).map_err(|e| RegistryError::invalid(f("type"), e))?.clone();
    reference
        .pointer_types
        .check_category(&pointer_type, &input.category)
        .map_err(|e| RegistryError::invalid(f("category"), e))?;
    if input.content.is_empty() {
        return Err(RegistryError::invalid(f("content"), "at least one content entry is required"));
    }
    if input.content.len() > MAX_CONTENT {
        return Err(RegistryError::invalid(f("content"), format!("at most {MAX_CONTENT} entries")));
    }
    let content = input
        .content
        .iter()
        .enumerate()
        .map(|(i, c)| content(c, &f(&format!("content[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    let practice_setting = optional_coding(input.practice_setting.as_ref(), &f("practice_setting"))?;
    let document_date = input.document_date.as_ref().map(|ts| timestamp(ts, &f("document_date"))).transpose()?;
    let producer_reference = match input.producer_reference.as_str() {
        "" => None,
        r => Some(ProducerReference::parse(r).map_err(|e| RegistryError::invalid(f("producer_reference"), e))?),
    };
    let related_asid = match input.related_asid.as_str() {
        "" => None,
        asid => Some(Asid::parse(asid).map_err(|e| RegistryError::invalid(f("related_asid"), e))?),
    };
    Ok(PointerDraft {
        nhs_number,
        region,
        custodian,
        author,
        pointer_type,
        content,
        practice_setting,
        document_date,
        producer_reference,
        related_asid,
    })
}

pub fn supersedes(ids: &[String]) -> Result<Vec<PointerId>> {
    if ids.is_empty() {
        return Err(RegistryError::invalid("supersedes", "name at least one pointer to supersede"));
    }
    if ids.len() > MAX_SUPERSEDES {
        return Err(RegistryError::invalid("supersedes", format!("at most {MAX_SUPERSEDES} ids")));
    }
    let mut seen = BTreeSet::new();
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let field = format!("supersedes[{i}]");
            let id = pointer_id(id, &field)?;
            if !seen.insert(id) {
                return Err(RegistryError::invalid(field, "is listed twice"));
            }
            Ok(id)
        })
        .collect()
}

fn filter_values<T: Ord>(
    values: &[String],
    field: &str,
    parse: impl Fn(&str, &str) -> Result<T>,
) -> Result<BTreeSet<T>> {
    if values.len() > MAX_FILTER_VALUES {
        return Err(RegistryError::invalid(field, format!("at most {MAX_FILTER_VALUES} values")));
    }
    values.iter().enumerate().map(|(i, v)| parse(v, &format!("{field}[{i}]"))).collect()
}

pub fn query(input: Option<&pb::PointerQuery>, reference: &ReferenceData) -> Result<PointerQuery> {
    let q = input.ok_or_else(|| RegistryError::invalid("query", "is required"))?;
    let types = &reference.pointer_types;
    let regions = &reference.regions;
    Ok(PointerQuery {
        nhs_number: nhs_number(&q.nhs_number, "query.nhs_number")?,
        types: filter_values(&q.types, "query.types", |v, f| {
            types.pointer_type(v).map(|t| t.coding.code.clone()).map_err(|e| RegistryError::invalid(f, e))
        })?,
        categories: filter_values(&q.categories, "query.categories", |v, f| {
            types.category(v).map(|c| c.code.clone()).map_err(|e| RegistryError::invalid(f, e))
        })?,
        custodians: filter_values(&q.custodians, "query.custodians", ods)?,
        regions: filter_values(&q.regions, "query.regions", |v, f| {
            regions.parse_code(v).map_err(|e| RegistryError::invalid(f, e))
        })?,
        include_superseded: q.include_superseded,
    })
}

/// Page size: 0 → default, negative → error, above the maximum → the maximum.
pub fn page_request(page_size: i32, page_token: &str, query: &PointerQuery) -> Result<PageRequest> {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => return Err(RegistryError::invalid("page_size", "must not be negative")),
        n => (n as usize).min(MAX_PAGE_SIZE),
    };
    if page_token.len() > MAX_PAGE_TOKEN_LEN {
        return Err(RegistryError::invalid("page_token", "is not a page token from this service"));
    }
    let after = match page_token {
        "" => None,
        token => Some(decode_page_token(token, query).map_err(|e| RegistryError::invalid("page_token", e))?),
    };
    Ok(PageRequest { size, after })
}

fn coding(c: &Coding) -> pb::Coding {
    pb::Coding { code: c.code.clone(), display: c.display.clone() }
}

impl From<Content> for pb::Content {
    fn from(c: Content) -> Self {
        pb::Content {
            content_type: c.content_type.as_str().to_string(),
            format: c.format.as_str().to_string(),
            retrieval_mechanism: match c.retrieval_mechanism {
                RetrievalMechanism::Ssp => pb::RetrievalMechanism::Ssp,
                RetrievalMechanism::Direct => pb::RetrievalMechanism::Direct,
                RetrievalMechanism::Ldr => pb::RetrievalMechanism::Ldr,
                RetrievalMechanism::InContext => pb::RetrievalMechanism::InContext,
            } as i32,
            stability: match c.stability {
                Stability::Static => pb::Stability::Static,
                Stability::Dynamic => pb::Stability::Dynamic,
            } as i32,
            url: c.url.into_string(),
        }
    }
}

/// By value: an answer's pointers are moved into the message, not copied (a search answers with
/// up to a page of them). Ids and NHS numbers are written without `fmt`.
impl From<Pointer> for pb::Pointer {
    fn from(p: Pointer) -> Self {
        let d = p.draft;
        pb::Pointer {
            id: p.id.to_text(),
            nhs_number: d.nhs_number.to_digits(),
            region: d.region.into_string(),
            custodian: d.custodian.into_string(),
            author: d.author.map(OdsCode::into_string).unwrap_or_default(),
            r#type: Some(pb::Coding { code: d.pointer_type.coding.code, display: d.pointer_type.coding.display }),
            category: Some(pb::Coding { code: d.pointer_type.category.code, display: d.pointer_type.category.display }),
            content: d.content.into_iter().map(pb::Content::from).collect(),
            practice_setting: d.practice_setting.map(|c| pb::Coding { code: c.code, display: c.display }),
            document_date: d.document_date.map(to_timestamp),
            status: match p.status {
                PointerStatus::Current => pb::PointerStatus::Current,
                PointerStatus::Superseded => pb::PointerStatus::Superseded,
            } as i32,
            supersedes: p.supersedes.iter().map(PointerId::to_text).collect(),
            superseded_by: p.superseded_by.map(|id| id.to_text()).unwrap_or_default(),
            producer_reference: d.producer_reference.map(ProducerReference::into_string).unwrap_or_default(),
            version: p.version,
            created_at: Some(to_timestamp(p.created_at)),
            updated_at: Some(to_timestamp(p.updated_at)),
            related_asid: d.related_asid.map(Asid::into_string).unwrap_or_default(),
        }
    }
}

impl From<&Pointer> for pb::Pointer {
    fn from(p: &Pointer) -> Self {
        p.clone().into()
    }
}

impl From<&Region> for pb::Region {
    fn from(r: &Region) -> Self {
        pb::Region {
            code: r.code.to_string(),
            name: r.name.clone(),
            kind: match r.kind {
                RegionKind::Icb => pb::RegionKind::Icb,
                RegionKind::Nation => pb::RegionKind::Nation,
            } as i32,
            endpoints: r
                .endpoints
                .iter()
                .map(|e| pb::Endpoint { purpose: e.purpose.clone(), url: e.url.clone() })
                .collect(),
        }
    }
}

/// A region summary joined with the directory entry (a region since dropped from the directory
/// still shows, by code, so no pointer is hidden).
pub fn region_location(summary: &RegionSummary, reference: &ReferenceData) -> pb::RegionLocation {
    let region = match reference.regions.get(&summary.region) {
        Some(region) => pb::Region::from(region),
        None => pb::Region { code: summary.region.to_string(), ..Default::default() },
    };
    pb::RegionLocation {
        region: Some(region),
        pointer_counts: summary
            .counts
            .iter()
            .map(|(ty, count)| pb::TypeCount { r#type: Some(coding(ty)), count: *count })
            .collect(),
        total: summary.total,
        last_updated: Some(to_timestamp(summary.last_updated)),
    }
}

pub fn pointer_type_entry(ty: &PointerType) -> pb::PointerTypeEntry {
    pb::PointerTypeEntry { r#type: Some(coding(&ty.coding)), category: Some(coding(&ty.category)) }
}

/// A pointer from another node's feed or snapshot, as the national index keeps it: the entry when
/// the pointer is current, `None` when it was deleted or superseded, or nothing when the index
/// cannot read it.
fn index_update(p: &pb::Pointer, deleted: bool, reference: &ReferenceData) -> Option<IndexUpdate> {
    let nhs_number = nhs_number(&p.nhs_number, "pointer.nhs_number").ok()?;
    let id = pointer_id(&p.id, "pointer.id").ok()?;
    let current = p.status == pb::PointerStatus::Current as i32 && !deleted;
    let entry = if current {
        let region = reference.regions.parse_code(&p.region).ok()?;
        let code = p.r#type.as_ref()?.code.clone();
        // A type this node's catalogue does not know yet still locates the patient.
        let pointer_type = match reference.pointer_types.pointer_type(&code) {
            Ok(t) => t.coding.clone(),
            Err(_) => Coding { display: code.clone(), code },
        };
        let updated_at = timestamp(p.updated_at.as_ref()?, "pointer.updated_at").ok()?;
        Some(IndexEntry { id, region, pointer_type, updated_at, generation: 0 })
    } else {
        None
    };
    Some(IndexUpdate { nhs_number, id, current: entry })
}

/// One change of a regional node's feed, as the follower applies it.
pub fn feed_item(change: &pb::PointerChange, reference: &ReferenceData) -> FeedItem {
    let restricted = match pb::ChangeKind::try_from(change.kind) {
        Ok(pb::ChangeKind::Restricted) => Some(true),
        Ok(pb::ChangeKind::Unrestricted) => Some(false),
        _ => None,
    };
    if let Some(restricted) = restricted {
        return match NhsNumber::parse(&change.nhs_number) {
            Ok(nhs_number) => FeedItem::Restriction { nhs_number, restricted },
            Err(_) => FeedItem::Unreadable("a restriction change without a valid NHS number"),
        };
    }
    let deleted = change.kind == pb::ChangeKind::Deleted as i32;
    match change.pointer.as_ref().and_then(|p| index_update(p, deleted, reference)) {
        Some(update) => FeedItem::Pointer(update),
        None => FeedItem::Unreadable("a pointer change the index cannot read"),
    }
}

/// One item of a regional node's snapshot (after its leading cursor), as the follower applies it.
pub fn snapshot_item(item: pb::SnapshotItem, reference: &ReferenceData) -> FeedItem {
    match item.item {
        Some(pb::snapshot_item::Item::Pointer(p)) => match index_update(&p, false, reference) {
            Some(update) => FeedItem::Pointer(update),
            None => FeedItem::Unreadable("a snapshot pointer the index cannot read"),
        },
        Some(pb::snapshot_item::Item::RestrictedNhsNumber(nhs)) => match NhsNumber::parse(&nhs) {
            Ok(nhs_number) => FeedItem::Restriction { nhs_number, restricted: true },
            Err(_) => FeedItem::Unreadable("a snapshot restriction without a valid NHS number"),
        },
        Some(pb::snapshot_item::Item::Cursor(_)) | None => {
            FeedItem::Unreadable("a snapshot item that is not a pointer")
        }
    }
}
