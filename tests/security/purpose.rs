//! Purpose of use and end user

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reads_need_a_known_purpose_and_a_sane_end_user() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let consumer = token("purpose-test", OTHER, &["consumer"], None);
    let patient = new_patient();
    let count = |credentials: Credentials| {
        let mut clients = Clients::new(&server.channel, credentials);
        let patient = patient.clone();
        async move { clients.registry.count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) }).await }
    };

    let err = count(Credentials::bearer(&consumer).without_purpose()).await.expect_err("no purpose");
    assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");
    let mut search = Clients::new(&server.channel, Credentials::bearer(&consumer).without_purpose());
    let err = search
        .registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect_err("no purpose");
    assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");
    let err = search
        .locator
        .locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() })
        .await
        .expect_err("no purpose");
    assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");

    for bad in ["curiosity", "", "direct care", "emergency,direct-care"] {
        let err = count(Credentials::bearer(&consumer).purpose(bad)).await.expect_err(bad);
        assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");
    }
    for good in ["direct-care", "emergency", "patient-request", "administration", "audit", "EMERGENCY"] {
        count(Credentials::bearer(&consumer).purpose(good)).await.unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }

    let longest = "u".repeat(128);
    count(Credentials::bearer(&consumer).end_user(&longest)).await.expect("128 characters is the limit");
    for bad in ["u".repeat(129), "x".repeat(4000), "dr\tjones".into(), String::new()] {
        let err = count(Credentials::bearer(&consumer).end_user(&bad)).await.expect_err("bad end user");
        assert_field_error(&err, Code::InvalidArgument, "x-end-user");
        assert!(!err.message().contains(&bad) || bad.is_empty(), "the value is not echoed: {err:?}");
    }
    server.stop().await.expect("stop");
}
