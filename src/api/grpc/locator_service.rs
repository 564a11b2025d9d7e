//! `nrl.v1.RecordLocator`: where a patient's records live, and the directories behind the answer.

use super::conversions as conv;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::record_locator_server::RecordLocator;
use crate::registry::Registry;
use tonic::{Request, Response, Status};

pub struct RecordLocatorService {
    registry: Registry,
}

impl RecordLocatorService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl RecordLocator for RecordLocatorService {
    async fn locate_patient(
        &self,
        request: Request<pb::LocatePatientRequest>,
    ) -> Result<Response<pb::LocatePatientResponse>, Status> {
        let caller = super::interceptor::caller_of(&request)?;
        let nhs_number = conv::nhs_number(&request.get_ref().nhs_number, "nhs_number");
        let nhs_number = super::validation::recorded(&self.registry, &caller, "LocatePatient", nhs_number).await?;
        let summaries = self.registry.locate(&caller, nhs_number).await?;
        let reference = self.registry.reference();
        Ok(Response::new(pb::LocatePatientResponse {
            nhs_number: nhs_number.to_string(),
            regions: summaries.iter().map(|s| conv::region_location(s, reference)).collect(),
        }))
    }

    async fn list_regions(
        &self,
        _request: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::ListRegionsResponse>, Status> {
        let regions = self.registry.reference().regions.regions().map(Into::into).collect();
        Ok(Response::new(pb::ListRegionsResponse { regions }))
    }

    async fn list_pointer_types(
        &self,
        _request: Request<pb::ListPointerTypesRequest>,
    ) -> Result<Response<pb::ListPointerTypesResponse>, Status> {
        let types = self.registry.reference().pointer_types.types().map(conv::pointer_type_entry).collect();
        Ok(Response::new(pb::ListPointerTypesResponse { types }))
    }
}
