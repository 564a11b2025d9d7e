//! NHS numbers never reach the logs of the real binary through the FHIR listener, nor any
//! response header: not from bodies, paths, query strings, or the headers a caller controls
//! (request and correlation ids, the end user, the token's subject), written every way a caller
//! might write them, in calls that succeed and calls that fail at every layer.

use super::*;
use nrl_registry::telemetry::is_log_safe;
use testkit::nodes::nrl_command;
use testkit::ports::free_ports;
use testkit::privacy::digit_runs;
use testkit::process::{TempDir, Watched};

/// The patient written the ways a caller might, beyond [`formats`].
fn disguises(p: &str) -> Vec<String> {
    let (a, b, c) = (&p[..3], &p[3..6], &p[6..]);
    let last = p.as_bytes()[9] - b'0';
    vec![
        p.to_string(),
        format!("{a} {b} {c}"),
        format!("{a}-{b}-{c}"),
        format!("req-{p}"),
        format!("{a}.{b}.{c}"),
        format!("{p}a"),
        format!("nhs:{a}_{b}_{c}"),
        // With a wrong check digit: not an NHS number, but a caller's attempt at one.
        format!("{}{}", &p[..9], (last + 1) % 10),
    ]
}

/// A log line without the server's own numbers: the timestamp, durations, the addresses it
/// listens on.
fn without_own_numbers(mut line: Value) -> Value {
    if let Some(object) = line.as_object_mut() {
        object.remove("timestamp");
        if let Some(fields) = object.get_mut("fields").and_then(|f| f.as_object_mut()) {
            for own in ["duration_ms", "listen", "admin_listen", "fhir_listen", "grace_secs"] {
                fields.remove(own);
            }
        }
    }
    line
}

/// One request: (name, method, path, body, extra headers).
type Call<'a> = (&'a str, reqwest::Method, String, Option<Vec<u8>>, Vec<(&'a str, String)>);

/// Every interaction, and the ways each can fail, as `caller`, with `forms` of `patient` in the
/// path, the query and the body. Returns (what, answer) for each.
async fn every_interaction(caller: &Fhir, patient: &str, forms: &[String]) -> Vec<(String, Answer)> {
    let mut answers = Vec::new();
    let doc = document(patient, "QWO", OWN, CRISIS_PLAN);
    let created = caller.post("DocumentReference", &doc).await;
    let id = created_id("create", &created);
    answers.push(("create".to_string(), created));
    let at = format!("DocumentReference/{id}");
    let mut changed = doc.clone();
    changed["content"][0]["attachment"]["url"] = json!("https://qwo.example.nhs.uk/records/v2");
    let mut moved = doc.clone();
    moved["subject"]["identifier"]["value"] = json!(new_patient());
    let huge = format!("{{\"resourceType\":\"DocumentReference\",\"note\":\"{}\"}}", patient.repeat(120_000));
    let calls: Vec<Call> = vec![
        ("read", reqwest::Method::GET, at.clone(), None, vec![]),
        (
            "update",
            reqwest::Method::PUT,
            at.clone(),
            Some(changed.to_string().into_bytes()),
            vec![("if-match", "W/\"1\"".into())],
        ),
        ("update moving the patient", reqwest::Method::PUT, at.clone(), Some(moved.to_string().into_bytes()), vec![]),
        (
            "update at the patient's version",
            reqwest::Method::PUT,
            at.clone(),
            Some(changed.to_string().into_bytes()),
            vec![("if-match", format!("W/\"{patient}\""))],
        ),
        (
            "delete at the patient's version",
            reqwest::Method::DELETE,
            at.clone(),
            None,
            vec![("if-match", format!("W/\"{patient}\""))],
        ),
        ("PATCH", reqwest::Method::PATCH, format!("DocumentReference/{patient}"), None, vec![]),
        ("unknown path", reqwest::Method::GET, format!("Patient/{patient}"), None, vec![]),
        ("unknown history", reqwest::Method::GET, format!("DocumentReference/{patient}/_history/1"), None, vec![]),
        ("delete by patient", reqwest::Method::DELETE, format!("DocumentReference/{patient}"), None, vec![]),
        (
            "search by an unknown parameter",
            reqwest::Method::GET,
            format!("DocumentReference?{patient}=1"),
            None,
            vec![],
        ),
        (
            "search with the patient as page token",
            reqwest::Method::GET,
            format!("{}&next-page-token={patient}", search_path(patient)),
            None,
            vec![],
        ),
        (
            "search with the patient as _count",
            reqwest::Method::GET,
            format!("{}&_count={patient}", search_path(patient)),
            None,
            vec![],
        ),
        (
            "log with the patient as page token",
            reqwest::Method::GET,
            format!("{}&next-page-token={patient}", audit_path(patient)),
            None,
            vec![],
        ),
        (
            "log by entity",
            reqwest::Method::GET,
            audit_path(patient).replace("patient.identifier", "entity.identifier"),
            None,
            vec![],
        ),
        (
            "form _search",
            reqwest::Method::POST,
            "DocumentReference/_search".into(),
            Some(format!("subject:identifier={}", token_parameter(NHS_NUMBER_SYSTEM, &forms[1])).into_bytes()),
            vec![("content-type", "application/x-www-form-urlencoded".into())],
        ),
        (
            "JSON _search",
            reqwest::Method::POST,
            "DocumentReference/_search".into(),
            Some(json!({"subject:identifier": format!("{NHS_NUMBER_SYSTEM}|{}", forms[2])}).to_string().into_bytes()),
            vec![],
        ),
        (
            "JSON _search naming the patient",
            reqwest::Method::POST,
            "DocumentReference/_search".into(),
            Some(json!({patient: patient}).to_string().into_bytes()),
            vec![],
        ),
        (
            "an element named by the patient",
            reqwest::Method::POST,
            "DocumentReference".into(),
            Some(json!({"resourceType": "DocumentReference", patient: patient}).to_string().into_bytes()),
            vec![],
        ),
        (
            "not JSON",
            reqwest::Method::POST,
            "DocumentReference".into(),
            Some(format!("{{\"subject\": {patient}").into_bytes()),
            vec![],
        ),
        ("too large", reqwest::Method::POST, "DocumentReference".into(), Some(huge.into_bytes()), vec![]),
        (
            "wrong content type",
            reqwest::Method::POST,
            "DocumentReference".into(),
            Some(patient.as_bytes().to_vec()),
            vec![("content-type", format!("text/{patient}"))],
        ),
        (
            "XML only",
            reqwest::Method::GET,
            search_path(patient),
            None,
            vec![("accept", format!("application/xml; p={patient}"))],
        ),
        (
            "create for another organisation",
            reqwest::Method::POST,
            "DocumentReference".into(),
            Some(document(patient, "QWO", OTHER, CRISIS_PLAN).to_string().into_bytes()),
            vec![],
        ),
        (
            "create with a client id",
            reqwest::Method::PUT,
            "DocumentReference".into(),
            Some(doc.to_string().into_bytes()),
            vec![],
        ),
        ("metadata", reqwest::Method::GET, "metadata".into(), None, vec![]),
        ("status", reqwest::Method::GET, "_status".into(), None, vec![]),
        ("delete", reqwest::Method::DELETE, at.clone(), None, vec![]),
    ];
    for (what, method, path, body, extra) in calls {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (*n, v.as_str())).collect();
        answers.push((what.to_string(), caller.send(method, &path, body, &extra).await));
    }
    for form in forms {
        let subject = token_parameter(NHS_NUMBER_SYSTEM, form);
        answers.push((
            format!("search by {form:?}"),
            caller.get(&format!("DocumentReference?subject:identifier={subject}")).await,
        ));
        answers.push((
            format!("count by {form:?}"),
            caller.get(&format!("DocumentReference/_count?subject:identifier={subject}")).await,
        ));
        answers
            .push((format!("log of {form:?}"), caller.get(&format!("AuditEvent?patient.identifier={subject}")).await));
        let encoded: String = form_urlencoded::byte_serialize(form.as_bytes()).collect();
        answers.push((format!("read {form:?}"), caller.get(&format!("DocumentReference/{encoded}")).await));
        let mut bad = doc.clone();
        bad["subject"]["identifier"]["value"] = json!(form);
        bad["extension"][0]["valueCode"] = json!(form);
        answers.push((format!("create for {form:?}"), caller.post("DocumentReference", &bad).await));
    }
    answers
}

async fn wait_for_fhir(base: &str) {
    let status = Fhir::anonymous(base);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = status.http.get(status.url("_status")).send().await;
        if answer.is_ok_and(|a| a.status() == 200) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "nrl serve's FHIR listener never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhs_numbers_reach_no_log_line_and_no_response_header_through_the_fhir_listener() {
    let ports = free_ports(2);
    let dir = TempDir::new("nrl-fhir-privacy");
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).expect("write the JWT secret");
    let log = dir.join("nrl.log");
    let mut child = Watched::spawn(
        nrl_command()
            .args(["serve", "--listen", &format!("127.0.0.1:{}", ports[0]), "--admin-listen", "off"])
            .args(["--fhir-listen", &format!("127.0.0.1:{}", ports[1])])
            .args([
                "--jwt-hs256-secret-file",
                &secret.to_string_lossy(),
                "--jwt-issuer",
                ISSUER,
                "--jwt-audience",
                AUDIENCE,
            ])
            .env("RUST_LOG", "debug")
            .env("NRL_LOG_FORMAT", "json"),
        &log,
    );
    let base = format!("http://127.0.0.1:{}/FHIR/R4", ports[1]);
    wait_for_fhir(&base).await;

    let patient = new_patient();
    let forms = disguises(&patient);
    let roles = ["producer", "consumer", "auditor"];
    let mut answers = Vec::new();
    let mut unsafe_ids = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        // The patient in the token's subject, the end user and both ids (each a different form).
        let correlation = &forms[(i + 1) % forms.len()];
        let end_user = &forms[(i + 2) % forms.len()];
        let caller = Fhir::bearer(&base, &mint(&claims(form, OWN, &roles)))
            .with("x-end-user", end_user)
            .with("x-request-id", form)
            .with("x-correlation-id", correlation);
        unsafe_ids.push((form.clone(), correlation.clone()));
        answers.extend(every_interaction(&caller, &patient, &forms).await);
    }
    // Header values refused before anything else reads them.
    let plain = Fhir::anonymous(&base).with("x-request-id", &patient);
    for (what, caller) in [
        ("the patient as the token", plain.clone().with("authorization", &format!("Bearer {patient}"))),
        (
            "the patient as the purpose",
            Fhir::bearer(&base, &mint(&claims("app", OWN, &roles))).with("x-purpose-of-use", &forms[1]),
        ),
        (
            "the patient in an oversized end user",
            Fhir::bearer(&base, &mint(&claims("app", OWN, &roles))).with("x-end-user", &forms[2].repeat(20)),
        ),
        ("no credentials", plain.clone()),
    ] {
        answers.push((what.to_string(), caller.get(&search_path(&patient)).await));
    }

    // Log-safe ids are echoed, on answers and on refusals alike.
    let safe = Fhir::bearer(&base, &mint(&claims("app", OWN, &roles)))
        .with("x-request-id", "req-7f3a.b")
        .with("x-correlation-id", "corr-42");
    for (what, answer) in [
        ("metadata", safe.get("metadata").await),
        ("unknown path", safe.get("Patient/x").await),
        ("search", safe.get(&search_path(&patient)).await),
    ] {
        assert_eq!(answer.header("x-request-id"), Some("req-7f3a.b"), "{what}: {:?}", answer.headers);
        assert_eq!(answer.header("x-correlation-id"), Some("corr-42"), "{what}: {:?}", answer.headers);
    }
    let only_correlation = Fhir::anonymous(&base).with("x-correlation-id", "corr-only-1").get("metadata").await;
    assert_eq!(
        only_correlation.header("x-request-id"),
        Some("corr-only-1"),
        "the correlation id stands in for a missing request id"
    );

    // An extension method is the caller's own text: the patient as the method must reach no log line.
    let method = reqwest::Method::from_bytes(patient.as_bytes()).expect("an extension method");
    let odd = reqwest::Client::new()
        .request(method, format!("{base}/metadata"))
        .send()
        .await
        .expect("the listener answers an extension method");
    assert!(odd.status().is_client_error(), "an extension method: {}", odd.status());

    child.signal("-TERM").expect("send SIGTERM");
    let status = child.wait_timeout(Duration::from_secs(30)).expect("nrl stops on SIGTERM");
    let bytes = std::fs::read(&log).expect("read the log");
    let logs = String::from_utf8_lossy(&bytes).into_owned();
    assert!(status.success(), "nrl serve exit: {status:?}\n{logs}");

    // No answer was a server failure, and no header carries the patient; unsafe ids were replaced.
    let squeezed_patient = patient.clone();
    let mut statuses = std::collections::BTreeSet::new();
    for (what, answer) in &answers {
        statuses.insert(answer.status);
        assert!(answer.status < 500, "{what}: {} {}", answer.status, answer.text);
        for (name, value) in &answer.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            let squeezed: String = value.chars().filter(char::is_ascii_alphanumeric).collect();
            assert!(
                !forms.iter().any(|f| value.contains(f.as_str())) && !squeezed.contains(&squeezed_patient),
                "{what}: the header {name} carries the patient: {value}"
            );
        }
        let id = answer.header("x-request-id").unwrap_or_else(|| panic!("{what}: no x-request-id"));
        assert!(is_log_safe(id), "{what}: an unsafe request id {id:?}");
        if let Some(correlation) = answer.header("x-correlation-id") {
            assert!(is_log_safe(correlation), "{what}: an unsafe correlation id echoed: {correlation:?}");
        }
    }
    for (request_id, _) in &unsafe_ids {
        assert!(answers.iter().all(|(_, a)| a.header("x-request-id") != Some(request_id.as_str())));
    }
    for status in [200, 201, 400, 401, 403, 404, 405, 406, 412, 413, 415] {
        assert!(statuses.contains(&status), "no {status} answer among {statuses:?}: the calls did not cover it");
    }

    // The log was really on, as JSON, at debug, with a line per FHIR request.
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON log line ({e}): {l}")))
        .collect();
    let access: Vec<&Value> =
        lines.iter().filter(|l| l["target"] == "nrl_registry::access" && l["span"]["name"] == "fhir").collect();
    assert!(
        access.len() >= answers.len(),
        "an access line per FHIR request: {} for {} requests",
        access.len(),
        answers.len()
    );
    assert!(logs.contains("\"path\":\"redacted\""), "paths holding the patient were redacted, not dropped");
    let hits: Vec<(Vec<String>, String)> = lines
        .iter()
        .map(|line| (digit_runs(&without_own_numbers(line.clone()).to_string()), line.to_string()))
        .filter(|(runs, _)| !runs.is_empty())
        .collect();
    assert!(hits.is_empty(), "{} log lines hold ten digits in a row, e.g. {:?}", hits.len(), hits.first());
    for form in formats(&patient).iter().chain(&forms) {
        assert!(!logs.contains(form.as_str()), "the patient, as {form:?}, is in the log");
    }
    let squeezed: String = logs.chars().filter(char::is_ascii_alphanumeric).collect();
    assert!(!squeezed.contains(&patient), "the patient is in the log, in some format");
}
