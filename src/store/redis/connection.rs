//! The connection: one handle over standalone Redis or Redis Cluster, with ASK redirects followed
//! safely, and what happens once at startup (connecting, the settings check, the shared id key).

use super::{keys, unavailable, RedisConfig};
use crate::store::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use std::collections::HashMap;
use std::time::Duration;

/// One connection handle for either topology; cheap to clone (both are multiplexed handles).
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How often one call follows an ASK redirect before giving up.
const ASK_ATTEMPTS: usize = 5;

/// Sends `cmd`; if the slot is mid-migration and the node answers ASK, sends `ASKING` and `cmd`
/// together, as one pipeline, to the node named. redis-rs's own ASK handling sends them as two
/// requests on a shared connection, so a concurrent call can consume the one-shot ASKING flag
/// and the command bounces back (sewenew/redis-plus-plus#281 is the same race). In one pipeline
/// nothing can come between them.
async fn follow_ask(connection: &mut ClusterConnection, cmd: &Cmd) -> Result<Value, RedisError> {
    let mut outcome = connection.req_packed_command(cmd).await;
    for _ in 0..ASK_ATTEMPTS {
        let target = match &outcome {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::Ask) => e.redirect_node().and_then(|(addr, _)| {
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_string(), port.parse::<u16>().ok()?))
            }),
            _ => None,
        };
        let Some((host, port)) = target else { return outcome };
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").add_command(cmd.clone());
        outcome = connection
            .route_pipeline(pipe, 1, 1, SingleNodeRoutingInfo::ByAddress { host, port })
            .await
            .and_then(|mut values| values.pop().ok_or_else(|| RedisError::from((ErrorKind::Client, "empty ASK reply"))))
            .and_then(|value| match value {
                // A server error inside a pipeline comes back as a value; surface it as an error.
                Value::ServerError(e) => Err(e.into()),
                other => Ok(other),
            });
        if matches!(&outcome, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::Moved)) {
            // The migration finished between the two: the normal path follows MOVED.
            outcome = connection.req_packed_command(cmd).await;
        }
    }
    outcome
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => Box::pin(follow_ask(c, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// One connection handle for the topology `config` names; `RedisStore::connect` retries it.
pub(super) async fn connect(config: &RedisConfig) -> Result<Connection, RedisError> {
    if config.cluster {
        let client = redis::cluster::ClusterClientBuilder::new(config.nodes.clone())
            .connection_timeout(config.timeout)
            .response_timeout(config.timeout)
            // Short waits between retries: a failover or slot move settles within the store
            // timeout. ASK redirects are followed by `follow_ask`.
            .retries(6)
            .min_retry_wait(1)
            .max_retry_wait(100)
            .build()?;
        Ok(Connection::Cluster(client.get_async_connection().await?))
    } else {
        let client = redis::Client::open(config.nodes[0].as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        Ok(Connection::Single(client.get_connection_manager_with_config(manager_config).await?))
    }
}

/// Smallest `hash-max-listpack-value` that keeps a patient's hash in Redis's compact listpack
/// encoding (values are ~100-200 bytes). Below it Redis uses a hashtable: ~400 instead of ~265 bytes
/// per pointer.
const MIN_LISTPACK_VALUE: u64 = 256;

/// Warns about Redis settings that cost memory or durability. Best effort: managed Redis services
/// often refuse CONFIG, and then there is nothing to say.
pub(super) async fn check_settings(connection: &mut Connection, timeout: Duration) {
    let query = |name: &'static str| {
        let mut connection = connection.clone();
        async move {
            let mut command = redis::cmd("CONFIG");
            command.arg("GET").arg(name);
            match tokio::time::timeout(timeout, command.query_async::<HashMap<String, String>>(&mut connection)).await {
                Ok(Ok(values)) => values.get(name).cloned(),
                _ => None,
            }
        }
    };
    match query("hash-max-listpack-value").await.and_then(|v| v.parse::<u64>().ok()) {
        Some(value) if value < MIN_LISTPACK_VALUE => tracing::warn!(
            hash_max_listpack_value = value,
            recommended = 512,
            "redis hash-max-listpack-value is low: pointers take ~400 bytes each instead of ~265 (see README, Redis)"
        ),
        Some(_) => {}
        None => tracing::info!("cannot read redis settings (CONFIG GET refused); check them by hand (README, Redis)"),
    }
    if let Some(policy) = query("maxmemory-policy").await.filter(|p| p != "noeviction") {
        tracing::warn!(
            maxmemory_policy = %policy,
            "redis may evict keys under memory pressure, silently losing pointers: set maxmemory-policy noeviction"
        );
    }
    if let (Some(appendonly), fsync) = (query("appendonly").await, query("appendfsync").await) {
        tracing::info!(appendonly = %appendonly, appendfsync = ?fsync, "redis durability settings");
        if appendonly != "yes" {
            tracing::warn!(
                "redis appendonly is off: acknowledged writes since the last snapshot are lost if redis stops"
            );
        }
    }
}

/// The id codec key lives in Redis so every registry node sharing the data mints and reads the
/// same ids. The first node to start creates it (SET NX); the rest read it.
pub(super) async fn load_id_key(connection: &mut Connection, timeout: Duration) -> Result<[u8; 32], StoreError> {
    let fresh: [u8; 32] = rand::random();
    let call = async {
        let _: Option<String> =
            redis::cmd("SET").arg(keys::ID_KEY).arg(fresh.as_slice()).arg("NX").query_async(connection).await?;
        redis::cmd("GET").arg(keys::ID_KEY).query_async::<Option<Vec<u8>>>(connection).await
    };
    let stored = match tokio::time::timeout(timeout * 2, call).await {
        Ok(result) => result.map_err(unavailable)?,
        Err(_) => return Err(StoreError::Unavailable("redis did not answer while loading the id key".into())),
    };
    let stored = stored.ok_or_else(|| StoreError::Unavailable("id key vanished right after it was set".into()))?;
    stored.as_slice().try_into().map_err(|_| StoreError::Corrupt(format!("{} is not 32 bytes", keys::ID_KEY)))
}
