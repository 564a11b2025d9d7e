//! `PointerStore` on Redis: reads, the write script (`run_write`), and WAIT for replicas before a
//! write is acknowledged.

use super::connection::Connection;
use super::{encoding, keys, scripts, unavailable, RedisStore};
use crate::domain::{NhsNumber, Pointer, PointerId, PointerIdCodec};
use crate::store::audit::codec;
use crate::store::feed::{changes_of, Change, ChangeBody, ChangeKind};
use crate::store::{Condition, PatientRecord, PatientWrite, PointerStore, ReferenceKey, StoreError};
use async_trait::async_trait;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::RedisError;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

impl RedisStore {
    /// Runs the write script; true when applied.
    async fn run_write(&self, write: &PatientWrite) -> Result<bool, StoreError> {
        let mut invocation = scripts::APPLY.prepare_invoke();
        invocation.key(keys::pointers(write.nhs_number)).key(keys::audit(write.nhs_number));
        if self.feed.is_some() {
            // Standalone Redis: the feed and the export are in this node too, so the write, its
            // feed changes and its audit event (log and export) are one atomic script.
            invocation.key(keys::FEED).key(keys::AUDIT_EXPORT);
        }
        invocation.arg(write.conditions.len());
        for condition in &write.conditions {
            match condition {
                Condition::Absent(id) => invocation.arg("A").arg(id.as_bytes().as_slice()).arg(""),
                Condition::AtVersion(id, version) => {
                    invocation.arg("V").arg(id.as_bytes().as_slice()).arg(encoding::version_bytes(*version).as_slice())
                }
                Condition::ReferenceFree(custodian, reference) => {
                    invocation.arg("R").arg(keys::reference_field(custodian, reference)).arg("")
                }
            };
        }
        let reference_of = |p: &Pointer| {
            p.draft
                .producer_reference
                .as_ref()
                .map(|r| keys::reference_field(&p.draft.custodian, r))
                .unwrap_or_default()
        };
        invocation.arg(write.deletes.len());
        for pointer in &write.deletes {
            invocation.arg(pointer.id.as_bytes().as_slice()).arg(reference_of(pointer));
        }
        // Each put is encoded once: the same bytes go into the hash and into its feed change.
        let values: Vec<Vec<u8>> = write.puts.iter().map(encoding::encode).collect();
        invocation.arg(write.puts.len());
        for (pointer, value) in write.puts.iter().zip(&values) {
            invocation.arg(pointer.id.as_bytes().as_slice()).arg(value.as_slice()).arg(reference_of(pointer));
        }
        match self.feed {
            Some(maxlen) => {
                let changes = changes_of(write);
                invocation.arg(changes.len()).arg(maxlen);
                for change in &changes {
                    let value = match &change.body {
                        ChangeBody::Pointer { kind: ChangeKind::Deleted, .. } | ChangeBody::Restriction { .. } => None,
                        ChangeBody::Pointer { pointer, .. } => {
                            write.puts.iter().position(|p| p.id == pointer.id).map(|i| values[i].as_slice())
                        }
                    };
                    invocation.arg(encoding::encode_change(change, value));
                }
            }
            None => {
                invocation.arg(0);
            }
        }
        let event = write.audit.as_ref().map(codec::encode).unwrap_or_default();
        invocation.arg(event.as_slice()).arg(self.audit_export_retention);
        let mut connection = self.connection.clone();
        let applied: i64 = self.bounded(invocation.invoke_async(&mut connection)).await?;
        if applied == 1 && self.cluster && !event.is_empty() {
            self.export_copy(&event).await;
        }
        Ok(applied == 1)
    }

    /// On a cluster the export stream is in another slot than the patient, so a write's event
    /// reaches it by a second call once the write (with the event in the patient's log) is done.
    /// The patient's log is the record of truth; if this copy fails (an outage, a crash in
    /// between), the export lacks the event and the failure is logged, but the write stands: it
    /// is applied and audited, and failing it now would only invite a duplicate retry.
    async fn export_copy(&self, event: &[u8]) {
        let mut export = scripts::RECORD.prepare_invoke();
        export.key(keys::AUDIT_EXPORT).arg(0).arg(self.audit_export_retention).arg(0).arg(event);
        let mut connection = self.connection.clone();
        if let Err(e) = self.bounded(export.invoke_async::<i64>(&mut connection)).await {
            tracing::error!(error = %e, "a write's audit event is in the patient's log but could not be copied to the export");
        }
    }

    /// Waits for replica acknowledgement of everything written so far on the connection(s) that
    /// serve `nhs_numbers` (WAIT is per connection, and cluster writes go to each slot's master).
    async fn wait_for_replicas(&self, nhs_numbers: impl Iterator<Item = NhsNumber>) -> Result<(), StoreError> {
        let Some((replicas, wait_timeout)) = self.wait else { return Ok(()) };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(wait_timeout.as_millis() as u64);
        let acknowledged: Vec<i64> = match &self.connection {
            Connection::Single(c) => {
                let mut c = c.clone();
                vec![self.bounded_wait(wait.query_async(&mut c), wait_timeout).await?]
            }
            Connection::Cluster(c) => {
                let slots: BTreeSet<u16> = nhs_numbers.map(keys::slot).collect();
                let calls = slots.into_iter().map(|slot| {
                    let mut c = c.clone();
                    let wait = wait.clone();
                    async move {
                        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                        let value = c.route_command(wait, RoutingInfo::SingleNode(route)).await?;
                        redis::from_redis_value::<i64>(value).map_err(RedisError::from)
                    }
                });
                let mut counts = Vec::new();
                for result in futures::future::join_all(calls.map(|call| self.bounded_wait(call, wait_timeout))).await {
                    counts.push(result?);
                }
                counts
            }
        };
        match acknowledged.iter().min() {
            Some(&least) if least < i64::from(replicas) => Err(StoreError::Unavailable(format!(
                "write applied on the primary but only {least} of {replicas} replicas acknowledged it within {wait_timeout:?}"
            ))),
            _ => Ok(()),
        }
    }

    async fn bounded_wait<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
        wait_timeout: Duration,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout + wait_timeout, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable("redis did not answer WAIT in time".into())),
        }
    }
}

#[async_trait]
impl PointerStore for RedisStore {
    async fn get(&self, id: PointerId) -> Result<Option<Pointer>, StoreError> {
        let Some(nhs) = self.ids.patient_of(id) else { return Ok(None) };
        let mut connection = self.connection.clone();
        let value: Option<Vec<u8>> = self
            .bounded(
                redis::cmd("HGET").arg(keys::pointers(nhs)).arg(id.as_bytes().as_slice()).query_async(&mut connection),
            )
            .await?;
        value.map(|v| self.decode(nhs, id.as_bytes(), &v)).transpose()
    }

    async fn get_by_reference(&self, key: &ReferenceKey) -> Result<Option<Pointer>, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = scripts::BY_REFERENCE.prepare_invoke();
        invocation.key(keys::pointers(key.nhs_number)).arg(keys::reference_field(&key.custodian, &key.reference));
        let found: Option<(Vec<u8>, Vec<u8>)> = self.bounded(invocation.invoke_async(&mut connection)).await?;
        found.map(|(id, value)| self.decode(key.nhs_number, &id, &value)).transpose()
    }

    async fn get_by_references(&self, keys: Vec<ReferenceKey>) -> Vec<Result<Option<Pointer>, StoreError>> {
        futures::future::join_all(keys.iter().map(|key| self.get_by_reference(key))).await
    }

    async fn patient_record(&self, nhs_number: NhsNumber) -> Result<PatientRecord, StoreError> {
        let mut connection = self.connection.clone();
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            self.bounded(redis::cmd("HGETALL").arg(keys::pointers(nhs_number)).query_async(&mut connection)).await?;
        let restricted = entries.iter().any(|(field, _)| field.as_slice() == keys::RESTRICTED_FIELD.as_bytes());
        let pointers = entries
            .iter()
            .filter(|(field, _)| keys::is_pointer_field(field))
            .map(|(id, value)| self.decode(nhs_number, id, value))
            .collect::<Result<_, _>>()?;
        Ok(PatientRecord { pointers, restricted })
    }

    async fn get_for_read(&self, id: PointerId) -> Result<Option<(Pointer, bool)>, StoreError> {
        let Some(nhs) = self.ids.patient_of(id) else { return Ok(None) };
        let mut connection = self.connection.clone();
        let (value, restricted): (Option<Vec<u8>>, Option<String>) = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(keys::pointers(nhs))
                    .arg(id.as_bytes().as_slice())
                    .arg(keys::RESTRICTED_FIELD)
                    .query_async(&mut connection),
            )
            .await?;
        value.map(|v| Ok((self.decode(nhs, id.as_bytes(), &v)?, restricted.is_some()))).transpose()
    }

    /// With a feed (standalone Redis), the flag and its feed change are one script: atomic, like a
    /// pointer write.
    async fn set_restriction(&self, nhs_number: NhsNumber, restricted: bool) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = scripts::RESTRICT.prepare_invoke();
        invocation.key(keys::pointers(nhs_number)).arg(if restricted { "1" } else { "0" });
        if let Some(maxlen) = self.feed {
            invocation
                .key(keys::FEED)
                .arg(maxlen)
                .arg(encoding::encode_change(&Change::restriction(nhs_number, restricted), None));
        }
        let _: i64 = self.bounded(invocation.invoke_async(&mut connection)).await?;
        self.wait_for_replicas(std::iter::once(nhs_number)).await
    }

    async fn apply(&self, write: PatientWrite) -> Result<(), StoreError> {
        if write.puts.iter().any(|p| p.draft.nhs_number != write.nhs_number) {
            return Err(StoreError::Corrupt("a put belongs to another patient".into()));
        }
        if !self.run_write(&write).await? {
            return Err(StoreError::ConditionFailed);
        }
        self.wait_for_replicas(std::iter::once(write.nhs_number)).await
    }

    /// Every write goes out at once: the multiplexed connection pipelines them on the wire (per
    /// node on a cluster), then one WAIT per connection covers the lot.
    async fn apply_each(&self, writes: Vec<PatientWrite>) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> =
            futures::future::join_all(writes.iter().map(|write| async move {
                if write.puts.iter().any(|p| p.draft.nhs_number != write.nhs_number) {
                    return Err(StoreError::Corrupt("a put belongs to another patient".into()));
                }
                match self.run_write(write).await? {
                    true => Ok(()),
                    false => Err(StoreError::ConditionFailed),
                }
            }))
            .await;
        let written = writes.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(w, _)| w.nhs_number);
        if let Err(e) = self.wait_for_replicas(written).await {
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(e.clone());
            }
        }
        results
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut connection)).await?;
        Ok(())
    }

    fn ids(&self) -> &PointerIdCodec {
        &self.ids
    }

    fn backend(&self) -> &'static str {
        self.backend
    }
}
