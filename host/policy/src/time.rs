//! Composer's time: units, time strings (`"500ba"`, `"0.25dur"`, `"1h30m"`), and the
//! [`Timestamp`] a trainer advances batch by batch.
//!
//! The grammar follows Composer's `Time.from_timestring` (reference §5.1) with three deliberate
//! differences, listed in the README: a bare number or an empty string is an error (Composer
//! reads `"1"` as ten seconds and `""` as zero), a wall-clock string must be complete (`"1h5"`
//! is not `1h0m50s`), and values must fit in 64 bits (`"1e100ba"`) and be finite (`"infdur"`).

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use thiserror::Error;

use crate::pyrepr::float_repr;

/// The unit of a [`Time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// `iter`: trainer iterations (a configured number of epochs each).
    Iteration,
    /// `ep`: completed epochs.
    Epoch,
    /// `ba`: completed batches (optimizer steps).
    Batch,
    /// `sp`: samples.
    Sample,
    /// `tok`: tokens.
    Token,
    /// `dur`: a fraction of `max_duration`.
    Duration,
    /// `sec`: wall-clock seconds of training.
    Second,
}

impl TimeUnit {
    /// The suffix Composer writes (`ba`, `ep`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            TimeUnit::Iteration => "iter",
            TimeUnit::Epoch => "ep",
            TimeUnit::Batch => "ba",
            TimeUnit::Sample => "sp",
            TimeUnit::Token => "tok",
            TimeUnit::Duration => "dur",
            TimeUnit::Second => "sec",
        }
    }

    fn from_suffix(s: &str) -> Option<TimeUnit> {
        Some(match s.to_ascii_lowercase().as_str() {
            "iter" => TimeUnit::Iteration,
            "ep" => TimeUnit::Epoch,
            "ba" => TimeUnit::Batch,
            "sp" => TimeUnit::Sample,
            "tok" => TimeUnit::Token,
            "dur" => TimeUnit::Duration,
            "sec" => TimeUnit::Second,
            _ => return None,
        })
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// An amount of training time. Every unit but `dur` counts whole things, so only `dur` carries
/// a float: a fractional batch count cannot be represented.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Time {
    /// Whole units of a counting unit (any unit but [`TimeUnit::Duration`]).
    Count(i64, CountUnit),
    /// A fraction of `max_duration` (`0.25dur`).
    Fraction(f64),
}

/// The units that count whole things: every [`TimeUnit`] except `dur`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CountUnit {
    /// `iter`
    Iteration,
    /// `ep`
    Epoch,
    /// `ba`
    Batch,
    /// `sp`
    Sample,
    /// `tok`
    Token,
    /// `sec`
    Second,
}

impl From<CountUnit> for TimeUnit {
    fn from(u: CountUnit) -> TimeUnit {
        match u {
            CountUnit::Iteration => TimeUnit::Iteration,
            CountUnit::Epoch => TimeUnit::Epoch,
            CountUnit::Batch => TimeUnit::Batch,
            CountUnit::Sample => TimeUnit::Sample,
            CountUnit::Token => TimeUnit::Token,
            CountUnit::Second => TimeUnit::Second,
        }
    }
}

impl CountUnit {
    fn from_unit(u: TimeUnit) -> Option<CountUnit> {
        Some(match u {
            TimeUnit::Iteration => CountUnit::Iteration,
            TimeUnit::Epoch => CountUnit::Epoch,
            TimeUnit::Batch => CountUnit::Batch,
            TimeUnit::Sample => CountUnit::Sample,
            TimeUnit::Token => CountUnit::Token,
            TimeUnit::Second => CountUnit::Second,
            TimeUnit::Duration => return None,
        })
    }
}

impl Time {
    /// `n` epochs: what an integer `save_interval` means.
    pub fn epochs(n: i64) -> Time {
        Time::Count(n, CountUnit::Epoch)
    }

    /// `n` batches.
    pub fn batches(n: i64) -> Time {
        Time::Count(n, CountUnit::Batch)
    }

    /// The unit.
    pub fn unit(&self) -> TimeUnit {
        match self {
            Time::Count(_, u) => (*u).into(),
            Time::Fraction(_) => TimeUnit::Duration,
        }
    }

    /// The value as a float (what Composer divides by).
    pub fn value_f64(&self) -> f64 {
        match self {
            Time::Count(n, _) => *n as f64,
            Time::Fraction(f) => *f,
        }
    }
}

impl fmt::Display for Time {
    /// Composer's `str(Time)`: `500ba`, `0.5dur`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Time::Count(n, u) => write!(f, "{n}{}", TimeUnit::from(*u)),
            Time::Fraction(x) => write!(f, "{}dur", float_repr(*x)),
        }
    }
}

/// Why a string is not a time string. Each message names the string.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum TimeError {
    /// `""`
    #[error(
        "an empty string is not a time string: write a number and a unit, e.g. '1ep' or '500ba'"
    )]
    Empty,
    /// `"1"`, `"12"`: Composer would read these as seconds (`"1"` = 10 s); cairn refuses.
    #[error(
        "'{0}' has no unit: write e.g. '{0}ep' or '{0}ba' (a bare number is not a time string)"
    )]
    BareNumber(String),
    /// No unit suffix and not a wall-clock string.
    #[error(
        "invalid time string '{0}': expected a number and a unit (iter, ep, ba, sp, tok, dur, sec) or a clock time like '1h30m'"
    )]
    Invalid(String),
    /// The part before the unit is not a number.
    #[error("invalid time string '{0}': '{1}' is not a number")]
    NotANumber(String, String),
    /// `1.5ba`: counting units take whole numbers.
    #[error("invalid time string '{0}': {1} must be a whole number of {2}")]
    NotIntegral(String, String, TimeUnit),
    /// `1e100ba`, `infdur`.
    #[error("invalid time string '{0}': the value is out of range")]
    OutOfRange(String),
}

static WALL_CLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(\d{1,2})h)?(?:(\d{1,2})m)?(?:(\d{1,2})s)?$").expect("static regex")
});
static WITH_UNIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(.+)(iter|ep|ba|sp|tok|dur|sec)$").expect("static regex"));

impl FromStr for Time {
    type Err = TimeError;

    /// Parse a Composer time string (reference §5.1, with the strict differences above).
    fn from_str(s: &str) -> Result<Time, TimeError> {
        if s.is_empty() {
            return Err(TimeError::Empty);
        }
        if let Some(t) = parse_wall_clock(s) {
            return Ok(t);
        }
        // Python's `$` also matches before one trailing newline.
        let body = s.strip_suffix('\n').unwrap_or(s);
        let Some(caps) = WITH_UNIT.captures(body) else {
            let digits = s.trim();
            return Err(
                if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    TimeError::BareNumber(digits.to_owned())
                } else {
                    TimeError::Invalid(s.to_owned())
                },
            );
        };
        let number = &caps[1];
        let unit = TimeUnit::from_suffix(&caps[2]).expect("regex only matches known units");
        let value = parse_python_float(number)
            .ok_or_else(|| TimeError::NotANumber(s.to_owned(), number.to_owned()))?;
        match CountUnit::from_unit(unit) {
            None if value.is_finite() => Ok(Time::Fraction(value)),
            None => Err(TimeError::OutOfRange(s.to_owned())),
            Some(count) => {
                if value.is_finite() && value.fract() != 0.0 {
                    return Err(TimeError::NotIntegral(
                        s.to_owned(),
                        number.trim().to_owned(),
                        unit,
                    ));
                }
                if !value.is_finite() || value.abs() >= 9.2e18 {
                    return Err(TimeError::OutOfRange(s.to_owned()));
                }
                Ok(Time::Count(value as i64, count))
            }
        }
    }
}

/// `1h30m`, `45s`, `23h59m59s`: hours 0–23, minutes and seconds 0–59, one or two digits each.
fn parse_wall_clock(s: &str) -> Option<Time> {
    let caps = WALL_CLOCK.captures(s)?;
    let part = |i: usize| {
        caps.get(i)
            .map_or(Some(0), |m| m.as_str().parse::<i64>().ok())
    };
    let (h, m, sec) = (part(1)?, part(2)?, part(3)?);
    if caps.get(1).is_none() && caps.get(2).is_none() && caps.get(3).is_none() {
        return None;
    }
    (h <= 23 && m <= 59 && sec <= 59)
        .then_some(Time::Count(h * 3600 + m * 60 + sec, CountUnit::Second))
}

/// Python's `float(str)`: surrounding whitespace, a sign, `_` between digits, exponents, a
/// trailing `.`, `inf`/`nan`, and Unicode decimal digits (`'１'`).
pub fn parse_python_float(s: &str) -> Option<f64> {
    let t: String = s.trim().chars().map(ascii_digit).collect();
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if lower.len() - unsigned.len() > 1 {
        return None;
    }
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse().ok();
    }
    // An underscore must sit between two digits.
    let bytes = t.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            let before = i.checked_sub(1).map(|j| bytes[j].is_ascii_digit());
            let after = bytes.get(i + 1).map(|c| c.is_ascii_digit());
            if before != Some(true) || after != Some(true) {
                return None;
            }
        }
    }
    let plain: String = t.chars().filter(|c| *c != '_').collect();
    static FLOAT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$").expect("static regex")
    });
    if !FLOAT.is_match(&plain) {
        return None;
    }
    plain.parse().ok()
}

/// Map a Unicode decimal digit to its ASCII digit (Python accepts them in numbers).
fn ascii_digit(c: char) -> char {
    // Zero code points of the decimal-digit runs of the Basic Multilingual Plane.
    const ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10,
    ];
    let cp = c as u32;
    ZEROS
        .iter()
        .find(|z| (**z..**z + 10).contains(&cp))
        .map_or(c, |z| char::from(b'0' + (cp - z) as u8))
}

/// Where training is: every counter Composer keeps, and the wall-clock durations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp {
    /// Completed iterations.
    pub iteration: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// Completed batches.
    pub batch: u64,
    /// Samples seen.
    pub sample: u64,
    /// Tokens seen.
    pub token: u64,
    /// Epochs completed in the current iteration.
    pub epoch_in_iteration: u64,
    /// Tokens seen in the current iteration.
    pub token_in_iteration: u64,
    /// Batches completed in the current epoch.
    pub batch_in_epoch: u64,
    /// Samples seen in the current epoch.
    pub sample_in_epoch: u64,
    /// Tokens seen in the current epoch.
    pub token_in_epoch: u64,
    /// Wall-clock time of the whole run.
    pub total_wct: Duration,
    /// Wall-clock time of the current iteration.
    pub iteration_wct: Duration,
    /// Wall-clock time of the current epoch.
    pub epoch_wct: Duration,
    /// Duration of the last batch.
    pub batch_wct: Duration,
}

impl Timestamp {
    /// After one more batch of `samples` samples and `tokens` tokens that took `duration`.
    pub fn to_next_batch(&self, samples: u64, tokens: u64, duration: Duration) -> Timestamp {
        Timestamp {
            batch: self.batch + 1,
            batch_in_epoch: self.batch_in_epoch + 1,
            sample: self.sample + samples,
            sample_in_epoch: self.sample_in_epoch + samples,
            token: self.token + tokens,
            token_in_epoch: self.token_in_epoch + tokens,
            token_in_iteration: self.token_in_iteration + tokens,
            total_wct: self.total_wct + duration,
            iteration_wct: self.iteration_wct + duration,
            epoch_wct: self.epoch_wct + duration,
            batch_wct: duration,
            ..*self
        }
    }

    /// After the current epoch ends: in-epoch counters and clocks reset.
    pub fn to_next_epoch(&self) -> Timestamp {
        Timestamp {
            epoch: self.epoch + 1,
            epoch_in_iteration: self.epoch_in_iteration + 1,
            batch_in_epoch: 0,
            sample_in_epoch: 0,
            token_in_epoch: 0,
            epoch_wct: Duration::ZERO,
            batch_wct: Duration::ZERO,
            ..*self
        }
    }

    /// After the current iteration ends: in-iteration and in-epoch counters reset.
    pub fn to_next_iteration(&self) -> Timestamp {
        Timestamp {
            iteration: self.iteration + 1,
            epoch_in_iteration: 0,
            token_in_iteration: 0,
            batch_in_epoch: 0,
            sample_in_epoch: 0,
            token_in_epoch: 0,
            iteration_wct: Duration::ZERO,
            epoch_wct: Duration::ZERO,
            batch_wct: Duration::ZERO,
            ..*self
        }
    }

    /// The counter for a counting unit; `sec` is whole seconds of `total_wct`, truncated.
    pub fn get(&self, unit: CountUnit) -> u64 {
        match unit {
            CountUnit::Iteration => self.iteration,
            CountUnit::Epoch => self.epoch,
            CountUnit::Batch => self.batch,
            CountUnit::Sample => self.sample,
            CountUnit::Token => self.token,
            CountUnit::Second => self.total_wct.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Time {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn count(n: i64, u: CountUnit) -> Time {
        Time::Count(n, u)
    }

    /// Reference §5.2, every row that Composer accepts and cairn keeps.
    #[test]
    fn composer_vectors_that_parse() {
        use CountUnit::*;
        let cases: Vec<(&str, Time)> = vec![
            ("1ep", count(1, Epoch)),
            ("1EP", count(1, Epoch)),
            ("1Ep", count(1, Epoch)),
            ("2ba", count(2, Batch)),
            ("1Ba", count(1, Batch)),
            ("3sp", count(3, Sample)),
            ("4tok", count(4, Token)),
            ("5iter", count(5, Iteration)),
            ("1ITER", count(1, Iteration)),
            ("2iter", count(2, Iteration)),
            ("0.5dur", Time::Fraction(0.5)),
            (".5dur", Time::Fraction(0.5)),
            ("0.25DUR", Time::Fraction(0.25)),
            ("1dur", Time::Fraction(1.0)),
            ("2dur", Time::Fraction(2.0)),
            ("1.5dur", Time::Fraction(1.5)),
            ("-0.5dur", Time::Fraction(-0.5)),
            ("1e-2dur", Time::Fraction(0.01)),
            ("10sec", count(10, Second)),
            ("10SEC", count(10, Second)),
            ("100sec", count(100, Second)),
            ("1e3ba", count(1000, Batch)),
            ("1E2ba", count(100, Batch)),
            ("2.5e1ba", count(25, Batch)),
            ("1.e1ba", count(10, Batch)),
            ("2e0ep", count(2, Epoch)),
            ("1e1ep", count(10, Epoch)),
            ("3e10sp", count(30_000_000_000, Sample)),
            ("3_0e10sp", count(300_000_000_000, Sample)),
            ("4_000tok", count(4000, Token)),
            ("4_00_0tok", count(4000, Token)),
            ("1_000ba", count(1000, Batch)),
            ("1.0ba", count(1, Batch)),
            ("5.ep", count(5, Epoch)),
            ("+1ep", count(1, Epoch)),
            (" 1ep", count(1, Epoch)),
            ("1 ep", count(1, Epoch)),
            ("１ep", count(1, Epoch)),
            ("-1ep", count(-1, Epoch)),
            ("0ep", count(0, Epoch)),
            ("1ba\n", count(1, Batch)),
            ("1h", count(3600, Second)),
            ("30m", count(1800, Second)),
            ("45s", count(45, Second)),
            ("1s", count(1, Second)),
            ("1m", count(60, Second)),
            ("0s", count(0, Second)),
            ("1h30m", count(5400, Second)),
            ("1h30s", count(3630, Second)),
            ("1h20m40s", count(4840, Second)),
            ("1h5m", count(3900, Second)),
            ("23h59m59s", count(86399, Second)),
            ("59s", count(59, Second)),
        ];
        for (s, want) in cases {
            assert_eq!(ok(s), want, "{s:?}");
        }
    }

    /// Reference §5.2 rows that are errors in Composer too.
    #[test]
    fn composer_vectors_that_fail() {
        for s in [
            "ep", "ba", "1ba ", "1hr", "1 h", "1h1h", "1.5h", "h", "m", "s", "1e3", "10sec ",
            "60s", "61s", "90s", "90m", "1h60m", "24h", "25h", "059s", "0x10ba", "1,000ba",
            "1epep", "1ep1ba", "nanep", "inf ep", "1.5ba", "1__0ba", "_1ba", "1_ba",
        ] {
            assert!(s.parse::<Time>().is_err(), "{s:?} should fail");
        }
        assert!(matches!(
            "1.5ba".parse::<Time>(),
            Err(TimeError::NotIntegral(..))
        ));
        assert!(matches!(
            "0x10ba".parse::<Time>(),
            Err(TimeError::NotANumber(..))
        ));
        assert!(matches!("1hr".parse::<Time>(), Err(TimeError::Invalid(..))));
    }

    /// Reference §5.2 rows where cairn deliberately differs (listed in the README).
    #[test]
    fn strict_divergences_from_composer() {
        assert_eq!("".parse::<Time>(), Err(TimeError::Empty)); // Composer: 0 sec
        for s in ["1", "5", "0", "05", "6", "7", "12"] {
            assert_eq!(
                s.parse::<Time>(),
                Err(TimeError::BareNumber(s.into())),
                "{s}"
            );
        }
        for s in ["1h5", "1m5"] {
            // Composer: 3650 sec / 110 sec
            assert!(
                matches!(s.parse::<Time>(), Err(TimeError::Invalid(_))),
                "{s}"
            );
        }
        for s in ["1e100ba", "infdur", "nandur"] {
            assert!(
                matches!(s.parse::<Time>(), Err(TimeError::OutOfRange(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn errors_name_the_string() {
        let e = "1.5ba".parse::<Time>().unwrap_err().to_string();
        assert!(
            e.contains("'1.5ba'") && e.contains("whole number of ba"),
            "{e}"
        );
        let e = "1".parse::<Time>().unwrap_err().to_string();
        assert!(e.contains("'1ep'"), "{e}");
    }

    #[test]
    fn display_matches_composer() {
        assert_eq!(ok("0.5dur").to_string(), "0.5dur");
        assert_eq!(ok("1dur").to_string(), "1.0dur");
        assert_eq!(ok("6sec").to_string(), "6sec");
        assert_eq!(ok("1h").to_string(), "3600sec");
        assert_eq!(ok("4_000tok").to_string(), "4000tok");
    }

    #[test]
    fn timestamp_transitions() {
        let t = Timestamp::default().to_next_batch(2, 16, Duration::from_secs(3));
        let t = t.to_next_batch(2, 16, Duration::from_secs(3));
        assert_eq!(
            (t.batch, t.batch_in_epoch, t.sample, t.token),
            (2, 2, 4, 32)
        );
        assert_eq!(t.total_wct, Duration::from_secs(6));
        assert_eq!(t.batch_wct, Duration::from_secs(3));
        let e = t.to_next_epoch();
        assert_eq!(
            (e.epoch, e.batch, e.batch_in_epoch, e.sample_in_epoch),
            (1, 2, 0, 0)
        );
        assert_eq!(
            (e.epoch_wct, e.batch_wct, e.total_wct),
            (Duration::ZERO, Duration::ZERO, t.total_wct)
        );
        assert_eq!(e.epoch_in_iteration, 1);
        let i = e.to_next_iteration();
        assert_eq!(
            (
                i.iteration,
                i.epoch_in_iteration,
                i.token_in_iteration,
                i.epoch
            ),
            (1, 0, 0, 1)
        );
        assert_eq!(i.get(CountUnit::Second), 6);
    }
}
