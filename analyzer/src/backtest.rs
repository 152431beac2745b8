//! Backtests: recorded windows replayed through the same `Analysis` the live path runs (same models,
//! same rules, same order per partition), so a backtest produces exactly the alerts the live analyzer
//! produced or would have produced on that data. Recorded series come from a CSV file (a row per
//! window) or from the store (its aggregates, in partition and offset order).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::{Aggregate, Alert, AlertState, Series, WindowStats};
use serde::Deserialize;

use crate::config::Model;
use crate::rules::Rule;
use crate::state::{Analysis, Scored};

/// What a backtest produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every alert change, in the order the live path would publish them.
    pub alerts: Vec<Alert>,
    /// Each window's anomaly score, in input order (a replayed window has none).
    pub scores: Vec<Option<Scored>>,
}

/// Replays `windows` (each with the input partition it was read from) through a fresh analysis.
pub fn run(model: Model, rules: Vec<Rule>, windows: impl IntoIterator<Item = (i32, Aggregate)>) -> Outcome {
    let mut analysis = Analysis::new(model, rules);
    let mut outcome = Outcome::default();
    for (partition, aggregate) in windows {
        let observed = analysis.observe(partition, &aggregate);
        outcome.alerts.extend(observed.alerts);
        outcome.scores.push(observed.scored);
    }
    outcome
}

/// A row of a recorded CSV file, and the window it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The timestamp as the file spells it.
    pub timestamp: String,
    pub value: f64,
    pub window: Aggregate,
}

/// Why a CSV file could not be read, naming the line (1-based, the header being line 1).
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("the header must name a `timestamp` and a `value` column; it has {0:?}")]
    Header(Vec<String>),
    #[error("line {line}: {source}")]
    Csv { line: u64, source: csv::Error },
    #[error("line {line}: timestamp {text:?} is neither RFC 3339 nor `YYYY-MM-DD HH:MM:SS` (UTC)")]
    Timestamp { line: u64, text: String },
    #[error("line {line}: value {text:?} is not a finite number")]
    Value { line: u64, text: String },
    #[error("a window length is needed: no two rows have increasing timestamps; give one")]
    Window,
}

/// The rows of a CSV file with a header naming `timestamp` and `value` columns (others are ignored),
/// as windows of `series`. Each row is a window of one value starting at its timestamp and lasting
/// `window`, or, when not given, the smallest positive gap between consecutive rows. A row that is not
/// after the one before it stays: the analysis treats it as the live analyzer treats a window at or
/// before the latest, and learns nothing from it.
pub fn read_csv(reader: impl Read, series: &Series, window: Option<Duration>) -> Result<Vec<Row>, CsvError> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(reader);
    let header = csv.headers().map_err(|source| CsvError::Csv { line: 1, source })?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(time_at), Some(value_at)) = (column("timestamp"), column("value")) else {
        return Err(CsvError::Header(header.iter().map(str::to_owned).collect()));
    };
    let mut parsed: Vec<(String, i64, f64)> = Vec::new();
    for (i, record) in csv.records().enumerate() {
        let line = i as u64 + 2;
        let record = record.map_err(|source| CsvError::Csv { line, source })?;
        let text = record.get(time_at).unwrap_or_default();
        let at = parse_time(text).ok_or_else(|| CsvError::Timestamp { line, text: text.to_owned() })?;
        let raw = record.get(value_at).unwrap_or_default();
        let value = raw.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| CsvError::Value { line, text: raw.to_owned() })?;
        parsed.push((text.to_owned(), at, value));
    }
    let step = match window {
        Some(w) => i64::try_from(w.as_nanos()).unwrap_or(i64::MAX).max(1),
        None => parsed.windows(2).map(|pair| pair[1].1 - pair[0].1).filter(|gap| *gap > 0).min().ok_or(CsvError::Window)?,
    };
    Ok(parsed
        .into_iter()
        .map(|(timestamp, start_ns, value)| Row { timestamp, value, window: single(series, start_ns, step, value) })
        .collect())
}

/// A window holding one value.
fn single(series: &Series, start_ns: i64, step: i64, value: f64) -> Aggregate {
    let window = WindowStats {
        start_ns,
        end_ns: start_ns.saturating_add(step),
        count: 1,
        sum: value,
        mean: value,
        min: value,
        max: value,
        first: value,
        last: value,
        first_ns: start_ns,
        last_ns: start_ns,
        ..WindowStats::default()
    };
    Aggregate { series: Some(series.clone()), window: Some(window) }
}

/// A rules test file, as `runnel rules test` reads it: series written as one value per window, and
/// the alert changes the rules must produce from them (promtool's `test rules`, for Runnel's rules).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesTest {
    /// An analyzer settings file whose `[model]` and `[[rules]]` are tested, relative to the test file.
    pub config: Option<PathBuf>,
    /// Rules of the test itself, after those of `config`.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The length of every window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// When window 0 starts (RFC 3339); the Unix epoch by default.
    pub start: Option<String>,
    pub series: Vec<TestSeries>,
    /// The expected alert changes, in order.
    #[serde(default)]
    pub alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSeries {
    pub metric: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// One value per window, separated by spaces: a number, `_` for no window, or `<number>x<n>` for
    /// n windows of that value.
    pub values: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    /// The index of the window whose arrival changed the alert.
    pub window: u64,
    pub id: String,
    /// pending, firing, resolved, inactive or no_data.
    pub state: String,
}

impl RulesTest {
    /// The windows of every series, window by window (all series' window 0, then window 1, ...), as
    /// read from one partition.
    pub fn windows(&self) -> Result<Vec<Aggregate>, String> {
        let start = match &self.start {
            Some(text) => parse_time(text).ok_or_else(|| format!("start: {text:?} is not an RFC 3339 time"))?,
            None => 0,
        };
        let step = i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX);
        if step == 0 {
            return Err("window: must be positive".to_owned());
        }
        let mut columns = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            let values = expand(&s.values).map_err(|token| format!("series[{i}].values: {token:?} is not a number, `_` or `<number>x<count>`"))?;
            columns.push((Series { metric: s.metric.clone(), tags: s.tags.clone().into_iter().collect() }, values));
        }
        let longest = columns.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let mut windows = Vec::new();
        for w in 0..longest {
            for (series, values) in &columns {
                if let Some(Some(value)) = values.get(w) {
                    windows.push(single(series, start + w as i64 * step, step, *value));
                }
            }
        }
        Ok(windows)
    }

    /// `alerts` as this test's expectations spell them.
    pub fn spell(&self, alerts: &[Alert]) -> Vec<ExpectedAlert> {
        let start = self.start.as_deref().and_then(parse_time).unwrap_or(0);
        let step = i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX).max(1);
        alerts
            .iter()
            .map(|a| ExpectedAlert {
                // The window whose end brought the change: that of the window itself, or for a no-data
                // change, that of the window that advanced event time.
                window: u64::try_from((a.window_end_ns - start) / step - 1).unwrap_or(0),
                id: a.id.clone(),
                state: AlertState::try_from(a.state)
                    .map_or_else(|_| a.state.to_string(), |s| s.as_str_name().trim_start_matches("ALERT_STATE_").to_ascii_lowercase()),
            })
            .collect()
    }
}

/// The values of a test series: `None` where a window is missing; the bad token on failure.
fn expand(values: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in values.split_whitespace() {
        let (value, count) = match token.split_once('x') {
            Some((value, count)) => (value, count.parse::<usize>().map_err(|_| token.to_owned())?),
            None => (token, 1),
        };
        let value = if value == "_" { None } else { Some(value.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| token.to_owned())?) };
        out.extend(std::iter::repeat_n(value, count));
    }
    Ok(out)
}

/// Nanoseconds since the epoch of an RFC 3339 time, or of `YYYY-MM-DD HH:MM:SS[.fff]` read as UTC.
pub fn parse_time(text: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::rules::Comparison;

    const MINUTE: i64 = 60_000_000_000;

    fn series() -> Series {
        Series { metric: "temp".to_owned(), tags: [("host".to_owned(), "a".to_owned())].into() }
    }

    #[test]
    fn csv_rows_become_windows_of_the_smallest_gap() {
        let file = "timestamp,value,label\n2014-04-01 00:00:00,1.5,x\n2014-04-01 00:05:00,2,y\n2014-04-01 00:15:00, 3 ,z\n";
        let rows = read_csv(file.as_bytes(), &series(), None).unwrap();
        // 2014-04-01T00:00:00Z is 1396310400 s after the epoch (date -u -d 2014-04-01 +%s).
        let start = 1_396_310_400 * 1_000_000_000;
        let windows: Vec<(i64, i64, f64)> =
            rows.iter().map(|r| r.window.window.as_ref().map(|w| (w.start_ns, w.end_ns, w.mean)).unwrap_or_default()).collect();
        assert_eq!(windows, [
            (start, start + 5 * MINUTE, 1.5),
            (start + 5 * MINUTE, start + 10 * MINUTE, 2.0),
            (start + 15 * MINUTE, start + 20 * MINUTE, 3.0)
        ]);
        assert_eq!(rows[2].timestamp, "2014-04-01 00:15:00");
        let hourly = read_csv(file.as_bytes(), &series(), Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(hourly[0].window.window.as_ref().map(|w| w.end_ns), Some(start + 60 * MINUTE));
    }

    #[test]
    fn bad_csv_names_the_line() {
        let error = |file: &str| read_csv(file.as_bytes(), &series(), None).unwrap_err().to_string();
        assert_eq!(error("time,value\n"), "the header must name a `timestamp` and a `value` column; it has [\"time\", \"value\"]");
        assert!(error("timestamp,value\n2014-04-01 00:00:00,1\nyesterday,2\n").starts_with("line 3: timestamp \"yesterday\""));
        assert!(error("timestamp,value\n2014-04-01 00:00:00,NaN\n").starts_with("line 2: value \"NaN\""));
        assert_eq!(error("timestamp,value\n2014-04-01T00:05:00Z,1\n"), "a window length is needed: no two rows have increasing timestamps; give one");
    }

    #[test]
    fn a_rules_test_spells_windows_and_alerts() {
        let test: RulesTest = toml::from_str(
            r#"
            window = "10s"
            [[rules]]
            name = "hot"
            metric = "temp"
            op = ">"
            threshold = 30.0
            for = "20s"
            [[series]]
            metric = "temp"
            tags = { host = "a" }
            values = "20 31x3 _ 10"
            [[series]]
            metric = "temp"
            values = "40x2"
            [[alerts]]
            window = 1
            id = 'hot/temp{host="a"}'
            state = "pending"
            "#,
        )
        .unwrap();
        let windows = test.windows().unwrap();
        let starts: Vec<(String, i64)> = windows
            .iter()
            .map(|a| (a.series.as_ref().map(Series::key).unwrap_or_default(), a.window.as_ref().map_or(0, |w| w.start_ns) / 10_000_000_000))
            .collect();
        let a = "temp{host=\"a\"}".to_owned();
        let b = "temp{}".to_owned();
        assert_eq!(starts, [(a.clone(), 0), (b.clone(), 0), (a.clone(), 1), (b, 1), (a.clone(), 2), (a.clone(), 3), (a, 5)]);
        let outcome = run(Settings::default().model, test.rules.clone(), windows.into_iter().map(|w| (0, w)));
        let spelled: Vec<(u64, String)> = test.spell(&outcome.alerts).into_iter().map(|e| (e.window, e.state + " " + &e.id)).collect();
        assert_eq!(spelled, [
            (0, "pending temp{}".replace("temp", "hot/temp")),
            (1, "pending hot/temp{host=\"a\"}".to_owned()),
            (1, "firing hot/temp{}".to_owned()),
            (2, "firing hot/temp{host=\"a\"}".to_owned()),
            (5, "resolved hot/temp{host=\"a\"}".to_owned()),
        ]);
        let bad: RulesTest = toml::from_str("window = \"10s\"\n[[series]]\nmetric = \"m\"\nvalues = \"1 2x\"").unwrap();
        assert_eq!(bad.windows().unwrap_err(), "series[0].values: \"2x\" is not a number, `_` or `<number>x<count>`");
    }

    #[test]
    fn a_row_out_of_order_is_kept_and_learned_from_as_a_late_window() {
        let file = "timestamp,value\n2014-04-01T00:00:00Z,1\n2014-04-01T00:10:00Z,2\n2014-04-01T00:05:00Z,9\n2014-04-01T00:15:00Z,3\n";
        let rows = read_csv(file.as_bytes(), &series(), None).unwrap();
        assert_eq!(rows.len(), 4);
        // Consecutive gaps of 10, -5 and 10 minutes: the window is the smallest positive one.
        assert_eq!(rows[0].window.window.as_ref().map(|w| w.end_ns - w.start_ns), Some(10 * MINUTE));
        let outcome = run(Settings::default().model, Vec::new(), rows.iter().map(|r| (0, r.window.clone())));
        let scored: Vec<bool> = outcome.scores.iter().map(Option::is_some).collect();
        assert_eq!(scored, [true, true, false, true]);
    }

    #[test]
    fn a_backtest_is_the_live_analysis_replayed() {
        let rules = vec![Rule::threshold("hot", "temp", Comparison::Above, 2.5)];
        let file = "timestamp,value\n2014-04-01T00:00:00Z,1\n2014-04-01T00:05:00Z,3\n2014-04-01T00:10:00Z,2\n";
        let rows = read_csv(file.as_bytes(), &series(), None).unwrap();
        let model = Settings::default().model;
        let outcome = run(model.clone(), rules.clone(), rows.iter().map(|r| (0, r.window.clone())));
        let mut live = Analysis::new(model, rules);
        let want: Vec<Alert> = rows.iter().flat_map(|r| live.observe(0, &r.window).alerts).collect();
        assert_eq!(outcome.alerts, want);
        let states: Vec<i32> = outcome.alerts.iter().map(|a| a.state).collect();
        assert_eq!(states, [proto::v1::AlertState::Firing as i32, proto::v1::AlertState::Resolved as i32]);
        assert_eq!(outcome.scores.len(), 3);
    }
}
