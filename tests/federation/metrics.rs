//! 7. The national node reports how it follows each region: connected, changes applied, lag,
//!    last applied time, in its `/metrics`.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `series{labels} value` lines of a scrape of the admin listener at `port`.
async fn scrape(port: u16) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tokio::time::timeout(CALL_LIMIT, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "scrape timed out")?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&raw).to_string())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_national_node_reports_each_regions_follow_state_and_lag() {
    let admin = testkit::ports::free_port();
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.national_args = vec!["--admin-listen".into(), format!("127.0.0.1:{admin}")];
    let federation = Federation::start(plan).await;
    let mut a = Api::open(federation.node(A));
    let national = Api::open(&federation.national);
    let patient = new_patient();
    create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut a, &patient, A, NEWS2).await;
    wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1), (NEWS2, 1)])]), "region A's writes").await;

    let (text, _) = eventually("the national node's follow metrics", VISIBLE_WITHIN, || async {
        let text = scrape(admin).await?;
        let region = |name: &str, code: &str| format!("{name}{{region=\"{code}\"}}");
        for code in [A, B] {
            if value(&text, &region("nrl_federation_connected", code)) != Some(1.0) {
                return Err(format!("{code} not connected:\n{text}"));
            }
        }
        match value(&text, &region("nrl_federation_changes_applied_total", A)) {
            Some(n) if n >= 2.0 => Ok(text),
            other => Err(format!("A's applied changes: {other:?}")),
        }
    })
    .await;
    let lag = value(&text, &format!("nrl_federation_lag_seconds{{region=\"{A}\"}}")).expect("A's lag is reported");
    assert!((0.0..VISIBLE_WITHIN.as_secs_f64()).contains(&lag), "lag {lag} s");
    let last = value(&text, &format!("nrl_federation_last_applied_timestamp_seconds{{region=\"{A}\"}}"))
        .expect("A's last applied time is reported");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 60.0..=now + 1.0).contains(&last), "last applied {last}, now {now}");
    assert_eq!(
        value(&text, &format!("nrl_federation_resyncs_total{{region=\"{A}\"}}")),
        Some(1.0),
        "a new national node resynchronises each region once"
    );
    // Region B wrote nothing: connected, nothing applied, no lag.
    assert_eq!(value(&text, &format!("nrl_federation_lag_seconds{{region=\"{B}\"}}")), None);
    // NHS numbers never appear in metrics.
    assert!(!text.contains(&patient), "the patient's NHS number is in /metrics");
}
