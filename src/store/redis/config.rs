//! Where Redis is and what to ask of it: `RedisConfig`, parsed from the store URL, and `redact`,
//! which keeps passwords out of logs and errors.

use std::fmt;
use std::time::Duration;

/// How to reach Redis and what to ask of it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Node URLs (`redis://` or `rediss://`, credentials included). One for standalone.
    pub nodes: Vec<String>,
    pub cluster: bool,
    /// Upper bound on every store call; past it the call fails with UNAVAILABLE.
    pub timeout: Duration,
    /// Before acknowledging a write, wait until this many replicas have it (Redis WAIT). 0 = don't.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    /// How long startup keeps trying to reach Redis before giving up.
    pub startup_wait: Duration,
    /// Changes the feed keeps (standalone Redis only).
    pub feed_retention: u64,
    /// Events the audit export stream keeps (approximately: Redis trims whole stream nodes).
    pub audit_export_retention: u64,
}

impl RedisConfig {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS), or
    /// `redis+cluster://[user:pass@]host:port,host:port,…` (`rediss+cluster://` for TLS).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (nodes, cluster) = if let Some((scheme, rest)) = url.split_once("+cluster://") {
            if scheme != "redis" && scheme != "rediss" {
                return Err(format!("unknown scheme {scheme}+cluster"));
            }
            let (credentials, hosts) = match rest.rsplit_once('@') {
                Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .filter(|h| !h.trim().is_empty())
                .map(|h| format!("{scheme}://{credentials}{}", h.trim()))
                .collect();
            if nodes.is_empty() {
                return Err("a cluster URL needs at least one host:port".into());
            }
            (nodes, true)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            (vec![url.to_string()], false)
        } else {
            return Err("expected redis://, rediss://, redis+cluster:// or rediss+cluster://".into());
        };
        for node in &nodes {
            redis::Client::open(node.as_str()).map_err(|e| format!("{}: {e}", redact(node)))?;
        }
        Ok(Self {
            nodes,
            cluster,
            timeout: Duration::from_millis(1000),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(500),
            startup_wait: Duration::from_secs(30),
            feed_retention: 1_000_000,
            audit_export_retention: 10_000_000,
        })
    }
}

/// A URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://***@{}", &url[..scheme_end], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("nodes", &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
            .field("cluster", &self.cluster)
            .field("timeout", &self.timeout)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_topologies() {
        let single = RedisConfig::parse("redis://127.0.0.1:6379/0").expect("standalone");
        assert!(!single.cluster);
        assert_eq!(single.nodes, vec!["redis://127.0.0.1:6379/0"]);
        let cluster = RedisConfig::parse("redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001").expect("cluster");
        assert!(cluster.cluster);
        assert_eq!(cluster.nodes, vec!["redis://user:secret@10.0.0.1:7000", "redis://user:secret@10.0.0.2:7001"]);
        let tls = RedisConfig::parse("rediss+cluster://h1:7000").expect("tls cluster");
        assert_eq!(tls.nodes, vec!["rediss://h1:7000"]);
        for bad in ["", "memory", "http://x:1", "redis+cluster://", "mongo+cluster://h:1"] {
            assert!(RedisConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_never_reach_logs() {
        let cluster = RedisConfig::parse("redis+cluster://user:secret@h1:7000,h2:7001").expect("cluster");
        assert!(!format!("{cluster:?}").contains("secret"));
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
