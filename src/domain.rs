//! The registry's vocabulary and rules: NHS numbers, ODS codes, regions, pointer types, pointers,
//! queries, and the pure rules of the write operations (`rules`). No I/O, no protobuf, no storage.
//! Values can only be built valid.

pub mod limits;
pub mod locate;
mod nhs_number;
mod ods_code;
mod pointer;
mod pointer_id;
mod pointer_type;
pub mod query;
mod reference;
mod region;
pub mod rules;

#[cfg(test)]
pub(crate) mod fixtures;

pub use nhs_number::{NhsNumber, NhsNumberError, TEST_RANGE};
pub use ods_code::{OdsCode, OdsCodeError};
pub use pointer::{
    Asid, Content, ContentFormat, ContentType, ContentUrl, Pointer, PointerDraft, PointerStatus, ProducerReference,
    RetrievalMechanism, Stability,
};
pub use pointer_id::{PointerId, PointerIdCodec};
pub use pointer_type::{is_snomed_code, CatalogueError, Coding, PointerType, PointerTypeCatalogue, PointerTypeError};
pub use reference::ReferenceData;
pub use region::{
    DirectoryError, Endpoint, Region, RegionCode, RegionDirectory, RegionError, RegionKind, LOCATOR_ENDPOINT,
};
