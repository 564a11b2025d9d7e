//! Which of a patient's pointers a search or count returns, in what order, one page at a time.
//!
//! Pure functions over the patient's pointers: every store hands back one patient's pointers in one
//! round trip and the same code filters, orders and pages them, so every backend behaves alike.

use super::{NhsNumber, OdsCode, Pointer, PointerId, RegionCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use uuid::Uuid;

/// A validated search. Empty filter sets mean "any".
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PointerQuery {
    pub nhs_number: NhsNumber,
    pub types: BTreeSet<String>,
    pub categories: BTreeSet<String>,
    pub custodians: BTreeSet<OdsCode>,
    pub regions: BTreeSet<RegionCode>,
    pub include_superseded: bool,
}

impl PointerQuery {
    pub fn for_patient(nhs_number: NhsNumber) -> Self {
        Self {
            nhs_number,
            types: BTreeSet::new(),
            categories: BTreeSet::new(),
            custodians: BTreeSet::new(),
            regions: BTreeSet::new(),
            include_superseded: false,
        }
    }

    pub fn matches(&self, pointer: &Pointer) -> bool {
        let draft = &pointer.draft;
        draft.nhs_number == self.nhs_number
            && (self.include_superseded || pointer.is_current())
            && (self.types.is_empty() || self.types.contains(&draft.pointer_type.coding.code))
            && (self.categories.is_empty() || self.categories.contains(&draft.pointer_type.category.code))
            && (self.custodians.is_empty() || self.custodians.contains(&draft.custodian))
            && (self.regions.is_empty() || self.regions.contains(&draft.region))
    }

    /// A digest of the query, so a page token cannot be replayed against a different query.
    fn fingerprint(&self) -> [u8; 8] {
        let mut hash = Sha256::new();
        hash.update(self.nhs_number.to_string());
        for (tag, set) in [("t", &self.types), ("c", &self.categories)] {
            for value in set {
                hash.update(format!("|{tag}:{value}"));
            }
        }
        for value in &self.custodians {
            hash.update(format!("|o:{value}"));
        }
        for value in &self.regions {
            hash.update(format!("|r:{value}"));
        }
        hash.update(if self.include_superseded { "|s" } else { "|-" });
        let digest = hash.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        out
    }
}

/// Where a page starts: after the pointer a previous page ended on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<PointerId>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Page {
    pub pointers: Vec<Pointer>,
    /// The last pointer of this page when more follow.
    pub next_after: Option<PointerId>,
    /// How many pointers match the query in all (every page, not only from `after` on).
    pub total: u64,
}

/// Filters, orders newest first (ids are time-ordered UUIDs) and cuts one page.
///
/// The page starts strictly after `after` in that order: a pointer added during a walk sorts
/// before the cursor (it is newer) and a removed one simply vanishes, so a walk never repeats a
/// pointer and never skips one that existed throughout.
pub fn select_page(pointers: Vec<Pointer>, query: &PointerQuery, page: PageRequest) -> Page {
    let mut total = 0;
    let mut matching: Vec<Pointer> = pointers
        .into_iter()
        .filter(|p| query.matches(p))
        .inspect(|_| total += 1)
        .filter(|p| page.after.is_none_or(|after| p.id < after))
        .collect();
    matching.sort_unstable_by_key(|p| std::cmp::Reverse(p.id));
    let more = matching.len() > page.size;
    matching.truncate(page.size);
    let next_after = if more { matching.last().map(|p| p.id) } else { None };
    Page { pointers: matching, next_after, total }
}

pub fn count(pointers: &[Pointer], query: &PointerQuery) -> u64 {
    pointers.iter().filter(|p| query.matches(p)).count() as u64
}

const TOKEN_VERSION: u8 = 1;

/// Opaque page token: version, query fingerprint, last id (base64url).
pub fn encode_page_token(query: &PointerQuery, after: PointerId) -> String {
    let mut bytes = Vec::with_capacity(25);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&query.fingerprint());
    bytes.extend_from_slice(after.as_uuid().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads a token produced by [`encode_page_token`] for the same query.
pub fn decode_page_token(token: &str, query: &PointerQuery) -> Result<PointerId, &'static str> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| "is not a page token from this service")?;
    if bytes.len() != 25 || bytes[0] != TOKEN_VERSION {
        return Err("is not a page token from this service");
    }
    if bytes[1..9] != query.fingerprint() {
        return Err("belongs to a different query: repeat the query it came from");
    }
    let uuid = Uuid::from_slice(&bytes[9..]).map_err(|_| "is not a page token from this service")?;
    Ok(PointerId::from_uuid(uuid))
}

#[cfg(test)]
mod tests;
