//! The one error type the registry's operations (and authentication) return. Each inbound edge maps
//! it in one exhaustive match (`api::grpc::status` for gRPC), so a new variant forces a decision.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A field of the request is malformed; `field` is its path, e.g. `pointer.content[0].url`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A version check failed: the caller's view is stale.
    #[error("{0}")]
    Aborted(String),
    /// The request is well-formed but the stored state does not allow it.
    #[error("{field}: {reason}")]
    FailedPrecondition { field: String, reason: String },
    /// Missing, malformed or unaccepted credentials.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A cursor older than the retention of the stream it points into.
    #[error("{0}")]
    OutOfRange(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The call (or a call it made to another node) ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn invalid(field: impl Into<String>, reason: impl ToString) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.to_string() }
    }

    pub fn precondition(field: impl Into<String>, reason: impl ToString) -> Self {
        Self::FailedPrecondition { field: field.into(), reason: reason.to_string() }
    }

    /// The gRPC code name of this error, for audit records and batch outcomes.
    pub fn code_name(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::Aborted(_) => "ABORTED",
            Self::FailedPrecondition { .. } => "FAILED_PRECONDITION",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::OutOfRange(_) => "OUT_OF_RANGE",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// The message alone, without the prefix `Display` adds to some variants (what a caller reads
    /// in a status message or a region's outcome).
    pub fn message(&self) -> String {
        match self {
            Self::Unavailable(reason) | Self::Internal(reason) => reason.clone(),
            other => other.to_string(),
        }
    }

    /// The field the error is about, where there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidArgument { field, .. } | Self::FailedPrecondition { field, .. } => Some(field),
            _ => None,
        }
    }
}
