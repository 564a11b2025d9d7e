//! LocatePatient's answer: which regions hold a patient's current pointers, computed from the
//! patient's pointers (one store round trip).

use super::{Coding, Pointer, RegionCode};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegionSummary {
    pub region: RegionCode,
    /// Pointer types with their counts, most frequent first (ties by code).
    pub counts: Vec<(Coding, u32)>,
    pub total: u32,
    pub last_updated: DateTime<Utc>,
}

/// Per region: counts by type code, and the latest update.
type Accumulator<'a> = (BTreeMap<&'a str, (Coding, u32)>, DateTime<Utc>);

/// Groups current pointers by region; regions most recently updated first.
pub fn summarise_regions(pointers: &[Pointer]) -> Vec<RegionSummary> {
    summarise(
        pointers
            .iter()
            .filter(|p| p.is_current())
            .map(|p| (&p.draft.region, &p.draft.pointer_type.coding, p.updated_at)),
    )
}

/// Groups (region, type, last update) of current pointers by region; regions most recently
/// updated first. Used over a node's own pointers and over the national index alike.
pub fn summarise<'a>(items: impl Iterator<Item = (&'a RegionCode, &'a Coding, DateTime<Utc>)>) -> Vec<RegionSummary> {
    let mut by_region: BTreeMap<&RegionCode, Accumulator> = BTreeMap::new();
    for (region, ty, updated_at) in items {
        let entry = by_region.entry(region).or_insert_with(|| (BTreeMap::new(), updated_at));
        entry.0.entry(ty.code.as_str()).or_insert_with(|| (ty.clone(), 0)).1 += 1;
        entry.1 = entry.1.max(updated_at);
    }
    let mut summaries: Vec<RegionSummary> = by_region
        .into_iter()
        .map(|(region, (types, last_updated))| {
            let mut counts: Vec<(Coding, u32)> = types.into_values().collect();
            counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.code.cmp(&b.0.code)));
            let total = counts.iter().map(|(_, n)| n).sum();
            RegionSummary { region: region.clone(), counts, total, last_updated }
        })
        .collect();
    summaries.sort_by(|a, b| b.last_updated.cmp(&a.last_updated).then_with(|| a.region.cmp(&b.region)));
    summaries
}
