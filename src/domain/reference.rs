//! The reference data every request is validated against: the region directory and the pointer-type
//! catalogue (both data files operators can replace, `NRL_REGIONS` / `NRL_POINTER_TYPES`).

use super::{PointerTypeCatalogue, RegionDirectory};

#[derive(Clone, Debug)]
pub struct ReferenceData {
    pub regions: RegionDirectory,
    pub pointer_types: PointerTypeCatalogue,
}

impl Default for ReferenceData {
    fn default() -> Self {
        Self { regions: RegionDirectory::default_directory(), pointer_types: PointerTypeCatalogue::default_catalogue() }
    }
}
