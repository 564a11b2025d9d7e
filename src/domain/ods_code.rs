//! ODS codes: the Organisation Data Service identifiers of NHS organisations.

use std::fmt;

/// An ODS code: 3 to 12 ASCII letters or digits, stored upper case, optionally followed by a dot and
/// a sub-organisation suffix of the same form (`RJ1`, `Y05868`, `8JD29`, `ABC.XYZ`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OdsCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OdsCodeError {
    #[error("is required")]
    Empty,
    #[error("must be 3 to 12 letters or digits, optionally followed by .SUFFIX")]
    Format,
    /// The code before the dot is fine; the sub-organisation suffix is not (`RR8.X1`, `RR8.`).
    #[error("the .SUFFIX after the organisation code must also be 3 to 12 letters or digits (e.g. RR8.ABC)")]
    Suffix,
}

const MIN_PART: usize = 3;
const MAX_PART: usize = 12;

impl OdsCode {
    pub fn parse(input: &str) -> Result<Self, OdsCodeError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(OdsCodeError::Empty);
        }
        let (main, suffix) = match trimmed.split_once('.') {
            Some((main, suffix)) => (main, Some(suffix)),
            None => (trimmed, None),
        };
        let part_ok =
            |part: &str| (MIN_PART..=MAX_PART).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric());
        if !part_ok(main) {
            return Err(OdsCodeError::Format);
        }
        if suffix.is_some_and(|s| !part_ok(s)) {
            return Err(OdsCodeError::Suffix);
        }
        Ok(Self(trimmed.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_upper_cases_real_codes() {
        for (input, canonical) in [
            ("RJ1", "RJ1"),
            ("Y05868", "Y05868"),
            ("8JD29", "8JD29"),
            ("X26", "X26"),
            ("rj1", "RJ1"),
            ("ABC.XYZ", "ABC.XYZ"),
            ("abc.xyz1", "ABC.XYZ1"),
            ("ABCDEFGHIJKL", "ABCDEFGHIJKL"),
        ] {
            assert_eq!(OdsCode::parse(input).map(|c| c.to_string()), Ok(canonical.to_string()), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_codes() {
        for (input, expected) in [
            ("", OdsCodeError::Empty),
            ("AB", OdsCodeError::Format),
            ("ABCDEFGHIJKLM", OdsCodeError::Format),
            ("RJ-1", OdsCodeError::Format),
            ("RJ1.", OdsCodeError::Suffix),
            (".RJ1", OdsCodeError::Format),
            ("RJ1.X", OdsCodeError::Suffix),
            ("RR8.X1", OdsCodeError::Suffix),
            ("RJ1.ABC.DEF", OdsCodeError::Suffix),
            ("R J1", OdsCodeError::Format),
            ("ÅBC", OdsCodeError::Format),
        ] {
            assert_eq!(OdsCode::parse(input), Err(expected), "{input:?}");
        }
    }
}
