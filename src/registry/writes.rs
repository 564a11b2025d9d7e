//! The write operations: create (idempotent on producer_reference), batch create, update
//! (optimistic version check), delete and supersede (atomic). Each is read → decide (the pure
//! rules are in `domain::rules`) → one conditional `PatientWrite`; a write that loses a race is
//! decided again on fresh data, a bounded number of times, or answered ABORTED.
//!
//! Every write carries the audit event of the call that makes it (`PatientWrite::audit`), so the
//! store records both in one atomic step: a pointer never exists without the record of the write
//! that made it, even when the caller never sees the answer. What changed nothing (a refusal, a
//! replayed registration) is recorded afterwards, like a read: a replay, which shows the pointer,
//! in the patient's log and the export; a refusal in the export only.

use super::{Access, Registered, Registry, Superseded, MAX_ATTEMPTS};
use crate::auth::{policy, Caller};
use crate::domain::{rules, NhsNumber, Pointer, PointerDraft, PointerId, PointerStatus};
use crate::error::RegistryError;
use crate::store::audit::AuditEvent;
use crate::store::{Condition, PatientWrite, ReferenceKey, StoreError};
use std::collections::{BTreeSet, HashMap};

/// Who is writing, and as which operation: what a write's audit event records.
struct Call<'a> {
    caller: &'a Caller,
    operation: &'static str,
}

impl Registry {
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

    /// The event of a write that `call` makes, listing the pointers it changed.
    fn write_event(&self, call: &Call<'_>, nhs_number: NhsNumber, changed: Vec<PointerId>) -> AuditEvent {
        AuditEvent { pointer_ids: changed, ..self.event(call.caller, call.operation, Some(nhs_number)) }
    }

    /// The write that registers `pointer` (its id must be new and its reference unused), with the
    /// event that records it.
    fn creation(&self, call: &Call<'_>, pointer: &Pointer) -> PatientWrite {
        let mut conditions = vec![Condition::Absent(pointer.id)];
        if let Some(reference) = &pointer.draft.producer_reference {
            conditions.push(Condition::ReferenceFree(pointer.draft.custodian.clone(), reference.clone()));
        }
        let nhs_number = pointer.draft.nhs_number;
        PatientWrite {
            nhs_number,
            conditions,
            puts: vec![pointer.clone()],
            deletes: vec![],
            audit: Some(self.write_event(call, nhs_number, vec![pointer.id])),
        }
    }

    /// What an earlier registration under the same reference means for this one.
    fn replay(existing: Pointer, draft: &PointerDraft) -> Result<Registered, RegistryError> {
        if existing.draft == *draft {
            Ok(Registered { pointer: existing, created: false })
        } else {
            Err(rules::reference_taken(draft))
        }
    }

    /// Write first, read only if the reference turns out to be taken: a fresh registration (the
    /// common case, and all of a bulk load) costs one store call.
    async fn register(&self, call: &Call<'_>, draft: PointerDraft) -> Result<Registered, RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let pointer = self.new_pointer(draft.clone(), vec![]);
            match self.store.apply(self.creation(call, &pointer)).await {
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
        Err(rules::contention())
    }

    /// Registers each entry on its own (invalid entries keep their error), results in order.
    /// All writes go to the store at once; entries whose reference was taken are then looked up
    /// at once and answered as repeats or conflicts.
    async fn register_batch(
        &self,
        call: &Call<'_>,
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

        let applied = self.create_grouped(call, &pending).await;
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
                _ => self.register(call, draft).await,
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
    /// Each group's write carries one event listing the group's pointers; a retried entry, its own.
    async fn create_grouped(&self, call: &Call<'_>, pending: &[(usize, Pointer)]) -> Vec<Result<(), StoreError>> {
        let mut groups: Vec<(PatientWrite, Vec<usize>)> = Vec::new();
        let mut open: HashMap<NhsNumber, usize> = HashMap::new();
        for (k, (_, pointer)) in pending.iter().enumerate() {
            let write = self.creation(call, pointer);
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
                    if let Some(event) = group.audit.as_mut() {
                        event.pointer_ids.push(pointer.id);
                    }
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
                self.store.apply_each(retry.iter().map(|&k| self.creation(call, &pending[k].1)).collect()).await;
            for (k, outcome) in retry.into_iter().zip(one_by_one) {
                results[k] = outcome;
            }
        }
        results
    }

    /// Replaces the mutable fields of `stored` (as just read) if it is still at `version`.
    async fn revise(
        &self,
        caller: &Caller,
        stored: Pointer,
        version: Option<u64>,
        draft: PointerDraft,
    ) -> Result<Pointer, RegistryError> {
        policy::check_write(caller, &stored.draft)?;
        // Without a version (FHIR's PUT without If-Match) the update applies to the version just
        // read, and still fails rather than overwrite a change made in between.
        let version = version.unwrap_or(stored.version);
        rules::check_updatable(&stored, version, &draft)?;
        let id = stored.id;
        let updated = Pointer { draft, version: version + 1, updated_at: self.clock.now(), ..stored };
        let nhs_number = updated.draft.nhs_number;
        let call = Call { caller, operation: "UpdatePointer" };
        let write = PatientWrite {
            nhs_number,
            conditions: vec![Condition::AtVersion(id, version)],
            puts: vec![updated.clone()],
            deletes: vec![],
            audit: Some(self.write_event(&call, nhs_number, vec![id])),
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
            let stored = self.store.get(id).await?.ok_or_else(|| rules::not_found(id))?;
            policy::check_write(caller, &stored.draft)?;
            if let Some(expected) = version {
                if stored.version != expected {
                    return Err(rules::stale(id, expected, stored.version));
                }
            }
            let nhs_number = stored.draft.nhs_number;
            let call = Call { caller, operation: "DeletePointer" };
            let write = PatientWrite {
                nhs_number,
                conditions: vec![Condition::AtVersion(id, stored.version)],
                puts: vec![],
                deletes: vec![stored.clone()],
                audit: Some(self.write_event(&call, nhs_number, vec![id])),
            };
            match self.store.apply(write).await {
                Ok(()) => return Ok(stored),
                Err(StoreError::ConditionFailed) if version.is_none() => continue,
                Err(StoreError::ConditionFailed) => return Err(self.why_stale(id, stored.version).await),
                Err(other) => return Err(other.into()),
            }
        }
        Err(rules::contention())
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
                        return Err(rules::reference_taken(&draft));
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
                rules::check_replaceable(&old, &draft, &field)?;
                olds.push(old);
            }

            let new = self.new_pointer(draft.clone(), old_ids.clone());
            let call = Call { caller, operation: "SupersedePointer" };
            let mut write = self.creation(&call, &new);
            let retired: Vec<Pointer> = olds
                .into_iter()
                .map(|old| {
                    write.conditions.push(Condition::AtVersion(old.id, old.version));
                    rules::retired(old, &new)
                })
                .collect();
            write.puts.extend(retired.iter().cloned());
            if let Some(event) = write.audit.as_mut() {
                event.pointer_ids.extend(retired.iter().map(|p| p.id));
            }
            match self.store.apply(write).await {
                Ok(()) => return Ok(Superseded { pointer: new, superseded: retired, created: true }),
                Err(StoreError::ConditionFailed) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(rules::contention())
    }

    /// May `caller` register `draft` on this node? The draft's own rules first (it is the caller's
    /// input, like what the edge checked), then the caller's permission, then the node's regions.
    /// `prefix` is where the request held the draft (see `rules::check_draft`).
    fn admissible(&self, caller: &Caller, draft: &PointerDraft, prefix: &str) -> Result<(), RegistryError> {
        rules::check_draft(draft, prefix)?;
        policy::check_write(caller, draft)?;
        self.check_region(draft)
    }

    // ---- The operations, each authorised and audited ----

    pub async fn create(&self, caller: &Caller, draft: PointerDraft) -> Result<Registered, RegistryError> {
        let nhs = draft.nhs_number;
        let call = Call { caller, operation: "CreatePointer" };
        let result = match self.admissible(caller, &draft, "pointer") {
            Ok(()) => self.register(&call, draft).await,
            Err(e) => Err(e),
        };
        // A fresh registration was recorded with its write; a replay changed nothing and is recorded now.
        self.audited_unless(
            |r: &Registered| r.created,
            caller,
            "CreatePointer",
            nhs,
            result,
            |r| Access::pointers(vec![r.pointer.id], false),
        )
        .await
    }

    /// Registers each entry on its own (invalid or unpermitted entries keep their error), results in
    /// order. What each patient's write registers is recorded with it (one event per write,
    /// listing its pointers). The rest, refusals and replays, are then recorded in one store call:
    /// one event per patient and outcome. If those cannot be recorded, every entry not registered
    /// by this call fails with UNAVAILABLE: nothing is shown unaudited (a retry with the same
    /// producer references is safe).
    pub async fn create_batch(
        &self,
        caller: &Caller,
        drafts: Vec<Result<PointerDraft, RegistryError>>,
    ) -> Vec<Result<Registered, RegistryError>> {
        let patients: Vec<Option<NhsNumber>> = drafts.iter().map(|d| d.as_ref().ok().map(|d| d.nhs_number)).collect();
        let checked = drafts.into_iter().map(|d| d.and_then(|d| self.admissible(caller, &d, "").map(|()| d))).collect();
        let call = Call { caller, operation: "BatchCreatePointers" };
        let results = self.register_batch(&call, checked).await;
        let events = self.batch_events(caller, &results, &patients);
        if events.is_empty() {
            return results;
        }
        match self.record(events).await {
            Ok(()) => results,
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; withholding the batch's unrecorded answers");
                let refusal =
                    RegistryError::Unavailable(format!("the audit log cannot be written ({e}); nothing was returned"));
                results
                    .into_iter()
                    .map(|r| match r {
                        Ok(registered) if registered.created => Ok(registered),
                        _ => Err(refusal.clone()),
                    })
                    .collect()
            }
        }
    }

    /// The audit events a batch still owes, for the entries its writes did not record: one per
    /// (patient, outcome), in the order each first appears. Replays show their pointers, so go to
    /// the patient's log too; refusals and entries naming no valid patient, to the export only.
    fn batch_events(
        &self,
        caller: &Caller,
        results: &[Result<Registered, RegistryError>],
        patients: &[Option<NhsNumber>],
    ) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut position: HashMap<(Option<NhsNumber>, &'static str), usize> = HashMap::new();
        for (result, patient) in results.iter().zip(patients) {
            if matches!(result, Ok(registered) if registered.created) {
                continue; // Recorded with its write.
            }
            let outcome = result.as_ref().err().map_or("OK", RegistryError::code_name);
            let at = *position.entry((*patient, outcome)).or_insert_with(|| {
                let mut event = self.event(caller, "BatchCreatePointers", *patient);
                event.outcome = outcome.to_string();
                // A replay shows the pointer it names; anything else touched nothing of the patient's.
                event.export_only = outcome != "OK" || patient.is_none();
                events.push(event);
                events.len() - 1
            });
            if let Ok(registered) = result {
                events[at].pointer_ids.push(registered.pointer.id);
            }
        }
        events
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: PointerId,
        version: Option<u64>,
        draft: PointerDraft,
    ) -> Result<Pointer, RegistryError> {
        if let Err(refusal) = rules::check_draft(&draft, "pointer").and_then(|()| policy::check_write(caller, &draft)) {
            // Recorded (in the export) against the patient the caller named.
            return self
                .audited(caller, "UpdatePointer", draft.nhs_number, Err(refusal), |p: &Pointer| {
                    Access::pointers(vec![p.id], false)
                })
                .await;
        }
        // The event goes against the stored pointer's patient; an id that names no stored pointer
        // is recorded against nobody (a forged id may decode to a real, unrelated patient).
        let Some(stored) = self.store.get(id).await? else {
            return Err(self.refuse(caller, "UpdatePointer", rules::not_found(id)).await);
        };
        let nhs = stored.draft.nhs_number;
        let result = self.revise(caller, stored, version, draft).await;
        self.audited_unless(
            |_: &Pointer| true,
            caller,
            "UpdatePointer",
            nhs,
            result,
            |p| Access::pointers(vec![p.id], false),
        )
        .await
    }

    pub async fn delete(&self, caller: &Caller, id: PointerId, version: Option<u64>) -> Result<Pointer, RegistryError> {
        let Some(nhs) = self.store.ids().patient_of(id) else {
            return Err(self.refuse(caller, "DeletePointer", rules::not_found(id)).await);
        };
        let result = self.remove(caller, id, version).await;
        if let Err(missing @ RegistryError::NotFound(_)) = result {
            // Nothing of the patient's was touched (the id may not even be theirs): against nobody.
            return Err(self.refuse(caller, "DeletePointer", missing).await);
        }
        self.audited_unless(
            |_: &Pointer| true,
            caller,
            "DeletePointer",
            nhs,
            result,
            |p| Access::pointers(vec![p.id], false),
        )
        .await
    }

    pub async fn supersede(
        &self,
        caller: &Caller,
        draft: PointerDraft,
        old_ids: Vec<PointerId>,
    ) -> Result<Superseded, RegistryError> {
        let nhs = draft.nhs_number;
        let result = match self.admissible(caller, &draft, "pointer") {
            Ok(()) => self.replace(caller, draft, old_ids).await,
            Err(e) => Err(e),
        };
        self.audited_unless(
            |s: &Superseded| s.created,
            caller,
            "SupersedePointer",
            nhs,
            result,
            |s| {
                Access::pointers(
                    std::iter::once(s.pointer.id).chain(s.superseded.iter().map(|p| p.id)).collect(),
                    false,
                )
            },
        )
        .await
    }
}
