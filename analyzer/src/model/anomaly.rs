//! Anomaly detectors: each scores a window's mean against what the series did before it (the score is
//! taken before the value is learned), in [0, 1] through `super::score`.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::score;

/// Which detector a metric uses, and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorSpec {
    /// Exponentially weighted mean and variance; the score of a value is that of its z-score.
    Ewma {
        /// Weight of the newest window, in (0, 1]: 0.1 remembers about the last 10 windows.
        alpha: f64,
        /// Windows seen before a score other than 0 is given.
        warmup: u64,
    },
    /// Median and median absolute deviation of the last `windows` windows: robust to the outliers it
    /// is looking for.
    Mad {
        windows: usize,
        /// Windows seen before a score other than 0 is given (at most `windows`).
        warmup: u64,
    },
    /// An exponentially weighted baseline per slot of a period (hour of the day, hour of the week):
    /// a value is compared with what the series did at the same time of earlier periods.
    Seasonal {
        #[serde(with = "humantime_serde")]
        period: Duration,
        /// Slots per period: 24 for hours of a day, 168 for hours of a week.
        slots: usize,
        /// Weight of the newest period in a slot's baseline.
        alpha: f64,
        /// Periods seen in a slot before it scores.
        warmup: u64,
    },
}

impl Default for DetectorSpec {
    fn default() -> Self {
        Self::Ewma { alpha: 0.1, warmup: 10 }
    }
}

impl DetectorSpec {
    /// What is wrong with the parameters, by field name, if anything.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: String| {
            if !ok {
                problems.push((field, message));
            }
        };
        match *self {
            Self::Ewma { alpha, .. } => check(alpha > 0.0 && alpha <= 1.0, "alpha", format!("{alpha} is not in (0, 1]")),
            Self::Mad { windows, warmup } => {
                check(windows >= 3, "windows", format!("{windows} is fewer than 3"));
                check(warmup <= windows as u64, "warmup", format!("{warmup} is more than windows ({windows})"));
            }
            Self::Seasonal { period, slots, alpha, .. } => {
                check(!period.is_zero(), "period", "must be positive".to_owned());
                check((1..=10_080).contains(&slots), "slots", format!("{slots} is not between 1 and 10080"));
                check(alpha > 0.0 && alpha <= 1.0, "alpha", format!("{alpha} is not in (0, 1]"));
            }
        }
        problems
    }

    pub fn build(&self) -> Detector {
        match *self {
            Self::Ewma { alpha, warmup } => Detector::Ewma(Ewma::new(alpha, warmup)),
            Self::Mad { windows, warmup } => Detector::Mad(Mad::new(windows, warmup)),
            Self::Seasonal { period, slots, alpha, warmup } => Detector::Seasonal(Seasonal::new(period, slots, alpha, warmup)),
        }
    }
}

/// One series' detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Detector {
    Ewma(Ewma),
    Mad(Mad),
    Seasonal(Seasonal),
}

impl Detector {
    /// The detector's kind, as configured.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ewma(_) => "ewma",
            Self::Mad(_) => "mad",
            Self::Seasonal(_) => "seasonal",
        }
    }

    /// The score of the mean of the window starting at `start_ns`, then learns it.
    pub fn observe(&mut self, start_ns: i64, value: f64) -> f64 {
        match self {
            Self::Ewma(d) => d.observe(value),
            Self::Mad(d) => d.observe(value),
            Self::Seasonal(d) => d.observe(start_ns, value),
        }
    }
}

/// Exponentially weighted mean and (biased) variance, updated as Finch ("Incremental calculation of
/// weighted mean and variance", 2009) gives them: the same numbers as pandas'
/// `ewm(alpha, adjust=False).mean()` and `.var(bias=True)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    alpha: f64,
    warmup: u64,
    mean: f64,
    variance: f64,
    seen: u64,
}

impl Ewma {
    pub fn new(alpha: f64, warmup: u64) -> Self {
        Self { alpha, warmup, mean: 0.0, variance: 0.0, seen: 0 }
    }

    /// The score of `value` against the values before it, then learns it.
    pub fn observe(&mut self, value: f64) -> f64 {
        let z = self.z(value);
        if self.seen == 0 {
            self.mean = value;
        } else {
            let difference = value - self.mean;
            let increment = self.alpha * difference;
            self.mean += increment;
            self.variance = (1.0 - self.alpha) * (self.variance + difference * increment);
        }
        self.seen += 1;
        if self.seen > self.warmup { score(z) } else { 0.0 }
    }

    fn z(&self, value: f64) -> f64 {
        standard_score(value - self.mean, self.variance.sqrt())
    }
}

/// `deviation / spread`, where a spread of 0 makes any deviation infinitely unusual and none usual.
fn standard_score(deviation: f64, spread: f64) -> f64 {
    if spread > 0.0 {
        deviation / spread
    } else if deviation == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The scale that makes the MAD of normal data estimate its standard deviation: 1 / Φ⁻¹(3/4), as
/// scipy's `median_abs_deviation(scale="normal")`.
const MAD_SCALE: f64 = 1.482_602_218_505_602;

/// The last `capacity` values, scored by their robust z-score `(x − median) / (1.4826·MAD)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mad {
    capacity: usize,
    warmup: u64,
    values: VecDeque<f64>,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl Mad {
    pub fn new(capacity: usize, warmup: u64) -> Self {
        Self { capacity: capacity.max(1), warmup, values: VecDeque::with_capacity(capacity.max(1)), scratch: Vec::new() }
    }

    pub fn observe(&mut self, value: f64) -> f64 {
        let scored = if self.values.len() as u64 >= self.warmup.max(1) { score(self.z(value)) } else { 0.0 };
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(value);
        scored
    }

    fn z(&mut self, value: f64) -> f64 {
        self.scratch.clear();
        self.scratch.extend(self.values.iter().copied());
        let middle = median(&mut self.scratch);
        for v in &mut self.scratch {
            *v = (*v - middle).abs();
        }
        let mad = median(&mut self.scratch);
        standard_score(value - middle, MAD_SCALE * mad)
    }
}

/// The median of `values` (not empty), averaging the middle two of an even count; reorders them.
fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    let (below, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let lower = below.iter().copied().max_by(f64::total_cmp).unwrap_or(upper);
        (lower + upper) / 2.0
    }
}

/// An EWMA baseline per slot of a period; slot `i` holds the windows starting in
/// `[i, i + 1) · period / slots` after the start of a period (periods counted from the Unix epoch, so
/// a day's slots are UTC hours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seasonal {
    period_ns: i64,
    slots: Vec<Ewma>,
}

impl Seasonal {
    pub fn new(period: Duration, slots: usize, alpha: f64, warmup: u64) -> Self {
        let period_ns = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX).max(1);
        Self { period_ns, slots: vec![Ewma::new(alpha, warmup); slots.max(1)] }
    }

    pub fn observe(&mut self, start_ns: i64, value: f64) -> f64 {
        let into = i128::from(start_ns.rem_euclid(self.period_ns));
        let count = self.slots.len();
        // `into` < period, so the slot is below `count`; `min` only spares a panic path.
        let slot = ((into * count as i128 / i128::from(self.period_ns)) as usize).min(count - 1);
        self.slots[slot].observe(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    /// A noisy wave with two spikes, as analyzer/reference/models.py builds it.
    fn series() -> Vec<f64> {
        let mut values: Vec<f64> = (0..40).map(|i| 10.0 + 2.0 * (f64::from(i) / 3.0).sin() + f64::from(i % 7) * 0.3).collect();
        values[25] = 30.0;
        values[33] = -5.0;
        values
    }

    /// Every window of `series()`, 10 s apart, through `detector`; the scores match `want` one by one.
    fn assert_scores(mut detector: Detector, want: &[f64]) {
        for (i, (value, want)) in series().into_iter().zip(want).enumerate() {
            let got = detector.observe(i as i64 * 10 * S, value);
            assert!((got - want).abs() < 1e-9, "window {i}: score {got}, want {want}");
        }
    }

    // Reference scores printed by analyzer/reference/models.py with numpy 2.4.6, pandas 3.1.1,
    // scipy 1.17.1: pandas' `ewm(adjust=False)` mean and `var(bias=True)` of the windows before each
    // (per slot for the seasonal detector), scipy's `median_abs_deviation(scale="normal")` over the last
    // 10 windows, and `erf(|z| / √2)`.
    #[test]
    fn ewma_matches_pandas() {
        assert_scores(DetectorSpec::Ewma { alpha: 0.2, warmup: 5 }.build(), &EWMA);
    }

    #[test]
    fn mad_matches_scipy() {
        assert_scores(DetectorSpec::Mad { windows: 10, warmup: 5 }.build(), &MAD);
    }

    #[test]
    fn seasonal_matches_pandas_per_slot() {
        let spec = DetectorSpec::Seasonal { period: Duration::from_secs(60), slots: 3, alpha: 0.5, warmup: 2 };
        assert_scores(spec.build(), &SEASONAL);
    }

    #[test]
    fn spikes_score_high_and_usual_values_do_not() {
        for spec in [DetectorSpec::default(), DetectorSpec::Mad { windows: 30, warmup: 10 }] {
            let mut detector = spec.build();
            let scores: Vec<f64> = series().into_iter().enumerate().map(|(i, v)| detector.observe(i as i64 * 10 * S, v)).collect();
            assert!(scores[25] > 0.9999 && scores[33] > 0.999, "{spec:?}: {} {}", scores[25], scores[33]);
        }
    }

    #[test]
    fn a_constant_series_scores_any_change_as_certain() {
        let mut detector = Ewma::new(0.5, 2);
        assert_eq!([5.0, 5.0, 5.0, 5.0].map(|v| detector.observe(v)), [0.0, 0.0, 0.0, 0.0]);
        assert_eq!(detector.observe(5.1), 1.0);
        let mut detector = Mad::new(5, 3);
        assert_eq!([5.0, 5.0, 5.0, 5.0].map(|v| detector.observe(v)), [0.0, 0.0, 0.0, 0.0]);
        assert_eq!(detector.observe(4.0), 1.0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    fn bad_parameters_are_named() {
        let fields = |spec: DetectorSpec| spec.problems().into_iter().map(|(field, _)| field).collect::<Vec<_>>();
        assert_eq!(fields(DetectorSpec::Ewma { alpha: 0.0, warmup: 1 }), ["alpha"]);
        assert_eq!(fields(DetectorSpec::Mad { windows: 2, warmup: 5 }), ["windows", "warmup"]);
        assert_eq!(fields(DetectorSpec::Seasonal { period: Duration::ZERO, slots: 0, alpha: 1.5, warmup: 1 }), ["period", "slots", "alpha"]);
        assert!(DetectorSpec::default().problems().is_empty());
    }

    const EWMA: [f64; 40] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.897519067500997, 0.7953979583168449, 0.372439040360424, 0.44853175748936114, 0.5649261320397776, 0.6659224318231619, 0.7161231546768793, 0.7057146631367185, 0.6257606953436853, 0.988300638129228, 0.7839786123691671, 0.43402542794691207, 0.04704868514183857, 0.5629708875001858, 0.8595587330326194, 0.9364244999254441, 0.3342294142517786, 0.643065049618415, 0.7594523361455384, 0.7582965699881236, 1.0, 0.25881234570147577, 0.2582906835082782, 0.5121380621308552, 0.4883151977913399, 0.46571075377029786, 0.4340363263116795, 0.3834228480065163, 0.9998920532271517, 0.21280543791389123, 0.015397879086701191, 0.11874958957285178, 0.23785039787785564, 0.3590344082819532, 0.4648520173687811];
    const MAD: [f64; 40] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.7939191617308001, 0.6145822021837705, 0.6016347337397794, 0.4602680359806937, 0.5343912460169724, 0.6267640228062566, 0.7479456862131566, 0.720599043017085, 0.5676181663693655, 0.9683026487563083, 0.9678413994885129, 0.8240143218105661, 0.19443265292295456, 0.4648059695332836, 0.926851279074496, 0.9953488171918217, 0.7250539182394105, 0.7673158465026446, 0.7569777829105019, 0.6394913218135939, 1.0, 0.5697660689530754, 0.274361912735985, 0.9998527669162458, 0.9999878012153827, 0.9999988726477042, 0.9897329617133087, 0.865721156543322, 0.9999999999994933, 0.028801533756579435, 0.9201172984290235, 0.5018344505220904, 0.7204346608365884, 0.9884193157962182, 0.99991679364322];
    const SEASONAL: [f64; 40] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.999999999953913, 0.29200259552143176, 0.9923611443549819, 0.859382593142552, 1.0, 0.779428913093669, 0.8659224478117317, 0.5550707309063927, 0.99999998988865, 0.5448749124860494, 0.8873316715374264, 0.1544303949812665, 0.19232413589128597, 0.877308149188888, 0.9907588576305202, 0.20868801488630867, 0.9694371992425366, 0.7881746537741732, 0.9871181866597247, 1.0, 0.7936086544509459, 0.37112004839103685, 0.8062708115838465, 0.6762333587597646, 0.7953518500506751, 0.5096249596946164, 0.9964324647701169, 1.0, 0.36924459294416284, 0.9780539155953774, 0.3491184164698454, 0.09803101856268268, 0.6954556892486593, 0.5298335348325137];
}
