//! mTLS: client certificates identify registered callers only.

use super::*;

/// Never OK: either the TLS connection fails or the call does.
async fn assert_refused(
    case: &str,
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&CertAndKey>,
) -> Option<Code> {
    match tls_channel(addr, ca_pem, client).await {
        Err(_) => None,
        Ok(channel) => {
            let mut clients = Clients::new(&channel, Credentials::anonymous());
            let list = clients.locator.list_regions(pb::ListRegionsRequest {}).await;
            let create = clients
                .registry
                .create_pointer(pb::CreatePointerRequest {
                    pointer: Some(input(&new_patient(), "QWO", OWN, PERMITTED)),
                })
                .await;
            assert!(list.is_err() && create.is_err(), "{case}: calls must fail, got {list:?} / {create:?}");
            list.err().map(|e| e.code())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificates_identify_registered_callers_only() {
    let pki = Pki::new("nrl test CA");
    let rogue = Pki::new("rogue CA");
    let directory = ClientDirectory::from_json(
        r#"{"clients": [
            {"common_name": "qwo-shared-care", "org": "RR8", "roles": ["producer", "consumer"]},
            {"common_name": "x26-audit", "org": "X26", "roles": ["auditor"]}
        ]}"#,
    )
    .expect("clients file");
    let mut config = ServerConfig::for_tests();
    config.auth = AuthConfig {
        authenticator: Authenticator::Enabled { jwt: None, mtls: Some(Arc::new(directory)) },
        tls: Some(pki.mtls(false)),
    };
    let server = RawServer::start(config).await;

    let registered =
        tls_channel(server.addr, &pki.ca_pem, Some(&pki.client("qwo-shared-care"))).await.expect("mTLS connect");
    let mut qwo = Clients::new(&registered, Credentials::anonymous());
    let patient = new_patient();
    let created = qwo
        .registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", PERMITTED)) })
        .await
        .expect("the registered client creates for its own organisation")
        .into_inner()
        .pointer
        .expect("pointer");
    let err = qwo
        .registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", OTHER, PERMITTED)) })
        .await
        .expect_err("another organisation's pointer");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let found = qwo
        .registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect("consumer role from the clients file")
        .into_inner();
    assert_eq!(found.pointers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![created.id.as_str()]);

    // The audit names the certificate's caller.
    let auditor_channel = tls_channel(server.addr, &pki.ca_pem, Some(&pki.client("x26-audit"))).await.expect("connect");
    let events = Clients::new(&auditor_channel, Credentials::anonymous()).export("").await.expect("auditor exports");
    let create = events.iter().find(|e| e.operation == "CreatePointer" && e.outcome == "OK").expect("create event");
    assert_eq!((create.application.as_str(), create.organisation.as_str()), ("qwo-shared-care", "RR8"));
    assert_eq!(create.pointer_ids, vec![created.id.clone()]);

    // A certificate from our CA whose name is not in the clients file.
    let stranger = tls_channel(server.addr, &pki.ca_pem, Some(&pki.client("stranger"))).await.expect("TLS is fine");
    for status in probe(&stranger, Credentials::anonymous()).await.into_iter().chain(
        Clients::new(&stranger, Credentials::anonymous())
            .registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", PERMITTED)) })
            .await
            .err(),
    ) {
        assert_eq!(status.code(), Code::Unauthenticated, "stranger: {status:?}");
        assert!(!status.message().contains("stranger"), "{status:?}");
    }
    assert_eq!(probe(&stranger, Credentials::anonymous()).await.len(), 2, "every call of the stranger fails");

    let no_cert = assert_refused("no client certificate", server.addr, &pki.ca_pem, None).await;
    let rogue_cert = assert_refused(
        "a registered name from another CA",
        server.addr,
        &pki.ca_pem,
        Some(&rogue.client("qwo-shared-care")),
    )
    .await;
    println!("mTLS refusals: no certificate → {no_cert:?}, rogue CA → {rogue_cert:?} (None: the handshake failed)");
    drop((registered, auditor_channel, stranger));
    server.stop().await;
}
