//! Who may call at all: credentials (401), the call headers (400 naming the header), and the two
//! endpoints that need none.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nrl_registry::auth::jwt::{mint_hs256, Claims};

const CANARY: &str = "leak-canary-subject-7f3a";

/// Every authenticated interaction once, on `base`, as `caller`: (what, answer).
async fn every_interaction(caller: &Fhir, patient: &str) -> Vec<(String, Answer)> {
    let doc = document(patient, "QWO", OWN, PERMITTED);
    let id = NEVER;
    let search_body = json!({"subject:identifier": format!("{NHS_NUMBER_SYSTEM}|{patient}")});
    vec![
        ("search".into(), caller.get(&search_path(patient)).await),
        ("create".into(), caller.post("DocumentReference", &doc).await),
        ("_search".into(), caller.post("DocumentReference/_search", &search_body).await),
        ("_count".into(), caller.get(&search_path(patient).replacen('?', "/_count?", 1)).await),
        ("read".into(), caller.get(&format!("DocumentReference/{id}")).await),
        ("update".into(), caller.put(&format!("DocumentReference/{id}"), &doc, Some("W/\"1\"")).await),
        ("delete".into(), caller.delete(&format!("DocumentReference/{id}")).await),
        ("create with a client id".into(), caller.put("DocumentReference", &doc, None).await),
        ("access log".into(), caller.get(&audit_path(patient)).await),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_every_interaction_on_every_base_is_401_with_www_authenticate() {
    let server = start().await;
    let patient = new_patient();
    let mut checked = 0;
    for base in ["/FHIR/R4", "/producer/FHIR/R4", "/consumer/FHIR/R4"] {
        // A purpose but no token, so only authentication can fail.
        let caller = Fhir::anonymous(&server.fhir_base_at(base)).with("x-purpose-of-use", "direct-care");
        for (what, answer) in every_interaction(&caller, &patient).await {
            let what = format!("{base} {what}");
            assert_refused(&what, &answer, 401, "MISSING_OR_INVALID_HEADER");
            assert_eq!(answer.body["issue"][0]["code"], "login", "{what}: {}", answer.text);
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}: {:?}", answer.headers);
            checked += 1;
        }
    }
    assert_eq!(checked, 27);
    // Nothing was written for anyone.
    let auditor = Clients::bearer(&server.channel, &token("x26-auditor", "X26", &["auditor"], None));
    let export = auditor.clone().export("").await.expect("export");
    assert!(export.is_empty(), "unauthenticated calls reach no registry operation: {export:?}");
    server.stop().await.expect("stop");
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Every way a token can be wrong, each refused by FHIR exactly as by gRPC, leaking nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_forged_tokens_are_401_on_fhir_as_on_grpc_and_leak_nothing() {
    let server = start().await;
    let patient = new_patient();
    let good = || claims(CANARY, OWN, &["consumer"]);
    let good_token = mint(&good());
    let parts: Vec<&str> = good_token.split('.').collect();
    let elevated = Claims { roles: vec!["admin".into(), "auditor".into(), "producer".into()], ..good() };
    let tampered = format!("{}.{}.{}", parts[0], b64(&serde_json::to_vec(&elevated).expect("json")), parts[2]);
    let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &good(), &EncodingKey::from_secret(SECRET))
        .expect("hs512");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("expired", format!("Bearer {}", mint(&Claims { exp: now() - 3600, ..good() })).into_bytes()),
        ("not yet valid", format!("Bearer {}", mint(&Claims { nbf: Some(now() + 3600), ..good() })).into_bytes()),
        (
            "wrong key",
            format!("Bearer {}", mint_hs256(b"another-secret-entirely-0123456789abcdef", &good()).expect("mint"))
                .into_bytes(),
        ),
        ("wrong audience", format!("Bearer {}", mint(&Claims { aud: "elsewhere".into(), ..good() })).into_bytes()),
        ("wrong issuer", format!("Bearer {}", mint(&Claims { iss: "https://idp.evil".into(), ..good() })).into_bytes()),
        ("alg none", format!("Bearer {alg_none}").into_bytes()),
        ("HS512", format!("Bearer {hs512}").into_bytes()),
        ("tampered roles", format!("Bearer {tampered}").into_bytes()),
        ("garbage", b"Bearer garbage".to_vec()),
        ("Bearer without a token", b"Bearer ".to_vec()),
        ("Basic scheme", format!("Basic {good_token}").into_bytes()),
        ("non-ASCII bytes", b"Bearer \xff\xfe leak-canary".to_vec()),
        ("unknown role", format!("Bearer {}", mint(&Claims { roles: vec!["root".into()], ..good() })).into_bytes()),
    ];
    let base = server.fhir_base();
    let control = Fhir::bearer(&base, &good_token).get(&search_path(&patient)).await;
    assert_eq!(control.status, 200, "the control token is accepted: {}", control.text);
    for (case, authorization) in cases {
        let caller =
            Fhir::anonymous(&base).with_bytes("authorization", &authorization).with("x-purpose-of-use", "direct-care");
        let sent = String::from_utf8_lossy(&authorization).into_owned();
        let secret = sent.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default();
        for (what, answer) in every_interaction(&caller, &patient).await {
            let what = format!("{case}, {what}");
            assert_refused(&what, &answer, 401, "MISSING_OR_INVALID_HEADER");
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
            for leak in [CANARY, "leak-canary", secret.as_str()].iter().filter(|s| s.len() >= 6) {
                assert!(!answer.text.contains(leak), "{what}: the answer leaks {leak:?}: {}", answer.text);
            }
            assert!(answer.diagnostics().len() <= 100, "{what}: a short reason: {}", answer.text);
        }
        // The gRPC twin refuses the same credentials the same way.
        if let Ok(text) = std::str::from_utf8(&authorization) {
            let mut clients = Clients::new(&server.channel, Credentials::authorization(text).purpose("direct-care"));
            let twin = clients
                .registry
                .count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) })
                .await
                .expect_err(case);
            assert_eq!(twin.code(), Code::Unauthenticated, "{case} over gRPC: {twin:?}");
        }
    }
    server.stop().await.expect("stop");
}

/// A malformed `x-purpose-of-use` or `x-end-user` is the caller's header at fault: 400 naming it,
/// MISSING_OR_INVALID_HEADER, the value not echoed; a missing purpose where one is needed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_missing_call_headers_are_400_naming_the_header() {
    let server = start().await;
    let patient = new_patient();
    let consumer = token("purpose-test", OTHER, &["consumer"], None);
    let caller = Fhir::bearer(&server.fhir_base(), &consumer);
    let grpc_count = |credentials: Credentials| {
        let mut clients = Clients::new(&server.channel, credentials);
        let patient = patient.clone();
        async move { clients.registry.count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) }).await }
    };

    for bad in ["curiosity", "", "direct care", "emergency,direct-care", "direct-caré"] {
        let answer = caller.clone().with("x-purpose-of-use", bad).get(&search_path(&patient)).await;
        let what = format!("purpose {bad:?}");
        assert_refused(&what, &answer, 400, "MISSING_OR_INVALID_HEADER");
        assert_eq!(answer.expression(), Some("x-purpose-of-use"), "{what}: {}", answer.text);
        assert!(answer.diagnostics().starts_with("x-purpose-of-use"), "{what}: {}", answer.text);
        if bad.is_ascii() {
            let twin = grpc_count(Credentials::bearer(&consumer).purpose(bad)).await.expect_err(bad);
            assert_field_error(&twin, Code::InvalidArgument, "x-purpose-of-use");
        }
    }
    for bad in ["u".repeat(129), "dr\tjones".into(), String::new(), "x".repeat(4000)] {
        let answer = caller.clone().with("x-end-user", &bad).get(&search_path(&patient)).await;
        let what = format!("end user of {} characters", bad.len());
        assert_refused(&what, &answer, 400, "MISSING_OR_INVALID_HEADER");
        assert_eq!(answer.expression(), Some("x-end-user"), "{what}: {}", answer.text);
        assert!(bad.len() < 6 || !answer.text.contains(&bad), "{what}: the value is echoed: {}", answer.text);
        let twin = grpc_count(Credentials::bearer(&consumer).end_user(&bad)).await.expect_err("bad end user");
        assert_field_error(&twin, Code::InvalidArgument, "x-end-user");
    }
    // Readers must say why they read; the header is what is missing.
    let producer = Clients::bearer(&server.channel, &token("rr8-loader", OWN, &["producer"], None));
    let pointer = seed(&producer, input(&patient, "QWO", OWN, CRISIS_PLAN)).await;
    let silent = caller.clone().without("x-purpose-of-use");
    for (what, answer) in [
        ("search", silent.get(&search_path(&patient)).await),
        ("_count", silent.get(&search_path(&patient).replacen('?', "/_count?", 1)).await),
        ("read", silent.get(&format!("DocumentReference/{}", pointer.id)).await),
    ] {
        let what = format!("{what} without a purpose");
        assert_refused(&what, &answer, 400, "MISSING_OR_INVALID_HEADER");
        assert_eq!(answer.expression(), Some("x-purpose-of-use"), "{what}: {}", answer.text);
    }
    let twin = grpc_count(Credentials::bearer(&consumer).without_purpose()).await.expect_err("no purpose");
    assert_field_error(&twin, Code::InvalidArgument, "x-purpose-of-use");
    for good in ["direct-care", "emergency", "patient-request", "administration", "audit", "EMERGENCY"] {
        let answer = caller.clone().with("x-purpose-of-use", good).get(&search_path(&patient)).await;
        assert_eq!(answer.status, 200, "{good}: {}", answer.text);
    }
    let longest = caller.clone().with("x-end-user", &"u".repeat(128)).get(&search_path(&patient)).await;
    assert_eq!(longest.status, 200, "128 characters is the limit: {}", longest.text);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_status_need_no_credentials_and_ignore_bad_ones() {
    let server = start().await;
    for base in ["/FHIR/R4", "/producer/FHIR/R4", "/consumer/FHIR/R4"] {
        let url = server.fhir_base_at(base);
        for caller in [
            Fhir::anonymous(&url),
            Fhir::anonymous(&url).with("authorization", "Bearer garbage").with("x-purpose-of-use", "curiosity"),
        ] {
            let metadata = caller.get("metadata").await;
            assert_eq!(metadata.status, 200, "{base}/metadata: {}", metadata.text);
            assert_eq!(metadata.body["resourceType"], "CapabilityStatement", "{base}");
            assert_valid("metadata", &metadata.body);
            assert!(metadata.header("www-authenticate").is_none(), "{base}/metadata asks for no credentials");
            let status = caller.get("_status").await;
            assert_eq!((status.status, &status.body), (200, &json!({"message": "OK"})), "{base}/_status");
        }
    }
    // A token with no roles is authenticated, and may do nothing with patient data.
    let roleless = Fhir::bearer(&server.fhir_base(), &token("nobody", OWN, &[], None));
    let patient = new_patient();
    for (what, answer) in every_interaction(&roleless, &patient).await {
        // An id no registry assigned is not found before anyone's rights are asked, as over gRPC.
        let (status, spine) = match what.as_str() {
            "read" | "delete" => (404, "NO_RECORD_FOUND"),
            "create with a client id" => (405, "METHOD_NOT_ALLOWED"),
            _ => (403, "ACCESS DENIED"),
        };
        assert_refused(&format!("roleless {what}"), &answer, status, spine);
    }
    server.stop().await.expect("stop");
}
