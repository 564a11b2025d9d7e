//! The FHIR listener: connections taken through the shared [`Acceptor`] (the connection cap and
//! its deadlines), each served as HTTP/1.1 on a task of its own, over TLS when the server has TLS.
//!
//! With TLS, the handshake is done on the connection's task (a slow client holds up no other)
//! within the handshake timeout, and a client certificate the handshake verified is handed to
//! every request of the connection as [`PeerCertificates`], where `authenticate` finds it exactly
//! as the gRPC interceptor finds tonic's. Every request also carries its connection's
//! [`ConnectionKey`], for counting its call.

use super::{router, FhirApi, PeerCertificates};
use crate::limits::accept::{Acceptor, Refusal};
use crate::limits::connection::{CallBody, ConnectionKey, Connections, Listener, TrackedStream};
use crate::limits::ConnectionLimits;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::{rustls, TlsAcceptor};
use tower_service::Service;

/// Serves the FHIR API on `listener` until `shutdown` resolves, with the listener's connection
/// limits (`Listener::Fhir` in the shared connection table), speaking TLS when `tls` is given.
/// Then it takes no more connections and returns once those open have answered the requests
/// they were answering (idle ones close at once).
pub async fn serve(
    listener: TcpListener,
    api: FhirApi,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut acceptor = Acceptor::new(listener, Listener::Fhir, limits, connections.clone());
    if tls.is_none() {
        // Over TLS the refusal could only come after a handshake the refused connection may not have.
        acceptor = acceptor.refusing_with(Refusal::Http1);
    }
    let tls = tls.map(TlsAcceptor::from);
    let app = router(api).layer(middleware::from_fn_with_state(connections, track_call));
    // Each connection's task holds a receiver: once told to stop, and all have dropped theirs,
    // every connection has finished.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            stream = acceptor.next() => stream,
            () = &mut shutdown => break,
        };
        let tls = tls.clone().map(|acceptor| (acceptor, limits.handshake_timeout));
        tokio::spawn(connection(stream, app.clone(), tls, stopping.clone()));
    }
    drop(acceptor);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
}

/// One connection: the TLS handshake if any, then its requests until it closes or is told to stop.
async fn connection(
    stream: TrackedStream,
    app: Router,
    tls: Option<(TlsAcceptor, Duration)>,
    mut stopping: watch::Receiver<bool>,
) {
    let key = stream.key();
    let Some((tls, handshake_timeout)) = tls else {
        return serve_http1(stream, app, key, None, stopping).await;
    };
    // The connection's own deadline (`TrackedStream`) already closes it at the handshake timeout,
    // counting why; this one only makes sure the task cannot outlive it.
    let handshake = tokio::time::timeout(handshake_timeout, tls.accept(stream));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, remote = %key.remote, "FHIR listener: TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    // Present only when the client sent a chain the verifier accepted (it chains to the CA).
    let certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| PeerCertificates(Arc::new(chain.iter().map(|c| c.to_vec()).collect())));
    serve_http1(stream, app, key, certificates, stopping).await;
}

/// Serves HTTP/1.1 requests on `io` until the client closes, or, once told to stop, until the
/// request being answered is answered.
async fn serve_http1<I>(
    io: I,
    app: Router,
    key: ConnectionKey,
    certificates: Option<PeerCertificates>,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(key));
        if let Some(certificates) = &certificates {
            request.extensions_mut().insert(certificates.clone());
        }
        // A `Router` is always ready: no `poll_ready` to wait on.
        app.clone().call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, remote = %key.remote, "FHIR connection ended with an error");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Marks the request's connection busy until its response is sent, so the idle deadline does not
/// cut it off mid-answer.
async fn track_call(
    State(connections): State<Arc<Connections>>,
    ConnectInfo(key): ConnectInfo<ConnectionKey>,
    request: Request,
    next: Next,
) -> Response {
    let call = connections.call_started(key);
    next.run(request).await.map(|body| Body::new(CallBody::new(body, call)))
}
