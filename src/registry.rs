//! The registry's operations in domain terms: the rules for creating, updating, superseding and
//! deleting pointers, and the reads. Each write is read → decide → one atomic conditional
//! [`PatientWrite`]; if the condition fails because of a concurrent writer, the decision is taken
//! again on fresh data (a bounded number of times) or the caller is told its view is stale.
//!
//! Every public operation has one shape: ask `auth::policy` whether the caller may, act, then write
//! an audit event (outcome included, denials too). If the audit event cannot be written the call
//! fails: nothing is shown without a record of it.

use crate::auth::policy::{self, ReadScope};
use crate::auth::Caller;
use crate::clock::Clock;
use crate::domain::locate::{summarise, summarise_regions, RegionSummary};
use crate::domain::query::{self, Page, PageRequest, PointerQuery};
use crate::domain::RegionCode;
use crate::domain::{
    NhsNumber, Pointer, PointerDraft, PointerId, PointerStatus, PointerTypeCatalogue, ProducerReference,
    RegionDirectory,
};
use crate::error::RegistryError;
use crate::store::audit::{AuditEvent, AuditStore, EventPage};
use crate::store::feed::ChangeFeed;
use crate::store::index::RegionIndex;
use crate::store::{Condition, PatientWrite, PointerStore, ReferenceKey, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// How often a write is re-decided after losing a race before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 5;

/// The data every request is validated against.
#[derive(Clone, Debug)]
pub struct ReferenceData {
    pub regions: RegionDirectory,
    pub pointer_types: PointerTypeCatalogue,
}

impl Default for ReferenceData {
    fn default() -> Self {
        Self { regions: RegionDirectory::default_directory(), pointer_types: PointerTypeCatalogue::default_catalogue() }
    }
}

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

/// The region-directory endpoint purpose that names a region's registry node.
pub const LOCATOR_ENDPOINT: &str = "record-locator";

/// The largest page of audit events.
pub const MAX_AUDIT_PAGE: usize = 500;

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

    fn event(&self, caller: &Caller, operation: &str, nhs_number: NhsNumber) -> AuditEvent {
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
        }
    }

    /// Records the outcome of an operation on a patient's pointers, then returns it; if the record
    /// cannot be written, the operation's answer is withheld and the call fails.
    async fn audited<T>(
        &self,
        caller: &Caller,
        operation: &str,
        nhs_number: NhsNumber,
        result: Result<T, RegistryError>,
        touched: impl FnOnce(&T) -> (Vec<PointerId>, bool),
    ) -> Result<T, RegistryError> {
        let mut event = self.event(caller, operation, nhs_number);
        match &result {
            Ok(value) => (event.pointer_ids, event.break_glass) = touched(value),
            Err(error) => event.outcome = error.code_name().to_string(),
        }
        match self.audit.append_all(vec![event]).await {
            Ok(()) => result,
            Err(e) => {
                tracing::error!(error = %e, operation, "audit write failed; withholding the answer");
                Err(RegistryError::Unavailable(format!("the audit log cannot be written ({e}); nothing was returned")))
            }
        }
    }

    pub fn reference(&self) -> &ReferenceData {
        &self.reference
    }

    pub fn store(&self) -> &Arc<dyn PointerStore> {
        &self.store
    }

    fn new_pointer(&self, draft: PointerDraft, supersedes: Vec<PointerId>) -> Pointer {
        let now = self.clock.now();
        Pointer {
            id: self.store.ids().generate(draft.nhs_number),
            draft,
            status: PointerStatus::Current,
            supersedes,
            superseded_by: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// The write that registers `pointer`: its id must be new and its reference unused.
    fn creation(pointer: &Pointer) -> PatientWrite {
        let mut conditions = vec![Condition::Absent(pointer.id)];
        if let Some(reference) = &pointer.draft.producer_reference {
            conditions.push(Condition::ReferenceFree(pointer.draft.custodian.clone(), reference.clone()));
        }
        PatientWrite { nhs_number: pointer.draft.nhs_number, conditions, puts: vec![pointer.clone()], deletes: vec![] }
    }

    /// What an earlier registration under the same reference means for this one.
    fn replay(existing: Pointer, draft: &PointerDraft) -> Result<Registered, RegistryError> {
        if existing.draft == *draft {
            Ok(Registered { pointer: existing, created: false })
        } else {
            Err(reference_taken(draft))
        }
    }

    /// Write first, read only if the reference turns out to be taken: a fresh registration (the
    /// common case, and all of a bulk load) costs one store call.
    async fn register(&self, draft: PointerDraft) -> Result<Registered, RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let pointer = self.new_pointer(draft.clone(), vec![]);
            match self.store.apply(Self::creation(&pointer)).await {
                Ok(()) => return Ok(Registered { pointer, created: true }),
                // Ids are fresh, so the reference is taken: answer from whoever holds it.
                Err(StoreError::ConditionFailed) => {
                    if let Some(key) = ReferenceKey::of(&draft) {
                        if let Some(existing) = self.store.get_by_reference(&key).await? {
                            return Self::replay(existing, &draft);
                        }
                    }
                    // The holder was deleted in between: try again.
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(contention())
    }

    /// Registers each entry on its own (invalid entries keep their error), results in order.
    /// All writes go to the store at once; entries whose reference was taken are then looked up
    /// at once and answered as repeats or conflicts.
    async fn register_batch(
        &self,
        drafts: Vec<Result<PointerDraft, RegistryError>>,
    ) -> Vec<Result<Registered, RegistryError>> {
        let mut results: Vec<Option<Result<Registered, RegistryError>>> = Vec::with_capacity(drafts.len());
        let mut pending: Vec<(usize, Pointer)> = Vec::new();
        for (i, draft) in drafts.into_iter().enumerate() {
            match draft {
                Ok(draft) => {
                    pending.push((i, self.new_pointer(draft, vec![])));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }

        let applied = self.create_grouped(&pending).await;
        let mut taken: Vec<(usize, PointerDraft)> = Vec::new();
        for ((i, pointer), result) in pending.into_iter().zip(applied) {
            match result {
                Ok(()) => results[i] = Some(Ok(Registered { pointer, created: true })),
                Err(StoreError::ConditionFailed) => taken.push((i, pointer.draft)),
                Err(other) => results[i] = Some(Err(other.into())),
            }
        }

        let keys = taken.iter().filter_map(|(_, d)| ReferenceKey::of(d)).collect::<Vec<_>>();
        let mut holders = if keys.len() == taken.len() {
            self.store.get_by_references(keys).await
        } else {
            // Only drafts with a reference can lose their write to a condition; be safe anyway.
            vec![Ok(None); taken.len()]
        }
        .into_iter();
        for (i, draft) in taken {
            results[i] = Some(match holders.next() {
                Some(Ok(Some(existing))) => Self::replay(existing, &draft),
                Some(Err(e)) => Err(e.into()),
                // The holder vanished between the two calls (or two entries of this batch raced for
                // one reference): decide this entry again on its own.
                _ => self.register(draft).await,
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RegistryError::Internal("batch entry without outcome".into()))))
            .collect()
    }

    /// Creates each pointer, grouped into one write per patient: one atomic script on Redis for a
    /// patient's several pointers instead of one each. A group whose conditions fail (a reference
    /// already taken, usually a replayed extract) is retried entry by entry, so every entry gets
    /// its own outcome. Results are in `pending` order.
    async fn create_grouped(&self, pending: &[(usize, Pointer)]) -> Vec<Result<(), StoreError>> {
        let mut groups: Vec<(PatientWrite, Vec<usize>)> = Vec::new();
        let mut open: HashMap<NhsNumber, usize> = HashMap::new();
        for (k, (_, pointer)) in pending.iter().enumerate() {
            let write = Self::creation(pointer);
            // Two entries claiming one reference cannot share a write: both conditions would be
            // checked before either put. The second starts a new group.
            let joinable = open.get(&write.nhs_number).copied().filter(|&g| {
                !write
                    .conditions
                    .iter()
                    .any(|c| matches!(c, Condition::ReferenceFree(..)) && groups[g].0.conditions.contains(c))
            });
            match joinable {
                Some(g) => {
                    let (group, members) = &mut groups[g];
                    group.conditions.extend(write.conditions);
                    group.puts.extend(write.puts);
                    members.push(k);
                }
                None => {
                    open.insert(write.nhs_number, groups.len());
                    groups.push((write, vec![k]));
                }
            }
        }
        let (writes, members): (Vec<PatientWrite>, Vec<Vec<usize>>) = groups.into_iter().unzip();
        let mut results: Vec<Result<(), StoreError>> = vec![Ok(()); pending.len()];
        let mut retry: Vec<usize> = Vec::new();
        for (outcome, members) in self.store.apply_each(writes).await.into_iter().zip(members) {
            match outcome {
                Ok(()) => {}
                Err(StoreError::ConditionFailed) if members.len() > 1 => retry.extend(members),
                Err(e) => members.iter().for_each(|&k| results[k] = Err(e.clone())),
            }
        }
        if !retry.is_empty() {
            let one_by_one =
                self.store.apply_each(retry.iter().map(|&k| Self::creation(&pending[k].1)).collect()).await;
            for (k, outcome) in retry.into_iter().zip(one_by_one) {
                results[k] = outcome;
            }
        }
        results
    }

    async fn stored(&self, id: PointerId) -> Result<Pointer, RegistryError> {
        self.store.get(id).await?.ok_or_else(|| not_found(id))
    }

    /// Replaces the mutable fields of a current pointer at `version`.
    async fn revise(
        &self,
        caller: &Caller,
        id: PointerId,
        version: u64,
        draft: PointerDraft,
    ) -> Result<Pointer, RegistryError> {
        let stored = self.stored(id).await?;
        policy::check_write(caller, &stored.draft)?;
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
        let immutable: [(&str, bool); 5] = [
            ("pointer.nhs_number", old.nhs_number == draft.nhs_number),
            ("pointer.region", old.region == draft.region),
            ("pointer.custodian", old.custodian == draft.custodian),
            ("pointer.type", old.pointer_type == draft.pointer_type),
            ("pointer.producer_reference", old.producer_reference == draft.producer_reference),
        ];
        if let Some((field, _)) = immutable.iter().find(|(_, same)| !same) {
            return Err(RegistryError::invalid(*field, "cannot change on update; supersede the pointer to change it"));
        }
        let updated = Pointer { draft, version: version + 1, updated_at: self.clock.now(), ..stored };
        let write = PatientWrite {
            nhs_number: updated.draft.nhs_number,
            conditions: vec![Condition::AtVersion(id, version)],
            puts: vec![updated.clone()],
            deletes: vec![],
        };
        match self.store.apply(write).await {
            Ok(()) => Ok(updated),
            Err(StoreError::ConditionFailed) => Err(self.why_stale(id, version).await),
            Err(other) => Err(other.into()),
        }
    }

    /// Deletes a pointer; with `version`, only at that version.
    async fn remove(&self, caller: &Caller, id: PointerId, version: Option<u64>) -> Result<Pointer, RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.stored(id).await?;
            policy::check_write(caller, &stored.draft)?;
            if let Some(expected) = version {
                if stored.version != expected {
                    return Err(stale(id, expected, stored.version));
                }
            }
            let write = PatientWrite {
                nhs_number: stored.draft.nhs_number,
                conditions: vec![Condition::AtVersion(id, stored.version)],
                puts: vec![],
                deletes: vec![stored.clone()],
            };
            match self.store.apply(write).await {
                Ok(()) => return Ok(stored),
                Err(StoreError::ConditionFailed) if version.is_none() => continue,
                Err(StoreError::ConditionFailed) => return Err(self.why_stale(id, stored.version).await),
                Err(other) => return Err(other.into()),
            }
        }
        Err(contention())
    }

    /// Registers `draft` and retires `old_ids` in one atomic write.
    async fn replace(
        &self,
        caller: &Caller,
        draft: PointerDraft,
        old_ids: Vec<PointerId>,
    ) -> Result<Superseded, RegistryError> {
        let wanted: BTreeSet<PointerId> = old_ids.iter().copied().collect();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(key) = ReferenceKey::of(&draft) {
                if let Some(existing) = self.store.get_by_reference(&key).await? {
                    let same_olds = existing.supersedes.iter().copied().collect::<BTreeSet<_>>() == wanted;
                    if existing.draft != draft || !same_olds {
                        return Err(reference_taken(&draft));
                    }
                    let mut superseded = Vec::new();
                    for id in &old_ids {
                        if let Some(old) = self.store.get(*id).await? {
                            superseded.push(old);
                        }
                    }
                    return Ok(Superseded { pointer: existing, superseded, created: false });
                }
            }

            let mut olds = Vec::with_capacity(old_ids.len());
            for (i, id) in old_ids.iter().enumerate() {
                let field = format!("supersedes[{i}]");
                let old = self
                    .store
                    .get(*id)
                    .await?
                    .ok_or_else(|| RegistryError::NotFound(format!("{field}: pointer {id} not found")))?;
                // Permission first: another organisation's pointer must not reveal its patient or
                // type through the reason it cannot be superseded.
                policy::check_write(caller, &old.draft)?;
                check_replaceable(&old, &draft, &field)?;
                olds.push(old);
            }

            let new = self.new_pointer(draft.clone(), old_ids.clone());
            let mut write = Self::creation(&new);
            let retired: Vec<Pointer> = olds
                .into_iter()
                .map(|old| {
                    write.conditions.push(Condition::AtVersion(old.id, old.version));
                    Pointer {
                        status: PointerStatus::Superseded,
                        superseded_by: Some(new.id),
                        version: old.version + 1,
                        updated_at: new.created_at,
                        ..old
                    }
                })
                .collect();
            write.puts.extend(retired.iter().cloned());
            match self.store.apply(write).await {
                Ok(()) => return Ok(Superseded { pointer: new, superseded: retired, created: true }),
                Err(StoreError::ConditionFailed) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(contention())
    }

    // ---- The operations, each authorised and audited ----

    pub async fn create(&self, caller: &Caller, draft: PointerDraft) -> Result<Registered, RegistryError> {
        let nhs = draft.nhs_number;
        let result = match policy::check_write(caller, &draft).and_then(|()| self.check_region(&draft)) {
            Ok(()) => self.register(draft).await,
            Err(e) => Err(e),
        };
        self.audited(caller, "CreatePointer", nhs, result, |r| (vec![r.pointer.id], false)).await
    }

    /// Registers each entry on its own (invalid or unpermitted entries keep their error), results in
    /// order. The batch is one call, so it is audited as one: one event per patient and outcome
    /// (listing the pointers registered for that patient), all recorded in one store call. If the
    /// events cannot be recorded, every entry fails with UNAVAILABLE: nothing is acknowledged
    /// unaudited (a retry with the same producer references is safe).
    pub async fn create_batch(
        &self,
        caller: &Caller,
        drafts: Vec<Result<PointerDraft, RegistryError>>,
    ) -> Vec<Result<Registered, RegistryError>> {
        let patients: Vec<Option<NhsNumber>> = drafts.iter().map(|d| d.as_ref().ok().map(|d| d.nhs_number)).collect();
        let checked = drafts
            .into_iter()
            .map(|d| d.and_then(|d| policy::check_write(caller, &d).and_then(|()| self.check_region(&d)).map(|()| d)))
            .collect();
        let results = self.register_batch(checked).await;
        let events = self.batch_events(caller, &results, &patients);
        if events.is_empty() {
            return results;
        }
        match self.audit.append_all(events).await {
            Ok(()) => results,
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; withholding the batch's answers");
                let refusal =
                    RegistryError::Unavailable(format!("the audit log cannot be written ({e}); nothing was returned"));
                results.iter().map(|_| Err(refusal.clone())).collect()
            }
        }
    }

    /// The audit events of a batch: one per (patient, outcome), in the order each first appears.
    fn batch_events(
        &self,
        caller: &Caller,
        results: &[Result<Registered, RegistryError>],
        patients: &[Option<NhsNumber>],
    ) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut position: HashMap<(NhsNumber, &'static str), usize> = HashMap::new();
        for (result, patient) in results.iter().zip(patients) {
            // An entry without a valid NHS number touched no patient's pointers.
            let Some(nhs) = *patient else { continue };
            let outcome = result.as_ref().err().map_or("OK", RegistryError::code_name);
            let at = *position.entry((nhs, outcome)).or_insert_with(|| {
                let mut event = self.event(caller, "BatchCreatePointers", nhs);
                event.outcome = outcome.to_string();
                events.push(event);
                events.len() - 1
            });
            if let Ok(registered) = result {
                events[at].pointer_ids.push(registered.pointer.id);
            }
        }
        events
    }

    pub async fn get(&self, caller: &Caller, id: PointerId) -> Result<Pointer, RegistryError> {
        let Some((pointer, restricted)) = self.store.get_for_read(id).await? else {
            return Err(not_found(id));
        };
        let nhs = pointer.draft.nhs_number;
        let result = policy::read_scope(caller, restricted, []).and_then(|scope| {
            // A pointer the caller may not see is answered exactly like one that does not exist.
            if scope.can_see(&pointer) {
                Ok((pointer, scope.break_glass))
            } else {
                Err(not_found(id))
            }
        });
        self.audited(caller, "GetPointer", nhs, result, |(p, glass)| (vec![p.id], *glass)).await.map(|(p, _)| p)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: PointerId,
        version: u64,
        draft: PointerDraft,
    ) -> Result<Pointer, RegistryError> {
        if let Err(refusal) = policy::check_write(caller, &draft) {
            // Recorded against the patient the caller named.
            return self
                .audited(caller, "UpdatePointer", draft.nhs_number, Err(refusal), |p: &Pointer| (vec![p.id], false))
                .await;
        }
        // The event goes against the stored pointer's patient; an id that names no stored pointer
        // touched nobody's record and leaves no event (a forged id may decode to a real patient).
        let Some(stored) = self.store.get(id).await? else { return Err(not_found(id)) };
        let result = self.revise(caller, id, version, draft).await;
        if matches!(&result, Err(RegistryError::NotFound(_))) {
            return result;
        }
        self.audited(caller, "UpdatePointer", stored.draft.nhs_number, result, |p| (vec![p.id], false)).await
    }

    pub async fn delete(&self, caller: &Caller, id: PointerId, version: Option<u64>) -> Result<Pointer, RegistryError> {
        let Some(nhs) = self.store.ids().patient_of(id) else { return Err(not_found(id)) };
        let result = self.remove(caller, id, version).await;
        if matches!(&result, Err(RegistryError::NotFound(_))) {
            // Nothing of the patient's was touched (the id may not even be theirs).
            return result;
        }
        self.audited(caller, "DeletePointer", nhs, result, |p| (vec![p.id], false)).await
    }

    pub async fn supersede(
        &self,
        caller: &Caller,
        draft: PointerDraft,
        old_ids: Vec<PointerId>,
    ) -> Result<Superseded, RegistryError> {
        let nhs = draft.nhs_number;
        let result = match policy::check_write(caller, &draft).and_then(|()| self.check_region(&draft)) {
            Ok(()) => self.replace(caller, draft, old_ids).await,
            Err(e) => Err(e),
        };
        self.audited(caller, "SupersedePointer", nhs, result, |s| {
            (std::iter::once(s.pointer.id).chain(s.superseded.iter().map(|p| p.id)).collect(), false)
        })
        .await
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
            (page.pointers.iter().map(|p| p.id).collect(), *glass && !page.pointers.is_empty())
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
        self.audited(caller, "CountPointers", query.nhs_number, result, |(n, glass)| (vec![], *glass && *n > 0))
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
            (ids.clone(), *glass && !ids.is_empty())
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
            (ids.clone(), *glass && !ids.is_empty())
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
        self.audited(caller, "SetRestriction", nhs_number, result, |_| (vec![], false)).await
    }

    pub async fn restriction(&self, caller: &Caller, nhs_number: NhsNumber) -> Result<bool, RegistryError> {
        let result = match policy::check_read_restriction(caller) {
            Ok(()) => self.store.patient_record(nhs_number).await.map(|r| r.restricted).map_err(Into::into),
            Err(e) => Err(e),
        };
        self.audited(caller, "GetRestriction", nhs_number, result, |_| (vec![], false)).await
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
        self.audited(caller, "GetAccessLog", nhs_number, result, |_| (vec![], false)).await
    }

    /// The export: every event after `after`, oldest first.
    pub async fn audit_events(
        &self,
        caller: &Caller,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, RegistryError> {
        policy::check_audit_export(caller)?;
        Ok(self.audit.events_after(after, limit.clamp(1, MAX_AUDIT_PAGE)).await?)
    }

    /// After a failed version condition: NOT_FOUND if the pointer went, else ABORTED.
    async fn why_stale(&self, id: PointerId, expected: u64) -> RegistryError {
        match self.store.get(id).await {
            Ok(Some(now)) => stale(id, expected, now.version),
            Ok(None) => not_found(id),
            Err(e) => e.into(),
        }
    }
}

fn check_replaceable(old: &Pointer, draft: &PointerDraft, field: &str) -> Result<(), RegistryError> {
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

fn not_found(id: PointerId) -> RegistryError {
    RegistryError::NotFound(format!("pointer {id} not found"))
}

fn stale(id: PointerId, expected: u64, actual: u64) -> RegistryError {
    RegistryError::Aborted(format!("pointer {id} is at version {actual}, not {expected}: read it again"))
}

fn reference_taken(draft: &PointerDraft) -> RegistryError {
    let reference = draft.producer_reference.as_ref().map(ProducerReference::as_str).unwrap_or_default();
    RegistryError::AlreadyExists(format!(
        "custodian {} already registered producer_reference {reference:?} with different content",
        draft.custodian
    ))
}

fn contention() -> RegistryError {
    RegistryError::Aborted("too many concurrent changes to this patient's pointers; retry".into())
}
