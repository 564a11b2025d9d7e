//! NHS numbers never reach the logs of the real binary, even at debug level: not from request
//! bodies, and not smuggled into what a caller controls besides the body (request and correlation
//! ids, the end user, a token's subject and organisation), written every way a caller might write
//! them; nor do they come back in the echoed `x-request-id`.

use super::*;

use nrl_registry::proto::nrl::v1::change_feed_client::ChangeFeedClient;
use nrl_registry::proto::nrl::v1::federated_locator_client::FederatedLocatorClient;
use testkit::ports::free_port;
use testkit::privacy::digit_runs;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic_health::pb::health_client::HealthClient;

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
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "off", "--fhir-listen", "off"])
            .env("RUST_LOG", "debug"),
        &log,
    );

    let channel = connect_when_listening(port).await;

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

/// The patient written the ways a caller might: plain, prefixed, dotted, suffixed, as a key=value,
/// as a path, with a version, spaced, dashed, with underscores after a prefix.
fn disguises(p: &str) -> Vec<String> {
    let (a, b, c) = (&p[..3], &p[3..6], &p[6..]);
    vec![
        p.to_string(),
        format!("req-{p}"),
        format!("{a}.{b}.{c}"),
        format!("{p}a"),
        format!("nhs={p}"),
        format!("{p}/1"),
        format!("{p}.1"),
        format!("{a} {b} {c}"),
        format!("{a}-{b}-{c}"),
        format!("nhs:{a}_{b}_{c}"),
    ]
}

/// Where a line's digits are the server's own and say nothing of a caller: the timestamp, a
/// call's duration, the addresses it listens on, and HTTP/2's connection-level frames (h2 logs
/// every frame it sends or receives at debug; a window size can be 2^31 - 1, ten digits). Frames
/// that carry a request (HEADERS, DATA) are kept.
fn without_own_numbers(mut line: serde_json::Value) -> serde_json::Value {
    const CONNECTION_LEVEL: [&str; 5] = ["WindowUpdate {", "Settings {", "Ping {", "GoAway {", "Reset {"];
    let h2 = line["target"].as_str().is_some_and(|t| t.starts_with("h2::"));
    if let Some(object) = line.as_object_mut() {
        object.remove("timestamp");
        if let Some(fields) = object.get_mut("fields").and_then(|f| f.as_object_mut()) {
            for own in ["duration_ms", "listen", "admin_listen", "grace_secs"] {
                fields.remove(own);
            }
            fields.retain(|name, value| {
                let text = value.as_str().unwrap_or_default();
                !(h2 && ["frame", "message"].contains(&name.as_str())
                    && CONNECTION_LEVEL.iter().any(|f| text.contains(f)))
            });
        }
    }
    line
}

/// The metadata every call carries: the smuggled request and correlation ids.
fn smuggle<T>(message: T, request_id: &str, correlation_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", request_id.parse().expect("ascii"));
    request.metadata_mut().insert("x-correlation-id", correlation_id.parse().expect("ascii"));
    request
}

fn echoed(metadata: &MetadataMap) -> String {
    metadata.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// The id each answer echoed, whether it succeeded or failed.
fn echo<T>(result: Result<tonic::Response<T>, Status>) -> String {
    match result {
        Ok(response) => echoed(response.metadata()),
        Err(status) => echoed(status.metadata()),
    }
}

/// The calls [`every_rpc`] makes: every RPC of every service (GetPointer twice, the second time
/// once the pointer is deleted; SearchPointers twice, once invalid), and grpc.health.v1 Check.
const RPCS: usize = 22;

/// Calls every RPC once as `clients` (with the smuggled ids), returning the echoed ids.
async fn every_rpc(channel: &tonic::transport::Channel, credentials: Credentials, ids: (&str, &str)) -> Vec<String> {
    let patient = new_patient();
    let (rid, cid) = ids;
    let mut c = Clients::new(channel, credentials.clone());
    let mut feed = ChangeFeedClient::with_interceptor(channel.clone(), credentials.clone());
    let mut federated = FederatedLocatorClient::with_interceptor(channel.clone(), credentials.clone());
    let mut health = HealthClient::new(channel.clone());
    let mut echoes = Vec::new();
    let pointer = input(&patient, "QWO", "RR8", CRISIS_PLAN);
    let created =
        c.registry.create_pointer(smuggle(pb::CreatePointerRequest { pointer: Some(pointer) }, rid, cid)).await;
    let id = created.as_ref().ok().and_then(|r| r.get_ref().pointer.as_ref()).map(|p| p.id.clone());
    echoes.push(echo(created));
    let id = id.unwrap_or_default();
    echoes.push(echo(c.registry.get_pointer(smuggle(pb::GetPointerRequest { id: id.clone() }, rid, cid)).await));
    let update = pb::UpdatePointerRequest {
        id: id.clone(),
        version: 1,
        pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
    };
    echoes.push(echo(c.registry.update_pointer(smuggle(update, rid, cid)).await));
    let supersede = pb::SupersedePointerRequest {
        pointer: Some(input(&patient, "QE1", "RR8", CRISIS_PLAN)),
        supersedes: vec![id.clone()],
    };
    echoes.push(echo(c.registry.supersede_pointer(smuggle(supersede, rid, cid)).await));
    let search = pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() };
    echoes.push(echo(c.registry.search_pointers(smuggle(search, rid, cid)).await));
    let bad_search =
        pb::SearchPointersRequest { query: Some(query(&patient)), page_size: -1, page_token: patient.clone() };
    echoes.push(echo(c.registry.search_pointers(smuggle(bad_search, rid, cid)).await));
    let count = pb::CountPointersRequest { query: Some(query(&patient)) };
    echoes.push(echo(c.registry.count_pointers(smuggle(count, rid, cid)).await));
    let batch = pb::BatchCreatePointersRequest {
        pointers: vec![input(&patient, "QF7", "RR8", CRISIS_PLAN), input("123", "QWO", "RR8", CRISIS_PLAN)],
    };
    echoes.push(echo(c.registry.batch_create_pointers(smuggle(batch, rid, cid)).await));
    let delete = pb::DeletePointerRequest { id: id.clone(), version: 0 };
    echoes.push(echo(c.registry.delete_pointer(smuggle(delete, rid, cid)).await));
    echoes.push(echo(c.registry.get_pointer(smuggle(pb::GetPointerRequest { id: id.clone() }, rid, cid)).await));
    let locate = pb::LocatePatientRequest { nhs_number: patient.clone() };
    echoes.push(echo(c.locator.locate_patient(smuggle(locate, rid, cid)).await));
    echoes.push(echo(c.locator.list_regions(smuggle(pb::ListRegionsRequest {}, rid, cid)).await));
    echoes.push(echo(c.locator.list_pointer_types(smuggle(pb::ListPointerTypesRequest {}, rid, cid)).await));
    let restrict = pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true };
    echoes.push(echo(c.admin.set_restriction(smuggle(restrict, rid, cid)).await));
    let restriction = pb::GetRestrictionRequest { nhs_number: patient.clone() };
    echoes.push(echo(c.admin.get_restriction(smuggle(restriction, rid, cid)).await));
    let log = pb::GetAccessLogRequest { nhs_number: patient.clone(), page_size: 5, page_token: String::new() };
    echoes.push(echo(c.audit.get_access_log(smuggle(log, rid, cid)).await));
    let export = pb::StreamAuditEventsRequest { after: String::new(), follow: false };
    match c.audit.stream_audit_events(smuggle(export, rid, cid)).await {
        Ok(response) => {
            echoes.push(echoed(response.metadata()));
            let mut stream = response.into_inner();
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {}
        }
        Err(status) => echoes.push(echoed(status.metadata())),
    }
    let watch = pb::WatchPointersRequest { after: String::new(), regions: vec![], types: vec![] };
    match feed.watch_pointers(smuggle(watch, rid, cid)).await {
        Ok(response) => {
            echoes.push(echoed(response.metadata()));
            let _ = tokio::time::timeout(Duration::from_millis(200), response.into_inner().next()).await;
        }
        Err(status) => echoes.push(echoed(status.metadata())),
    }
    match feed.snapshot_pointers(smuggle(pb::SnapshotPointersRequest { regions: vec![] }, rid, cid)).await {
        Ok(response) => {
            echoes.push(echoed(response.metadata()));
            let mut stream = response.into_inner();
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {}
        }
        Err(status) => echoes.push(echoed(status.metadata())),
    }
    let federated_search =
        || pb::FederatedSearchRequest { query: Some(query(&patient)), target_regions: vec![], deadline_ms: 2000 };
    echoes.push(echo(federated.federated_search(smuggle(federated_search(), rid, cid)).await));
    match federated.federated_search_stream(smuggle(federated_search(), rid, cid)).await {
        Ok(response) => {
            echoes.push(echoed(response.metadata()));
            let mut stream = response.into_inner();
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {}
        }
        Err(status) => echoes.push(echoed(status.metadata())),
    }
    let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
    echoes.push(echo(health.check(smuggle(check, rid, cid)).await));
    echoes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhs_numbers_smuggled_into_ids_end_users_and_tokens_reach_no_log_line_and_no_echo() {
    let port = free_port();
    let dir = TempDir::new("nrl-security-smuggled");
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).expect("write the JWT secret");
    let log = dir.join("nrl.log");
    let secret = secret.to_string_lossy().into_owned();
    let mut child = Watched::spawn(
        nrl_command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "off", "--fhir-listen", "off"])
            .args(["--jwt-hs256-secret-file", &secret, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE])
            .env("RUST_LOG", "debug")
            .env("NRL_LOG_FORMAT", "json"),
        &log,
    );
    let channel = connect_when_listening(port).await;

    let smuggled = new_patient();
    let forms = disguises(&smuggled);
    let every_role = ["producer", "consumer", "admin", "auditor", "peer"];
    let mut echoes = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        let correlation = &forms[(i + 1) % forms.len()];
        let end_user = &forms[(i + 2) % forms.len()];
        // The token's subject carries the patient too; its organisation is a real ODS code here, so
        // the producer's writes succeed and their log lines are covered.
        let token = mint(&claims(form, "RR8", &every_role));
        let credentials = Credentials::bearer(&token).purpose("direct-care").end_user(end_user);
        echoes.extend(every_rpc(&channel, credentials, (form, correlation)).await);
    }
    // An organisation is an ODS code, 3-12 letters or digits (and an optional `.suffix`), so ten
    // digits make a well-formed one.
    let mut orgs: Vec<String> =
        forms.iter().filter(|f| f.bytes().all(|b| b.is_ascii_alphanumeric())).cloned().collect();
    orgs.push(format!("{}.{}", &smuggled[..3], &smuggled[3..]));
    for org in &orgs {
        let token = mint(&claims(org, org, &every_role));
        let credentials = Credentials::bearer(&token).purpose("direct-care").end_user(org);
        echoes.extend(every_rpc(&channel, credentials, (org, org)).await);
    }
    drop(channel);

    child.signal("-TERM").expect("send SIGTERM");
    let status = child.wait_timeout(Duration::from_secs(30)).expect("nrl stops on SIGTERM");
    let logs = read_log(&log);
    assert!(status.success(), "nrl serve exit: {status:?}\n{logs}");

    // Every answer echoed an id, none of them one the caller sent, and none holding a digit run.
    assert_eq!(echoes.len(), (forms.len() + orgs.len()) * RPCS, "every call answered");
    let carrying: Vec<&String> = echoes.iter().filter(|id| id.is_empty() || !digit_runs(id).is_empty()).collect();
    assert!(carrying.is_empty(), "{} echoed ids are missing or carry ten digits: {carrying:?}", carrying.len());

    // The log was really on, as JSON, at debug, covering calls that failed and calls that did not.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON log line ({e}): {l}")))
        .collect();
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["target"] == "nrl_registry::access" && l["level"] == "DEBUG").collect();
    assert!(access.len() >= echoes.len(), "an access line per call: {} for {} calls", access.len(), echoes.len());
    for code in ["OK", "INVALID_ARGUMENT", "NOT_FOUND"] {
        assert!(access.iter().any(|l| l["fields"]["grpc_code"] == code), "no {code} call in the log");
    }
    assert!(logs.contains("\"caller_org\":\"redacted\""), "the ten-digit organisations were redacted, not dropped");

    // Nothing anywhere in the log (but the server's own clock, durations and addresses) holds ten
    // digits in a row, in any format; and the patient's digits are nowhere, separators or not.
    let hits: Vec<(Vec<String>, String)> = lines
        .iter()
        .map(|line| (digit_runs(&without_own_numbers(line.clone()).to_string()), line.to_string()))
        .filter(|(runs, _)| !runs.is_empty())
        .collect();
    assert!(hits.is_empty(), "{} log lines hold ten digits in a row, e.g. {:?}", hits.len(), hits.first());
    let squeezed: String = logs.chars().filter(char::is_ascii_alphanumeric).collect();
    assert!(!squeezed.contains(&smuggled), "the smuggled patient is in the log, in some format");
}

/// A channel to the `nrl serve` on `port`, once it listens (within 30 s).
async fn connect_when_listening(port: u16) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "nrl serve never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
