//! Tests of the Redis test harness itself (`testkit::redis`), against real redis-server processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use testkit::redis::{find_tool_in, key_slot, RedisCluster, RedisOptions, RedisServer};

const WATCHDOG_CHILD_ENV: &str = "NRL_REDIS_HARNESS_WATCHDOG_CHILD";

/// True while `pid` is a live process (a zombie counts as dead: it only waits to be reaped).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn wait_until_dead(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            // Don't leave the orphan this test is about running after it fails.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("redis-server pid {pid} still alive {within:?} after its test process was killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn durable() -> RedisOptions {
    RedisOptions { appendonly: true, appendfsync: "always", ..RedisOptions::default() }
}

#[test]
fn standalone_server_answers_set_and_get() {
    let redis = RedisServer::start(RedisOptions::default());

    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port()));
    assert_ne!(redis.port(), 6379, "must not use the system redis port");
    assert_eq!(redis.cli(&["SET", "pointer:1", "hello world"]), "OK");
    assert_eq!(redis.cli(&["GET", "pointer:1"]), "hello world");
    // The harness's settings really reached the server.
    assert_eq!(redis.cli(&["CONFIG", "GET", "save"]), "save");
    assert_eq!(redis.cli(&["CONFIG", "GET", "appendonly"]), "appendonly\nno");
    assert!(redis.log_tail().contains("Ready to accept connections"), "log: {}", redis.log_tail());
}

#[test]
fn cli_reports_error_replies() {
    let redis = RedisServer::start(RedisOptions::default());

    let error = redis.try_cli(&["NO-SUCH-COMMAND"]).expect_err("unknown command must fail");
    assert!(error.contains("unknown command"), "{error}");
    let panic = std::panic::catch_unwind(|| redis.cli(&["GET"])).expect_err("cli must panic on an error reply");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("wrong number of arguments"), "{message}");
}

#[test]
fn kill9_stops_the_server_and_restart_without_aof_starts_empty() {
    let mut redis = RedisServer::start(RedisOptions::default());
    redis.cli(&["SET", "k", "v"]);
    let (port, first_pid) = (redis.port(), redis.pid().expect("running"));

    redis.kill9();
    assert!(!process_alive(first_pid), "kill9 returned while redis pid {first_pid} is alive");
    assert!(redis.pid().is_none());
    let error = redis.try_cli(&["PING"]).expect_err("a killed server must not answer");
    assert!(error.contains("Connection refused"), "{error}");

    redis.restart();
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), Some(first_pid), "restart must start a new process");
    // Neither AOF nor RDB: the key is gone, which also proves the old process really died.
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

#[test]
fn kill9_then_restart_replays_the_aof() {
    let mut redis = RedisServer::start(durable());
    assert_eq!(redis.cli(&["SET", "{9434765919}:pointer", "survives"]), "OK");

    redis.kill9();
    assert!(redis.try_cli(&["GET", "{9434765919}:pointer"]).is_err());

    redis.restart();
    assert_eq!(redis.cli(&["GET", "{9434765919}:pointer"]), "survives");
    assert_eq!(redis.cli(&["CONFIG", "GET", "appendfsync"]), "appendfsync\nalways");
    assert!(redis.log_tail().contains("DB loaded from append only file"), "log: {}", redis.log_tail());
}

#[test]
fn drop_kills_redis_and_removes_the_data_dir() {
    let redis = RedisServer::start(durable());
    redis.cli(&["SET", "k", "v"]);
    let pid = redis.pid().expect("running");
    let dir = redis.data_dir().to_path_buf();
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    assert!(dir.join("redis.log").exists());

    drop(redis);
    assert!(!process_alive(pid), "redis pid {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
}

/// Not a test on its own: `watchdog_kills_redis_when_the_test_process_is_killed` runs this test
/// binary again with this test selected and the env var set, then SIGKILLs it.
#[test]
fn watchdog_child_process() {
    if std::env::var_os(WATCHDOG_CHILD_ENV).is_none() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    // Own line: libtest has already printed "test watchdog_child_process ... " without a newline.
    println!("\nREDIS pid={} dir={}", redis.pid().expect("running"), redis.data_dir().display());
    // Bounded, in case the parent never kills us; then Drop cleans up normally.
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn watchdog_kills_redis_when_the_test_process_is_killed() {
    let mut child = Command::new(std::env::current_exe().expect("path of this test binary"))
        .args(["--exact", "watchdog_child_process", "--nocapture", "--test-threads=1"])
        .env(WATCHDOG_CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-run this test binary as a child");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("REDIS "))
        .expect("child test printed its redis pid");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_string()
    };
    let pid: u32 = field("pid=").parse().expect("numeric pid");
    let dir = PathBuf::from(field("dir="));
    assert!(process_alive(pid), "child's redis pid {pid} not running");

    // SIGKILL: no Drop, no panic handler, nothing in the test process gets to clean up.
    child.kill().expect("SIGKILL the child test process");
    child.wait().expect("reap the child test process");
    // Only the watchdog runs after a SIGKILL, so the child's temp dir is left behind; tidy it up.
    let _ = std::fs::remove_dir_all(dir);
    wait_until_dead(pid, Duration::from_secs(10));
}

#[test]
fn missing_binary_panic_explains_how_to_install() {
    let panic = std::panic::catch_unwind(|| find_tool_in("redis-server", "/nonexistent-bin".as_ref()))
        .expect_err("lookup in an empty PATH must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("`redis-server` was not found on PATH"), "{message}");
    assert!(message.contains("apt-get install redis-server redis-tools"), "{message}");

    let path = std::env::var_os("PATH").unwrap_or_default();
    assert!(find_tool_in("redis-cli", &path).ends_with("redis-cli"));
}

#[test]
fn key_slot_matches_known_values() {
    // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert_eq!(key_slot("foo"), 12182);
    assert_eq!(key_slot("123456789"), 0x31C3); // the CRC-16/XMODEM check value, already < 16384
    assert_eq!(key_slot(""), 0);
    assert_eq!(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
    assert_eq!(key_slot("{9434765919}:x"), key_slot("9434765919"));
    assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"), "an empty tag hashes the whole key");
    assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
}

#[test]
fn cluster_of_three_masters_agrees_on_key_slots_and_migrates_a_slot() {
    let cluster = RedisCluster::start(3, 0);
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(cluster.master_ports(), ports);
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1], ports[2])
    );
    assert_eq!(cluster.node_urls()[0], format!("redis://127.0.0.1:{}", ports[0]));
    for &port in &ports {
        let info = cluster.cli(port, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), ":{port}: {info}");
        assert!(info.contains("cluster_slots_assigned:16384"), ":{port}: {info}");
    }

    for key in [
        "foo",
        "",
        "{9434765919}:x",
        "9434765919",
        "{user1000}.following",
        "{user1000}.followers",
        "{}",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{bar",
        "nhs:ünïcödé",
    ] {
        let from_redis = cluster.cli(ports[1], &["CLUSTER", "KEYSLOT", key]);
        assert_eq!(from_redis, key_slot(key).to_string(), "slot of {key:?}");
    }
    assert_eq!(key_slot("{9434765919}:x"), key_slot("9434765919"));

    // More keys than one GETKEYSINSLOT batch (100), all in one slot thanks to the hash tag.
    let key = "{migrate-me}:pointer";
    let slot = key_slot(key);
    assert_eq!(cluster.cli(ports[0], &["-c", "SET", key, "v1"]), "OK");
    let extra: Vec<String> = (0..150).flat_map(|i| [format!("{{migrate-me}}:{i}"), i.to_string()]).collect();
    let mut mset = vec!["-c", "MSET"];
    mset.extend(extra.iter().map(String::as_str));
    assert_eq!(cluster.cli(ports[0], &mset), "OK");

    let source = cluster.master_of_slot(slot);
    assert_eq!(cluster.cli(source, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), "151");
    let target = *ports.iter().find(|&&port| port != source).expect("another master");
    cluster.migrate_slot(slot, target);

    assert_eq!(cluster.master_of_slot(slot), target);
    assert_eq!(cluster.cli(target, &["GET", key]), "v1", "read directly from the new owner, no redirect");
    assert_eq!(cluster.cli(target, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), "151");
    assert_eq!(cluster.cli(source, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), "0");
    let moved = cluster.try_cli(source, &["GET", key]).expect_err("old owner must redirect");
    assert!(moved.contains(&format!("MOVED {slot} 127.0.0.1:{target}")), "{moved}");
    for &port in &ports {
        assert_eq!(cluster.cli(port, &["-c", "GET", "{migrate-me}:149"]), "149", "via :{port}");
    }
}

#[test]
fn cluster_with_replicas_fails_over_a_master() {
    let mut cluster = RedisCluster::start(3, 1);
    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    assert_eq!(cluster.master_ports(), ports[..3]);
    assert!(cluster.url().starts_with(&format!("redis+cluster://127.0.0.1:{},", ports[0])));

    let key = "{9434765919}:pointer";
    let slot = key_slot(key);
    assert_eq!(cluster.cli(ports[0], &["-c", "SET", key, "before-failover"]), "OK");
    let old_master = cluster.master_of_slot(slot);

    let new_master = cluster.failover(old_master);
    assert_ne!(new_master, old_master);
    assert!(ports[3..].contains(&new_master), "a replica was promoted");
    assert_eq!(cluster.master_of_slot(slot), new_master);
    assert!(cluster.cli(new_master, &["INFO", "replication"]).contains("role:master"));
    assert!(cluster.cli(old_master, &["INFO", "replication"]).contains("role:slave"));
    assert_eq!(cluster.cli(new_master, &["GET", key]), "before-failover");

    // The demoted master is now a replica; killing it leaves the cluster healthy.
    cluster.kill9_node(old_master);
    assert!(cluster.try_cli(old_master, &["PING"]).is_err());
    cluster.wait_healthy();
    assert_eq!(cluster.master_ports().len(), 3);
    let live_replica = *ports[3..].iter().find(|&&port| port != new_master).expect("an untouched replica");
    assert_eq!(cluster.cli(live_replica, &["-c", "GET", key]), "before-failover", "redirected to the new master");
}
