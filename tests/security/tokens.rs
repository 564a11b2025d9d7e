//! Tokens: bad tokens are unauthenticated and leak nothing; ES256 and RS256 public keys.

use super::*;

const CANARY_SUB: &str = "leak-canary-subject-5c1e";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Each status must be UNAUTHENTICATED, short, and free of the token and its claims.
fn assert_unauthenticated(case: &str, statuses: &[Status], secrets: &[&str]) {
    assert_eq!(statuses.len(), 2, "{case}: both calls must fail, got {statuses:?}");
    for status in statuses {
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        let message = status.message();
        assert!(!message.is_empty() && message.len() <= 100, "{case}: a short reason, got {message:?}");
        for secret in secrets.iter().filter(|s| s.len() >= 6) {
            assert!(!message.contains(secret), "{case}: the status leaks {secret:?}: {message:?}");
        }
        assert!(status.details().is_empty(), "{case}: no details on UNAUTHENTICATED: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_and_leak_nothing() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let good = || claims(CANARY_SUB, OWN, &["consumer"]);
    let good_token = mint(&good());
    assert!(probe(&server.channel, Credentials::bearer(&good_token)).await.is_empty(), "the control token is accepted");

    let segments: Vec<String> = good_token.split('.').map(String::from).collect();
    let elevated = Claims { roles: vec!["admin".into(), "auditor".into(), "producer".into()], ..good() };
    let tampered = format!("{}.{}.{}", segments[0], b64(&serde_json::to_vec(&elevated).expect("json")), segments[2]);
    let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), segments[1]);
    let alg_none_signed = format!("{}.{}.{}", b64(br#"{"alg":"none","typ":"JWT"}"#), segments[1], segments[2]);
    let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &good(), &EncodingKey::from_secret(SECRET))
        .expect("hs512");
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": CANARY_SUB, "iss": ISSUER, "aud": AUDIENCE, "org": OWN, "roles": ["consumer"]}),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("no exp");
    let mint_with = |claims: Claims| mint(&claims);
    let cases: Vec<(&str, Credentials, String)> = vec![
        ("no authorization header", Credentials::anonymous(), String::new()),
        (
            "Basic scheme",
            Credentials::authorization("Basic dXNlcjpwYXNzd29yZA==").purpose("direct-care"),
            "dXNlcjpwYXNzd29yZA==".into(),
        ),
        (
            "Basic scheme carrying a valid token",
            Credentials::authorization(&format!("Basic {good_token}")).purpose("direct-care"),
            good_token.clone(),
        ),
        ("Bearer without a token", Credentials::authorization("Bearer ").purpose("direct-care"), String::new()),
        ("expired", Credentials::bearer(&mint_with(Claims { exp: now() - 3600, ..good() })), String::new()),
        ("not yet valid", Credentials::bearer(&mint_with(Claims { nbf: Some(now() + 3600), ..good() })), String::new()),
        (
            "wrong key",
            Credentials::bearer(&mint_hs256(b"a-different-secret-altogether-0123456789", &good()).expect("mint")),
            String::new(),
        ),
        (
            "wrong audience",
            Credentials::bearer(&mint_with(Claims { aud: "leak-canary-audience".into(), ..good() })),
            String::new(),
        ),
        (
            "wrong issuer",
            Credentials::bearer(&mint_with(Claims { iss: "https://leak-canary-issuer.example".into(), ..good() })),
            String::new(),
        ),
        ("alg none, unsigned", Credentials::bearer(&alg_none), alg_none.clone()),
        ("alg none, old signature", Credentials::bearer(&alg_none_signed), alg_none_signed.clone()),
        ("HS512 (not configured)", Credentials::bearer(&hs512), hs512.clone()),
        ("tampered payload (roles)", Credentials::bearer(&tampered), tampered.clone()),
        ("no exp claim", Credentials::bearer(&no_exp), no_exp.clone()),
        ("empty subject", Credentials::bearer(&mint_with(Claims { sub: " ".into(), ..good() })), String::new()),
        (
            "org not an ODS code",
            Credentials::bearer(&mint_with(Claims { org: "leak-canary-org!".into(), ..good() })),
            String::new(),
        ),
        (
            "unknown role",
            Credentials::bearer(&mint_with(Claims { roles: vec!["leak-canary-root".into()], ..good() })),
            String::new(),
        ),
        ("garbage", Credentials::bearer("garbage"), "garbage".into()),
        ("three empty parts", Credentials::bearer("..").purpose("direct-care"), String::new()),
        ("three junk parts", Credentials::bearer("leak-canary.junk-part.third-part"), "leak-canary".into()),
        (
            "non-ASCII header bytes",
            Credentials { authorization: Some(b"Bearer \xff\xfe leak-canary".to_vec()), ..Credentials::anonymous() },
            String::new(),
        ),
    ];
    for (case, credentials, extra) in cases {
        let sent =
            credentials.authorization.as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        let token = sent.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default();
        let mut secrets: Vec<&str> = vec![CANARY_SUB, "leak-canary", &extra, &token];
        secrets.extend(token.split('.'));
        let statuses = probe(&server.channel, credentials).await;
        assert_unauthenticated(case, &statuses, &secrets);
    }
    server.stop().await.expect("stop");
}

fn server_with_keys(keys: Vec<VerifyingKey>) -> ServerConfig {
    let verifier = JwtVerifier::new(keys, ISSUER, AUDIENCE).expect("verifier");
    let mut config = ServerConfig::for_tests();
    config.auth =
        AuthConfig { authenticator: Authenticator::Enabled { jwt: Some(Arc::new(verifier)), mtls: None }, tls: None };
    config
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_keys_verify_and_other_algorithms_are_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC P-256 key");
    let public_pem = key.public_key_pem();
    let server =
        TestServer::start_with(server_with_keys(vec![VerifyingKey::PublicPem(public_pem.clone().into_bytes())])).await;
    let good = claims(CANARY_SUB, OWN, &["consumer"]);
    let es256 =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key"), &good);
    assert!(
        probe(&server.channel, Credentials::bearer(&es256)).await.is_empty(),
        "an ES256 token from the IdP's key is accepted"
    );

    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC P-256 key");
    let wrong_key =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("EC key"), &good);
    let hs256 = mint(&good);
    // Algorithm confusion: an HMAC keyed with the (public) verification key.
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(public_pem.as_bytes()), &good);
    for (case, token) in [
        ("ES256, another key", &wrong_key),
        ("HS256 on an ES256 server", &hs256),
        ("HS256 keyed with the public PEM", &confused),
    ] {
        assert_unauthenticated(case, &probe(&server.channel, Credentials::bearer(token)).await, &[token, CANARY_SUB]);
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_public_keys_verify_and_other_algorithms_are_refused() {
    // A committed test-only key pair: rcgen cannot generate RSA keys with the ring backend.
    const PRIVATE: &str = include_str!("../data/test-only-rs256-private-key.pem");
    const PUBLIC: &str = include_str!("../data/test-only-rs256-public-key.pem");
    let server =
        TestServer::start_with(server_with_keys(vec![VerifyingKey::PublicPem(PUBLIC.as_bytes().to_vec())])).await;
    let good = claims(CANARY_SUB, OWN, &["consumer"]);
    let rs256 = sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).expect("RSA key"), &good);
    assert!(
        probe(&server.channel, Credentials::bearer(&rs256)).await.is_empty(),
        "an RS256 token from the IdP's key is accepted"
    );

    let expired = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).expect("RSA key"),
        &Claims { exp: now() - 3600, ..good.clone() },
    );
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let es256 =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC key"), &good);
    let hs256 = mint(&good);
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(PUBLIC.as_bytes()), &good);
    for (case, token) in [
        ("RS256 expired", &expired),
        ("ES256 on an RS256 server", &es256),
        ("HS256 on an RS256 server", &hs256),
        ("HS256 keyed with the public PEM", &confused),
    ] {
        assert_unauthenticated(case, &probe(&server.channel, Credentials::bearer(token)).await, &[token, CANARY_SUB]);
    }
    server.stop().await.expect("stop");
}
