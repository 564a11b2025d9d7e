//! The one place registry errors become HTTP statuses and `OperationOutcome`s (the FHIR twin of
//! `api::grpc::status`). [`FhirError::from`] is exhaustive on purpose: a new error variant does not
//! compile until someone decides its status and Spine code. Every error answer is an
//! OperationOutcome with NRLF's Spine error code, a diagnostic and, where there is one, the
//! FHIRPath of the offending element.

use super::codes::{FHIR_JSON, NRL_RESPONSE_SYSTEM, SPINE_ERROR_SYSTEM};
use crate::error::RegistryError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// NRLF's error codes (`Spine-ErrorOrWarningCode`), with their display text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpineCode {
    InvalidNhsNumber,
    InvalidResource,
    InvalidIdentifierSystem,
    InvalidIdentifierValue,
    InvalidCodeSystem,
    InvalidCodeValue,
    InvalidParameter,
    MessageNotWellFormed,
    BadRequest,
    MissingOrInvalidHeader,
    AccessDenied,
    AuthorCredentialsError,
    NoRecordFound,
    DuplicateRejected,
    Conflict,
    PreconditionFailed,
    UnprocessableEntity,
    UnsupportedMediaType,
    NotAcceptable,
    MethodNotAllowed,
    PayloadTooLarge,
    TooManyRequests,
    ServiceUnavailable,
    Timeout,
    InternalServerError,
}

impl SpineCode {
    pub fn code(self) -> &'static str {
        self.parts().0
    }

    fn parts(self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidNhsNumber => ("INVALID_NHS_NUMBER", "Invalid NHS number"),
            Self::InvalidResource => ("INVALID_RESOURCE", "Invalid validation of resource"),
            Self::InvalidIdentifierSystem => ("INVALID_IDENTIFIER_SYSTEM", "Invalid identifier system"),
            Self::InvalidIdentifierValue => ("INVALID_IDENTIFIER_VALUE", "Invalid identifier value"),
            Self::InvalidCodeSystem => ("INVALID_CODE_SYSTEM", "Invalid code system"),
            Self::InvalidCodeValue => ("INVALID_CODE_VALUE", "Invalid code value"),
            Self::InvalidParameter => ("INVALID_PARAMETER", "Invalid parameter"),
            Self::MessageNotWellFormed => ("MESSAGE_NOT_WELL_FORMED", "Message not well formed"),
            Self::BadRequest => ("BAD_REQUEST", "Bad request"),
            Self::MissingOrInvalidHeader => {
                ("MISSING_OR_INVALID_HEADER", "There is a required header missing or invalid")
            }
            Self::AccessDenied => ("ACCESS DENIED", "Access has been denied to process this request"),
            Self::AuthorCredentialsError => ("AUTHOR_CREDENTIALS_ERROR", "Author credentials error"),
            Self::NoRecordFound => ("NO_RECORD_FOUND", "No record found"),
            Self::DuplicateRejected => ("DUPLICATE_REJECTED", "Create would lead to creation of a duplicate resource"),
            Self::Conflict => ("CONFLICT", "Conflict"),
            Self::PreconditionFailed => ("PRECONDITION_FAILED", "Precondition failed"),
            Self::UnprocessableEntity => ("UNPROCESSABLE_ENTITY", "Unprocessable Entity"),
            Self::UnsupportedMediaType => ("UNSUPPORTED_MEDIA_TYPE", "Unsupported media type"),
            Self::NotAcceptable => ("NOT_ACCEPTABLE", "Not acceptable"),
            Self::MethodNotAllowed => ("METHOD_NOT_ALLOWED", "Method not allowed"),
            Self::PayloadTooLarge => ("PAYLOAD_TOO_LARGE", "Payload too large"),
            Self::TooManyRequests => ("TOO_MANY_REQUESTS", "Too many requests"),
            Self::ServiceUnavailable => ("SERVICE_UNAVAILABLE", "Service unavailable"),
            Self::Timeout => ("TIMEOUT", "Timeout"),
            Self::InternalServerError => ("INTERNAL_SERVER_ERROR", "Unexpected internal server error"),
        }
    }
}

/// An error answer: status, FHIR issue type, Spine code, what went wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FhirError {
    pub status: StatusCode,
    /// FHIR `IssueType` (`invalid`, `not-found`, `forbidden`, ...).
    pub issue: &'static str,
    pub spine: SpineCode,
    pub diagnostics: String,
    /// FHIRPath of the offending element or parameter.
    pub expression: Option<String>,
    /// Seconds to wait before retrying (busy, store down).
    pub retry_after: Option<u64>,
}

impl FhirError {
    pub fn new(status: StatusCode, issue: &'static str, spine: SpineCode, diagnostics: impl Into<String>) -> Self {
        Self { status, issue, spine, diagnostics: diagnostics.into(), expression: None, retry_after: None }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    /// A 400 about one element of the request.
    pub fn invalid(spine: SpineCode, expression: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        let issue = match spine {
            SpineCode::MessageNotWellFormed => "structure",
            SpineCode::InvalidCodeSystem | SpineCode::InvalidCodeValue => "code-invalid",
            _ => "invalid",
        };
        let expression = expression.into();
        let diagnostics = diagnostics.into();
        let diagnostics = if expression.is_empty() { diagnostics } else { format!("{expression}: {diagnostics}") };
        let error = Self::new(StatusCode::BAD_REQUEST, issue, spine, diagnostics);
        if expression.is_empty() {
            error
        } else {
            error.at(expression)
        }
    }

    pub fn parameter(name: &str, diagnostics: impl Into<String>) -> Self {
        Self::invalid(SpineCode::InvalidParameter, name, diagnostics)
    }

    /// The registry error this answer stands for, for the audit record of a refused call.
    pub fn as_registry_error(&self) -> RegistryError {
        let field = self.expression.clone().unwrap_or_else(|| "request".into());
        match self.status {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthenticated(self.diagnostics.clone()),
            StatusCode::FORBIDDEN => RegistryError::PermissionDenied(self.diagnostics.clone()),
            StatusCode::NOT_FOUND => RegistryError::NotFound(self.diagnostics.clone()),
            _ => RegistryError::invalid(field, &self.diagnostics),
        }
    }

    /// The OperationOutcome body.
    pub fn outcome(&self) -> Value {
        let mut issue = json!({
            "severity": "error",
            "code": self.issue,
            "details": {"coding": [{
                "system": SPINE_ERROR_SYSTEM,
                "code": self.spine.code(),
                "display": self.spine.parts().1,
            }]},
            "diagnostics": self.diagnostics,
        });
        if let Some(expression) = &self.expression {
            issue["expression"] = json!([expression]);
        }
        json!({"resourceType": "OperationOutcome", "issue": [issue]})
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = fhir_json(self.status, &self.outcome());
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A FHIR JSON answer.
pub fn fhir_json<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    // Straight into bytes: `to_string` (Display) goes through fmt::Write one piece at a time.
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(e) => {
            // Strings, numbers and string-keyed maps only: serialising cannot fail.
            tracing::error!(error = %e, "cannot serialise an answer");
            let internal = FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                SpineCode::InternalServerError,
                "internal error",
            );
            return internal.into_response();
        }
    };
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The OperationOutcome of a successful write, coded as NRLF codes them.
pub fn success(code: &str, display: &str, diagnostics: String) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "information",
            "code": "informational",
            "details": {"coding": [{"system": NRL_RESPONSE_SYSTEM, "code": code, "display": display}]},
            "diagnostics": diagnostics,
        }],
    })
}

/// The FHIRPath of a registry field path (as the registry names it for gRPC).
pub fn expression_of(field: &str) -> String {
    let path = field.strip_prefix("pointer.").unwrap_or(field);
    let mapped = match path {
        "nhs_number" => "DocumentReference.subject.identifier.value".to_string(),
        "region" => format!("DocumentReference.extension('{}')", super::codes::REGION_EXTENSION),
        "custodian" => "DocumentReference.custodian.identifier.value".into(),
        "author" => "DocumentReference.author[0].identifier.value".into(),
        "type" => "DocumentReference.type.coding[0].code".into(),
        "category" => "DocumentReference.category[0].coding[0].code".into(),
        "producer_reference" => "DocumentReference.masterIdentifier.value".into(),
        "related_asid" => "DocumentReference.context.related[0].identifier.value".into(),
        "practice_setting" => "DocumentReference.context.practiceSetting".into(),
        "document_date" => "DocumentReference.date".into(),
        "id" => "DocumentReference.id".into(),
        "version" => "If-Match".into(),
        "content" => "DocumentReference.content".into(),
        other => {
            if let Some(rest) = other.strip_prefix("supersedes") {
                format!("DocumentReference.relatesTo{rest}.target")
            } else if let Some(rest) = other.strip_prefix("content[") {
                // content[0].url → content[0].attachment.url
                let (index, tail) = rest.split_once(']').unwrap_or((rest, ""));
                let tail = match tail.trim_start_matches('.') {
                    "url" => ".attachment.url",
                    "content_type" => ".attachment.contentType",
                    "format" => ".format",
                    "stability" => ".extension('ContentStability')",
                    "retrieval_mechanism" => ".extension('NRLRetrievalMechanism')",
                    _ => "",
                };
                format!("DocumentReference.content[{index}]{tail}")
            } else {
                other.to_string()
            }
        }
    };
    mapped
}

impl From<RegistryError> for FhirError {
    fn from(error: RegistryError) -> Self {
        use SpineCode as S;
        match error {
            RegistryError::InvalidArgument { field, reason } => {
                let spine = match field.as_str() {
                    "pointer.nhs_number" | "nhs_number" => S::InvalidNhsNumber,
                    // The call headers (a read without a purpose of use): a header, not an element.
                    crate::auth::PURPOSE_HEADER | crate::auth::END_USER_HEADER => S::MissingOrInvalidHeader,
                    f if f.ends_with("custodian") || f.ends_with("author") => S::InvalidIdentifierValue,
                    f if f.ends_with("type") || f.ends_with("category") => S::InvalidCodeValue,
                    _ => S::InvalidResource,
                };
                FhirError::invalid(spine, expression_of(&field), reason)
            }
            RegistryError::FailedPrecondition { field, reason } => {
                let expression = expression_of(&field);
                FhirError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "business-rule",
                    S::UnprocessableEntity,
                    format!("{expression}: {reason}"),
                )
                .at(expression)
            }
            RegistryError::NotFound(message) => {
                FhirError::new(StatusCode::NOT_FOUND, "not-found", S::NoRecordFound, message)
            }
            RegistryError::AlreadyExists(message) => {
                FhirError::new(StatusCode::CONFLICT, "duplicate", S::DuplicateRejected, message)
            }
            RegistryError::Aborted(message) => FhirError::new(StatusCode::CONFLICT, "conflict", S::Conflict, message),
            RegistryError::Unauthenticated(message) => {
                FhirError::new(StatusCode::UNAUTHORIZED, "login", S::MissingOrInvalidHeader, message)
            }
            RegistryError::PermissionDenied(message) => {
                FhirError::new(StatusCode::FORBIDDEN, "forbidden", S::AccessDenied, message)
            }
            RegistryError::OutOfRange(message) => {
                FhirError::new(StatusCode::BAD_REQUEST, "invalid", S::InvalidParameter, message)
            }
            RegistryError::Unavailable(message) => FhirError {
                retry_after: Some(1),
                ..FhirError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", S::ServiceUnavailable, message)
            },
            RegistryError::DeadlineExceeded(message) => {
                FhirError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", S::Timeout, message)
            }
            RegistryError::Internal(detail) => {
                // Details stay in the log; the caller learns nothing of the internals.
                tracing::error!(error = %detail, "internal error");
                FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", S::InternalServerError, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_an_operation_outcome_with_a_spine_code() {
        let errors = [
            RegistryError::invalid("pointer.nhs_number", "bad"),
            RegistryError::precondition("pointer.region", "held elsewhere"),
            RegistryError::NotFound("gone".into()),
            RegistryError::AlreadyExists("taken".into()),
            RegistryError::Aborted("stale".into()),
            RegistryError::Unauthenticated("who".into()),
            RegistryError::PermissionDenied("no".into()),
            RegistryError::OutOfRange("old".into()),
            RegistryError::Unavailable("down".into()),
            RegistryError::DeadlineExceeded("slow".into()),
            RegistryError::Internal("secret detail".into()),
        ];
        let statuses: Vec<u16> = errors.iter().cloned().map(|e| FhirError::from(e).status.as_u16()).collect();
        assert_eq!(statuses, [400, 422, 404, 409, 409, 401, 403, 400, 503, 504, 500]);
        for error in errors {
            let outcome = FhirError::from(error).outcome();
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            assert_eq!(outcome["issue"][0]["details"]["coding"][0]["system"], SPINE_ERROR_SYSTEM);
            assert!(!outcome.to_string().contains("secret detail"));
        }
    }

    #[test]
    fn registry_fields_become_fhirpath() {
        let error = FhirError::from(RegistryError::invalid("pointer.nhs_number", "bad check digit"));
        assert_eq!(error.spine, SpineCode::InvalidNhsNumber);
        assert_eq!(error.expression.as_deref(), Some("DocumentReference.subject.identifier.value"));
        let error = FhirError::from(RegistryError::invalid(crate::auth::PURPOSE_HEADER, "is required"));
        assert_eq!(
            (error.spine, error.expression.as_deref()),
            (SpineCode::MissingOrInvalidHeader, Some("x-purpose-of-use"))
        );
        assert_eq!(expression_of("pointer.content[1].url"), "DocumentReference.content[1].attachment.url");
        assert_eq!(expression_of("supersedes[0]"), "DocumentReference.relatesTo[0].target");
    }
}
