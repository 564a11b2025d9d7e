//! The codec every `nrl.v1` server decodes its requests with (`build.rs` names it in the generated
//! servers): prost's, except that a body which is not a valid message of the request type is the
//! caller's error, INVALID_ARGUMENT naming the type, not INTERNAL as tonic-prost answers. Client
//! garbage must not look like a server fault, nor trip the alert on the INTERNAL rate.
//!
//! Responses are encoded exactly as tonic-prost does. The clients keep tonic-prost's codec: a
//! response that does not decode is not the caller's fault.

use super::status;
use prost::{Message, Name};
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Encodes `T` (the response) like prost; decodes `U` (the request), refusing what is not one.
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
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
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
