//! `nrl.v1.PointerRegistry`: validate → convert → call the registry → convert back.

use super::conversions as conv;
use super::interceptor::caller_of;
use super::status::code_of;
use super::validation::recorded;
use crate::domain::limits::MAX_BATCH;
use crate::error::RegistryError;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::pointer_registry_server::PointerRegistry;
use crate::registry::Registry;
use tonic::{Request, Response, Status};

pub struct PointerRegistryService {
    registry: Registry,
}

impl PointerRegistryService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

fn batch_error(error: RegistryError) -> pb::EntryError {
    let code = code_of(&error) as i32;
    let field = error.field().unwrap_or_default().to_string();
    let message = match error {
        RegistryError::Internal(_) => "internal error".to_string(),
        other => other.to_string(),
    };
    pb::EntryError { code, message, field }
}

#[tonic::async_trait]
impl PointerRegistry for PointerRegistryService {
    async fn create_pointer(
        &self,
        request: Request<pb::CreatePointerRequest>,
    ) -> Result<Response<pb::CreatePointerResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let draft = conv::draft(req.pointer.as_ref(), "pointer", self.registry.reference());
        let draft = recorded(&self.registry, &caller, "CreatePointer", draft).await?;
        let registered = self.registry.create(&caller, draft).await?;
        Ok(Response::new(pb::CreatePointerResponse {
            pointer: Some(registered.pointer.into()),
            created: registered.created,
        }))
    }

    async fn get_pointer(
        &self,
        request: Request<pb::GetPointerRequest>,
    ) -> Result<Response<pb::GetPointerResponse>, Status> {
        let caller = caller_of(&request)?;
        let id = conv::pointer_id(&request.get_ref().id, "id");
        let id = recorded(&self.registry, &caller, "GetPointer", id).await?;
        let pointer = self.registry.get(&caller, id).await?;
        Ok(Response::new(pb::GetPointerResponse { pointer: Some(pointer.into()) }))
    }

    async fn update_pointer(
        &self,
        request: Request<pb::UpdatePointerRequest>,
    ) -> Result<Response<pb::UpdatePointerResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let parsed = conv::pointer_id(&req.id, "id").and_then(|id| match req.version {
            0 => Err(RegistryError::invalid("version", "is required: send the version you read")),
            _ => Ok((id, conv::draft(req.pointer.as_ref(), "pointer", self.registry.reference())?)),
        });
        let (id, draft) = recorded(&self.registry, &caller, "UpdatePointer", parsed).await?;
        let pointer = self.registry.update(&caller, id, Some(req.version), draft).await?;
        Ok(Response::new(pb::UpdatePointerResponse { pointer: Some(pointer.into()) }))
    }

    async fn delete_pointer(
        &self,
        request: Request<pb::DeletePointerRequest>,
    ) -> Result<Response<pb::DeletePointerResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let id = recorded(&self.registry, &caller, "DeletePointer", conv::pointer_id(&req.id, "id")).await?;
        let version = (req.version != 0).then_some(req.version);
        let pointer = self.registry.delete(&caller, id, version).await?;
        Ok(Response::new(pb::DeletePointerResponse { pointer: Some(pointer.into()) }))
    }

    async fn supersede_pointer(
        &self,
        request: Request<pb::SupersedePointerRequest>,
    ) -> Result<Response<pb::SupersedePointerResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let parsed = conv::draft(req.pointer.as_ref(), "pointer", self.registry.reference())
            .and_then(|draft| Ok((draft, conv::supersedes(&req.supersedes)?)));
        let (draft, olds) = recorded(&self.registry, &caller, "SupersedePointer", parsed).await?;
        let outcome = self.registry.supersede(&caller, draft, olds).await?;
        Ok(Response::new(pb::SupersedePointerResponse {
            pointer: Some(outcome.pointer.into()),
            superseded: outcome.superseded.into_iter().map(Into::into).collect(),
            created: outcome.created,
        }))
    }

    async fn search_pointers(
        &self,
        request: Request<pb::SearchPointersRequest>,
    ) -> Result<Response<pb::SearchPointersResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let parsed = conv::query(req.query.as_ref(), self.registry.reference())
            .and_then(|query| Ok((conv::page_request(req.page_size, &req.page_token, &query)?, query)));
        let (page, query) = recorded(&self.registry, &caller, "SearchPointers", parsed).await?;
        let found = self.registry.search(&caller, &query, page).await?;
        Ok(Response::new(pb::SearchPointersResponse {
            pointers: found.pointers.into_iter().map(Into::into).collect(),
            next_page_token: found
                .next_after
                .map(|after| crate::domain::query::encode_page_token(&query, after))
                .unwrap_or_default(),
        }))
    }

    async fn count_pointers(
        &self,
        request: Request<pb::CountPointersRequest>,
    ) -> Result<Response<pb::CountPointersResponse>, Status> {
        let caller = caller_of(&request)?;
        let query = conv::query(request.get_ref().query.as_ref(), self.registry.reference());
        let query = recorded(&self.registry, &caller, "CountPointers", query).await?;
        let count = self.registry.count(&caller, &query).await?;
        Ok(Response::new(pb::CountPointersResponse { count }))
    }

    async fn batch_create_pointers(
        &self,
        request: Request<pb::BatchCreatePointersRequest>,
    ) -> Result<Response<pb::BatchCreatePointersResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        let size = match req.pointers.len() {
            0 => Err(RegistryError::invalid("pointers", "at least one entry is required")),
            n if n > MAX_BATCH => {
                Err(RegistryError::invalid("pointers", format!("at most {MAX_BATCH} entries per call")))
            }
            n => Ok(n),
        };
        recorded(&self.registry, &caller, "BatchCreatePointers", size).await?;
        let reference = self.registry.reference();
        // Entry errors name the field relative to the entry ("content[0].url"); the registry
        // records invalid entries with the batch's other refusals.
        let drafts = req.pointers.iter().map(|p| conv::draft(Some(p), "", reference)).collect();
        let results = self.registry.create_batch(&caller, drafts).await;
        let outcomes = results
            .into_iter()
            .enumerate()
            .map(|(index, result)| pb::BatchOutcome {
                index: index as u32,
                result: Some(match result {
                    Ok(r) if r.created => pb::batch_outcome::Result::Created(r.pointer.into()),
                    Ok(r) => pb::batch_outcome::Result::Existing(r.pointer.into()),
                    Err(e) => pb::batch_outcome::Result::Error(batch_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(pb::BatchCreatePointersResponse { outcomes }))
    }
}
