//! The codec every `nrl.v1` server decodes its requests with (`build.rs` names it in the generated
//! servers): prost's, except that a body which is not a valid message of the request type is the
//! caller's error, INVALID_ARGUMENT naming the type, not INTERNAL as tonic-prost answers. Client
//! garbage must not look like a server fault, nor trip the alert on the INTERNAL rate.
//!
//! Responses are encoded to the same bytes as tonic-prost's, but through a `Vec` first
//! ([`ResponseEncoder`]). The clients keep tonic-prost's codec: a response that does not decode is
//! not the caller's fault.

use super::status;
use bytes::BufMut;
use prost::{Message, Name};
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Encodes `T` (the response) to prost's bytes; decodes `U` (the request), refusing what is not one.
pub struct RequestCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ResponseEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Encodes one response message of type `T`: the bytes prost writes, written into a `Vec` and
/// copied into tonic's buffer at once. prost writes every byte of a varint with `put_u8`, which on
/// tonic's `BytesMut` is an out-of-line `put_slice` and a `memcpy` per byte (~200 of them for a
/// page of three pointers, a tenth of a search's instructions under callgrind); on a `Vec` it is
/// an inlined push (loadtest/PROFILE.md).
pub struct ResponseEncoder<T> {
    _type: PhantomData<T>,
}

impl<T: Message> Encoder for ResponseEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        SCRATCH.with_borrow_mut(|bytes| {
            bytes.clear();
            item.encode_raw(bytes);
            buf.put_slice(bytes);
            // A rare large answer (a page of the largest pointers is ~1 MiB) does not stay
            // allocated on every worker thread.
            if bytes.capacity() > SCRATCH_KEPT {
                *bytes = Vec::new();
            }
        });
        Ok(())
    }
}

/// The most a thread's scratch buffer keeps between answers.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    /// Each worker thread's buffer for [`ResponseEncoder`]: reused, so an answer costs no
    /// allocation and no `encoded_len` pass of its own to size one.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes one request message of type `U`.
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Name + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| status::undecodable(&U::full_name(), &e))
    }
}
