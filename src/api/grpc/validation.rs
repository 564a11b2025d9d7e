//! Validation failures at the edge are refusals like any other: the registry records each in the
//! audit export (never in a patient's log: the request named no valid patient, or its patient's
//! data was never reached), with the caller, and the caller gets the error naming the field.

use crate::auth::Caller;
use crate::error::RegistryError;
use crate::registry::Registry;
use tonic::Status;

/// `parsed` when the request converted; otherwise its error, once the registry has recorded it
/// as a refusal of `operation` (or UNAVAILABLE if that record cannot be written).
pub(super) async fn recorded<T>(
    registry: &Registry,
    caller: &Caller,
    operation: &'static str,
    parsed: Result<T, RegistryError>,
) -> Result<T, Status> {
    match parsed {
        Ok(value) => Ok(value),
        Err(invalid) => Err(registry.refuse(caller, operation, invalid).await.into()),
    }
}
