//! How a pointer is stored: a private protobuf message (prost), not JSON and not the public API
//! message. The NHS number and the id are already in the key and field, category and displays come
//! from the catalogue, timestamps are milliseconds and vocabularies are small integers. A typical
//! pointer takes about 120 bytes.
//!
//! The value is `version (8 bytes, big-endian) ‖ message`, so the write script can check a version
//! by comparing 8 bytes, without decoding protobuf in Lua.
//!
//! Compatibility: fields are only ever added, with new tags, and a field a value does not hold
//! decodes as absent (so values written before the field existed still decode, and a pointer that
//! does not use it is stored byte for byte as before). Vocabulary codes are positions in the
//! domain's `ALL` lists, which are append-only.

use crate::domain::{
    Asid, Coding, Content, ContentFormat, ContentType, ContentUrl, NhsNumber, OdsCode, Pointer, PointerDraft,
    PointerId, PointerStatus, PointerType, PointerTypeCatalogue, ProducerReference, RegionCode, RetrievalMechanism,
    Stability,
};
use crate::store::feed::{Change, ChangeBody, ChangeKind};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct StoredPointer {
    #[prost(string, tag = "1")]
    region: String,
    #[prost(string, tag = "2")]
    custodian: String,
    #[prost(string, tag = "3")]
    author: String,
    #[prost(uint64, tag = "4")]
    type_code: u64,
    #[prost(message, repeated, tag = "5")]
    content: Vec<StoredContent>,
    #[prost(uint64, tag = "6")]
    practice_code: u64,
    #[prost(string, tag = "7")]
    practice_display: String,
    #[prost(int64, optional, tag = "8")]
    document_seconds: Option<i64>,
    #[prost(uint32, tag = "9")]
    document_nanos: u32,
    #[prost(bool, tag = "10")]
    superseded: bool,
    #[prost(bytes = "vec", repeated, tag = "11")]
    supersedes: Vec<Vec<u8>>,
    #[prost(bytes = "vec", tag = "12")]
    superseded_by: Vec<u8>,
    #[prost(string, tag = "13")]
    producer_reference: String,
    #[prost(int64, tag = "14")]
    created_ms: i64,
    #[prost(int64, tag = "15")]
    updated_ms: i64,
    /// 12 digits as a number (about 6 bytes instead of 14), zero-padded back; absent when none.
    #[prost(uint64, optional, tag = "16")]
    related_asid: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredContent {
    #[prost(string, tag = "1")]
    url: String,
    #[prost(uint32, tag = "2")]
    content_type: u32,
    #[prost(uint32, tag = "3")]
    format: u32,
    #[prost(uint32, tag = "4")]
    retrieval_mechanism: u32,
    #[prost(uint32, tag = "5")]
    stability: u32,
}

fn position<T: PartialEq>(all: &[T], value: &T) -> u32 {
    all.iter().position(|v| v == value).unwrap_or(0) as u32
}

fn at<T: Copy>(all: &[T], code: u32, what: &str) -> Result<T, StoreError> {
    all.get(code as usize).copied().ok_or_else(|| StoreError::Corrupt(format!("unknown {what} code {code}")))
}

/// The 8-byte version prefix.
pub fn version_bytes(version: u64) -> [u8; 8] {
    version.to_be_bytes()
}

pub fn encode(pointer: &Pointer) -> Vec<u8> {
    let d = &pointer.draft;
    let stored = StoredPointer {
        region: d.region.to_string(),
        custodian: d.custodian.to_string(),
        author: d.author.as_ref().map(ToString::to_string).unwrap_or_default(),
        type_code: d.pointer_type.coding.code.parse().unwrap_or(0),
        content: d
            .content
            .iter()
            .map(|c| StoredContent {
                url: c.url.as_str().to_string(),
                content_type: position(ContentType::ALL, &c.content_type),
                format: position(ContentFormat::ALL, &c.format),
                retrieval_mechanism: position(RetrievalMechanism::ALL, &c.retrieval_mechanism),
                stability: position(Stability::ALL, &c.stability),
            })
            .collect(),
        practice_code: d.practice_setting.as_ref().and_then(|c| c.code.parse().ok()).unwrap_or(0),
        practice_display: d.practice_setting.as_ref().map(|c| c.display.clone()).unwrap_or_default(),
        document_seconds: d.document_date.map(|t| t.timestamp()),
        document_nanos: d.document_date.map(|t| t.timestamp_subsec_nanos()).unwrap_or(0),
        superseded: pointer.status == PointerStatus::Superseded,
        supersedes: pointer.supersedes.iter().map(|id| id.as_bytes().to_vec()).collect(),
        superseded_by: pointer.superseded_by.map(|id| id.as_bytes().to_vec()).unwrap_or_default(),
        producer_reference: d.producer_reference.as_ref().map(|r| r.as_str().to_string()).unwrap_or_default(),
        created_ms: pointer.created_at.timestamp_millis(),
        updated_ms: pointer.updated_at.timestamp_millis(),
        related_asid: d.related_asid.as_ref().and_then(|a| a.as_str().parse().ok()),
    };
    let mut value = Vec::with_capacity(8 + stored.encoded_len());
    value.extend_from_slice(&version_bytes(pointer.version));
    // Encoding into a Vec cannot run out of space.
    let _ = stored.encode(&mut value);
    value
}

fn id_from(bytes: &[u8]) -> Result<PointerId, StoreError> {
    let raw: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt(format!("id of {} bytes", bytes.len())))?;
    Ok(PointerId::from_bytes(raw))
}

fn millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")))
}

fn corrupt<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

/// Decodes a stored value. The catalogue supplies the type's display and category; a type since
/// dropped from the catalogue still decodes, showing its code.
pub fn decode(
    nhs_number: NhsNumber,
    id_bytes: &[u8],
    value: &[u8],
    catalogue: &PointerTypeCatalogue,
) -> Result<Pointer, StoreError> {
    if value.len() < 8 {
        return Err(StoreError::Corrupt("value shorter than its version prefix".into()));
    }
    let (version, body) = value.split_at(8);
    let mut raw_version = [0u8; 8];
    raw_version.copy_from_slice(version);
    let stored = StoredPointer::decode(body).map_err(corrupt("pointer"))?;
    let pointer_type = match catalogue.pointer_type_by_number(stored.type_code) {
        Some(t) => t.clone(),
        None => PointerType {
            coding: Coding { code: stored.type_code.to_string(), display: stored.type_code.to_string() },
            category: Coding { code: String::new(), display: String::new() },
        },
    };
    let content = stored
        .content
        .into_iter()
        .map(|c| {
            Ok(Content {
                url: ContentUrl::from_stored(c.url).map_err(corrupt("content url"))?,
                content_type: at(ContentType::ALL, c.content_type, "content type")?,
                format: at(ContentFormat::ALL, c.format, "format")?,
                retrieval_mechanism: at(RetrievalMechanism::ALL, c.retrieval_mechanism, "retrieval mechanism")?,
                stability: at(Stability::ALL, c.stability, "stability")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let document_date = match stored.document_seconds {
        Some(seconds) => Some(
            DateTime::from_timestamp(seconds, stored.document_nanos)
                .ok_or_else(|| StoreError::Corrupt("document date".into()))?,
        ),
        None => None,
    };
    let draft = PointerDraft {
        nhs_number,
        region: RegionCode::parse(&stored.region).ok_or_else(|| StoreError::Corrupt("region".into()))?,
        custodian: OdsCode::parse(&stored.custodian).map_err(corrupt("custodian"))?,
        author: match stored.author.as_str() {
            "" => None,
            author => Some(OdsCode::parse(author).map_err(corrupt("author"))?),
        },
        pointer_type,
        content,
        practice_setting: (stored.practice_code != 0)
            .then(|| Coding { code: stored.practice_code.to_string(), display: stored.practice_display }),
        document_date,
        producer_reference: match stored.producer_reference.as_str() {
            "" => None,
            r => Some(ProducerReference::parse(r).map_err(corrupt("producer reference"))?),
        },
        related_asid: stored
            .related_asid
            .map(|asid| Asid::parse(&format!("{asid:012}")).map_err(corrupt("related ASID")))
            .transpose()?,
    };
    Ok(Pointer {
        id: id_from(id_bytes)?,
        draft,
        status: if stored.superseded { PointerStatus::Superseded } else { PointerStatus::Current },
        supersedes: stored.supersedes.iter().map(|b| id_from(b)).collect::<Result<_, _>>()?,
        superseded_by: match stored.superseded_by.as_slice() {
            [] => None,
            bytes => Some(id_from(bytes)?),
        },
        version: u64::from_be_bytes(raw_version),
        created_at: millis(stored.created_ms)?,
        updated_at: millis(stored.updated_ms)?,
    })
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredChange {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(uint64, tag = "2")]
    nhs_number: u64,
    #[prost(bytes = "vec", tag = "3")]
    id: Vec<u8>,
    /// The stored pointer value (version ‖ message).
    #[prost(bytes = "vec", tag = "4")]
    value: Vec<u8>,
}

const CHANGE_KINDS: [ChangeKind; 4] =
    [ChangeKind::Created, ChangeKind::Updated, ChangeKind::Superseded, ChangeKind::Deleted];
/// Stored kinds after the pointer kinds: a restriction set, and lifted (no id, no value).
const RESTRICTED: u32 = 4;
const UNRESTRICTED: u32 = 5;

/// A change, given the pointer's stored value when the caller has it already (`encode(pointer)`).
pub fn encode_change(change: &Change, value: Option<&[u8]>) -> Vec<u8> {
    match &change.body {
        ChangeBody::Pointer { kind, pointer } => StoredChange {
            kind: position(&CHANGE_KINDS, kind),
            nhs_number: pointer.draft.nhs_number.as_u64(),
            id: pointer.id.as_bytes().to_vec(),
            value: value.map_or_else(|| encode(pointer), <[u8]>::to_vec),
        },
        ChangeBody::Restriction { nhs_number, restricted } => StoredChange {
            kind: if *restricted { RESTRICTED } else { UNRESTRICTED },
            nhs_number: nhs_number.as_u64(),
            id: Vec::new(),
            value: Vec::new(),
        },
    }
    .encode_to_vec()
}

pub fn decode_change(cursor: String, bytes: &[u8], catalogue: &PointerTypeCatalogue) -> Result<Change, StoreError> {
    let stored = StoredChange::decode(bytes).map_err(corrupt("change"))?;
    let nhs = NhsNumber::parse(&format!("{:010}", stored.nhs_number)).map_err(corrupt("change NHS number"))?;
    let body = match stored.kind {
        RESTRICTED | UNRESTRICTED => ChangeBody::Restriction { nhs_number: nhs, restricted: stored.kind == RESTRICTED },
        kind => ChangeBody::Pointer {
            kind: at(&CHANGE_KINDS, kind, "change kind")?,
            pointer: Box::new(decode(nhs, &stored.id, &stored.value, catalogue)?),
        },
    };
    Ok(Change { cursor: Some(cursor), body })
}

/// An index entry's value: `region|type|updated ms`, then `|generation` when written by a resync.
pub fn encode_index_entry(entry: &crate::store::index::IndexEntry) -> String {
    let base = format!("{}|{}|{}", entry.region, entry.pointer_type.code, entry.updated_at.timestamp_millis());
    match entry.generation {
        0 => base,
        generation => format!("{base}|{generation}"),
    }
}

pub fn decode_index_entry(
    id: &[u8],
    value: &str,
    catalogue: &PointerTypeCatalogue,
) -> Result<crate::store::index::IndexEntry, StoreError> {
    let mut parts = value.splitn(4, '|');
    let (Some(region), Some(code), Some(ms)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(StoreError::Corrupt("index entry".into()));
    };
    let generation = match parts.next() {
        None => 0,
        Some(generation) => generation.parse().map_err(corrupt("index generation"))?,
    };
    let pointer_type = match catalogue.pointer_type(code) {
        Ok(t) => t.coding.clone(),
        Err(_) => Coding { code: code.to_string(), display: code.to_string() },
    };
    Ok(crate::store::index::IndexEntry {
        id: id_from(id)?,
        region: RegionCode::parse(region).ok_or_else(|| StoreError::Corrupt("index region".into()))?,
        pointer_type,
        updated_at: millis(ms.parse().map_err(corrupt("index time"))?)?,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::pointer;
    use chrono::TimeZone;

    #[test]
    fn pointers_round_trip_exactly() {
        let catalogue = PointerTypeCatalogue::default_catalogue();
        let mut p = pointer("9434765919", "QWO", "RR8", "736253002");
        p.draft.author = OdsCode::parse("Y05868").ok();
        p.draft.practice_setting = Some(Coding { code: "390826005".into(), display: "Mental health".into() });
        p.draft.document_date = Utc.timestamp_opt(1_700_000_000, 123_456_789).single();
        p.draft.producer_reference = ProducerReference::parse("DOC-1").ok();
        p.draft.related_asid = Asid::parse("000000000042").ok();
        p.status = PointerStatus::Superseded;
        p.superseded_by = Some(pointer("9434765919", "QWO", "RR8", "736253002").id);
        p.supersedes = vec![pointer("9434765919", "QWO", "RR8", "736253002").id];
        p.version = 7;
        let value = encode(&p);
        assert_eq!(&value[..8], &7u64.to_be_bytes());
        let back = decode(p.draft.nhs_number, p.id.as_bytes(), &value, &catalogue).expect("decodes");
        assert_eq!(back, p);
    }

    /// `pointer("9434765919", "QWO", "RR8", "736253002")` at version 3, as stored before pointers
    /// had a related ASID (tag 16).
    const BEFORE_RELATED_ASID: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 3, // version
        0x0a, 3, b'Q', b'W', b'O', // 1: region
        0x12, 3, b'R', b'R', b'8', // 2: custodian
        0x20, 0xca, 0xa8, 0x89, 0xdf, 0x02, // 4: type code 736253002
        0x2a, 32, // 5: one content entry of 32 bytes
        0x0a, 28, b'h', b't', b't', b'p', b's', b':', b'/', b'/', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'n',
        b'h', b's', b'.', b'u', b'k', b'/', b'd', b'o', b'c', b'/', b'1', // its url
        0x20, 1, // its retrieval mechanism: Direct
        0x70, 0x88, 0x99, 0xa6, 0xe5, 0xb7, 0x33, // 14: created 2026-01-02T03:04:05Z in ms
        0x78, 0x88, 0x99, 0xa6, 0xe5, 0xb7, 0x33, // 15: updated, the same
    ];

    #[test]
    fn values_stored_before_the_related_asid_still_decode_without_one() {
        let catalogue = PointerTypeCatalogue::default_catalogue();
        let mut expected = pointer("9434765919", "QWO", "RR8", "736253002");
        expected.version = 3;
        let back = decode(expected.draft.nhs_number, expected.id.as_bytes(), BEFORE_RELATED_ASID, &catalogue)
            .expect("an old value decodes");
        assert_eq!(back.draft.related_asid, None);
        assert_eq!(back, expected);
        assert_eq!(encode(&expected), BEFORE_RELATED_ASID, "a pointer without one is stored as before");
    }

    #[test]
    fn a_related_asid_out_of_range_is_reported() {
        let catalogue = PointerTypeCatalogue::default_catalogue();
        let p = pointer("9434765919", "QWO", "RR8", "736253002");
        let mut value = encode(&p);
        // Tag 16, varint 10^12: thirteen digits.
        value.extend_from_slice(&[0x80, 0x01]);
        prost::encoding::encode_varint(1_000_000_000_000, &mut value);
        let refusal = decode(p.draft.nhs_number, p.id.as_bytes(), &value, &catalogue).expect_err("13 digits");
        assert!(matches!(refusal, StoreError::Corrupt(ref what) if what.contains("related ASID")), "{refusal:?}");
    }

    #[test]
    fn a_typical_pointer_is_compact() {
        let mut p = pointer("9434765919", "QWO", "RR8", "736253002");
        p.draft.producer_reference = ProducerReference::parse("QWO-RR8-0000000001").ok();
        let len = encode(&p).len();
        assert!(len <= 120, "a typical pointer encodes to {len} bytes");
    }

    #[test]
    fn changes_round_trip_pointers_and_restrictions() {
        let catalogue = PointerTypeCatalogue::default_catalogue();
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        for restricted in [true, false] {
            let change = Change::restriction(nhs, restricted);
            let back = decode_change("1-0".into(), &encode_change(&change, None), &catalogue).expect("decodes");
            assert_eq!(back, Change { cursor: Some("1-0".into()), ..change });
        }
        let p = pointer("9434765919", "QWO", "RR8", "736253002");
        let change = crate::store::feed::changes_of(&crate::store::PatientWrite {
            audit: None,
            nhs_number: p.draft.nhs_number,
            conditions: vec![],
            deletes: vec![],
            puts: vec![p.clone()],
        })
        .remove(0);
        let value = encode(&p);
        for given in [None, Some(value.as_slice())] {
            let back = decode_change("2-0".into(), &encode_change(&change, given), &catalogue).expect("decodes");
            assert_eq!(back, Change { cursor: Some("2-0".into()), ..change.clone() });
        }
    }

    #[test]
    fn garbage_is_reported_not_panicked() {
        let catalogue = PointerTypeCatalogue::default_catalogue();
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        for value in [&b""[..], &b"short"[..], &[0u8; 8][..], &[0xff; 40][..]] {
            assert!(decode(nhs, &[0; 16], value, &catalogue).is_err(), "{value:?}");
        }
        assert!(decode(nhs, &[0; 3], &encode(&pointer("9434765919", "QWO", "RR8", "736253002")), &catalogue).is_err());
    }
}
