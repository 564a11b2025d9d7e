//! Hostile requests other than bodies' contents: oversized bodies (declared, undeclared, chunked),
//! wrong media types, deeply nested JSON, absurd query strings, paths and methods. Each gets a
//! 4xx OperationOutcome, and the server keeps serving.

use super::*;
use nrl_registry::api::fhir::MAX_BODY_BYTES;

/// A valid create body padded with spaces to exactly `size` bytes.
fn padded(patient: &str, size: usize) -> Vec<u8> {
    let mut body = document(patient, "QWO", OWN, CRISIS_PLAN).to_string().into_bytes();
    assert!(body.len() < size);
    body.resize(size, b' ');
    body
}

/// `body` as HTTP/1.1 chunked transfer coding, in 16 KiB chunks.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_one_mib_are_413_declared_or_not_and_one_mib_is_taken() {
    let server = start().await;
    let addr = server.fhir.expect("FHIR on");
    let bearer = token("rr8-big", OWN, &["producer", "consumer"], None);
    let auth = format!(
        "Authorization: Bearer {bearer}\r\nx-purpose-of-use: direct-care\r\nContent-Type: application/fhir+json"
    );
    let patient = new_patient();
    let limit = MAX_BODY_BYTES;
    assert_eq!(limit, 1024 * 1024, "the documented limit");

    let exact = raw(
        addr,
        &format!("POST /FHIR/R4/DocumentReference HTTP/1.1\r\n{auth}\r\nContent-Length: {limit}"),
        padded(&patient, limit),
    )
    .await;
    assert_eq!(exact.0, 201, "exactly 1 MiB is taken: {}", String::from_utf8_lossy(&exact.2));
    let exact_chunked = raw(
        addr,
        &format!("POST /FHIR/R4/DocumentReference HTTP/1.1\r\n{auth}\r\nTransfer-Encoding: chunked"),
        chunked(&padded(&patient, limit)),
    )
    .await;
    assert_eq!(exact_chunked.0, 201, "and chunked: {}", String::from_utf8_lossy(&exact_chunked.2));

    let over = padded(&patient, limit + 1);
    for (path, method) in [
        ("/FHIR/R4/DocumentReference", "POST"),
        ("/producer/FHIR/R4/DocumentReference", "POST"),
        (&format!("/FHIR/R4/DocumentReference/{NEVER}") as &str, "PUT"),
        ("/FHIR/R4/DocumentReference/_search", "POST"),
    ] {
        let declared =
            raw(addr, &format!("{method} {path} HTTP/1.1\r\n{auth}\r\nContent-Length: {}", limit + 1), over.clone())
                .await;
        assert_raw(&format!("{method} {path}, 1 MiB + 1 declared"), &declared, 413, "PAYLOAD_TOO_LARGE");
        let undeclared =
            raw(addr, &format!("{method} {path} HTTP/1.1\r\n{auth}\r\nTransfer-Encoding: chunked"), chunked(&over))
                .await;
        assert_raw(&format!("{method} {path}, 1 MiB + 1 chunked"), &undeclared, 413, "PAYLOAD_TOO_LARGE");
        // A declared length far over the limit is refused before any of it is sent.
        let promised =
            raw(addr, &format!("{method} {path} HTTP/1.1\r\n{auth}\r\nContent-Length: 1099511627776"), Vec::new())
                .await;
        assert_raw(&format!("{method} {path}, 1 TiB promised"), &promised, 413, "PAYLOAD_TOO_LARGE");
        // What is left of that body cannot be told from a next request: the answer says the
        // connection closes, so that a keep-alive client does not send one into it.
        assert!(promised.1.to_ascii_lowercase().contains("connection: close"), "{}", promised.1);
    }
    // Unauthenticated, and over HTTP/1.0 without any length (the body ends when the client closes).
    let anonymous = raw(
        addr,
        "POST /FHIR/R4/DocumentReference HTTP/1.1\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked",
        chunked(&vec![b' '; 3 * limit]),
    )
    .await;
    assert_raw("anonymous, 3 MiB chunked", &anonymous, 413, "PAYLOAD_TOO_LARGE");
    let client = Fhir::bearer(&server.fhir_base(), &bearer);
    let big = client.send(reqwest::Method::POST, "DocumentReference", Some(vec![b'{'; 5 * limit]), &[]).await;
    assert_refused("5 MiB through reqwest", &big, 413, "PAYLOAD_TOO_LARGE");
    // A body a few times over the limit is read to its end (and dropped) before the answer, so
    // that a client still sending it reads the 413 rather than a reset connection, and the
    // connection can carry the next request.
    assert_eq!(big.header("connection"), None, "{:?}", big.headers);
    // Far over it, declared (above) or sent, the answer comes at once.
    let sent = raw(
        addr,
        &format!("POST /FHIR/R4/DocumentReference HTTP/1.1\r\n{auth}\r\nTransfer-Encoding: chunked"),
        chunked(&vec![b' '; 20 * limit]),
    )
    .await;
    assert_raw("20 MiB chunked", &sent, 413, "PAYLOAD_TOO_LARGE");

    // Only the two 1 MiB creates were written; the server still serves.
    let found = client.get(&search_path(&patient)).await;
    assert_eq!(found.entry_ids().len(), 2, "{}", found.text);
    assert_eq!(client.get("_status").await.status, 200);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_types_are_415_and_unacceptable_accepts_406() {
    let server = start().await;
    let client = Fhir::bearer(&server.fhir_base(), &token("rr8-types", OWN, &["producer", "consumer"], None));
    let patient = new_patient();
    let doc = document(&patient, "QWO", OWN, CRISIS_PLAN).to_string().into_bytes();
    let at = format!("DocumentReference/{NEVER}");
    for kind in [
        "text/plain",
        "application/xml",
        "application/fhir+xml",
        "multipart/form-data; boundary=x",
        "",
        "application/json-patch+json",
        "application/x-www-form-urlencoded",
    ] {
        for (method, path) in [(reqwest::Method::POST, "DocumentReference"), (reqwest::Method::PUT, at.as_str())] {
            let answer = client.send(method.clone(), path, Some(doc.clone()), &[("content-type", kind)]).await;
            assert_refused(&format!("{method} as {kind:?}"), &answer, 415, "UNSUPPORTED_MEDIA_TYPE");
            assert_eq!(answer.expression(), Some("Content-Type"));
        }
    }
    let search_body = format!("subject:identifier={}", token_parameter(NHS_NUMBER_SYSTEM, &patient)).into_bytes();
    let answer = client
        .send(
            reqwest::Method::POST,
            "DocumentReference/_search",
            Some(search_body.clone()),
            &[("content-type", "text/plain")],
        )
        .await;
    assert_refused("_search as text/plain", &answer, 415, "UNSUPPORTED_MEDIA_TYPE");
    let form = client
        .send(
            reqwest::Method::POST,
            "DocumentReference/_search",
            Some(search_body),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(form.status, 200, "a form is a search body: {}", form.text);
    let addr = server.fhir.expect("FHIR on");
    let untyped = raw(
        addr,
        &format!(
            "POST /FHIR/R4/DocumentReference HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}",
            token("rr8-types", OWN, &["producer"], None),
            doc.len()
        ),
        doc.clone(),
    )
    .await;
    assert_raw("no Content-Type at all", &untyped, 415, "UNSUPPORTED_MEDIA_TYPE");
    for kind in ["application/fhir+json; charset=utf-8", "APPLICATION/JSON", "application/fhir+json;fhirVersion=4.0"] {
        let mut fresh = document(&patient, "QWO", OWN, CRISIS_PLAN);
        fresh["date"] = json!("2024-06-01T10:00:00Z");
        let answer = client
            .send(
                reqwest::Method::POST,
                "DocumentReference",
                Some(fresh.to_string().into_bytes()),
                &[("content-type", kind)],
            )
            .await;
        assert_eq!(answer.status, 201, "{kind}: {}", answer.text);
    }

    for accept in
        ["application/xml", "application/fhir+xml", "text/html", "text/plain, application/xml;q=0.9", "image/*"]
    {
        for (what, answer) in [
            ("search", client.send(reqwest::Method::GET, &search_path(&patient), None, &[("accept", accept)]).await),
            ("metadata", client.send(reqwest::Method::GET, "metadata", None, &[("accept", accept)]).await),
            (
                "create",
                client.send(reqwest::Method::POST, "DocumentReference", Some(doc.clone()), &[("accept", accept)]).await,
            ),
            ("unknown path", client.send(reqwest::Method::GET, "Patient/1", None, &[("accept", accept)]).await),
        ] {
            assert_refused(&format!("{what} accepting {accept}"), &answer, 406, "NOT_ACCEPTABLE");
            assert_eq!(answer.expression(), Some("Accept"));
            // Refused before its body was read: the connection closes, and the answer says so.
            let closes = if what == "create" { Some("close") } else { None };
            assert_eq!(answer.header("connection"), closes, "{what}: {:?}", answer.headers);
        }
    }
    for accept in [
        "*/*",
        "application/fhir+json",
        "application/json",
        "application/xml, application/fhir+json;q=0.5",
        "application/*",
    ] {
        let answer = client.send(reqwest::Method::GET, &search_path(&patient), None, &[("accept", accept)]).await;
        assert_eq!(answer.status, 200, "{accept}: {}", answer.text);
    }
    let found = client.get(&search_path(&patient)).await;
    assert_eq!(found.entry_ids().len(), 3, "only the three well-typed creates: {}", found.text);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_400_and_the_server_keeps_serving() {
    let server = start().await;
    let client = Fhir::bearer(&server.fhir_base(), &token("rr8-deep", OWN, &["producer", "consumer"], None));
    let target = created_id(
        "target",
        &client.post("DocumentReference", &document(&new_patient(), "QWO", OWN, CRISIS_PLAN)).await,
    );
    let depth = 100_000;
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("100k [", vec![b'['; depth]),
        ("100k [ closed", [vec![b'['; depth], vec![b']'; depth]].concat()),
        ("100k {\"a\":", "{\"a\":".repeat(depth).into_bytes()),
        ("deep inside a valid resource", {
            let text = document(&new_patient(), "QWO", OWN, CRISIS_PLAN).to_string();
            text.replacen(
                "\"date\":",
                &format!("\"description\":{}1{},\"date\":", "[".repeat(depth), "]".repeat(depth)),
                1,
            )
            .into_bytes()
        }),
        ("200 levels", [vec![b'['; 200], vec![b']'; 200]].concat()),
    ];
    for (what, body) in bodies {
        for (method, path) in [
            (reqwest::Method::POST, "DocumentReference".to_string()),
            (reqwest::Method::PUT, format!("DocumentReference/{target}")),
            (reqwest::Method::POST, "DocumentReference/_search".to_string()),
        ] {
            let answer = client.send(method.clone(), &path, Some(body.clone()), &[]).await;
            assert_refused(&format!("{what} to {method} {path}"), &answer, 400, "MESSAGE_NOT_WELL_FORMED");
        }
    }
    assert_eq!(client.get("_status").await.status, 200, "still serving");
    let read = client.get(&format!("DocumentReference/{target}")).await;
    assert_eq!(read.body["meta"]["versionId"], "1", "untouched");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_query_strings_paths_and_methods_are_4xx_outcomes() {
    let server = start().await;
    let bearer = token("rr8-query", OWN, &["producer", "consumer", "auditor"], None);
    let client = Fhir::bearer(&server.fhir_base(), &bearer);
    let patient = new_patient();
    let subject = search_path(&patient);
    // Each under the 64 KiB an HTTP/1.1 request target may have here (hyper's limit: over it, 414).
    let many: String = (0..5_000).map(|i| format!("&p{i}=1")).collect();
    let repeated = "&_count=1".repeat(6_000);
    let types = std::iter::repeat_n(format!("{SNOMED_SYSTEM}|{CRISIS_PLAN}"), 1_000).collect::<Vec<_>>().join(",");
    let cases: Vec<(&str, String, &str)> = vec![
        ("5,000 unknown parameters", format!("{subject}{many}"), "INVALID_PARAMETER"),
        ("6,000 repeats", format!("{subject}{repeated}"), "INVALID_PARAMETER"),
        (
            "1,000 alternatives",
            format!("{subject}&type={}", form_urlencoded::byte_serialize(types.as_bytes()).collect::<String>()),
            "INVALID_PARAMETER",
        ),
        ("a 60 KB page token", format!("{subject}&next-page-token={}", "A".repeat(60_000)), "INVALID_PARAMETER"),
        (
            "a 60 KB NHS number",
            format!("DocumentReference?subject:identifier={}", "9".repeat(60_000)),
            "INVALID_NHS_NUMBER",
        ),
        ("bad percent-encoding", format!("{subject}&type=%zz%ff%fe%00"), "INVALID_CODE_VALUE"),
        ("an empty name", format!("{subject}&=1"), "INVALID_PARAMETER"),
        ("only ampersands", "DocumentReference?&&&&&&".into(), "INVALID_PARAMETER"),
        ("a negative _count", format!("{subject}&_count=-1"), "INVALID_PARAMETER"),
        ("a huge _count", format!("{subject}&_count=99999999999999999999999"), "INVALID_PARAMETER"),
        ("a forged page token", format!("{subject}&next-page-token=eyJhZnRlciI6IjEifQ"), "INVALID_PARAMETER"),
        ("log: 5,000 unknown parameters", format!("{}{many}", audit_path(&patient)), "INVALID_PARAMETER"),
        (
            "log: a long cursor",
            format!("{}&next-page-token={}", audit_path(&patient), "1".repeat(65)),
            "INVALID_PARAMETER",
        ),
        ("log: both patient and entity", format!("{}&entity.identifier=x", audit_path(&patient)), "INVALID_PARAMETER"),
        (
            "_count: 5,000 unknown parameters",
            format!("{}{many}", subject.replacen('?', "/_count?", 1)),
            "INVALID_PARAMETER",
        ),
    ];
    // Over raw HTTP/1.1: these are longer than an `http::Uri` (and so reqwest) takes.
    let addr = server.fhir.expect("FHIR on");
    let auth = format!("Authorization: Bearer {bearer}\r\nx-purpose-of-use: direct-care");
    for (what, path, spine) in &cases {
        let answer = raw(addr, &format!("GET /FHIR/R4/{path} HTTP/1.1\r\n{auth}"), Vec::new()).await;
        assert_raw(what, &answer, 400, spine);
        assert!(answer.2.len() < 4096, "{what}: the answer does not echo the request: {} bytes", answer.2.len());
    }
    // Longer than the HTTP layer takes at all: hyper refuses them itself (414, 431) before the FHIR
    // edge sees them, so without an OperationOutcome; the server lives on.
    for size in [70_000, 1_000_000] {
        let long =
            raw(addr, &format!("GET /FHIR/R4/{subject}&x={} HTTP/1.1\r\n{auth}", "a".repeat(size)), Vec::new()).await;
        // 414 once the target is over 64 KiB; 431 once the request head overflows hyper's buffer.
        let expected = if size < 400_000 { 414 } else { 431 };
        assert_eq!(long.0, expected, "a {size}-byte query: {}", long.1);
    }
    let huge_header =
        raw(addr, &format!("GET /FHIR/R4/metadata HTTP/1.1\r\nX-Big: {}", "b".repeat(1_000_000)), Vec::new()).await;
    assert_eq!(huge_header.0, 431, "a 1 MB header: {}", huge_header.1);

    // Paths and methods.
    let long_id = "a".repeat(10_000);
    for (what, method, path, status, spine) in [
        ("a 10 KB id", reqwest::Method::GET, format!("DocumentReference/{long_id}"), 404, "NO_RECORD_FOUND"),
        ("a NUL in the id", reqwest::Method::GET, "DocumentReference/%00".into(), 404, "NO_RECORD_FOUND"),
        ("traversal", reqwest::Method::GET, "DocumentReference/..%2F..%2Fetc%2Fpasswd".into(), 404, "NO_RECORD_FOUND"),
        (
            "a deeper path",
            reqwest::Method::GET,
            format!("DocumentReference/{NEVER}/_history/1"),
            404,
            "NO_RECORD_FOUND",
        ),
        ("another resource", reqwest::Method::GET, "Patient".into(), 404, "NO_RECORD_FOUND"),
        ("PATCH", reqwest::Method::PATCH, format!("DocumentReference/{NEVER}"), 405, "METHOD_NOT_ALLOWED"),
        ("OPTIONS", reqwest::Method::OPTIONS, "DocumentReference".into(), 405, "METHOD_NOT_ALLOWED"),
        ("DELETE all", reqwest::Method::DELETE, "DocumentReference".into(), 405, "METHOD_NOT_ALLOWED"),
        ("POST to an id", reqwest::Method::POST, format!("DocumentReference/{NEVER}"), 405, "METHOD_NOT_ALLOWED"),
        ("PUT the log", reqwest::Method::PUT, "AuditEvent".into(), 405, "METHOD_NOT_ALLOWED"),
        ("TRACE", reqwest::Method::TRACE, "metadata".into(), 405, "METHOD_NOT_ALLOWED"),
    ] {
        let answer = client.send(method, &path, None, &[]).await;
        assert_refused(what, &answer, status, spine);
    }
    for (what, tag) in [
        ("garbage", "garbage"),
        ("zero", "W/\"0\""),
        ("negative", "W/\"-1\""),
        ("huge", "W/\"99999999999999999999999\""),
        ("a list", "W/\"1\", W/\"2\""),
    ] {
        let answer = client
            .send(reqwest::Method::DELETE, &format!("DocumentReference/{NEVER}"), None, &[("if-match", tag)])
            .await;
        assert!(matches!(answer.status, 400 | 404), "If-Match {what}: {}", answer.text);
        assert_outcome(what, &answer);
    }
    assert_eq!(client.get("_status").await.status, 200, "still serving");
    server.stop().await.expect("stop");
}
