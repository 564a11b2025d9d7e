//! Regional locators linked to a national one.
//!
//! - `feed_service`: `nrl.v1.ChangeFeed/WatchPointers`, every change of this node, resumable.
//! - `follower`: on the national node, one task per regional node that follows its feed (pull:
//!   the national node sets the pace and resumes from its own stored cursor, and a regional node
//!   never waits on the national one to acknowledge a write) and keeps the patient → regions index.
//! - `search`: `nrl.v1.FederatedLocator`, fan-out to the regions holding a patient within the
//!   caller's deadline, with the caller's own credentials.
//! - `peers`: which node holds which region (the region directory's `record-locator` endpoints).

pub mod feed_service;
pub mod follower;
pub mod peers;
pub mod search;
