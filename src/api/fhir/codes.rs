//! The systems, extension urls and code systems the FHIR API reads and writes: NRLF's where NRLF has
//! one, this registry's own (under [`OWN_BASE`]) for what NRLF lacks. The CapabilityStatement
//! publishes the registry's own.

/// NHS numbers.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// ODS organisation codes (custodian, author, audit agents).
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// The Spine ASID of the system serving SSP content (`context.related`).
pub const ASID_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhsSpineASID";
pub const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
pub const FORMAT_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-NRLFormatCode";
pub const STABILITY_EXTENSION: &str =
    "https://fhir.nhs.uk/England/StructureDefinition/Extension-England-ContentStability";
pub const STABILITY_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-NRLContentStability";
pub const RETRIEVAL_EXTENSION: &str =
    "https://fhir.nhs.uk/England/StructureDefinition/Extension-England-NRLRetrievalMechanism";
pub const RETRIEVAL_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-NRLRetrievalMechanism";
/// NRLF's error codes (`OperationOutcome.issue.details.coding`).
pub const SPINE_ERROR_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/Spine-ErrorOrWarningCode";
/// NRLF's codes for successful writes.
pub const NRL_RESPONSE_SYSTEM: &str = "https://fhir.nhs.uk/ValueSet/NRL-ResponseCode";

/// Where this registry's own definitions live.
pub const OWN_BASE: &str = "https://nrl-registry.nhs.example/fhir";
/// The region a pointer is registered for (an ICB or nation code, as in the region directory):
/// NRLF has no element for it. `valueCode`.
pub const REGION_EXTENSION: &str = "https://nrl-registry.nhs.example/fhir/StructureDefinition/Extension-Region";
/// On a superseded pointer: the pointer that replaced it. `valueReference`.
pub const SUPERSEDED_BY_EXTENSION: &str =
    "https://nrl-registry.nhs.example/fhir/StructureDefinition/Extension-SupersededBy";
/// On an AuditEvent: the access was a break-glass read of a restricted patient. `valueBoolean`.
pub const BREAK_GLASS_EXTENSION: &str =
    "https://nrl-registry.nhs.example/fhir/StructureDefinition/Extension-BreakGlass";
/// The registry operation an AuditEvent records (`SearchPointers`, `CreatePointer`, ...).
pub const OPERATION_SYSTEM: &str = "https://nrl-registry.nhs.example/fhir/CodeSystem/operation";
/// The stated purpose of use (`x-purpose-of-use`).
pub const PURPOSE_SYSTEM: &str = "https://nrl-registry.nhs.example/fhir/CodeSystem/purpose-of-use";
/// The search parameter naming the region.
pub const REGION_SEARCH_PARAMETER: &str =
    "https://nrl-registry.nhs.example/fhir/SearchParameter/DocumentReference-region";

/// The FHIR media type; `application/json` is accepted too.
pub const FHIR_JSON: &str = "application/fhir+json";
