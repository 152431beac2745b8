//! Scoring of anomaly detectors as the Numenta Anomaly Benchmark (NAB) defines it. Pure, no IO.
//!
//! NAB scores a detector over a corpus of labelled files. Every row gets a weight from where it lies
//! relative to the labelled anomaly windows (`Sweeper.calcSweepScore` in NAB's `nab/sweeper.py`): inside a
//! window a detection earns up to the true-positive weight, more the earlier it comes; outside every window
//! it costs up to the false-positive weight, less the closer it follows the window before it. At a
//! threshold, a row is a detection when its anomaly score is at least the threshold; each window then counts
//! once, with its best (earliest) detection or, undetected, minus the false-negative weight, and every
//! detection outside a window counts its own weight (`Sweeper.calcScoreByThreshold`). The start of each file
//! (15 % of its rows, at most 750) is a probationary period in which the detector learns; it is not scored
//! at all. NAB picks the one threshold that maximises the score of the whole corpus (`optimizeThreshold` in
//! `nab/optimizer.py`) and reports that score normalised so that its null detector scores 0 and a perfect
//! detector 100 (`Runner.normalize` in `nab/runner.py`).
//!
//! This is a fresh implementation of those definitions, not a translation of NAB's code. Where NAB's code
//! fails or is undefined (a threshold outside the scores, a one-row window), the doc comments say what is
//! done instead.

use std::cmp::Ordering;

/// The share of each file that is probationary (`probationaryPercent` in NAB's runner).
pub const PROBATION_PERCENT: f64 = 0.15;

/// NAB caps the probationary period at this share of 5000 rows, so long files are not mostly probation.
const PROBATION_CAP_ROWS: f64 = 5000.0;

/// The threshold NAB's sweep starts from: above every anomaly score, so nothing is detected.
pub const NO_DETECTION: f64 = 1.1;

/// The weights of an application profile (a `CostMatrix` in NAB's `config/profiles.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Earned by a window detected at its first row; a later detection earns less.
    pub tp: f64,
    /// The cost of a detection outside every window, far from the window before it; closer costs less.
    pub fp: f64,
    /// The cost of a window without a detection.
    pub fn_: f64,
}

impl Profile {
    /// NAB's `standard` profile.
    pub const STANDARD: Self = Self { tp: 1.0, fp: 0.11, fn_: 1.0 };
    /// NAB's `reward_low_FP_rate` profile.
    pub const REWARD_LOW_FP: Self = Self { tp: 1.0, fp: 0.22, fn_: 1.0 };
    /// NAB's `reward_low_FN_rate` profile.
    pub const REWARD_LOW_FN: Self = Self { tp: 1.0, fp: 0.11, fn_: 2.0 };
}

/// One labelled data file and a detector's output on it.
#[derive(Debug, Clone, Copy)]
pub struct DataFile<'a> {
    /// Row timestamps, strictly increasing (nanoseconds, or any ordered unit). Only their order matters:
    /// NAB measures positions in rows, not in time.
    pub timestamps: &'a [i64],
    /// Labelled anomaly windows as inclusive `(start, end)` timestamps. Each bound must be a row's timestamp
    /// and each window must start after the previous one ends.
    pub windows: &'a [(i64, i64)],
    /// The detector's anomaly score per row, in `[0, 1]`.
    pub scores: &'a [f64],
}

/// The score of a corpus at one threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Rows whose anomaly score is at least this are detections; [`NO_DETECTION`] means none.
    pub threshold: f64,
    /// The raw NAB score: the sum over windows and false positives.
    pub raw: f64,
    /// Scorable windows (with a row after the probationary period) with at least one detection.
    pub windows_detected: usize,
    /// Scorable windows without a detection. Windows wholly in the probationary period are neither.
    pub windows_missed: usize,
    /// Detections outside every window and after the probationary period.
    pub false_positives: usize,
}

/// A detector's NAB result on a corpus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Benchmark {
    /// The score at the threshold that maximises the raw score.
    pub best: Score,
    /// The raw score of NAB's null detector on this corpus.
    pub null: f64,
    /// The raw score NAB deems perfect: the true-positive weight for every labelled window.
    pub perfect: f64,
    /// `100 * (best.raw - null) / (perfect - null)`: 0 for the null detector, 100 for a perfect one.
    pub normalised: f64,
}

/// Why a corpus cannot be scored; files and windows are named by their 0-based index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NabError {
    #[error("file {file}: {timestamps} timestamps but {scores} anomaly scores")]
    Lengths { file: usize, timestamps: usize, scores: usize },
    #[error("file {file}, row {row}: the timestamp is not after the previous row's")]
    Order { file: usize, row: usize },
    #[error("file {file}, row {row}: anomaly score {score} is not between 0 and 1")]
    AnomalyScore { file: usize, row: usize, score: f64 },
    #[error("file {file}, window {window}: timestamp {timestamp} is not a row of the file")]
    WindowBound { file: usize, window: usize, timestamp: i64 },
    #[error("file {file}, window {window}: it ends before it starts, or starts before the previous window ends")]
    WindowOrder { file: usize, window: usize },
    #[error("profile weights must be finite: {0:?}")]
    Profile(Profile),
    #[error("the threshold is NaN")]
    Threshold,
    #[error("the corpus cannot be normalised: the perfect score {perfect} is not above the null score {null}")]
    Normalisation { perfect: f64, null: f64 },
}

/// How many rows at the start of a file of `rows` rows are probationary and not scored:
/// `min(floor(0.15 * rows), 0.15 * 5000)`, as NAB's `getProbationPeriod` (and
/// `Sweeper._getProbationaryLength`) computes it in floating point.
pub fn probationary_length(rows: usize) -> usize {
    // NAB compares row indices with this float (`index >= length`); both terms are whole numbers
    // (0.15 * 5000 is exactly 750.0 in f64), so a count of rows is the same test.
    (PROBATION_PERCENT * rows as f64).floor().min(PROBATION_PERCENT * PROBATION_CAP_ROWS) as usize
}

/// The raw score of `corpus` when every row whose anomaly score is at least `threshold` is a detection,
/// as NAB's `Sweeper.scoreDataSet` gives it per file (summed over files, as its `scoreCorpus` totals
/// them). NAB finds no score for a threshold above 1.1 or below a file's lowest anomaly score; here those
/// mean "nothing detected" and "everything detected".
pub fn score_at_threshold(corpus: &[DataFile<'_>], profile: Profile, threshold: f64) -> Result<Score, NabError> {
    if threshold.is_nan() {
        return Err(NabError::Threshold);
    }
    let prepared = prepare(corpus, profile)?;
    let mut tally = Tally::new(&prepared, profile);
    // Detecting in the sweep's order makes this bit-identical to the sweep's score at the same threshold.
    for row in prepared.by_score().iter().take_while(|row| row.score >= threshold) {
        tally.detect(row);
    }
    Ok(tally.score(threshold))
}

/// Scores `corpus` as NAB does: sweeps every threshold to find the one with the highest raw score
/// (`optimizeThreshold` over `Sweeper.calcScoreByThreshold`), then normalises that score between NAB's
/// null and perfect scores (`Runner.normalize`).
///
/// The thresholds are [`NO_DETECTION`] and every distinct anomaly score of a scored row; among equal raw
/// scores the highest threshold wins, as NAB's stable sort by score keeps it first. `null` is the raw
/// score of NAB's null detector (a constant anomaly score, `NullDetector`) at its own best threshold:
/// in any corpus with false positives to make, that is detecting nothing, `-fn` per scorable window.
/// `perfect` is `tp` per labelled window, counting windows wholly inside the probationary period, which
/// no detector can earn: NAB counts every window of its label file.
pub fn benchmark(corpus: &[DataFile<'_>], profile: Profile) -> Result<Benchmark, NabError> {
    let prepared = prepare(corpus, profile)?;
    let best = sweep(&prepared, profile);
    let null = null_score(&prepared, profile);
    let perfect = prepared.scorable.len() as f64 * profile.tp;
    // NAB would divide by zero (or flip the scale's sign) here: a corpus without windows, for instance.
    if perfect <= null {
        return Err(NabError::Normalisation { perfect, null });
    }
    let normalised = 100.0 * (best.raw - null) / (perfect - null);
    Ok(Benchmark { best, null, perfect, normalised })
}

/// NAB's `sigmoid`.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// NAB's `scaledSigmoid`: `2 * sigmoid(-5 * position) - 1`, from about 0.987 at position −1 (a window's
/// left edge) through 0 at position 0 (just past its right edge) to about −0.987 at position 1, and
/// exactly −1 beyond position 3 (NAB's current code tests `> 3`; an older one tested `>= 3`).
fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 { -1.0 } else { 2.0 * sigmoid(-5.0 * position) - 1.0 }
}

/// A row after the probationary period: one of NAB's `AnomalyPoint`s.
#[derive(Debug, Clone, Copy)]
struct Row {
    /// The detector's anomaly score.
    score: f64,
    /// What detecting this row contributes (`sweepScore`): in a window, a candidate for the window's part.
    weight: f64,
    /// The corpus-wide index of the window the row lies in.
    window: Option<usize>,
}

/// A corpus turned into scored rows.
#[derive(Debug)]
struct Prepared {
    /// Every row after its file's probationary period, in corpus order.
    rows: Vec<Row>,
    /// Per labelled window of the corpus: whether any of its rows is scored. NAB's score has a part only
    /// for those (`_prepareScoreByThresholdParts` names windows from the scored rows).
    scorable: Vec<bool>,
}

impl Prepared {
    /// The rows, highest anomaly score first, as NAB's `prepAnomalyListForScoring` orders them: a stable
    /// sort, so rows with equal scores keep corpus order.
    fn by_score(&self) -> Vec<Row> {
        let mut rows = self.rows.clone();
        // Anomaly scores were checked to lie in [0, 1], so none is NaN and this order is total; like
        // Python's, it holds −0.0 and 0.0 equal.
        rows.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal));
        rows
    }
}

/// Checks the corpus and weighs its rows, as NAB's `Sweeper.calcSweepScore` does per file.
fn prepare(corpus: &[DataFile<'_>], profile: Profile) -> Result<Prepared, NabError> {
    if ![profile.tp, profile.fp, profile.fn_].iter().all(|weight| weight.is_finite()) {
        return Err(NabError::Profile(profile));
    }
    // The weight of a detection at a window's first row, so that it earns exactly `tp`.
    let max_tp = scaled_sigmoid(-1.0);
    let mut prepared = Prepared { rows: Vec::new(), scorable: Vec::new() };
    for (file, data) in corpus.iter().enumerate() {
        let bounds = window_rows(file, data)?;
        let first_window = prepared.scorable.len();
        prepared.scorable.resize(first_window + bounds.len(), false);
        let probation = probationary_length(data.scores.len());
        // The first window that ends at or after the current row.
        let mut next = 0;
        for (i, &score) in data.scores.iter().enumerate() {
            while bounds.get(next).is_some_and(|&(_, right)| right < i) {
                next += 1;
            }
            if i < probation {
                continue;
            }
            let (weight, window) = match bounds.get(next).filter(|&&(left, _)| left <= i) {
                Some(&(left, right)) => {
                    // Position −1 at the window's first row, −1/width at its last: NAB counts the row
                    // itself, so no detection in a window sits at position 0.
                    let width = (right - left + 1) as f64;
                    let position = -((right - i + 1) as f64) / width;
                    (scaled_sigmoid(position) * profile.tp / max_tp, Some(first_window + next))
                }
                None => {
                    let unweighted = match next.checked_sub(1).and_then(|previous| bounds.get(previous)) {
                        // Before any window NAB scores a false positive as if infinitely far from one.
                        None => -1.0,
                        // After a window, the distance from its last row in units of its width less one.
                        // NAB divides by zero for a one-row window; the infinite position here costs the
                        // full weight, as far from any window.
                        Some(&(left, right)) => scaled_sigmoid((i - right) as f64 / ((right - left) as f64)),
                    };
                    (unweighted * profile.fp, None)
                }
            };
            if let Some(scorable) = window.and_then(|w| prepared.scorable.get_mut(w)) {
                *scorable = true;
            }
            prepared.rows.push(Row { score, weight, window });
        }
    }
    Ok(prepared)
}

/// Checks a file and gives its windows as inclusive row ranges.
fn window_rows(file: usize, data: &DataFile<'_>) -> Result<Vec<(usize, usize)>, NabError> {
    let DataFile { timestamps, windows, scores } = *data;
    if timestamps.len() != scores.len() {
        return Err(NabError::Lengths { file, timestamps: timestamps.len(), scores: scores.len() });
    }
    if let Some(previous) = timestamps.windows(2).position(|pair| pair[0] >= pair[1]) {
        return Err(NabError::Order { file, row: previous + 1 });
    }
    if let Some((row, &score)) = scores.iter().enumerate().find(|(_, score)| !(0.0..=1.0).contains(*score)) {
        return Err(NabError::AnomalyScore { file, row, score });
    }
    let row_of = |window: usize, timestamp: i64| {
        timestamps.binary_search(&timestamp).map_err(|_| NabError::WindowBound { file, window, timestamp })
    };
    let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(windows.len());
    for (window, &(start, end)) in windows.iter().enumerate() {
        let (left, right) = (row_of(window, start)?, row_of(window, end)?);
        // NAB enters windows in label order, by their start timestamp, one at a time: out of order or
        // sharing a row, a window would be skipped or cut short.
        let after_previous = bounds.last().is_none_or(|&(_, previous_right)| left > previous_right);
        if left > right || !after_previous {
            return Err(NabError::WindowOrder { file, window });
        }
        bounds.push((left, right));
    }
    Ok(bounds)
}

/// The running score of a set of detections (NAB's `scoreParts` and counts), kept incrementally so that
/// a sweep over all thresholds costs one pass over the sorted rows.
#[derive(Debug)]
struct Tally {
    /// Per window: `-fn` until detected, then the best weight among its detections.
    parts: Vec<f64>,
    detected: Vec<bool>,
    /// The sum of `parts` over scorable windows.
    windows_sum: f64,
    /// The sum of the weights of false positives.
    fp_sum: f64,
    scorable_windows: usize,
    windows_detected: usize,
    false_positives: usize,
}

impl Tally {
    /// Nothing detected: every scorable window is a false negative.
    fn new(prepared: &Prepared, profile: Profile) -> Self {
        let mut windows_sum = 0.0;
        let mut scorable_windows = 0;
        for _ in prepared.scorable.iter().filter(|&&scorable| scorable) {
            windows_sum += -profile.fn_;
            scorable_windows += 1;
        }
        Self {
            parts: vec![-profile.fn_; prepared.scorable.len()],
            detected: vec![false; prepared.scorable.len()],
            windows_sum,
            fp_sum: 0.0,
            scorable_windows,
            windows_detected: 0,
            false_positives: 0,
        }
    }

    fn detect(&mut self, row: &Row) {
        match row.window.and_then(|w| Some((self.parts.get_mut(w)?, self.detected.get_mut(w)?))) {
            Some((part, detected)) => {
                if !*detected {
                    *detected = true;
                    self.windows_detected += 1;
                }
                // A window counts once, with its best detection (NAB's `max`), which is its earliest.
                let best = part.max(row.weight);
                self.windows_sum += best - *part;
                *part = best;
            }
            None => {
                self.fp_sum += row.weight;
                self.false_positives += 1;
            }
        }
    }

    fn score(&self, threshold: f64) -> Score {
        Score {
            threshold,
            raw: self.fp_sum + self.windows_sum,
            windows_detected: self.windows_detected,
            windows_missed: self.scorable_windows - self.windows_detected,
            false_positives: self.false_positives,
        }
    }
}

/// The best score over all thresholds, as NAB's `calcScoreByThreshold` lists them (from [`NO_DETECTION`]
/// down through each distinct anomaly score) and `optimizeThreshold` picks among them.
fn sweep(prepared: &Prepared, profile: Profile) -> Score {
    let rows = prepared.by_score();
    let mut tally = Tally::new(prepared, profile);
    let mut best = tally.score(NO_DETECTION);
    for group in rows.chunk_by(|a, b| a.score == b.score) {
        for row in group {
            tally.detect(row);
        }
        // `chunk_by` yields no empty group.
        let candidate = tally.score(group[0].score);
        // Only a strictly higher score replaces the best, so a tie keeps the higher threshold.
        if candidate.raw > best.raw {
            best = candidate;
        }
    }
    best
}

/// The raw score of NAB's null detector, which outputs a constant anomaly score and is optimised like
/// any other: its only thresholds detect nothing or every scored row.
fn null_score(prepared: &Prepared, profile: Profile) -> f64 {
    let nothing = Tally::new(prepared, profile).score(NO_DETECTION).raw;
    let mut everything = Tally::new(prepared, profile);
    // With a constant score, NAB's stable sort leaves the rows in corpus order.
    for row in &prepared.rows {
        everything.detect(row);
    }
    nothing.max(everything.score(0.5).raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected values below are derived by hand from NAB's definitions, written with the identity
    // 2 * sigmoid(x) - 1 = tanh(x / 2): a detection `k` rows before the end of a `w`-row window (k = 1 at
    // its last row, k = w at its first) earns tp * tanh(2.5 * k / w) / tanh(2.5), and a false positive `d`
    // rows after a `w`-row window costs fp * tanh(2.5 * d / (w - 1)), or the whole fp beyond d / (w - 1) = 3
    // or before any window.

    const EPSILON: f64 = 1e-12;

    /// `rows` timestamps a minute apart, in nanoseconds.
    fn timestamps(rows: usize) -> Vec<i64> {
        (0..rows as i64).map(|i| 1_700_000_000_000_000_000 + i * 60_000_000_000).collect()
    }

    /// A window over rows `left..=right`.
    fn window(timestamps: &[i64], left: usize, right: usize) -> (i64, i64) {
        (timestamps[left], timestamps[right])
    }

    /// Anomaly scores of 0 except at the given rows.
    fn scores(rows: usize, at: &[(usize, f64)]) -> Vec<f64> {
        let mut scores = vec![0.0; rows];
        for &(row, score) in at {
            scores[row] = score;
        }
        scores
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < EPSILON, "{actual} is not {expected}");
    }

    /// The raw score at `threshold` of one 100-row file (15 probationary rows) with the given windows
    /// and detections (score 1), under the standard profile.
    fn one_file(windows: &[(usize, usize)], detections: &[usize]) -> Score {
        let ts = timestamps(100);
        let windows: Vec<_> = windows.iter().map(|&(l, r)| window(&ts, l, r)).collect();
        let at: Vec<_> = detections.iter().map(|&row| (row, 1.0)).collect();
        let scores = scores(100, &at);
        let file = DataFile { timestamps: &ts, windows: &windows, scores: &scores };
        score_at_threshold(&[file], Profile::STANDARD, 0.5).unwrap()
    }

    #[test]
    fn probationary_length_is_15_percent_capped_at_750_rows() {
        // min(floor(0.15 * n), 750): 0.15 * 19 = 2.85, 0.15 * 4999 = 749.85, 0.15 * 5007 = 751.05.
        let expected = [(0, 0), (1, 0), (19, 2), (20, 3), (100, 15), (4999, 749), (5000, 750), (5007, 750)];
        for (rows, length) in expected {
            assert_eq!(probationary_length(rows), length, "{rows} rows");
        }
        assert_eq!(probationary_length(67_000), 750);
    }

    #[test]
    fn a_detection_at_a_window_first_row_earns_exactly_the_tp_weight() {
        let score = one_file(&[(40, 49)], &[40]);
        assert_eq!(score.raw, 1.0);
        assert_eq!((score.windows_detected, score.windows_missed, score.false_positives), (1, 0, 0));

        // Another tp weight scales it: 2.5 * tanh(2.5) / tanh(2.5).
        let ts = timestamps(100);
        let windows = [window(&ts, 40, 49)];
        let scores = scores(100, &[(40, 1.0)]);
        let file = DataFile { timestamps: &ts, windows: &windows, scores: &scores };
        let profile = Profile { tp: 2.5, ..Profile::STANDARD };
        assert_close(score_at_threshold(&[file], profile, 0.5).unwrap().raw, 2.5);
    }

    #[test]
    fn a_later_detection_in_a_window_earns_the_scaled_sigmoid_of_its_position() {
        // Row 49 is the last of a 10-row window: position -(49 - 49 + 1) / 10 = -0.1, so
        // (2 * sigmoid(0.5) - 1) / (2 * sigmoid(5) - 1) = tanh(0.25) / tanh(2.5).
        let last = one_file(&[(40, 49)], &[49]);
        assert_close(last.raw, 0.25_f64.tanh() / 2.5_f64.tanh());
        // The same value from NAB's own formula, evaluated in Python.
        assert_close(last.raw, 0.248_241_549_775_429_92);
        // Row 45: position -(49 - 45 + 1) / 10 = -0.5, tanh(1.25) / tanh(2.5).
        assert_close(one_file(&[(40, 49)], &[45]).raw, 1.25_f64.tanh() / 2.5_f64.tanh());
        // Only the earliest of several detections counts, and the window counts once.
        let many = one_file(&[(40, 49)], &[45, 41, 48]);
        assert_close(many.raw, (2.5_f64 * 9.0 / 10.0).tanh() / 2.5_f64.tanh());
        assert_eq!((many.windows_detected, many.false_positives), (1, 0));
    }

    #[test]
    fn a_false_positive_costs_by_its_distance_from_the_preceding_window() {
        // Missed window: -1. Row 50 is 1 row after the 10-row window: position 1 / 9, cost
        // 0.11 * tanh(2.5 / 9).
        let right_after = one_file(&[(40, 49)], &[50]);
        assert_close(right_after.raw, -1.0 - 0.11 * (2.5_f64 / 9.0).tanh());
        assert_eq!((right_after.windows_detected, right_after.windows_missed, right_after.false_positives), (0, 1, 1));
        // Row 76: position 27 / 9 = 3, not beyond 3, so 0.11 * tanh(7.5) rather than the whole 0.11.
        assert_close(one_file(&[(40, 49)], &[76]).raw, -1.0 - 0.11 * 7.5_f64.tanh());
        // Row 77: position 28 / 9 > 3, the whole fp weight.
        assert_close(one_file(&[(40, 49)], &[77]).raw, -1.0 - 0.11);
        // Row 20, before any window: the whole fp weight.
        assert_close(one_file(&[(40, 49)], &[20]).raw, -1.0 - 0.11);
        // Row 59, just before the second window, is measured from the first one (ending at 39):
        // position 20 / 9, cost 0.11 * tanh(50 / 9); both windows are missed.
        assert_close(one_file(&[(30, 39), (60, 69)], &[59]).raw, -2.0 - 0.11 * (50.0_f64 / 9.0).tanh());
    }

    #[test]
    fn probationary_rows_are_not_scored() {
        // 100 rows: rows 0..=14 are probationary. A detection at row 14 is ignored; at row 15 it is a
        // false positive before any window.
        let ignored = one_file(&[(40, 49)], &[10, 14]);
        assert_eq!(ignored.raw, -1.0);
        assert_eq!(ignored.false_positives, 0);
        let counted = one_file(&[(40, 49)], &[15]);
        assert_close(counted.raw, -1.0 - 0.11);
        assert_eq!(counted.false_positives, 1);
    }

    #[test]
    fn windows_in_the_probationary_period_count_only_towards_the_perfect_score() {
        // Window 5..=9 lies wholly in the probation (rows 0..=14): it has no part in the score, neither
        // detected nor missed. Window 10..=19 straddles it: a detection at row 10 is not scored, so the
        // window is missed; at row 15, 5 rows before its end, it earns tanh(2.5 * 5 / 10) / tanh(2.5).
        let windows = [(5, 9), (10, 19), (40, 49)];
        let missed = one_file(&windows, &[5, 10]);
        assert_eq!(missed.raw, -2.0);
        assert_eq!((missed.windows_detected, missed.windows_missed, missed.false_positives), (0, 2, 0));
        let straddling = 1.25_f64.tanh() / 2.5_f64.tanh();
        let detected = one_file(&windows, &[5, 15, 40]);
        assert_close(detected.raw, straddling + 1.0);
        assert_eq!((detected.windows_detected, detected.windows_missed), (2, 0));

        // Normalised: null = -2 (two scorable windows missed), perfect = 3 (every labelled window), so
        // 100 * (straddling + 1 + 2) / (3 + 2).
        let ts = timestamps(100);
        let labels: Vec<_> = windows.iter().map(|&(l, r)| window(&ts, l, r)).collect();
        let scores = scores(100, &[(5, 1.0), (15, 1.0), (40, 1.0)]);
        let file = DataFile { timestamps: &ts, windows: &labels, scores: &scores };
        let result = benchmark(&[file], Profile::STANDARD).unwrap();
        assert_eq!((result.null, result.perfect), (-2.0, 3.0));
        assert_eq!(result.best.threshold, 1.0);
        assert_close(result.normalised, 20.0 * (3.0 + straddling));
    }

    #[test]
    fn a_perfect_detector_scores_100_and_the_null_detector_0() {
        // Two files with three windows after the probation, and room for false positives around them.
        // The perfect detector flags each window's first row: raw 3 = perfect. A detector of zeros has
        // two thresholds, nothing (-3, every window missed) or everything (a false positive on every
        // other row), so its best is -3, the null score.
        let ts = timestamps(100);
        let windows_a = [window(&ts, 40, 49)];
        let windows_b = [window(&ts, 20, 29), window(&ts, 70, 79)];
        let perfect_a = scores(100, &[(40, 1.0)]);
        let perfect_b = scores(100, &[(20, 1.0), (70, 1.0)]);
        let zeros = scores(100, &[]);
        let perfect = benchmark(
            &[
                DataFile { timestamps: &ts, windows: &windows_a, scores: &perfect_a },
                DataFile { timestamps: &ts, windows: &windows_b, scores: &perfect_b },
            ],
            Profile::STANDARD,
        )
        .unwrap();
        assert_eq!((perfect.best.raw, perfect.null, perfect.perfect), (3.0, -3.0, 3.0));
        assert_eq!(perfect.normalised, 100.0);

        let null = benchmark(
            &[
                DataFile { timestamps: &ts, windows: &windows_a, scores: &zeros },
                DataFile { timestamps: &ts, windows: &windows_b, scores: &zeros },
            ],
            Profile::STANDARD,
        )
        .unwrap();
        assert_eq!(null.best.threshold, NO_DETECTION);
        assert_eq!((null.best.raw, null.null), (-3.0, -3.0));
        assert_eq!(null.normalised, 0.0);
    }

    #[test]
    fn the_sweep_picks_the_threshold_that_maximises_the_corpus_score() {
        // File A: window 40..=49; row 40 scores 0.9, row 60 (11 rows past the window) 0.7.
        // File B: window 60..=69; row 65 scores 0.8, row 30 (before any window) 0.6, row 62 0.5.
        // Raw score by threshold:
        //   1.1  nothing:                             -2
        //   0.9  + A at its first row:                 1 - 1 = 0
        //   0.8  + B 5 rows before its end:            1 + b5,  b5 = tanh(1.25) / tanh(2.5) ≈ 0.8598
        //   0.7  + A's false positive at 11 / 9:       1 + b5 - f,  f = 0.11 * tanh(2.5 * 11 / 9) ≈ 0.1095
        //   0.6  + B's false positive before windows:  1 + b5 - f - 0.11
        //   0.5  B's best is now 8 rows before its end: 1 + b8 - f - 0.11,  b8 = tanh(2) / tanh(2.5) ≈ 0.9771
        //   0.0  + every other row, 130 false positives: far below.
        // So 0.8 wins, although 0.5 beats 0.7: the score is not monotonic in the threshold.
        let ts = timestamps(100);
        let windows_a = [window(&ts, 40, 49)];
        let windows_b = [window(&ts, 60, 69)];
        let scores_a = scores(100, &[(40, 0.9), (60, 0.7)]);
        let scores_b = scores(100, &[(65, 0.8), (30, 0.6), (62, 0.5)]);
        let corpus = [
            DataFile { timestamps: &ts, windows: &windows_a, scores: &scores_a },
            DataFile { timestamps: &ts, windows: &windows_b, scores: &scores_b },
        ];
        let b5 = 1.25_f64.tanh() / 2.5_f64.tanh();
        let b8 = 2.0_f64.tanh() / 2.5_f64.tanh();
        let f = 0.11 * (2.5_f64 * 11.0 / 9.0).tanh();
        let expected = [
            (1.1, -2.0),
            (0.9, 0.0),
            (0.8, 1.0 + b5),
            (0.75, 1.0 + b5),
            (0.7, 1.0 + b5 - f),
            (0.6, 1.0 + b5 - f - 0.11),
            (0.5, 1.0 + b8 - f - 0.11),
        ];
        for (threshold, raw) in expected {
            assert_close(score_at_threshold(&corpus, Profile::STANDARD, threshold).unwrap().raw, raw);
        }
        let at_half = score_at_threshold(&corpus, Profile::STANDARD, 0.5).unwrap();
        assert_eq!((at_half.windows_detected, at_half.windows_missed, at_half.false_positives), (2, 0, 2));

        let result = benchmark(&corpus, Profile::STANDARD).unwrap();
        assert_eq!(result.best.threshold, 0.8);
        assert_close(result.best.raw, 1.0 + b5);
        assert_eq!((result.best.windows_detected, result.best.windows_missed, result.best.false_positives), (2, 0, 0));
        // null = -2, perfect = 2: 100 * (1 + b5 + 2) / 4.
        assert_eq!((result.null, result.perfect), (-2.0, 2.0));
        assert_close(result.normalised, 25.0 * (3.0 + b5));
    }

    #[test]
    fn a_tie_between_thresholds_keeps_the_higher_one() {
        // Rows 40 (0.9) and 45 (0.8) lie in the same window: at 0.8 the window still counts its first
        // row only, so thresholds 0.9 and 0.8 both score exactly 1; NAB keeps the first listed, 0.9.
        let ts = timestamps(100);
        let windows = [window(&ts, 40, 49)];
        let scores = scores(100, &[(40, 0.9), (45, 0.8)]);
        let file = DataFile { timestamps: &ts, windows: &windows, scores: &scores };
        let result = benchmark(&[file], Profile::STANDARD).unwrap();
        assert_eq!((result.best.threshold, result.best.raw), (0.9, 1.0));
        assert_eq!(score_at_threshold(&[file], Profile::STANDARD, 0.8).unwrap().raw, 1.0);
    }

    #[test]
    fn the_null_score_is_the_constant_detector_at_its_own_best_threshold() {
        // Two 20-row files (3 probationary rows). A's window covers every scored row (3..=19); B's
        // covers 3..=17, leaving rows 18 and 19, 1 and 2 rows past a 15-row window. A constant
        // detector detecting everything scores 1 + 1 - 0.11 * (tanh(2.5 / 14) + tanh(5 / 14)) ≈ 1.943,
        // better than detecting nothing (-2), so that is NAB's null score here.
        let ts = timestamps(20);
        let windows_a = [window(&ts, 3, 19)];
        let windows_b = [window(&ts, 3, 17)];
        let zeros = scores(20, &[]);
        let corpus = [
            DataFile { timestamps: &ts, windows: &windows_a, scores: &zeros },
            DataFile { timestamps: &ts, windows: &windows_b, scores: &zeros },
        ];
        let null = 2.0 - 0.11 * ((2.5_f64 / 14.0).tanh() + (5.0_f64 / 14.0).tanh());
        let result = benchmark(&corpus, Profile::STANDARD).unwrap();
        assert_close(result.null, null);
        assert_eq!(result.best.threshold, 0.0);
        assert_eq!(result.best.raw, result.null);
        assert_eq!(result.normalised, 0.0);
    }

    /// A file's timestamps, windows and anomaly scores.
    type Labelled = (Vec<i64>, Vec<(i64, i64)>, Vec<f64>);

    /// NAB's score of one file at a threshold, computed independently of the module: straight from the
    /// definitions, a window at a time and a false positive at a time.
    fn oracle(rows: usize, windows: &[(usize, usize)], scores: &[f64], profile: Profile, threshold: f64) -> f64 {
        let probation = ((rows * 15) / 100).min(750);
        let detected = |row: usize| row >= probation && scores[row] >= threshold;
        let mut total = 0.0;
        for &(left, right) in windows {
            if right < probation {
                continue;
            }
            let width = (right - left + 1) as f64;
            total += match (left..=right).find(|&row| detected(row)) {
                Some(first) => profile.tp * (2.5 * (right - first + 1) as f64 / width).tanh() / 2.5_f64.tanh(),
                None => -profile.fn_,
            };
        }
        for row in (0..rows).filter(|&row| detected(row)) {
            if windows.iter().any(|&(left, right)| (left..=right).contains(&row)) {
                continue;
            }
            total -= match windows.iter().rfind(|&&(_, right)| right < row) {
                None => profile.fp,
                Some(&(left, right)) => {
                    let position = (row - right) as f64 / (right - left) as f64;
                    if position > 3.0 { profile.fp } else { profile.fp * (2.5 * position).tanh() }
                }
            };
        }
        total
    }

    #[test]
    fn the_sweep_agrees_with_a_direct_score_at_every_threshold() {
        // Pseudo-random scores on twentieths (so thresholds tie across rows), higher inside windows.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let files: [(usize, Vec<(usize, usize)>); 3] =
            [(120, vec![(10, 25), (60, 71), (100, 104)]), (200, vec![(50, 69), (150, 199)]), (57, vec![(20, 30)])];
        let data: Vec<Labelled> = files
            .iter()
            .map(|(rows, windows)| {
                let ts = timestamps(*rows);
                let labels = windows.iter().map(|&(l, r)| window(&ts, l, r)).collect();
                let scores = (0..*rows)
                    .map(|row| {
                        let boost = if windows.iter().any(|&(l, r)| (l..=r).contains(&row)) { 8 } else { 0 };
                        ((next() % 13 + boost).min(20)) as f64 / 20.0
                    })
                    .collect();
                (ts, labels, scores)
            })
            .collect();
        let corpus: Vec<DataFile<'_>> = data
            .iter()
            .map(|(ts, windows, scores)| DataFile { timestamps: ts, windows, scores })
            .collect();

        for profile in [Profile::STANDARD, Profile::REWARD_LOW_FP, Profile::REWARD_LOW_FN] {
            let total = |threshold: f64| -> f64 {
                files
                    .iter()
                    .zip(&data)
                    .map(|((rows, windows), (_, _, scores))| oracle(*rows, windows, scores, profile, threshold))
                    .sum()
            };
            let mut thresholds: Vec<f64> = data.iter().flat_map(|(_, _, scores)| scores.iter().copied()).collect();
            thresholds.push(NO_DETECTION);
            thresholds.sort_by(|a, b| b.total_cmp(a));
            thresholds.dedup();
            let mut best = (NO_DETECTION, f64::NEG_INFINITY);
            for &threshold in &thresholds {
                let expected = total(threshold);
                assert!((score_at_threshold(&corpus, profile, threshold).unwrap().raw - expected).abs() < 1e-9);
                if expected > best.1 + 1e-9 {
                    best = (threshold, expected);
                }
            }
            let result = benchmark(&corpus, profile).unwrap();
            assert_eq!(result.best.threshold, best.0, "{profile:?}");
            assert!((result.best.raw - best.1).abs() < 1e-9, "{profile:?}");
            assert_eq!(score_at_threshold(&corpus, profile, result.best.threshold).unwrap(), result.best);
        }
    }

    #[test]
    fn invalid_input_is_rejected() {
        let ts = timestamps(10);
        let zeros = scores(10, &[]);
        let ok = [window(&ts, 2, 4)];
        let run = |timestamps: &[i64], windows: &[(i64, i64)], scores: &[f64]| {
            score_at_threshold(&[DataFile { timestamps, windows, scores }], Profile::STANDARD, 0.5)
        };
        assert_eq!(run(&ts, &ok, &zeros[..9]), Err(NabError::Lengths { file: 0, timestamps: 10, scores: 9 }));
        let mut repeated = ts.clone();
        repeated[5] = repeated[4];
        assert_eq!(run(&repeated, &ok, &zeros), Err(NabError::Order { file: 0, row: 5 }));
        let high = scores(10, &[(3, 1.5)]);
        assert_eq!(run(&ts, &ok, &high), Err(NabError::AnomalyScore { file: 0, row: 3, score: 1.5 }));
        let nan = scores(10, &[(7, f64::NAN)]);
        assert!(matches!(run(&ts, &ok, &nan), Err(NabError::AnomalyScore { file: 0, row: 7, .. })));
        let off_grid = [(ts[2] + 1, ts[4])];
        let outside = NabError::WindowBound { file: 0, window: 0, timestamp: ts[2] + 1 };
        assert_eq!(run(&ts, &off_grid, &zeros), Err(outside));
        let backwards = [window(&ts, 4, 2)];
        assert_eq!(run(&ts, &backwards, &zeros), Err(NabError::WindowOrder { file: 0, window: 0 }));
        let touching = [window(&ts, 2, 4), window(&ts, 4, 6)];
        assert_eq!(run(&ts, &touching, &zeros), Err(NabError::WindowOrder { file: 0, window: 1 }));
        let unsorted = [window(&ts, 6, 7), window(&ts, 2, 4)];
        assert_eq!(run(&ts, &unsorted, &zeros), Err(NabError::WindowOrder { file: 0, window: 1 }));

        let file = DataFile { timestamps: &ts, windows: &ok, scores: &zeros };
        assert_eq!(score_at_threshold(&[file], Profile::STANDARD, f64::NAN), Err(NabError::Threshold));
        let bad = Profile { fp: f64::INFINITY, ..Profile::STANDARD };
        assert!(matches!(benchmark(&[file], bad), Err(NabError::Profile(_))));
        // No windows: null = perfect = 0, nothing to normalise against.
        let unlabelled = DataFile { timestamps: &ts, windows: &[], scores: &zeros };
        assert_eq!(
            benchmark(&[unlabelled], Profile::STANDARD),
            Err(NabError::Normalisation { perfect: 0.0, null: 0.0 })
        );
    }
}
