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
        /// Weight of the newest window, in (0, 1]: 0.02 remembers about the last 50 windows.
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
    /// A slow baseline (about the last 50 windows), the best of the simple detectors on NAB's sample
    /// (BENCHMARKS.md, "Quality on NAB").
    fn default() -> Self {
        Self::Ewma { alpha: 0.02, warmup: 50 }
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
        let spread = if mad > 0.0 {
            MAD_SCALE * mad
        } else {
            // More than half the values equal the median (quantized or flat data): the MAD says
            // nothing, and any other value would score as certain. Iglewicz and Hoaglin's modified
            // z-score falls back to the mean absolute deviation, scaled to a normal's deviation.
            MEAN_AD_SCALE * self.scratch.iter().sum::<f64>() / self.scratch.len() as f64
        };
        standard_score(value - middle, spread)
    }
}

/// The scale that makes the mean absolute deviation of normal data estimate its standard deviation:
/// √(π/2).
const MEAN_AD_SCALE: f64 = 1.253_314_137_315_500_1;

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
    // 10 windows, and `1 - erfc(|z| / √2) ** 0.1`.
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
    fn the_spikes_score_highest() {
        for spec in [DetectorSpec::Ewma { alpha: 0.1, warmup: 10 }, DetectorSpec::Mad { windows: 30, warmup: 10 }] {
            let mut detector = spec.build();
            let scores: Vec<f64> = series().into_iter().enumerate().map(|(i, v)| detector.observe(i as i64 * 10 * S, v)).collect();
            let mut ranked: Vec<usize> = (0..scores.len()).collect();
            ranked.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
            assert_eq!(ranked[..2], [25, 33], "{spec:?}: {scores:?}");
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
    fn a_zero_mad_falls_back_to_the_mean_absolute_deviation() {
        // Values 5, 5, 5, 7, 9: median 5, MAD 0; absolute deviations 0, 0, 0, 2, 4 average 1.2, so the
        // spread is 1.2·√(π/2) and 8 lies (8 − 5) / (1.2·1.2533141373155001) = 1.9947114020071637
        // of it away (python: 3 / (1.2 * math.sqrt(math.pi / 2))).
        let mut detector = Mad::new(5, 5);
        for v in [5.0, 5.0, 5.0, 7.0, 9.0] {
            detector.observe(v);
        }
        assert!((detector.observe(8.0) - score(1.9947114020071637)).abs() < 1e-12);
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

    const EWMA: [f64; 40] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.20372275195041378, 0.14672111995613468, 0.04552272710894234, 0.05778058092857197, 0.0798549378242841, 0.10384169980890423, 0.1183159241700873, 0.11513531580202019, 0.09361034572470284, 0.35906170988195907, 0.14207430511199726, 0.055330938930289064, 0.0048075528281262825, 0.0794422537530548, 0.17823153029808114, 0.24084758402147866, 0.039864648547992654, 0.0978912245473611, 0.13279831239247697, 0.1323825437023286, 0.9999566177156591, 0.0295060828176551, 0.029437799204368287, 0.06925718211082865, 0.06480914396291504, 0.060757700107102686, 0.0553327579938534, 0.04720659427105789, 0.5988369114052395, 0.023643979634594303, 0.0015505623914578992, 0.012561779726500966, 0.02679569198377263, 0.04350330963262283, 0.060606849459099];
    const MAD: [f64; 40] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.14610639463679143, 0.0909386855101072, 0.08793005157582923, 0.059805267141608054, 0.07359239048187427, 0.09385364049109313, 0.12873671461868508, 0.11971603908508555, 0.08042587221868147, 0.2918874406961426, 0.2908637048747199, 0.15948061783341472, 0.02138879198645116, 0.06059876658337138, 0.23012419067299428, 0.41553791783804317, 0.12112977071707631, 0.13567578432381777, 0.13191031085079952, 0.09699205304636871, 0.9988122017817564, 0.08088370479632434, 0.031561587812933056, 0.5861904198584493, 0.6774242940850441, 0.7457821945311618, 0.36737766885522805, 0.18191061193215263, 0.9410517267694946, 0.002918177609726791, 0.2233143622209537, 0.06730989552477995, 0.11966426234732319, 0.3597148611299439, 0.6091450192217673];
    const SEASONAL: [f64; 40] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9074539469514595, 0.03394207725026577, 0.38580987391971755, 0.17812852312413985, 0.999998348287674, 0.14028429902109762, 0.18203333077375716, 0.07779154921658649, 0.8413350809761534, 0.07569973501119154, 0.1961404324300512, 0.016634570809318072, 0.021132948444230193, 0.18926005381176647, 0.3740025471318217, 0.023134494427811125, 0.29446377828872305, 0.14375550467244624, 0.3528608111969581, 0.9999997458188943, 0.14597782344977728, 0.0453223069410178, 0.15136780087491986, 0.10664677408459455, 0.14670189276750856, 0.06877884030777448, 0.4308367808438809, 0.9916226418335754, 0.04503798284742844, 0.31744806135563164, 0.042033772980557216, 0.010264471840767175, 0.11209796966087782, 0.07268952645997961];
}
