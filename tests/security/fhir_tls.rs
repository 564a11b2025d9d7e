//! The FHIR listener speaks TLS when the server has TLS, from the same certificates as gRPC, and
//! an mTLS client certificate identifies its caller there exactly as on gRPC.

use super::*;
use nrl_registry::api::fhir::codes::{
    FHIR_JSON, FORMAT_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, REGION_EXTENSION, SNOMED_SYSTEM, STABILITY_EXTENSION,
    STABILITY_SYSTEM,
};
use nrl_registry::auth::PURPOSE_HEADER;
use serde_json::{json, Value};
use std::net::SocketAddr;
use testkit::auth::CertAndKey;
use testkit::reqwest;
use tokio::io::AsyncReadExt;

/// A server with `auth` and the FHIR listener on 127.0.0.1:0; its gRPC and FHIR addresses.
async fn start(auth: AuthConfig, handshake_timeout: Option<Duration>) -> (RawServer, SocketAddr) {
    let mut config = ServerConfig::for_tests();
    config.auth = auth;
    config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    if let Some(timeout) = handshake_timeout {
        config.limits.connections.handshake_timeout = timeout;
    }
    let bound = config.fhir.bound.clone();
    let server = RawServer::start(config).await;
    let fhir = tokio::time::timeout(Duration::from_secs(10), bound.wait()).await.expect("the FHIR listener binds");
    (server, fhir)
}

fn document_reference(nhs_number: &str, custodian: &str) -> Value {
    json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "extension": [{"url": REGION_EXTENSION, "valueCode": TARGET_REGION}],
        "type": {"coding": [{"system": SNOMED_SYSTEM, "code": PERMITTED}]},
        "category": [{"coding": [{"system": SNOMED_SYSTEM, "code": CARE_PLAN}]}],
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}},
        "custodian": {"identifier": {"system": ODS_SYSTEM, "value": custodian}},
        "content": [{
            "attachment": {"contentType": "application/pdf", "url": "https://qwo.example.nhs.uk/doc/1"},
            "format": {"system": FORMAT_SYSTEM, "code": "urn:nhs-ic:unstructured"},
            "extension": [{"url": STABILITY_EXTENSION,
                           "valueCodeableConcept": {"coding": [{"system": STABILITY_SYSTEM, "code": "static"}]}}],
        }],
    })
}

/// POSTs `resource` to `base`/DocumentReference with `token` when given.
async fn create(client: &reqwest::Client, base: &str, resource: &Value, token: Option<&str>) -> reqwest::Response {
    let mut request = client
        .post(format!("{base}/DocumentReference"))
        .header("content-type", FHIR_JSON)
        .header(PURPOSE_HEADER, "direct-care")
        .body(resource.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("the create is answered")
}

/// Searches `base` for `nhs_number`'s pointers with `token` when given.
async fn search(client: &reqwest::Client, base: &str, nhs_number: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client
        .get(format!("{base}/DocumentReference"))
        .query(&[("subject:identifier", format!("{NHS_NUMBER_SYSTEM}|{nhs_number}"))])
        .header(PURPOSE_HEADER, "direct-care");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("the search is answered")
}

/// The response's headers and JSON body, once its status is `expected` (else a panic showing the body).
async fn expect(response: reqwest::Response, expected: u16, what: &str) -> (reqwest::header::HeaderMap, Value) {
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.text().await.expect("the body is read");
    assert_eq!(status.as_u16(), expected, "{what}: {body}");
    (headers, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}")))
}

/// The error and every cause under it, for assertions on why a request failed.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The error of a request the server refuses at the handshake, carrying `alert`. Under TLS 1.3 the
/// client finishes its side of the handshake before the server checks the certificate, so it may
/// find the connection closed before it reads the alert: every try must fail, and the alert must
/// show in one of a few.
async fn handshake_refusal(ca_pem: &str, identity: Option<&CertAndKey>, url: &str, alert: &str) -> String {
    let mut refusals = Vec::new();
    for _ in 0..5 {
        let error = https_client(ca_pem, identity).get(url).send().await.expect_err("refused at the handshake");
        let refusal = chain(&error);
        if refusal.contains(alert) {
            return refusal;
        }
        refusals.push(refusal);
    }
    panic!("the server refuses the handshake with {alert}: {refusals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_fhir_listener_speaks_https_only() {
    let pki = Pki::new("nrl test CA");
    let auth = AuthConfig { tls: Some(pki.server_tls()), ..jwt_auth() };
    let (server, fhir) = start(auth, Some(Duration::from_millis(500))).await;
    let base = format!("https://{fhir}/FHIR/R4");
    let https = https_client(&pki.ca_pem, None);

    let plain = reqwest::Client::new().get(format!("http://{fhir}/FHIR/R4/metadata")).send().await;
    assert!(plain.is_err(), "plain HTTP must not be answered on a TLS listener: {plain:?}");
    let untrusted = https_client(&Pki::new("another CA").ca_pem, None).get(format!("{base}/metadata")).send().await;
    let untrusted = untrusted.expect_err("the server's certificate is not from the client's CA");
    assert!(chain(&untrusted).contains("UnknownIssuer"), "{}", chain(&untrusted));

    let metadata = https.get(format!("{base}/metadata")).send().await.expect("metadata over HTTPS");
    assert_eq!(metadata.status(), 200);
    assert_eq!(metadata.version(), reqwest::Version::HTTP_11, "ALPN http/1.1");
    let statement: Value = metadata.json().await.expect("JSON");
    assert_eq!(statement["resourceType"], "CapabilityStatement", "{statement}");

    // Authenticated by bearer token over TLS; links and Location name the https base.
    let producer = token("qwo-shared-care", OWN, &["producer"], None);
    let consumer = token("gp-practice", OTHER, &["consumer"], None);
    let patient = new_patient();
    let created = create(&https, &base, &document_reference(&patient, OWN), Some(&producer)).await;
    let (headers, _) = expect(created, 201, "created by a producer's token").await;
    let location = headers.get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
    assert!(location.starts_with(&format!("{base}/DocumentReference/")), "{location}");
    let (_, bundle) = expect(search(&https, &base, &patient, Some(&consumer)).await, 200, "search").await;
    assert_eq!(bundle["total"], 1, "{bundle}");
    let self_link = bundle["link"][0]["url"].as_str().unwrap_or_default();
    assert!(self_link.starts_with(&format!("{base}/DocumentReference?")), "{bundle}");
    assert!(bundle["entry"][0]["fullUrl"].as_str().is_some_and(|u| u == location), "{bundle}");
    let anonymous = search(&https, &base, &patient, None).await;
    assert_eq!(anonymous.status(), 401, "no token, no client certificate");

    // A connection that never starts its handshake is closed at the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(fhir).await.expect("TCP connect");
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed within the handshake timeout: {closed:?}");

    // Shutdown does not wait on the client's idle pooled connection.
    let started = Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3), "stopped in {:?}", started.elapsed());
}

/// The mTLS server: client certificates from `pki`'s CA, and (when `jwt`) bearer tokens too.
fn mtls_auth(pki: &Pki, jwt: bool) -> AuthConfig {
    let directory = ClientDirectory::from_json(
        r#"{"clients": [{"common_name": "qwo-shared-care", "org": "RR8", "roles": ["producer", "consumer"]}]}"#,
    )
    .expect("clients file");
    let verifier = match jwt_auth().authenticator {
        Authenticator::Enabled { jwt: verifier, .. } if jwt => verifier,
        _ => None,
    };
    AuthConfig {
        authenticator: Authenticator::Enabled { jwt: verifier, mtls: Some(Arc::new(directory)) },
        tls: Some(pki.mtls(jwt)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_a_client_certificate_identifies_its_caller_on_fhir() {
    let pki = Pki::new("nrl test CA");
    let rogue = Pki::new("rogue CA");
    // Tokens are accepted too, so a client certificate is optional: as on gRPC.
    let (server, fhir) = start(mtls_auth(&pki, true), None).await;
    let base = format!("https://{fhir}/FHIR/R4");

    let registered = https_client(&pki.ca_pem, Some(&pki.client("qwo-shared-care")));
    let patient = new_patient();
    let created = create(&registered, &base, &document_reference(&patient, OWN), None).await;
    expect(created, 201, "the registered client creates for its own organisation").await;
    let other = create(&registered, &base, &document_reference(&patient, OTHER), None).await;
    expect(other, 403, "not for another organisation's").await;
    let (_, bundle) = expect(search(&registered, &base, &patient, None).await, 200, "search").await;
    assert_eq!(bundle["total"], 1, "consumer role from the clients file: {bundle}");

    let anonymous = https_client(&pki.ca_pem, None);
    let metadata = anonymous.get(format!("{base}/metadata")).send().await.expect("TLS without a certificate");
    assert_eq!(metadata.status(), 200, "open endpoints need no credentials");
    let refused = search(&anonymous, &base, &patient, None).await;
    assert_eq!(refused.status(), 401, "no certificate and no token");
    assert_eq!(refused.headers().get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    let outcome: Value = refused.json().await.expect("OperationOutcome");
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let bearer = token("gp-practice", OTHER, &["consumer"], None);
    assert_eq!(search(&anonymous, &base, &patient, Some(&bearer)).await.status(), 200, "a token still serves");

    let stranger = https_client(&pki.ca_pem, Some(&pki.client("stranger")));
    let refused = search(&stranger, &base, &patient, None).await;
    assert_eq!(refused.status(), 401, "our CA, but not in the clients file");
    assert!(!refused.text().await.unwrap_or_default().contains("stranger"));

    let impostor = rogue.client("qwo-shared-care");
    let refused =
        handshake_refusal(&pki.ca_pem, Some(&impostor), &format!("{base}/metadata"), "alert: UnknownCA").await;
    println!("FHIR mTLS refusal, rogue CA: {refused}");
    drop((registered, anonymous, stranger));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_only_the_fhir_handshake_needs_a_client_certificate() {
    let pki = Pki::new("nrl test CA");
    let (server, fhir) = start(mtls_auth(&pki, false), None).await;
    let base = format!("https://{fhir}/FHIR/R4");

    let refused = handshake_refusal(&pki.ca_pem, None, &format!("{base}/metadata"), "alert: CertificateRequired").await;
    println!("FHIR mTLS refusal, no certificate: {refused}");
    let registered = https_client(&pki.ca_pem, Some(&pki.client("qwo-shared-care")));
    let patient = new_patient();
    let created = create(&registered, &base, &document_reference(&patient, OWN), None).await;
    expect(created, 201, "the registered client creates for its own organisation").await;
    drop(registered);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_the_fhir_listener_serves_plain_http_and_drains_on_shutdown() {
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::start_with_fhir(StoreConfig::Memory).await;
    let fhir = server.fhir.expect("the FHIR listener is on");
    let base = server.fhir_base();
    let patient = new_patient();
    let created = create(&reqwest::Client::new(), &base, &document_reference(&patient, OWN), None).await;
    let (headers, _) = expect(created, 201, "created over plain HTTP").await;
    let location = headers.get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
    assert!(location.starts_with(&format!("{base}/DocumentReference/")), "{location}");
    let https = https_client(&Pki::new("nrl test CA").ca_pem, None).get(format!("https://{fhir}/FHIR/R4/metadata"));
    assert!(https.send().await.is_err(), "no TLS on a listener without TLS");

    // A request in flight when shutdown begins is answered; no new connection is taken.
    let mut in_flight = tokio::net::TcpStream::connect(fhir).await.expect("connect");
    let head = "POST /FHIR/R4/DocumentReference HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
                Content-Length: 2\r\n\r\n{";
    in_flight.write_all(head.as_bytes()).await.expect("send the head and half the body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.begin_shutdown();
    let (_, took) = testkit::eventually("the FHIR listener stops accepting", Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(fhir).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_string()),
        }
    })
    .await;
    println!("FHIR listener closed {took:?} after shutdown began");
    in_flight.write_all(b"}").await.expect("the rest of the body");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), in_flight.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "the connection closes after its answer: {read:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "the in-flight request is answered: {answer}");
    assert!(answer.contains("OperationOutcome"), "{answer}");
    server.join().await.expect("the server stops cleanly");
}
