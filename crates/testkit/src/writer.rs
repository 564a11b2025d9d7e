//! The writer of the fault tests: writes in the background while something breaks, records every
//! outcome in a [`Journal`], and afterwards checks what the store kept.
//!
//! [`Writer`] runs one [`Workload`] until stopped. [`CreateAndSupersede`] (`tests/durability.rs`,
//! `tests/cluster_topology.rs`) creates and supersedes for a set of patients, journaling every
//! write so [`verify`] can check that every acknowledged write is present and nothing is
//! half-written; `tests/federation` brings its own workload (random creates, supersedes and deletes
//! in one region) and checks the national index instead.

use crate::eventually;
use crate::fixtures::{input, query, CRISIS_PLAN};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

pub const REGION: &str = "QWO";
pub const CUSTODIAN: &str = "RR8";
/// A call that has not answered after this long is counted as a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);

/// Runs one call, with how long it took; a call with no answer within HANG_LIMIT is a hang.
pub async fn timed<T>(call: impl Future<Output = Result<Response<T>, Status>>) -> (Result<T, Status>, Duration) {
    let started = Instant::now();
    let result = match tokio::time::timeout(HANG_LIMIT, call).await {
        Ok(result) => result.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("client side: no answer within {HANG_LIMIT:?}"))),
    };
    (result, started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// The writer: creates and supersedes for a set of patients, recording every outcome
// ---------------------------------------------------------------------------------------------

/// What the writer asked for under one producer_reference.
#[derive(Clone, Debug)]
pub struct Sent {
    pub input: pb::PointerInput,
    pub supersedes: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum Ack {
    Created(pb::Pointer),
    Superseded {
        new: pb::Pointer,
        old: Vec<pb::Pointer>,
    },
    /// The pointer as it was when deleted.
    Deleted(pb::Pointer),
}

impl Ack {
    /// The operation, as named in [`Failure::op`] and [`Journal::ops`].
    pub fn op(&self) -> &'static str {
        match self {
            Ack::Created(_) => "create",
            Ack::Superseded { .. } => "supersede",
            Ack::Deleted(_) => "delete",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub op: &'static str,
    pub reference: String,
    pub code: Code,
    pub message: String,
    pub started: Instant,
    pub elapsed: Duration,
}

impl Failure {
    /// `op reference: code message`, for failure messages.
    pub fn describe(&self) -> String {
        let reference = if self.reference.is_empty() { String::new() } else { format!(" {}", self.reference) };
        format!("{}{reference}: {:?} {}", self.op, self.code, self.message)
    }
}

#[derive(Default)]
pub struct Journal {
    /// Every write sent, acknowledged or not, by producer_reference (each is unique).
    pub sent: BTreeMap<String, Sent>,
    pub acked: Vec<Ack>,
    pub failures: Vec<Failure>,
    /// First sends answered `created = false` (a retry inside the stack replayed the write).
    pub replayed: Vec<String>,
}

impl Journal {
    /// Acknowledged writes counted by operation, for the test log.
    pub fn ops(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for ack in &self.acked {
            *counts.entry(ack.op()).or_default() += 1;
        }
        counts
    }

    /// Records a call that failed (or did not answer) after `elapsed`.
    pub fn fail(&mut self, op: &'static str, reference: String, status: &Status, started: Instant, elapsed: Duration) {
        let (code, message) = (status.code(), status.message().to_string());
        self.failures.push(Failure { op, reference, code, message, started, elapsed });
    }

    /// Failures counted by operation and code, for the test log.
    pub fn failure_summary(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for failure in &self.failures {
            *counts.entry(format!("{} {:?}", failure.op, failure.code)).or_default() += 1;
        }
        counts
    }

    pub fn last_failures(&self) -> Vec<String> {
        self.failures.iter().rev().take(3).map(Failure::describe).collect()
    }

    /// Adds another writer's journal to this one, so that one [`verify`] covers several writers
    /// (their producer_references are tagged, so none is shared).
    pub fn absorb(&mut self, other: Journal) {
        for (reference, sent) in other.sent {
            let previous = self.sent.insert(reference.clone(), sent);
            assert!(previous.is_none(), "two writers sent producer_reference {reference}: give them distinct tags");
        }
        self.acked.extend(other.acked);
        self.failures.extend(other.failures);
        self.replayed.extend(other.replayed);
    }

    /// What the writer heard of the call it sent under `reference`, in short, to count by:
    /// `acknowledged`, `failed: CODE`, `sent, no outcome recorded` or `never sent`.
    pub fn heard(&self, reference: &str) -> String {
        if let Some(failure) = self.failures.iter().find(|f| f.reference == reference) {
            return format!("failed: {:?}", failure.code);
        }
        let acked = self.acked.iter().any(|ack| match ack {
            Ack::Created(p) | Ack::Deleted(p) | Ack::Superseded { new: p, .. } => p.producer_reference == reference,
        });
        match (acked, self.sent.contains_key(reference)) {
            (true, _) => "acknowledged".into(),
            (false, true) => "sent, no outcome recorded".into(),
            (false, false) => "never sent".into(),
        }
    }

    /// [`heard`](Self::heard), with how long a failed call took and its message.
    pub fn outcome_of(&self, reference: &str) -> String {
        match self.failures.iter().find(|f| f.reference == reference) {
            Some(failure) => format!("failed after {:?}: {:?} {}", failure.elapsed, failure.code, failure.message),
            None => self.heard(reference),
        }
    }
}

/// Sends one create (or, with `old`, a supersede of it) with a fresh `reference`, recording what
/// was sent and what came back. Returns the new pointer when the write was acknowledged.
pub async fn send(
    client: &mut PointerRegistryClient<Channel>,
    journal: &Mutex<Journal>,
    patient: &str,
    reference: String,
    old: Option<&pb::Pointer>,
) -> Option<pb::Pointer> {
    let mut sent = input(patient, REGION, CUSTODIAN, CRISIS_PLAN);
    sent.producer_reference = reference.clone();
    let supersedes: Vec<String> = old.iter().map(|p| p.id.clone()).collect();
    journal
        .lock()
        .expect("journal lock")
        .sent
        .insert(reference.clone(), Sent { input: sent.clone(), supersedes: supersedes.clone() });

    let started = Instant::now();
    let (op, outcome, elapsed) = if old.is_none() {
        let request = pb::CreatePointerRequest { pointer: Some(sent) };
        let (result, elapsed) = timed(client.create_pointer(request)).await;
        ("create", result.map(|r| (r.pointer, Vec::new(), r.created)), elapsed)
    } else {
        let request = pb::SupersedePointerRequest { pointer: Some(sent), supersedes };
        let (result, elapsed) = timed(client.supersede_pointer(request)).await;
        ("supersede", result.map(|r| (r.pointer, r.superseded, r.created)), elapsed)
    };
    let mut journal = journal.lock().expect("journal lock");
    match outcome {
        Ok((Some(pointer), superseded, created)) => {
            if !created {
                journal.replayed.push(reference);
            }
            journal.acked.push(match old {
                Some(_) => Ack::Superseded { new: pointer.clone(), old: superseded },
                None => Ack::Created(pointer.clone()),
            });
            Some(pointer)
        }
        outcome => {
            let (code, message) = match outcome {
                Err(status) => (status.code(), status.message().to_string()),
                Ok(_) => (Code::Internal, "test: an OK answer without a pointer".to_string()),
            };
            journal.failures.push(Failure { op, reference, code, message, started, elapsed });
            None
        }
    }
}

/// One kind of write that a [`Writer`] repeats until it is stopped.
pub trait Workload: Send + 'static {
    /// Sends write number `n` (0, 1, 2, ...), recording in `journal` what was sent and what came
    /// back. Returns whether it was acknowledged: after a failure the writer pauses, so that it
    /// does not spin while the store or the node is down.
    fn write(&mut self, n: usize, journal: &Mutex<Journal>) -> impl Future<Output = bool> + Send;
}

/// How long the writer pauses after a failed write.
const BACKOFF: Duration = Duration::from_millis(50);

pub struct Writer {
    pub journal: Arc<Mutex<Journal>>,
    pub stop: Arc<AtomicBool>,
    pub task: JoinHandle<()>,
}

impl Writer {
    /// Loops over `patients` until stopped: a CreatePointer each time, and every fourth time a
    /// SupersedePointer of one of the patient's current pointers that this writer created
    /// ([`CreateAndSupersede`]).
    pub fn spawn(channel: Channel, patients: Vec<String>, tag: &str) -> Writer {
        Writer::start(CreateAndSupersede::new(channel, patients, tag))
    }

    /// Runs `workload` on a task of its own until [`stop`](Self::stop).
    pub fn start(mut workload: impl Workload) -> Writer {
        let journal = Arc::new(Mutex::new(Journal::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (journal, stop) = (journal.clone(), stop.clone());
            async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if !workload.write(n, &journal).await {
                        tokio::time::sleep(BACKOFF).await;
                    }
                    n += 1;
                }
            }
        });
        Writer { journal, stop, task }
    }

    /// A look at the journal; the lock never outlives `look`, so no caller can deadlock on it.
    pub fn read<T>(&self, look: impl FnOnce(&Journal) -> T) -> T {
        look(&self.journal.lock().expect("journal lock"))
    }

    pub fn acked(&self) -> usize {
        self.read(|journal| journal.acked.len())
    }

    /// The failures of calls that ended at or after `since`, described for failure messages.
    pub fn failures_since(&self, since: Instant) -> Vec<String> {
        self.read(|journal| {
            journal.failures.iter().filter(|f| f.started + f.elapsed >= since).map(Failure::describe).collect()
        })
    }

    pub async fn wait_acked(&self, at_least: usize, within: Duration, what: &str) {
        eventually(what, within, || async {
            self.read(|journal| match journal.acked.len() {
                n if n >= at_least => Ok(()),
                n => {
                    Err(format!("{n} of {at_least} writes acknowledged; last failures: {:?}", journal.last_failures()))
                }
            })
        })
        .await;
    }

    /// Stops after the write in flight, which a workload bounds (each of its calls within
    /// [`HANG_LIMIT`], and at most two calls per write).
    pub async fn stop(self) -> Journal {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(HANG_LIMIT * 3, self.task)
            .await
            .expect("the writer stops within its call bound")
            .expect("the writer task panicked");
        Arc::try_unwrap(self.journal).ok().expect("writer gone").into_inner().expect("journal lock")
    }
}

/// Several [`Writer`]s running [`CreateAndSupersede`] at once over the same patients, each with its
/// own tag (`TAG0`, `TAG1`, ...), so that a fault meets concurrent creates and supersedes on the
/// same patients' keys. Seen from outside as one writer with one journal.
pub struct Writers {
    writers: Vec<Writer>,
}

impl Writers {
    /// `count` writers over `patients`, each starting at a different patient.
    pub fn spawn(channel: Channel, patients: &[String], count: usize, tag: &str) -> Writers {
        let writers = (0..count)
            .map(|w| {
                let mut mine = patients.to_vec();
                mine.rotate_left(w % patients.len().max(1));
                Writer::spawn(channel.clone(), mine, &format!("{tag}{w}"))
            })
            .collect();
        Writers { writers }
    }

    /// Acknowledged writes, all writers together.
    pub fn acked(&self) -> usize {
        self.writers.iter().map(Writer::acked).sum()
    }

    /// Like [`Writer::failures_since`], all writers together.
    pub fn failures_since(&self, since: Instant) -> Vec<String> {
        self.writers.iter().flat_map(|w| w.failures_since(since)).collect()
    }

    /// Waits until all writers together have `at_least` acknowledged writes.
    pub async fn wait_acked(&self, at_least: usize, within: Duration, what: &str) {
        eventually(what, within, || async {
            match self.acked() {
                n if n >= at_least => Ok(()),
                n => {
                    let last: Vec<String> =
                        self.writers.iter().flat_map(|w| w.read(Journal::last_failures)).take(3).collect();
                    Err(format!("{n} of {at_least} writes acknowledged; last failures: {last:?}"))
                }
            }
        })
        .await;
    }

    /// Stops every writer (all at once, each after its write in flight) and merges their journals.
    pub async fn stop(self) -> Journal {
        for writer in &self.writers {
            writer.stop.store(true, Ordering::Relaxed);
        }
        let mut journal = Journal::default();
        for writer in self.writers {
            journal.absorb(writer.stop().await);
        }
        journal
    }
}

/// Creates for each patient in turn, and every fourth write supersedes one of the patient's
/// current pointers that this workload created; every write carries a fresh producer_reference
/// (`TAG-C-N` or `TAG-S-N`), so [`verify`] can match what is stored against what was sent.
pub struct CreateAndSupersede {
    client: PointerRegistryClient<Channel>,
    patients: Vec<String>,
    tag: String,
    /// Per patient: current pointers this writer created and knows the state of.
    current: Vec<Vec<pb::Pointer>>,
}

impl CreateAndSupersede {
    pub fn new(channel: Channel, patients: Vec<String>, tag: &str) -> Self {
        let current = vec![Vec::new(); patients.len()];
        Self { client: PointerRegistryClient::new(channel), patients, tag: tag.to_string(), current }
    }
}

impl Workload for CreateAndSupersede {
    async fn write(&mut self, n: usize, journal: &Mutex<Journal>) -> bool {
        let i = n % self.patients.len();
        // An old pointer leaves the pool whatever happens: after an unacknowledged supersede its
        // state is unknown, so it is never offered again.
        let old = if n % 4 == 3 { self.current[i].pop() } else { None };
        let reference = format!("{}-{}-{n}", self.tag, if old.is_some() { "S" } else { "C" });
        match send(&mut self.client, journal, &self.patients[i], reference, old.as_ref()).await {
            Some(pointer) => {
                self.current[i].push(pointer);
                true
            }
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// A pointer without the fields a later supersede may change.
pub fn identity(pointer: &pb::Pointer) -> pb::Pointer {
    pb::Pointer { status: 0, superseded_by: String::new(), version: 0, updated_at: None, ..pointer.clone() }
}

pub fn is_current(pointer: &pb::Pointer) -> bool {
    pointer.status == pb::PointerStatus::Current as i32
}

pub fn is_superseded(pointer: &pb::Pointer) -> bool {
    pointer.status == pb::PointerStatus::Superseded as i32
}

/// Every pointer of the patient, current and superseded, walking every page.
pub async fn all_pointers(client: &mut PointerRegistryClient<Channel>, patient: &str) -> Vec<pb::Pointer> {
    let mut pointers = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(patient) }),
            page_size: 500,
            page_token,
        };
        // Verification reads the final state: a read the store answered late (a busy machine, a
        // Redis just restarted) is asked again, a few times, rather than failing the check.
        let mut attempt = 0;
        let page = loop {
            match timed(client.search_pointers(request.clone())).await.0 {
                Err(status) if status.code() == tonic::Code::Unavailable && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                answer => break answer.expect("search while verifying"),
            }
        };
        pointers.extend(page.pointers);
        if page.next_page_token.is_empty() {
            return pointers;
        }
        page_token = page.next_page_token;
    }
}

/// What verification found, for the test's own assertions and its log.
pub struct Verified {
    pub stored: usize,
    pub acked_writes: usize,
    /// Stored although their call failed (allowed: the write landed, only the answer was lost).
    pub unacked_stored: usize,
    pub unacked_missing: usize,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pointers stored, all consistent; {} acknowledged writes, all intact; of the unacknowledged \
             writes {} landed and {} did not",
            self.stored, self.acked_writes, self.unacked_stored, self.unacked_missing
        )
    }
}

/// Checks every guarantee against what the writer saw:
/// - every acknowledged create and supersede is stored and equal to what was acknowledged, except
///   for the fields a later supersede changes (status, superseded_by, version, updated_at);
/// - every acknowledged supersede retired its old pointer, pointing at the new one;
/// - nothing is half-written: superseded_by and supersedes link both ways, a SUPERSEDED pointer
///   names its successor and a CURRENT one does not;
/// - every stored pointer is one the writer sent, with the content sent;
/// - the reference index agrees with the pointers: sending each stored pointer's input again
///   returns `created = false` and the stored id.
pub async fn verify(client: &mut PointerRegistryClient<Channel>, patients: &[String], journal: &Journal) -> Verified {
    let mut stored: HashMap<String, pb::Pointer> = HashMap::new();
    for patient in patients {
        let pointers = all_pointers(client, patient).await;
        let count = timed(client.count_pointers(pb::CountPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(patient) }),
        }))
        .await
        .0
        .expect("count while verifying")
        .count;
        assert_eq!(count as usize, pointers.len(), "CountPointers and SearchPointers disagree for a patient");
        for pointer in pointers {
            assert_eq!(&pointer.nhs_number, patient, "search returned another patient's pointer");
            assert!(stored.insert(pointer.id.clone(), pointer).is_none(), "search returned a pointer twice");
        }
    }

    for pointer in stored.values() {
        let id = &pointer.id;
        // Nothing stored that nobody sent, and it holds what was sent.
        let sent = journal
            .sent
            .get(&pointer.producer_reference)
            .unwrap_or_else(|| panic!("stored pointer {id} has a producer_reference nobody sent: {pointer:?}"));
        assert_eq!(
            (&pointer.region, &pointer.custodian, pointer.r#type.as_ref().map(|c| &c.code), &pointer.content),
            (&sent.input.region, &sent.input.custodian, Some(&sent.input.r#type), &sent.input.content),
            "stored pointer {id} differs from what was sent"
        );
        assert_eq!(pointer.supersedes, sent.supersedes, "stored pointer {id} supersedes something else than sent");
        // Both directions of every supersession are there.
        if is_superseded(pointer) {
            let next = stored.get(&pointer.superseded_by).unwrap_or_else(|| {
                panic!("half-written: {id} is superseded by {:?}, which is not stored", pointer.superseded_by)
            });
            assert!(
                next.supersedes.contains(id),
                "half-written: {id} says {} replaced it; it does not say so",
                next.id
            );
            assert_eq!(pointer.version, 2, "a pointer superseded once is at version 2: {pointer:?}");
        } else {
            assert!(is_current(pointer), "status of {id} is neither CURRENT nor SUPERSEDED: {pointer:?}");
            assert!(pointer.superseded_by.is_empty(), "CURRENT pointer {id} names a successor: {pointer:?}");
            assert_eq!(pointer.version, 1, "nothing updates a current pointer here: {pointer:?}");
        }
        for old in &pointer.supersedes {
            let old = stored.get(old).unwrap_or_else(|| panic!("{id} supersedes {old}, which is not stored"));
            assert!(
                is_superseded(old) && old.superseded_by == *id,
                "half-written: {id} supersedes {}, which is not SUPERSEDED by it: {old:?}",
                old.id
            );
        }
    }

    let mut acked_refs = std::collections::HashSet::new();
    let mut check_acked = |ack: &pb::Pointer, what: &str| {
        let stored = stored
            .get(&ack.id)
            .unwrap_or_else(|| panic!("LOST: acknowledged {what} {} is not stored (acknowledged {ack:?})", ack.id));
        assert_eq!(identity(stored), identity(ack), "acknowledged {what} {} changed", ack.id);
        assert!(
            stored == ack || (is_current(ack) && is_superseded(stored)),
            "acknowledged {what} {} is not as acknowledged nor merely superseded since:\nstored {stored:?}\nacked  {ack:?}",
            ack.id
        );
        acked_refs.insert(ack.producer_reference.clone());
    };
    for ack in &journal.acked {
        match ack {
            Ack::Created(pointer) => check_acked(pointer, "create"),
            Ack::Superseded { new, old } => {
                check_acked(new, "supersede");
                assert!(!old.is_empty(), "an acknowledged supersede returned no retired pointer: {new:?}");
                for old in old {
                    assert!(is_superseded(old) && old.superseded_by == new.id, "acknowledged as retired: {old:?}");
                    check_acked(old, "retirement");
                }
            }
            Ack::Deleted(pointer) => {
                assert!(!stored.contains_key(&pointer.id), "acknowledged delete of {} is still stored", pointer.id);
            }
        }
    }

    // GetPointer agrees with the search, and the reference index agrees with the pointers.
    for pointer in stored.values() {
        let (got, _) = timed(client.get_pointer(pb::GetPointerRequest { id: pointer.id.clone() })).await;
        let got = got.unwrap_or_else(|e| panic!("GetPointer {}: {e:?}", pointer.id)).pointer;
        assert_eq!(got.as_ref(), Some(pointer), "GetPointer and SearchPointers disagree");
        let sent = journal.sent[&pointer.producer_reference].input.clone();
        let (again, _) = timed(client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) })).await;
        let again = again.unwrap_or_else(|e| panic!("re-sending {}: {e:?}", pointer.producer_reference));
        assert!(
            !again.created && again.pointer.as_ref().map(|p| &p.id) == Some(&pointer.id),
            "the reference index and the pointers disagree: re-sending {:?} gave created={} id={:?}, stored id {}",
            pointer.producer_reference,
            again.created,
            again.pointer.map(|p| p.id),
            pointer.id
        );
    }

    let unacked: Vec<&String> = journal.sent.keys().filter(|r| !acked_refs.contains(*r)).collect();
    let stored_refs: std::collections::HashSet<&String> = stored.values().map(|p| &p.producer_reference).collect();
    let unacked_stored = unacked.iter().filter(|r| stored_refs.contains(**r)).count();
    Verified {
        stored: stored.len(),
        acked_writes: journal.acked.len(),
        unacked_stored,
        unacked_missing: unacked.len() - unacked_stored,
    }
}

pub fn assert_no_patient_data(failures: &[Failure], patients: &[String]) {
    for failure in failures {
        for patient in patients {
            assert!(!failure.message.contains(patient.as_str()), "an error message holds an NHS number: {failure:?}");
        }
    }
}
