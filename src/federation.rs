//! Regional locators linked to a national one: the outbound work of a node. No service lives here
//! (the inbound `nrl.v1.ChangeFeed` and `nrl.v1.FederatedLocator` are in `api::grpc`), and no
//! protocol: the gRPC calls to other nodes are `api::grpc::peer_client`, behind the traits here.
//!
//! - `follower`: on the national node, one task per regional node that follows its feed (pull:
//!   the national node sets the pace and resumes from its own stored cursor, and a regional node
//!   never waits on the national one to acknowledge a write) and keeps the patient → regions index.
//! - `fanout`: a federated search's budget, parallel asks, per-region outcomes and overall outcome.
//! - `peers`: which node holds which region (the region directory's `record-locator` endpoints).

pub mod fanout;
pub mod follower;
pub mod peers;
