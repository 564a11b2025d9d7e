use super::*;
use proptest::prelude::*;

#[test]
fn accepts_valid_numbers_in_every_written_form() {
    for (input, canonical) in [
        ("9434765919", "9434765919"),
        ("943 476 5919", "9434765919"),
        ("943-476-5919", "9434765919"),
        (" 4010232137 ", "4010232137"),
        ("9990000018", "9990000018"),
        // Check value 11 becomes check digit 0.
        ("9990000050", "9990000050"),
    ] {
        let parsed = NhsNumber::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(parsed.to_string(), canonical, "{input}");
    }
}

#[test]
fn rejects_invalid_numbers_with_the_reason() {
    for (input, expected) in [
        ("", NhsNumberError::Empty),
        ("   ", NhsNumberError::Empty),
        ("943476591", NhsNumberError::Format),
        ("94347659199", NhsNumberError::Format),
        ("94347659l9", NhsNumberError::Format),
        ("943.476.5919", NhsNumberError::Format),
        ("+9434765919", NhsNumberError::Format),
        ("９４３４７６５９１９", NhsNumberError::Format),
        ("9434765918", NhsNumberError::CheckDigit),
        ("9434765910", NhsNumberError::CheckDigit),
        // 999000000 has check value 10: no valid number starts with it.
        ("9990000000", NhsNumberError::CheckDigit),
    ] {
        assert_eq!(NhsNumber::parse(input), Err(expected), "{input:?}");
    }
}

#[test]
fn from_prefix_completes_or_refuses() {
    assert_eq!(NhsNumber::from_prefix(943_476_591).map(|n| n.to_string()), Some("9434765919".into()));
    assert_eq!(NhsNumber::from_prefix(999_000_000), None);
    assert_eq!(NhsNumber::from_prefix(1_000_000_000), None);
    assert_eq!(NhsNumber::from_prefix(1).map(|n| n.to_string()).as_deref(), Some("0000000019"));
}

#[test]
fn test_range_is_recognised() {
    assert!(NhsNumber::parse("9990000018").map(NhsNumber::is_test_number).unwrap_or(false));
    assert!(!NhsNumber::parse("9434765919").map(NhsNumber::is_test_number).unwrap_or(true));
}

#[test]
fn debug_hides_the_number() {
    let n = NhsNumber::parse("9434765919").expect("valid");
    assert!(!format!("{n:?}").contains("943"));
}

proptest! {
    #[test]
    fn parse_of_format_round_trips(prefix in 0u64..=999_999_999) {
        if let Some(n) = NhsNumber::from_prefix(prefix) {
            prop_assert_eq!(NhsNumber::parse(&n.to_string()), Ok(n));
            let s = n.to_string();
            let spaced = format!("{} {} {}", &s[..3], &s[3..6], &s[6..]);
            prop_assert_eq!(NhsNumber::parse(&spaced), Ok(n));
        }
    }

    #[test]
    fn every_prefix_has_at_most_one_valid_check_digit(prefix in 0u64..=999_999_999) {
        let valid = (0..10u64)
            .filter(|d| NhsNumber::parse(&format!("{:010}", prefix * 10 + d)).is_ok())
            .count();
        prop_assert!(valid <= 1, "prefix {prefix:09} has {valid} valid check digits");
        prop_assert_eq!(valid == 1, NhsNumber::from_prefix(prefix).is_some());
    }

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,40}") {
        let _ = NhsNumber::parse(&s);
    }
}

proptest! {
    #[test]
    fn to_digits_is_the_display_text(prefix in 0u64..=999_999_999) {
        if let Some(nhs) = NhsNumber::from_prefix(prefix) {
            prop_assert_eq!(nhs.to_digits(), nhs.to_string());
        }
    }
}
