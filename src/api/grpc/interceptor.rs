//! Authentication at the gRPC edge: reads the call's credentials off its metadata and TLS session,
//! asks `auth::Authenticator`, and leaves the [`Caller`] in the request extensions for the handler.

use crate::auth::{Authenticator, Caller, Credentials, END_USER_HEADER, PURPOSE_HEADER};
use crate::error::RegistryError;
use tonic::{Request, Status};

/// The tonic interceptor for every service with patient data.
pub fn interceptor(authenticator: Authenticator) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let certificates: Option<Vec<Vec<u8>>> =
            request.peer_certs().map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());
        let metadata = request.metadata();
        let header = |name: &str| metadata.get(name).map(|v| v.as_bytes());
        let credentials = Credentials {
            authorization: header("authorization"),
            purpose: header(PURPOSE_HEADER),
            end_user: header(END_USER_HEADER),
            peer_certificates: certificates.as_deref(),
        };
        let caller = authenticator.authenticate(credentials)?;
        // The `rpc` span (telemetry::RequestIdLayer) names the caller's organisation in every log
        // line. It comes from the token, and a well-formed ODS code can still be ten digits.
        tracing::Span::current().record("caller_org", crate::telemetry::log_safe(caller.organisation.as_str()));
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor established. A missing one is a wiring bug, answered as
/// UNAUTHENTICATED rather than a panic.
pub fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| RegistryError::Unauthenticated("no caller established".into()).into())
}
