//! Pointer ids: UUIDv7 values that also say, to this registry only, which patient they belong to.
//!
//! Why: on Redis Cluster a patient's pointers live in the patient's hash slot. A global id → patient
//! index would cost a cross-slot write on every create and ~80 bytes per pointer. Instead the low 34
//! bits of each id hold the patient's NHS number XOR a keystream: HMAC-SHA256, under a secret
//! registry key, of the id's other 94 bits. With the key, `patient_of(id)` is a computation. Without
//! it the id reveals nothing about the patient, so ids can appear in logs and URLs.
//!
//! Layout (128 bits): unix ms (48) | version 7 (4) | counter high (12) | variant 0b10 (2) |
//! counter low (28) | NHS number ⊕ keystream (34). The 40-bit counter starts at a random value each
//! millisecond and counts up within it, so the ids one process generates strictly increase.

use super::NhsNumber;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A pointer id. Any UUID parses; only ids this registry generated resolve to a patient.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PointerId(Uuid);

impl PointerId {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        if input.trim().is_empty() {
            return Err("is required");
        }
        Uuid::try_parse(input.trim()).map(Self).map_err(|_| "must be a UUID")
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The hyphenated lower-case text `Display` gives, without the formatting machinery (every
    /// pointer in every answer carries its id as text).
    pub fn to_text(&self) -> String {
        let mut buffer = Uuid::encode_buffer();
        String::from(&*self.0.hyphenated().encode_lower(&mut buffer))
    }
}

impl fmt::Display for PointerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

const NHS_BITS: u32 = 34;
const NHS_MASK: u128 = (1 << NHS_BITS) - 1;
const COUNTER_BITS: u32 = 40;
/// A fresh millisecond starts its counter below half the range, so it can count up a long way.
const COUNTER_START_MASK: u64 = (1 << (COUNTER_BITS - 1)) - 1;

/// Generates ids for patients and recovers the patient from an id.
pub struct PointerIdCodec {
    key: [u8; 32],
    last: Mutex<(u64, u64)>,
}

impl PointerIdCodec {
    /// The codec for a registry key. Every node sharing a store must use the same key.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key, last: Mutex::new((0, 0)) }
    }

    /// A codec with a fresh random key, for stores whose data dies with the process.
    pub fn random() -> Self {
        Self::new(rand::random())
    }

    /// A new id for one of `patient`'s pointers; each call returns a larger id than the last.
    pub fn generate(&self, patient: NhsNumber) -> PointerId {
        let (ms, counter) = self.next_tick();
        let high = (u128::from(ms) << 80)
            | (0x7 << 76)
            | (u128::from(counter >> 28) << 64)
            | (0b10 << 62)
            | (u128::from(counter & ((1 << 28) - 1)) << NHS_BITS);
        let hidden = u128::from(patient.as_u64()) ^ self.keystream(high);
        PointerId(Uuid::from_u128(high | hidden))
    }

    /// The patient an id belongs to, or `None` when the id is not one this key generated (the
    /// recovered number fails its check digit; about 1 in 11 foreign ids pass it and then simply
    /// are not found).
    pub fn patient_of(&self, id: PointerId) -> Option<NhsNumber> {
        let raw = id.0.as_u128();
        let high = raw & !NHS_MASK;
        let number = (raw & NHS_MASK) ^ self.keystream(high);
        NhsNumber::parse(&format!("{number:010}")).ok()
    }

    fn keystream(&self, high: u128) -> u128 {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail on 32 bytes.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes any key length"),
        };
        mac.update(&high.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        u128::from_be_bytes(first) & NHS_MASK
    }

    /// (unix ms, 40-bit counter), strictly increasing across calls.
    fn next_tick(&self) -> (u64, u64) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        // The lock guards two integers; a panic cannot leave them inconsistent.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (mut ms, mut counter) = *last;
        if now > ms {
            ms = now;
            counter = rand::random::<u64>() & COUNTER_START_MASK;
        } else {
            counter += 1;
            if counter >> COUNTER_BITS != 0 {
                // 2^39 ids in one millisecond: borrow the next millisecond.
                ms += 1;
                counter = rand::random::<u64>() & COUNTER_START_MASK;
            }
        }
        *last = (ms, counter);
        (ms, counter)
    }
}

impl fmt::Debug for PointerIdCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PointerIdCodec(key hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn patient(prefix: u64) -> Option<NhsNumber> {
        NhsNumber::from_prefix(prefix)
    }

    proptest! {
        #[test]
        fn to_text_is_the_display_text(bytes in any::<[u8; 16]>()) {
            let id = PointerId::from_bytes(bytes);
            prop_assert_eq!(id.to_text(), id.to_string());
        }
    }

    #[test]
    fn ids_are_uuid_v7_and_strictly_increasing() {
        let codec = PointerIdCodec::random();
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        let mut last = codec.generate(nhs);
        assert_eq!(last.as_uuid().get_version_num(), 7);
        assert_eq!(last.as_uuid().get_variant(), uuid::Variant::RFC4122);
        for _ in 0..10_000 {
            let next = codec.generate(nhs);
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn the_timestamp_is_the_generation_time() {
        let codec = PointerIdCodec::random();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let id = codec.generate(NhsNumber::parse("9434765919").expect("valid"));
        let (secs, nanos) = id.as_uuid().get_timestamp().map(|t| t.to_unix()).unwrap_or((0, 0));
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(ms >= before && ms <= before + 1000, "{ms} vs {before}");
    }

    #[test]
    fn another_key_cannot_read_the_patient() {
        let ours = PointerIdCodec::new([1; 32]);
        let theirs = PointerIdCodec::new([2; 32]);
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        let recovered: Vec<Option<NhsNumber>> = (0..200).map(|_| theirs.patient_of(ours.generate(nhs))).collect();
        assert!(recovered.iter().all(|r| *r != Some(nhs)), "a foreign key never recovers the patient");
        assert!(!format!("{}", ours.generate(nhs)).contains("9434765919"));
    }

    proptest! {
        #[test]
        fn patient_round_trips(prefix in 0u64..=999_999_999, key in any::<[u8; 32]>()) {
            if let Some(nhs) = patient(prefix) {
                let codec = PointerIdCodec::new(key);
                let id = codec.generate(nhs);
                prop_assert_eq!(codec.patient_of(id), Some(nhs));
                let reparsed = PointerId::parse(&id.to_string()).map_err(TestCaseError::fail)?;
                prop_assert_eq!(codec.patient_of(reparsed), Some(nhs));
            }
        }

        #[test]
        fn arbitrary_uuids_never_panic(raw in any::<u128>()) {
            let codec = PointerIdCodec::new([7; 32]);
            let _ = codec.patient_of(PointerId::from_uuid(Uuid::from_u128(raw)));
        }
    }
}
