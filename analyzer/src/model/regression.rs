//! Least-squares regression of window means on time over the last N windows, with the ordinary
//! prediction interval of a new observation.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::{Forecast, NoForecast, check_confidence};

/// One window's contribution: its bounds and its mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Sample {
    start_ns: i64,
    end_ns: i64,
    mean: f64,
}

/// The last `capacity` windows of one series, ordered by start, one sample per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    capacity: usize,
    samples: VecDeque<Sample>,
}

/// A prediction interval needs a residual variance, which needs two degrees of freedom more than
/// the line's two parameters leave.
const NEED: usize = 3;

impl Regression {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(NEED), samples: VecDeque::with_capacity(capacity.max(NEED)) }
    }

    /// How many windows the line is fitted to.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records a window's mean. A window seen before replaces its sample (replays are idempotent); one
    /// older than every kept window when the model is full is ignored.
    pub fn observe(&mut self, start_ns: i64, end_ns: i64, mean: f64) {
        let sample = Sample { start_ns, end_ns, mean };
        match self.samples.binary_search_by_key(&start_ns, |s| s.start_ns) {
            Ok(i) => self.samples[i] = sample,
            Err(0) if self.samples.len() >= self.capacity => {}
            Err(i) => {
                self.samples.insert(i, sample);
                if self.samples.len() > self.capacity {
                    self.samples.pop_front();
                }
            }
        }
    }

    /// The fitted value `horizon_ns` after the end of the latest window, each mean standing at its
    /// window's midpoint, with the `confidence` prediction interval of a new mean there (Student's t
    /// with n − 2 degrees of freedom).
    pub fn forecast(&self, horizon_ns: i64, confidence: f64) -> Result<Forecast, NoForecast> {
        check_confidence(confidence)?;
        let n = self.samples.len();
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Err(NoForecast::TooFewWindows { have: 0, need: NEED as u64 });
        };
        if n < NEED {
            return Err(NoForecast::TooFewWindows { have: n as u64, need: NEED as u64 });
        }
        // Seconds since the first midpoint keep the numbers small; two passes keep them exact enough.
        let origin = midpoint(first);
        let x = |ns: i64| (ns - origin) as f64 / 1e9;
        let count = n as f64;
        let mean_x = self.samples.iter().map(|s| x(midpoint(s))).sum::<f64>() / count;
        let mean_y = self.samples.iter().map(|s| s.mean).sum::<f64>() / count;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for s in &self.samples {
            let dx = x(midpoint(s)) - mean_x;
            sxy += dx * (s.mean - mean_y);
            sxx += dx * dx;
        }
        let slope = sxy / sxx; // sxx > 0: at least two distinct window starts
        let residuals: f64 = self.samples.iter().map(|s| (s.mean - mean_y - slope * (x(midpoint(s)) - mean_x)).powi(2)).sum();
        let at_ns = last.end_ns.saturating_add(horizon_ns);
        let dx = x(at_ns) - mean_x;
        let value = mean_y + slope * dx;
        let spread = (residuals / (count - 2.0) * (1.0 + 1.0 / count + dx * dx / sxx)).sqrt();
        let t = StudentsT::new(0.0, 1.0, count - 2.0).map_or(f64::NAN, |t| t.inverse_cdf(0.5 + confidence / 2.0));
        Ok(Forecast { at_ns, value, lower: value - t * spread, upper: value + t * spread, slope_per_second: slope, windows: n as u64 })
    }
}

fn midpoint(s: &Sample) -> i64 {
    s.start_ns + (s.end_ns - s.start_ns) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn fitted(capacity: usize, means: &[f64]) -> Regression {
        let mut model = Regression::new(capacity);
        for (i, mean) in means.iter().enumerate() {
            model.observe(i as i64 * 10 * S, (i as i64 + 1) * 10 * S, *mean);
        }
        model
    }

    #[test]
    fn a_line_is_recovered_exactly() {
        // Means 4, 7, 10 at midpoints 5 s, 15 s, 25 s: slope 0.3 per second, 13 at 35 s, no residual.
        let f = fitted(10, &[4.0, 7.0, 10.0]).forecast(5 * S, 0.95).unwrap();
        assert!((f.slope_per_second - 0.3).abs() < 1e-12);
        assert_eq!(f.at_ns, 35 * S);
        assert!((f.value - 13.0).abs() < 1e-9);
        assert!((f.upper - f.lower).abs() < 1e-9, "a perfect fit leaves no doubt: {f:?}");
        assert_eq!(f.windows, 3);
    }

    #[test]
    fn matches_an_independent_least_squares_fit() {
        // Reference, computed with statsmodels 0.15.0 (analyzer/reference/models.py, `regression`):
        //   fit = sm.OLS([1, 4, 2, 8], sm.add_constant([5, 15, 25, 35])).fit()   (x in seconds)
        //   fit.get_prediction([[1, 40]]).summary_frame(alpha=0.05)
        //   -> mean 7.55, obs_ci_lower -6.699188011053781, obs_ci_upper 21.799188011053793; slope 0.19
        let f = fitted(10, &[1.0, 4.0, 2.0, 8.0]).forecast(0, 0.95).unwrap();
        assert!((f.slope_per_second - 0.19).abs() < 1e-12, "{}", f.slope_per_second);
        assert!((f.value - 7.55).abs() < 1e-9, "{}", f.value);
        assert!((f.lower - LOWER).abs() < 1e-9, "{}", f.lower);
        assert!((f.upper - UPPER).abs() < 1e-9, "{}", f.upper);
    }
    const LOWER: f64 = -6.699188011053781;
    const UPPER: f64 = 21.799188011053793;

    #[test]
    fn keeps_the_last_windows_and_replaces_replays() {
        let mut model = fitted(3, &[100.0, 1.0, 2.0, 3.0]);
        model.observe(0, 10 * S, 100.0); // older than every kept window: ignored
        model.observe(30 * S, 40 * S, 5.0); // a replay of a kept window: replaced
        let f = model.forecast(0, 0.5).unwrap();
        assert_eq!(f.windows, 3);
        // Means 1, 2, 5 at 15, 25, 35 s: Sxy 40, Sxx 200, slope 0.2 per second.
        assert!((f.slope_per_second - 0.2).abs() < 1e-12, "{}", f.slope_per_second);
    }

    #[test]
    fn too_few_windows_is_no_trend() {
        assert_eq!(fitted(5, &[]).forecast(0, 0.9), Err(NoForecast::TooFewWindows { have: 0, need: 3 }));
        assert_eq!(fitted(5, &[1.0, 2.0]).forecast(0, 0.9), Err(NoForecast::TooFewWindows { have: 2, need: 3 }));
        assert_eq!(fitted(5, &[1.0, 2.0, 4.0]).forecast(0, 1.5), Err(NoForecast::Confidence(1.5)));
    }
}
