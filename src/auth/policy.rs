//! Every authorisation decision, in one place. The registry asks before it acts; nothing else
//! decides who may see or change what.
//!
//! - Producers create, update, supersede and delete only pointers whose custodian is their own
//!   organisation (or one of its `.SUFFIX` sub-organisations), of their permitted types and regions.
//! - Consumers (and peers) read, search, count and locate; they must state a purpose of use. Results
//!   hold only their permitted types: other types are filtered out, and asking for one explicitly is
//!   PERMISSION_DENIED. Producers may also read their own organisation's pointers.
//! - A restricted patient's pointers are hidden from every reader unless the purpose is
//!   `emergency` (break-glass, flagged in the audit).
//! - Admins restrict patients; auditors read any access log, the patient portal only its own patient's; auditors export.
//! - Peer nodes (the national node) follow a node's change feed and read its snapshots.

use super::{Caller, Purpose, Role};
use crate::domain::{NhsNumber, Pointer, PointerDraft};
use crate::error::RegistryError;

fn denied(reason: impl Into<String>) -> RegistryError {
    RegistryError::PermissionDenied(reason.into())
}

/// True when `custodian` is the caller's organisation or one of its sub-organisations.
fn owns(caller: &Caller, custodian: &crate::domain::OdsCode) -> bool {
    let org = caller.organisation.as_str();
    let custodian = custodian.as_str();
    custodian == org || custodian.strip_prefix(org).is_some_and(|rest| rest.starts_with('.'))
}

/// May the caller write (create, update, supersede or delete) a pointer like `draft`?
pub fn check_write(caller: &Caller, draft: &PointerDraft) -> Result<(), RegistryError> {
    if caller.unrestricted {
        return Ok(());
    }
    if !caller.has(Role::Producer) {
        return Err(denied("the producer role is required to change pointers"));
    }
    if !owns(caller, &draft.custodian) {
        return Err(denied(format!(
            "organisation {} may only write pointers whose custodian is {}",
            caller.organisation, caller.organisation
        )));
    }
    if !caller.pointer_types.allows(&draft.pointer_type.coding.code) {
        return Err(denied(format!("not permitted to write pointers of type {}", draft.pointer_type.coding.code)));
    }
    if !caller.regions.allows(&draft.region) {
        return Err(denied(format!("not permitted to register pointers for region {}", draft.region)));
    }
    Ok(())
}

/// What a reader may see of one patient's pointers.
#[derive(Clone, Debug)]
pub struct ReadScope {
    caller: Caller,
    /// Only the caller's own organisation's pointers (a producer without a consumer role).
    own_only: bool,
    /// The patient is restricted and this is a break-glass read.
    pub break_glass: bool,
    /// The patient is restricted and the caller may not see through it.
    pub hidden: bool,
}

impl ReadScope {
    /// For index entries, which carry a type but no custodian: producer-only readers see none.
    pub fn can_see_type(&self, type_code: &str) -> bool {
        !self.hidden
            && !self.own_only
            && (self.caller.unrestricted || self.caller.pointer_types.allows(&type_code.to_string()))
    }

    pub fn can_see(&self, pointer: &Pointer) -> bool {
        !self.hidden
            && (self.caller.unrestricted || self.caller.pointer_types.allows(&pointer.draft.pointer_type.coding.code))
            && (!self.own_only || owns(&self.caller, &pointer.draft.custodian))
    }
}

/// May the caller read this patient's pointers, and which of them? `requested_types` are the types
/// the caller asked for explicitly (a type it may not see is refused, not silently dropped).
pub fn read_scope<'a>(
    caller: &Caller,
    restricted: bool,
    requested_types: impl IntoIterator<Item = &'a String>,
) -> Result<ReadScope, RegistryError> {
    if caller.unrestricted {
        return Ok(ReadScope { caller: caller.clone(), own_only: false, break_glass: false, hidden: false });
    }
    let reader = caller.has(Role::Consumer) || caller.has(Role::Peer);
    if !reader && !caller.has(Role::Producer) {
        return Err(denied("the consumer role is required to read pointers"));
    }
    let purpose = caller.purpose.ok_or_else(|| {
        RegistryError::invalid(super::PURPOSE_HEADER, "is required: state why you are reading (e.g. direct-care)")
    })?;
    for ty in requested_types {
        if !caller.pointer_types.allows(ty) {
            return Err(denied(format!("not permitted to read pointers of type {ty}")));
        }
    }
    let emergency = purpose == Purpose::Emergency;
    Ok(ReadScope {
        caller: caller.clone(),
        own_only: !reader,
        break_glass: restricted && emergency,
        hidden: restricted && !emergency,
    })
}

/// Reading a patient's access log: auditors read any; the patient portal only the patient its
/// token names (so a portal cannot be used to read other people's logs).
pub fn check_access_log(caller: &Caller, nhs_number: NhsNumber) -> Result<(), RegistryError> {
    if caller.unrestricted || caller.has(Role::Auditor) {
        return Ok(());
    }
    if caller.has(Role::Portal) {
        return match caller.patient {
            Some(patient) if patient == nhs_number => Ok(()),
            Some(_) => Err(denied("a portal may read only the access log of the patient its token names")),
            None => Err(denied("a portal token must name its patient (the nhs_number claim)")),
        };
    }
    require(caller, &[Role::Auditor, Role::Portal], "reading an access log")
}

/// Restricting or lifting a patient's restriction.
pub fn check_set_restriction(caller: &Caller) -> Result<(), RegistryError> {
    require(caller, &[Role::Admin], "restricting a patient")
}

/// Reading whether a patient is restricted.
pub fn check_read_restriction(caller: &Caller) -> Result<(), RegistryError> {
    require(caller, &[Role::Admin], "reading a patient's restriction")
}

/// Reading the audit export (every patient's events).
pub fn check_audit_export(caller: &Caller) -> Result<(), RegistryError> {
    require(caller, &[Role::Auditor], "exporting audit events")
}

/// Following this node's change feed: node-to-node replication.
pub fn check_follow_feed(caller: &Caller) -> Result<(), RegistryError> {
    require(caller, &[Role::Peer], "following the change feed")
}

/// Reading a snapshot of this node's pointers: node-to-node replication.
pub fn check_snapshot(caller: &Caller) -> Result<(), RegistryError> {
    require(caller, &[Role::Peer], "reading a snapshot")
}

fn require(caller: &Caller, roles: &[Role], what: &str) -> Result<(), RegistryError> {
    if caller.unrestricted || roles.iter().any(|r| caller.has(*r)) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(denied(format!("{what} requires the {} role", names.join(" or "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use crate::domain::fixtures::pointer;
    use crate::domain::OdsCode;

    fn caller(org: &str, roles: &[Role]) -> Caller {
        Caller {
            application: "app".into(),
            organisation: OdsCode::parse(org).expect("ods"),
            roles: roles.iter().copied().collect(),
            pointer_types: Scope::All,
            regions: Scope::All,
            end_user: None,
            purpose: Some(Purpose::DirectCare),
            patient: None,
            unrestricted: false,
        }
    }

    #[test]
    fn producers_write_only_their_own_organisations_pointers() {
        let p = pointer("9434765919", "QWO", "RR8", "736253002");
        assert!(check_write(&caller("RR8", &[Role::Producer]), &p.draft).is_ok());
        assert!(check_write(&caller("RA7", &[Role::Producer]), &p.draft).is_err());
        assert!(check_write(&caller("RR8", &[Role::Consumer]), &p.draft).is_err());
        let mut sub = p.clone();
        sub.draft.custodian = OdsCode::parse("RR8.X01").expect("ods");
        assert!(check_write(&caller("RR8", &[Role::Producer]), &sub.draft).is_ok(), "sub-organisation");
        sub.draft.custodian = OdsCode::parse("RR81").expect("ods");
        assert!(check_write(&caller("RR8", &[Role::Producer]), &sub.draft).is_err(), "a prefix is not a sub-org");
    }

    #[test]
    fn restricted_patients_are_hidden_except_under_emergency() {
        let p = pointer("9434765919", "QWO", "RR8", "736253002");
        let mut reader = caller("RA7", &[Role::Consumer]);
        let scope = read_scope(&reader, true, []).expect("allowed");
        assert!(scope.hidden && !scope.can_see(&p));
        reader.purpose = Some(Purpose::Emergency);
        let scope = read_scope(&reader, true, []).expect("allowed");
        assert!(scope.break_glass && scope.can_see(&p));
        reader.purpose = None;
        assert!(matches!(read_scope(&reader, false, []), Err(RegistryError::InvalidArgument { .. })));
    }
}
