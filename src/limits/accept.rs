//! The accept loop of both listeners. It hands each accepted connection to
//! [`Connections::admit`], and when `accept` itself fails it pauses, with a growing backoff,
//! instead of retrying at once: a listener out of file descriptors would otherwise spin at 100 %
//! CPU while the connection waiting in the backlog stays there. Out of descriptors, it also lowers
//! its cap and closes the longest-idle connection (`Connections::out_of_descriptors`), so that the
//! retry finds one free and the backlog drains.

use super::coalesced_writes::CoalescedWrites;
use super::connection::{ConnectionKey, Connections, Listener, TrackedStream};
use super::ConnectionLimits;
use futures::Stream;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The first pause after a failed accept; it doubles on each failure in a row, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// Short enough that `/live` still answers within a second once descriptors are free again.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// Failed accepts are warned about at most this often (each is counted in `nrl_accept_errors`).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// File descriptors kept back when the connection caps are fitted to the open-file limit: for
/// the process itself (~16: stdio, the runtime, listeners, store connections), and for each
/// listener's connections being closed to make room (`MAX_CLOSING`) and being refused
/// (`MAX_REFUSING`), which hold theirs a moment longer.
pub const RESERVED_DESCRIPTORS: usize = 64;
/// Refused connections being told so at once; past this many, the rest are just closed.
const MAX_REFUSING: usize = 8;
/// How long a refused connection is kept, reading what its client sends, after its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How a full listener tells a refused client so, in its protocol, before closing: a client then
/// fails at once with a clear error instead of on a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Plaintext HTTP/2 (gRPC): once the client has sent its first request headers, a GOAWAY that
    /// refuses every stream with REFUSED_STREAM, "too many connections". A gRPC client reports the
    /// call UNAVAILABLE (nothing was processed, so it may retry elsewhere). A GOAWAY sent before
    /// the client's first request would reach tonic's client as CANCELLED instead.
    Http2,
    /// HTTP/1.1 (the admin listener): `503 Service Unavailable`, "too many connections".
    Http1,
}

/// The server's connection preface: an empty SETTINGS frame.
const H2_SETTINGS: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// GOAWAY, last stream 0 (none processed), REFUSED_STREAM, "too many connections".
const H2_GOAWAY: &[u8] = b"\x00\x00\x1c\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07too many connections";
const H2_CLIENT_PREFACE_LEN: usize = 24;
const H2_HEADERS: u8 = 0x1;
const HTTP1_REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";

impl Refusal {
    /// Answers the refused `stream`, then closes it, all within [`REFUSAL_LINGER`].
    async fn answer(self, mut stream: TcpStream) {
        let mut sink = [0u8; 4096];
        let answered = tokio::time::timeout(REFUSAL_LINGER, async {
            match self {
                Refusal::Http1 => stream.write_all(HTTP1_REFUSAL).await,
                Refusal::Http2 => {
                    stream.write_all(H2_SETTINGS).await?;
                    let mut seen = Vec::new();
                    while !has_request_headers(&seen) && seen.len() < sink.len() * 16 {
                        match stream.read(&mut sink).await? {
                            0 => return Ok(()),
                            n => seen.extend_from_slice(&sink[..n]),
                        }
                    }
                    stream.write_all(H2_GOAWAY).await
                }
            }
        })
        .await;
        if matches!(answered, Ok(Ok(()))) && stream.shutdown().await.is_ok() {
            // Closing with the client's bytes unread would send a reset, which can destroy the
            // answer before the client reads it: read them until it closes, for a while.
            let drain = async { while let Ok(1..) = stream.read(&mut sink).await {} };
            let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
        }
    }
}

/// Whether `bytes`, the start of what an HTTP/2 client sent, hold a complete HEADERS frame.
fn has_request_headers(bytes: &[u8]) -> bool {
    let Some(mut frames) = bytes.get(H2_CLIENT_PREFACE_LEN..) else { return false };
    while frames.len() >= 9 {
        let length = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        if frames[3] == H2_HEADERS {
            return frames.len() >= 9 + length;
        }
        let Some(rest) = frames.get(9 + length..) else { return false };
        frames = rest;
    }
    false
}

/// One listener's accept loop.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    kind: Listener,
    limits: ConnectionLimits,
    connections: Arc<Connections>,
    pause: Duration,
    warned: Option<Instant>,
    /// How a refused connection is told, if at all.
    refusal: Option<Refusal>,
    refusing: Arc<AtomicUsize>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, kind: Listener, limits: ConnectionLimits, connections: Arc<Connections>) -> Self {
        connections.set_cap(kind, limits.max_connections);
        Self {
            listener,
            kind,
            limits,
            connections,
            pause: FIRST_PAUSE,
            warned: None,
            refusal: None,
            refusing: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What to tell a connection refused because the listener is full (its protocol's "go
    /// away"), so that its client fails at once with a clear error rather than on a reset.
    pub fn refusing_with(mut self, refusal: Refusal) -> Self {
        self.refusal = Some(refusal);
        self
    }

    /// The next connection this listener takes on. Connections refused (the listener full of
    /// busy connections) are closed here and never returned.
    pub async fn next(&mut self) -> TrackedStream {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.pause = FIRST_PAUSE;
                    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small
                    // responses. A socket that refuses the option still works, only slower.
                    let _ = stream.set_nodelay(true);
                    match self.connections.admit(stream, self.kind, self.limits) {
                        Ok(connection) => return connection,
                        Err(Some(refused)) => self.refuse(refused),
                        Err(None) => {}
                    }
                }
                // The client gave up while the connection waited in the backlog: nothing to do.
                Err(e) if gone_before_accept(&e) => {}
                Err(e) => self.failed(&e).await,
            }
        }
    }

    /// Answers a refused connection and closes it, on a task of its own; closes it at once if
    /// many are being answered already (they hold descriptors) or there is no answer to give.
    fn refuse(&self, stream: TcpStream) {
        let Some(refusal) = self.refusal else { return };
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let refusing = self.refusing.clone();
        tokio::spawn(async move {
            refusal.answer(stream).await;
            refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn failed(&mut self, error: &io::Error) {
        let out_of_descriptors = is_out_of_descriptors(error);
        let reason = if out_of_descriptors { "fd_limit" } else { "other" };
        self.connections.metrics().accept_error(self.kind.label(), reason);
        let evicted = out_of_descriptors && self.connections.out_of_descriptors(self.kind);
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            self.warned = Some(Instant::now());
            tracing::warn!(
                listener = self.kind.label(),
                error = %error,
                pause_ms = self.pause.as_millis() as u64,
                closed_an_idle_connection = evicted,
                "cannot accept connections; pausing before the next try"
            );
        }
        tokio::time::sleep(self.pause).await;
        self.pause = next_pause(self.pause);
    }

    /// The connections as the stream tonic's `serve_with_incoming_shutdown` takes, their writes
    /// coalesced (HTTP/2 multiplexes many calls' answers onto each).
    pub fn into_incoming(
        self,
    ) -> impl Stream<Item = Result<CoalescedWrites<TrackedStream>, Infallible>> + Send + 'static {
        let writes = self.connections.metrics().grpc_socket_writes();
        futures::stream::unfold(self, move |mut acceptor| {
            let writes = writes.clone();
            async move {
                let connection = acceptor.next().await;
                Some((Ok(CoalescedWrites::new(connection, writes)), acceptor))
            }
        })
    }
}

/// The admin listener is served by `axum::serve`.
impl axum::serve::Listener for Acceptor {
    type Io = TrackedStream;
    type Addr = ConnectionKey;

    async fn accept(&mut self) -> (TrackedStream, ConnectionKey) {
        let connection = self.next().await;
        let key = connection.key();
        (connection, key)
    }

    fn local_addr(&self) -> io::Result<ConnectionKey> {
        let local = self.listener.local_addr()?;
        Ok(ConnectionKey { local, remote: SocketAddr::from(([0, 0, 0, 0], 0)) })
    }
}

/// Each request of the admin listener knows its connection's key, to count its call.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Acceptor>> for ConnectionKey {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Acceptor>) -> Self {
        *stream.remote_addr()
    }
}

fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_PAUSE)
}

/// Errors about one connection that went away, not about the listener.
fn gone_before_accept(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// EMFILE (the process's open-file limit) or ENFILE (the system's).
fn is_out_of_descriptors(error: &io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    cfg!(target_os = "linux") && matches!(error.raw_os_error(), Some(ENFILE | EMFILE))
}

/// The process's open-file limit (the soft one), where the platform says (Linux: `/proc`).
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

/// The gRPC connection cap that fits in `open_files` descriptors beside the admin listener's
/// connections and [`RESERVED_DESCRIPTORS`], so that `/live` and the process never go without.
pub fn fit_to_descriptors(grpc: usize, admin: usize, open_files: Option<usize>) -> usize {
    match open_files {
        Some(open_files) => grpc.min(open_files.saturating_sub(admin + RESERVED_DESCRIPTORS)).max(1),
        None => grpc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_refusal_is_a_goaway_refusing_every_stream() {
        let length = u32::from_be_bytes([0, H2_GOAWAY[0], H2_GOAWAY[1], H2_GOAWAY[2]]) as usize;
        assert_eq!(H2_GOAWAY[3], 7, "GOAWAY");
        assert_eq!(H2_GOAWAY.len(), 9 + length);
        assert_eq!(&H2_GOAWAY[9..13], [0, 0, 0, 0], "last stream id 0: nothing was processed");
        assert_eq!(&H2_GOAWAY[13..17], [0, 0, 0, 7], "REFUSED_STREAM");
        assert_eq!(&H2_GOAWAY[17..], b"too many connections");
        let text = std::str::from_utf8(HTTP1_REFUSAL).expect("ascii");
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert_eq!(body.len(), 21, "as its Content-Length says");
    }

    #[test]
    fn a_request_is_seen_once_its_headers_frame_is_complete() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        assert!(!has_request_headers(&bytes));
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        assert!(!has_request_headers(&bytes), "SETTINGS only");
        bytes.extend_from_slice(&[0, 0, 4, 1, 4, 0, 0, 0, 1, 0x82, 0x86]);
        assert!(!has_request_headers(&bytes), "HEADERS not complete yet");
        bytes.extend_from_slice(&[0x84, 0x41]);
        assert!(has_request_headers(&bytes));
        assert!(!has_request_headers(b"PRI"), "short input is no request, and no panic");
    }

    #[test]
    fn pauses_double_up_to_the_ceiling() {
        let mut pause = FIRST_PAUSE;
        let mut seen = vec![pause];
        for _ in 0..10 {
            pause = next_pause(pause);
            seen.push(pause);
        }
        assert_eq!(seen[1], Duration::from_millis(10));
        assert_eq!(*seen.last().expect("pauses"), MAX_PAUSE);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn descriptor_exhaustion_is_told_from_a_client_that_left() {
        if cfg!(target_os = "linux") {
            assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(24)));
            assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(23)));
        }
        assert!(!is_out_of_descriptors(&io::Error::from(io::ErrorKind::ConnectionAborted)));
        assert!(gone_before_accept(&io::Error::from(io::ErrorKind::ConnectionReset)));
        assert!(!gone_before_accept(&io::Error::from_raw_os_error(24)));
    }

    #[test]
    fn the_grpc_cap_is_fitted_to_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            256                  4096                 files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(256));
        assert_eq!(fit_to_descriptors(4096, 64, Some(256)), 256 - 64 - RESERVED_DESCRIPTORS);
        assert_eq!(fit_to_descriptors(100, 64, Some(100_000)), 100);
        assert_eq!(fit_to_descriptors(100, 64, Some(10)), 1, "never zero: the listener must take something");
        assert_eq!(fit_to_descriptors(100, 64, None), 100);
        assert_eq!(parse_open_file_limit("Max open files  unlimited  unlimited  files"), None);
    }
}
