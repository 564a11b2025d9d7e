//! Every storage port, together: [`PointerStore`] (pointers and restrictions), [`audit::AuditStore`]
//! (the patients' access logs and the audit export), [`feed::ChangeFeed`] (this node's changes, for
//! federation) and [`index::RegionIndex`] (the national patient → regions index), their one error
//! type [`StoreError`], and [`metered`], which times and counts every call through any of them.
//! Two backends implement all four: [`memory`] (the default) and [`redis`] (standalone and Cluster).
//!
//! [`PointerStore`] is deliberately small: reads of one pointer or one
//! patient, and one atomic, patient-scoped conditional write. The registry's rules live in
//! `registry`, above it, so every backend enforces them identically.
//!
//! Why patient-scoped: on Redis Cluster all of a patient's keys share a hash slot, so any write that
//! touches only one patient is a single atomic script, and a search is a single round trip.

pub mod audit;
pub mod budget;
pub mod feed;
pub mod index;
pub mod memory;
pub mod metered;
pub mod redis;

use crate::domain::{NhsNumber, OdsCode, Pointer, PointerId, PointerIdCodec, ProducerReference};
use crate::metrics::Metrics;
use async_trait::async_trait;
use audit::{AuditEvent, AuditStore};
use feed::ChangeFeed;
use index::RegionIndex;
use metered::Metered;
use std::sync::Arc;

/// One backend seen as the four ports it implements.
#[derive(Clone)]
pub struct Stores {
    pub pointers: Arc<dyn PointerStore>,
    pub audit: Arc<dyn AuditStore>,
    pub feed: Arc<dyn ChangeFeed>,
    pub index: Arc<dyn RegionIndex>,
}

impl Stores {
    pub fn of<S: PointerStore + AuditStore + ChangeFeed + RegionIndex>(store: S) -> Self {
        let store = Arc::new(store);
        Self { pointers: store.clone(), audit: store.clone(), feed: store.clone(), index: store }
    }

    /// The same ports, with the audit port's appends group-committed ([`audit::group_commit`]):
    /// concurrent calls' events go to the store together. Starts the writer task.
    pub fn group_commit_audit(self, metrics: &Arc<Metrics>) -> Self {
        Self { audit: Arc::new(audit::group_commit::GroupCommit::start(self.audit, metrics.clone())), ..self }
    }

    /// The same ports, each timed and counted (see [`metered`]).
    pub fn metered(self, metrics: &Arc<Metrics>) -> Self {
        Self {
            pointers: Arc::new(Metered::new(self.pointers, metrics.clone())),
            audit: Arc::new(Metered::new(self.audit, metrics.clone())),
            feed: Arc::new(Metered::new(self.feed, metrics.clone())),
            index: Arc::new(Metered::new(self.index, metrics.clone())),
        }
    }
}

/// What a store holds for one patient.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PatientRecord {
    pub pointers: Vec<Pointer>,
    /// The patient has restricted processing: ordinary readers see nothing.
    pub restricted: bool,
}

/// A producer's reference to one of a patient's pointers. References are unique per custodian
/// within one patient, so the key never leaves the patient's hash slot.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReferenceKey {
    pub nhs_number: NhsNumber,
    pub custodian: OdsCode,
    pub reference: ProducerReference,
}

impl ReferenceKey {
    /// The key of a draft that carries a reference.
    pub fn of(draft: &crate::domain::PointerDraft) -> Option<Self> {
        Some(Self {
            nhs_number: draft.nhs_number,
            custodian: draft.custodian.clone(),
            reference: draft.producer_reference.clone()?,
        })
    }
}

/// What must hold for a [`PatientWrite`] to apply.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Condition {
    /// No pointer with this id exists.
    Absent(PointerId),
    /// The pointer exists at exactly this version.
    AtVersion(PointerId, u64),
    /// None of the patient's stored pointers has this (custodian, producer_reference).
    ReferenceFree(OdsCode, ProducerReference),
}

/// An atomic change to one patient's pointers: if every condition holds, every put and delete is
/// applied; otherwise nothing is and the result is [`StoreError::ConditionFailed`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PatientWrite {
    pub nhs_number: NhsNumber,
    pub conditions: Vec<Condition>,
    /// Pointers to remove, as they were read (so a backend can drop their index entries too).
    pub deletes: Vec<Pointer>,
    /// Pointers to store (insert or replace by id), after the deletes; each must belong to `nhs_number`.
    pub puts: Vec<Pointer>,
    /// The audit event of the call making this write, recorded in the same atomic step: in the
    /// patient's log, and in the export where the backend can make that atomic too (memory,
    /// standalone Redis; on Redis Cluster the export is in another slot and gets a copy right
    /// after). A pointer never exists without the record of the write that made it.
    pub audit: Option<AuditEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("a write condition did not hold")]
    ConditionFailed,
    #[error("{0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A cursor points before the oldest entry a bounded stream still keeps.
    #[error("{0}")]
    OutOfRange(String),
    /// The backend cannot do this (e.g. a change feed on Redis Cluster, which would span slots).
    #[error("{0}")]
    Unsupported(String),
}

/// `metrics::store::MeteredStore` wraps every store and forwards each method, defaults included:
/// a method added here must be forwarded there too, or the backend's own version is bypassed.
#[async_trait]
pub trait PointerStore: Send + Sync + 'static {
    /// One pointer by id, current or superseded.
    async fn get(&self, id: PointerId) -> Result<Option<Pointer>, StoreError>;

    /// The patient's pointer that a custodian registered under its own reference.
    async fn get_by_reference(&self, key: &ReferenceKey) -> Result<Option<Pointer>, StoreError>;

    /// Every pointer of one patient, current and superseded, in no particular order, and whether
    /// the patient is restricted: one round trip.
    async fn patient_record(&self, nhs_number: NhsNumber) -> Result<PatientRecord, StoreError>;

    /// One pointer and whether its patient is restricted.
    async fn get_for_read(&self, id: PointerId) -> Result<Option<(Pointer, bool)>, StoreError> {
        match self.get(id).await? {
            Some(pointer) => {
                let restricted = self.patient_record(pointer.draft.nhs_number).await?.restricted;
                Ok(Some((pointer, restricted)))
            }
            None => Ok(None),
        }
    }

    /// Marks or clears a patient's restriction.
    async fn set_restriction(&self, nhs_number: NhsNumber, restricted: bool) -> Result<(), StoreError>;

    /// Applies one atomic patient-scoped write.
    async fn apply(&self, write: PatientWrite) -> Result<(), StoreError>;

    /// Several independent writes, each atomic on its own, results in order. Backends with a
    /// network round trip pipeline them.
    async fn apply_each(&self, writes: Vec<PatientWrite>) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(self.apply(write).await);
        }
        results
    }

    /// Looks up several references at once, results in order.
    async fn get_by_references(&self, keys: Vec<ReferenceKey>) -> Vec<Result<Option<Pointer>, StoreError>> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            results.push(self.get_by_reference(&key).await);
        }
        results
    }

    /// Cheap liveness check used by the health service.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Mints pointer ids for this store's patients and maps an id back to its patient. Every
    /// registry node sharing the store must use the same codec (the Redis store keeps its key in Redis).
    fn ids(&self) -> &PointerIdCodec;

    /// A short name for logs and metrics ("memory", "redis", "redis-cluster").
    fn backend(&self) -> &'static str;
}

/// What a storage failure means to the registry's callers.
impl From<StoreError> for crate::error::RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            // Callers that can retry a failed condition handle it before it gets here.
            StoreError::ConditionFailed => {
                Self::Aborted("the pointer changed concurrently; read it again and retry".into())
            }
            StoreError::Unavailable(reason) => Self::Unavailable(reason),
            StoreError::Corrupt(reason) => Self::Internal(reason),
            StoreError::OutOfRange(reason) => Self::OutOfRange(reason),
            StoreError::Unsupported(reason) => Self::precondition("store", reason),
        }
    }
}
