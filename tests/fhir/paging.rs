//! Paging while others write: a client walking a patient's pointers by the Bundle's `next` links,
//! exactly as given, sees every pointer that existed throughout the walk once, whatever is created
//! and deleted between its pages.

use crate::client::*;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::fixtures::new_patient;
use testkit::TestServer;
use tokio::sync::watch;

const ORIGINALS: usize = 25;
/// Of the original pointers, how many the writer may delete during the walks.
const DELETABLE: usize = 6;
const PAGE: usize = 7;
const WALKS: usize = 3;

/// Creates and deletes the patient's pointers until told to stop: each round creates one, then
/// deletes either one it created or one of the deletable originals. Counts its rounds on `done`.
async fn write_until(
    fhir: Fhir,
    patient: String,
    mut deletable: VecDeque<String>,
    stop: Arc<AtomicBool>,
    done: watch::Sender<u64>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut created = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut own: VecDeque<String> = VecDeque::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = fhir.created(&document(&patient)).await;
        created.insert(id.clone());
        own.push_back(id);
        let victim = if round.is_multiple_of(2) { deletable.pop_front() } else { None }.or_else(|| own.pop_front());
        if let Some(victim) = victim {
            fhir.delete(&victim, None).await.assert_success(200, "RESOURCE_DELETED");
            deleted.insert(victim);
        }
        round += 1;
        done.send_replace(round);
    }
    (created, deleted)
}

pub async fn paging_while_writing_has_no_duplicates_or_gaps(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let mut originals = Vec::new();
    for _ in 0..ORIGINALS {
        originals.push(fhir.created(&document(&patient)).await);
    }
    let (deletable, steady) = originals.split_at(DELETABLE);
    let steady: BTreeSet<String> = steady.iter().cloned().collect();
    let originals: BTreeSet<String> = originals.iter().cloned().collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (done, mut rounds) = watch::channel(0u64);
    let writer = tokio::spawn(write_until(
        Fhir::at(server, "/producer/FHIR/R4"),
        patient.clone(),
        deletable.iter().cloned().collect(),
        stop.clone(),
        done,
    ));

    let first = format!("{}/DocumentReference?{}&_count={PAGE}", fhir.base, patient_query(&patient));
    let mut seen_anywhere = BTreeSet::new();
    for walk in 0..WALKS {
        let mut url = first.clone();
        let mut seen: Vec<String> = Vec::new();
        for page in 0.. {
            assert!(page < 3 * ORIGINALS, "walk {walk} does not end: {url}");
            let reply = fhir.get(&url).await.expect(200);
            assert!(reply.body["total"].as_u64().is_some(), "every page has its total: {}", reply.body);
            assert_eq!(reply.body["type"], "searchset");
            let ids = reply.entry_ids();
            assert!(ids.len() <= PAGE, "page {page} of walk {walk} has {} entries", ids.len());
            for entry in entries(&reply.body) {
                assert_eq!(entry["resource"]["status"], "current", "{entry}");
            }
            seen.extend(ids);
            let Some(next) = reply.link("next") else { break };
            assert!(next.starts_with(&format!("{}/DocumentReference?", fhir.base)), "{next}");
            url = next;
            // Let the writer change the patient's pointers between every two pages.
            let before = *rounds.borrow_and_update();
            tokio::time::timeout(Duration::from_secs(10), rounds.wait_for(|r| *r > before))
                .await
                .expect("the writer keeps writing")
                .expect("the writer is running");
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "walk {walk} saw a pointer twice: {seen:?}");
        let missing: Vec<&String> = steady.difference(&unique).collect();
        assert!(missing.is_empty(), "walk {walk} skipped pointers that existed throughout: {missing:?}");
        seen_anywhere.extend(unique);
    }
    stop.store(true, Ordering::Relaxed);
    let (created, deleted) = writer.await.expect("the writer finishes");
    assert!(created.len() >= WALKS * (ORIGINALS / PAGE), "the writer wrote between pages: {}", created.len());
    assert!(deleted.iter().any(|id| originals.contains(id)), "the writer deleted originals during the walks");

    // Everything a walk showed was a real pointer of the patient's.
    let strangers: Vec<&String> =
        seen_anywhere.iter().filter(|id| !originals.contains(*id) && !created.contains(*id)).collect();
    assert!(strangers.is_empty(), "walks showed pointers nobody created: {strangers:?}");
    // And a last walk, with nobody writing, shows exactly what is left, its total agreeing.
    let left: BTreeSet<String> = originals.union(&created).filter(|id| !deleted.contains(*id)).cloned().collect();
    let mut url = first;
    let mut seen = BTreeSet::new();
    loop {
        let reply = fhir.get(&url).await.expect(200);
        assert_eq!(reply.body["total"], left.len(), "{}", reply.body);
        seen.extend(reply.entry_ids());
        match reply.link("next") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(seen, left);
}
