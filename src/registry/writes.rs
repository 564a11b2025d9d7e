//! The write operations: create (idempotent on producer_reference), batch create, update
//! (optimistic version check), delete and supersede (atomic). Each is read → decide (the pure
//! rules are in `domain::rules`) → one conditional `PatientWrite`; a write that loses a race is
//! decided again on fresh data, a bounded number of times, or answered ABORTED.

use super::{Registered, Registry, Superseded, MAX_ATTEMPTS};
use crate::auth::{policy, Caller};
use crate::domain::{rules, NhsNumber, Pointer, PointerDraft, PointerId, PointerStatus};
use crate::error::RegistryError;
use crate::store::audit::AuditEvent;
use crate::store::{Condition, PatientWrite, ReferenceKey, StoreError};
use std::collections::{BTreeSet, HashMap};

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
            Err(rules::reference_taken(draft))
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
        Err(rules::contention())
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

    /// Replaces the mutable fields of `stored` (as just read) if it is still at `version`.
    async fn revise(
        &self,
        caller: &Caller,
        stored: Pointer,
        version: u64,
        draft: PointerDraft,
    ) -> Result<Pointer, RegistryError> {
        policy::check_write(caller, &stored.draft)?;
        rules::check_updatable(&stored, version, &draft)?;
        let id = stored.id;
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
            let stored = self.store.get(id).await?.ok_or_else(|| rules::not_found(id))?;
            policy::check_write(caller, &stored.draft)?;
            if let Some(expected) = version {
                if stored.version != expected {
                    return Err(rules::stale(id, expected, stored.version));
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
            let mut write = Self::creation(&new);
            let retired: Vec<Pointer> = olds
                .into_iter()
                .map(|old| {
                    write.conditions.push(Condition::AtVersion(old.id, old.version));
                    rules::retired(old, &new)
                })
                .collect();
            write.puts.extend(retired.iter().cloned());
            match self.store.apply(write).await {
                Ok(()) => return Ok(Superseded { pointer: new, superseded: retired, created: true }),
                Err(StoreError::ConditionFailed) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(rules::contention())
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
            return Err(rules::not_found(id));
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
        let Some(stored) = self.store.get(id).await? else { return Err(rules::not_found(id)) };
        let nhs = stored.draft.nhs_number;
        let result = self.revise(caller, stored, version, draft).await;
        if matches!(&result, Err(RegistryError::NotFound(_))) {
            return result;
        }
        self.audited(caller, "UpdatePointer", nhs, result, |p| (vec![p.id], false)).await
    }

    pub async fn delete(&self, caller: &Caller, id: PointerId, version: Option<u64>) -> Result<Pointer, RegistryError> {
        let Some(nhs) = self.store.ids().patient_of(id) else { return Err(rules::not_found(id)) };
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
}
