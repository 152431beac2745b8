//! Per-series trend model: a least-squares line through the means of the last N windows. Pure, no IO.

use std::collections::VecDeque;

/// One window's contribution: its bounds and its mean.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    start_ns: i64,
    end_ns: i64,
    mean: f64,
}

/// A forecast from the fitted line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    pub at_ns: i64,
    pub value: f64,
    pub slope_per_second: f64,
    pub windows: usize,
}

/// Why there is no forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoForecast {
    #[error("the series has {0} window(s); a trend needs at least 2")]
    TooFewWindows(usize),
}

/// The last `capacity` windows of one series, ordered by start, one sample per window.
#[derive(Debug, Clone)]
pub struct Trend {
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl Trend {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(2), samples: VecDeque::with_capacity(capacity.max(2)) }
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

    /// The fitted value `horizon_ns` after the end of the latest window. Each mean stands at its window's
    /// midpoint.
    pub fn forecast(&self, horizon_ns: i64) -> Result<Forecast, NoForecast> {
        let n = self.samples.len();
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Err(NoForecast::TooFewWindows(0));
        };
        if n < 2 {
            return Err(NoForecast::TooFewWindows(n));
        }
        // Seconds since the first midpoint keep the numbers small; two passes keep them exact enough.
        let origin = midpoint(first);
        let x = |ns: i64| (ns - origin) as f64 / 1e9;
        let mean_x = self.samples.iter().map(|s| x(midpoint(s))).sum::<f64>() / n as f64;
        let mean_y = self.samples.iter().map(|s| s.mean).sum::<f64>() / n as f64;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for s in &self.samples {
            let dx = x(midpoint(s)) - mean_x;
            sxy += dx * (s.mean - mean_y);
            sxx += dx * dx;
        }
        let slope = sxy / sxx; // sxx > 0: at least two distinct window starts
        let at_ns = last.end_ns.saturating_add(horizon_ns);
        Ok(Forecast { at_ns, value: mean_y + slope * (x(at_ns) - mean_x), slope_per_second: slope, windows: n })
    }
}

fn midpoint(s: &Sample) -> i64 {
    s.start_ns + (s.end_ns - s.start_ns) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn a_line_is_recovered_exactly() {
        let mut trend = Trend::new(10);
        // Means 4, 7, 10 at midpoints 5 s, 15 s, 25 s: slope 0.3 per second, 13 at 35 s.
        for (i, mean) in [4.0, 7.0, 10.0].into_iter().enumerate() {
            trend.observe(i as i64 * 10 * S, (i as i64 + 1) * 10 * S, mean);
        }
        let f = trend.forecast(5 * S).unwrap();
        assert!((f.slope_per_second - 0.3).abs() < 1e-12);
        assert_eq!(f.at_ns, 35 * S);
        assert!((f.value - 13.0).abs() < 1e-9);
        assert_eq!(f.windows, 3);
    }

    #[test]
    fn matches_an_independent_least_squares_fit() {
        // Reference, computed with numpy 2 outside this code base:
        //   p = numpy.polyfit([5, 15, 25, 35], [1, 4, 2, 8], 1)  -> [0.19, -0.05]  (x in seconds)
        //   numpy.polyval(p, 40)                                -> 7.55
        let mut trend = Trend::new(10);
        for (i, mean) in [1.0, 4.0, 2.0, 8.0].into_iter().enumerate() {
            trend.observe(i as i64 * 10 * S, (i as i64 + 1) * 10 * S, mean);
        }
        let f = trend.forecast(0).unwrap();
        assert!((f.slope_per_second - 0.19).abs() < 1e-12, "{}", f.slope_per_second);
        assert!((f.value - 7.55).abs() < 1e-9, "{}", f.value);
    }

    #[test]
    fn keeps_the_last_windows_and_replaces_replays() {
        let mut trend = Trend::new(2);
        trend.observe(0, 10 * S, 100.0);
        trend.observe(10 * S, 20 * S, 1.0);
        trend.observe(20 * S, 30 * S, 2.0);
        trend.observe(0, 10 * S, 100.0); // older than every kept window: ignored
        trend.observe(20 * S, 30 * S, 3.0); // a replay of a kept window: replaced
        let f = trend.forecast(0).unwrap();
        assert_eq!(f.windows, 2);
        assert!((f.slope_per_second - 0.2).abs() < 1e-12);
    }

    #[test]
    fn one_window_is_not_a_trend() {
        let mut trend = Trend::new(5);
        assert_eq!(trend.forecast(0), Err(NoForecast::TooFewWindows(0)));
        trend.observe(0, 10, 1.0);
        assert_eq!(trend.forecast(0), Err(NoForecast::TooFewWindows(1)));
    }
}
