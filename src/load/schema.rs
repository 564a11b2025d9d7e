//! Methods and messages by name, from the descriptor sets compiled into the binary (the ones
//! server reflection serves), and the raw-bytes codec the runner sends them with.

use super::template::{CallData, MethodNames, Template};
use bytes::{Buf, BufMut, Bytes};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde::de::DeserializeSeed;
use serde_json::Value;
use std::sync::OnceLock;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Every service the server registers: nrl.v1 and grpc.health.v1.
pub fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
        pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
        Ok(pool)
    })
    .as_ref()
    .map_err(|e| format!("descriptor sets compiled into the binary do not load: {e}"))
}

/// A method named by a config's `call`: `package.Service.Method` or `package.Service/Method`,
/// as ghz accepts.
#[derive(Debug, Clone)]
pub struct Method {
    pub descriptor: MethodDescriptor,
    /// The HTTP/2 path, `/package.Service/Method`.
    pub path: String,
    pub names: MethodNames,
}

impl Method {
    pub fn resolve(call: &str) -> Result<Self, String> {
        let pool = pool()?;
        let (service, method) = match call.rsplit_once('/') {
            Some(split) => split,
            None => call.rsplit_once('.').ok_or_else(|| format!("\"call\": {call:?} is not package.Service.Method"))?,
        };
        let service = service.trim_start_matches('/');
        let service_descriptor = pool.get_service_by_name(service).ok_or_else(|| {
            let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
            format!("\"call\": no service {service:?} (known: {})", known.join(", "))
        })?;
        let descriptor = service_descriptor.methods().find(|m| m.name() == method).ok_or_else(|| {
            let known: Vec<String> = service_descriptor.methods().map(|m| m.name().to_string()).collect();
            format!("\"call\": {service} has no method {method:?} (it has {})", known.join(", "))
        })?;
        if descriptor.is_client_streaming() || descriptor.is_server_streaming() {
            return Err(format!("\"call\": {call} is a streaming method; nrl-load drives unary calls only"));
        }
        let names = MethodNames {
            fully_qualified_name: format!("{}.{}", service_descriptor.full_name(), descriptor.name()),
            method_name: descriptor.name().to_string(),
            service_name: service_descriptor.name().to_string(),
            input_name: descriptor.input().name().to_string(),
            output_name: descriptor.output().name().to_string(),
            client_streaming: false,
            server_streaming: false,
        };
        Ok(Self { path: format!("/{}/{}", service_descriptor.full_name(), descriptor.name()), names, descriptor })
    }

    pub fn input(&self) -> MessageDescriptor {
        self.descriptor.input()
    }
}

/// Parses proto3 JSON (field names or lowerCamelCase json names, enum names or numbers, Timestamps
/// as RFC 3339) into `descriptor`, refusing unknown fields, and encodes it.
pub fn encode_json(descriptor: &MessageDescriptor, json: &str) -> Result<Bytes, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message: DynamicMessage = descriptor.clone().deserialize(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// One request message of a scenario's data.
#[derive(Debug, Clone)]
pub enum Payload {
    /// No template actions: encoded once.
    Static(Bytes),
    /// Actions only inside string fields (the usual case: `"producer_reference": "load-{{newUUID}}"`):
    /// the message is built once, and each call sets those fields on a copy and encodes it. This
    /// gives what rendering the whole JSON would, without parsing JSON on every call.
    Fields { base: DynamicMessage, fields: Vec<(Vec<Step>, Template)> },
    /// Anything else (an action in a number, enum or Timestamp field): the JSON text is rendered
    /// and parsed per call, as ghz does.
    Template(Template),
}

/// One step from a message to a string field inside it.
#[derive(Debug, Clone)]
pub enum Step {
    Field(FieldDescriptor),
    Index(usize),
}

impl Payload {
    /// Checks `json` against the request type now, rendering a template once with sample call
    /// data so a config that would fail on every call fails here instead.
    pub fn build(method: &Method, json: &Value) -> Result<Self, String> {
        let text = serde_json::to_string(json).map_err(|e| e.to_string())?;
        let template = Template::parse(&text)?;
        let input = method.input();
        if template.is_static() {
            return encode_json(&input, &text).map(Payload::Static).map_err(|e| format!("{}: {e}", input.full_name()));
        }
        let sample_call = CallData::new("w0", 0, &method.names);
        let sample = template.render(&sample_call);
        encode_json(&input, &sample).map_err(|e| format!("{} (after template expansion): {e}", input.full_name()))?;
        Ok(Self::string_fields(&input, json, &sample_call).unwrap_or(Payload::Template(template)))
    }

    /// The [`Payload::Fields`] form, when every action sits inside a string field's value.
    fn string_fields(input: &MessageDescriptor, json: &Value, call: &CallData<'_>) -> Option<Self> {
        let mut leaves = Vec::new();
        let mut sample = json.clone();
        collect_templated(&mut sample, &mut Vec::new(), &mut leaves, call)?;
        let base = DynamicMessage::deserialize(input.clone(), sample).ok()?;
        let fields = leaves
            .into_iter()
            .map(|(path, template)| Some((proto_path(input, &path)?, template)))
            .collect::<Option<Vec<_>>>()?;
        Some(Payload::Fields { base, fields })
    }

    pub fn bytes(&self, method: &Method, call: &CallData<'_>) -> Result<Bytes, String> {
        match self {
            Payload::Static(bytes) => Ok(bytes.clone()),
            Payload::Fields { base, fields } => {
                let mut message = base.clone();
                for (path, template) in fields {
                    if let Some(slot) = walk(&mut message, path) {
                        *slot = prost_reflect::Value::String(template.render(call));
                    }
                }
                Ok(Bytes::from(message.encode_to_vec()))
            }
            Payload::Template(template) => encode_json(&method.input(), &template.render(call)),
        }
    }
}

/// A JSON path: object keys and array indexes.
#[derive(Debug, Clone)]
enum JsonStep {
    Key(String),
    Index(usize),
}

/// Finds the string values holding actions, replacing each with its rendering for `call` (so the
/// result builds a valid base message). `None` when an action is anywhere else (a key).
fn collect_templated(
    value: &mut Value,
    path: &mut Vec<JsonStep>,
    out: &mut Vec<(Vec<JsonStep>, Template)>,
    call: &CallData<'_>,
) -> Option<()> {
    match value {
        Value::String(text) if text.contains("{{") => {
            let template = Template::parse(text).ok()?;
            *text = template.render(call);
            out.push((path.clone(), template));
        }
        Value::Object(object) => {
            if object.keys().any(|k| k.contains("{{")) {
                return None;
            }
            for (key, child) in object.iter_mut() {
                path.push(JsonStep::Key(key.clone()));
                collect_templated(child, path, out, call)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                path.push(JsonStep::Index(i));
                collect_templated(child, path, out, call)?;
                path.pop();
            }
        }
        _ => {}
    }
    Some(())
}

/// The proto path of a JSON path that ends at a plain string field (no maps, no well-known types).
fn proto_path(input: &MessageDescriptor, path: &[JsonStep]) -> Option<Vec<Step>> {
    let mut message = input.clone();
    let mut steps = Vec::new();
    let mut iter = path.iter().peekable();
    while let Some(step) = iter.next() {
        let JsonStep::Key(key) = step else { return None };
        let field = message.get_field_by_name(key).or_else(|| message.get_field_by_json_name(key))?;
        if field.is_map() {
            return None;
        }
        let index = if field.is_list() {
            match iter.next() {
                Some(JsonStep::Index(i)) => Some(*i),
                _ => return None,
            }
        } else {
            None
        };
        let at_end = iter.peek().is_none();
        steps.push(Step::Field(field.clone()));
        if let Some(i) = index {
            steps.push(Step::Index(i));
        }
        match field.kind() {
            Kind::String if at_end => return Some(steps),
            Kind::Message(inner) if !at_end && !inner.full_name().starts_with("google.protobuf.") => message = inner,
            _ => return None,
        }
    }
    None
}

/// The value at `path` inside `message`.
fn walk<'m>(message: &'m mut DynamicMessage, path: &[Step]) -> Option<&'m mut prost_reflect::Value> {
    let (Step::Field(first), rest) = path.split_first()? else { return None };
    let mut value = message.get_field_mut(first);
    let mut rest = rest;
    while let Some((step, tail)) = rest.split_first() {
        value = match (step, value) {
            (Step::Index(i), prost_reflect::Value::List(items)) => items.get_mut(*i)?,
            (Step::Field(field), prost_reflect::Value::Message(inner)) => inner.get_field_mut(field),
            _ => return None,
        };
        rest = tail;
    }
    Some(value)
}

/// Sends pre-encoded request bytes and hands back the response bytes undecoded: a load generator
/// sharing two cores with the server should spend as little as it can on each call. A non-OK
/// grpc-status still comes back as an error from tonic, which is what the runner counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_resolve_in_both_ghz_spellings() {
        let a = Method::resolve("nrl.v1.PointerRegistry.SearchPointers").expect("resolves");
        let b = Method::resolve("nrl.v1.PointerRegistry/SearchPointers").expect("resolves");
        assert_eq!(a.path, "/nrl.v1.PointerRegistry/SearchPointers");
        assert_eq!(a.path, b.path);
        assert_eq!(a.names.input_name, "SearchPointersRequest");
        assert_eq!(
            Method::resolve("grpc.health.v1.Health.Check").expect("health").path,
            "/grpc.health.v1.Health/Check"
        );
        assert!(Method::resolve("nrl.v1.PointerRegistry.Nope").is_err());
        assert!(Method::resolve("grpc.health.v1.Health.Watch").is_err(), "streaming");
    }

    #[test]
    fn json_becomes_the_same_bytes_as_the_generated_type() {
        use crate::proto::nrl::v1 as pb;
        let method = Method::resolve("nrl.v1.PointerRegistry.SearchPointers").expect("resolves");
        let payload =
            Payload::build(&method, &json!({"query": {"nhsNumber": "9434765919"}, "page_size": 10})).expect("valid");
        let Payload::Static(bytes) = payload else { panic!("no template, so static") };
        let expected = pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { nhs_number: "9434765919".into(), ..Default::default() }),
            page_size: 10,
            page_token: String::new(),
        };
        assert_eq!(bytes, Bytes::from(expected.encode_to_vec()));
    }

    #[test]
    fn a_template_names_the_related_asid_by_its_proto_field() {
        use crate::proto::nrl::v1 as pb;
        let method = Method::resolve("nrl.v1.PointerRegistry.CreatePointer").expect("resolves");
        let pointer = json!({"pointer": {"nhs_number": "9434765919", "region": "QWO", "custodian": "RR8",
            "type": "736253002", "related_asid": "200000000123",
            "content": [{"url": "ssp://spine.example.nhs.uk/qwo/1", "retrieval_mechanism": "RETRIEVAL_MECHANISM_SSP"}]}});
        let Payload::Static(bytes) = Payload::build(&method, &pointer).expect("valid") else { panic!("static") };
        let request = pb::CreatePointerRequest::decode(bytes).expect("decodes");
        assert_eq!(request.pointer.map(|p| p.related_asid).as_deref(), Some("200000000123"));
    }

    #[test]
    fn templated_string_fields_are_set_per_call_without_reparsing() {
        use crate::proto::nrl::v1 as pb;
        let method = Method::resolve("nrl.v1.PointerRegistry.BatchCreatePointers").expect("resolves");
        let pointer = |r: &str| {
            json!({"nhs_number": "9434765919", "region": "QWO", "custodian": "RR8",
            "type": "736253002", "producer_reference": r,
            "content": [{"url": "https://x.example/{{.RequestNumber}}", "content_type": "application/pdf"}]})
        };
        let json = json!({"pointers": [pointer("a-{{.UUID}}-0"), pointer("static"), pointer("a-{{.UUID}}-2")]});
        let payload = Payload::build(&method, &json).expect("valid");
        assert!(matches!(payload, Payload::Fields { ref fields, .. } if fields.len() == 5), "{payload:?}");
        let call = CallData::new("w1", 7, &method.names);
        let bytes = payload.bytes(&method, &call).expect("encodes");
        let batch = pb::BatchCreatePointersRequest::decode(bytes).expect("decodes");
        let refs: Vec<&str> = batch.pointers.iter().map(|p| p.producer_reference.as_str()).collect();
        assert_eq!(refs[1], "static");
        assert!(refs[0].starts_with("a-") && refs[0].ends_with("-0") && refs[0].len() == 2 + 36 + 2, "{refs:?}");
        assert_eq!(refs[0].trim_end_matches("-0"), refs[2].trim_end_matches("-2"), "one UUID per call");
        assert_eq!(batch.pointers[2].content[0].url, "https://x.example/7");
        // The same message as rendering the whole JSON text.
        let Payload::Fields { .. } = payload else { unreachable!() };
        let text = Template::parse(&serde_json::to_string(&json).expect("json")).expect("template").render(&call);
        let slow =
            pb::BatchCreatePointersRequest::decode(encode_json(&method.input(), &text).expect("ok")).expect("ok");
        assert_eq!(slow.pointers[0].producer_reference, refs[0]);
        assert_eq!(slow, batch);
    }

    #[test]
    fn an_action_outside_a_string_field_falls_back_to_rendering_the_text() {
        let method = Method::resolve("nrl.v1.PointerRegistry.SearchPointers").expect("resolves");
        let payload =
            Payload::build(&method, &json!({"query": {"nhs_number": "9434765919"}, "page_size": "{{randomInt 1 9}}"}))
                .expect("valid");
        assert!(matches!(payload, Payload::Template(_)));
        let call = CallData::new("w0", 0, &method.names);
        assert!(payload.bytes(&method, &call).is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let method = Method::resolve("nrl.v1.PointerRegistry.GetPointer").expect("resolves");
        assert!(Payload::build(&method, &json!({"idd": "x"})).is_err());
        assert!(Payload::build(&method, &json!({"id": 5})).is_err());
        assert!(Payload::build(&method, &json!({"id": "{{.Nope}}"})).is_err());
    }
}
