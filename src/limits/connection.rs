//! Every open connection of the server's listeners, and the deadlines that close them.
//!
//! A connection is in one of three states, each with its own deadline:
//! - **before its first call** (TLS, the HTTP/2 preface, the first headers): closed at the
//!   handshake timeout. This is what ends idle TCP connections, half-open HTTP/2 connections and
//!   slowly sent headers;
//! - **with calls in flight**: no deadline here (the request timeout and HTTP/2 keepalive bound
//!   gRPC calls), unless the listener bounds a call ([`ConnectionLimits::call_timeout`]);
//! - **between calls**: closed at the idle timeout after the last call ended.
//!
//! The deadlines are kept by the connection's own I/O ([`TrackedStream`]): while hyper waits on a
//! read or write, the stream also waits on a timer, and once the deadline passes it fails the I/O
//! with `TimedOut`, which ends the connection. Calls are counted by the per-call layers, which find
//! the connection by its addresses ([`ConnectionKey`]), as tonic hands them to every request.
//!
//! When a listener is full, a new connection takes the place of the longest-idle one (no call in
//! flight), which is closed; if every connection has a call in flight, the new one is refused.

use super::ConnectionLimits;
use crate::metrics::Metrics;
use bytes::Bytes;
use futures::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How many connections of one listener may be closing at once to make room for newcomers.
pub const MAX_CLOSING: usize = 8;

/// Which listener a connection came in on; the `listener` label of the connection metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    Grpc,
    Admin,
    Fhir,
}

impl Listener {
    pub fn label(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Admin => "admin",
            Listener::Fhir => "fhir",
        }
    }

    fn index(self) -> usize {
        match self {
            Listener::Grpc => 0,
            Listener::Admin => 1,
            Listener::Fhir => 2,
        }
    }
}

/// Why the server closed a connection itself; the `reason` label of `nrl_connections_closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    HandshakeTimeout = 1,
    IdleTimeout = 2,
    CallTimeout = 3,
    Evicted = 4,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::CallTimeout => "call_timeout",
            CloseReason::Evicted => "evicted",
        }
    }

    fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(CloseReason::HandshakeTimeout),
            2 => Some(CloseReason::IdleTimeout),
            3 => Some(CloseReason::CallTimeout),
            4 => Some(CloseReason::Evicted),
            _ => None,
        }
    }

    fn error(self) -> io::Error {
        let kind = match self {
            CloseReason::Evicted => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, self.label())
    }
}

/// A connection's two ends, which tell it apart from every other open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl ConnectionKey {
    /// The key of a gRPC request's connection, from what tonic puts in its extensions.
    pub fn of_request(extensions: &http::Extensions) -> Option<Self> {
        let info = extensions.get::<TcpConnectInfo>().or_else(|| {
            extensions.get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>().map(|tls| tls.get_ref())
        })?;
        Some(Self { local: info.local_addr()?, remote: info.remote_addr()? })
    }
}

#[derive(Debug)]
struct Activity {
    /// Calls in flight.
    active: usize,
    /// Whether a call has started yet (the handshake is over).
    called: bool,
    /// When the last call ended (idle) or the first of the calls in flight started (busy).
    since: Instant,
}

/// One open connection, shared by its stream, the table, and its calls.
#[derive(Debug)]
struct ConnectionState {
    listener: Listener,
    key: ConnectionKey,
    limits: ConnectionLimits,
    accepted: Instant,
    activity: Mutex<Activity>,
    /// 0, or the [`CloseReason`] the connection is being closed for.
    closing: AtomicU8,
    /// The task driving the connection's I/O, woken to close it or to re-arm its timer.
    waker: AtomicWaker,
}

impl ConnectionState {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection is to be closed, and why, given what it is doing now.
    fn deadline(&self) -> Option<(Instant, CloseReason)> {
        let activity = self.activity();
        if activity.active > 0 {
            self.limits.call_timeout.map(|timeout| (activity.since + timeout, CloseReason::CallTimeout))
        } else if !activity.called {
            Some((self.accepted + self.limits.handshake_timeout, CloseReason::HandshakeTimeout))
        } else {
            Some((activity.since + self.limits.idle_timeout, CloseReason::IdleTimeout))
        }
    }

    /// Since when the connection has had no call in flight, if it has none.
    fn idle_since(&self) -> Option<Instant> {
        let activity = self.activity();
        (activity.active == 0).then_some(activity.since)
    }

    fn closing(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.closing.load(Ordering::Acquire))
    }

    /// Marks the connection for closing; true for the first reason given (the one counted).
    fn close(&self, reason: CloseReason) -> bool {
        let first = self.closing.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire).is_ok();
        self.waker.wake();
        first
    }
}

#[derive(Debug, Default)]
struct Table {
    open: HashMap<ConnectionKey, Arc<ConnectionState>>,
    /// Open connections per listener (by [`Listener::index`]).
    counts: [usize; 3],
    /// Each listener's cap: its `max_connections`, lowered if it ran out of file descriptors.
    caps: [usize; 3],
}

/// The open connections of every listener of one server.
#[derive(Debug)]
pub struct Connections {
    metrics: Arc<Metrics>,
    table: Mutex<Table>,
}

impl Connections {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { metrics, table: Mutex::new(Table::default()) })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `listener`'s cap (before it accepts anything).
    pub fn set_cap(&self, listener: Listener, max_connections: usize) {
        self.table().caps[listener.index()] = max_connections;
        self.metrics.set_connections_max(listener.label(), max_connections);
    }

    /// Takes a newly accepted connection on (`limits` gives its deadlines; the cap is the one of
    /// [`set_cap`](Self::set_cap)), or hands it back refused (`Err(Some)`); `Err(None)` if it has
    /// already gone.
    pub fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        listener: Listener,
        limits: ConnectionLimits,
    ) -> Result<TrackedStream, Option<TcpStream>> {
        let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
            return Err(None);
        };
        let key = ConnectionKey { local, remote };
        let now = Instant::now();
        let state = Arc::new(ConnectionState {
            listener,
            key,
            limits,
            accepted: now,
            activity: Mutex::new(Activity { active: 0, called: false, since: now }),
            closing: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        });
        let open = {
            let mut table = self.table();
            if table.counts[listener.index()] >= table.caps[listener.index()] && !self.make_room(&table, listener) {
                drop(table);
                self.metrics.connection_refused(listener.label(), "limit");
                return Err(Some(stream));
            }
            table.open.insert(key, state.clone());
            table.counts[listener.index()] += 1;
            table.counts[listener.index()]
        };
        self.metrics.set_connections_open(listener.label(), open);
        Ok(TrackedStream {
            stream,
            state,
            connections: self.clone(),
            timer: Box::pin(tokio::time::sleep_until(now)),
            armed: None,
        })
    }

    /// At the cap: true if there is room after all, because connections already being closed
    /// leave fewer than the cap open, or because enough of the longest-idle ones are now closed
    /// for it (more than one if the cap was lowered under what is open). A closed connection
    /// holds its descriptor until its task runs, so at most [`MAX_CLOSING`] are closed at once:
    /// past that, the newcomer is refused, and the accept loop cannot outrun the closing.
    fn make_room(&self, table: &Table, listener: Listener) -> bool {
        let cap = table.caps[listener.index()];
        let mut idle: Vec<(Instant, &Arc<ConnectionState>)> = Vec::new();
        let (mut staying, mut closing) = (0usize, 0usize);
        for connection in table.open.values().filter(|c| c.listener == listener) {
            if connection.closing().is_some() {
                closing += 1;
                continue;
            }
            staying += 1;
            if let Some(since) = connection.idle_since() {
                idle.push((since, connection));
            }
        }
        // To admit one more: `staying - cap + 1` of them must go.
        let excess = (staying + 1).saturating_sub(cap);
        let budget = MAX_CLOSING.saturating_sub(closing);
        idle.sort_unstable_by_key(|(since, _)| *since);
        let admit = excess <= idle.len() && excess <= budget;
        for (_, victim) in idle.into_iter().take(excess.min(budget)) {
            self.evict(victim);
        }
        admit
    }

    /// `listener` could not accept for want of file descriptors: its cap drops to nine tenths of
    /// what it holds, so that from now on it makes room by closing idle connections rather than
    /// taking the descriptors the other listener and the process need; and the longest-idle
    /// connection of any listener is closed, so the next accept can succeed. Returns whether one
    /// was (false if every connection has a call in flight).
    pub fn out_of_descriptors(&self, listener: Listener) -> bool {
        let mut table = self.table();
        let open = table.counts[listener.index()];
        let lowered = (open - open / 10).max(1);
        let cap = &mut table.caps[listener.index()];
        if lowered < *cap {
            *cap = lowered;
            self.metrics.set_connections_max(listener.label(), lowered);
            tracing::warn!(
                listener = listener.label(),
                max_connections = lowered,
                "out of file descriptors: connection cap lowered to nine tenths of the connections open"
            );
        }
        match longest_idle(table.open.values()) {
            Some(victim) => {
                self.evict(victim);
                true
            }
            None => false,
        }
    }

    fn evict(&self, victim: &ConnectionState) {
        if victim.close(CloseReason::Evicted) {
            self.metrics.connection_closed(victim.listener.label(), CloseReason::Evicted.label());
        }
    }

    /// A call has started on the connection `key`: it is no longer idle until the returned guard
    /// is dropped. `None` if the connection is not one of ours.
    pub fn call_started(&self, key: ConnectionKey) -> Option<ActiveCall> {
        let state = self.table().open.get(&key).cloned()?;
        {
            let mut activity = state.activity();
            if activity.active == 0 {
                activity.since = Instant::now();
            }
            activity.active += 1;
            activity.called = true;
        }
        // The stream re-arms its timer for the new state (no deadline, or the call's).
        state.waker.wake();
        Some(ActiveCall(state))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Open connections on `listener`.
    pub fn open(&self, listener: Listener) -> usize {
        self.table().counts[listener.index()]
    }

    fn closed(&self, state: &ConnectionState) {
        let open = {
            let mut table = self.table();
            table.open.remove(&state.key);
            let count = &mut table.counts[state.listener.index()];
            *count = count.saturating_sub(1);
            *count
        };
        self.metrics.set_connections_open(state.listener.label(), open);
    }
}

/// The connection with no call in flight for the longest, among those not already closing.
fn longest_idle<'a>(connections: impl Iterator<Item = &'a Arc<ConnectionState>>) -> Option<&'a Arc<ConnectionState>> {
    connections
        .filter(|c| c.closing().is_none())
        .filter_map(|c| c.idle_since().map(|since| (since, c)))
        .min_by_key(|(since, _)| *since)
        .map(|(_, c)| c)
}

/// A call in flight on a connection; dropping it ends the call.
#[derive(Debug)]
pub struct ActiveCall(Arc<ConnectionState>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        {
            let mut activity = self.0.activity();
            activity.active = activity.active.saturating_sub(1);
            if activity.active == 0 {
                activity.since = Instant::now();
            }
        }
        // The stream re-arms its timer: the idle deadline starts now.
        self.0.waker.wake();
    }
}

/// An accepted connection: the socket, with the deadlines of [`ConnectionState::deadline`] kept
/// on every read and write that has to wait. Dropping it closes the socket and forgets it.
#[derive(Debug)]
pub struct TrackedStream {
    stream: TcpStream,
    state: Arc<ConnectionState>,
    connections: Arc<Connections>,
    timer: Pin<Box<Sleep>>,
    /// The deadline the timer is set for.
    armed: Option<Instant>,
}

impl TrackedStream {
    pub fn key(&self) -> ConnectionKey {
        self.state.key
    }

    /// After an I/O call returned `Pending`: an error if the connection is to close now, else
    /// `Pending`, with the task woken at the deadline (or when a call starts or ends).
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.state.waker.register(cx.waker());
        if let Some(reason) = self.state.closing() {
            return Poll::Ready(reason.error());
        }
        let Some((deadline, reason)) = self.state.deadline() else {
            return Poll::Pending;
        };
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if self.state.close(reason) {
                    self.connections.metrics.connection_closed(self.state.listener.label(), reason.label());
                }
                Poll::Ready(reason.error())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn closing_error(&self) -> Option<io::Error> {
        self.state.closing().map(CloseReason::error)
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.connections.closed(&self.state);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.closing_error() {
            return Poll::Ready(Err(error));
        }
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Pending => self.check(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(error) = self.closing_error() {
            return Poll::Ready(Err(error));
        }
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Pending => self.check(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.closing_error() {
            return Poll::Ready(Err(error));
        }
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check(cx).map(Err),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// tonic's gRPC connections are coalesced; they record the same as the stream beneath.
impl Connected for super::coalesced_writes::CoalescedWrites<TrackedStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.get_ref().connect_info()
    }
}

/// What tonic records of the connection: the plain TCP addresses, so that `remote_addr` and the
/// mTLS client certificates are found as before.
impl Connected for TrackedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

pin_project! {
    /// A response body that keeps its call in flight (and its connection busy) until it ends.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        call: Option<ActiveCall>,
    }
}

impl<B> CallBody<B> {
    pub fn new(inner: B, call: Option<ActiveCall>) -> Self {
        Self { inner, call }
    }
}

impl<B: Default> Default for CallBody<B> {
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

impl<B> Body for CallBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.call.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
