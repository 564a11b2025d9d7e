//! A gRPC connection's writes, coalesced: the answers of the calls that finish together leave in
//! one system call.
//!
//! h2 copies a small frame into its write buffer, but writes a DATA frame of 256 bytes or more
//! from the answer itself, and must then flush the socket before it can frame anything after it.
//! So every answer bigger than that cost a `writev` of its own, however many answers were ready:
//! 1.66 per SearchPointers (1.2 KB) against 0.72 per Health/Check (`loadtest/PROFILE.md` §9). On
//! loopback or a LAN a `writev` also wakes the peer, and that was most of the kernel time a search
//! cost beyond a Health/Check.
//!
//! [`CoalescedWrites`] takes every write into a buffer of its own (at most [`MAX_BUFFERED`] bytes;
//! a larger write goes straight to the socket after it). A flush does not write: it wakes the task
//! to come back after the tasks already queued. What is held goes to the socket when a read has to
//! wait: the peer may be waiting for it. h2's connection task reads until a read would wait each
//! time it runs, then frames and flushes what its calls answered; so the frames of one run leave at
//! the start of the next, in one write, and an answer waits for at most one turn of the scheduler,
//! never for a timer. The TLS handshake works the same way: its flight is flushed, then it reads.
//! Shutting down writes what is held first.

use prometheus_client::metrics::counter::Counter;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a connection holds before it writes (per connection, so bounded by the gRPC
/// listener's connection cap). Under load one turn of a connection's 16–100 calls is well under it.
pub const MAX_BUFFERED: usize = 32 * 1024;

#[derive(Debug)]
pub struct CoalescedWrites<S> {
    inner: S,
    buffer: Vec<u8>,
    /// How much of `buffer` the socket has taken already.
    written: usize,
    /// A flush was answered without writing, and the task was woken to come back.
    held: bool,
    /// Counts every write handed to the socket (`nrl_grpc_socket_writes_total`).
    writes: Counter,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S, writes: Counter) -> Self {
        Self { inner, buffer: Vec::new(), written: 0, held: false, writes }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes taken from the writer and not yet handed to the socket.
    pub fn held_bytes(&self) -> usize {
        self.buffer.len() - self.written
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Hands everything buffered to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            self.writes.inc();
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        self.held = false;
        Poll::Ready(Ok(()))
    }

    fn poll_write_slices(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.buffer.len() + len > MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
            if len > MAX_BUFFERED {
                let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
                self.writes.inc();
                return Poll::Ready(Ok(written));
            }
        }
        for buf in bufs {
            self.buffer.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending() && this.held_bytes() > 0 {
            // Everything the peer sent is read, and it may be waiting for what is held. If the
            // socket is full, its writability wakes the task, whose next read comes back here.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }

    /// Every write is taken into the buffer whole, however many slices it has.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held_bytes() == 0 {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.held {
            // Come back after the tasks already queued; that run's first read sends it all.
            this.held = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
