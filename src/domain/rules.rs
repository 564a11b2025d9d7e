//! Pure rules of the write operations: what may be updated or superseded, what a superseded
//! pointer becomes, and the errors that name why not. No I/O: the registry reads, asks these, and
//! writes.

use super::{Pointer, PointerDraft, PointerId, PointerStatus, ProducerReference};
use crate::error::RegistryError;

/// Fields fixed at registration: changing one means superseding the pointer.
pub const IMMUTABLE_ON_UPDATE: [&str; 5] =
    ["pointer.nhs_number", "pointer.region", "pointer.custodian", "pointer.type", "pointer.producer_reference"];

/// What a draft must hold as a whole, whichever edge built it and whatever the operation (create,
/// batch create, update, supersede): the registry asks this before anything else. `prefix` is where
/// the request held the draft (`pointer`; empty for a batch entry, whose fields are named from the
/// entry).
///
/// NRLF's DocumentReference profile: content fetched through the Spine Secure Proxy (`ssp://`)
/// names the ASID of the system serving it, which the proxy routes to.
pub fn check_draft(draft: &PointerDraft, prefix: &str) -> Result<(), RegistryError> {
    if draft.related_asid.is_none() && draft.content.iter().any(|c| c.url.is_ssp()) {
        let field = if prefix.is_empty() { "related_asid".to_string() } else { format!("{prefix}.related_asid") };
        return Err(RegistryError::invalid(
            field,
            "is required for ssp:// content: the 12-digit Spine ASID of the system that serves it",
        ));
    }
    Ok(())
}

/// May `stored` be updated to `draft` by a caller that read it at `version`?
pub fn check_updatable(stored: &Pointer, version: u64, draft: &PointerDraft) -> Result<(), RegistryError> {
    let id = stored.id;
    if stored.version != version {
        return Err(stale(id, version, stored.version));
    }
    if !stored.is_current() {
        return Err(RegistryError::precondition(
            "id",
            format!("pointer {id} is superseded and cannot be updated; supersede the current one"),
        ));
    }
    let old = &stored.draft;
    let same: [bool; 5] = [
        old.nhs_number == draft.nhs_number,
        old.region == draft.region,
        old.custodian == draft.custodian,
        old.pointer_type == draft.pointer_type,
        old.producer_reference == draft.producer_reference,
    ];
    match IMMUTABLE_ON_UPDATE.iter().zip(same).find(|(_, same)| !same) {
        Some((field, _)) => {
            Err(RegistryError::invalid(*field, "cannot change on update; supersede the pointer to change it"))
        }
        None => Ok(()),
    }
}

/// May `old` be superseded by `draft`? `field` names where the caller gave its id.
pub fn check_replaceable(old: &Pointer, draft: &PointerDraft, field: &str) -> Result<(), RegistryError> {
    let mismatch = if old.draft.nhs_number != draft.nhs_number {
        Some("is for a different NHS number")
    } else if old.draft.pointer_type != draft.pointer_type {
        Some("has a different type")
    } else if old.draft.custodian != draft.custodian {
        Some("has a different custodian")
    } else if !old.is_current() {
        Some("is already superseded")
    } else {
        None
    };
    match mismatch {
        Some(reason) => Err(RegistryError::precondition(field, format!("pointer {} {reason}", old.id))),
        None => Ok(()),
    }
}

/// `old` as it is kept once `new` supersedes it.
pub fn retired(old: Pointer, new: &Pointer) -> Pointer {
    Pointer {
        status: PointerStatus::Superseded,
        superseded_by: Some(new.id),
        version: old.version + 1,
        updated_at: new.created_at,
        ..old
    }
}

pub fn not_found(id: PointerId) -> RegistryError {
    RegistryError::NotFound(format!("pointer {id} not found"))
}

pub fn stale(id: PointerId, expected: u64, actual: u64) -> RegistryError {
    RegistryError::Aborted(format!("pointer {id} is at version {actual}, not {expected}: read it again"))
}

pub fn reference_taken(draft: &PointerDraft) -> RegistryError {
    let reference = draft.producer_reference.as_ref().map(ProducerReference::as_str).unwrap_or_default();
    RegistryError::AlreadyExists(format!(
        "custodian {} already registered producer_reference {reference:?} with different content",
        draft.custodian
    ))
}

pub fn contention() -> RegistryError {
    RegistryError::Aborted("too many concurrent changes to this patient's pointers; retry".into())
}

#[cfg(test)]
mod tests;
