//! `nrl.v1.PatientAdmin` and `nrl.v1.AuditLog`: patient restriction, access logs, the audit export.

use super::conversions as conv;
use super::interceptor::caller_of;
use super::validation::recorded;
use crate::error::RegistryError;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::audit_log_server::AuditLog;
use crate::proto::nrl::v1::patient_admin_server::PatientAdmin;
use crate::registry::Registry;
use crate::store::audit::AuditEvent;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct PatientAdminService {
    registry: Registry,
}

impl PatientAdminService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl PatientAdmin for PatientAdminService {
    async fn set_restriction(
        &self,
        request: Request<pb::SetRestrictionRequest>,
    ) -> Result<Response<pb::SetRestrictionResponse>, Status> {
        let caller = caller_of(&request)?;
        let nhs = conv::nhs_number(&request.get_ref().nhs_number, "nhs_number");
        let nhs = recorded(&self.registry, &caller, "SetRestriction", nhs).await?;
        let restricted = self.registry.set_restriction(&caller, nhs, request.get_ref().restricted).await?;
        Ok(Response::new(pb::SetRestrictionResponse { nhs_number: nhs.to_string(), restricted }))
    }

    async fn get_restriction(
        &self,
        request: Request<pb::GetRestrictionRequest>,
    ) -> Result<Response<pb::GetRestrictionResponse>, Status> {
        let caller = caller_of(&request)?;
        let nhs = conv::nhs_number(&request.get_ref().nhs_number, "nhs_number");
        let nhs = recorded(&self.registry, &caller, "GetRestriction", nhs).await?;
        let restricted = self.registry.restriction(&caller, nhs).await?;
        Ok(Response::new(pb::GetRestrictionResponse { nhs_number: nhs.to_string(), restricted }))
    }
}

pub struct AuditLogService {
    registry: Registry,
}

impl AuditLogService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

/// An event as the API shows it. `cursor` means one thing on every backend: the event's position in
/// the export, which StreamAuditEvents takes as `after`. So only the export's events carry one: an
/// event read from a patient's log does not know its export position (on Redis the log and the
/// export are apart, on a cluster in different slots), and a log position passed as `after` would
/// be refused on Redis and mean something else in memory.
fn event(e: &AuditEvent, from_export: bool) -> pb::AuditEvent {
    pb::AuditEvent {
        cursor: if from_export { e.cursor.clone().unwrap_or_default() } else { String::new() },
        time: Some(conv::to_timestamp(e.time)),
        application: e.application.clone(),
        organisation: e.organisation.clone(),
        end_user: e.end_user.clone().unwrap_or_default(),
        purpose: e.purpose.clone().unwrap_or_default(),
        operation: e.operation.clone(),
        // Empty when the call named no valid patient (an export-only event of an invalid request).
        nhs_number: e.nhs_number.map(|n| n.to_string()).unwrap_or_default(),
        pointer_ids: e.pointer_ids.iter().map(ToString::to_string).collect(),
        outcome: e.outcome.clone(),
        break_glass: e.break_glass,
    }
}

/// What every access-log page token starts with, once decoded: it tells a page token from an export
/// cursor on every backend, so a token passed as `after` is refused everywhere.
const PAGE_TOKEN_PREFIX: &str = "log:";

/// The opaque page token for a store's log position.
fn page_token(position: String) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{position}"))
}

/// The store's log position in a page token; a bare position (the token of earlier versions) is
/// still accepted.
fn log_position(token: &str) -> String {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(PAGE_TOKEN_PREFIX).map(str::to_string))
        .unwrap_or_else(|| token.to_string())
}

/// How often a following export stream looks for new events.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
const EXPORT_BATCH: usize = 500;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AuditLog for AuditLogService {
    async fn get_access_log(
        &self,
        request: Request<pb::GetAccessLogRequest>,
    ) -> Result<Response<pb::GetAccessLogResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.get_ref();
        let parsed = conv::nhs_number(&req.nhs_number, "nhs_number").and_then(|nhs| {
            let size = match req.page_size {
                0 => 50,
                n if n < 0 => return Err(RegistryError::invalid("page_size", "must not be negative")),
                n => n as usize,
            };
            let before = match log_position(&req.page_token).as_str() {
                "" => None,
                position if self.registry.audit_store().valid_log_cursor(position) => Some(position.to_string()),
                _ => return Err(RegistryError::invalid("page_token", "is not a page token from this service")),
            };
            Ok((nhs, size, before))
        });
        let (nhs, size, before) = recorded(&self.registry, &caller, "GetAccessLog", parsed).await?;
        let page = self.registry.access_log(&caller, nhs, before, size).await?;
        Ok(Response::new(pb::GetAccessLogResponse {
            events: page.events.iter().map(|e| event(e, false)).collect(),
            next_page_token: page.next_before.map(page_token).unwrap_or_default(),
        }))
    }

    type StreamAuditEventsStream = EventStream;

    async fn stream_audit_events(
        &self,
        request: Request<pb::StreamAuditEventsRequest>,
    ) -> Result<Response<Self::StreamAuditEventsStream>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let after = match req.after.as_str() {
            "" => Ok(None),
            cursor if self.registry.audit_store().valid_export_cursor(cursor) => Ok(Some(cursor.to_string())),
            _ => Err(RegistryError::invalid(
                "after",
                "is not an export cursor from this service: use the cursor of an event StreamAuditEvents sent \
                 (GetAccessLog's events have none, and its page tokens are not cursors)",
            )),
        };
        let mut after = recorded(&self.registry, &caller, "StreamAuditEvents", after).await?;
        // Check permission before the stream starts, so a refusal is a status, not a broken stream.
        let first = self.registry.audit_events(&caller, after.clone(), EXPORT_BATCH).await?;
        let registry = self.registry.clone();
        let follow = req.follow;
        let (sender, receiver) = tokio::sync::mpsc::channel(EXPORT_BATCH);
        tokio::spawn(async move {
            let mut batch = first;
            loop {
                let full = batch.len() == EXPORT_BATCH;
                for e in &batch {
                    after = e.cursor.clone().or(after);
                    if sender.send(Ok(event(e, true))).await.is_err() {
                        return; // The client went away.
                    }
                }
                if !full {
                    if !follow || sender.is_closed() {
                        return;
                    }
                    tokio::time::sleep(FOLLOW_INTERVAL).await;
                }
                batch = match registry.audit_events(&caller, after.clone(), EXPORT_BATCH).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = sender.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
