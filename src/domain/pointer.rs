//! The pointer itself: what a producer registers and what the registry adds to it.

use super::limits::{MAX_PRODUCER_REFERENCE_LEN, MAX_URL_LEN};
use super::{Coding, NhsNumber, OdsCode, PointerId, PointerType, RegionCode};
use chrono::{DateTime, Utc};

/// A producer's own identifier for a pointer: 1 to 128 of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ProducerReference(String);

impl ProducerReference {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.len() > MAX_PRODUCER_REFERENCE_LEN {
            return Err(format!("must be at most {MAX_PRODUCER_REFERENCE_LEN} characters"));
        }
        if input.is_empty()
            || !input.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err("must be letters, digits or . _ : -".into());
        }
        Ok(Self(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Declares a closed vocabulary: each variant with its wire spelling, a parser and a lister.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(input: &str) -> Result<Self, String> {
                match input.trim() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("must be one of: {}", [$($text),+].join(", "))),
                }
            }
        }
    };
}

vocabulary!(
    /// MIME type of a rendition.
    ContentType {
        Pdf => "application/pdf",
        Html => "text/html",
        Json => "application/json",
        FhirJson => "application/fhir+json",
    }
);

vocabulary!(
    /// NRL content format.
    ContentFormat {
        Unstructured => "urn:nhs-ic:unstructured",
        Structured => "urn:nhs-ic:structured",
        RecordContact => "urn:nhs-ic:record-contact",
    }
);

vocabulary!(
    RetrievalMechanism {
        Ssp => "SSP",
        Direct => "Direct",
        Ldr => "LDR",
        InContext => "InContext",
    }
);

vocabulary!(
    Stability {
        Static => "static",
        Dynamic => "dynamic",
    }
);

/// A content url: absolute `https://` or `ssp://` with a host, at most [`MAX_URL_LEN`] characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ContentUrl(String);

impl ContentUrl {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.is_empty() {
            return Err("is required".into());
        }
        if input.len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        let url = url::Url::parse(input).map_err(|e| format!("is not a valid url ({e})"))?;
        if !matches!(url.scheme(), "https" | "ssp") {
            return Err("must use https:// or ssp://".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host".into());
        }
        // Keep what the producer sent (normalisation could change a signed or opaque url).
        Ok(Self(input.to_string()))
    }

    /// A url read back from this registry's own store, where only urls that passed [`Self::parse`]
    /// are written. Parsing a url again costs more than the rest of decoding a pointer (~6k
    /// instructions of a Redis search's ~270k per pointer, loadtest/PROFILE.md), so a stored one is
    /// only checked for what can be seen without parsing it: present, not too long, and an https or
    /// ssp url.
    pub fn from_stored(stored: String) -> Result<Self, String> {
        let scheme_ok = |prefix: &str| stored.get(..prefix.len()).is_some_and(|s| s.eq_ignore_ascii_case(prefix));
        if stored.len() > MAX_URL_LEN || !(scheme_ok("https://") || scheme_ok("ssp://")) {
            return Err("is not a url this registry stores".into());
        }
        Ok(Self(stored))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Served through the Spine Secure Proxy. The scheme matches in any case, as url parsing does.
    pub fn is_ssp(&self) -> bool {
        self.0.get(..6).is_some_and(|scheme| scheme.eq_ignore_ascii_case("ssp://"))
    }
}

/// A Spine Accredited System ID: exactly 12 ASCII digits. NRLF names with one the system that serves
/// `ssp://` content (`context.related`, identifier system `https://fhir.nhs.uk/Id/nhsSpineASID`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Asid(String);

impl Asid {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.len() != 12 || !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be 12 digits (a Spine ASID)".into());
        }
        Ok(Self(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Content {
    pub url: ContentUrl,
    pub content_type: ContentType,
    pub format: ContentFormat,
    pub retrieval_mechanism: RetrievalMechanism,
    pub stability: Stability,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PointerStatus {
    Current,
    Superseded,
}

/// Everything the producer supplies. Two creates with the same producer_reference are the same
/// registration exactly when their drafts are equal.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PointerDraft {
    pub nhs_number: NhsNumber,
    pub region: RegionCode,
    pub custodian: OdsCode,
    pub author: Option<OdsCode>,
    pub pointer_type: PointerType,
    pub content: Vec<Content>,
    pub practice_setting: Option<Coding>,
    pub document_date: Option<DateTime<Utc>>,
    pub producer_reference: Option<ProducerReference>,
    /// The ASID of the system that serves the content through the Spine Secure Proxy: required when
    /// any content url is `ssp://` (`rules::check_draft`), allowed otherwise.
    pub related_asid: Option<Asid>,
}

/// A registered pointer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pointer {
    pub id: PointerId,
    pub draft: PointerDraft,
    pub status: PointerStatus,
    pub supersedes: Vec<PointerId>,
    pub superseded_by: Option<PointerId>,
    /// 1 on creation, +1 on every change.
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Pointer {
    pub fn is_current(&self) -> bool {
        self.status == PointerStatus::Current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_urls_must_be_https_or_ssp_with_a_host() {
        for ok in [
            "https://example.nhs.uk/records/1",
            "ssp://spine.example/records?id=1",
            "https://qwo.example:8443/fhir/DocumentReference/abc",
        ] {
            assert!(ContentUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://example.nhs.uk/x",
            "ftp://example.nhs.uk/x",
            "https://",
            "example.nhs.uk/x",
            "javascript:alert(1)",
            "file:///etc/passwd",
        ] {
            assert!(ContentUrl::parse(bad).is_err(), "{bad}");
        }
        let long = format!("https://example.nhs.uk/{}", "a".repeat(MAX_URL_LEN));
        assert!(ContentUrl::parse(&long).is_err());
    }

    #[test]
    fn stored_urls_read_back_as_written_and_what_no_writer_stores_is_corrupt() {
        for stored in ["https://example.nhs.uk/doc/1", "SSP://spine.example.nhs.uk/qwo/1"] {
            assert_eq!(ContentUrl::from_stored(stored.into()).map(|u| u.0), Ok(stored.to_string()));
        }
        let long = format!("https://{}", "a".repeat(MAX_URL_LEN));
        for corrupt in ["", "http://x.example/a", "ftp://x", "https:/", long.as_str()] {
            assert!(ContentUrl::from_stored(corrupt.to_string()).is_err(), "{corrupt}");
        }
    }

    #[test]
    fn ssp_urls_are_known_by_their_scheme_in_any_case() {
        let ssp = |url: &str| ContentUrl::parse(url).map(|u| u.is_ssp());
        assert_eq!(ssp("ssp://spine.example/records?id=1"), Ok(true));
        assert_eq!(ssp("SSP://spine.example/records?id=1"), Ok(true), "url parses the scheme in any case");
        assert_eq!(ssp("https://ssp.example/ssp://x"), Ok(false));
    }

    #[test]
    fn an_asid_is_exactly_twelve_ascii_digits() {
        assert_eq!(Asid::parse("200000000123").map(|a| a.as_str().to_string()), Ok("200000000123".into()));
        assert!(Asid::parse("000000000000").is_ok(), "leading zeros are digits like any other");
        for bad in
            ["", "20000000012", "2000000001234", "20000000012a", " 200000000123", "200000000123 ", "２00000000123"]
        {
            assert_eq!(Asid::parse(bad), Err("must be 12 digits (a Spine ASID)".into()), "{bad:?}");
        }
    }

    #[test]
    fn vocabularies_accept_only_their_words() {
        assert_eq!(ContentType::parse("application/pdf"), Ok(ContentType::Pdf));
        assert_eq!(ContentType::parse("application/fhir+json"), Ok(ContentType::FhirJson));
        assert!(ContentType::parse("image/png").is_err());
        assert_eq!(ContentFormat::parse("urn:nhs-ic:record-contact"), Ok(ContentFormat::RecordContact));
        assert!(ContentFormat::parse("urn:nhs-ic:other").is_err());
        for ty in ContentType::ALL {
            assert_eq!(ContentType::parse(ty.as_str()), Ok(*ty));
        }
    }

    #[test]
    fn producer_references_are_bounded_and_plain() {
        assert!(ProducerReference::parse("DOC-2024.001:a_b").is_ok());
        assert!(ProducerReference::parse("").is_err());
        assert!(ProducerReference::parse("has space").is_err());
        assert!(ProducerReference::parse("naïve").is_err());
        assert!(ProducerReference::parse(&"x".repeat(MAX_PRODUCER_REFERENCE_LEN)).is_ok());
        assert!(ProducerReference::parse(&"x".repeat(MAX_PRODUCER_REFERENCE_LEN + 1)).is_err());
    }
}
