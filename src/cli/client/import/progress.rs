//! What `nrl import` shows while it runs, on stderr: a bar redrawn in place when stderr is a
//! terminal, a plain line every few seconds otherwise (a log file, CI). Only counts, rates and times
//! appear, never anything read from the file.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the bar is redrawn on a terminal.
pub const REDRAW: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 24;

/// How far the import is: lines whose outcome is known, and the bytes of the file they cover.
#[derive(Clone, Copy, Debug, Default)]
pub struct Done {
    pub lines: u64,
    pub bytes: u64,
}

/// The figures a progress line shows.
#[derive(Debug, PartialEq)]
pub struct Figures {
    /// Share of the file done, when its size is known (not for stdin).
    pub fraction: Option<f64>,
    pub lines_per_second: f64,
    pub eta: Option<Duration>,
}

impl Figures {
    /// The ETA assumes the rest of the file goes at the pace so far, measured in bytes: the file's
    /// size is known from the start, its line count only at the end.
    pub fn of(done: Done, total_bytes: Option<u64>, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let lines_per_second = if secs > 0.0 { done.lines as f64 / secs } else { 0.0 };
        let fraction = total_bytes.filter(|&t| t > 0).map(|t| (done.bytes as f64 / t as f64).min(1.0));
        let eta = fraction.filter(|&f| f > 0.0).map(|f| Duration::from_secs_f64(secs * (1.0 - f) / f));
        Self { fraction, lines_per_second, eta }
    }
}

/// `1:02:03`, `4:05`, `7 s`.
pub fn clock(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m}:{s:02}"),
        (h, m, s) => format!("{h}:{m:02}:{s:02}"),
    }
}

fn bar(fraction: f64) -> String {
    let filled = ((fraction * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

/// The redrawn terminal line.
pub fn bar_line(done: Done, figures: &Figures) -> String {
    let mut text = match figures.fraction {
        Some(f) => format!("{} {:>3.0}%  ", bar(f), f * 100.0),
        None => String::new(),
    };
    text += &format!("{} lines  {:.0} lines/s", done.lines, figures.lines_per_second);
    if let Some(eta) = figures.eta {
        text += &format!("  ETA {}", clock(eta));
    }
    text
}

/// The periodic line for a non-terminal.
pub fn plain_line(done: Done, figures: &Figures) -> String {
    let mut text = format!("nrl import: {} lines done", done.lines);
    if let Some(f) = figures.fraction {
        text += &format!(" ({:.0}%)", f * 100.0);
    }
    text += &format!(", {:.0} lines/s", figures.lines_per_second);
    if let Some(eta) = figures.eta {
        text += &format!(", ETA {}", clock(eta));
    }
    text
}

/// Owns stderr while the import runs, so notes and the bar do not overwrite each other.
pub struct Progress {
    terminal: bool,
    total_bytes: Option<u64>,
    started: Instant,
    every: Duration,
    last_plain: Instant,
    drawn: bool,
}

impl Progress {
    /// `every`: the interval between plain lines.
    pub fn new(total_bytes: Option<u64>, every: Duration) -> Self {
        let now = Instant::now();
        Self {
            terminal: std::io::stderr().is_terminal(),
            total_bytes,
            started: now,
            every,
            last_plain: now,
            drawn: false,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Called every `REDRAW`: redraws the bar, or prints a plain line when one is due.
    pub fn tick(&mut self, done: Done) {
        let figures = Figures::of(done, self.total_bytes, self.elapsed());
        if self.terminal {
            self.write(&format!("\r\x1b[2K{}", bar_line(done, &figures)));
            self.drawn = true;
        } else if self.last_plain.elapsed() >= self.every {
            self.last_plain = Instant::now();
            self.write(&format!("{}\n", plain_line(done, &figures)));
        }
    }

    /// A line of its own (a warning), above the bar.
    pub fn note(&mut self, text: &str) {
        self.clear();
        self.write(&format!("{text}\n"));
    }

    /// Removes the bar, before the summary.
    pub fn clear(&mut self) {
        if self.drawn {
            self.write("\r\x1b[2K");
            self.drawn = false;
        }
    }

    /// If stderr is gone there is nowhere left to report that.
    fn write(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes()).and_then(|()| stderr.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_share_and_eta_come_from_lines_bytes_and_time() {
        let done = Done { lines: 5_000, bytes: 250 };
        let figures = Figures::of(done, Some(1_000), Duration::from_secs(10));
        assert_eq!(figures.fraction, Some(0.25));
        assert_eq!(figures.lines_per_second, 500.0);
        assert_eq!(figures.eta, Some(Duration::from_secs(30)), "three quarters left at the same pace");
        assert_eq!(bar_line(done, &figures), "[######------------------]  25%  5000 lines  500 lines/s  ETA 30 s");
        assert_eq!(plain_line(done, &figures), "nrl import: 5000 lines done (25%), 500 lines/s, ETA 30 s");

        let unknown_size = Figures::of(done, None, Duration::from_secs(10));
        assert_eq!(unknown_size.fraction, None);
        assert_eq!(unknown_size.eta, None);
        assert_eq!(plain_line(done, &unknown_size), "nrl import: 5000 lines done, 500 lines/s");
        let at_start = Figures::of(Done::default(), Some(1_000), Duration::ZERO);
        assert_eq!((at_start.lines_per_second, at_start.eta), (0.0, None));
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(clock(Duration::from_secs(7)), "7 s");
        assert_eq!(clock(Duration::from_secs(245)), "4:05");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
