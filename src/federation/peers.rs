//! Which registry node holds which region, from the region directory's `record-locator`
//! endpoints, and a lazily connected channel to each.

use crate::domain::LOCATOR_ENDPOINT;
use crate::domain::{RegionCode, RegionDirectory};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct Peers {
    urls: BTreeMap<RegionCode, String>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// Every region with a `record-locator` endpoint, except those this node holds itself.
    pub fn from_directory(directory: &RegionDirectory, own: Option<&std::collections::BTreeSet<RegionCode>>) -> Self {
        let urls = directory
            .regions()
            .filter(|r| own.is_none_or(|own| !own.contains(&r.code)))
            .filter_map(|r| {
                let url = r.endpoints.iter().find(|e| e.purpose == LOCATOR_ENDPOINT)?.url.clone();
                Some((r.code.clone(), url))
            })
            .collect();
        Self { urls, channels: Mutex::new(HashMap::new()) }
    }

    /// No peers: a node that answers everything from its own store.
    pub fn none() -> Self {
        Self { urls: BTreeMap::new(), channels: Mutex::new(HashMap::new()) }
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    pub fn regions(&self) -> impl Iterator<Item = (&RegionCode, &str)> {
        self.urls.iter().map(|(r, u)| (r, u.as_str()))
    }

    pub fn url(&self, region: &RegionCode) -> Option<&str> {
        self.urls.get(region).map(String::as_str)
    }

    /// A channel to `url`; it connects on first use and reconnects by itself.
    pub fn channel(&self, url: &str) -> Result<Channel, String> {
        // Held only to look up or insert a handle, never across an await.
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad peer url {url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(url.to_string(), channel.clone());
        Ok(channel)
    }
}
