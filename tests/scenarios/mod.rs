//! Every behaviour of the public API, written once as `async fn(&TestServer)` and run against every
//! store backend by `tests/api.rs`. Each scenario uses its own fresh patients, so scenarios can
//! share a store.

pub mod batch;
pub mod create;
pub mod locate;
pub mod search;
pub mod ssp;
pub mod supersede;
pub mod update_delete;
pub mod validation;
