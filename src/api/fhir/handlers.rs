//! One handler per interaction, each the twin of a gRPC method: read the request (refusals are
//! recorded by the registry, as at the gRPC edge), call the registry, answer in FHIR.

use super::audit_event;
use super::capability;
use super::document_reference::{self, etag, instant, ReadContext, Submission};
use super::outcome::{expression_of, fhir_json, success, FhirError, SpineCode};
use super::search::{self, Parameters};
use super::{Base, FhirApi};
use crate::auth::{policy, Caller, Scope};
use crate::domain::rules::IMMUTABLE_ON_UPDATE;
use crate::domain::{Pointer, PointerId, RegionCode};
use crate::error::RegistryError;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

type Answer = Result<Response, FhirError>;

/// A request the edge could not read, recorded as a refusal of `operation` (in the audit export,
/// never a patient's log); UNAVAILABLE if that record cannot be written.
async fn refused(api: &FhirApi, caller: &Caller, operation: &'static str, error: FhirError) -> FhirError {
    match api.registry.refuse(caller, operation, error.as_registry_error()).await {
        RegistryError::Unavailable(reason) => RegistryError::Unavailable(reason).into(),
        _ => error,
    }
}

/// The region a pointer without the region extension is registered for: the caller's only
/// permitted region, else this node's only region.
fn default_region(api: &FhirApi, caller: &Caller) -> Option<RegionCode> {
    fn single(regions: &std::collections::BTreeSet<RegionCode>) -> Option<RegionCode> {
        (regions.len() == 1).then(|| regions.iter().next().cloned()).flatten()
    }
    match &caller.regions {
        Scope::Only(regions) if regions.len() == 1 => single(regions),
        _ => api.registry.node_regions().and_then(single),
    }
}

fn read_submission(api: &FhirApi, caller: &Caller, body: &[u8]) -> Result<Submission, FhirError> {
    let context = ReadContext { reference: api.registry.reference(), default_region: default_region(api, caller) };
    document_reference::read(body, &context)
}

/// `Prefer: return=representation` asks for the resource; NRLF's clients expect an OperationOutcome.
fn wants_resource(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("return=representation")))
}

/// A write's answer: the resource or NRLF's outcome, with `Location`, `ETag` and `Last-Modified`.
fn written(
    status: StatusCode,
    pointer: &Pointer,
    base: &Base,
    headers: &HeaderMap,
    outcome: serde_json::Value,
) -> Response {
    let body = if wants_resource(headers) { document_reference::resource(pointer) } else { outcome };
    let mut response = fhir_json(status, &body);
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("{}/DocumentReference/{}", base.url, pointer.id)) {
        h.insert(header::LOCATION, location);
    }
    with_version(h, pointer);
    response
}

fn with_version(headers: &mut HeaderMap, pointer: &Pointer) {
    if let Ok(tag) = HeaderValue::from_str(&etag(pointer.version)) {
        headers.insert(header::ETAG, tag);
    }
    if let Ok(modified) = HeaderValue::from_str(&pointer.updated_at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
        headers.insert(header::LAST_MODIFIED, modified);
    }
}

/// The version an `If-Match` names (`W/"3"`, `"3"`), if one is given.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let bad = || {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            SpineCode::MissingOrInvalidHeader,
            "If-Match must be the ETag of the version you read, e.g. W/\"3\"",
        )
        .at("If-Match")
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        // HTTP's "any current version": the same as no If-Match (the pointer must exist).
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let number = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).ok_or_else(bad)?;
    number.parse::<u64>().ok().filter(|v| *v > 0).map(Some).ok_or_else(bad)
}

/// A stale version under `If-Match` is 412; without one, a lost race is 409.
fn stale_is_412(error: RegistryError, conditional: bool) -> FhirError {
    match error {
        RegistryError::Aborted(message) if conditional => {
            FhirError::new(StatusCode::PRECONDITION_FAILED, "conflict", SpineCode::PreconditionFailed, message)
        }
        other => other.into(),
    }
}

/// An update's refusal. Changing an element fixed at registration refuses the change, not the value
/// (which may be a valid NHS number, ODS code or type), so it is INVALID_RESOURCE naming the
/// element, never e.g. INVALID_NHS_NUMBER.
fn update_refused(error: RegistryError, conditional: bool) -> FhirError {
    match error {
        RegistryError::InvalidArgument { field, reason } if IMMUTABLE_ON_UPDATE.contains(&field.as_str()) => {
            FhirError::invalid(SpineCode::InvalidResource, expression_of(&field), reason)
        }
        other => stale_is_412(other, conditional),
    }
}

/// An id in a path: a pointer id of this registry, or (like any other unknown id) 404.
async fn pointer_id(api: &FhirApi, caller: &Caller, operation: &'static str, id: &str) -> Result<PointerId, FhirError> {
    match PointerId::parse(id) {
        Ok(id) => Ok(id),
        Err(_) => {
            let shown = crate::telemetry::log_safe(id);
            let error = FhirError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                SpineCode::NoRecordFound,
                format!("no DocumentReference with id {shown}: ids are the ones this registry assigned"),
            );
            Err(refused(api, caller, operation, error).await)
        }
    }
}

pub async fn create(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Extension(base): Extension<Base>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let submission = match read_submission(&api, &caller, &body) {
        Ok(submission) => submission,
        Err(error) => return Err(refused(&api, &caller, "CreatePointer", error).await),
    };
    if submission.replaces.is_empty() {
        let registered = api.registry.create(&caller, submission.draft).await?;
        let (status, code, display) = if registered.created {
            (StatusCode::CREATED, "RESOURCE_CREATED", "Resource created")
        } else {
            (StatusCode::OK, "RESOURCE_CREATED", "Resource already registered (idempotent on masterIdentifier)")
        };
        let outcome = success(code, display, format!("DocumentReference/{}", registered.pointer.id));
        return Ok(written(status, &registered.pointer, &base, &headers, outcome));
    }
    let superseded = api.registry.supersede(&caller, submission.draft, submission.replaces).await?;
    let status = if superseded.created { StatusCode::CREATED } else { StatusCode::OK };
    let outcome = success(
        "RESOURCE_SUPERSEDED",
        "Resource created and the resources it replaces superseded",
        format!("DocumentReference/{}", superseded.pointer.id),
    );
    Ok(written(status, &superseded.pointer, &base, &headers, outcome))
}

/// NRLF's `PUT /DocumentReference` (a create with a client-chosen `<ODS>-<local>` id): ids here are
/// assigned by the registry, so the caller is told what to do instead.
pub async fn create_with_client_id(State(api): State<FhirApi>, Extension(caller): Extension<Caller>) -> Answer {
    let error = FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        SpineCode::MethodNotAllowed,
        "PUT /DocumentReference (create with a client-chosen id) is not supported: the registry assigns ids. \
         POST /DocumentReference instead, with your local id in masterIdentifier.value: a repeated POST with the \
         same masterIdentifier returns the pointer already registered",
    );
    Err(refused(&api, &caller, "CreatePointer", error).await)
}

pub async fn read(State(api): State<FhirApi>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Answer {
    let id = pointer_id(&api, &caller, "GetPointer", &id).await?;
    let pointer = api.registry.get(&caller, id).await?;
    let mut response = fhir_json(StatusCode::OK, &document_reference::resource(&pointer));
    with_version(response.headers_mut(), &pointer);
    Ok(response)
}

pub async fn update(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Extension(base): Extension<Base>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let id = pointer_id(&api, &caller, "UpdatePointer", &id).await?;
    let version = match if_match(&headers) {
        Ok(version) => version,
        Err(error) => return Err(refused(&api, &caller, "UpdatePointer", error).await),
    };
    let submission = match read_submission(&api, &caller, &body) {
        Ok(submission) => submission,
        Err(error) => return Err(refused(&api, &caller, "UpdatePointer", error).await),
    };
    if submission.id.as_deref().is_some_and(|given| given != id.to_string()) {
        let error =
            FhirError::invalid(SpineCode::InvalidResource, "DocumentReference.id", "must match the id in the url");
        return Err(refused(&api, &caller, "UpdatePointer", error).await);
    }
    if !submission.replaces.is_empty() {
        // relatesTo is fixed when a pointer is created; a PUT may repeat it, never change it. The
        // stored pointer is looked at, not read for the caller: a read would need read rights and
        // a purpose of use that a producer's update does not, and would be audited as a second
        // access. And only when the caller may change it, so that any other update is refused by
        // the registry exactly as its gRPC twin is, revealing nothing of the pointer.
        let stored = api.registry.store().get(id).await.map_err(RegistryError::from)?;
        let writable = stored.filter(|s| policy::check_write(&caller, &s.draft).is_ok());
        if writable.is_some_and(|stored| stored.supersedes != submission.replaces) {
            let error = FhirError::invalid(
                SpineCode::InvalidResource,
                "DocumentReference.relatesTo",
                "cannot change on update: to supersede, POST a new DocumentReference with relatesTo[code=replaces]",
            );
            return Err(refused(&api, &caller, "UpdatePointer", error).await);
        }
    }
    let updated = api
        .registry
        .update(&caller, id, version, submission.draft)
        .await
        .map_err(|e| update_refused(e, version.is_some()))?;
    let outcome = success("RESOURCE_UPDATED", "Resource updated", format!("DocumentReference/{}", updated.id));
    Ok(written(StatusCode::OK, &updated, &base, &headers, outcome))
}

pub async fn delete(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = pointer_id(&api, &caller, "DeletePointer", &id).await?;
    let version = match if_match(&headers) {
        Ok(version) => version,
        Err(error) => return Err(refused(&api, &caller, "DeletePointer", error).await),
    };
    let deleted = api.registry.delete(&caller, id, version).await.map_err(|e| stale_is_412(e, version.is_some()))?;
    let outcome = success("RESOURCE_DELETED", "Resource removed", format!("DocumentReference/{}", deleted.id));
    Ok(fhir_json(StatusCode::OK, &outcome))
}

/// Search parameters from the query string and (for `_search`) the body.
fn parameters(
    query: Option<&str>,
    body: Option<(&HeaderMap, &[u8])>,
    allowed: &[&'static str],
) -> Result<Parameters, FhirError> {
    let mut parameters = Parameters::default();
    parameters.add_form(query.unwrap_or("").as_bytes(), allowed)?;
    if let Some((headers, body)) = body.filter(|(_, b)| !b.iter().all(u8::is_ascii_whitespace)) {
        // Media types are case-insensitive: admission let this body in on the lowercased type.
        let kind = headers.get(header::CONTENT_TYPE).map(super::media_type).unwrap_or_default();
        if kind == "application/x-www-form-urlencoded" {
            parameters.add_form(body, allowed)?;
        } else {
            parameters.add_json(body, allowed)?;
        }
    }
    Ok(parameters)
}

async fn search_with(api: FhirApi, caller: Caller, base: Base, parameters: Result<Parameters, FhirError>) -> Answer {
    let read = parameters.and_then(|p| search::read(&p, api.registry.reference()).map(|s| (p, s)));
    let (parameters, search) = match read {
        Ok(read) => read,
        Err(error) => return Err(refused(&api, &caller, "SearchPointers", error).await),
    };
    if search.count_only {
        let total = api.registry.count(&caller, &search.query).await?;
        return Ok(fhir_json(StatusCode::OK, &search::count_bundle(total, &base.url, &parameters)));
    }
    let page = api.registry.search(&caller, &search.query, search.page).await?;
    let next = page.next_after.map(|after| crate::domain::query::encode_page_token(&search.query, after));
    Ok(fhir_json(StatusCode::OK, &search::bundle(&page, &base.url, &parameters, next.as_deref())))
}

pub async fn search_get(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Extension(base): Extension<Base>,
    RawQuery(query): RawQuery,
) -> Answer {
    let parameters = parameters(query.as_deref(), None, &search::PARAMETERS);
    search_with(api, caller, base, parameters).await
}

pub async fn search_post(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Extension(base): Extension<Base>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let parameters = parameters(query.as_deref(), Some((&headers, &body)), &search::PARAMETERS);
    search_with(api, caller, base, parameters).await
}

/// NRLF's `GET /DocumentReference/_count?…`: the total alone.
pub async fn count(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Extension(base): Extension<Base>,
    RawQuery(query): RawQuery,
) -> Answer {
    let allowed = [search::SUBJECT, search::TYPE, search::CATEGORY, search::CUSTODIAN, search::REGION, search::FORMAT];
    let read = parameters(query.as_deref(), None, &allowed)
        .and_then(|p| search::read(&p, api.registry.reference()).map(|s| (p, s)));
    let (parameters, search) = match read {
        Ok(read) => read,
        Err(error) => return Err(refused(&api, &caller, "CountPointers", error).await),
    };
    let total = api.registry.count(&caller, &search.query).await?;
    Ok(fhir_json(StatusCode::OK, &search::count_bundle(total, &base.url, &parameters)))
}

pub async fn audit_events(
    State(api): State<FhirApi>,
    Extension(caller): Extension<Caller>,
    Extension(base): Extension<Base>,
    RawQuery(query): RawQuery,
) -> Answer {
    let read = parameters(query.as_deref(), None, &audit_event::PARAMETERS)
        .and_then(|p| audit_event::read(&p).map(|r| (p, r)));
    let (parameters, request) = match read {
        Ok(read) => read,
        Err(error) => return Err(refused(&api, &caller, "GetAccessLog", error).await),
    };
    let page = api.registry.access_log(&caller, request.nhs_number, request.before, request.limit).await?;
    Ok(fhir_json(StatusCode::OK, &audit_event::bundle(&page, &base.url, &parameters)))
}

pub async fn metadata(State(api): State<FhirApi>, Extension(base): Extension<Base>) -> Response {
    fhir_json(StatusCode::OK, &capability::statement(&base.url, &instant(api.started)))
}

/// NRLF's health check: `{"message":"OK"}` while the store answers.
pub async fn status(State(api): State<FhirApi>) -> Answer {
    api.registry.store().ping().await.map_err(RegistryError::from)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json!({"message": "OK"}).to_string())
        .into_response())
}
