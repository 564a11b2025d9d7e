//! The registry's operations in domain terms: the orchestration of every call (authorise, act,
//! audit). The reads are here; the writes are in `writes` (each read → decide → one atomic
//! conditional `PatientWrite`); the pure rules they apply are in `domain::rules` and
//! `domain::query`.
//!
//! Every public operation has one shape: ask `auth::policy` whether the caller may, act, then write
//! an audit event (outcome included, denials too). If the audit event cannot be written the call
//! fails: nothing is shown without a record of it.
//!
//! Where the event goes depends on what the call did ([`Access`]): one that read or changed the
//! patient's data goes to the patient's own log and the export; anything else (a refusal, an
//! invalid request, a failure, a read that found nothing) to the export only. So no caller can
//! write into a patient's log without having touched the patient's data: a flood of refused reads
//! neither fills a log that is kept in full nor buries what the patient needs to see.

use crate::auth::policy::{self, ReadScope};
use crate::auth::Caller;
use crate::clock::Clock;
use crate::domain::locate::{summarise, summarise_regions, RegionSummary};
use crate::domain::query::{self, Page, PageRequest, PointerQuery};
use crate::domain::{rules, NhsNumber, Pointer, PointerDraft, PointerId, ReferenceData, RegionCode, LOCATOR_ENDPOINT};
use crate::error::RegistryError;
use crate::store::audit::{AuditEvent, AuditStore, EventPage};
use crate::store::feed::ChangeFeed;
use crate::store::index::RegionIndex;
use crate::store::{PointerStore, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;

mod writes;

/// How often a write is re-decided after losing a race before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 5;

/// A pointer as registered, and whether this call registered it (false: it already was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub pointer: Pointer,
    pub created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub pointer: Pointer,
    pub superseded: Vec<Pointer>,
    pub created: bool,
}

#[derive(Clone)]
pub struct Registry {
    /// Regions this node holds pointers for (`None`: all).
    node_regions: Option<Arc<BTreeSet<RegionCode>>>,
    /// On the national node in federated mode: the patient → regions index LocatePatient reads.
    index: Option<Arc<dyn RegionIndex>>,
    /// This node's change feed, which peer nodes follow.
    feed: Option<Arc<dyn ChangeFeed>>,
    store: Arc<dyn PointerStore>,
    audit: Arc<dyn AuditStore>,
    reference: Arc<ReferenceData>,
    clock: Arc<dyn Clock>,
}

/// The largest page of audit events.
pub const MAX_AUDIT_PAGE: usize = 500;

/// What an answered call did with the patient's data, for its audit event.
struct Access {
    /// Pointers returned or changed.
    pointer_ids: Vec<PointerId>,
    break_glass: bool,
    /// It showed or changed something of the patient's: only then is the event also kept in the
    /// patient's own log.
    disclosed: bool,
}

impl Access {
    /// Pointers shown or changed: a disclosure when there are any.
    fn pointers(pointer_ids: Vec<PointerId>, break_glass: bool) -> Self {
        Self { disclosed: !pointer_ids.is_empty(), pointer_ids, break_glass }
    }

    /// Something of the patient's other than pointers, shown or changed when `disclosed` (a count
    /// above zero, the restriction flag, the access log).
    fn patient_data(disclosed: bool, break_glass: bool) -> Self {
        Self { pointer_ids: vec![], break_glass, disclosed }
    }
}

impl Registry {
    pub fn new(
        store: Arc<dyn PointerStore>,
        audit: Arc<dyn AuditStore>,
        reference: Arc<ReferenceData>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { node_regions: None, index: None, feed: None, store, audit, reference, clock }
    }

    /// Makes this a regional node holding only `regions`.
    pub fn with_regions(mut self, regions: Option<BTreeSet<RegionCode>>) -> Self {
        self.node_regions = regions.map(Arc::new);
        self
    }

    /// Makes LocatePatient answer from the national index.
    pub fn with_index(mut self, index: Arc<dyn RegionIndex>) -> Self {
        self.index = Some(index);
        self
    }

    /// Lets peer nodes follow this node's changes.
    pub fn with_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    fn feed(&self) -> Result<Arc<dyn ChangeFeed>, RegistryError> {
        self.feed.clone().ok_or_else(|| RegistryError::precondition("store", "this node keeps no change feed"))
    }

    /// The change feed, for a caller allowed to follow it. Replication is logged by the feed
    /// service as one operation, not audited per patient (it is node-to-node, for the peer role).
    pub fn change_feed(&self, caller: &Caller) -> Result<Arc<dyn ChangeFeed>, RegistryError> {
        policy::check_follow_feed(caller)?;
        self.feed()
    }

    /// The change feed's snapshot side, for a caller allowed to read snapshots.
    pub fn snapshot_source(&self, caller: &Caller) -> Result<Arc<dyn ChangeFeed>, RegistryError> {
        policy::check_snapshot(caller)?;
        self.feed()
    }

    pub fn node_regions(&self) -> Option<&BTreeSet<RegionCode>> {
        self.node_regions.as_deref()
    }

    /// A regional node refuses pointers of other regions, naming the node that holds them.
    fn check_region(&self, draft: &PointerDraft) -> Result<(), RegistryError> {
        let Some(mine) = &self.node_regions else { return Ok(()) };
        if mine.contains(&draft.region) {
            return Ok(());
        }
        let held: Vec<&str> = mine.iter().map(RegionCode::as_str).collect();
        let held = if held.is_empty() {
            "no region (a national node in federated mode holds only the index)".to_string()
        } else {
            held.join(", ")
        };
        let owner = self
            .reference
            .regions
            .get(&draft.region)
            .and_then(|r| r.endpoints.iter().find(|e| e.purpose == LOCATOR_ENDPOINT))
            .map(|e| format!("the node at {}", e.url))
            .unwrap_or_else(|| "another node (the region directory names no record-locator endpoint for it)".into());
        Err(RegistryError::precondition(
            "pointer.region",
            format!("this node holds pointers for {held} only; region {} is held by {owner}", draft.region),
        ))
    }

    pub fn audit_store(&self) -> &Arc<dyn AuditStore> {
        &self.audit
    }

    /// An OK event of `caller`'s `operation` on `nhs_number`'s data (for the patient's log and the
    /// export until the call's outcome says otherwise).
    fn event(&self, caller: &Caller, operation: &str, nhs_number: Option<NhsNumber>) -> AuditEvent {
        AuditEvent {
            cursor: None,
            time: self.clock.now(),
            application: caller.application.clone(),
            organisation: caller.organisation.to_string(),
            end_user: caller.end_user.clone(),
            purpose: caller.purpose.map(|p| p.as_str().to_string()),
            operation: operation.to_string(),
            nhs_number,
            pointer_ids: vec![],
            outcome: "OK".into(),
            break_glass: false,
            export_only: false,
        }
    }

    /// Records the outcome of an operation on a patient's pointers, then returns it; if the record
    /// cannot be written, the operation's answer is withheld and the call fails. An error, or an
    /// answer that disclosed nothing, is recorded in the export only.
    async fn audited<T>(
        &self,
        caller: &Caller,
        operation: &str,
        nhs_number: NhsNumber,
        result: Result<T, RegistryError>,
        touched: impl FnOnce(&T) -> Access,
    ) -> Result<T, RegistryError> {
        let mut event = self.event(caller, operation, Some(nhs_number));
        match &result {
            Ok(value) => {
                let access = touched(value);
                (event.pointer_ids, event.break_glass, event.export_only) =
                    (access.pointer_ids, access.break_glass, !access.disclosed);
            }
            Err(error) => {
                event.outcome = error.code_name().to_string();
                event.export_only = true;
            }
        }
        match self.record(vec![event]).await {
            Ok(()) => result,
            Err(e) => Err(Self::unrecorded(operation, &e)),
        }
    }

    /// The answer of a call whose audit event could not be written.
    fn unrecorded(operation: &str, e: &StoreError) -> RegistryError {
        tracing::error!(error = %e, operation, "audit write failed; withholding the answer");
        RegistryError::Unavailable(format!("the audit log cannot be written ({e}); nothing was returned"))
    }

    /// Records a call refused before it reached a patient's data, with no patient: an invalid
    /// request (the gRPC edge sends its validation failures here), or an id that is no pointer
    /// of this registry (a forged id may decode to a real, unrelated patient). Export only.
    /// Returns the error to answer: `error`, or UNAVAILABLE if it cannot be recorded.
    pub async fn refuse(&self, caller: &Caller, operation: &'static str, error: RegistryError) -> RegistryError {
        let event = AuditEvent {
            outcome: error.code_name().to_string(),
            export_only: true,
            ..self.event(caller, operation, None)
        };
        match self.record(vec![event]).await {
            Ok(()) => error,
            Err(e) => Self::unrecorded(operation, &e),
        }
    }

    /// Records events that no write carried (reads, refusals, replays).
    async fn record(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.audit.append_all(events).await
    }

    /// Like [`Self::audited`], for a write: when `recorded` says the write's own event was stored
    /// with it (atomically), there is nothing more to record.
    async fn audited_unless<T>(
        &self,
        recorded: impl FnOnce(&T) -> bool,
        caller: &Caller,
        operation: &str,
        nhs_number: NhsNumber,
        result: Result<T, RegistryError>,
        touched: impl FnOnce(&T) -> Access,
    ) -> Result<T, RegistryError> {
        match result {
            Ok(value) if recorded(&value) => Ok(value),
            result => self.audited(caller, operation, nhs_number, result, touched).await,
        }
    }

    pub fn reference(&self) -> &ReferenceData {
        &self.reference
    }

    pub fn store(&self) -> &Arc<dyn PointerStore> {
        &self.store
    }

    pub async fn get(&self, caller: &Caller, id: PointerId) -> Result<Pointer, RegistryError> {
        let Some((pointer, restricted)) = self.store.get_for_read(id).await? else {
            return Err(self.refuse(caller, "GetPointer", rules::not_found(id)).await);
        };
        let nhs = pointer.draft.nhs_number;
        let result = policy::read_scope(caller, restricted, []).and_then(|scope| {
            // A pointer the caller may not see is answered exactly like one that does not exist.
            if scope.can_see(&pointer) {
                Ok((pointer, scope.break_glass))
            } else {
                Err(rules::not_found(id))
            }
        });
        self.audited(caller, "GetPointer", nhs, result, |(p, glass)| Access::pointers(vec![p.id], *glass))
            .await
            .map(|(p, _)| p)
    }

    /// The patient's pointers this caller may see, and how it may see them.
    async fn visible(
        &self,
        caller: &Caller,
        nhs_number: NhsNumber,
        requested_types: &BTreeSet<String>,
    ) -> Result<(Vec<Pointer>, ReadScope), RegistryError> {
        let record = self.store.patient_record(nhs_number).await?;
        let scope = policy::read_scope(caller, record.restricted, requested_types)?;
        let pointers = record.pointers.into_iter().filter(|p| scope.can_see(p)).collect();
        Ok((pointers, scope))
    }

    pub async fn search(
        &self,
        caller: &Caller,
        query: &PointerQuery,
        page: PageRequest,
    ) -> Result<Page, RegistryError> {
        let result = match self.visible(caller, query.nhs_number, &query.types).await {
            Ok((pointers, scope)) => Ok((query::select_page(pointers, query, page), scope.break_glass)),
            Err(e @ RegistryError::Unavailable(_)) => return Err(e),
            Err(e) => Err(e),
        };
        self.audited(caller, "SearchPointers", query.nhs_number, result, |(page, glass)| {
            Access::pointers(page.pointers.iter().map(|p| p.id).collect(), *glass && !page.pointers.is_empty())
        })
        .await
        .map(|(page, _)| page)
    }

    pub async fn count(&self, caller: &Caller, query: &PointerQuery) -> Result<u64, RegistryError> {
        let result = match self.visible(caller, query.nhs_number, &query.types).await {
            Ok((pointers, scope)) => Ok((query::count(&pointers, query), scope.break_glass)),
            Err(e @ RegistryError::Unavailable(_)) => return Err(e),
            Err(e) => Err(e),
        };
        self.audited(caller, "CountPointers", query.nhs_number, result, |(n, glass)| {
            Access::patient_data(*n > 0, *glass && *n > 0)
        })
        .await
        .map(|(n, _)| n)
    }

    pub async fn locate(&self, caller: &Caller, nhs_number: NhsNumber) -> Result<Vec<RegionSummary>, RegistryError> {
        if let Some(index) = &self.index {
            return self.locate_from_index(caller, index.as_ref(), nhs_number).await;
        }
        let result = match self.visible(caller, nhs_number, &BTreeSet::new()).await {
            Ok((pointers, scope)) => {
                let ids: Vec<PointerId> = pointers.iter().filter(|p| p.is_current()).map(|p| p.id).collect();
                Ok((summarise_regions(&pointers), ids, scope.break_glass))
            }
            Err(e @ RegistryError::Unavailable(_)) => return Err(e),
            Err(e) => Err(e),
        };
        self.audited(caller, "LocatePatient", nhs_number, result, |(_, ids, glass)| {
            Access::pointers(ids.clone(), *glass && !ids.is_empty())
        })
        .await
        .map(|(regions, _, _)| regions)
    }

    /// LocatePatient on the national node: one round trip to the index (and the restriction flag
    /// beside it), filtered by what the caller may see.
    async fn locate_from_index(
        &self,
        caller: &Caller,
        index: &dyn RegionIndex,
        nhs_number: NhsNumber,
    ) -> Result<Vec<RegionSummary>, RegistryError> {
        let (entries, restricted) = index.index_entries(nhs_number).await?;
        let result = policy::read_scope(caller, restricted, &BTreeSet::new()).map(|scope| {
            let visible: Vec<_> = entries.iter().filter(|e| scope.can_see_type(&e.pointer_type.code)).collect();
            let ids: Vec<PointerId> = visible.iter().map(|e| e.id).collect();
            (summarise(visible.iter().map(|e| (&e.region, &e.pointer_type, e.updated_at))), ids, scope.break_glass)
        });
        self.audited(caller, "LocatePatient", nhs_number, result, |(_, ids, glass)| {
            Access::pointers(ids.clone(), *glass && !ids.is_empty())
        })
        .await
        .map(|(regions, _, _)| regions)
    }

    pub async fn set_restriction(
        &self,
        caller: &Caller,
        nhs_number: NhsNumber,
        restricted: bool,
    ) -> Result<bool, RegistryError> {
        let result = match policy::check_set_restriction(caller) {
            Ok(()) => self.store.set_restriction(nhs_number, restricted).await.map(|()| restricted).map_err(Into::into),
            Err(e) => Err(e),
        };
        self.audited(caller, "SetRestriction", nhs_number, result, |_| Access::patient_data(true, false)).await
    }

    pub async fn restriction(&self, caller: &Caller, nhs_number: NhsNumber) -> Result<bool, RegistryError> {
        let result = match policy::check_read_restriction(caller) {
            Ok(()) => self.store.patient_record(nhs_number).await.map(|r| r.restricted).map_err(Into::into),
            Err(e) => Err(e),
        };
        self.audited(caller, "GetRestriction", nhs_number, result, |_| Access::patient_data(true, false)).await
    }

    /// Who accessed a patient's pointers, newest first. Reading the log is itself recorded.
    pub async fn access_log(
        &self,
        caller: &Caller,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, RegistryError> {
        let result = match policy::check_access_log(caller, nhs_number) {
            Ok(()) => {
                self.audit.patient_events(nhs_number, before, limit.clamp(1, MAX_AUDIT_PAGE)).await.map_err(Into::into)
            }
            Err(e) => Err(e),
        };
        self.audited(caller, "GetAccessLog", nhs_number, result, |_| Access::patient_data(true, false)).await
    }

    /// The export: every event after `after`, oldest first.
    pub async fn audit_events(
        &self,
        caller: &Caller,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, RegistryError> {
        if let Err(refusal) = policy::check_audit_export(caller) {
            return Err(self.refuse(caller, "StreamAuditEvents", refusal).await);
        }
        Ok(self.audit.events_after(after, limit.clamp(1, MAX_AUDIT_PAGE)).await?)
    }

    /// After a failed version condition: NOT_FOUND if the pointer went, else ABORTED.
    async fn why_stale(&self, id: PointerId, expected: u64) -> RegistryError {
        match self.store.get(id).await {
            Ok(Some(now)) => rules::stale(id, expected, now.version),
            Ok(None) => rules::not_found(id),
            Err(e) => e.into(),
        }
    }
}
