//! A Redis Cluster of private nodes ([`RedisCluster`]): creation, slot migration, failover, and
//! waiting until every node agrees on the topology.

use super::*;

/// A Redis Cluster of private nodes, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    /// Masters (ordered by their lowest slot at start) first, then replicas. Roles can change
    /// later (failover); this order does not.
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes and forms a cluster; returns once every
    /// node reports `cluster_state:ok`, all 16384 slots are covered, all nodes agree on the slot
    /// owners and every replica is in sync with its master.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::start_with(masters, replicas_per_master, RedisOptions::default())
    }

    /// [`start`](Self::start) with options for every node.
    pub fn start_with(masters: usize, replicas_per_master: usize, opts: RedisOptions) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters (redis-cli --cluster create refuses fewer)");
        let total = masters * (1 + replicas_per_master);
        let nodes = (0..total).map(|_| RedisServer::start_instance(opts.clone(), true)).collect();
        let mut cluster = RedisCluster { nodes };

        let mut create = Command::new(redis_cli_bin());
        create.args(["--cluster", "create"]);
        create.args(cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)));
        create.args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"]);
        match run_with_timeout(create, CLUSTER_TIMEOUT) {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "redis-cli --cluster create failed ({}):\n{}\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                cluster.diagnostics()
            ),
            Err(error) => panic!("redis-cli --cluster create: {error}\n{}", cluster.diagnostics()),
        }
        cluster.wait_for("the new cluster to become healthy", || cluster.check_health());

        // Put masters first, in slot order, so url() and ports() start with them.
        let view = cluster.live_view();
        let first_slot = |port: u16| {
            view.iter()
                .find(|node| node.port == port && node.is_master())
                .and_then(|node| node.slots.iter().map(|&(start, _)| start).min())
        };
        cluster.nodes.sort_by_key(|node| (first_slot(node.port).is_none(), first_slot(node.port)));
        let master_count = cluster.nodes.iter().filter(|node| first_slot(node.port).is_some()).count();
        assert_eq!(
            master_count,
            masters,
            "cluster created with the wrong number of masters\n{}",
            cluster.diagnostics()
        );
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` with every node, masters first.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `redis://127.0.0.1:P` for every node, masters first.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("redis://127.0.0.1:{}", node.port)).collect()
    }

    /// Every node's port, masters first (as of start).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// Ports of the nodes that are masters now, by lowest slot served.
    pub fn master_ports(&self) -> Vec<u16> {
        let view = self.live_view();
        let mut masters: Vec<&NodeEntry> = view
            .iter()
            .filter(|node| node.is_master() && !node.slots.is_empty() && self.is_running(node.port))
            .collect();
        masters.sort_by_key(|node| node.slots.iter().map(|&(start, _)| start).min());
        masters.iter().map(|node| node.port).collect()
    }

    /// `redis-cli -p port args...` against one node; see [`RedisServer::cli`].
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.node(port).cli(args)
    }

    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        self.node(port).try_cli(args)
    }

    /// Port of the master serving `slot`, according to a live node's `CLUSTER NODES`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        assert!(slot < CLUSTER_SLOTS, "slot {slot} out of range");
        slot_owner(&self.live_view(), slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}\n{}", self.diagnostics()))
    }

    /// Moves `slot` and its keys to the master on `to_port`, the way `redis-cli --cluster reshard`
    /// does it, and waits until every live node agrees on the new owner. No-op if it owns it already.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) {
        let view = self.live_view();
        let source_port = self.master_of_slot(slot);
        if source_port == to_port {
            return;
        }
        let entry = |port: u16| {
            view.iter()
                .find(|node| node.port == port && node.is_master())
                .unwrap_or_else(|| panic!("port {port} is not a master\n{}", self.diagnostics()))
        };
        let source_id = entry(source_port).id.as_str();
        let target_id = entry(to_port).id.as_str();
        let slot_arg = slot.to_string();
        let slot_arg = slot_arg.as_str();
        let admin = |port: u16, args: &[&str]| {
            call_ok(port, args).unwrap_or_else(|error| panic!("{args:?} on :{port}: {error}\n{}", self.diagnostics()));
        };

        // Order matters: the target must accept ASK-redirected clients before the source starts
        // sending them there.
        admin(to_port, &["CLUSTER", "SETSLOT", slot_arg, "IMPORTING", source_id]);
        admin(source_port, &["CLUSTER", "SETSLOT", slot_arg, "MIGRATING", target_id]);

        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let keys = match call_ok(source_port, &["CLUSTER", "GETKEYSINSLOT", slot_arg, "100"]) {
                Ok(Reply::Array(Some(keys))) => keys,
                other => panic!("CLUSTER GETKEYSINSLOT {slot} on :{source_port}: {other:?}\n{}", self.diagnostics()),
            };
            if keys.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "keys of slot {slot} still not migrated after {CLUSTER_TIMEOUT:?}");
            let mut migrate: Vec<Vec<u8>> = ["MIGRATE", "127.0.0.1", &to_port.to_string(), "", "0", MIGRATE_TIMEOUT_MS]
                .iter()
                .map(|arg| arg.as_bytes().to_vec())
                .collect();
            migrate.push(b"KEYS".to_vec());
            for key in keys {
                match key {
                    Reply::Bulk(Some(key)) => migrate.push(key),
                    other => panic!("CLUSTER GETKEYSINSLOT returned {other:?}"),
                }
            }
            // NOKEY only means the keys expired in between.
            match call_ok(source_port, &migrate) {
                Ok(Reply::Simple(reply)) if reply == "OK" || reply == "NOKEY" => {}
                other => panic!(
                    "MIGRATE of slot {slot} from :{source_port} to :{to_port}: {other:?}\n{}",
                    self.diagnostics()
                ),
            }
        }

        // Target first (it bumps its config epoch so the change wins), then source, then the other
        // masters so they stop redirecting to the old owner without waiting for gossip.
        let mut assign_on = vec![to_port, source_port];
        assign_on.extend(
            view.iter()
                .filter(|node| node.is_master() && self.is_running(node.port))
                .map(|node| node.port)
                .filter(|port| *port != to_port && *port != source_port),
        );
        for port in assign_on {
            admin(port, &["CLUSTER", "SETSLOT", slot_arg, "NODE", target_id]);
        }

        self.wait_for(&format!("all nodes to agree that slot {slot} moved to :{to_port}"), || {
            self.check_health()?;
            self.check_every_view(|port, view| match slot_owner(view, slot) {
                Some(owner) if owner == to_port => Ok(()),
                owner => Err(format!(":{port} says slot {slot} is served by {owner:?}")),
            })
        });
    }

    /// Manual failover (`CLUSTER FAILOVER` on a replica of `master_port`); waits until the replica
    /// is master, every live node agrees and the cluster is healthy. Returns the new master's port.
    /// Needs `replicas_per_master >= 1`.
    pub fn failover(&self, master_port: u16) -> u16 {
        // A manual failover only starts once the replica has caught up with its master.
        self.wait_for("the cluster to be healthy before failover", || self.check_health());
        let view = self.live_view();
        let master = view
            .iter()
            .find(|node| node.port == master_port && node.is_master())
            .unwrap_or_else(|| panic!("failover: :{master_port} is not a master\n{}", self.diagnostics()));
        let replica_port = view
            .iter()
            .find(|node| node.master_id.as_deref() == Some(master.id.as_str()) && self.is_running(node.port))
            .map(|node| node.port)
            .unwrap_or_else(|| {
                panic!("failover: master :{master_port} has no live replica (start with replicas_per_master >= 1)")
            });
        let slots = master.slots.clone();

        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        'failover: loop {
            call_ok(replica_port, &["CLUSTER", "FAILOVER"])
                .unwrap_or_else(|error| panic!("CLUSTER FAILOVER on :{replica_port}: {error}\n{}", self.diagnostics()));
            // Redis gives up on a manual failover after 5s (CLUSTER_MF_TIMEOUT); ask again if so.
            let attempt_deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < attempt_deadline {
                if role(replica_port).as_deref() == Ok("master") {
                    break 'failover;
                }
                thread::sleep(POLL_INTERVAL);
            }
            assert!(
                Instant::now() < deadline,
                "replica :{replica_port} did not become master within {CLUSTER_TIMEOUT:?}\n{}",
                self.diagnostics()
            );
        }

        self.wait_for(&format!("all nodes to agree that :{replica_port} replaced :{master_port}"), || {
            self.check_health()?;
            self.check_every_view(|port, view| {
                for &(start, _) in &slots {
                    let owner = slot_owner(view, start);
                    if owner != Some(replica_port) {
                        return Err(format!(":{port} says slot {start} is served by {owner:?}"));
                    }
                }
                Ok(())
            })
        });
        replica_port
    }

    /// SIGKILLs one node and waits for it to exit. The rest of the cluster is left to notice.
    pub fn kill9_node(&mut self, port: u16) {
        self.node_mut(port).kill9();
    }

    /// Restarts a node on its port with its `nodes.conf`; returns once it answers. Call
    /// [`wait_healthy`](Self::wait_healthy) to wait for the cluster to take it back.
    pub fn restart_node(&mut self, port: u16) {
        self.node_mut(port).restart();
    }

    /// Waits (30s) until every live node reports `cluster_state:ok` with all slots covered, all live
    /// nodes agree on slot owners (all of them alive), no slot is mid-migration, and every live
    /// replica's link to its master is up.
    pub fn wait_healthy(&self) {
        self.wait_for("the cluster to become healthy", || self.check_health());
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port} (nodes: {:?})", self.ports()))
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        let ports = self.ports();
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port} (nodes: {ports:?})"))
    }

    fn is_running(&self, port: u16) -> bool {
        self.nodes.iter().any(|node| node.port == port && node.is_running())
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|node| node.is_running()).map(|node| node.port).collect()
    }

    /// `CLUSTER NODES` as seen by the first live node that answers.
    fn live_view(&self) -> Vec<NodeEntry> {
        let mut errors = Vec::new();
        for port in self.live_ports() {
            match cluster_view(port) {
                Ok(view) => return view,
                Err(error) => errors.push(format!(":{port}: {error}")),
            }
        }
        panic!("no live cluster node answered CLUSTER NODES: {errors:?}\n{}", self.diagnostics());
    }

    fn check_every_view(&self, check: impl Fn(u16, &[NodeEntry]) -> Result<(), String>) -> Result<(), String> {
        for port in self.live_ports() {
            check(port, &cluster_view(port)?)?;
        }
        Ok(())
    }

    fn check_health(&self) -> Result<(), String> {
        let live = self.live_ports();
        if live.is_empty() {
            return Err("no cluster node is running".to_string());
        }
        let mut reference: Option<(u16, Topology)> = None;
        for &port in &live {
            let info = parse_info(&reply_text(call_ok(port, &["CLUSTER", "INFO"])?)?);
            let field = |name: &str| info.get(name).map(String::as_str).unwrap_or("?");
            if field("cluster_state") != "ok" {
                return Err(format!(":{port} has cluster_state:{}", field("cluster_state")));
            }
            for name in ["cluster_slots_assigned", "cluster_slots_ok"] {
                if field(name) != CLUSTER_SLOTS.to_string() {
                    return Err(format!(":{port} has {name}:{}", field(name)));
                }
            }
            if field("cluster_known_nodes") != self.nodes.len().to_string() {
                return Err(format!(":{port} knows {} of {} nodes", field("cluster_known_nodes"), self.nodes.len()));
            }

            let view = cluster_view(port)?;
            let myself = view.iter().find(|node| node.is_myself()).ok_or(format!(":{port}: no `myself` line"))?;
            if myself.migrating {
                return Err(format!(":{port} has a slot migration in progress"));
            }
            let topology = Topology::of(&view, &live);
            if let Some(&(_, _, owner)) = topology.slots.iter().find(|&&(_, _, owner)| !live.contains(&owner)) {
                return Err(format!(":{port} still routes slots to :{owner}, which is not running"));
            }
            match &reference {
                None => reference = Some((port, topology)),
                Some((first, expected)) if *expected != topology => {
                    return Err(format!(":{first} and :{port} disagree on the topology: {expected:?} vs {topology:?}"));
                }
                Some(_) => {}
            }
            if myself.is_replica() {
                let replication = parse_info(&reply_text(call_ok(port, &["INFO", "replication"])?)?);
                if replication.get("master_link_status").map(String::as_str) != Some("up") {
                    return Err(format!(":{port} is a replica whose link to its master is not up"));
                }
            }
        }
        Ok(())
    }

    /// Polls `check` until it passes; panics after 30s with its last error and cluster diagnostics.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            match check() {
                Ok(()) => return,
                Err(error) if Instant::now() >= deadline => {
                    panic!("timed out after {CLUSTER_TIMEOUT:?} waiting for {what}: {error}\n{}", self.diagnostics())
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Each node's own `CLUSTER NODES` view and log tail, for panic messages.
    fn diagnostics(&self) -> String {
        let mut out = String::from("=== cluster diagnostics ===\n");
        for node in &self.nodes {
            let view = if node.is_running() {
                match call_ok(node.port, &["CLUSTER", "NODES"]).and_then(reply_text) {
                    Ok(text) => text,
                    Err(error) => format!("CLUSTER NODES failed: {error}"),
                }
            } else {
                "(not running)".to_string()
            };
            let _ = write!(
                out,
                "--- node :{} ({}) ---\n{}\n--- log tail ---\n{}\n",
                node.port,
                node.dir.path().display(),
                view.trim(),
                tail_of_file(&node.log_path(), 12)
            );
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Cut every node's lifeline first so they all die at once instead of spending the
        // shutdown noticing each other's deaths; each node's own Drop then waits and cleans up.
        for node in &mut self.nodes {
            if let Some(process) = node.process.as_mut() {
                process.cut_lifeline();
            }
        }
        for node in &mut self.nodes {
            drop(node.process.take());
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeEntry {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
    /// A `[slot->-id]` or `[slot-<-id]` entry: a migration or import is in progress (only shown
    /// on the `myself` line).
    migrating: bool,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }
}

fn cluster_view(port: u16) -> Result<Vec<NodeEntry>, String> {
    parse_cluster_nodes(&reply_text(call_ok(port, &["CLUSTER", "NODES"])?)?)
}

/// Parses `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeEntry>, String> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line: {line:?}"));
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or(0);
        let mut slots = Vec::new();
        let mut migrating = false;
        for token in &fields[8..] {
            if token.starts_with('[') {
                migrating = true;
                continue;
            }
            let (start, end) = token.split_once('-').unwrap_or((token, token));
            match (start.parse(), end.parse()) {
                (Ok(start), Ok(end)) => slots.push((start, end)),
                _ => return Err(format!("bad slot range {token:?} in {line:?}")),
            }
        }
        nodes.push(NodeEntry {
            id: fields[0].to_string(),
            port,
            flags: fields[2].split(',').map(str::to_string).collect(),
            master_id: Some(fields[3]).filter(|id| *id != "-").map(str::to_string),
            slots,
            migrating,
        });
    }
    Ok(nodes)
}

/// `(first slot, last slot, master port)` ranges, sorted.
type SlotMap = Vec<(u16, u16, u16)>;

/// What every node must agree on before the cluster counts as settled: who serves which slots,
/// and which live node replicates which (clients that read from replicas rely on the latter).
#[derive(Debug, PartialEq)]
struct Topology {
    slots: SlotMap,
    /// `(port, Some(master port))` for replicas, `(port, None)` for masters; live nodes only.
    roles: Vec<(u16, Option<u16>)>,
}

impl Topology {
    fn of(view: &[NodeEntry], live: &[u16]) -> Topology {
        let port_of = |id: &str| view.iter().find(|node| node.id == id).map(|node| node.port).unwrap_or(0);
        let mut roles: Vec<(u16, Option<u16>)> = view
            .iter()
            .filter(|node| live.contains(&node.port))
            .map(|node| (node.port, node.master_id.as_deref().map(port_of)))
            .collect();
        roles.sort_unstable();
        Topology { slots: slot_map(view), roles }
    }
}

fn slot_map(view: &[NodeEntry]) -> SlotMap {
    let mut map: SlotMap = view
        .iter()
        .filter(|node| node.is_master())
        .flat_map(|node| node.slots.iter().map(move |&(start, end)| (start, end, node.port)))
        .collect();
    map.sort_unstable();
    map
}

fn slot_owner(view: &[NodeEntry], slot: u16) -> Option<u16> {
    slot_map(view).into_iter().find(|&(start, end, _)| (start..=end).contains(&slot)).map(|(_, _, port)| port)
}

fn role(port: u16) -> Result<String, String> {
    let info = parse_info(&reply_text(call_ok(port, &["INFO", "replication"])?)?);
    info.get("role").cloned().ok_or_else(|| format!(":{port}: INFO replication has no role"))
}
