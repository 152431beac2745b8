//! The statistics of one window of one series: pure arithmetic, no IO.
//!
//! Every statistic is kept so that two accumulators can be merged exactly (count, sum, min, max,
//! first, last), or by the parallel formulas of Chan et al. (means and sums of squared and cross
//! deviations, from which the standard deviation and the least-squares gradient follow), or within the
//! sketch's stated relative accuracy (quantiles, from a DDSketch).

use proto::v1::{Moments, Quantile, Series, WindowState, WindowStats};
use sketches_ddsketch::{Config, DDSketch};

/// The quantile sketch every window carries.
#[derive(Debug, Clone, PartialEq)]
pub struct SketchSpec {
    /// A quantile estimate is within this fraction of the true value.
    pub relative_accuracy: f64,
    /// Bin limit; past it the lowest bins collapse (upper quantiles keep their accuracy).
    pub max_bins: u32,
    /// The quantiles reported in every aggregate, each in [0, 1].
    pub quantiles: Vec<f64>,
}

impl Default for SketchSpec {
    fn default() -> Self {
        Self { relative_accuracy: 0.01, max_bins: 2048, quantiles: vec![0.5, 0.9, 0.99] }
    }
}

impl SketchSpec {
    fn new_sketch(&self) -> DDSketch {
        // Values closer to zero than 1e-9 count as zero.
        DDSketch::new(Config::new(self.relative_accuracy, self.max_bins, 1e-9))
    }
}

/// Running statistics of one window of one series.
#[derive(Clone)]
pub struct Accumulator {
    pub(crate) series: Series,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: (i64, f64),
    last: (i64, f64),
    /// Times are seconds since this origin, and values are taken relative to the first value seen: small
    /// numbers keep the moments accurate (a line through values near 1e8 keeps its slope to 1e-15, not 1e-9).
    origin_ns: i64,
    shift_v: f64,
    mean_t: f64,
    mean_v: f64,
    m2_t: f64,
    m2_v: f64,
    c_tv: f64,
    sketch: DDSketch,
    /// The sketch's relative accuracy: the configured one, or a restored window's own.
    relative_accuracy: f64,
    /// The sketch's bin limit.
    max_bins: u32,
}

/// The bin limit that sketches-ddsketch's decoder of DataDog's encoding assumes.
const DEFAULT_MAX_BINS: u32 = 2048;

impl std::fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accumulator")
            .field("series", &self.series)
            .field("count", &self.count)
            .field("sum", &self.sum)
            .finish_non_exhaustive()
    }
}

impl Accumulator {
    pub fn new(series: Series, origin_ns: i64, spec: &SketchSpec) -> Self {
        Self {
            series,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: (i64::MAX, 0.0),
            last: (i64::MIN, 0.0),
            origin_ns,
            shift_v: 0.0,
            mean_t: 0.0,
            mean_v: 0.0,
            m2_t: 0.0,
            m2_v: 0.0,
            c_tv: 0.0,
            sketch: spec.new_sketch(),
            relative_accuracy: spec.relative_accuracy,
            max_bins: spec.max_bins,
        }
    }

    pub fn add(&mut self, ts: i64, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        // Strict comparisons: among equal times the first to arrive is first, the last to arrive last.
        if ts < self.first.0 {
            self.first = (ts, value);
        }
        if ts >= self.last.0 {
            self.last = (ts, value);
        }
        // Welford's update, extended to the co-moment of time and value.
        if self.count == 1 {
            self.shift_v = value;
        }
        self.sketch.add(value);
        let t = (ts - self.origin_ns) as f64 / 1e9;
        let v = value - self.shift_v;
        let n = self.count as f64;
        let dt = t - self.mean_t;
        let dv = v - self.mean_v;
        self.mean_t += dt / n;
        self.mean_v += dv / n;
        self.m2_t += dt * (t - self.mean_t);
        self.m2_v += dv * (v - self.mean_v);
        self.c_tv += dt * (v - self.mean_v);
    }

    /// Folds `other` (of the same series) into this one.
    pub fn merge(&mut self, other: &Accumulator) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            let series = std::mem::take(&mut self.series);
            *self = other.clone();
            self.series = series;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        // Chan et al.'s pairwise update, after moving the other's time mean onto this origin.
        let other_mean_t = other.mean_t + (other.origin_ns - self.origin_ns) as f64 / 1e9;
        let dt = other_mean_t - self.mean_t;
        let dv = (other.mean_v + other.shift_v) - (self.mean_v + self.shift_v);
        self.m2_t += other.m2_t + dt * dt * na * nb / n;
        self.m2_v += other.m2_v + dv * dv * na * nb / n;
        self.c_tv += other.c_tv + dt * dv * na * nb / n;
        self.mean_t += dt * nb / n;
        self.mean_v += dv * nb / n;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.first.0 < self.first.0 {
            self.first = other.first;
        }
        if other.last.0 >= self.last.0 {
            self.last = other.last;
        }
        if self.sketch.merge(&other.sketch).is_err() {
            // Only a session restored from before a change of the sketch configuration meets another:
            // the other's values are folded in as its quantiles at evenly spaced ranks, each within the
            // coarser of the two accuracies.
            let n = other.count;
            for i in 0..n {
                if let Ok(Some(v)) = other.sketch.quantile((i as f64 + 0.5) / n as f64) {
                    self.sketch.add(v);
                }
            }
            self.relative_accuracy = self.relative_accuracy.max(other.relative_accuracy);
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The event time of the latest point.
    pub fn last_ns(&self) -> i64 {
        self.last.0
    }

    /// The event time of the earliest point.
    pub fn first_ns(&self) -> i64 {
        self.first.0
    }

    /// Everything this accumulator holds, for the changelog; `[start_ns, end_ns)` are its window's bounds.
    pub fn to_state(&self, start_ns: i64, end_ns: i64, session_id: Option<u64>) -> WindowState {
        // DataDog's encoding keeps only the non-empty bins (a quarter of the size for a typical window),
        // but its decoder assumes the default bin limit and no collapsed bins: exact only then. Fewer
        // bins than the limit means none ever collapsed.
        let java_exact = self.max_bins == DEFAULT_MAX_BINS && self.sketch.length() < DEFAULT_MAX_BINS as usize;
        WindowState {
            series: Some(self.series.clone()),
            start_ns,
            end_ns,
            session_id,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first_ns: self.first.0,
            first: self.first.1,
            last_ns: self.last.0,
            last: self.last.1,
            origin_ns: self.origin_ns,
            shift: self.shift_v,
            mean_t: self.mean_t,
            mean_v: self.mean_v,
            m2_t: self.m2_t,
            m2_v: self.m2_v,
            c_tv: self.c_tv,
            sketch: if java_exact { Vec::new() } else { postcard::to_allocvec(&self.sketch).unwrap_or_default() },
            sketch_java: if java_exact { self.sketch.to_java_bytes() } else { Vec::new() },
            sketch_relative_accuracy: self.relative_accuracy,
            sketch_max_bins: self.max_bins,
        }
    }

    /// The accumulator [`Accumulator::to_state`] saved, exactly; `None` when its sketch does not decode.
    /// A window saved under another sketch configuration than today's keeps its own sketch and reports
    /// that sketch's accuracy, so that changing the configuration never fails a restore.
    pub fn from_state(state: WindowState) -> Option<Self> {
        let sketch = if state.sketch_java.is_empty() {
            postcard::from_bytes(&state.sketch).ok()?
        } else {
            DDSketch::from_java_bytes(&state.sketch_java).ok()?
        };
        Some(Self {
            series: state.series.unwrap_or_default(),
            count: state.count,
            sum: state.sum,
            min: state.min,
            max: state.max,
            first: (state.first_ns, state.first),
            last: (state.last_ns, state.last),
            origin_ns: state.origin_ns,
            shift_v: state.shift,
            mean_t: state.mean_t,
            mean_v: state.mean_v,
            m2_t: state.m2_t,
            m2_v: state.m2_v,
            c_tv: state.c_tv,
            sketch,
            relative_accuracy: state.sketch_relative_accuracy,
            max_bins: state.sketch_max_bins,
        })
    }

    /// The window's statistics; `[start_ns, end_ns)` are its bounds.
    pub fn finish(&self, start_ns: i64, end_ns: i64, spec: &SketchSpec) -> WindowStats {
        let n = self.count as f64;
        let elapsed = (self.last.0 - self.first.0) as f64 / 1e9;
        let quantiles = spec
            .quantiles
            .iter()
            // Clamped to the exact extremes: still within the accuracy, and exact when every value is equal.
            .filter_map(|&q| self.sketch.quantile(q).ok().flatten().map(|v| Quantile { q, value: v.clamp(self.min, self.max) }))
            .collect();
        WindowStats {
            start_ns,
            end_ns,
            count: self.count,
            sum: self.sum,
            mean: self.sum / n,
            min: self.min,
            max: self.max,
            // Undefined for one point, or for points that all share one timestamp.
            gradient_per_second: (self.count >= 2 && self.m2_t > 0.0).then(|| self.c_tv / self.m2_t),
            first: self.first.1,
            last: self.last.1,
            first_ns: self.first.0,
            last_ns: self.last.0,
            stddev: (self.count >= 2).then(|| (self.m2_v.max(0.0) / (n - 1.0)).sqrt()),
            rate_per_second: (elapsed > 0.0).then(|| (self.last.1 - self.first.1) / elapsed),
            quantiles,
            sketch: self.sketch.to_java_bytes(),
            sketch_relative_accuracy: self.relative_accuracy,
            moments: Some(Moments {
                origin_ns: self.origin_ns,
                mean_t: self.mean_t,
                mean_v: self.mean_v + self.shift_v,
                m2_t: self.m2_t,
                m2_v: self.m2_v,
                c_tv: self.c_tv,
            }),
        }
    }
}

#[cfg(test)]
// `1 * S` reads as one second, beside `2 * S`.
#[allow(clippy::identity_op)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: i64 = 1_000_000_000;

    /// The naive reference: every statistic computed from the whole list, textbook formulas.
    fn reference(points: &[(i64, f64)], origin: i64) -> (f64, f64, f64, Option<f64>, Option<f64>) {
        let n = points.len() as f64;
        let mean = points.iter().map(|p| p.1).sum::<f64>() / n;
        let ts: Vec<f64> = points.iter().map(|p| (p.0 - origin) as f64 / 1e9).collect();
        let mt = ts.iter().sum::<f64>() / n;
        let sxx: f64 = ts.iter().map(|t| (t - mt).powi(2)).sum();
        let sxy: f64 = ts.iter().zip(points).map(|(t, p)| (t - mt) * (p.1 - mean)).sum();
        let svv: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
        let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let gradient = (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx);
        let stddev = (points.len() >= 2).then(|| (svv / (n - 1.0)).sqrt());
        (min, max, mean, gradient, stddev)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn accumulate(points: &[(i64, f64)], origin: i64, spec: &SketchSpec) -> Accumulator {
        let mut acc = Accumulator::new(Series::default(), origin, spec);
        for &(ts, v) in points {
            acc.add(ts, v);
        }
        acc
    }

    #[test]
    fn first_last_rate_and_undefined_values() {
        let spec = SketchSpec::default();
        let stats = accumulate(&[(3 * S, 5.0), (1 * S, 1.0), (7 * S, 13.0), (7 * S, 20.0)], 0, &spec).finish(0, 10 * S, &spec);
        assert_eq!((stats.first, stats.first_ns, stats.last, stats.last_ns), (1.0, S, 20.0, 7 * S));
        assert_eq!(stats.rate_per_second, Some((20.0 - 1.0) / 6.0));
        let one = accumulate(&[(2 * S, 4.0)], 0, &spec).finish(0, 10 * S, &spec);
        assert_eq!((one.stddev, one.rate_per_second, one.gradient_per_second), (None, None, None));
        assert_eq!(one.quantiles.iter().map(|q| q.value).collect::<Vec<_>>(), vec![4.0, 4.0, 4.0]);
    }

    #[test]
    fn a_line_far_from_zero_keeps_its_slope() {
        // Values near 1e8, as in the fault tests' load: the slope must be 1 to rounding, not to 1e-9.
        let spec = SketchSpec::default();
        let points: Vec<(i64, f64)> = (0..10).map(|s| (s * S, 108_000_050.0 + s as f64)).collect();
        let stats = accumulate(&points, 0, &spec).finish(0, 10 * S, &spec);
        assert!((stats.gradient_per_second.unwrap() - 1.0).abs() < 1e-13, "{:?}", stats.gradient_per_second);
        let expected_sd = (110.0f64 / 12.0).sqrt(); // sample deviation of 0..=9
        assert!((stats.stddev.unwrap() - expected_sd).abs() < 1e-12, "{:?}", stats.stddev);
        assert_eq!(stats.moments.unwrap().mean_v, 108_000_054.5);
    }

    #[test]
    fn the_sketch_round_trips_and_answers_within_its_accuracy() {
        let spec = SketchSpec::default();
        let values: Vec<(i64, f64)> = (1..=1000).map(|i| (i, i as f64)).collect();
        let stats = accumulate(&values, 0, &spec).finish(0, 10 * S, &spec);
        let decoded = DDSketch::from_java_bytes(&stats.sketch).unwrap();
        assert_eq!(decoded.count(), 1000);
        for q in &stats.quantiles {
            // The exact quantile at the sketch's rank: floor(q * (n - 1)) in the sorted values.
            let exact = (q.q * 999.0).floor() + 1.0;
            assert!((q.value - exact).abs() <= 0.01 * exact, "q{} = {} vs {exact}", q.q, q.value);
        }
    }

    proptest! {
        /// Any arrival order gives the same statistics, and they agree with the naive reference.
        #[test]
        fn order_does_not_matter_and_matches_the_reference(
            mut points in prop::collection::vec((0i64..10_000, -1000i32..1000), 1..60),
            seed in any::<u64>(),
        ) {
            let spec = SketchSpec::default();
            let points: Vec<(i64, f64)> = points.drain(..).map(|(ms, v)| (ms * 1_000_000, f64::from(v) / 4.0)).collect();
            let mut shuffled = points.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let a = accumulate(&points, 0, &spec).finish(0, 10 * S, &spec);
            let b = accumulate(&shuffled, 0, &spec).finish(0, 10 * S, &spec);
            let (min, max, mean, gradient, stddev) = reference(&points, 0);
            prop_assert_eq!((a.count, a.min, a.max), (points.len() as u64, min, max));
            prop_assert_eq!((b.count, b.min, b.max), (points.len() as u64, min, max));
            // Quarter-unit values keep every sum exact, whatever the order.
            prop_assert_eq!(a.sum, b.sum);
            prop_assert!(close(a.mean, mean));
            for stats in [&a, &b] {
                match (stats.gradient_per_second, gradient) {
                    (Some(g), Some(r)) => prop_assert!(close(g, r), "gradient {} vs {}", g, r),
                    (g, r) => prop_assert_eq!(g, r),
                }
                match (stats.stddev, stddev) {
                    (Some(s), Some(r)) => prop_assert!(close(s, r), "stddev {} vs {}", s, r),
                    (s, r) => prop_assert_eq!(s, r),
                }
            }
            prop_assert_eq!(&a.quantiles, &b.quantiles);
        }

        /// A window saved to the changelog (through its protobuf bytes) and restored continues bit for bit
        /// as if it had never stopped, with a non-default sketch configuration too.
        #[test]
        fn a_saved_window_continues_exactly(
            points in prop::collection::vec((0i64..20_000, -1000i32..1000), 1..80),
            split in any::<prop::sample::Index>(),
            default_bins in any::<bool>(),
        ) {
            use proto::prost::Message as _;
            // The default bin limit travels in DataDog's encoding, another one in the exact serde form.
            let max_bins = if default_bins { DEFAULT_MAX_BINS } else { 256 };
            let spec = SketchSpec { relative_accuracy: 0.02, max_bins, quantiles: vec![0.1, 0.5, 0.99] };
            let points: Vec<(i64, f64)> = points.into_iter().map(|(ms, v)| (ms * 1_000_000, f64::from(v) / 3.0)).collect();
            let cut = split.index(points.len()).max(1);
            let mut whole = accumulate(&points[..cut], 0, &spec);
            let state = whole.to_state(0, 20 * S, None);
            prop_assert_eq!(state.sketch_java.is_empty(), !default_bins);
            let bytes = state.encode_to_vec();
            let mut restored = Accumulator::from_state(WindowState::decode(bytes.as_slice()).unwrap()).unwrap();
            for &(ts, v) in &points[cut..] {
                whole.add(ts, v);
                restored.add(ts, v);
            }
            prop_assert_eq!(restored.finish(0, 20 * S, &spec), whole.finish(0, 20 * S, &spec));
        }

        /// Merging the accumulators of two halves (with different origins) equals accumulating the union,
        /// and merged sketches agree with the sketch of the union.
        #[test]
        fn merging_equals_accumulating_the_union(
            points in prop::collection::vec((0i64..20_000, -1000i32..1000), 2..80),
            split in any::<prop::sample::Index>(),
        ) {
            let spec = SketchSpec::default();
            let points: Vec<(i64, f64)> = points.into_iter().map(|(ms, v)| (ms * 1_000_000, f64::from(v) / 4.0)).collect();
            let cut = split.index(points.len());
            let mut left = accumulate(&points[..cut], 0, &spec);
            let right = accumulate(&points[cut..], 7 * S, &spec);
            left.merge(&right);
            let merged = left.finish(0, 20 * S, &spec);
            let whole = accumulate(&points, 0, &spec).finish(0, 20 * S, &spec);
            prop_assert_eq!((merged.count, merged.min, merged.max, merged.sum), (whole.count, whole.min, whole.max, whole.sum));
            prop_assert_eq!((merged.first_ns, merged.last_ns), (whole.first_ns, whole.last_ns));
            prop_assert!(close(merged.mean, whole.mean));
            match (merged.gradient_per_second, whole.gradient_per_second) {
                (Some(g), Some(r)) => prop_assert!(close(g, r), "gradient {} vs {}", g, r),
                (g, r) => prop_assert_eq!(g, r),
            }
            match (merged.stddev, whole.stddev) {
                (Some(s), Some(r)) => prop_assert!(close(s, r), "stddev {} vs {}", s, r),
                (s, r) => prop_assert_eq!(s, r),
            }
            prop_assert_eq!(&merged.quantiles, &whole.quantiles, "sketch bins are counts: merging is exact");
        }
    }
}
