//! What the privacy tests look for in logs, headers and scrapes.

/// Ten digits in a row once the separators `. - : _ / space` are ignored: an NHS number written
/// in any of the usual ways (`9434765919`, `943 476 5919`, `943-476-5919`, `nhs:943_476_5919`).
/// Returns each run found.
pub fn digit_runs(text: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut run = String::new();
    let mut flush = |run: &mut String| {
        if run.chars().filter(char::is_ascii_digit).count() >= 10 {
            runs.push(run.trim_matches(|c: char| !c.is_ascii_digit()).to_string());
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || (".-:_/ ".contains(c) && !run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run);
        }
    }
    flush(&mut run);
    runs
}
