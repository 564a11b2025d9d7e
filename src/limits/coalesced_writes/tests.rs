use super::*;
use futures::task::{waker, ArcWake};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{duplex, AsyncReadExt, DuplexStream};

#[derive(Default)]
struct Wakes(AtomicUsize);

impl ArcWake for Wakes {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Harness {
    stream: CoalescedWrites<DuplexStream>,
    peer: DuplexStream,
    wakes: Arc<Wakes>,
    writes: Counter,
}

impl Harness {
    fn new() -> Self {
        let (ours, peer) = duplex(1 << 20);
        let writes = Counter::default();
        Self { stream: CoalescedWrites::new(ours, writes.clone()), peer, wakes: Arc::default(), writes }
    }

    fn with_cx<T>(&mut self, f: impl FnOnce(Pin<&mut CoalescedWrites<DuplexStream>>, &mut Context<'_>) -> T) -> T {
        let waker = waker(self.wakes.clone());
        let mut cx = Context::from_waker(&waker);
        f(Pin::new(&mut self.stream), &mut cx)
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = self.with_cx(|s, cx| s.poll_write(cx, bytes));
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == bytes.len()), "{n:?}");
    }

    fn flush(&mut self) {
        assert!(matches!(self.with_cx(|s, cx| s.poll_flush(cx)), Poll::Ready(Ok(()))));
    }

    /// A read with nothing to read: what h2's connection task ends its reading with.
    fn read_until_waiting(&mut self) {
        let mut space = [0u8; 64];
        let mut buf = ReadBuf::new(&mut space);
        assert!(self.with_cx(|s, cx| s.poll_read(cx, &mut buf)).is_pending());
    }

    /// Everything the peer has been sent so far.
    async fn received(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(20), self.peer.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
        }
        all
    }

    fn wakes(&self) -> usize {
        self.wakes.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_flush_is_held_until_a_read_has_to_wait_and_then_everything_goes_at_once() {
    let mut h = Harness::new();
    h.write(b"headers,");
    h.write(b"a large data frame,");
    h.flush();
    // Held: nothing sent, and the task was woken to come back.
    assert_eq!(h.wakes(), 1);
    assert_eq!(h.stream.held_bytes(), 27);
    assert!(h.received().await.is_empty());

    // More frames in the same run, flushed again: still held, no second wake.
    h.write(b"trailers;");
    h.flush();
    assert_eq!(h.wakes(), 1);
    assert!(h.received().await.is_empty());

    // The next run reads until it would wait: all of it goes, in order, in one write.
    assert_eq!(h.writes.get(), 0);
    h.read_until_waiting();
    assert_eq!(h.writes.get(), 1);
    assert_eq!(h.stream.held_bytes(), 0);
    assert_eq!(h.received().await, b"headers,a large data frame,trailers;");

    // What that run frames is held in its turn.
    h.write(b"next answer");
    h.flush();
    assert_eq!(h.wakes(), 2);
    h.read_until_waiting();
    assert_eq!(h.received().await, b"next answer");
}

/// The TLS handshake: a flight is written and flushed, then the handshake waits for the peer's
/// answer, which cannot come before the flight has gone.
#[tokio::test]
async fn a_read_that_waits_sends_what_is_held_without_another_flush() {
    let mut h = Harness::new();
    h.write(b"server hello");
    h.flush();
    h.read_until_waiting();
    assert_eq!(h.received().await, b"server hello");
}

#[tokio::test]
async fn a_flush_with_nothing_held_neither_writes_nor_wakes() {
    let mut h = Harness::new();
    h.flush();
    h.read_until_waiting();
    assert_eq!(h.wakes(), 0);
    h.write(b"x");
    h.flush();
    h.read_until_waiting();
    assert_eq!(h.received().await, b"x");
    let wakes = h.wakes();
    h.flush();
    h.read_until_waiting();
    assert_eq!(h.wakes(), wakes);
}

#[tokio::test]
async fn shutting_down_writes_what_is_held() {
    let mut h = Harness::new();
    h.write(b"goaway");
    h.flush();
    assert!(matches!(h.with_cx(|s, cx| s.poll_shutdown(cx)), Poll::Ready(Ok(()))));
    assert_eq!(h.received().await, b"goaway");
}

#[tokio::test]
async fn the_buffer_never_holds_more_than_its_bound_and_large_writes_keep_their_order() {
    let mut h = Harness::new();
    let small = vec![1u8; MAX_BUFFERED - 10];
    h.write(&small);
    assert_eq!(h.stream.held_bytes(), MAX_BUFFERED - 10);
    // Past the bound: what is held goes first, then this one is taken.
    h.write(&[2u8; 20]);
    assert_eq!(h.stream.held_bytes(), 20);
    // Larger than the bound: the held bytes, then this write, straight to the socket.
    let large = vec![3u8; MAX_BUFFERED + 1];
    h.write(&large);
    assert_eq!(h.stream.held_bytes(), 0);
    let received = h.received().await;
    assert_eq!(received.len(), small.len() + 20 + large.len());
    assert!(received[..small.len()].iter().all(|&b| b == 1));
    assert!(received[small.len()..small.len() + 20].iter().all(|&b| b == 2));
    assert!(received[small.len() + 20..].iter().all(|&b| b == 3));
}

#[tokio::test]
async fn vectored_writes_are_taken_whole() {
    let mut h = Harness::new();
    let slices = [io::IoSlice::new(b"frame head|"), io::IoSlice::new(b"payload")];
    let n = h.with_cx(|s, cx| s.poll_write_vectored(cx, &slices));
    assert!(matches!(n, Poll::Ready(Ok(18))));
    assert!(h.stream.is_write_vectored());
    h.flush();
    h.read_until_waiting();
    assert_eq!(h.received().await, b"frame head|payload");
}
