//! NHS numbers: ten digits, the last a Modulus 11 check digit.

use std::fmt;

/// A valid NHS number. It can only be built through [`NhsNumber::parse`] or
/// [`NhsNumber::from_prefix`], so holding one means the check digit is right.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(u64);

/// Why a string is not an NHS number. The text is shown to callers after the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("is required")]
    Empty,
    #[error("must be 10 digits (spaces or dashes allowed between them)")]
    Format,
    #[error("has an invalid check digit")]
    CheckDigit,
}

/// The synthetic test range: 999 000 0000 to 999 999 9999. Test and load data use it.
pub const TEST_RANGE: std::ops::RangeInclusive<u64> = 9_990_000_000..=9_999_999_999;

impl NhsNumber {
    /// Parses `9434765919`, `943 476 5919` or `943-476-5919`.
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(NhsNumberError::Empty);
        }
        let mut digits = [0u8; 10];
        let mut count = 0;
        for c in trimmed.chars() {
            match c {
                '0'..='9' => {
                    if count == 10 {
                        return Err(NhsNumberError::Format);
                    }
                    digits[count] = c as u8 - b'0';
                    count += 1;
                }
                ' ' | '-' => {}
                _ => return Err(NhsNumberError::Format),
            }
        }
        if count != 10 {
            return Err(NhsNumberError::Format);
        }
        let mut prefix = [0u8; 9];
        prefix.copy_from_slice(&digits[..9]);
        match check_digit(&prefix) {
            Some(check) if check == digits[9] => Ok(Self(to_number(&digits))),
            _ => Err(NhsNumberError::CheckDigit),
        }
    }

    /// The ten digits `Display` gives, without the formatting machinery.
    pub fn to_digits(&self) -> String {
        let mut digits = [b'0'; 10];
        let mut rest = self.0;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        digits.iter().map(|&d| char::from(d)).collect()
    }

    /// Completes a 9-digit prefix (0..=999_999_999) with its check digit, or `None` where the
    /// prefix has none (check value 10) or is out of range.
    pub fn from_prefix(prefix: u64) -> Option<Self> {
        if prefix > 999_999_999 {
            return None;
        }
        let mut digits = [0u8; 9];
        let mut rest = prefix;
        for d in digits.iter_mut().rev() {
            *d = (rest % 10) as u8;
            rest /= 10;
        }
        check_digit(&digits).map(|check| Self(prefix * 10 + u64::from(check)))
    }

    /// The ten digits as one number (leading zeros are possible, so format with [`fmt::Display`]).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// True for the synthetic range reserved for testing.
    pub fn is_test_number(self) -> bool {
        TEST_RANGE.contains(&self.0)
    }
}

/// Modulus 11: weights 10..=2 over the first nine digits; 11 - (sum mod 11); 11 maps to 0 and 10
/// means no valid number exists with this prefix.
fn check_digit(prefix: &[u8; 9]) -> Option<u8> {
    let sum: u32 = prefix.iter().zip((2..=10).rev()).map(|(d, w)| u32::from(*d) * w).sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

fn to_number(digits: &[u8; 10]) -> u64 {
    digits.iter().fold(0, |n, d| n * 10 + u64::from(*d))
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}", self.0)
    }
}

/// Debug never prints the number: NHS numbers must stay out of logs.
impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(***)")
    }
}

#[cfg(test)]
mod tests;
