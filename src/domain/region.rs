//! Regions (ICB areas and nations) and the directory that names them.
//!
//! The directory is data, not code: the default ships in `data/regions.json` and operators replace it
//! with their own file (`NRL_REGIONS`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The region-directory endpoint purpose that names a region's registry node.
pub const LOCATOR_ENDPOINT: &str = "record-locator";

/// A region code as found in the directory: 2 to 12 upper-case letters or digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionCode(String);

impl RegionCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }

    /// A well-formed code; whether the directory knows it is [`RegionDirectory::parse_code`]'s business.
    pub fn parse(input: &str) -> Option<Self> {
        let code = input.trim().to_ascii_uppercase();
        let ok = (2..=12).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then_some(Self(code))
    }
}

impl fmt::Display for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// An Integrated Care Board area in England.
    Icb,
    /// Scotland, Wales or Northern Ireland.
    Nation,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub purpose: String,
    pub url: String,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Region {
    pub code: RegionCode,
    pub name: String,
    pub kind: RegionKind,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    #[error("is required")]
    Empty,
    #[error("is not a region in the directory (see ListRegions)")]
    Unknown,
}

/// Why a directory file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("region directory is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("region directory: {0}")]
    Invalid(String),
}

/// The regions this service knows, by code.
#[derive(Clone, Debug)]
pub struct RegionDirectory {
    regions: BTreeMap<RegionCode, Region>,
}

#[derive(Deserialize)]
struct DirectoryFile {
    regions: Vec<Region>,
}

const DEFAULT_DIRECTORY: &str = include_str!("data/regions.json");

impl RegionDirectory {
    /// England's 42 ICBs plus Scotland, Wales and Northern Ireland.
    pub fn default_directory() -> Self {
        // The shipped file is checked by a unit test, so this cannot fail in a released build.
        Self::from_json(DEFAULT_DIRECTORY).unwrap_or_else(|e| panic!("bundled regions.json: {e}"))
    }

    /// Loads `{"regions": [{"code", "name", "kind", "endpoints": [{"purpose", "url"}]}]}`.
    pub fn from_json(json: &str) -> Result<Self, DirectoryError> {
        let file: DirectoryFile = serde_json::from_str(json)?;
        let mut regions = BTreeMap::new();
        for mut region in file.regions {
            let code = RegionCode::parse(region.code.as_str()).ok_or_else(|| {
                DirectoryError::Invalid(format!("code {:?} must be 2-12 letters or digits", region.code.as_str()))
            })?;
            if region.name.trim().is_empty() {
                return Err(DirectoryError::Invalid(format!("region {code} has no name")));
            }
            region.code = code.clone();
            if regions.insert(code.clone(), region).is_some() {
                return Err(DirectoryError::Invalid(format!("region {code} is listed twice")));
            }
        }
        if regions.is_empty() {
            return Err(DirectoryError::Invalid("no regions".into()));
        }
        Ok(Self { regions })
    }

    /// Resolves a caller-supplied code (case-insensitive) to a known region code.
    pub fn parse_code(&self, input: &str) -> Result<RegionCode, RegionError> {
        if input.trim().is_empty() {
            return Err(RegionError::Empty);
        }
        RegionCode::parse(input).filter(|code| self.regions.contains_key(code)).ok_or(RegionError::Unknown)
    }

    pub fn get(&self, code: &RegionCode) -> Option<&Region> {
        self.regions.get(code)
    }

    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }

    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_directory_has_42_icbs_and_3_nations() {
        let dir = RegionDirectory::default_directory();
        let icbs = dir.regions().filter(|r| r.kind == RegionKind::Icb).count();
        let nations = dir.regions().filter(|r| r.kind == RegionKind::Nation).count();
        assert_eq!((icbs, nations), (42, 3));
        for region in dir.regions() {
            assert!(!region.endpoints.is_empty(), "{} has no endpoint", region.code);
        }
        for (code, name) in [
            ("QWE", "NHS South West London Integrated Care Board"),
            ("QOP", "NHS Greater Manchester Integrated Care Board"),
            ("QWO", "NHS West Yorkshire Integrated Care Board"),
        ] {
            let code = dir.parse_code(code).expect("known");
            assert_eq!(dir.get(&code).map(|r| r.name.as_str()), Some(name));
        }
    }

    #[test]
    fn codes_are_case_insensitive_and_must_exist() {
        let dir = RegionDirectory::default_directory();
        assert_eq!(dir.parse_code("qwo").map(|c| c.to_string()), Ok("QWO".into()));
        assert_eq!(dir.parse_code("SCT").map(|c| c.to_string()), Ok("SCT".into()));
        assert_eq!(dir.parse_code(""), Err(RegionError::Empty));
        assert_eq!(dir.parse_code("QZZ"), Err(RegionError::Unknown));
        assert_eq!(dir.parse_code("Q W O"), Err(RegionError::Unknown));
    }

    #[test]
    fn operator_files_are_checked() {
        let ok = r#"{"regions":[{"code":"r1","name":"Test region","kind":"icb"}]}"#;
        let dir = RegionDirectory::from_json(ok).expect("valid");
        assert_eq!(dir.parse_code("R1").map(|c| c.to_string()), Ok("R1".into()));
        for bad in [
            r#"{"regions":[]}"#,
            r#"{"regions":[{"code":"R1","name":"","kind":"icb"}]}"#,
            r#"{"regions":[{"code":"R-1","name":"x","kind":"icb"}]}"#,
            r#"{"regions":[{"code":"R1","name":"x","kind":"icb"},{"code":"r1","name":"y","kind":"icb"}]}"#,
            r#"{"regions":[{"code":"R1","name":"x","kind":"county"}]}"#,
            "not json",
        ] {
            assert!(RegionDirectory::from_json(bad).is_err(), "{bad}");
        }
    }
}
