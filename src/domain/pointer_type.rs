//! The pointer-type catalogue: which SNOMED CT types a pointer may have and the one category each
//! belongs to. Data, not code: the default ships in `data/pointer_types.json` and operators may
//! load their own (`NRL_POINTER_TYPES`) when NRL publishes new types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A SNOMED CT code with its display text.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Coding {
    pub code: String,
    pub display: String,
}

/// A catalogued pointer type with its category.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PointerType {
    pub coding: Coding,
    pub category: Coding,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerTypeError {
    #[error("is required")]
    Empty,
    #[error("is not a pointer type in the catalogue (see ListPointerTypes)")]
    Unknown,
    #[error("is not a category in the catalogue")]
    UnknownCategory,
    #[error("does not match the type's category {expected}")]
    CategoryMismatch { expected: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("pointer-type catalogue is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pointer-type catalogue: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
pub struct PointerTypeCatalogue {
    types: BTreeMap<String, PointerType>,
    categories: BTreeMap<String, Coding>,
    /// The same types by the number their code spells (the Redis store keeps a type as that
    /// number), for every code that is exactly that number's decimal text.
    by_number: BTreeMap<u64, PointerType>,
}

#[derive(Deserialize)]
struct CatalogueFile {
    categories: Vec<Coding>,
    types: Vec<TypeEntry>,
}

#[derive(Deserialize)]
struct TypeEntry {
    code: String,
    display: String,
    category: String,
}

const DEFAULT_CATALOGUE: &str = include_str!("data/pointer_types.json");

/// A SNOMED CT concept id as the registry takes one: 6 to 18 digits.
pub fn is_snomed_code(code: &str) -> bool {
    (6..=super::limits::MAX_CODE_LEN).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())
}

impl PointerTypeCatalogue {
    pub fn default_catalogue() -> Self {
        // The shipped file is checked by a unit test.
        Self::from_json(DEFAULT_CATALOGUE).unwrap_or_else(|e| panic!("bundled pointer_types.json: {e}"))
    }

    pub fn from_json(json: &str) -> Result<Self, CatalogueError> {
        let file: CatalogueFile = serde_json::from_str(json)?;
        let mut categories = BTreeMap::new();
        for cat in file.categories {
            if !is_snomed_code(&cat.code) || cat.display.trim().is_empty() {
                return Err(CatalogueError::Invalid(format!("bad category {:?}", cat.code)));
            }
            categories.insert(cat.code.clone(), cat);
        }
        let mut types = BTreeMap::new();
        for entry in file.types {
            if !is_snomed_code(&entry.code) || entry.display.trim().is_empty() {
                return Err(CatalogueError::Invalid(format!("bad type {:?}", entry.code)));
            }
            let category = categories.get(&entry.category).cloned().ok_or_else(|| {
                CatalogueError::Invalid(format!("type {} names unknown category {}", entry.code, entry.category))
            })?;
            let ty = PointerType { coding: Coding { code: entry.code.clone(), display: entry.display }, category };
            if types.insert(entry.code.clone(), ty).is_some() {
                return Err(CatalogueError::Invalid(format!("type {} is listed twice", entry.code)));
            }
        }
        if types.is_empty() {
            return Err(CatalogueError::Invalid("no types".into()));
        }
        let by_number = types
            .iter()
            .filter_map(|(code, ty)| {
                code.parse::<u64>().ok().filter(|n| n.to_string() == *code).map(|n| (n, ty.clone()))
            })
            .collect();
        Ok(Self { types, categories, by_number })
    }

    pub fn pointer_type(&self, code: &str) -> Result<&PointerType, PointerTypeError> {
        let code = code.trim();
        if code.is_empty() {
            return Err(PointerTypeError::Empty);
        }
        self.types.get(code).ok_or(PointerTypeError::Unknown)
    }

    /// The catalogued type whose code is `number`'s decimal text: `pointer_type(&number.to_string())`
    /// without writing the text.
    pub fn pointer_type_by_number(&self, number: u64) -> Option<&PointerType> {
        self.by_number.get(&number)
    }

    /// Checks an explicit category against the type's; empty means "take the type's".
    pub fn check_category(&self, ty: &PointerType, category: &str) -> Result<(), PointerTypeError> {
        let category = category.trim();
        if category.is_empty() || category == ty.category.code {
            return Ok(());
        }
        if !self.categories.contains_key(category) {
            return Err(PointerTypeError::UnknownCategory);
        }
        Err(PointerTypeError::CategoryMismatch { expected: ty.category.code.clone() })
    }

    pub fn category(&self, code: &str) -> Result<&Coding, PointerTypeError> {
        let code = code.trim();
        if code.is_empty() {
            return Err(PointerTypeError::Empty);
        }
        self.categories.get(code).ok_or(PointerTypeError::UnknownCategory)
    }

    pub fn types(&self) -> impl Iterator<Item = &PointerType> {
        self.types.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalogue_pairs_every_type_with_its_category() {
        let cat = PointerTypeCatalogue::default_catalogue();
        assert_eq!(cat.types().count(), 14);
        for (ty, category) in [
            ("736253002", "734163000"),
            ("887701000000100", "734163000"),
            ("1382601000000107", "734163000"),
            ("1363501000000100", "1102421000000108"),
            ("824321000000109", "823651000000106"),
            ("749001000000101", "419891008"),
            ("887181000000106", "716931000000107"),
        ] {
            let t = cat.pointer_type(ty).expect("catalogued");
            assert_eq!(t.category.code, category, "{ty}");
            assert_eq!(cat.check_category(t, category), Ok(()));
            assert_eq!(cat.check_category(t, ""), Ok(()));
        }
    }

    #[test]
    fn a_type_by_number_is_the_type_its_decimal_text_names() {
        let cat = PointerTypeCatalogue::default_catalogue();
        for ty in cat.types() {
            let number: u64 = ty.coding.code.parse().expect("a SNOMED code is a number");
            assert_eq!(cat.pointer_type_by_number(number), Some(ty));
        }
        assert_eq!(cat.pointer_type_by_number(1), None);
        // A code with a leading zero is not the text of its number, so only the text finds it.
        let json = r#"{"categories":[{"code":"734163000","display":"Care plan"}],
            "types":[{"code":"0736253002","display":"Mental health crisis plan","category":"734163000"}]}"#;
        let padded = PointerTypeCatalogue::from_json(json).expect("valid");
        assert!(padded.pointer_type("0736253002").is_ok());
        assert_eq!(padded.pointer_type_by_number(736253002), None);
    }

    #[test]
    fn unknown_types_and_mismatched_categories_are_rejected() {
        let cat = PointerTypeCatalogue::default_catalogue();
        assert_eq!(cat.pointer_type("").err(), Some(PointerTypeError::Empty));
        assert_eq!(cat.pointer_type("123456789").err(), Some(PointerTypeError::Unknown));
        let crisis = cat.pointer_type("736253002").expect("catalogued");
        assert_eq!(
            cat.check_category(crisis, "419891008"),
            Err(PointerTypeError::CategoryMismatch { expected: "734163000".into() })
        );
        assert_eq!(cat.check_category(crisis, "999999999"), Err(PointerTypeError::UnknownCategory));
    }

    #[test]
    fn operator_catalogues_are_checked() {
        let ok = r#"{"categories":[{"code":"734163000","display":"Care plan"}],
                     "types":[{"code":"736253002","display":"Crisis plan","category":"734163000"}]}"#;
        assert!(PointerTypeCatalogue::from_json(ok).is_ok());
        let unknown_cat = r#"{"categories":[],"types":[{"code":"736253002","display":"x","category":"1"}]}"#;
        assert!(PointerTypeCatalogue::from_json(unknown_cat).is_err());
        let bad_code = r#"{"categories":[{"code":"734163000","display":"Care plan"}],
                     "types":[{"code":"abc","display":"x","category":"734163000"}]}"#;
        assert!(PointerTypeCatalogue::from_json(bad_code).is_err());
    }
}
