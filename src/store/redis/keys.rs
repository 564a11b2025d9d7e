//! Key layout. Every key of one patient carries the NHS number as its hash tag, so on Redis Cluster
//! they share a slot and a Lua script can change them together atomically.
//!
//! One key per patient, `nrl:{NHS}:p`, a HASH holding two kinds of field:
//! - pointer id (16 raw bytes) → 8-byte big-endian version ‖ encoded pointer;
//! - `r|CUSTODIAN|producer_reference` → pointer id (16 raw bytes), the patient's reference index.
//!
//! The two cannot collide: an id's first byte is the top of its millisecond timestamp (0x01 until
//! the year 2527), never `r`. One key rather than two saves a key and a hash header per patient,
//! which is most of the per-patient overhead.
//!
//! - `x|restricted` → `1` while the patient is restricted.
//!
//! Beside it, in the same slot: `nrl:{NHS}:a`, a LIST of the patient's audit events, appended to
//! and never trimmed (GetAccessLog reads it; a position in it is the page token). A list rather
//! than a stream: a small stream costs several hundred bytes of structure, a small list a fraction
//! of that, and the log needs nothing a stream adds. And globally: `nrl:audit`, a STREAM of every
//! audit event with bounded retention (the export a SIEM shipper tails), and `nrl:meta:id-key`,
//! the 32-byte key of the pointer-id codec.

use crate::domain::{NhsNumber, OdsCode, ProducerReference};

pub const ID_KEY: &str = "nrl:meta:id-key";
pub const AUDIT_EXPORT: &str = "nrl:audit";
/// The change feed (standalone Redis): every change, appended by the write script itself.
pub const FEED: &str = "nrl:feed";

/// National index of one patient: pointer id → region, type, update time. Same slot as the patient.
pub fn index(nhs: NhsNumber) -> String {
    format!("nrl:{{{nhs}}}:i")
}

/// In a patient's national index hash: `x|r|REGION` → generation, while REGION's node restricts
/// the patient. Cannot collide with a pointer id field (16 bytes starting 0x01).
pub fn region_restriction_field(region: &crate::domain::RegionCode) -> String {
    format!("x|r|{region}")
}

/// The region of a `region_restriction_field`, or `None` for a pointer's entry.
pub fn restricting_region(field: &[u8]) -> Option<&str> {
    std::str::from_utf8(field.strip_prefix(b"x|r|")?).ok()
}

/// How far the national node has followed a regional node's feed.
pub fn follow_cursor(source: &str) -> String {
    format!("nrl:meta:follow:{source}")
}
pub const RESTRICTED_FIELD: &str = "x|restricted";

/// The patient's access log (a LIST).
pub fn audit(nhs: NhsNumber) -> String {
    format!("nrl:{{{nhs}}}:a")
}

pub fn pointers(nhs: NhsNumber) -> String {
    format!("nrl:{{{nhs}}}:p")
}

/// The patient a patient key (`nrl:{NHS}:…`) belongs to.
pub fn patient_of(key: &str) -> Option<NhsNumber> {
    let tag = key.strip_prefix("nrl:{")?.split_once('}')?.0;
    NhsNumber::parse(tag).ok()
}

/// The field of a reference in the patient's hash. Neither part can contain `|`.
pub fn reference_field(custodian: &OdsCode, reference: &ProducerReference) -> String {
    format!("r|{custodian}|{}", reference.as_str())
}

/// True for the fields that hold pointers (as opposed to reference entries).
pub fn is_pointer_field(field: &[u8]) -> bool {
    field.len() == 16 && !field.starts_with(b"r|")
}

/// The Redis Cluster slot of a patient's keys: CRC16/XMODEM of the hash tag, mod 16384.
pub fn slot(nhs: NhsNumber) -> u16 {
    crc16_xmodem(nhs.to_string().as_bytes()) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_specification() {
        // The reference value from the Redis Cluster spec: CRC16 of "123456789" is 0x31C3.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        // CLUSTER KEYSLOT foo = 12182.
        assert_eq!(crc16_xmodem(b"foo") % 16384, 12182);
    }

    #[test]
    fn a_patients_keys_share_the_tag() {
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        assert_eq!(pointers(nhs), "nrl:{9434765919}:p");
        assert_eq!(patient_of(&pointers(nhs)), Some(nhs));
        assert_eq!(patient_of(&audit(nhs)), Some(nhs));
        assert_eq!(patient_of("nrl:meta:id-key"), None);
        assert_eq!(patient_of("nrl:{123}:p"), None);
        let field =
            reference_field(&OdsCode::parse("RR8").expect("ods"), &ProducerReference::parse("D-1").expect("ref"));
        assert!(!is_pointer_field(field.as_bytes()));
        assert!(is_pointer_field(crate::domain::PointerIdCodec::random().generate(nhs).as_bytes()));
    }
}
