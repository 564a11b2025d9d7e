use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Claims {
    Claims {
        sub: "qwo-shared-care".into(),
        iss: "https://idp.example".into(),
        aud: "nrl-registry".into(),
        exp: now() + 300,
        nbf: None,
        org: "rr8".into(),
        roles: vec!["producer".into(), "consumer".into()],
        pointer_types: Some(vec!["736253002".into()]),
        regions: Some(vec!["QWO".into()]),
        nhs_number: None,
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(vec![VerifyingKey::Hs256Secret(SECRET.to_vec())], "https://idp.example", "nrl-registry")
        .expect("verifier")
}

fn reason(token: &str) -> String {
    match verifier().verify(token) {
        Ok(_) => "accepted".into(),
        Err(RegistryError::Unauthenticated(reason)) => reason,
        Err(other) => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[test]
fn a_good_token_becomes_a_caller() {
    let token = mint_hs256(SECRET, &claims()).expect("mint");
    let caller = verifier().verify(&token).expect("valid");
    assert_eq!(caller.application, "qwo-shared-care");
    assert_eq!(caller.organisation.as_str(), "RR8");
    assert!(caller.has(Role::Producer) && caller.has(Role::Consumer) && !caller.has(Role::Admin));
    assert!(caller.pointer_types.allows(&"736253002".to_string()));
    assert!(!caller.pointer_types.allows(&"1363501000000100".to_string()));
    assert!(!caller.unrestricted);
}

#[test]
fn bad_tokens_are_unauthenticated_with_a_short_reason() {
    let expired = Claims { exp: now() - 3600, ..claims() };
    let not_yet = Claims { nbf: Some(now() + 3600), ..claims() };
    let wrong_audience = Claims { aud: "someone-else".into(), ..claims() };
    let listed_audience = Claims { aud: Audience::Many(vec!["other".into(), "nrl-registry".into()]), ..claims() };
    let wrong_issuer = Claims { iss: "https://evil.example".into(), ..claims() };
    let bad_org = Claims { org: "x".into(), ..claims() };
    let bad_role = Claims { roles: vec!["superuser".into()], ..claims() };
    assert!(verifier().verify(&mint_hs256(SECRET, &listed_audience).expect("mint")).is_ok(), "aud as a list");
    for (token, expected) in [
        (mint_hs256(SECRET, &expired).expect("mint"), "token expired"),
        (mint_hs256(SECRET, &not_yet).expect("mint"), "token not yet valid"),
        (mint_hs256(SECRET, &wrong_audience).expect("mint"), "token audience not accepted"),
        (mint_hs256(SECRET, &wrong_issuer).expect("mint"), "token issuer not accepted"),
        (mint_hs256(b"another-secret-another-secret-another", &claims()).expect("mint"), "token signature invalid"),
        (mint_hs256(SECRET, &bad_org).expect("mint"), "token org is not an ODS code"),
        (mint_hs256(SECRET, &bad_role).expect("mint"), "token names an unknown role"),
        ("not.a.token".to_string(), "malformed token"),
        (String::new(), "malformed token"),
    ] {
        let got = reason(&token);
        assert!(got.ends_with(expected), "expected {expected:?}, got {got:?}");
    }
}

#[test]
fn alg_none_and_tampered_payloads_are_refused() {
    let good = mint_hs256(SECRET, &claims()).expect("mint");
    let parts: Vec<&str> = good.split('.').collect();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{}.", parts[1]);
    assert!(!reason(&unsigned).ends_with("accepted"));

    let mut tampered_claims = claims();
    tampered_claims.roles = vec!["admin".into()];
    let tampered_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered_claims).expect("json"));
    let tampered = format!("{}.{tampered_payload}.{}", parts[0], parts[2]);
    assert!(reason(&tampered).ends_with("token signature invalid"));
}

#[test]
fn short_secrets_and_junk_keys_are_refused_at_startup() {
    assert!(JwtVerifier::new(vec![VerifyingKey::Hs256Secret(b"short".to_vec())], "i", "a").is_err());
    assert!(JwtVerifier::new(vec![VerifyingKey::PublicPem(b"junk".to_vec())], "i", "a").is_err());
    assert!(JwtVerifier::new(vec![], "i", "a").is_err());
}
