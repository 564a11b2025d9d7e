//! The compact stored form of an audit event: a private protobuf message (prost), ~100 bytes for a
//! typical read. The Redis store keeps it in the patients' logs and the export; the memory store
//! keeps its bounded log in it too, so a retained event costs bytes, not a struct of strings.

use super::AuditEvent;
use crate::domain::{NhsNumber, PointerId};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use prost::Message;

fn corrupt<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

fn id_from(bytes: &[u8]) -> Result<PointerId, StoreError> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt("a pointer id is not 16 bytes".into()))?;
    Ok(PointerId::from_bytes(bytes))
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredAuditEvent {
    #[prost(int64, tag = "1")]
    time_ms: i64,
    #[prost(string, tag = "2")]
    application: String,
    #[prost(string, tag = "3")]
    organisation: String,
    #[prost(string, optional, tag = "4")]
    end_user: Option<String>,
    #[prost(string, optional, tag = "5")]
    purpose: Option<String>,
    #[prost(string, tag = "6")]
    operation: String,
    #[prost(uint64, tag = "7")]
    nhs_number: u64,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pointer_ids: Vec<Vec<u8>>,
    #[prost(string, tag = "9")]
    outcome: String,
    #[prost(bool, tag = "10")]
    break_glass: bool,
    /// Set when the call named no valid patient (`nhs_number` is then 0, itself a valid number);
    /// absent in events stored before there were such events.
    #[prost(bool, tag = "11")]
    no_patient: bool,
    #[prost(bool, tag = "12")]
    export_only: bool,
}

pub fn encode(event: &AuditEvent) -> Vec<u8> {
    StoredAuditEvent {
        time_ms: event.time.timestamp_millis(),
        application: event.application.clone(),
        organisation: event.organisation.clone(),
        end_user: event.end_user.clone(),
        purpose: event.purpose.clone(),
        operation: event.operation.clone(),
        nhs_number: event.nhs_number.map_or(0, NhsNumber::as_u64),
        pointer_ids: event.pointer_ids.iter().map(|id| id.as_bytes().to_vec()).collect(),
        outcome: event.outcome.clone(),
        break_glass: event.break_glass,
        no_patient: event.nhs_number.is_none(),
        export_only: event.export_only,
    }
    .encode_to_vec()
}

pub fn decode(cursor: String, bytes: &[u8]) -> Result<AuditEvent, StoreError> {
    let stored = StoredAuditEvent::decode(bytes).map_err(corrupt("audit event"))?;
    Ok(AuditEvent {
        cursor: Some(cursor),
        time: millis(stored.time_ms)?,
        application: stored.application,
        organisation: stored.organisation,
        end_user: stored.end_user,
        purpose: stored.purpose,
        operation: stored.operation,
        nhs_number: match stored.no_patient {
            true => None,
            false => {
                Some(NhsNumber::parse(&format!("{:010}", stored.nhs_number)).map_err(corrupt("audit NHS number"))?)
            }
        },
        pointer_ids: stored.pointer_ids.iter().map(|b| id_from(b)).collect::<Result<_, _>>()?,
        outcome: stored.outcome,
        break_glass: stored.break_glass,
        export_only: stored.export_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{nhs, pointer};

    #[test]
    fn events_round_trip_compactly() {
        let p = pointer("9434765919", "QWO", "RR8", "736253002");
        let event = AuditEvent {
            cursor: Some("7".into()),
            time: p.created_at,
            application: "portal-app".into(),
            organisation: "RR8".into(),
            end_user: Some("dr-who".into()),
            purpose: Some("direct-care".into()),
            operation: "SearchPointers".into(),
            nhs_number: Some(nhs("9434765919")),
            pointer_ids: vec![p.id, p.id],
            outcome: "OK".into(),
            break_glass: true,
            export_only: false,
        };
        let bytes = encode(&event);
        assert!(bytes.len() < 120, "{} bytes", bytes.len());
        assert_eq!(decode("7".into(), &bytes), Ok(event.clone()));
        assert!(decode("0".into(), b"\xff\xff garbage").is_err());
        // A refusal naming no valid patient, and one of patient 0000000000 (a valid number).
        let nobody = AuditEvent {
            cursor: Some("8".into()),
            nhs_number: None,
            outcome: "INVALID_ARGUMENT".into(),
            export_only: true,
            break_glass: false,
            ..event.clone()
        };
        assert_eq!(decode("8".into(), &encode(&nobody)), Ok(nobody));
        let zero = AuditEvent { cursor: Some("9".into()), nhs_number: Some(nhs("0000000000")), ..event };
        assert_eq!(decode("9".into(), &encode(&zero)), Ok(zero));
    }
}
