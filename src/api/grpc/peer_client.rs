//! The outbound side of the gRPC edge: this node calling other registry nodes.
//!
//! - [`GrpcRegionalFeed`]: the national node's follower reading a regional node's change feed and
//!   snapshots (`nrl.v1.ChangeFeed`) with the peer token, as `federation::follower::RegionalFeed`.
//! - [`search_region`]: one region's part of a federated search (`nrl.v1.PointerRegistry`), with
//!   the caller's own credentials, within the caller's budget.
//!
//! Peers' statuses become registry errors in `status::error_of`, so `federation` sees domain errors.
//! With traces on, each call has a client span and carries its W3C trace context (`otel`): a
//! region's search as a child of the FederatedSearch, a feed read as a trace of its own.

use super::conversions as conv;
use super::status::{code_of, error_of};
use crate::auth::PURPOSE_HEADER;
use crate::domain::ReferenceData;
use crate::domain::RegionCode;
use crate::error::RegistryError;
use crate::federation::fanout::MARGIN;
use crate::federation::follower::{FeedItem, FollowedChange, RegionalFeed};
use crate::federation::peers::Peers;
use crate::otel;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::change_feed_client::ChangeFeedClient;
use crate::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{Instrument, Span};

const CHANGE_FEED: &str = "nrl.v1.ChangeFeed";
const POINTER_REGISTRY: &str = "nrl.v1.PointerRegistry";

/// A regional node's change feed over gRPC.
pub struct GrpcRegionalFeed {
    peers: Arc<Peers>,
    /// The bearer token this node presents as a peer (none when the regional node has no auth).
    token: Option<String>,
    reference: Arc<ReferenceData>,
}

impl GrpcRegionalFeed {
    pub fn new(peers: Arc<Peers>, token: Option<String>, reference: Arc<ReferenceData>) -> Self {
        Self { peers, token, reference }
    }

    /// A request with the peer token, the purpose the regional node expects, and `span`'s trace
    /// context.
    fn request<T>(&self, message: T, span: &Span) -> Result<Request<T>, RegistryError> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| RegistryError::Unavailable("the peer token is not valid header text".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        request.metadata_mut().insert(PURPOSE_HEADER, MetadataValue::from_static("administration"));
        otel::inject(span, request.metadata_mut());
        Ok(request)
    }

    fn client(&self, url: &str) -> Result<ChangeFeedClient<Channel>, RegistryError> {
        Ok(ChangeFeedClient::new(self.peers.channel(url).map_err(RegistryError::Unavailable)?))
    }
}

#[async_trait]
impl RegionalFeed for GrpcRegionalFeed {
    async fn watch(
        &self,
        url: &str,
        region: &RegionCode,
        after: String,
    ) -> Result<BoxStream<'static, Result<FollowedChange, RegistryError>>, RegistryError> {
        // The span covers opening the stream: the changes that follow may flow for days.
        let span = otel::peer_span(CHANGE_FEED, "WatchPointers", region.as_str(), true);
        let message = pb::WatchPointersRequest { after, regions: vec![region.to_string()], types: vec![] };
        let request = self.request(message, &span)?;
        let opened = self.client(url)?.watch_pointers(request).instrument(span.clone()).await;
        otel::grpc_status(&span, opened.as_ref().map_or_else(|s| s.code(), |_| Code::Ok), opened.is_err());
        let stream = opened.map_err(|s| error_of(&s))?.into_inner();
        let reference = self.reference.clone();
        Ok(stream
            .map(move |change| {
                let change = change.map_err(|s| error_of(&s))?;
                let item = conv::feed_item(&change, &reference);
                Ok(FollowedChange { cursor: change.cursor, item })
            })
            .boxed())
    }

    async fn snapshot(
        &self,
        url: &str,
        region: &RegionCode,
    ) -> Result<(String, BoxStream<'static, Result<FeedItem, RegistryError>>), RegistryError> {
        // The span covers opening the snapshot and reading its cursor, not the items after it.
        let span = otel::peer_span(CHANGE_FEED, "SnapshotPointers", region.as_str(), true);
        let request = self.request(pb::SnapshotPointersRequest { regions: vec![region.to_string()] }, &span)?;
        let mut client = self.client(url)?;
        let opened = async {
            let mut stream = client.snapshot_pointers(request).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, tonic::Status>((stream, first))
        }
        .instrument(span.clone())
        .await;
        otel::grpc_status(&span, opened.as_ref().map_or_else(|s| s.code(), |_| Code::Ok), opened.is_err());
        let (stream, first) = opened.map_err(|s| error_of(&s))?;
        let cursor = match first {
            Some(pb::SnapshotItem { item: Some(pb::snapshot_item::Item::Cursor(cursor)) }) => cursor,
            other => {
                return Err(RegistryError::Internal(format!("a snapshot must start with its cursor, got {other:?}")));
            }
        };
        let reference = self.reference.clone();
        let items = stream.map(move |item| Ok(conv::snapshot_item(item.map_err(|s| error_of(&s))?, &reference)));
        Ok((cursor, items.boxed()))
    }
}

/// Asks the node at `url` for `region`'s part of a federated search, page by page, with the
/// caller's forwarded metadata, until `deadline` (less a margin for merging and answering).
pub async fn search_region(
    peers: &Peers,
    url: &str,
    region: &RegionCode,
    query: &pb::PointerQuery,
    forwarded: &MetadataMap,
    deadline: Instant,
) -> Result<Vec<pb::Pointer>, RegistryError> {
    let span = otel::peer_span(POINTER_REGISTRY, "SearchPointers", region.as_str(), false);
    let result = search_pages(peers, url, region, query, forwarded, deadline, &span).instrument(span.clone()).await;
    otel::grpc_status(&span, result.as_ref().map_or_else(code_of, |_| Code::Ok), result.is_err());
    result
}

async fn search_pages(
    peers: &Peers,
    url: &str,
    region: &RegionCode,
    query: &pb::PointerQuery,
    forwarded: &MetadataMap,
    deadline: Instant,
    span: &Span,
) -> Result<Vec<pb::Pointer>, RegistryError> {
    let channel = peers.channel(url).map_err(RegistryError::Unavailable)?;
    // A region's pages of large pointers may pass a default client's 4 MiB: take what it sends.
    let mut client = PointerRegistryClient::new(channel).max_decoding_message_size(super::MAX_RESPONSE_BYTES);
    let mut pointers = Vec::new();
    let mut token = String::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now()).saturating_sub(MARGIN);
        if remaining.is_zero() {
            return Err(RegistryError::DeadlineExceeded("no time left in the caller's budget".into()));
        }
        let mut query = query.clone();
        query.regions = vec![region.to_string()];
        let mut request =
            Request::new(pb::SearchPointersRequest { query: Some(query), page_size: 500, page_token: token });
        *request.metadata_mut() = forwarded.clone();
        otel::inject(span, request.metadata_mut());
        request.set_timeout(remaining);
        let call_deadline = Instant::now() + remaining;
        let page = match tokio::time::timeout(remaining, client.search_pointers(request)).await {
            Ok(Ok(page)) => page.into_inner(),
            // tonic's own client timeout may fire first ("Timeout expired"): any failure at the
            // call's deadline is a timeout, whatever code it came with.
            Ok(Err(status)) if Instant::now() + MARGIN >= call_deadline => {
                return Err(RegistryError::DeadlineExceeded(status.message().to_string()))
            }
            Ok(Err(status)) => return Err(error_of(&status)),
            Err(_) => return Err(RegistryError::DeadlineExceeded(format!("no answer within {remaining:?}"))),
        };
        pointers.extend(page.pointers);
        if page.next_page_token.is_empty() {
            return Ok(pointers);
        }
        token = page.next_page_token;
    }
}
