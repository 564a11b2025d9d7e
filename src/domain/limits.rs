//! Size limits on everything a caller sends. Each is enforced where the input is converted, with
//! the field named in the error.

/// Longest content url.
pub const MAX_URL_LEN: usize = 2048;
/// Longest producer_reference.
pub const MAX_PRODUCER_REFERENCE_LEN: usize = 128;
/// Longest display text of a coding.
pub const MAX_DISPLAY_LEN: usize = 256;
/// Longest code of a coding (SNOMED CT ids are at most 18 digits).
pub const MAX_CODE_LEN: usize = 18;
/// Renditions per pointer.
pub const MAX_CONTENT: usize = 10;
/// Pointers retired by one supersede.
pub const MAX_SUPERSEDES: usize = 10;
/// Values in one search filter.
pub const MAX_FILTER_VALUES: usize = 20;
/// Search page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest search page; bigger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 500;
/// Entries in one BatchCreatePointers call.
pub const MAX_BATCH: usize = 1000;
/// Longest page token accepted.
pub const MAX_PAGE_TOKEN_LEN: usize = 256;
/// Largest gRPC message the server decodes (a full batch of large pointers fits).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
