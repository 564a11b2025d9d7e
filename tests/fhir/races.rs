//! Racing clients: eight producers superseding one pointer at once, and concurrent updates under
//! one `If-Match`. Each client starts at a barrier so the requests overlap on the server.

use crate::client::*;
use futures::future::join_all;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use testkit::fixtures::new_patient;
use testkit::TestServer;
use tokio::sync::Barrier;

const CLIENTS: usize = 8;

/// Sends `requests` at once, one client task each, and returns the replies in order.
async fn at_once<F, Fut>(requests: Vec<F>) -> Vec<Reply>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks = requests.into_iter().map(|request| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            request().await
        })
    });
    join_all(tasks).await.into_iter().map(|r| r.expect("a client task")).collect()
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

pub async fn eight_racing_supersedes_let_exactly_one_win(server: &TestServer) {
    let fhir = Fhir::at(server, "/producer/FHIR/R4");
    let patient = new_patient();
    let old = fhir.created(&document(&patient)).await;
    let replacements: Vec<Value> = (0..CLIENTS)
        .map(|i| {
            let mut replacement = document(&patient);
            replacement["masterIdentifier"] =
                json!({"value": format!("RR8-replacement-{i}-{}", rand::random::<u32>())});
            replacement["relatesTo"] =
                json!([{"code": "replaces", "target": {"type": "DocumentReference", "identifier": {"value": old}}}]);
            replacement
        })
        .collect();
    let requests = replacements
        .iter()
        .cloned()
        .map(|replacement| {
            let fhir = fhir.clone();
            move || async move { fhir.create(&replacement).await }
        })
        .collect();
    let replies = at_once(requests).await;

    let winners: Vec<(usize, &Reply)> = replies.iter().enumerate().filter(|(_, r)| r.status == 201).collect();
    assert_eq!(winners.len(), 1, "exactly one supersede wins: {:?}", statuses(&replies));
    let (winner_index, winner) = winners[0];
    winner.assert_success(201, "RESOURCE_SUPERSEDED");
    let winner_id = winner.location_id();
    for loser in replies.iter().filter(|r| r.status != 201) {
        // The old pointer is already superseded (422, naming relatesTo), or the write lost the race
        // outright (409): either way a clear OperationOutcome.
        match loser.status {
            422 => {
                loser.assert_error(422, "UNPROCESSABLE_ENTITY", Some("DocumentReference.relatesTo[0].target"));
                assert!(loser.diagnostics().contains(&old), "the outcome names the pointer: {}", loser.body);
            }
            409 => loser.assert_error(409, "CONFLICT", None),
            other => panic!("a losing supersede answered {other}: {}", loser.body),
        }
    }

    // Exactly one current pointer: the winner, replacing the old one.
    let found = fhir.search(&patient_query(&patient)).await.expect(200);
    assert_eq!(found.body["total"], 1, "{}", found.body);
    assert_eq!(found.entry_ids(), [winner_id.as_str()]);
    let new = fhir.read(&winner_id).await.expect(200).body;
    assert_eq!(new["status"], "current");
    assert_eq!(new["relatesTo"][0]["code"], "replaces");
    assert_eq!(new["relatesTo"][0]["target"]["identifier"]["value"], old.as_str());
    assert_eq!(new["relatesTo"][0]["target"]["reference"], format!("DocumentReference/{old}"));
    assert_eq!(url_of(&new), url_of(&replacements[winner_index]), "the winner's own content");
    let retired = fhir.read(&old).await.expect(200);
    assert_eq!(retired.body["status"], "superseded");
    assert_eq!(retired.etag(), "W/\"2\"");
    let by = format!("DocumentReference/{winner_id}");
    assert_eq!(extension_value(&retired.body, SUPERSEDED_BY_EXTENSION), Some(by.as_str()), "{}", retired.body);
    // The losers registered nothing: their masterIdentifiers are still free.
    for (i, replacement) in replacements.iter().enumerate().filter(|(i, _)| *i != winner_index) {
        let mut fresh = replacement.clone();
        fresh.as_object_mut().expect("object").remove("relatesTo");
        assert_eq!(fhir.create(&fresh).await.status, 201, "loser {i} left no pointer behind");
    }
}

/// Each of `CLIENTS` versions of the pointer, with its own url.
fn versions(base: &Value) -> Vec<Value> {
    (0..CLIENTS)
        .map(|_| {
            let mut version = base.clone();
            version["content"][0]["attachment"]["url"] = json!(new_url());
            version
        })
        .collect()
}

pub async fn racing_updates_with_one_if_match_let_exactly_one_win(server: &TestServer) {
    let fhir = Fhir::new(server);
    let sent = document(&new_patient());
    let id = fhir.created(&sent).await;
    let versions = versions(&sent);
    let requests = versions
        .iter()
        .cloned()
        .map(|version| {
            let (fhir, id) = (fhir.clone(), id.clone());
            move || async move { fhir.update(&id, &version, Some("W/\"1\"")).await }
        })
        .collect();
    let replies = at_once(requests).await;
    let winners: Vec<usize> = (0..CLIENTS).filter(|i| replies[*i].status == 200).collect();
    assert_eq!(winners.len(), 1, "exactly one update at version 1 wins: {:?}", statuses(&replies));
    let winner = winners[0];
    replies[winner].assert_success(200, "RESOURCE_UPDATED");
    assert_eq!(replies[winner].etag(), "W/\"2\"");
    for (i, reply) in replies.iter().enumerate().filter(|(i, _)| *i != winner) {
        reply.assert_error(412, "PRECONDITION_FAILED", None);
        assert!(reply.header("etag").is_none(), "client {i}: a refused update carries no ETag");
    }
    let read = fhir.read(&id).await.expect(200);
    assert_eq!(read.etag(), "W/\"2\"");
    assert_eq!(url_of(&read.body), url_of(&versions[winner]), "the winner's version is kept");

    // Deletes race the same way: one wins, the rest find it stale or gone.
    let requests = (0..CLIENTS)
        .map(|_| {
            let (fhir, id) = (fhir.clone(), id.clone());
            move || async move { fhir.delete(&id, Some("W/\"2\"")).await }
        })
        .collect();
    let replies = at_once(requests).await;
    assert_eq!(replies.iter().filter(|r| r.status == 200).count(), 1, "{:?}", statuses(&replies));
    for reply in replies.iter().filter(|r| r.status != 200) {
        match reply.status {
            412 => reply.assert_error(412, "PRECONDITION_FAILED", None),
            404 => reply.assert_error(404, "NO_RECORD_FOUND", None),
            other => panic!("a losing delete answered {other}: {}", reply.body),
        }
    }
    fhir.read(&id).await.assert_error(404, "NO_RECORD_FOUND", None);
}

pub async fn racing_updates_without_if_match_each_apply_or_conflict(server: &TestServer) {
    let fhir = Fhir::new(server);
    let sent = document(&new_patient());
    let id = fhir.created(&sent).await;
    let versions = versions(&sent);
    let requests = versions
        .iter()
        .cloned()
        .map(|version| {
            let (fhir, id) = (fhir.clone(), id.clone());
            move || async move { fhir.update(&id, &version, None).await }
        })
        .collect();
    let replies = at_once(requests).await;
    // Each update applies to the version current when it lands, or loses a race outright (409,
    // never 412: it named no version).
    let mut applied = BTreeSet::new();
    for reply in &replies {
        match reply.status {
            200 => assert!(
                applied.insert(reply.etag().to_string()),
                "two updates made one version: {:?}",
                statuses(&replies)
            ),
            409 => reply.assert_error(409, "CONFLICT", None),
            other => panic!("an update without If-Match answered {other}: {}", reply.body),
        }
    }
    assert!(!applied.is_empty(), "{:?}", statuses(&replies));
    let expected: BTreeSet<String> = (2..2 + applied.len()).map(|v| format!("W/\"{v}\"")).collect();
    assert_eq!(applied, expected, "the applied updates made consecutive versions");
    let read = fhir.read(&id).await.expect(200);
    assert_eq!(read.etag(), format!("W/\"{}\"", 1 + applied.len()));
    let last = replies.iter().position(|r| r.header("etag") == Some(read.etag())).expect("the last update");
    assert_eq!(url_of(&read.body), url_of(&versions[last]), "the last applied update is what is kept");
}
