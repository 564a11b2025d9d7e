//! The accept loop of both listeners. It hands each accepted connection to
//! [`Connections::admit`], and when `accept` itself fails it pauses, with a growing backoff,
//! instead of retrying at once: a listener out of file descriptors would otherwise spin at 100 %
//! CPU while the connection waiting in the backlog stays there. Out of descriptors, it also lowers
//! its cap and closes the longest-idle connection (`Connections::out_of_descriptors`), so that the
//! retry finds one free and the backlog drains.

use super::connection::{ConnectionKey, Connections, Listener, TrackedStream};
use super::ConnectionLimits;
use futures::Stream;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The first pause after a failed accept; it doubles on each failure in a row, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// Short enough that `/live` still answers within a second once descriptors are free again.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// Failed accepts are warned about at most this often (each is counted in `nrl_accept_errors`).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// File descriptors kept back for the process itself (stores, logs, the runtime) when the
/// connection caps are fitted to its open-file limit.
pub const RESERVED_DESCRIPTORS: usize = 32;

/// One listener's accept loop.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    kind: Listener,
    limits: ConnectionLimits,
    connections: Arc<Connections>,
    pause: Duration,
    warned: Option<Instant>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, kind: Listener, limits: ConnectionLimits, connections: Arc<Connections>) -> Self {
        connections.set_cap(kind, limits.max_connections);
        Self { listener, kind, limits, connections, pause: FIRST_PAUSE, warned: None }
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
                    if let Some(connection) = self.connections.admit(stream, self.kind, self.limits) {
                        return connection;
                    }
                }
                // The client gave up while the connection waited in the backlog: nothing to do.
                Err(e) if gone_before_accept(&e) => {}
                Err(e) => self.failed(&e).await,
            }
        }
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

    /// The connections as the stream tonic's `serve_with_incoming_shutdown` takes.
    pub fn into_incoming(self) -> impl Stream<Item = Result<TrackedStream, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut acceptor| async move {
            let connection = acceptor.next().await;
            Some((Ok(connection), acceptor))
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
