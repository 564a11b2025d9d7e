//! gRPC's framing on the wire, for load tools that speak plain HTTP/2 rather than gRPC (h2load).
//!
//! A unary gRPC request body is one *Length-Prefixed-Message* (gRPC over HTTP/2): a compressed
//! flag byte (0: not compressed), the message length as a big-endian u32, then the protobuf bytes.
//! [`framed`] builds that body from a config's data, so h2load sends exactly the message
//! `nrl-load run` and ghz would send for the same config, plus the config's metadata as headers.
//! [`unframe`] and [`decode`] read a body back: a response curl saved, or a request in the tests.

use super::run::Scenario;
use super::schema::Method;
use prost_reflect::{DynamicMessage, MessageDescriptor};

/// The compressed flag and the length.
pub const PREFIX_LEN: usize = 5;

/// `message` as one uncompressed Length-Prefixed-Message.
pub fn frame(message: &[u8]) -> Result<Vec<u8>, String> {
    let length = u32::try_from(message.len())
        .map_err(|_| format!("a {} byte message does not fit gRPC's 32-bit length", message.len()))?;
    let mut body = Vec::with_capacity(PREFIX_LEN + message.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(message);
    Ok(body)
}

/// The message of a body holding exactly one uncompressed Length-Prefixed-Message.
pub fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let (prefix, message) = body
        .split_first_chunk::<PREFIX_LEN>()
        .ok_or_else(|| format!("{} bytes: shorter than the {PREFIX_LEN}-byte prefix", body.len()))?;
    match prefix[0] {
        0 => {}
        1 => return Err("the message is compressed (flag 1); nrl-load reads uncompressed ones only".into()),
        flag => return Err(format!("compressed flag {flag}: not a gRPC message")),
    }
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if message.len() != length {
        return Err(format!("the prefix says {length} bytes, but {} follow it", message.len()));
    }
    Ok(message)
}

/// Decodes protobuf bytes as `descriptor` into proto3 JSON (lowerCamelCase names, defaults left out).
pub fn decode(descriptor: &MessageDescriptor, message: &[u8]) -> Result<serde_json::Value, String> {
    let message = DynamicMessage::decode(descriptor.clone(), message)
        .map_err(|e| format!("not a {}: {e}", descriptor.full_name()))?;
    serde_json::to_value(&message).map_err(|e| e.to_string())
}

/// One call of a scenario, ready for a raw HTTP/2 client.
#[derive(Debug, Clone)]
pub struct Framed {
    pub method: Method,
    /// The request body: prefix and message.
    pub body: Vec<u8>,
    /// The call's metadata (`x-purpose-of-use`, a token), lower-case names, templates rendered.
    pub metadata: Vec<(String, String)>,
}

impl Framed {
    /// The protobuf message inside the body.
    pub fn message(&self) -> &[u8] {
        &self.body[PREFIX_LEN..]
    }
}

/// Call number `n` of `scenario` (its data message `n` mod the number of messages, templates
/// rendered for request number `n`), framed.
pub fn framed(scenario: &Scenario, n: u64) -> Result<Framed, String> {
    let (message, metadata) = scenario.request(n)?;
    Ok(Framed { method: scenario.method.clone(), body: frame(&message)?, metadata })
}

/// A response body (one message) decoded as `method`'s response type, into proto3 JSON.
pub fn decode_response(method: &Method, body: &[u8]) -> Result<serde_json::Value, String> {
    decode(&method.descriptor.output(), unframe(body)?)
}

/// A request body decoded as `method`'s request type, into proto3 JSON.
pub fn decode_request(method: &Method, body: &[u8]) -> Result<serde_json::Value, String> {
    decode(&method.input(), unframe(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_a_zero_flag_and_a_big_endian_length() {
        assert_eq!(frame(b"").expect("frames"), [0, 0, 0, 0, 0]);
        let message = vec![7u8; 300];
        let body = frame(&message).expect("frames");
        assert_eq!(&body[..5], &[0, 0, 0, 1, 44]);
        assert_eq!(unframe(&body).expect("unframes"), &message[..]);
    }

    #[test]
    fn bodies_that_are_not_one_uncompressed_message_are_refused() {
        assert!(unframe(&[0, 0, 0]).expect_err("short").contains("shorter"));
        assert!(unframe(&[1, 0, 0, 0, 1, 9]).expect_err("compressed").contains("compressed"));
        assert!(unframe(&[2, 0, 0, 0, 0]).expect_err("flag").contains("flag 2"));
        assert!(unframe(&[0, 0, 0, 0, 2, 9]).expect_err("truncated").contains("says 2 bytes, but 1"));
        assert!(unframe(&[0, 0, 0, 0, 0, 9]).expect_err("two messages or junk").contains("says 0 bytes"));
    }
}
