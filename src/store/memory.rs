//! The embedded in-memory store: the default, so `cargo run` needs nothing else. It is for
//! development, tests and demos: nothing survives a restart, and its audit log keeps only the
//! newest events (`audit_log`). Use Redis for anything real.

mod audit_log;

pub use audit_log::DEFAULT_RETENTION as DEFAULT_AUDIT_RETENTION;

use super::audit::{AuditEvent, AuditStore, EventPage};
use super::feed::{changes_of, cursor_out_of_range, Change, ChangeFeed, SnapshotPage};
use super::index::{IndexEntry, IndexUpdate, RegionIndex};
use super::{Condition, PatientRecord, PatientWrite, PointerStore, ReferenceKey, StoreError};
use crate::domain::{NhsNumber, Pointer, PointerId, PointerIdCodec, RegionCode};
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

struct Tables {
    /// Shared, so a read copies the handles under the lock and the pointers after it.
    by_patient: HashMap<NhsNumber, HashMap<PointerId, Arc<Pointer>>>,
    patient_of: HashMap<PointerId, NhsNumber>,
    by_reference: HashMap<ReferenceKey, PointerId>,
    restricted: HashSet<NhsNumber>,
    /// The audit log, bounded; an event's cursor is its position.
    audit: audit_log::AuditLog,
    /// The change feed: (sequence, change), oldest first, at most `FEED_RETENTION` long.
    feed: VecDeque<(u64, Change)>,
    next_sequence: u64,
    /// National index: patient → pointer id → entry; and follow cursors by source.
    index: HashMap<NhsNumber, BTreeMap<PointerId, IndexEntry>>,
    /// National index: the regions whose nodes restrict a patient, with the generation that wrote it.
    region_restrictions: HashMap<NhsNumber, BTreeMap<RegionCode, u64>>,
    cursors: HashMap<String, String>,
}

/// Changes the memory store keeps for followers.
pub const FEED_RETENTION: usize = 1_000_000;

/// All pointers behind one std mutex. It is never held across an `.await` (every method locks,
/// works on plain maps and unlocks), so a blocking mutex is correct and cheaper than an async one.
pub struct MemoryStore {
    tables: Mutex<Tables>,
    ids: PointerIdCodec,
    /// Feed cursors are `EPOCH-SEQUENCE`: a restarted store starts a new epoch, so a follower's
    /// cursor from before the restart is recognised as out of range instead of silently skipping.
    epoch: u32,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping the default number of audit events. Its id key is random: ids, like
    /// the data, die with the process.
    pub fn new() -> Self {
        Self::with_audit_retention(DEFAULT_AUDIT_RETENTION, None)
    }

    /// An empty store keeping the newest `retention` audit events, counting drops in `metrics`.
    pub fn with_audit_retention(retention: usize, metrics: Option<Arc<Metrics>>) -> Self {
        let tables = Tables {
            by_patient: HashMap::new(),
            patient_of: HashMap::new(),
            by_reference: HashMap::new(),
            restricted: HashSet::new(),
            audit: audit_log::AuditLog::new(retention, metrics),
            feed: VecDeque::new(),
            // Sequences start at 1, so `EPOCH-0` is the cursor before every change.
            next_sequence: 1,
            index: HashMap::new(),
            region_restrictions: HashMap::new(),
            cursors: HashMap::new(),
        };
        Self { tables: Mutex::new(tables), ids: PointerIdCodec::random(), epoch: rand::random() }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied write: `apply` checks every
        // condition before it mutates anything. So a poisoned lock is still consistent.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Tables {
    /// Appends an audit event to the log (and so to the export: one list serves both here).
    fn append_event(&mut self, event: audit_log::Encoded) {
        self.audit.append(event);
    }

    /// Appends a change to the feed, dropping the oldest past the retention.
    fn record(&mut self, change: Change) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.feed.push_back((sequence, change));
        if self.feed.len() > FEED_RETENTION {
            self.feed.pop_front();
        }
    }

    fn holds(&self, nhs_number: NhsNumber, condition: &Condition) -> bool {
        match condition {
            Condition::Absent(id) => !self.patient_of.contains_key(id),
            Condition::AtVersion(id, version) => self.get(*id).is_some_and(|p| p.version == *version),
            Condition::ReferenceFree(custodian, reference) => !self.by_reference.contains_key(&ReferenceKey {
                nhs_number,
                custodian: custodian.clone(),
                reference: reference.clone(),
            }),
        }
    }

    fn get(&self, id: PointerId) -> Option<&Pointer> {
        let nhs = self.patient_of.get(&id)?;
        self.by_patient.get(nhs)?.get(&id).map(Arc::as_ref)
    }

    fn remove(&mut self, id: PointerId) {
        let Some(nhs) = self.patient_of.remove(&id) else {
            return;
        };
        let Some(patient) = self.by_patient.get_mut(&nhs) else {
            return;
        };
        if let Some(key) = patient.remove(&id).as_ref().and_then(|old| ReferenceKey::of(&old.draft)) {
            self.by_reference.remove(&key);
        }
        if patient.is_empty() {
            self.by_patient.remove(&nhs);
        }
    }

    fn put(&mut self, pointer: Pointer) {
        self.remove(pointer.id);
        let nhs = pointer.draft.nhs_number;
        if let Some(key) = ReferenceKey::of(&pointer.draft) {
            self.by_reference.insert(key, pointer.id);
        }
        self.patient_of.insert(pointer.id, nhs);
        self.by_patient.entry(nhs).or_default().insert(pointer.id, Arc::new(pointer));
    }
}

#[async_trait]
impl PointerStore for MemoryStore {
    async fn get(&self, id: PointerId) -> Result<Option<Pointer>, StoreError> {
        Ok(self.lock().get(id).cloned())
    }

    async fn get_by_reference(&self, key: &ReferenceKey) -> Result<Option<Pointer>, StoreError> {
        let tables = self.lock();
        let id = tables.by_reference.get(key).copied();
        Ok(id.and_then(|id| tables.get(id).cloned()))
    }

    async fn patient_record(&self, nhs_number: NhsNumber) -> Result<PatientRecord, StoreError> {
        let (shared, restricted): (Vec<Arc<Pointer>>, bool) = {
            let tables = self.lock();
            let shared = tables.by_patient.get(&nhs_number).map(|pointers| pointers.values().cloned().collect());
            (shared.unwrap_or_default(), tables.restricted.contains(&nhs_number))
        };
        // The copies are made after the lock is released.
        Ok(PatientRecord { pointers: shared.iter().map(|p| Pointer::clone(p)).collect(), restricted })
    }

    async fn set_restriction(&self, nhs_number: NhsNumber, restricted: bool) -> Result<(), StoreError> {
        let mut tables = self.lock();
        if restricted {
            tables.restricted.insert(nhs_number);
        } else {
            tables.restricted.remove(&nhs_number);
        }
        // Under the same lock, like a pointer change: the feed carries it to the national node.
        tables.record(Change::restriction(nhs_number, restricted));
        Ok(())
    }

    async fn apply(&self, write: PatientWrite) -> Result<(), StoreError> {
        if write.puts.iter().any(|p| p.draft.nhs_number != write.nhs_number) {
            return Err(StoreError::Corrupt("a put belongs to another patient".into()));
        }
        let event = write.audit.as_ref().map(audit_log::Encoded::of);
        let mut tables = self.lock();
        if !write.conditions.iter().all(|c| tables.holds(write.nhs_number, c)) {
            return Err(StoreError::ConditionFailed);
        }
        // The feed is appended under the same lock as the change: atomic with it.
        let changes = changes_of(&write);
        for id in write.deletes.iter().map(|p| p.id) {
            // Like the Redis store, a write only ever reaches its own patient's pointers.
            if tables.patient_of.get(&id) == Some(&write.nhs_number) {
                tables.remove(id);
            }
        }
        for pointer in write.puts {
            tables.put(pointer);
        }
        for change in changes {
            tables.record(change);
        }
        // And its audit event, under the same lock: the write and its record are one step.
        if let Some(event) = event {
            tables.append_event(event);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn ids(&self) -> &PointerIdCodec {
        &self.ids
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// A position: digits only (`usize`'s parser would also take a leading `+`).
fn parse_cursor(cursor: &str) -> Option<u64> {
    cursor.bytes().all(|b| b.is_ascii_digit()).then(|| cursor.parse().ok()).flatten()
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let encoded: Vec<audit_log::Encoded> = events.iter().map(audit_log::Encoded::of).collect();
        let mut tables = self.lock();
        for event in encoded {
            tables.append_event(event);
        }
        Ok(())
    }

    async fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        self.lock().audit.patient_events(nhs_number, before.as_deref().and_then(parse_cursor), limit)
    }

    async fn events_after(&self, after: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.lock().audit.events_after(after.as_deref().and_then(parse_cursor), limit)
    }

    /// One position space serves both: an event's index in the store's single event list.
    fn valid_log_cursor(&self, cursor: &str) -> bool {
        parse_cursor(cursor).is_some()
    }

    fn valid_export_cursor(&self, cursor: &str) -> bool {
        parse_cursor(cursor).is_some()
    }
}

#[async_trait]
impl ChangeFeed for MemoryStore {
    async fn changes_after(&self, after: Option<String>, limit: usize) -> Result<Vec<Change>, StoreError> {
        let tables = self.lock();
        let oldest = tables.feed.front().map_or(tables.next_sequence, |(s, _)| *s);
        let start = match after.as_deref() {
            // From the oldest change kept, whatever was trimmed before it.
            None => oldest,
            Some(cursor) => match self.parse_feed_cursor(cursor) {
                Some((epoch, sequence)) if epoch == self.epoch => sequence + 1,
                // Another incarnation's cursor, or garbage: the history it refers to is gone.
                _ => return Err(cursor_out_of_range(cursor)),
            },
        };
        if start < oldest {
            return Err(cursor_out_of_range(&after.unwrap_or_default()));
        }
        let skip = (start - oldest) as usize;
        Ok(tables
            .feed
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(sequence, change)| Change { cursor: Some(format!("{}-{sequence}", self.epoch)), ..change.clone() })
            .collect())
    }

    fn valid_feed_cursor(&self, cursor: &str) -> bool {
        self.parse_feed_cursor(cursor).is_some()
    }

    async fn latest_cursor(&self) -> Result<String, StoreError> {
        Ok(format!("{}-{}", self.epoch, self.lock().next_sequence - 1))
    }

    /// The whole store in one page: it is in memory already, and a development store.
    async fn snapshot_page(&self, _after: Option<String>, _limit: usize) -> Result<SnapshotPage, StoreError> {
        let tables = self.lock();
        Ok(SnapshotPage {
            pointers: tables
                .by_patient
                .values()
                .flat_map(|pointers| pointers.values().map(|p| Pointer::clone(p)))
                .collect(),
            restricted: tables.restricted.iter().copied().collect(),
            next: None,
        })
    }
}

impl MemoryStore {
    fn parse_feed_cursor(&self, cursor: &str) -> Option<(u32, u64)> {
        let (epoch, sequence) = cursor.split_once('-')?;
        Some((epoch.parse().ok()?, sequence.parse().ok()?))
    }
}

#[async_trait]
impl RegionIndex for MemoryStore {
    async fn index_changes(&self, updates: &[IndexUpdate]) -> Result<(), StoreError> {
        let mut tables = self.lock();
        for update in updates {
            let entries = tables.index.entry(update.nhs_number).or_default();
            match &update.current {
                Some(entry) => entries.insert(update.id, entry.clone()),
                None => entries.remove(&update.id),
            };
        }
        Ok(())
    }

    async fn index_entries(&self, nhs_number: NhsNumber) -> Result<(Vec<IndexEntry>, bool), StoreError> {
        let tables = self.lock();
        let entries = tables.index.get(&nhs_number).map(|e| e.values().cloned().collect()).unwrap_or_default();
        let restricted = tables.restricted.contains(&nhs_number)
            || tables.region_restrictions.get(&nhs_number).is_some_and(|r| !r.is_empty());
        Ok((entries, restricted))
    }

    async fn set_region_restriction(
        &self,
        nhs_number: NhsNumber,
        region: &RegionCode,
        restricted: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut tables = self.lock();
        match restricted {
            Some(generation) => {
                tables.region_restrictions.entry(nhs_number).or_default().insert(region.clone(), generation);
            }
            None => {
                if let Some(regions) = tables.region_restrictions.get_mut(&nhs_number) {
                    regions.remove(region);
                    if regions.is_empty() {
                        tables.region_restrictions.remove(&nhs_number);
                    }
                }
            }
        }
        Ok(())
    }

    async fn follow_cursor(&self, source: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().cursors.get(source).cloned())
    }

    async fn set_follow_cursor(&self, source: &str, cursor: &str) -> Result<(), StoreError> {
        self.lock().cursors.insert(source.to_string(), cursor.to_string());
        Ok(())
    }

    async fn sweep_region(&self, region: &RegionCode, generation: u64) -> Result<u64, StoreError> {
        let mut tables = self.lock();
        let mut removed = 0;
        tables.index.retain(|_, entries| {
            let before = entries.len();
            entries.retain(|_, e| e.region != *region || e.generation >= generation);
            removed += (before - entries.len()) as u64;
            !entries.is_empty()
        });
        tables.region_restrictions.retain(|_, regions| {
            let before = regions.len();
            regions.retain(|r, g| r != region || *g >= generation);
            removed += (before - regions.len()) as u64;
            !regions.is_empty()
        });
        Ok(removed)
    }
}
