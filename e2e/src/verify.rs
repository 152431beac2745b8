//! The verifier of an aggregates topic: reads every committed `Aggregate` (never an aborted or an open
//! transaction's) and reports the windows lost, duplicated, wrong or unexpected against an oracle; and
//! `FormulaData`, a load for fault tests whose every window is known by formula.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use plumbing::kafka::KafkaSettings;
use proto::prost::Message as _;
use proto::v1::{Aggregate, Point, Series, WindowStats};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::oracle::{LATENESS, S, WINDOW};

/// A window of a series: its series key and its start in nanoseconds.
pub type WindowKey = (String, i64);

/// The windows a topic should hold, each exactly once.
pub type Expected = BTreeMap<WindowKey, WindowStats>;

/// The expected map of the oracle's output (`e2e::oracle::expected`: per series key, its windows).
pub fn expected_from_oracle(oracle: &BTreeMap<String, Vec<WindowStats>>) -> Expected {
    oracle
        .iter()
        .flat_map(|(key, windows)| windows.iter().map(move |w| ((key.clone(), w.start_ns), w.clone())))
        .collect()
}

/// How exactly a window must match.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    /// The relative tolerance of sum and mean. Zero, the default, demands the very float the oracle
    /// computed, right for an oracle that adds a series' values in the order the processor reads them
    /// (one series is in one partition, in send order). Set it when that order may differ. Count, start,
    /// end, min and max are always exact, and the gradient is always compared to 1e-9 relative, because a
    /// streaming and a two-pass least-squares fit agree only to rounding.
    pub tolerance: f64,
}

/// One aggregate read from the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub key: WindowKey,
    pub stats: WindowStats,
    pub partition: i32,
    pub offset: i64,
}

/// Everything committed on a topic when it was read to its end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub aggregates: Vec<Observed>,
    /// Messages that are not a whole `Aggregate` keyed by its series key, described with their position.
    pub malformed: Vec<String>,
}

/// Reads `topic` from the beginning with a `read_committed` consumer of its own (a fresh group, nothing
/// committed) until every partition is at its end at once, for at most `limit`; panics on timeout naming
/// the partitions that did not get there.
///
/// The end is where the consumer reports partition EOF: for `read_committed`, the last stable offset.
/// Offsets are never counted on: transactional topics hold commit and abort markers and aborted
/// messages, so neither are offsets contiguous nor is high minus low watermark a message count.
///
/// An open transaction holds its partition's end back: what follows it is read only once it is
/// committed or aborted. A killed processor's transaction stays open until its replacement, with the same
/// `transactional.id`, aborts it on start, or until the transaction timeout; verify after that.
pub fn read_aggregates(kafka: &KafkaSettings, topic: &str, limit: Duration) -> Reading {
    let mut config = kafka.consumer("e2e-verify", &crate::unique("e2e-verify"));
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer =
        config.create().unwrap_or_else(|err| panic!("cannot create a consumer of {topic}: {err}"));
    let metadata = consumer
        .fetch_metadata(Some(topic), kafka.request_timeout)
        .unwrap_or_else(|err| panic!("cannot fetch the metadata of {topic}: {err}"));
    let partitions: BTreeSet<i32> =
        metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()).map(|p| p.id()).collect();
    assert!(!partitions.is_empty(), "{topic} has no partitions: does it exist?");
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap_or_else(|err| panic!("cannot assign {topic}/{partition}: {err}"));
    }
    consumer.assign(&assignment).unwrap_or_else(|err| panic!("cannot assign {topic}: {err}"));

    let mut reading = Reading::default();
    let mut at_end = BTreeSet::new();
    let mut last_error = None;
    let deadline = Instant::now() + limit;
    while at_end != partitions {
        assert!(
            Instant::now() < deadline,
            "{topic}: partitions {:?} did not reach their end within {limit:?} ({} aggregates read; last error: {})",
            partitions.difference(&at_end).collect::<Vec<_>>(),
            reading.aggregates.len(),
            last_error.as_ref().map_or_else(|| "none".to_owned(), |e: &KafkaError| e.to_string())
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                // A transaction committed after this partition's EOF moves its end: read on to the new one.
                at_end.remove(&message.partition());
                let at = format!("{topic}/{} at offset {}", message.partition(), message.offset());
                match decode(message.key(), message.payload()) {
                    Ok((key, stats)) => reading.aggregates.push(Observed {
                        key,
                        stats,
                        partition: message.partition(),
                        offset: message.offset(),
                    }),
                    Err(why) => reading.malformed.push(format!("{at}: {why}")),
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            // Transient (a broker restarting, a leader moving): librdkafka retries by itself.
            Some(Err(err)) => last_error = Some(err),
        }
    }
    reading
}

/// The window an aggregate message holds, if it is a whole `Aggregate` keyed by its series key (the key
/// puts a series in one partition, which consumers downstream rely on).
fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(WindowKey, WindowStats), String> {
    let aggregate = Aggregate::decode(payload.ok_or("no payload")?).map_err(|err| format!("not an Aggregate: {err}"))?;
    let series = aggregate.series.ok_or("no series")?.key();
    let stats = aggregate.window.ok_or("no window")?;
    match key {
        Some(key) if key == series.as_bytes() => Ok(((series, stats.start_ns), stats)),
        Some(key) => Err(format!("keyed {:?} but holds {series}", String::from_utf8_lossy(key))),
        None => Err(format!("no key, holds {series}")),
    }
}

/// Reads `topic` to its end (see `read_aggregates`) and compares what it holds with `expected`.
pub fn verify(kafka: &KafkaSettings, topic: &str, expected: &Expected, options: Options, limit: Duration) -> Verdict {
    compare(&read_aggregates(kafka, topic, limit), expected, options)
}

/// What a topic holds, against what it should.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Expected windows that are not there.
    pub lost: Vec<WindowKey>,
    /// Windows there more than once, with their number of copies.
    pub duplicated: Vec<(WindowKey, usize)>,
    /// Windows whose statistics differ from the oracle's: what was read, what was expected (one entry per
    /// differing copy).
    pub wrong: Vec<(WindowKey, WindowStats, WindowStats)>,
    /// Windows there that the oracle does not have.
    pub unexpected: Vec<WindowKey>,
    /// Messages that are not a whole `Aggregate` keyed by its series key.
    pub malformed: Vec<String>,
    /// How many windows were expected, and how many aggregates were read.
    pub expected: usize,
    pub read: usize,
}

impl Verdict {
    /// Every expected window exactly once, exactly right, and nothing else.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.wrong.is_empty()
            && self.unexpected.is_empty()
            && self.malformed.is_empty()
    }
}

/// How many entries of each kind `Display` lists.
const SHOWN: usize = 5;

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lost, {} duplicated, {} wrong, {} unexpected, {} malformed ({} windows expected, {} aggregates read)",
            self.lost.len(),
            self.duplicated.len(),
            self.wrong.len(),
            self.unexpected.len(),
            self.malformed.len(),
            self.expected,
            self.read
        )?;
        let more = |f: &mut fmt::Formatter<'_>, n: usize| {
            if n > SHOWN { write!(f, "\n    ... and {} more", n - SHOWN) } else { Ok(()) }
        };
        if !self.lost.is_empty() {
            write!(f, "\n  lost:")?;
            for (series, start) in self.lost.iter().take(SHOWN) {
                write!(f, "\n    {series} window at {start}")?;
            }
            more(f, self.lost.len())?;
        }
        if !self.duplicated.is_empty() {
            write!(f, "\n  duplicated:")?;
            for ((series, start), copies) in self.duplicated.iter().take(SHOWN) {
                write!(f, "\n    {series} window at {start}: {copies} copies")?;
            }
            more(f, self.duplicated.len())?;
        }
        if !self.wrong.is_empty() {
            write!(f, "\n  wrong:")?;
            for ((series, start), got, want) in self.wrong.iter().take(SHOWN) {
                let (got, want) = (Compared(got), Compared(want));
                write!(f, "\n    {series} window at {start}:\n      got  {got}\n      want {want}")?;
            }
            more(f, self.wrong.len())?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "\n  unexpected:")?;
            for (series, start) in self.unexpected.iter().take(SHOWN) {
                write!(f, "\n    {series} window at {start}")?;
            }
            more(f, self.unexpected.len())?;
        }
        if !self.malformed.is_empty() {
            write!(f, "\n  malformed:")?;
            for what in self.malformed.iter().take(SHOWN) {
                write!(f, "\n    {what}")?;
            }
            more(f, self.malformed.len())?;
        }
        Ok(())
    }
}

/// The statistics the verifier compares, for messages: the rest (a sketch, say) would drown them.
struct Compared<'a>(&'a WindowStats);

impl fmt::Display for Compared<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(
            f,
            "[{}, {}) count {} sum {} mean {} min {} max {} gradient {:?}",
            s.start_ns, s.end_ns, s.count, s.sum, s.mean, s.min, s.max, s.gradient_per_second
        )
    }
}

/// Compares what was read with `expected`. Pure, so it is unit-tested without a broker.
pub fn compare(reading: &Reading, expected: &Expected, options: Options) -> Verdict {
    let mut copies: BTreeMap<&WindowKey, Vec<&WindowStats>> = BTreeMap::new();
    for observed in &reading.aggregates {
        copies.entry(&observed.key).or_default().push(&observed.stats);
    }
    let mut verdict = Verdict {
        malformed: reading.malformed.clone(),
        expected: expected.len(),
        read: reading.aggregates.len(),
        ..Verdict::default()
    };
    for (key, stats) in &copies {
        if stats.len() > 1 {
            verdict.duplicated.push(((*key).clone(), stats.len()));
        }
        match expected.get(*key) {
            Some(want) => {
                for got in stats.iter().filter(|got| !matches(got, want, options)) {
                    verdict.wrong.push(((*key).clone(), (*got).clone(), want.clone()));
                }
            }
            None => verdict.unexpected.push((*key).clone()),
        }
    }
    verdict.lost = expected.keys().filter(|key| !copies.contains_key(key)).cloned().collect();
    verdict
}

/// Whether `got` equals `want` as `options` asks.
fn matches(got: &WindowStats, want: &WindowStats, options: Options) -> bool {
    let close = |g: f64, w: f64, tolerance: f64| {
        if tolerance == 0.0 { g == w } else { (g - w).abs() <= tolerance * w.abs().max(1.0) }
    };
    (got.start_ns, got.end_ns, got.count) == (want.start_ns, want.end_ns, want.count)
        && got.min == want.min
        && got.max == want.max
        && close(got.sum, want.sum, options.tolerance)
        && close(got.mean, want.mean, options.tolerance)
        && match (got.gradient_per_second, want.gradient_per_second) {
            (Some(g), Some(w)) => close(g, w, 1e-9),
            (g, w) => g == w,
        }
}

/// A load for fault tests whose every window's statistics are known by formula, independently of the
/// processor and of the order the points arrive in.
///
/// Series `i` (0 ≤ i < `series`) is `load{series="i"}`; it has one point at each second `s` (0 ≤ s <
/// `seconds`) after `base`, whose value is `v(i, s) = c + m·s` with `c = i·1,000,000` and `m = 1 + i mod 4`.
/// Values, and therefore all sums, are integers far below 2^53, so every sum is exact in `f64` whatever
/// order it is added in. Window `k` of a series holds the seconds `a = 10k` to `b = min(10k + 10,
/// seconds) − 1`, so with `n = b − a + 1`:
///
/// - count `n`, min `v(i, a)`, max `v(i, b)`, sum `n·c + m·(a + b)·n/2` (an integer: `a + b` and `n`
///   have opposite parity), mean `sum / n`;
/// - gradient, by the textbook least-squares formula over `x` = seconds since the window start and `y` =
///   value, `(n·Σxy − Σx·Σy) / (n·Σx² − (Σx)²)` with `Σx = n(n−1)/2`, `Σx² = (n−1)n(2n−1)/6`,
///   `Σy = sum` and `Σxy = (c + m·a)·Σx + m·Σx²`, evaluated in integers; `m`, as the points lie on a line,
///   and absent for `n = 1`.
///
/// Points are sent out of order within the lateness: point `(i, s)` is sent in "send second" `s + d`,
/// where the delay `d` in `0..=max_delay` comes from a hash of `(seed, i, s)`; within a send second
/// points go by `s`, then by series. As `max_delay` is below the lateness, a point is never late:
/// everything sent before it has an event time of at most `s + max_delay`, so its partition's watermark
/// is below `s`, before its window's end. After the data, one closing point per series (value 0) at
/// `last_end + WINDOW + LATENESS`, where `last_end` is the end of the last data window, moves every
/// partition's watermark to `last_end + WINDOW`: all data windows close, and the closing points' own
/// window stays open, so it is not expected.
///
/// The formulas assume the processor's default windows (tumbling, 10 s, 5 s of lateness), and a watermark
/// that moves with event time only: the processor's idle timeout (30 s by default) lets a quiet
/// partition's event time follow the wall clock, which for a `base` in the past makes every later point
/// late. Send without long gaps, or raise the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormulaData {
    /// The event time of second 0, in nanoseconds; a multiple of the window size.
    pub base: i64,
    pub series: u32,
    pub seconds: u32,
    /// The most a point is sent after its event time, in seconds; below the lateness.
    pub max_delay: u32,
    pub seed: u64,
}

impl FormulaData {
    /// `series` series over `seconds` seconds from `base` (a multiple of the 10 s window), each point sent
    /// up to 3 s after its event time.
    pub fn new(base: i64, series: u32, seconds: u32, seed: u64) -> Self {
        let data = Self { base, series, seconds, max_delay: 3, seed };
        data.check();
        data
    }

    /// Panics unless the fields describe a load the formulas hold for (they are public, so `new` alone
    /// cannot ensure it).
    fn check(&self) {
        assert!(self.base % WINDOW == 0, "base {} is not a multiple of the window size {WINDOW}", self.base);
        assert!(i64::from(self.max_delay) * S < LATENESS, "max_delay {} s would make points late", self.max_delay);
        assert!(self.series > 0 && self.seconds > 0, "no points: {} series over {} s", self.series, self.seconds);
    }

    /// The series key of series `i`.
    pub fn key(i: u32) -> String {
        Self::series_of(i).key()
    }

    /// Series `i`: `load{series="i"}`.
    pub fn series_of(i: u32) -> Series {
        Series { metric: "load".to_owned(), tags: BTreeMap::from([("series".to_owned(), i.to_string())]) }
    }

    /// The value of series `i` at second `s`.
    pub fn value(i: u32, s: u32) -> f64 {
        let (c, m) = Self::line(i);
        (c + m * i64::from(s)) as f64
    }

    /// The intercept and slope of series `i`'s values.
    fn line(i: u32) -> (i64, i64) {
        (i64::from(i) * 1_000_000, 1 + i64::from(i % 4))
    }

    /// The end of the last data window, in seconds after `base`.
    fn last_end(&self) -> i64 {
        let window = WINDOW / S;
        (i64::from(self.seconds) + window - 1) / window * window
    }

    /// The delay of point `(i, s)`, in seconds.
    fn delay(&self, i: u32, s: u32) -> u32 {
        let hash = splitmix64(self.seed ^ splitmix64((u64::from(i) << 32) | u64::from(s)));
        // The remainder is below max_delay + 1, a u32.
        u32::try_from(hash % (u64::from(self.max_delay) + 1)).unwrap_or(0)
    }

    /// How many points `points` yields: the data and one closing point per series.
    pub fn len(&self) -> u64 {
        u64::from(self.series) * (u64::from(self.seconds) + 1)
    }

    /// Never: `new` refuses empty loads.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every point in send order, generated as it is consumed (a large load is never held in memory).
    pub fn points(&self) -> impl Iterator<Item = Point> + '_ {
        self.check();
        let sends = self.seconds + self.max_delay;
        let data = (0..sends).flat_map(move |q| {
            let first = q.saturating_sub(self.max_delay);
            (first..=q.min(self.seconds - 1)).flat_map(move |s| {
                (0..self.series).filter(move |&i| s + self.delay(i, s) == q).map(move |i| self.point(i, s))
            })
        });
        let closing_ns = self.base + self.last_end() * S + WINDOW + LATENESS;
        let closing = (0..self.series).map(move |i| {
            let series = Self::series_of(i);
            Point { metric: series.metric, tags: series.tags, timestamp_ns: closing_ns, value: 0.0 }
        });
        data.chain(closing)
    }

    /// One late point for every `every`-th series, to send after `points`: at second 0, whose window the
    /// closing points have closed, so the processor must dead-letter each and change no window.
    pub fn late_points(&self, every: u32) -> impl Iterator<Item = Point> + '_ {
        (0..self.series).filter(move |i| i % every.max(1) == 0).map(move |i| Point { value: -1.0, ..self.point(i, 0) })
    }

    fn point(&self, i: u32, s: u32) -> Point {
        let series = Self::series_of(i);
        Point {
            metric: series.metric,
            tags: series.tags,
            timestamp_ns: self.base + i64::from(s) * S,
            value: Self::value(i, s),
        }
    }

    /// Every window the processor must emit, by the formulas above.
    pub fn expected(&self) -> Expected {
        self.check();
        let window = WINDOW / S;
        let seconds = i64::from(self.seconds);
        let mut expected = Expected::new();
        for i in 0..self.series {
            let key = Self::key(i);
            let (c, m) = Self::line(i);
            for a in (0..seconds).step_by(usize::try_from(window).unwrap_or(10)) {
                let b = (a + window).min(seconds) - 1;
                let n = b - a + 1;
                let sum = n * c + m * (a + b) * n / 2;
                let start_ns = self.base + a * S;
                expected.insert(
                    (key.clone(), start_ns),
                    WindowStats {
                        start_ns,
                        end_ns: start_ns + WINDOW,
                        count: n.unsigned_abs(),
                        sum: sum as f64,
                        mean: sum as f64 / n as f64,
                        min: (c + m * a) as f64,
                        max: (c + m * b) as f64,
                        gradient_per_second: least_squares_slope(n, c + m * a, m),
                        // The statistics the verifier does not compare.
                        ..WindowStats::default()
                    },
                );
            }
        }
        expected
    }
}

/// The textbook least-squares slope through the points `(x, y0 + m·x)` for `x` in `0..n`, from the
/// closed forms of the sums, in integers; `None` for a single point.
fn least_squares_slope(n: i64, y0: i64, m: i64) -> Option<f64> {
    let (n, y0, m) = (i128::from(n), i128::from(y0), i128::from(m));
    let sx = n * (n - 1) / 2;
    let sxx = (n - 1) * n * (2 * n - 1) / 6;
    let sy = n * y0 + m * sx;
    let sxy = y0 * sx + m * sxx;
    let denominator = n * sxx - sx * sx;
    (denominator != 0).then(|| (n * sxy - sx * sy) as f64 / denominator as f64)
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, well-mixed hash of a 64-bit number, enough to scatter
/// delays deterministically without a dependency.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(start_ns: i64, sum: f64) -> WindowStats {
        WindowStats {
            start_ns,
            end_ns: start_ns + WINDOW,
            count: 2,
            sum,
            mean: sum / 2.0,
            min: 1.0,
            max: sum - 1.0,
            gradient_per_second: Some(0.5),
            ..WindowStats::default()
        }
    }

    fn observed(key: &str, stats: WindowStats, offset: i64) -> Observed {
        Observed { key: (key.to_owned(), stats.start_ns), stats, partition: 0, offset }
    }

    #[test]
    fn a_clean_topic_has_a_clean_verdict() {
        let want: Expected =
            [(("a".to_owned(), 0), stats(0, 3.0)), (("a".to_owned(), WINDOW), stats(WINDOW, 5.0))].into();
        let reading = Reading {
            aggregates: vec![observed("a", stats(WINDOW, 5.0), 7), observed("a", stats(0, 3.0), 2)],
            malformed: vec![],
        };
        let verdict = compare(&reading, &want, Options::default());
        assert!(verdict.is_clean(), "{verdict}");
        assert_eq!((verdict.expected, verdict.read), (2, 2));
    }

    #[test]
    fn every_kind_of_fault_is_reported() {
        let want: Expected = (0..4).map(|k| (("a".to_owned(), k * WINDOW), stats(k * WINDOW, 3.0))).collect();
        let mut off = stats(2 * WINDOW, 3.0);
        off.max += 1.0;
        let reading = Reading {
            aggregates: vec![
                // window 0 is lost; window 1 twice; window 2 wrong; window 3 right; window 9 unexpected.
                observed("a", stats(WINDOW, 3.0), 1),
                observed("a", stats(WINDOW, 3.0), 5),
                observed("a", off.clone(), 2),
                observed("a", stats(3 * WINDOW, 3.0), 3),
                observed("a", stats(9 * WINDOW, 3.0), 4),
            ],
            malformed: vec!["t/0 at offset 6: no payload".to_owned()],
        };
        let verdict = compare(&reading, &want, Options::default());
        assert_eq!(verdict.lost, vec![("a".to_owned(), 0)]);
        assert_eq!(verdict.duplicated, vec![(("a".to_owned(), WINDOW), 2)]);
        assert_eq!(verdict.wrong, vec![(("a".to_owned(), 2 * WINDOW), off, stats(2 * WINDOW, 3.0))]);
        assert_eq!(verdict.unexpected, vec![("a".to_owned(), 9 * WINDOW)]);
        assert_eq!(verdict.malformed.len(), 1);
        assert!(!verdict.is_clean());
        let text = verdict.to_string();
        assert!(text.starts_with("1 lost, 1 duplicated, 1 wrong, 1 unexpected, 1 malformed"), "{text}");
        assert!(text.contains("a window at 10000000000: 2 copies"), "{text}");
        let got = "got  [20000000000, 30000000000) count 2 sum 3 mean 1.5 min 1 max 3 gradient Some(0.5)";
        assert!(text.contains(got), "{text}");
    }

    #[test]
    fn sums_are_exact_unless_a_tolerance_is_given() {
        let want: Expected = [(("a".to_owned(), 0), stats(0, 0.3))].into();
        let mut got = stats(0, 0.1 + 0.2);
        got.mean = 0.3 / 2.0;
        let reading = Reading { aggregates: vec![observed("a", got, 0)], malformed: vec![] };
        assert_eq!(compare(&reading, &want, Options::default()).wrong.len(), 1, "0.1 + 0.2 is not 0.3");
        assert!(compare(&reading, &want, Options { tolerance: 1e-12 }).is_clean());
        // The gradient is compared to rounding, but a missing one is wrong.
        let mut no_gradient = stats(0, 0.3);
        no_gradient.gradient_per_second = None;
        let reading = Reading { aggregates: vec![observed("a", no_gradient, 0)], malformed: vec![] };
        assert_eq!(compare(&reading, &want, Options { tolerance: 1e-12 }).wrong.len(), 1);
    }

    #[test]
    fn expected_from_oracle_keys_each_window() {
        let oracle = BTreeMap::from([("a".to_owned(), vec![stats(0, 1.0), stats(WINDOW, 2.0)])]);
        let expected = expected_from_oracle(&oracle);
        assert_eq!(expected.keys().cloned().collect::<Vec<_>>(), vec![("a".to_owned(), 0), ("a".to_owned(), WINDOW)]);
    }

    /// The formulas, checked against the points themselves: grouped by window and aggregated the plain way,
    /// with a two-pass least-squares fit.
    #[test]
    fn formula_data_matches_its_points() {
        for seconds in [1, 9, 10, 37, 60] {
            let data = FormulaData::new(1_000 * WINDOW, 7, seconds, u64::from(seconds));
            let points: Vec<Point> = data.points().collect();
            assert_eq!(points.len() as u64, data.len());
            let closing = data.base + data.last_end() * S + WINDOW + LATENESS;
            let mut groups: BTreeMap<WindowKey, Vec<(f64, f64)>> = BTreeMap::new();
            for p in points.iter().filter(|p| p.timestamp_ns != closing) {
                let start = (p.timestamp_ns - data.base) / WINDOW * WINDOW + data.base;
                let x = (p.timestamp_ns - start) as f64 / 1e9;
                groups.entry((p.series_key(), start)).or_default().push((x, p.value));
            }
            let expected = data.expected();
            assert_eq!(groups.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{seconds} s");
            for (key, values) in &groups {
                let want = &expected[key];
                let n = values.len() as f64;
                let sum: f64 = values.iter().map(|(_, v)| v).sum();
                assert_eq!(want.count, values.len() as u64, "{key:?}");
                assert_eq!((want.sum, want.mean), (sum, sum / n), "{key:?}");
                assert_eq!(want.min, values.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min), "{key:?}");
                assert_eq!(want.max, values.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max), "{key:?}");
                let (mx, my) = (values.iter().map(|(x, _)| x).sum::<f64>() / n, sum / n);
                let sxx: f64 = values.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
                let sxy: f64 = values.iter().map(|(x, v)| (x - mx) * (v - my)).sum();
                let gradient = (values.len() >= 2).then(|| sxy / sxx);
                match (want.gradient_per_second, gradient) {
                    (Some(w), Some(g)) => assert!((w - g).abs() <= 1e-9 * w.abs(), "{key:?}: {w} vs {g}"),
                    (w, g) => assert_eq!(w, g, "{key:?}"),
                }
            }
        }
    }

    #[test]
    fn formula_data_is_shuffled_within_its_delay_and_closed_at_the_end() {
        let data = FormulaData::new(0, 5, 100, 42);
        let points: Vec<Point> = data.points().collect();
        let data_points = &points[..points.len() - 5];
        let mut highest = i64::MIN;
        let mut out_of_order = 0;
        for p in data_points {
            // Nothing sent so far is more than max_delay ahead of this point: it is never late.
            assert!(highest - p.timestamp_ns <= i64::from(data.max_delay) * S, "{p:?} after {highest}");
            out_of_order += usize::from(p.timestamp_ns < highest);
            highest = highest.max(p.timestamp_ns);
        }
        assert!(out_of_order > 50, "the order is shuffled ({out_of_order} points behind the highest)");
        let mut seen: Vec<(String, i64)> = data_points.iter().map(|p| (p.series_key(), p.timestamp_ns)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 500, "each point once");
        let closing = &points[points.len() - 5..];
        assert!(closing.iter().all(|p| p.timestamp_ns == 100 * S + WINDOW + LATENESS && p.value == 0.0));
        // The same seed gives the same order; another seed another.
        assert_eq!(points, data.points().collect::<Vec<_>>());
        assert_ne!(points, FormulaData { seed: 43, ..data }.points().collect::<Vec<_>>());
    }
}
