//! 5. The change feed: exactly-once resume, retention, the peer role

use super::*;

/// One change as a follower sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    cursor: String,
    kind: pb::ChangeKind,
    id: String,
    version: u64,
    type_code: String,
}

fn seen(change: pb::PointerChange) -> Seen {
    let pointer = change.pointer.unwrap_or_default();
    Seen {
        kind: pb::ChangeKind::try_from(change.kind).unwrap_or(pb::ChangeKind::Unspecified),
        cursor: change.cursor,
        version: pointer.version,
        type_code: type_of(&pointer),
        id: pointer.id,
    }
}

/// A cursor's position, for order checks: `N` (memory) or `ms-seq` (a Redis stream id).
fn position(cursor: &str) -> (u64, u64) {
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("cursor {cursor:?} is not a position"));
    match cursor.split_once('-') {
        Some((ms, seq)) => (parse(ms), parse(seq)),
        None => (parse(cursor), 0),
    }
}

async fn watch(api: &mut Api, after: &str, types: &[&str]) -> Result<Streaming<pb::PointerChange>, Status> {
    let request = pb::WatchPointersRequest {
        after: after.into(),
        regions: Vec::new(),
        types: types.iter().map(|t| t.to_string()).collect(),
    };
    call(api.feed.watch_pointers(request)).await
}

/// The next `count` changes on `stream`, each within a few seconds.
async fn read_changes(stream: &mut Streaming<pb::PointerChange>, count: usize, what: &str) -> Vec<Seen> {
    let mut changes = Vec::new();
    while changes.len() < count {
        match tokio::time::timeout(VISIBLE_WITHIN, stream.message()).await {
            Ok(Ok(Some(change))) => changes.push(seen(change)),
            Ok(Ok(None)) => panic!("{what}: the feed ended after {} of {count} changes", changes.len()),
            Ok(Err(status)) => panic!("{what}: the feed failed after {} of {count} changes: {status:?}", changes.len()),
            Err(_) => {
                panic!("{what}: only {} of {count} changes within {VISIBLE_WITHIN:?}: {changes:?}", changes.len())
            }
        }
    }
    changes
}

/// Nothing more arrives on `stream` for a while.
async fn assert_quiet(stream: &mut Streaming<pb::PointerChange>, what: &str) {
    if let Ok(next) = tokio::time::timeout(Duration::from_millis(400), stream.message()).await {
        panic!("{what}: expected no further change, got {:?}", next.map(|c| c.map(seen)));
    }
}

/// What each write should put in the feed: (kind, id, version), in any order within a write.
type Expected = Vec<Vec<(pb::ChangeKind, String, u64)>>;

/// Writes to one region in a fixed cycle (create, create, update, supersede, delete), recording
/// the changes each write should make.
struct Ops {
    api: Api,
    region: String,
    patients: Vec<String>,
    current: Vec<pb::Pointer>,
    n: usize,
    expected: Expected,
}

impl Ops {
    fn new(api: Api, region: &str) -> Self {
        Self {
            api,
            region: region.into(),
            patients: (0..3).map(|_| new_patient()).collect(),
            current: Vec::new(),
            n: 0,
            expected: Vec::new(),
        }
    }

    fn changes(&self) -> usize {
        self.expected.iter().map(Vec::len).sum()
    }

    async fn run(&mut self, writes: usize) {
        use pb::ChangeKind::{Created, Deleted, Superseded, Updated};
        for _ in 0..writes {
            let step = if self.current.is_empty() { 0 } else { self.n % 5 };
            let patient = self.patients[self.n % self.patients.len()].clone();
            let ty = if self.n.is_multiple_of(2) { CRISIS_PLAN } else { NEWS2 };
            self.n += 1;
            let changes = match step {
                0 | 1 => {
                    let region = self.region.clone();
                    let created = create(&mut self.api, &patient, &region, ty).await;
                    let change = vec![(Created, created.id.clone(), 1)];
                    self.current.push(created);
                    change
                }
                2 => {
                    let old = self.current.pop().expect("a current pointer");
                    let request = pb::UpdatePointerRequest {
                        id: old.id.clone(),
                        version: old.version,
                        pointer: Some(input_of(&old)),
                    };
                    let updated =
                        ok("update", self.api.registry.update_pointer(request)).await.pointer.expect("updated");
                    assert_eq!(updated.version, old.version + 1);
                    let change = vec![(Updated, updated.id.clone(), updated.version)];
                    self.current.push(updated);
                    change
                }
                3 => {
                    let old = self.current.remove(0);
                    let (new, retired) = supersede(&mut self.api, &old).await;
                    let mut change = vec![(Created, new.id.clone(), 1)];
                    change.extend(retired.iter().map(|r| (Superseded, r.id.clone(), r.version)));
                    self.current.push(new);
                    change
                }
                _ => {
                    let old = self.current.remove(0);
                    let gone = delete(&mut self.api, &old).await;
                    vec![(Deleted, gone.id.clone(), gone.version)]
                }
            };
            self.expected.push(changes);
        }
    }
}

/// Open a watcher, read some, disconnect mid-stream, write more, resume from the last cursor,
/// read live changes too; the concatenation must be the whole feed, once each, in order.
async fn feed_resumes_exactly_once(writer: Api, mut follower: Api, region: &str) {
    let mut ops = Ops::new(writer, region);
    ops.run(8).await;
    let first_batch = ops.changes();
    let mut stream = watch(&mut follower, "", &[]).await.expect("watch from the start");
    let mut got = read_changes(&mut stream, 5, "first connection").await;
    assert!(first_batch > 5, "the first connection is cut mid-stream");
    drop(stream);

    ops.run(8).await;
    let last = got.last().expect("changes").cursor.clone();
    let mut stream = watch(&mut follower, &last, &[]).await.expect("watch from the last cursor");
    let so_far = ops.changes();
    got.extend(read_changes(&mut stream, so_far - got.len(), "after reconnecting").await);
    ops.run(5).await;
    let live = ops.changes() - so_far;
    got.extend(read_changes(&mut stream, live, "live, after reconnecting").await);
    assert_quiet(&mut stream, "after every change was read").await;
    drop(stream);

    let mut fresh = watch(&mut follower, "", &[]).await.expect("watch the whole feed");
    let all = read_changes(&mut fresh, ops.changes(), "the whole feed").await;
    assert_quiet(&mut fresh, "the whole feed").await;
    assert_eq!(got, all, "resumed reading (first connection + resume) differs from the whole feed");
    let positions: Vec<(u64, u64)> = all.iter().map(|c| position(&c.cursor)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "cursors are not strictly increasing: {positions:?}");
    // Every write is in the feed, in write order, with exactly its changes.
    let mut at = 0;
    for (i, write) in ops.expected.iter().enumerate() {
        let mut wanted = write.clone();
        let mut found: Vec<_> = all[at..at + write.len()].iter().map(|c| (c.kind, c.id.clone(), c.version)).collect();
        wanted.sort_by(|a, b| a.1.cmp(&b.1));
        found.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(found, wanted, "write #{i}'s changes in the feed");
        at += write.len();
    }

    // Resuming from any cursor gives exactly the rest.
    let middle = all.len() / 2;
    let mut stream = watch(&mut follower, &all[middle].cursor, &[]).await.expect("watch from the middle");
    let rest = read_changes(&mut stream, all.len() - middle - 1, "from the middle").await;
    assert_eq!(rest, all[middle + 1..].to_vec());
    assert_quiet(&mut stream, "from the middle").await;
    // A type filter passes only that type.
    let mut stream = watch(&mut follower, "", &[NEWS2]).await.expect("watch NEWS2 only");
    let news: Vec<Seen> = all.iter().filter(|c| c.type_code == NEWS2).cloned().collect();
    assert!(!news.is_empty() && news.len() < all.len());
    assert_eq!(read_changes(&mut stream, news.len(), "NEWS2 only").await, news);
    assert_quiet(&mut stream, "NEWS2 only").await;
    // A region filter for another region passes nothing.
    let request = pb::WatchPointersRequest { after: String::new(), regions: vec![NOBODY.into()], types: vec![] };
    let mut stream = ok("watch another region", follower.feed.watch_pointers(request)).await;
    assert_quiet(&mut stream, "another region's changes").await;
    // A cursor this feed could not have issued is a bad argument, not a silent restart.
    let status = watch(&mut follower, "not-a-cursor", &[]).await.expect_err("a malformed cursor");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    eprintln!(
        "feed: {} changes over {} writes; resumed after {} with exactly the rest",
        all.len(),
        ops.expected.len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pointers_resumes_from_the_last_cursor_exactly_once() {
    let dir = TempDir::new("nrl-feed");
    let args = ["--node-regions", A].map(String::from).to_vec();
    let mut node = NrlNode::spawn("regional-memory", testkit::ports::free_port(), args, dir.path());
    node.wait_serving(START_LIMIT).await;
    feed_resumes_exactly_once(Api::open(&node), Api::open(&node), A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_with_authentication_the_feed_resumes_exactly_once_for_the_peer_role_only() {
    let redis = start_redis().await;
    let dir = TempDir::new("nrl-feed-auth");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let mut args = ["--node-regions", A, "--store", &redis.url()].map(String::from).to_vec();
    args.extend(auth_args(&secret));
    let mut node = NrlNode::spawn("regional-redis-auth", testkit::ports::free_port(), args, dir.path());
    node.wait_serving(START_LIMIT).await;
    let producer = Api::new(&node, Credentials::bearer(&token("qwo-shared-care", CUSTODIAN, &["producer"], None)));
    let peer = Api::new(&node, Credentials::bearer(&token("national-locator", "X26", &["peer"], None)));

    // Not a peer: PERMISSION_DENIED; no credentials: UNAUTHENTICATED.
    for (who, credentials, wanted) in [
        (
            "a consumer",
            Credentials::bearer(&token("leeds-portal", "B86001", &["consumer"], None)),
            Code::PermissionDenied,
        ),
        (
            "a producer",
            Credentials::bearer(&token("qwo-shared-care", CUSTODIAN, &["producer"], None)),
            Code::PermissionDenied,
        ),
        ("an auditor", Credentials::bearer(&token("audit-desk", "X26", &["auditor"], None)), Code::PermissionDenied),
        ("nobody", Credentials::anonymous(), Code::Unauthenticated),
    ] {
        let mut api = Api::new(&node, credentials);
        match watch(&mut api, "", &[]).await {
            Err(status) => assert_eq!(status.code(), wanted, "WatchPointers by {who}: {status:?}"),
            Ok(mut stream) => match tokio::time::timeout(VISIBLE_WITHIN, stream.message()).await {
                Ok(Err(status)) => assert_eq!(status.code(), wanted, "WatchPointers by {who}: {status:?}"),
                other => panic!("WatchPointers by {who} should be {wanted:?}, got {other:?}"),
            },
        }
    }
    feed_resumes_exactly_once(producer, peer, A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cursor_older_than_the_retention_is_out_of_range() {
    let redis = start_redis().await;
    let dir = TempDir::new("nrl-feed-retention");
    let args = ["--node-regions", A, "--store", &redis.url(), "--feed-retention", "10"].map(String::from).to_vec();
    let mut node = NrlNode::spawn("regional-retention", testkit::ports::free_port(), args, dir.path());
    node.wait_serving(START_LIMIT).await;
    let mut api = Api::open(&node);
    let patient = new_patient();
    create(&mut api, &patient, A, CRISIS_PLAN).await;
    let mut stream = watch(&mut api, "", &[]).await.expect("watch");
    let first = read_changes(&mut stream, 1, "the first change").await.remove(0);
    drop(stream);

    // Far more than the retention (Redis trims whole stream nodes, of 100 entries by default).
    const WRITES: usize = 300;
    let patients: Vec<String> = (0..30).map(|_| new_patient()).collect();
    let batch = pb::BatchCreatePointersRequest {
        pointers: (0..WRITES).map(|i| input(&patients[i % patients.len()], A, CUSTODIAN, NEWS2)).collect(),
    };
    let outcomes = ok("batch create", api.registry.batch_create_pointers(batch)).await.outcomes;
    let created: Vec<String> = outcomes
        .iter()
        .map(|o| match &o.result {
            Some(pb::batch_outcome::Result::Created(p)) => p.id.clone(),
            other => panic!("batch entry {}: {other:?}", o.index),
        })
        .collect();
    assert_eq!(created.len(), WRITES);

    let refused = match watch(&mut api, &first.cursor, &[]).await {
        Err(status) => status,
        Ok(mut stream) => match tokio::time::timeout(VISIBLE_WITHIN, stream.message()).await {
            Ok(Err(status)) => status,
            other => panic!(
                "a cursor older than the retention should be OUT_OF_RANGE, got {:?}",
                other.map(|m| m.map(|c| c.map(seen)))
            ),
        },
    };
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(!refused.message().is_empty(), "OUT_OF_RANGE says what to do");

    // Resynchronising from the oldest retained change works, and ends at the newest write.
    let mut stream = watch(&mut api, "", &[]).await.expect("watch from the oldest retained");
    let mut retained = Vec::new();
    while let Ok(Ok(Some(change))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        retained.push(seen(change));
    }
    assert!(retained.len() >= 10, "at least the retention is kept: {} changes", retained.len());
    assert!(retained.len() <= WRITES, "older changes were trimmed: {} of {} kept", retained.len(), WRITES + 1);
    assert!(position(&retained[0].cursor) > position(&first.cursor));
    // (A batch's entries are independent writes: the feed holds them in the order they were
    // applied, which need not be the order of the batch.)
    let batch: BTreeSet<&String> = created.iter().collect();
    let kept: BTreeSet<&String> = retained.iter().map(|c| &c.id).collect();
    assert_eq!(kept.len(), retained.len(), "a change is retained twice: {retained:?}");
    assert!(kept.is_subset(&batch), "the retained changes are the newest writes (the batch's): {retained:?}");
    let positions: Vec<(u64, u64)> = retained.iter().map(|c| position(&c.cursor)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "retained cursors in order: {positions:?}");
    // The newest cursor is still good.
    let mut stream =
        watch(&mut api, &retained.last().expect("newest").cursor, &[]).await.expect("watch from the newest");
    assert_quiet(&mut stream, "from the newest cursor").await;
    eprintln!(
        "retention 10: {} of {} changes retained; the first cursor is OUT_OF_RANGE: {}",
        retained.len(),
        WRITES + 1,
        refused.message()
    );
}
