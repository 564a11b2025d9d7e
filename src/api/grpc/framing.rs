//! A check of the gRPC framing of every request to an `nrl.v1` service, before tonic reads it.
//!
//! tonic answers a broken frame with INTERNAL: a message marked compressed on a call without
//! `grpc-encoding` (which the gRPC spec words as INTERNAL), a compressed-flag that is neither 0 nor
//! 1, a body that ends inside a message, a call with no message at all. Each is the caller's
//! error, so `CheckedFraming` watches the request body as tonic reads it and turns each into
//! INVALID_ARGUMENT naming the request type, before tonic sees it. (A declared length over the
//! 4 MiB limit stays tonic's OUT_OF_RANGE; a message that frames well but does not decode is
//! `codec::RequestCodec`'s.) Every `nrl.v1` call carries exactly one request message.

use super::status;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{ready, Context, Poll};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;

/// The request type of every `nrl.v1` method, by path (`/nrl.v1.PointerRegistry/CreatePointer` →
/// `nrl.v1.CreatePointerRequest`), from the descriptor set reflection serves.
static REQUEST_TYPES: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    let files = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap_or_default().file;
    let mut types = HashMap::new();
    for file in &files {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                types.insert(path, method.input_type().trim_start_matches('.').to_string());
            }
        }
    }
    types
});

/// A service whose requests' framing is checked (see the module comment).
#[derive(Clone)]
pub struct CheckedFraming<S> {
    inner: S,
}

impl<S> CheckedFraming<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for CheckedFraming<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: Service<http::Request<Body>>> Service<http::Request<Body>> for CheckedFraming<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        // An unknown method is left to tonic, which answers UNIMPLEMENTED without reading the body.
        let Some(message) = REQUEST_TYPES.get(request.uri().path()) else { return self.inner.call(request) };
        let encoded = request.headers().get("grpc-encoding").is_some_and(|e| e.as_bytes() != b"identity");
        let framing = Framing { may_compress: encoded, ..Framing::default() };
        self.inner.call(request.map(|inner| Body::new(CheckedBody { inner, message, framing, done: false })))
    }
}

/// What is wrong with a request's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Problem {
    CompressedWithoutEncoding,
    BadFlag(u8),
    EndsInsideMessage,
    NoMessage,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CompressedWithoutEncoding => {
                f.write_str("the message is marked compressed (flag 1) but the call sent no grpc-encoding")
            }
            Problem::BadFlag(flag) => write!(f, "the message's compressed-flag is {flag}; it must be 0 or 1"),
            Problem::EndsInsideMessage => f.write_str("the body ends before the message its gRPC header announced"),
            Problem::NoMessage => f.write_str("the call carries no request message"),
        }
    }
}

/// Where the reader is in the body: 5-byte headers (flag, big-endian length), each followed by
/// that many bytes of message.
#[derive(Clone, Copy, Debug, Default)]
struct Framing {
    may_compress: bool,
    header: [u8; 5],
    header_len: usize,
    message_left: u64,
    messages: u64,
}

impl Framing {
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Problem> {
        while !data.is_empty() {
            if self.message_left > 0 {
                let take = data.len().min(usize::try_from(self.message_left).unwrap_or(usize::MAX));
                data = &data[take..];
                self.message_left -= take as u64;
                if self.message_left == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let take = data.len().min(5 - self.header_len);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                match self.header[0] {
                    0 => {}
                    1 if self.may_compress => {}
                    1 => return Err(Problem::CompressedWithoutEncoding),
                    flag => return Err(Problem::BadFlag(flag)),
                }
                let [_, a, b, c, d] = self.header;
                self.message_left = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.message_left == 0 {
                    self.messages += 1;
                }
            }
        }
        Ok(())
    }

    /// At the end of the body.
    fn finish(&self) -> Result<(), Problem> {
        if self.header_len > 0 || self.message_left > 0 {
            Err(Problem::EndsInsideMessage)
        } else if self.messages == 0 {
            Err(Problem::NoMessage)
        } else {
            Ok(())
        }
    }
}

pin_project_lite::pin_project! {
    /// The request body, passed through as it is read, until its framing goes wrong: then the
    /// problem is the body's error, which tonic answers as the call's status.
    struct CheckedBody {
        #[pin]
        inner: Body,
        message: &'static str,
        framing: Framing,
        done: bool,
    }
}

impl HttpBody for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let checked = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => match frame.data_ref().map(|data| this.framing.scan(data)) {
                Some(Err(problem)) => Err(problem),
                _ => return Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => this.framing.finish(),
        };
        *this.done = true;
        Poll::Ready(checked.err().map(|problem| Err(status::misframed(this.message, problem))))
    }

    // Not at its end before the inner body's end has been seen: a call with no message at all
    // must still be read, to be refused.
    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
