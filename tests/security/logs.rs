//! NHS numbers never reach the logs of the real binary, even at debug level.

use super::*;

use testkit::ports::free_port;

/// A request carrying the patient in the request-id headers too (the server must not adopt them).
fn tagged<T>(message: T, patient: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", patient.parse().expect("ascii"));
    request.metadata_mut().insert(
        "x-correlation-id",
        format!("{} {} {}", &patient[..3], &patient[3..6], &patient[6..]).parse().expect("ascii"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhs_numbers_never_reach_the_logs() {
    let port = free_port();
    // Its stdout and stderr both go to one log file, which is what is searched below.
    let dir = TempDir::new("nrl-security-logs");
    let log = dir.join("nrl.log");
    let mut child = Watched::spawn(
        nrl_command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "off"])
            .env("RUST_LOG", "debug"),
        &log,
    );

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "nrl serve never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let patient = new_patient();
    let spaced = format!("{} {} {}", &patient[..3], &patient[3..6], &patient[6..]);
    let dashed = format!("{}-{}-{}", &patient[..3], &patient[3..6], &patient[6..]);
    let last = patient.as_bytes()[9] - b'0';
    let bad_check = format!("{}{}", &patient[..9], (last + 1) % 10);
    let mut c = Clients::new(&channel, Credentials::default().end_user(&patient));
    let created = c
        .registry
        .create_pointer(tagged(
            pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) },
            &patient,
        ))
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer");
    let failing: Vec<Result<(), Status>> = vec![
        c.registry
            .create_pointer(tagged(
                pb::CreatePointerRequest { pointer: Some(input(&bad_check, "QWO", "RR8", CRISIS_PLAN)) },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .create_pointer(tagged(
                pb::CreatePointerRequest { pointer: Some(input(&patient, &patient, "RR8", CRISIS_PLAN)) },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .create_pointer(tagged(
                pb::CreatePointerRequest { pointer: Some(input(&spaced, "QWO", &format!("{patient}!"), CRISIS_PLAN)) },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .search_pointers(tagged(
                pb::SearchPointersRequest { query: Some(query(&dashed)), page_size: -1, page_token: patient.clone() },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .search_pointers(tagged(
                pb::SearchPointersRequest { query: Some(query(&dashed)), page_size: 5, page_token: patient.clone() },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry.get_pointer(tagged(pb::GetPointerRequest { id: patient.clone() }, &patient)).await.map(|_| ()),
        c.locator
            .locate_patient(tagged(pb::LocatePatientRequest { nhs_number: bad_check.clone() }, &patient))
            .await
            .map(|_| ()),
        c.registry
            .supersede_pointer(tagged(
                pb::SupersedePointerRequest {
                    pointer: Some(input(&new_patient(), "QWO", "RR8", CRISIS_PLAN)),
                    supersedes: vec![created.id.clone()],
                },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .update_pointer(tagged(
                pb::UpdatePointerRequest {
                    id: created.id.clone(),
                    version: 7,
                    pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
                },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.audit
            .get_access_log(tagged(
                pb::GetAccessLogRequest { nhs_number: spaced.clone(), page_size: -3, page_token: String::new() },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.admin
            .set_restriction(tagged(
                pb::SetRestrictionRequest { nhs_number: bad_check.clone(), restricted: true },
                &patient,
            ))
            .await
            .map(|_| ()),
    ];
    for (i, result) in failing.iter().enumerate() {
        assert!(result.is_err(), "call {i} was meant to fail: {result:?}");
    }
    c.registry.get_pointer(tagged(pb::GetPointerRequest { id: created.id.clone() }, &patient)).await.expect("get");
    c.registry
        .search_pointers(tagged(
            pb::SearchPointersRequest { query: Some(query(&spaced)), ..Default::default() },
            &patient,
        ))
        .await
        .expect("search");
    c.registry
        .count_pointers(tagged(pb::CountPointersRequest { query: Some(query(&dashed)) }, &patient))
        .await
        .expect("count");
    c.locator
        .locate_patient(tagged(pb::LocatePatientRequest { nhs_number: patient.clone() }, &patient))
        .await
        .expect("locate");
    c.admin
        .set_restriction(tagged(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true }, &patient))
        .await
        .expect("restrict");
    c.admin
        .get_restriction(tagged(pb::GetRestrictionRequest { nhs_number: patient.clone() }, &patient))
        .await
        .expect("restriction");
    c.audit
        .get_access_log(tagged(
            pb::GetAccessLogRequest { nhs_number: patient.clone(), page_size: 2, page_token: String::new() },
            &patient,
        ))
        .await
        .expect("access log");
    c.export("").await.expect("export");
    c.registry
        .delete_pointer(tagged(pb::DeletePointerRequest { id: created.id.clone(), version: 0 }, &patient))
        .await
        .expect("delete");
    drop((c, channel));

    child.signal("-TERM").expect("send SIGTERM");
    let status = child.wait_timeout(Duration::from_secs(30)).expect("nrl stops on SIGTERM");
    let logs = read_log(&log);
    assert!(status.success(), "nrl serve exit: {status:?}\n{logs}");
    // The logs were really on, and covered failing calls.
    assert!(
        logs.contains("DEBUG") && logs.contains("call finished") && logs.contains("INVALID_ARGUMENT"),
        "debug logs of every call, failing ones included, expected:\n{logs}"
    );
    for (form, number) in
        [("plain", &patient), ("spaced", &spaced), ("dashed", &dashed), ("bad check digit", &bad_check)]
    {
        assert!(!logs.contains(number.as_str()), "the {form} NHS number {number} appears in the logs:\n{logs}");
    }
}
