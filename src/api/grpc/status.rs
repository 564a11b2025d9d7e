//! The one place registry errors become gRPC statuses, and (for the answers of other nodes) the
//! one place statuses become registry errors. `code_of` is exhaustive on purpose: a new error
//! variant does not compile until someone decides its code.

use crate::error::RegistryError;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        let code = code_of(&error);
        match error {
            RegistryError::InvalidArgument { field, reason } => Status::with_error_details(
                code,
                format!("{field}: {reason}"),
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            RegistryError::FailedPrecondition { field, reason } => Status::with_error_details(
                code,
                format!("{field}: {reason}"),
                ErrorDetails::with_precondition_failure_violation("STATE", field, reason),
            ),
            RegistryError::Internal(detail) => {
                // Details stay in the log; the caller learns nothing of the internals.
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
            other => Status::new(code, other.to_string()),
        }
    }
}

/// A request body that is not a valid message of its type (`nrl.v1.CreatePointerRequest`): the
/// caller's error, so INVALID_ARGUMENT naming the type, with prost's reason (which names fields,
/// never values). `api::grpc::codec` decodes every request.
pub fn undecodable(message_type: &str, error: &prost::DecodeError) -> Status {
    let reason = error.to_string();
    let reason = reason.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&reason);
    Status::invalid_argument(format!("{message_type}: not a valid protobuf message ({reason})"))
}

/// A request whose gRPC framing is broken (`api::grpc::framing`): INVALID_ARGUMENT naming the
/// request type and what is wrong.
pub fn misframed(message_type: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{message_type}: {problem}"))
}

/// The code an error maps to, for batch outcomes (which carry a code rather than a Status).
pub fn code_of(error: &RegistryError) -> Code {
    match error {
        RegistryError::InvalidArgument { .. } => Code::InvalidArgument,
        RegistryError::FailedPrecondition { .. } => Code::FailedPrecondition,
        RegistryError::NotFound(_) => Code::NotFound,
        RegistryError::AlreadyExists(_) => Code::AlreadyExists,
        RegistryError::Aborted(_) => Code::Aborted,
        RegistryError::Unauthenticated(_) => Code::Unauthenticated,
        RegistryError::PermissionDenied(_) => Code::PermissionDenied,
        RegistryError::OutOfRange(_) => Code::OutOfRange,
        RegistryError::Unavailable(_) => Code::Unavailable,
        RegistryError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RegistryError::Internal(_) => Code::Internal,
    }
}

/// What another node's status means here (a peer's answer to a federated search or to the
/// follower). Transport failures (UNKNOWN, CANCELLED) count as the node being unavailable.
pub fn error_of(status: &Status) -> RegistryError {
    let message = status.message().to_string();
    match status.code() {
        Code::Ok | Code::Unknown | Code::Cancelled | Code::Unavailable => RegistryError::Unavailable(message),
        Code::InvalidArgument => RegistryError::invalid("request", message),
        Code::FailedPrecondition => RegistryError::precondition("request", message),
        Code::NotFound => RegistryError::NotFound(message),
        Code::AlreadyExists => RegistryError::AlreadyExists(message),
        Code::Aborted => RegistryError::Aborted(message),
        Code::Unauthenticated => RegistryError::Unauthenticated(message),
        Code::PermissionDenied => RegistryError::PermissionDenied(message),
        Code::OutOfRange => RegistryError::OutOfRange(message),
        Code::DeadlineExceeded => RegistryError::DeadlineExceeded(message),
        Code::ResourceExhausted | Code::Unimplemented | Code::Internal | Code::DataLoss => {
            RegistryError::Internal(format!("{:?}: {message}", status.code()))
        }
    }
}

/// Metadata key of the retry hint on an overloaded answer: gRPC's own server pushback, which
/// clients with a retry policy honour. The same delay is in a `google.rpc.RetryInfo` detail.
pub const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// The server has as many calls in flight as it takes (`NRL_MAX_IN_FLIGHT`): this one is refused
/// at once, not queued, with when to try again.
pub fn overloaded(retry_after: Duration) -> Status {
    let millis = retry_after.as_millis();
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        format!("server busy: too many calls in flight; retry in {millis} ms"),
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    status.metadata_mut().insert(RETRY_PUSHBACK_KEY, MetadataValue::from(u64::try_from(millis).unwrap_or(u64::MAX)));
    status
}

/// The call ran past its deadline: the server's request timeout, or the client's `grpc-timeout`
/// if that was shorter. Its work has been stopped.
pub fn timed_out(deadline: Duration) -> Status {
    Status::deadline_exceeded(format!("deadline exceeded: the call took more than {} ms", deadline.as_millis()))
}

/// The call's request metadata is over the server's limit (`NRL_MAX_METADATA_BYTES`). `largest` is
/// the name of its largest entry: an oversized `authorization` is a credential the server will not
/// read (UNAUTHENTICATED); anything else is a bad request naming the entry (INVALID_ARGUMENT).
pub fn metadata_too_large(largest: &str, size: usize, limit: usize) -> Status {
    let reason =
        format!("request metadata is {size} bytes, over the limit of {limit} bytes, and this entry is the largest");
    if largest == "authorization" {
        return Status::unauthenticated(format!("authorization: {reason}"));
    }
    // A client-chosen name is echoed only if it cannot carry an NHS number.
    let field = if largest.bytes().any(|b| b.is_ascii_digit()) { "metadata" } else { largest };
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}
